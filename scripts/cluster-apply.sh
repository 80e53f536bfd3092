#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Applies the project's stack (an overlay of k8s/: OVERLAY=kind|gpu|gpu-trainer) and waits until MinIO and
# the Pushgateway are ready and the bucket exists. Idempotent. Needs KFP installed first (its
# namespace holds the pipeline's Secret, ConfigMap and ServiceAccount). Context: KUBE_CONTEXT,
# else the current one.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OVERLAY="${OVERLAY:-gpu}"
WAIT_TIMEOUT="${WAIT_TIMEOUT:-300s}"
overlay_dir="$ROOT/k8s/overlays/$OVERLAY"

[[ -d "$overlay_dir" ]] || die "no overlay '$OVERLAY' in k8s/overlays (have: $(ls "$ROOT/k8s/overlays"))."
for env_file in "$ROOT"/k8s/base/{mammo,kubeflow}/{minio,minio-promoter}.env; do
  [[ -f "$env_file" ]] || die "${env_file#"$ROOT"/} is missing: run 'make cluster-secrets' (or copy its .example and fill it in)."
done
use_cluster_context
kc get namespace "$KFP_NAMESPACE" >/dev/null 2>&1 \
  || die "namespace $KFP_NAMESPACE does not exist: install Kubeflow Pipelines first ('make kfp-install')."

# Jobs are immutable: drop the previous setup Job so that its new version can run (it is idempotent).
kc -n "$MAMMO_NAMESPACE" delete job minio-setup --ignore-not-found >/dev/null

log "applying k8s/overlays/$OVERLAY"
kc apply -k "$overlay_dir" || die "kubectl apply -k k8s/overlays/$OVERLAY failed (see above)."

# The pipeline pods' egress to the Kubernetes API is shipped open to any address on its ports;
# narrow it to this cluster's API server: the Service's address and its endpoints, each alone.
api_ips="$(kc -n default get service kubernetes -o 'jsonpath={.spec.clusterIP}') $(kc -n default get endpoints kubernetes -o 'jsonpath={.subsets[*].addresses[*].ip}')" \
  || die "reading the addresses of the Kubernetes API (service and endpoints 'kubernetes' in namespace default) failed."
api_ports="$(kc -n default get endpoints kubernetes -o 'jsonpath={.subsets[*].ports[*].port}')"
peers="" ports='{"protocol": "TCP", "port": 443}'
for ip in $api_ips; do
  [[ "$ip" == *:* ]] && cidr="$ip/128" || cidr="$ip/32"
  peers="${peers:+$peers, }{\"ipBlock\": {\"cidr\": \"$cidr\"}}"
done
for port in $api_ports; do
  [[ "$port" == 443 ]] || ports="$ports, {\"protocol\": \"TCP\", \"port\": $port}"
done
[[ -n "$peers" ]] || die "the Kubernetes API has no address in service/endpoints 'kubernetes' (namespace default)."
kc -n "$KFP_NAMESPACE" patch networkpolicy mammo-pipeline-egress-kube-apiserver --type merge \
  -p "{\"spec\": {\"egress\": [{\"to\": [$peers], \"ports\": [$ports]}]}}" >/dev/null \
  || die "narrowing NetworkPolicy mammo-pipeline-egress-kube-apiserver to the API server's addresses failed."
log "pipeline pods may reach the Kubernetes API at ${api_ips# } only"

log "waiting for MinIO, the Pushgateway and the bucket setup"
for deployment in minio pushgateway; do
  kc -n "$MAMMO_NAMESPACE" rollout status "deployment/$deployment" --timeout="$WAIT_TIMEOUT" \
    || die "deployment $deployment is not ready after $WAIT_TIMEOUT: 'kubectl -n $MAMMO_NAMESPACE describe deployment $deployment' and its pods' events say why."
done
if ! kc -n "$MAMMO_NAMESPACE" wait --for=condition=complete job/minio-setup --timeout="$WAIT_TIMEOUT"; then
  kc -n "$MAMMO_NAMESPACE" logs job/minio-setup --tail=20 >&2 || true
  die "the MinIO setup Job did not complete within $WAIT_TIMEOUT (its log is above)."
fi
log "stack ready: MinIO minio.$MAMMO_NAMESPACE.svc:9000 (bucket $MAMMO_BUCKET), Pushgateway pushgateway.$MAMMO_NAMESPACE.svc:9091"
