#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# make kind-down: deletes the kind cluster with everything in it (KFP, MinIO and its data).
# The local credential files (k8s/base/*/minio.env, minio-promoter.env) and the built images stay.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_kind
if kind_cluster_exists; then
  log "deleting kind cluster '$KIND_CLUSTER'"
  kind delete cluster --name "$KIND_CLUSTER"
else
  log "no kind cluster '$KIND_CLUSTER'; nothing to do"
fi
