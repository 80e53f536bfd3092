"""Storage settings, read from the environment only (never from code or YAML).

Credentials belong to the deployment (a Kubernetes secret, a developer's shell), not to a run
config that gets written next to the outputs, so they are not part of ``mammo.config``.
"""

from __future__ import annotations

import os
from typing import Any, Literal, TypeVar

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mammo.errors import ConfigError

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class MinioSettings(BaseSettings):
    """Where the S3 service is and who we are there: ``MINIO_*``, or the standard AWS
    variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_SESSION_TOKEN``, ``AWS_REGION``); ``MINIO_*`` wins where both are set. Without keys,
    a web identity (IRSA: ``AWS_WEB_IDENTITY_TOKEN_FILE`` + ``AWS_ROLE_ARN``) or a container
    role (``AWS_CONTAINER_CREDENTIALS_*``) gives short-lived credentials (``web_identity``)."""

    model_config = SettingsConfigDict(env_prefix="MINIO_", frozen=True, populate_by_name=True)

    endpoint: str | None = Field(None, description="host:port, without scheme (MINIO_ENDPOINT).")
    aws_endpoint_url: str | None = Field(
        None, validation_alias=AliasChoices("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"), exclude=True,
        description="http(s)://host[:port], used when MINIO_ENDPOINT is not set; its scheme sets TLS.",
    )
    access_key: SecretStr | None = Field(None, validation_alias=AliasChoices("MINIO_ACCESS_KEY", "AWS_ACCESS_KEY_ID"))
    secret_key: SecretStr | None = Field(None, validation_alias=AliasChoices("MINIO_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"))
    session_token: SecretStr | None = Field(None, validation_alias=AliasChoices("MINIO_SESSION_TOKEN", "AWS_SESSION_TOKEN"))
    secure: bool = Field(True, description="HTTPS; set MINIO_SECURE=false for plain HTTP.")
    region: str | None = Field(
        None, validation_alias=AliasChoices("MINIO_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
        description="Skips the bucket-location lookup when set.",
    )

    @model_validator(mode="before")
    @classmethod
    def _keys_from_files(cls, data: Any) -> Any:
        """``MINIO_ACCESS_KEY_FILE`` / ``MINIO_SECRET_KEY_FILE`` / ``MINIO_SESSION_TOKEN_FILE``:
        the key read from a file (a mounted Secret), so that it need not sit in the environment
        of every process; trailing whitespace is dropped, an empty file is no key. A key given
        directly wins."""
        if not isinstance(data, dict):
            return data
        names = {"access_key": ("MINIO_ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
                 "secret_key": ("MINIO_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
                 "session_token": ("MINIO_SESSION_TOKEN", "AWS_SESSION_TOKEN")}
        for field, aliases in names.items():
            path = os.environ.get(f"{aliases[0]}_FILE")
            if not path or any(data.get(key) for key in (field, *aliases)):
                continue
            try:
                with open(path, encoding="utf-8") as handle:
                    value = handle.read().rstrip()
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
                raise ValueError(f"{aliases[0]}_FILE: cannot read {path}: {reason}") from None
            if value:  # an empty file is no key, as an empty variable is (IRSA: the Secret's keys left empty)
                data = {**data, field: value}
        return data

    @model_validator(mode="before")
    @classmethod
    def _endpoint_url(cls, data: Any) -> Any:
        """Without MINIO_ENDPOINT, ``AWS_ENDPOINT_URL`` (https://host:port) gives host:port,
        with TLS as its scheme says (unless MINIO_SECURE is set)."""
        if not isinstance(data, dict) or data.get("endpoint"):
            return data
        url = next((data[k] for k in ("AWS_ENDPOINT_URL_S3", "aws_endpoint_url") if data.get(k)), None)
        if isinstance(url, str) and url.startswith(("http://", "https://")):
            scheme, _, rest = url.partition("://")
            data = {**data, "endpoint": rest.rstrip("/")}
            data.setdefault("secure", scheme == "https")
        elif isinstance(url, str):
            data = {**data, "endpoint": url}
        return data

    @field_validator("endpoint")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None and "@" in value:  # never echoed: the part before @ may be a password
            raise ValueError("holds credentials (user:password@...); give host:port only, and the keys in "
                             "MINIO_ACCESS_KEY and MINIO_SECRET_KEY")
        if value is not None and ("://" in value or "/" in value):
            raise ValueError(f"expected host:port without scheme or path, got {value!r}")
        return value or None

    @property
    def web_identity(self) -> bool:
        """No keys, but the environment names a role to assume (IRSA, ECS/EKS pod identity)."""
        if self.access_key or self.secret_key:
            return False
        return bool(os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") and os.environ.get("AWS_ROLE_ARN")) or bool(
            os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        )


class StorageSettings(BaseSettings):
    """How transfers behave: retry budget, multipart part size, parallelism, timeouts."""

    model_config = SettingsConfigDict(env_prefix="MAMMO_STORAGE_", frozen=True)

    retry_seconds: float = Field(
        60.0, ge=0, description="Total time spent retrying transient errors of one operation."
    )
    part_size_mib: int = Field(
        64, ge=5, le=5120, description="Multipart part size; files larger than this go in parts."
    )
    workers: int = Field(8, ge=1, le=64, description="Parallel transfers of prefix up/downloads.")
    connect_timeout_seconds: float = Field(10.0, gt=0, description="Seconds to wait for a connection to the endpoint.")
    read_timeout_seconds: float = Field(
        120.0, gt=0,
        description="Seconds to wait for the next bytes of an answer; never more than retry_seconds (when that "
        "is above 0), so one endpoint that accepts and never answers cannot outlast the retry budget.",
    )

    conditional_writes: Literal["auto", "on", "off"] = Field(
        "auto",
        description="S3 conditional writes (If-Match / If-None-Match on PUT) for the promotion lock and the "
        "production switch: auto probes the bucket once per process (MinIO, AWS S3, GCS and R2 honour them; "
        "servers that ignore the headers get the listing-based lock); on trusts the store without the probe; "
        "off always uses the listing-based lock. Every process sharing a lock must resolve to the same choice.",
    )

    @property
    def request_read_timeout(self) -> float:
        """The read timeout requests use: bounded by the retry budget."""
        return min(self.read_timeout_seconds, self.retry_seconds) if self.retry_seconds > 0 else self.read_timeout_seconds


class LockSettings(BaseSettings):
    """Locks on storage (``mammo.storage.lock``): how long a holder's claim lasts without
    renewal, how long to wait for the lock, and how far apart machines' clocks may be."""

    model_config = SettingsConfigDict(env_prefix="MAMMO_LOCK_", frozen=True)

    ttl_seconds: float = Field(
        120.0, ge=1, le=86400, description="A holder's claim lasts this long unless renewed (every ttl/3)."
    )
    wait_seconds: float = Field(900.0, ge=0, le=86400, description="How long to wait for a held lock.")
    clock_skew_seconds: float = Field(
        10.0, ge=0, le=3600, description="Clock difference tolerated between machines sharing a lock."
    )


def load_env_settings(model: type[SettingsT]) -> SettingsT:
    """Read ``model`` from the environment; a bad value is a one-line ``ConfigError`` naming
    the variable."""
    try:
        return model()
    except ValidationError as err:
        prefix = str(model.model_config.get("env_prefix", ""))
        parts = []
        for item in err.errors():
            where = "_".join(str(p) for p in item["loc"])
            name = where if where.isupper() else prefix + where.upper()  # an alias is the variable itself
            message = item["msg"].removeprefix("Value error, ")
            parts.append(f"{name}: {message}" if where else message)  # a model check names its variable
        raise ConfigError("environment: " + "; ".join(parts)) from None
