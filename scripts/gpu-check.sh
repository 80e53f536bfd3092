#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# make gpu-check: on a machine with an NVIDIA GPU, installs what the check needs (the project's
# virtual environment; nvidia-nvimgcodec for the GPU DICOM decode, for torch's CUDA major
# version, optional) and prints the GPU check's JSON (`mammo bench gpu`, mammo/gpu_check.py) on
# stdout; progress goes to stderr. Without a GPU it exits 2 with one line, before installing
# anything. Arguments are passed on (e.g. --scale tiny).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ! command -v nvidia-smi >/dev/null 2>&1 && [[ ! -e /dev/nvidia0 ]]; then
  echo "gpu-check: no NVIDIA GPU on this machine (no nvidia-smi, no /dev/nvidia0): run it on a machine with one" >&2
  exit 2
fi
make -C "$ROOT" --no-print-directory venv >&2
cuda_major="$("$VENV_BIN/python" -c 'import torch; print((torch.version.cuda or "0").split(".")[0])')"
if ! "$VENV_BIN/python" -c 'from nvidia import nvimgcodec' 2>/dev/null; then
  log "installing nvidia-nvimgcodec-cu$cuda_major (the GPU DICOM decode)"
  "$VENV_BIN/pip" install --quiet --no-cache-dir "nvidia-nvimgcodec-cu$cuda_major" >&2 \
    || log "nvidia-nvimgcodec-cu$cuda_major did not install: the check reports the GPU DICOM decode as skipped"
fi
exec "$VENV_BIN/mammo" bench gpu "$@"
