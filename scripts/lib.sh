# shellcheck shell=bash source-path=SCRIPTDIR
# Helpers shared by the kind and cluster scripts; sourced, never run. Every check fails with a
# message that says what is missing and how to get it.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KIND_CLUSTER="${KIND_CLUSTER:-mammo}"
KFP_NAMESPACE="${KFP_NAMESPACE:-kubeflow}"
MAMMO_NAMESPACE="${MAMMO_NAMESPACE:-mammo}"
MAMMO_BUCKET="${MAMMO_BUCKET:-mammo}"
VENV_BIN="$ROOT/.venv/bin"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

require_tool() {  # NAME HOW-TO-INSTALL
  command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed or not on PATH. $2"
}

require_docker() {
  require_tool docker "Install Docker: https://docs.docker.com/get-docker/"
  docker info >/dev/null 2>&1 \
    || die "the Docker daemon does not answer ('docker info' failed): start Docker, and check that this user may use it."
}

require_kind() {
  require_tool kind "Install kind >= 0.24: https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
}

require_kubectl() {
  require_tool kubectl "Install kubectl >= 1.30: https://kubernetes.io/docs/tasks/tools/"
}

require_venv() {
  [[ -x "$VENV_BIN/mammo" ]] || die "the project's virtual environment is missing: run 'make venv' first."
}

kind_cluster_exists() {
  kind get clusters 2>/dev/null | grep -qx "$KIND_CLUSTER"
}

# Use the kind cluster's context explicitly, never whatever context happens to be current.
use_kind_context() {
  require_kubectl
  KUBE_CONTEXT="kind-$KIND_CLUSTER"
  kubectl config get-contexts "$KUBE_CONTEXT" >/dev/null 2>&1 \
    || die "kubectl has no context '$KUBE_CONTEXT': create the kind cluster with 'make kind-up'."
}

# For real clusters: KUBE_CONTEXT if set, else the current context - named before anything is done.
use_cluster_context() {
  require_kubectl
  KUBE_CONTEXT="${KUBE_CONTEXT:-$(kubectl config current-context 2>/dev/null || true)}"
  [[ -n "$KUBE_CONTEXT" ]] || die "no kubectl context: set KUBE_CONTEXT or select one with 'kubectl config use-context'."
  log "kubectl context: $KUBE_CONTEXT"
}

kc() { kubectl --context "$KUBE_CONTEXT" "$@"; }

load_images_env() {
  set -a
  # shellcheck source=../images.env
  source "$ROOT/images.env"
  set +a
}

secret_value() {  # NAMESPACE SECRET KEY
  local encoded
  encoded="$(kc -n "$1" get secret "$2" -o "jsonpath={.data.$3}")" \
    || die "cannot read Secret $1/$2: is the project's stack applied ('make kind-up')?"
  [[ -n "$encoded" ]] || die "Secret $1/$2 has no key $3."
  printf '%s' "$encoded" | base64 -d
}

port_is_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

PORT_FORWARD_PIDS=()
PORT_FORWARD_LOGS=()
stop_port_forwards() {
  local pid
  for pid in "${PORT_FORWARD_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -f "${PORT_FORWARD_LOGS[@]}"
}

# port_forward NAMESPACE TARGET LOCAL_PORT REMOTE_PORT PORT_VARIABLE: runs until the script exits.
port_forward() {
  local namespace=$1 target=$2 local_port=$3 remote_port=$4 variable=$5 logfile pid
  port_is_open "$local_port" \
    && die "local port $local_port is already in use: pick a free one with $variable=<port>."
  logfile="$(mktemp)"
  PORT_FORWARD_LOGS+=("$logfile")
  kc -n "$namespace" port-forward "$target" "$local_port:$remote_port" >"$logfile" 2>&1 &
  pid=$!
  PORT_FORWARD_PIDS+=("$pid")
  trap stop_port_forwards EXIT
  for _ in $(seq 60); do
    port_is_open "$local_port" && return 0
    kill -0 "$pid" 2>/dev/null || die "port-forward to $namespace/$target failed: $(cat "$logfile")"
    sleep 0.5
  done
  die "port-forward to $namespace/$target did not answer within 30 s: $(cat "$logfile")"
}
