#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds or pushes the project's images under the names in images.env.
#   images.sh cpu   TRAIN_IMAGE_CPU + EVAL_IMAGE (kind; make images)
#   images.sh gpu   TRAIN_IMAGE (CUDA) + EVAL_IMAGE (make images-gpu)
#   images.sh push  pushes TRAIN_IMAGE + EVAL_IMAGE to MAMMO_REGISTRY (make images-push)
# Rebuilds are quick when only code changed: dependencies sit in their own cached layers.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mode="${1:-}"
[[ "$mode" =~ ^(cpu|gpu|push)$ ]] || die "usage: scripts/images.sh cpu|gpu|push"
require_docker
load_images_env

revision="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
# The commit's time, not the build's: rebuilding the same commit gives the same labels.
created="$(git -C "$ROOT" log -1 --format=%cI 2>/dev/null || echo unknown)"

build() {  # DOCKERFILE IMAGE [EXTRA BUILD ARGS...]
  local dockerfile=$1 image=$2
  shift 2
  log "building $image ($dockerfile $*)"
  docker build --file "$ROOT/$dockerfile" --tag "$image" \
    --build-arg "VERSION=$MAMMO_TAG" --build-arg "REVISION=$revision" --build-arg "CREATED=$created" \
    "$@" "$ROOT" || die "building $image failed (see the build log above)."
}

push() {  # IMAGE
  docker image inspect "$1" >/dev/null 2>&1 || die "image $1 is not built here: run 'make images-gpu' first."
  log "pushing $1"
  docker push "$1" || die "pushing $1 failed: log in to the registry ('docker login ${MAMMO_REGISTRY%%/*}') and check MAMMO_REGISTRY in images.env."
}

case "$mode" in
  cpu)
    build Dockerfile.train "$TRAIN_IMAGE_CPU" --build-arg TORCH_VARIANT=cpu
    build Dockerfile.eval "$EVAL_IMAGE"
    ;;
  gpu)
    build Dockerfile.train "$TRAIN_IMAGE" --build-arg TORCH_VARIANT=cuda
    build Dockerfile.eval "$EVAL_IMAGE"
    ;;
  push)
    push "$TRAIN_IMAGE"
    push "$EVAL_IMAGE"
    ;;
esac
