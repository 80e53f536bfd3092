#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Builds or pushes the project's images under the names in images.env.
#   images.sh cpu   TRAIN_IMAGE_CPU + EVAL_IMAGE (kind; make images)
#   images.sh gpu   TRAIN_IMAGE (CUDA) + EVAL_IMAGE (make images-gpu)
#   images.sh push  pushes TRAIN_IMAGE + EVAL_IMAGE to MAMMO_REGISTRY (make images-push) and
#                   writes their pushed digests to images.env (TRAIN_IMAGE_DIGEST,
#                   EVAL_IMAGE_DIGEST), which pins the gpu profile to exactly these builds
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

push() {  # IMAGE DIGEST_KEY
  local image=$1 key=$2 repository digest
  docker image inspect "$image" >/dev/null 2>&1 || die "image $image is not built here: run 'make images-gpu' first."
  log "pushing $image"
  docker push "$image" || die "pushing $image failed: log in to the registry ('docker login ${MAMMO_REGISTRY%%/*}') and check MAMMO_REGISTRY in images.env."
  # The registry's digest of what was pushed: the RepoDigest of this repository.
  repository="${image%:*}"
  digest="$(docker image inspect --format '{{range .RepoDigests}}{{println .}}{{end}}' "$image" \
    | grep -F "$repository@sha256:" | head -n 1 | sed 's/.*@//')"
  [[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || die "no pushed digest of $image found (docker image inspect shows no RepoDigest for $repository)."
  write_digest "$key" "$digest"
  log "$key=$digest (images.env)"
}

write_digest() {  # KEY DIGEST: replace the KEY= line of images.env, or add it
  local key=$1 digest=$2 file="$ROOT/images.env" tmp
  tmp="$(mktemp "$file.XXXXXX")"
  if grep -q "^$key=" "$file"; then
    sed "s|^$key=.*|$key=$digest|" "$file" >"$tmp"
  else
    { cat "$file"; printf '%s=%s\n' "$key" "$digest"; } >"$tmp"
  fi
  chmod 0644 "$tmp"
  mv "$tmp" "$file"
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
    push "$TRAIN_IMAGE" TRAIN_IMAGE_DIGEST
    push "$EVAL_IMAGE" EVAL_IMAGE_DIGEST
    ;;
esac
