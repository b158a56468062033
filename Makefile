# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
QUIX_VENV := .venv-quix
QUIX_STAMP := $(QUIX_VENV)/.installed
TF_VENV := .venv-tf
TF_STAMP := $(TF_VENV)/.installed
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
MLSERVER_VENV := .venv-mlserver
MLSERVER_STAMP := $(MLSERVER_VENV)/.installed
# `make test` installs the venvs side by side; editable installs write the checkout's
# src/streaminfer.egg-info, so those take turns.
EDITABLE := flock .install.lock
# uv installs the venvs' packages: the Triton venv took pip 28 s of CPU and uv 3.5 s, the
# downloads alike. It has a venv of its own under ~/.cache, made with pip once.
UV_VERSION := 0.13.10
UV_HOME := $(HOME)/.cache/streaminfer/uv-$(UV_VERSION)
UV := $(UV_HOME)/bin/uv
UV_INSTALL = $(UV) pip install --quiet --compile-bytecode --python

.PHONY: install quix tf triton mlserver kafka-jars protos lint deploy-tools image test demo bench interop clean

# Deployment checks (tests/test_deploy, tests/test_packaging, the gRPC health test): helm,
# kubeconform and grpc-health-probe built with `go install`; Prometheus, promtool and podman
# (with runc, debootstrap for the base image) from Debian, and kcat (records written by
# another client, tests/test_stream/test_hostile.py).  Builds and downloads are cached
# under ~/.cache.
TOOLS_BIN := $(HOME)/.cache/streaminfer/bin
GO_CACHE := $(HOME)/.cache/streaminfer/go
HELM_VERSION := v3.22.0
KUBECONFORM_VERSION := v0.8.0
GRPC_HEALTH_PROBE_VERSION := v0.4.63
GO_INSTALL := GOBIN=$(TOOLS_BIN) GOMODCACHE=$(GO_CACHE)/mod GOCACHE=$(GO_CACHE)/build go install

install: $(STAMP)

$(STAMP): pyproject.toml $(UV)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(EDITABLE) $(UV_INSTALL) $(BIN)/python -e '.[dev,demo,bench]'
	$(BIN)/python -m streaminfer.protos.build
	touch $(STAMP)

# Quix Streams pins an older confluent-kafka than streaminfer: the bench's Quix app
# (streaminfer.bench.quixapp) runs from a venv of its own.
quix: $(QUIX_STAMP)

$(QUIX_STAMP): pyproject.toml $(UV)
	test -x $(QUIX_VENV)/bin/python || $(PYTHON) -m venv $(QUIX_VENV)
	$(EDITABLE) $(UV_INSTALL) $(QUIX_VENV)/bin/python -e . 'quixstreams>=3.28,<4'
	touch $(QUIX_STAMP)

# TensorFlow (for `models import` of SavedModels and Keras files) is large: a venv of its
# own. protobuf stays below 7, the major version our generated modules are tested with.
tf: $(TF_STAMP)

$(TF_STAMP): pyproject.toml $(UV)
	test -x $(TF_VENV)/bin/python || $(PYTHON) -m venv $(TF_VENV)
	$(EDITABLE) $(UV_INSTALL) $(TF_VENV)/bin/python -e '.[tensorflow]' 'protobuf<7'
	touch $(TF_STAMP)

# Third-party model servers, each with its own pins: NVIDIA Triton for tests/test_thirdparty
# (PyTriton bundles the tritonserver binary; CPU only) and MLServer 1.7 for those tests and
# for benchmarks/bench_server.py.  Neither imports streaminfer: they serve the exported ONNX
# models through tests/thirdparty/*.py and streaminfer/bench/mlserver_runtime.py (copied).
# uvloop 0.22 broke MLServer 1.7's worker processes (get_event_loop).
triton: $(TRITON_STAMP)

$(TRITON_STAMP): $(UV)
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	$(UV_INSTALL) $(TRITON_VENV)/bin/python 'nvidia-pytriton>=0.7,<0.8' onnxruntime pillow
	touch $(TRITON_STAMP)

mlserver: $(MLSERVER_STAMP)

$(MLSERVER_STAMP): Makefile $(UV)
	test -x $(MLSERVER_VENV)/bin/python || $(PYTHON) -m venv $(MLSERVER_VENV)
	$(UV_INSTALL) $(MLSERVER_VENV)/bin/python 'mlserver>=1.7,<1.8' mlserver-sklearn 'onnxruntime>=1.18' 'uvloop<0.22'
	touch $(MLSERVER_STAMP)

$(UV):
	test -x $(UV_HOME)/bin/python || $(PYTHON) -m venv $(UV_HOME)
	$(UV_HOME)/bin/python -m pip install --quiet 'uv==$(UV_VERSION)'

kafka-jars: install
	$(BIN)/python -c 'from streaminfer.kafka.jvm import broker_classpath; broker_classpath()'

protos: install
	$(BIN)/python -m streaminfer.protos.build

lint: install
	$(BIN)/ruff check src tests benchmarks interop deploy setup.py
	$(BIN)/ruff format --check src tests benchmarks interop deploy setup.py
	$(BIN)/mypy

deploy-tools: $(TOOLS_BIN)/.helm-$(HELM_VERSION) $(TOOLS_BIN)/.kubeconform-$(KUBECONFORM_VERSION) \
	$(TOOLS_BIN)/.grpc-health-probe-$(GRPC_HEALTH_PROBE_VERSION)
	missing=; for tool in prometheus promtool podman buildah runc debootstrap kcat; do \
	  command -v $$tool >/dev/null || missing=1; done; \
	test -z "$$missing" || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  apt-get install -y -qq --no-install-recommends prometheus podman buildah runc debootstrap uidmap kcat)

$(TOOLS_BIN)/.helm-$(HELM_VERSION):
	$(GO_INSTALL) helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	touch $@

$(TOOLS_BIN)/.kubeconform-$(KUBECONFORM_VERSION):
	$(GO_INSTALL) github.com/yannh/kubeconform/cmd/kubeconform@$(KUBECONFORM_VERSION)
	touch $@

$(TOOLS_BIN)/.grpc-health-probe-$(GRPC_HEALTH_PROBE_VERSION):
	$(GO_INSTALL) github.com/grpc-ecosystem/grpc-health-probe@$(GRPC_HEALTH_PROBE_VERSION)
	touch $@

# The container image, localhost/streaminfer:<version>, built offline (see the Containerfile).
image: install deploy-tools
	deploy/container/build-image.sh $(BIN)/python

# Two pytest workers (pytest-xdist), a test file each at a time: much of a test's time is
# spent waiting on brokers and processes, and a second worker fills it (a clean clone's
# tests took 22:51 in one, 12:57 in two). The Kafka jars are resolved first, so the two
# workers' brokers do not both run mvn.
test:
	$(MAKE) --jobs=4 --output-sync=target lint quix tf triton mlserver deploy-tools kafka-jars
	$(BIN)/python -m pytest -n 2 --dist loadfile tests

demo: install
	$(BIN)/streaminfer demo

bench: install quix
	$(BIN)/streaminfer bench --quix-python $(QUIX_VENV)/bin/python

# TF Serving's official client pulls tensorflow: it gets a venv of its own.
interop: install
	test -x .venv-interop/bin/python || $(PYTHON) -m venv .venv-interop
	$(UV_INSTALL) .venv-interop/bin/python tensorflow-serving-api
	$(BIN)/python interop/run_interop.py .venv-interop/bin/python

clean:
	rm -rf $(VENV) $(QUIX_VENV) $(TF_VENV) $(TRITON_VENV) $(MLSERVER_VENV) build src/*.egg-info
