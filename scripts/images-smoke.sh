#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The image smoke test (make images-smoke; part of make test): builds both images from this
# checkout with buildah and runs the components inside them, without Docker or a registry.
#
#   1. A stand-in for the python:3.11-slim-bookworm base, made from Debian's packages with
#      mmdebstrap (bookworm + python3.11 + venv + pip), cached as a tarball under .cache/.
#   2. Dockerfile.train and Dockerfile.eval built with `buildah bud --isolation chroot --layers`
#      (the host's CA certificates mounted read-only for pip, never copied into the image).
#      TORCH_VARIANT=cuda for both unless SMOKE_TORCH_VARIANT=cpu: PyTorch's CPU wheel index is
#      not reachable everywhere, and the CUDA wheels run on a CPU too. With one variant the two
#      images share the dependency layer, so the second build takes a minute.
#   3. tests/images/ (pytest) runs the checks and the component chain inside the images as uid
#      10001 against s3rver and the Pushgateway on 127.0.0.1, with the image's root read-only.
#   4. Everything is removed again: containers, images, layers and the build's temporary files
#      live in a private storage folder deleted at the end. Only the base tarball stays.
#
# Needs root (chroot isolation and the read-only mounts of the checks), buildah, mmdebstrap and
# unshare (make images-tools installs them on Debian/Ubuntu). MAMMO_SMOKE_DIR moves the work
# folder (default .cache/images-smoke); MAMMO_SMOKE_KEEP=1 keeps the images for another
# `scripts/images-smoke.sh check`, and `scripts/images-smoke.sh clean` removes them.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

mode="${1:-all}"
[[ "$mode" =~ ^(all|build|check|clean)$ ]] || die "usage: scripts/images-smoke.sh [all|build|check|clean]"

SMOKE_DIR="${MAMMO_SMOKE_DIR:-$ROOT/.cache/images-smoke}"
STORE="$SMOKE_DIR/storage"
VARIANT="${SMOKE_TORCH_VARIANT:-cuda}"
[[ "$VARIANT" =~ ^(cpu|cuda)$ ]] || die "SMOKE_TORCH_VARIANT must be cpu or cuda, not '$VARIANT'"
# Debian packages of the stand-in base: python and pip on PATH, pip allowed outside a venv (as
# in python:3.11-slim), groupadd/useradd. Changing the list changes the tarball's name.
BASE_PACKAGES="ca-certificates,python3,python3-venv,python3-pip,python-is-python3,passwd"
BASE_IMAGE="localhost/mammo-smoke/python:3.11-bookworm"
TRAIN_SMOKE_IMAGE="localhost/mammo-smoke/mammo-train:smoke"
EVAL_SMOKE_IMAGE="localhost/mammo-smoke/mammo-eval:smoke"
REPORT="$SMOKE_DIR/report.txt"
# buildah keeps a small blob-info cache in /var/lib/containers whatever --root says; a run that
# created that folder removes it again.
SYSTEM_STORE=/var/lib/containers
SYSTEM_STORE_EXISTED=1

# Every buildah call uses the private storage: no image or layer lands in /var/lib/containers.
bah() { TMPDIR="$STORE/tmp" buildah --root "$STORE/root" --runroot "$STORE/run" --storage-driver overlay "$@"; }

now() { date +%s; }

# The file system's used space, sampled every 5 s while the test runs: its peak above the start
# is the test's disk need (approximate: other processes write to the same disk).
used_mb() { df --output=used --block-size=1M "$SMOKE_DIR" | tail -n 1 | tr -d ' '; }
SAMPLER_PID=""
start_sampler() {
  local start
  start="$(used_mb)"
  echo "$start" >"$SMOKE_DIR/disk-start"
  echo "$start" >"$SMOKE_DIR/disk-peak"
  (
    peak=$start
    while sleep 5 && kill -0 "$$" 2>/dev/null; do  # ends with the script, even a killed one
      used="$(used_mb)"
      if (( used > peak )); then peak=$used; echo "$peak" >"$SMOKE_DIR/disk-peak"; fi
    done
  ) &
  SAMPLER_PID=$!
}
stop_sampler() {
  [[ -z "$SAMPLER_PID" ]] && return 0
  kill "$SAMPLER_PID" 2>/dev/null || true
  wait "$SAMPLER_PID" 2>/dev/null || true
  SAMPLER_PID=""
  printf 'disk: peak %s MB above the start\n' "$(( $(cat "$SMOKE_DIR/disk-peak") - $(cat "$SMOKE_DIR/disk-start") ))" >>"$REPORT"
  rm -f "$SMOKE_DIR/disk-peak" "$SMOKE_DIR/disk-start"
}

finish() {  # on exit of a full run: stop sampling, remove everything but the base tarball
  local status=$?
  stop_sampler
  clean
  if [[ "$SYSTEM_STORE_EXISTED" == 0 ]]; then rm -rf --one-file-system "$SYSTEM_STORE"; fi
  printf 'disk: %s MB left in %s (the base tarball)\n' "$(du -s --block-size=1M "$SMOKE_DIR" | cut -f1)" "$SMOKE_DIR" >>"$REPORT"
  log "image smoke test report ($REPORT):"
  sed 's/^/    /' "$REPORT" >&2
  exit "$status"
}

require_tools() {
  [[ "$EUID" == 0 ]] || die "the image smoke test needs root (buildah chroot isolation, mounts): run it as root or in CI."
  require_tool buildah "Install it: sudo apt-get install buildah (or: make images-tools)"
  require_tool mmdebstrap "Install it: sudo apt-get install mmdebstrap (or: make images-tools)"
  require_tool unshare "Install util-linux."
  [[ -x "$VENV_BIN/python" ]] || die "the project's virtual environment is missing: run 'make venv' first."
  [[ -x "$ROOT/.cache/s3rver/node_modules/.bin/s3rver" ]] || die "s3rver is missing: run 'make test-servers' first."
}

clean() {
  [[ -d "$STORE" ]] || return 0
  log "removing the smoke test's containers, images and layers ($STORE)"
  bah rm --all >/dev/null 2>&1 || true
  bah rmi --all --force >/dev/null 2>&1 || true
  # Anything still mounted below the store (an interrupted run) is unmounted before deleting.
  local mounts
  mounts="$(findmnt --list --noheadings --output TARGET | grep -F "$STORE/" | sort -r || true)"
  if [[ -n "$mounts" ]]; then
    while IFS= read -r target; do umount -l "$target" 2>/dev/null || true; done <<<"$mounts"
  fi
  rm -rf --one-file-system "$STORE"
}

base_image() {
  local key
  key="$(printf '%s' "bookworm $BASE_PACKAGES" | sha256sum | cut -c1-12)"
  BASE_TAR="$SMOKE_DIR/python3.11-bookworm-$key.tar.gz"
  if [[ ! -s "$BASE_TAR" ]]; then
    log "making the stand-in Python base with mmdebstrap (bookworm: $BASE_PACKAGES; cached in $BASE_TAR)"
    rm -f "$SMOKE_DIR"/python3.11-bookworm-*.tar.gz  # an older package list's tarball
    # mmdebstrap picks the output format from the name: it must end in .tar.gz. The hook's $1
    # is mmdebstrap's (the new root), hence single quotes.
    # shellcheck disable=SC2016
    mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
      --customize-hook='rm -f "$1"/usr/lib/python3.11/EXTERNALLY-MANAGED' \
      bookworm "$SMOKE_DIR/partial.tar.gz" || die "mmdebstrap failed (it needs Debian's package mirror)."
    mv "$SMOKE_DIR/partial.tar.gz" "$BASE_TAR"
  fi
  local ctr
  ctr="$(bah from scratch)"
  bah add --quiet "$ctr" "$BASE_TAR" / >/dev/null
  # What python:3.11-slim sets, so the Dockerfiles' ENV PATH=/opt/venv/bin:${PATH} keeps /usr/bin.
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 --cmd python3 "$ctr"
  bah commit --quiet --rm "$ctr" "$BASE_IMAGE" >/dev/null
}

build() {  # DOCKERFILE IMAGE
  local dockerfile=$1 image=$2 start
  start="$(now)"
  log "building $image from $dockerfile (TORCH_VARIANT=$VARIANT)"
  bah bud --quiet --isolation chroot --layers --pull=never \
    --volume /etc/ssl/certs:/etc/ssl/certs:ro \
    --build-arg "PYTHON_IMAGE=$BASE_IMAGE" --build-arg "TORCH_VARIANT=$VARIANT" \
    --build-arg "VERSION=$MAMMO_TAG" --build-arg "REVISION=$revision" --build-arg "CREATED=$created" \
    --file "$ROOT/$dockerfile" --tag "$image" "$ROOT" >"$STORE/build-$dockerfile.log" 2>&1 \
    || { tail -40 "$STORE/build-$dockerfile.log" >&2; die "building $image failed (log above)."; }
  printf '%s build %ss\n' "$dockerfile" "$(( $(now) - start ))" >>"$REPORT"
}

build_all() {
  load_images_env
  revision="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  created="$(git -C "$ROOT" log -1 --format=%cI 2>/dev/null || echo unknown)"
  mkdir -p "$STORE/tmp"
  local start
  start="$(now)"
  base_image
  printf 'base image %ss (tarball %s MB)\n' "$(( $(now) - start ))" "$(( $(stat -c %s "$BASE_TAR") / 1000000 ))" >>"$REPORT"
  build Dockerfile.train "$TRAIN_SMOKE_IMAGE"
  build Dockerfile.eval "$EVAL_SMOKE_IMAGE"
  bah images --format '{{.Name}}:{{.Tag}} {{.Size}}' >>"$REPORT"
}

check() {
  log "checking the images (tests/images)"
  MAMMO_SMOKE_STORE="$STORE" MAMMO_SMOKE_TRAIN_IMAGE="$TRAIN_SMOKE_IMAGE" \
    MAMMO_SMOKE_EVAL_IMAGE="$EVAL_SMOKE_IMAGE" MAMMO_SMOKE_TORCH_VARIANT="$VARIANT" \
    "$VENV_BIN/python" -m pytest -p no:cacheprovider "$ROOT/tests/images"
}

case "$mode" in
  clean)
    clean
    ;;
  build|all)
    require_tools
    mkdir -p "$SMOKE_DIR"
    start="$(now)"
    clean  # leftovers of an interrupted run
    [[ -e "$SYSTEM_STORE" ]] || SYSTEM_STORE_EXISTED=0
    : >"$REPORT"
    start_sampler
    if [[ "$mode" == all && "${MAMMO_SMOKE_KEEP:-0}" != 1 ]]; then
      trap finish EXIT
      trap 'exit 130' INT TERM  # interrupted: still clean up
    fi
    build_all
    printf 'images: %s MB in %s after both builds\n' "$(du -sx --block-size=1M "$STORE" | cut -f1)" "$STORE" >>"$REPORT"
    if [[ "$mode" == all ]]; then
      check_start="$(now)"
      check
      printf 'checks %ss\n' "$(( $(now) - check_start ))" >>"$REPORT"
    fi
    printf 'total %ss (before the clean-up)\n' "$(( $(now) - start ))" >>"$REPORT"
    if [[ "$mode" == build || "${MAMMO_SMOKE_KEEP:-0}" == 1 ]]; then
      stop_sampler
      log "image smoke test report ($REPORT):"
      sed 's/^/    /' "$REPORT" >&2
    fi
    ;;
  check)
    require_tools
    [[ -d "$STORE" ]] || die "no images to check: run 'MAMMO_SMOKE_KEEP=1 scripts/images-smoke.sh build' first."
    check
    ;;
esac
