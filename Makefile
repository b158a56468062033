# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install protos lint test demo bench interop clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,demo]'
	$(BIN)/python -m streaminfer.protos.build
	touch $(STAMP)

protos: install
	$(BIN)/python -m streaminfer.protos.build

lint: install
	$(BIN)/ruff check src tests benchmarks interop
	$(BIN)/ruff format --check src tests benchmarks interop
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest tests

demo: install
	$(BIN)/streaminfer demo

bench: install
	$(BIN)/streaminfer bench

# TF Serving's official client pulls tensorflow: it gets a venv of its own.
interop: install
	test -x .venv-interop/bin/python || $(PYTHON) -m venv .venv-interop
	.venv-interop/bin/python -m pip install --quiet --upgrade pip tensorflow-serving-api
	$(BIN)/python interop/run_interop.py .venv-interop/bin/python

clean:
	rm -rf $(VENV) build src/*.egg-info
