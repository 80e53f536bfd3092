#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# make kind-up: a kind cluster from k8s/kind/cluster.yaml, Kubeflow Pipelines installed and
# ready, the project's stack (k8s/overlays/kind) applied and ready. Each step is skipped or
# re-applied harmlessly when it is already done.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_docker
require_kind
require_kubectl

if kind_cluster_exists; then
  log "kind cluster '$KIND_CLUSTER' exists"
else
  log "creating kind cluster '$KIND_CLUSTER'"
  kind create cluster --name "$KIND_CLUSTER" --config "$ROOT/k8s/kind/cluster.yaml" --wait 180s \
    || die "kind could not create the cluster (see above). Docker needs about 8 GB of memory for KFP plus the demo."
fi
use_kind_context

"$ROOT/scripts/cluster-secrets.sh"
KUBE_CONTEXT="$KUBE_CONTEXT" "$ROOT/scripts/kfp-install.sh"
KUBE_CONTEXT="$KUBE_CONTEXT" OVERLAY=kind "$ROOT/scripts/cluster-apply.sh"

log "kind cluster ready. Next: make images kind-load kind-data kind-run"
