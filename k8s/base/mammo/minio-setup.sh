#!/bin/sh
# Runs in the minio/mc image (k8s Job minio-setup): creates the project's bucket and two users,
# one per role: the pipeline's (every step but the promoter) may read the bucket and write
# everything but models/; the promoter's may read the bucket and write models/ only, so no
# other step - and no other key - can change the production model. Idempotent: a second run
# changes nothing. Inputs (env): MINIO_URL, MAMMO_BUCKET, MINIO_ROOT_USER/PASSWORD,
# MINIO_ACCESS_KEY/SECRET_KEY (pipeline user), MINIO_PROMOTER_ACCESS_KEY/SECRET_KEY (promoter
# user); MC_CONFIG_DIR (default /tmp/mc, on the Job's emptyDir).
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

# Policies: both users list and read the whole bucket (and only it); the pipeline user writes
# anything but models/, the promoter user only models/.
list_bucket="  {\"Effect\": \"Allow\", \"Action\": [\"s3:GetBucketLocation\", \"s3:ListBucket\", \"s3:ListBucketMultipartUploads\"], \"Resource\": [\"arn:aws:s3:::$MAMMO_BUCKET\"]},"
write='["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]'
write_policy() {  # NAME FILE STATEMENTS...
  name="$1"; file="$2"; shift 2
  { printf '%s\n' '{"Version": "2012-10-17", "Statement": [' "$list_bucket"; printf '%s\n' "$@"; printf '%s\n' ']}'; } >"$file"
  mcq admin policy create store "$name" "$file"
}
write_policy mammo-pipeline "$config_dir/mammo-pipeline-policy.json" \
  "  {\"Effect\": \"Allow\", \"Action\": [\"s3:GetObject\"], \"Resource\": [\"arn:aws:s3:::$MAMMO_BUCKET/*\"]}," \
  "  {\"Effect\": \"Allow\", \"Action\": $write, \"Resource\": [\"arn:aws:s3:::$MAMMO_BUCKET/*\"]}," \
  "  {\"Effect\": \"Deny\", \"Action\": $write, \"Resource\": [\"arn:aws:s3:::$MAMMO_BUCKET/models/*\"]}"
write_policy mammo-promoter "$config_dir/mammo-promoter-policy.json" \
  "  {\"Effect\": \"Allow\", \"Action\": [\"s3:GetObject\"], \"Resource\": [\"arn:aws:s3:::$MAMMO_BUCKET/*\"]}," \
  "  {\"Effect\": \"Allow\", \"Action\": $write, \"Resource\": [\"arn:aws:s3:::$MAMMO_BUCKET/models/*\"]}"

add_user() {  # ACCESS_KEY SECRET_KEY POLICY
  printf '%s\n' "$2" | mcq admin user add store "$1"
  if ! out=$(mcq admin policy attach store "$3" --user "$1" 2>&1); then
    case "$out" in
      *"already in effect"*) ;;
      *) echo "minio-setup: attaching policy $3 failed: $out" >&2; exit 1 ;;
    esac
  fi
}
add_user "$MINIO_ACCESS_KEY" "$MINIO_SECRET_KEY" mammo-pipeline
add_user "$MINIO_PROMOTER_ACCESS_KEY" "$MINIO_PROMOTER_SECRET_KEY" mammo-promoter
echo "minio-setup: bucket '$MAMMO_BUCKET', the pipeline user and the promoter user are ready"
