#!/bin/sh
# Runs in the minio/mc image (k8s Job minio-setup): creates the project's bucket and the
# bucket-scoped user whose keys pipeline pods get. Idempotent: a second run changes nothing.
# Inputs (env): MINIO_URL, MAMMO_BUCKET, MINIO_ROOT_USER/PASSWORD, MINIO_ACCESS_KEY/SECRET_KEY;
# MC_CONFIG_DIR (default /tmp/mc, on the Job's emptyDir).
set -eu

config_dir="${MC_CONFIG_DIR:-/tmp/mc}"
mcq() { mc --config-dir "$config_dir" --quiet "$@"; }

attempt=1
# Secrets never go on mc's command line (any process list shows it): mc reads a key it is not
# given from stdin, and printf is the shell's builtin.
until err=$(printf '%s\n' "$MINIO_ROOT_PASSWORD" | mcq alias set store "$MINIO_URL" "$MINIO_ROOT_USER" 2>&1); do
  if [ "$attempt" -ge 60 ]; then
    echo "minio-setup: cannot log in to MinIO at $MINIO_URL after $attempt attempts: $err" >&2
    echo "minio-setup: check 'kubectl -n mammo get pods -l app.kubernetes.io/name=minio' and the mammo-minio Secret" >&2
    exit 1
  fi
  attempt=$((attempt + 1))
  sleep 2
done

mcq mb --ignore-existing "store/$MAMMO_BUCKET"

# Pipeline pods may read, write and list inside the project's bucket, and nothing else.
policy="$config_dir/mammo-pipeline-policy.json"
printf '%s\n' \
  '{"Version": "2012-10-17", "Statement": [' \
  "  {\"Effect\": \"Allow\", \"Action\": [\"s3:GetBucketLocation\", \"s3:ListBucket\", \"s3:ListBucketMultipartUploads\"], \"Resource\": [\"arn:aws:s3:::$MAMMO_BUCKET\"]}," \
  "  {\"Effect\": \"Allow\", \"Action\": [\"s3:GetObject\", \"s3:PutObject\", \"s3:DeleteObject\", \"s3:AbortMultipartUpload\", \"s3:ListMultipartUploadParts\"], \"Resource\": [\"arn:aws:s3:::$MAMMO_BUCKET/*\"]}" \
  ']}' >"$policy"
mcq admin policy create store mammo-pipeline "$policy"
printf '%s\n' "$MINIO_SECRET_KEY" | mcq admin user add store "$MINIO_ACCESS_KEY"
if ! out=$(mcq admin policy attach store mammo-pipeline --user "$MINIO_ACCESS_KEY" 2>&1); then
  case "$out" in
    *"already in effect"*) ;;
    *) echo "minio-setup: attaching policy mammo-pipeline failed: $out" >&2; exit 1 ;;
  esac
fi
echo "minio-setup: bucket '$MAMMO_BUCKET' and the pipeline user are ready"
