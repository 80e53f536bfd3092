#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# make kind-load: copies the CPU images (TRAIN_IMAGE_CPU, EVAL_IMAGE from images.env) from the
# local Docker into the kind node, where the kind compile profile and overlay expect them.
# Idempotent: kind skips an image the node already has.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_docker
require_kind
kind_cluster_exists || die "kind cluster '$KIND_CLUSTER' does not exist: run 'make kind-up' first."
load_images_env

for image in "$TRAIN_IMAGE_CPU" "$EVAL_IMAGE"; do
  docker image inspect "$image" >/dev/null 2>&1 || die "image $image is not built: run 'make images' first."
  log "loading $image into kind cluster '$KIND_CLUSTER'"
  kind load docker-image --name "$KIND_CLUSTER" "$image" || die "kind could not load $image (see above)."
done
