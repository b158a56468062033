# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
QUIX_VENV := .venv-quix
QUIX_STAMP := $(QUIX_VENV)/.installed
TF_VENV := .venv-tf
TF_STAMP := $(TF_VENV)/.installed

.PHONY: install quix tf protos lint test demo bench interop clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,demo,bench]'
	$(BIN)/python -m streaminfer.protos.build
	touch $(STAMP)

# Quix Streams pins an older confluent-kafka than streaminfer: the bench's Quix app
# (streaminfer.bench.quixapp) runs from a venv of its own.
quix: $(QUIX_STAMP)

$(QUIX_STAMP): pyproject.toml
	test -x $(QUIX_VENV)/bin/python || $(PYTHON) -m venv $(QUIX_VENV)
	$(QUIX_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(QUIX_VENV)/bin/python -m pip install --quiet -e . 'quixstreams>=3.28,<4'
	touch $(QUIX_STAMP)

# TensorFlow (for `models import` of SavedModels and Keras files) is large: a venv of its
# own. protobuf stays below 7, the major version our generated modules are tested with.
tf: $(TF_STAMP)

$(TF_STAMP): pyproject.toml
	test -x $(TF_VENV)/bin/python || $(PYTHON) -m venv $(TF_VENV)
	$(TF_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TF_VENV)/bin/python -m pip install --quiet -e '.[tensorflow]' 'protobuf<7'
	touch $(TF_STAMP)

protos: install
	$(BIN)/python -m streaminfer.protos.build

lint: install
	$(BIN)/ruff check src tests benchmarks interop
	$(BIN)/ruff format --check src tests benchmarks interop
	$(BIN)/mypy

test: lint quix tf
	$(BIN)/python -m pytest tests

demo: install
	$(BIN)/streaminfer demo

bench: install quix
	$(BIN)/streaminfer bench --quix-python $(QUIX_VENV)/bin/python

# TF Serving's official client pulls tensorflow: it gets a venv of its own.
interop: install
	test -x .venv-interop/bin/python || $(PYTHON) -m venv .venv-interop
	.venv-interop/bin/python -m pip install --quiet --upgrade pip tensorflow-serving-api
	$(BIN)/python interop/run_interop.py .venv-interop/bin/python

clean:
	rm -rf $(VENV) $(QUIX_VENV) $(TF_VENV) build src/*.egg-info
