# Two commands: `make up` runs the embedded stack, `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: up test install install-test lint pytest vllm-env

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

pytest: install-test
	bash deploy/with-redis.sh $(PY) -m pytest $(PYTEST_ARGS)

test: lint pytest
