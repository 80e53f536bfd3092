#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# make kind-data: uploads a dataset into the kind cluster's MinIO at
# s3://$MAMMO_BUCKET/$DATASET_PREFIX/ (default s3://mammo/datasets/demo/), through a
# port-forward, with the pipeline user's keys (so it also proves that user can write).
# DATA=<dir> uploads that RSNA-layout directory; without it the synthetic demo dataset is
# generated once (the kind preset's recipe) under .cache/kind/datasets/. Idempotent: objects whose
# content is already stored (same MD5/ETag) are skipped. Each object carries its sha256 as
# object metadata.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DATASET_PREFIX="${DATASET_PREFIX:-datasets/demo}"
MINIO_LOCAL_PORT="${MINIO_LOCAL_PORT:-19000}"

require_venv
use_kind_context

if [[ -n "${DATA:-}" ]]; then
  [[ -f "$DATA/train.csv" ]] || die "DATA=$DATA holds no train.csv: point DATA at an RSNA-layout dataset directory."
  data_dir="$DATA"
else
  # The kind preset's `synth` recipe (pipelines/mammo_pipelines/presets/kind.yaml), the data its parameters
  # are sized for; generated once into a folder named after the recipe (as `mammo run` does).
  data_dir="$("$VENV_BIN/python" -c 'import sys
from pathlib import Path
from mammo_pipelines.local_run import demo_dataset
from mammo_pipelines.parameters import load_preset
print(demo_dataset(Path(sys.argv[1]), load_preset("kind")["synth"]))' "$ROOT/.cache/kind" | tail -n 1)"
  log "demo dataset: ${data_dir#"$ROOT"/}"
fi

access_key="$(secret_value "$KFP_NAMESPACE" mammo-minio MINIO_ACCESS_KEY)"
secret_key="$(secret_value "$KFP_NAMESPACE" mammo-minio MINIO_SECRET_KEY)"
port_forward "$MAMMO_NAMESPACE" svc/minio "$MINIO_LOCAL_PORT" 9000 MINIO_LOCAL_PORT

log "uploading ${data_dir} to s3://$MAMMO_BUCKET/$DATASET_PREFIX/"
DATA_DIR="$data_dir" BUCKET="$MAMMO_BUCKET" PREFIX="$DATASET_PREFIX" \
ENDPOINT="127.0.0.1:$MINIO_LOCAL_PORT" ACCESS_KEY="$access_key" SECRET_KEY="$secret_key" \
"$VENV_BIN/python" - <<'PY'
import hashlib
import io
import os
import sys
from pathlib import Path

from minio import Minio
from minio.error import S3Error

root = Path(os.environ["DATA_DIR"])
bucket, prefix = os.environ["BUCKET"], os.environ["PREFIX"].strip("/")
client = Minio(os.environ["ENDPOINT"], access_key=os.environ["ACCESS_KEY"],
               secret_key=os.environ["SECRET_KEY"], secure=False)
if not client.bucket_exists(bucket):
    sys.exit(f"error: bucket {bucket} does not exist: re-run 'make kind-up' (its setup Job creates it)")
sent = kept = 0
for path in sorted(p for p in root.rglob("*") if p.is_file()):
    key = f"{prefix}/{path.relative_to(root).as_posix()}"
    data = path.read_bytes()
    try:
        if client.stat_object(bucket, key).etag == hashlib.md5(data).hexdigest():
            kept += 1
            continue
    except S3Error as err:
        if err.code != "NoSuchKey":
            raise
    client.put_object(bucket, key, io.BytesIO(data), len(data),
                      metadata={"sha256": hashlib.sha256(data).hexdigest()})
    sent += 1
print(f"s3://{bucket}/{prefix}/: {sent} objects uploaded, {kept} already there")
PY
