#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Writes the git-ignored credential files the kustomize Secret generators read, with random
# values: k8s/base/mammo/minio.env (MinIO root + pipeline user) and k8s/base/kubeflow/minio.env
# (the pipeline user only, the same pair); k8s/base/mammo/minio-promoter.env and
# k8s/base/kubeflow/minio-promoter.env (the promoter's user, the only one that may write
# models/). Never overwrites: existing files are checked instead; a missing pair is added.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

STACK_ENV="$ROOT/k8s/base/mammo/minio.env"
PIPELINE_ENV="$ROOT/k8s/base/kubeflow/minio.env"
STACK_PROMOTER_ENV="$ROOT/k8s/base/mammo/minio-promoter.env"
PROMOTER_ENV="$ROOT/k8s/base/kubeflow/minio-promoter.env"

random_token() { od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'; }

env_value() {  # FILE KEY
  sed -n "s/^$2=//p" "$1" | tail -n 1
}

write_pipeline_env() {  # ACCESS_KEY SECRET_KEY
  printf '%s\n' \
    "# Written by scripts/cluster-secrets.sh; git-ignored. Same pair as k8s/base/mammo/minio.env." \
    "MINIO_ACCESS_KEY=$1" \
    "MINIO_SECRET_KEY=$2" >"$PIPELINE_ENV"
}

write_promoter_envs() {  # ACCESS_KEY SECRET_KEY
  printf '%s\n' "# Written by scripts/cluster-secrets.sh; git-ignored. Same pair as k8s/base/kubeflow/minio-promoter.env." \
    "MINIO_PROMOTER_ACCESS_KEY=$1" "MINIO_PROMOTER_SECRET_KEY=$2" >"$STACK_PROMOTER_ENV"
  printf '%s\n' "# Written by scripts/cluster-secrets.sh; git-ignored. Same pair as k8s/base/mammo/minio-promoter.env." \
    "MINIO_ACCESS_KEY=$1" "MINIO_SECRET_KEY=$2" >"$PROMOTER_ENV"
}

promoter_pair() {  # the promoter's user: written when both files are missing, else checked
  if [[ ! -f "$STACK_PROMOTER_ENV" && ! -f "$PROMOTER_ENV" ]]; then
    write_promoter_envs "promoter-$(random_token 6)" "$(random_token 24)"
    log "wrote random promoter credentials to ${STACK_PROMOTER_ENV#"$ROOT"/} and ${PROMOTER_ENV#"$ROOT"/}"
    return
  fi
  [[ -f "$STACK_PROMOTER_ENV" && -f "$PROMOTER_ENV" ]] \
    || die "only one of $STACK_PROMOTER_ENV and $PROMOTER_ENV exists: write the other from its .example with the same pair, or delete it and run this again."
  [[ "$(env_value "$STACK_PROMOTER_ENV" MINIO_PROMOTER_ACCESS_KEY)" == "$(env_value "$PROMOTER_ENV" MINIO_ACCESS_KEY)" \
     && "$(env_value "$STACK_PROMOTER_ENV" MINIO_PROMOTER_SECRET_KEY)" == "$(env_value "$PROMOTER_ENV" MINIO_SECRET_KEY)" ]] \
    || die "$STACK_PROMOTER_ENV and $PROMOTER_ENV disagree on the promoter's keys: the promoter would be refused by MinIO. Make them equal (or delete both and run this again)."
  [[ -n "$(env_value "$PROMOTER_ENV" MINIO_ACCESS_KEY)" && "$(env_value "$PROMOTER_ENV" MINIO_ACCESS_KEY)" != CHANGE_ME ]] \
    || die "$PROMOTER_ENV: MINIO_ACCESS_KEY is missing or still CHANGE_ME."
  log "promoter credential files exist and agree; nothing to do"
}

umask 077
if [[ ! -f "$STACK_ENV" ]]; then
  [[ -f "$PIPELINE_ENV" ]] \
    && die "$PIPELINE_ENV exists without $STACK_ENV: write the latter from its .example with the same MINIO_ACCESS_KEY/MINIO_SECRET_KEY, or delete both and run this again."
  access_key="mammo-$(random_token 6)"
  secret_key="$(random_token 24)"
  printf '%s\n' \
    "# Written by scripts/cluster-secrets.sh; git-ignored." \
    "MINIO_ROOT_USER=admin-$(random_token 6)" \
    "MINIO_ROOT_PASSWORD=$(random_token 24)" \
    "MINIO_ACCESS_KEY=$access_key" \
    "MINIO_SECRET_KEY=$secret_key" >"$STACK_ENV"
  write_pipeline_env "$access_key" "$secret_key"
  log "wrote random credentials to ${STACK_ENV#"$ROOT"/} and ${PIPELINE_ENV#"$ROOT"/}"
  promoter_pair
  exit 0
fi

for key in MINIO_ROOT_USER MINIO_ROOT_PASSWORD MINIO_ACCESS_KEY MINIO_SECRET_KEY; do
  value="$(env_value "$STACK_ENV" "$key")"
  [[ -n "$value" && "$value" != CHANGE_ME ]] || die "$STACK_ENV: $key is missing or still CHANGE_ME."
done
access_key="$(env_value "$STACK_ENV" MINIO_ACCESS_KEY)"
secret_key="$(env_value "$STACK_ENV" MINIO_SECRET_KEY)"
if [[ ! -f "$PIPELINE_ENV" ]]; then
  write_pipeline_env "$access_key" "$secret_key"
  log "wrote ${PIPELINE_ENV#"$ROOT"/} from the pipeline user in ${STACK_ENV#"$ROOT"/}"
elif [[ "$(env_value "$PIPELINE_ENV" MINIO_ACCESS_KEY)" != "$access_key" \
     || "$(env_value "$PIPELINE_ENV" MINIO_SECRET_KEY)" != "$secret_key" ]]; then
  die "$PIPELINE_ENV and $STACK_ENV disagree on MINIO_ACCESS_KEY/MINIO_SECRET_KEY: pipeline pods would be refused by MinIO. Make them equal (or delete $PIPELINE_ENV and run this again)."
else
  log "pipeline credential files exist and agree"
fi
promoter_pair
