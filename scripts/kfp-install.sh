#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Installs Kubeflow Pipelines (standalone) from its official platform-agnostic manifests at a
# pinned version, and waits until it is ready. Idempotent (kubectl apply); setting another
# KFP_VERSION upgrades in place. Context: KUBE_CONTEXT, else the current one (kind-up passes
# the kind cluster's). KFP 2.17.x matches the kfp SDK 2.17 in requirements/lock.txt; since
# 2.15 its own artifact store is SeaweedFS, not MinIO (docs/kubernetes.md).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KFP_VERSION="${KFP_VERSION:-2.17.3}"
KFP_WAIT_TIMEOUT="${KFP_WAIT_TIMEOUT:-900s}"
MANIFESTS="github.com/kubeflow/pipelines/manifests/kustomize"

use_cluster_context
require_tool git "kubectl fetches the KFP manifests from GitHub with git: install git."
kc cluster-info >/dev/null 2>&1 \
  || die "the cluster of context '$KUBE_CONTEXT' does not answer ('kubectl cluster-info' failed)."

installed="$(kc -n "$KFP_NAMESPACE" get configmap pipeline-install-config \
  -o 'jsonpath={.data.appVersion}' 2>/dev/null || true)"
if [[ -n "$installed" && "$installed" != "$KFP_VERSION" ]]; then
  log "KFP $installed is installed; applying $KFP_VERSION over it (an upgrade)"
fi

log "installing KFP $KFP_VERSION: cluster-scoped resources (CRDs)"
kc apply -k "$MANIFESTS/cluster-scoped-resources?ref=$KFP_VERSION" \
  || die "applying KFP's cluster-scoped resources failed (is KFP_VERSION=$KFP_VERSION a release tag of kubeflow/pipelines, and is github.com reachable?)"
kc wait --for condition=established --timeout=120s crd --all >/dev/null \
  || die "KFP's CustomResourceDefinitions did not become established within 120 s."

# KFP's manifests plus the project's restricted Pod Security defaults for Argo's containers
# (k8s/kfp/workflow-controller-defaults: a patch of workflow-controller-configmap), built in one
# kustomization so that a later install keeps them. KFP_RESTRICTED_DEFAULTS=0: KFP as shipped.
KFP_RESTRICTED_DEFAULTS="${KFP_RESTRICTED_DEFAULTS:-1}"
build_dir="$(mktemp -d)"
trap 'rm -rf "$build_dir"' EXIT
components=""
if [[ "$KFP_RESTRICTED_DEFAULTS" != 0 ]]; then
  # kustomize loads components from below the kustomization only: a copy.
  cp -R "$ROOT/k8s/kfp/workflow-controller-defaults" "$build_dir/"
  components="components: [workflow-controller-defaults]"
fi
printf '%s\n' "apiVersion: kustomize.config.k8s.io/v1beta1" "kind: Kustomization" \
  "resources: ['$MANIFESTS/env/platform-agnostic?ref=$KFP_VERSION']" "$components" \
  >"$build_dir/kustomization.yaml"
log "installing KFP $KFP_VERSION: env/platform-agnostic$([[ -n "$components" ]] && echo ", with Argo's restricted container defaults")"
kc apply -k "$build_dir" \
  || die "applying KFP's platform-agnostic manifests failed (see the kubectl error above)."

# Pipeline pods run in this namespace: enforce Pod Security "baseline" (no privileged, host
# namespaces, hostPath or added capabilities; KFP's own pods and Argo's helper containers meet
# it) and warn/audit at "restricted", which the mammo step pods meet with the defaults above
# (docs/kubernetes.md, Pod security). KFP's own deployments are not all ours to vouch for.
log "labelling namespace $KFP_NAMESPACE for Pod Security (enforce baseline, warn and audit restricted)"
kc label --overwrite namespace "$KFP_NAMESPACE" \
  pod-security.kubernetes.io/enforce=baseline pod-security.kubernetes.io/enforce-version=latest \
  pod-security.kubernetes.io/warn=restricted pod-security.kubernetes.io/audit=restricted >/dev/null \
  || die "labelling namespace $KFP_NAMESPACE for Pod Security failed (see the kubectl error above)."

log "waiting for KFP's deployments in namespace $KFP_NAMESPACE (first install pulls images: minutes)"
if ! kc -n "$KFP_NAMESPACE" wait --for=condition=Available deployment --all --timeout="$KFP_WAIT_TIMEOUT"; then
  kc -n "$KFP_NAMESPACE" get pods >&2 || true
  die "KFP did not become ready within $KFP_WAIT_TIMEOUT. Look at the pods above ('kubectl -n $KFP_NAMESPACE describe pod <name>'); on a slow network, run again with a larger KFP_WAIT_TIMEOUT."
fi
log "KFP $KFP_VERSION is ready (UI: kubectl -n $KFP_NAMESPACE port-forward svc/ml-pipeline-ui 8080:80)"
