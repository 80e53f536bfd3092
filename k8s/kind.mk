# Containers, Kubernetes and the kind workflow (included by the Makefile; docs/kubernetes.md).
# The scripts in scripts/ do the work; each one checks its tools and says what is missing.
# Image names and tags: images.env (the one place). Cluster: KIND_CLUSTER (default mammo).

include images.env

.PHONY: images images-gpu images-push cluster-secrets kfp-install cluster-apply \
	kind-up kind-load kind-data kind-run kind-down test-tools

images: ## Build the CPU images for kind (TRAIN_IMAGE_CPU, EVAL_IMAGE of images.env)
	scripts/images.sh cpu

images-gpu: ## Build the CUDA training image and the eval image for GPU clusters
	scripts/images.sh gpu

images-push: ## Push TRAIN_IMAGE and EVAL_IMAGE to MAMMO_REGISTRY; write their digests to images.env
	scripts/images.sh push

cluster-secrets: ## Write random MinIO credentials to the git-ignored k8s/base/*/minio.env
	scripts/cluster-secrets.sh

kfp-install: ## Install Kubeflow Pipelines (KFP_VERSION) into KUBE_CONTEXT or the current context
	scripts/kfp-install.sh

cluster-apply: ## Apply the project's stack: OVERLAY=gpu|kind, KUBE_CONTEXT or the current context
	scripts/cluster-apply.sh

kind-up: ## kind cluster + KFP + the project's stack, each waited for
	scripts/kind-up.sh

kind-load: ## Load the CPU images into the kind cluster
	scripts/kind-load.sh

kind-data: $(STAMP) ## Upload the demo dataset (or DATA=dir) into the cluster's MinIO
	scripts/kind-data.sh

kind-run: $(STAMP) ## Compile (kind profile), submit, follow the run, print its metrics
	scripts/kind-run.sh

kind-down: ## Delete the kind cluster
	scripts/kind-down.sh

# hadolint and kubernetes-validate come with requirements/test.txt; shellcheck is a Debian package.
test-tools: ## Install the test suite's system tools (shellcheck) if missing
	@if ! command -v shellcheck >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck; \
	  else \
	    echo "shellcheck is missing: install it (Debian/Ubuntu: sudo apt-get install shellcheck; macOS: brew install shellcheck)" >&2; \
	    exit 1; \
	  fi; \
	fi
