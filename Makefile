# Front door: `make run` runs the whole job locally, `make test` runs the test suite.
# Both bootstrap a virtual environment in .venv from the pinned requirements first.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MAMMO := $(VENV)/bin/mammo
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Test processes: pytest-xdist, one per core (auto), each test handed to the next free one:
# about 7-10 minutes of pytest instead of 16-19 on 2 cores. PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= auto
PYTEST_XDIST = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist worksteal)
S3RVER_VERSION := 3.7.1
S3RVER_STAMP := .cache/s3rver/.installed-$(S3RVER_VERSION)
MOTO_STAMP := .cache/moto-server/.installed

.PHONY: help venv run check test test-servers bench clean clean-venv gpu-check images-smoke images-tools component-docs

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# The three packages of this repository: training code, KFP components, pipelines.
PACKAGES := $(wildcard shared/pyproject.toml components/pyproject.toml pipelines/pyproject.toml)

# Quiet on purpose: the first screen of `make run` should be the job. setuptools' notes on
# editable installs are silenced, and so are pip's notes on unreachable local index folders.
PIP_QUIET := PYTHONWARNINGS=ignore $(VENV)/bin/pip
PIP_FILTER := 2> >(grep -v '^WARNING: Location' >&2)

$(STAMP): requirements/lock.txt requirements/test.txt $(PACKAGES)
	@echo "make: installing the virtual environment in $(VENV) (once; a few minutes, ~6 GB)"
	@$(PYTHON) -m venv $(VENV)
	@$(PIP_QUIET) install --quiet --upgrade pip $(PIP_FILTER)
	@# Exact pins; torch/torchvision come from PyPI (see README: the PyTorch pin). No pip cache:
	@# it would keep a second copy of the ~3 GB of CUDA wheels.
	@$(PIP_QUIET) install --quiet --no-cache-dir -r requirements/lock.txt -r requirements/test.txt $(PIP_FILTER)
	@$(PIP_QUIET) install --quiet --no-deps $(foreach p,$(PACKAGES),-e $(dir $(p))) $(PIP_FILTER)
	@$(PY) -c "import torch, torchvision, torchvision.ops; print('make: torch', torch.__version__, 'torchvision', torchvision.__version__)"
	@touch $@

venv: $(STAMP) ## Create/refresh the virtual environment

run: $(STAMP) ## Run the whole job locally on the synthetic demo dataset
	$(MAMMO) run

$(S3RVER_STAMP):
	npm install --prefix .cache/s3rver --no-audit --no-fund --loglevel=error s3rver@$(S3RVER_VERSION)
	touch $@

# moto's server in its own environment: botocore needs python-dateutil<3, the lock has 4.
$(MOTO_STAMP): requirements/moto-server.txt
	@$(PYTHON) -m venv .cache/moto-server
	@$(PIP_QUIET:$(VENV)/bin/pip=.cache/moto-server/bin/pip) install --quiet --no-cache-dir -r requirements/moto-server.txt $(PIP_FILTER)
	touch $@

test-servers: $(S3RVER_STAMP) $(MOTO_STAMP) ## Install the servers the tests start (s3rver, moto, Pushgateway)
	@if ! command -v prometheus-pushgateway >/dev/null && [ ! -x /usr/bin/prometheus-pushgateway ]; then \
	  apt-get install -y --no-install-recommends prometheus-pushgateway \
	  || { apt-get update && apt-get install -y --no-install-recommends prometheus-pushgateway; }; \
	fi

# The image smoke test follows a full pytest run (see README for its time);
# IMAGES_SMOKE=0 skips it, and a subset (PYTEST_ARGS set) skips it unless IMAGES_SMOKE=1.
IMAGES_SMOKE ?= $(if $(PYTEST_ARGS),0,1)

check: $(STAMP) test-servers test-tools ## The fast tier for the edit loop: pytest without the slow tests
	$(PY) -m pytest $(PYTEST_XDIST) -m "not slow" $(PYTEST_ARGS)

test: $(STAMP) test-servers test-tools ## Run the whole test suite, then the image smoke test
	$(PY) -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS)
	@if [ "$(IMAGES_SMOKE)" = 1 ]; then $(MAKE) --no-print-directory images-smoke; fi

# buildah and mmdebstrap (Debian packages) build the images without Docker; util-linux brings
# unshare for the read-only runs.
images-tools: ## Install the image smoke test's tools (buildah, mmdebstrap) if missing
	@if ! command -v buildah >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah mmdebstrap \
	    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends buildah mmdebstrap; }; \
	  else \
	    echo "buildah and mmdebstrap are missing: sudo apt-get install buildah mmdebstrap" >&2; exit 1; \
	  fi; \
	fi

images-smoke: $(STAMP) test-servers images-tools ## Build both images with buildah and run the components inside them
	scripts/images-smoke.sh

component-docs: $(STAMP) ## Write each component README's Inputs table from its entrypoint.run declaration
	$(PY) -m mammo_components.readmes

bench: $(STAMP) ## Print data-path and training-step throughput figures (JSON)
	$(MAMMO) data synth --out .cache/bench-data --patients 40 --image-size 512 --seed 1 >/dev/null
	$(MAMMO) bench data --data .cache/bench-data --image-size 512 --workers 0 --batches 10
	$(MAMMO) data synth --out .cache/bench-train --patients 40 --image-size 64 --seed 1 >/dev/null
	$(MAMMO) bench train --data .cache/bench-train --nproc 2 --image-size 64 --batch-size 16 --steps 10

# No $(STAMP) prerequisite: without a GPU the check says so in one line before installing anything.
gpu-check: ## On a machine with an NVIDIA GPU: the GPU check (CUDA, NCCL, bf16, images/s, GPU DICOM decode) as JSON
	@scripts/gpu-check.sh

clean: ## Remove the local runs, demo data and caches (.mammo, .cache); keeps the virtual environment
	rm -rf .cache .mammo .pytest_cache

clean-venv: ## Remove the virtual environment too (~6 GB; the next make target installs it again)
	rm -rf $(VENV)

include k8s/kind.mk
