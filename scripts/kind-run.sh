#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# make kind-run: compiles the pipeline with the `kind` profile (CPU images from images.env),
# submits it to KFP in the kind cluster through a port-forward, follows it to the end, and
# prints a summary of the evaluator's metrics from MinIO (the table `mammo evaluate` prints).
# Each call starts a new run.
# SUBMIT_ARGS replaces the default submit options (profile, experiment, dataset parameter).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KFP_LOCAL_PORT="${KFP_LOCAL_PORT:-18888}"
MINIO_LOCAL_PORT="${MINIO_LOCAL_PORT:-19000}"
DATASET_PREFIX="${DATASET_PREFIX:-datasets/demo}"
PIPELINE_FILE="${PIPELINE_FILE:-$ROOT/.cache/kind/mammo-training.yaml}"
read -r -a submit_args <<<"${SUBMIT_ARGS:---profile kind --experiment mammo-kind --param dataset_uri=s3://$MAMMO_BUCKET/$DATASET_PREFIX}"

require_venv
use_kind_context
kc -n "$KFP_NAMESPACE" get service ml-pipeline >/dev/null 2>&1 \
  || die "KFP is not installed in the kind cluster: run 'make kind-up'."

mkdir -p "$(dirname "$PIPELINE_FILE")"
log "compiling the pipeline (profile kind) to ${PIPELINE_FILE#"$ROOT"/}"
"$VENV_BIN/mammo" pipeline compile --profile kind --out "$PIPELINE_FILE"

port_forward "$KFP_NAMESPACE" svc/ml-pipeline "$KFP_LOCAL_PORT" 8888 KFP_LOCAL_PORT
log "submitting and following the run (KFP UI: kubectl -n $KFP_NAMESPACE port-forward svc/ml-pipeline-ui 8080:80)"
if ! "$VENV_BIN/mammo" pipeline submit --host "http://127.0.0.1:$KFP_LOCAL_PORT" "${submit_args[@]}" --wait; then
  die "the run did not succeed (see above). Open the KFP UI for the failing step's log; images missing in kind show up as ErrImagePull ('make images kind-load')."
fi

access_key="$(secret_value "$KFP_NAMESPACE" mammo-minio MINIO_ACCESS_KEY)"
secret_key="$(secret_value "$KFP_NAMESPACE" mammo-minio MINIO_SECRET_KEY)"
port_forward "$MAMMO_NAMESPACE" svc/minio "$MINIO_LOCAL_PORT" 9000 MINIO_LOCAL_PORT
BUCKET="$MAMMO_BUCKET" ENDPOINT="127.0.0.1:$MINIO_LOCAL_PORT" \
ACCESS_KEY="$access_key" SECRET_KEY="$secret_key" \
"$VENV_BIN/python" - <<'PY'
import json
import os
import sys

from minio import Minio

from mammo.evaluate import summary_of
from mammo.summaries import evaluation_table

bucket = os.environ["BUCKET"]
client = Minio(os.environ["ENDPOINT"], access_key=os.environ["ACCESS_KEY"],
               secret_key=os.environ["SECRET_KEY"], secure=False)
reports = [o for o in client.list_objects(bucket, prefix="runs/", recursive=True)
           if "/evaluator/" in o.object_name and o.object_name.endswith("metrics.json")]
if not reports:
    sys.exit(f"error: no evaluator metrics.json under s3://{bucket}/runs/: see the run in the KFP UI")
latest = max(reports, key=lambda o: o.last_modified)
folder = f"s3://{bucket}/{latest.object_name.rsplit('/', 1)[0]}"
metrics = json.loads(client.get_object(bucket, latest.object_name).read())
# The table `mammo evaluate` prints; every figure with its interval is in metrics.json and the report.
print(f"the latest run's evaluation ({folder}):")
print(evaluation_table(summary_of(metrics, folder)))
PY
