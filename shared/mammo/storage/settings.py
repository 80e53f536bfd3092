"""Storage settings, read from the environment only (never from code or YAML).

Credentials belong to the deployment (a Kubernetes secret, a developer's shell), not to a run
config that gets written next to the outputs, so they are not part of ``mammo.config``.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mammo.errors import ConfigError

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class MinioSettings(BaseSettings):
    """Where the S3 service is: ``MINIO_ENDPOINT`` (host:port), keys, TLS and region."""

    model_config = SettingsConfigDict(env_prefix="MINIO_", frozen=True)

    endpoint: str | None = Field(None, description="host:port, without scheme.")
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    secure: bool = Field(True, description="HTTPS; set MINIO_SECURE=false for plain HTTP.")
    region: str | None = Field(None, description="Skips the bucket-location lookup when set.")

    @field_validator("endpoint")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None and ("://" in value or "/" in value):
            raise ValueError(f"expected host:port without scheme or path, got {value!r}")
        return value or None


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
    connect_timeout_seconds: float = Field(10.0, gt=0)
    read_timeout_seconds: float = Field(120.0, gt=0)


class LockSettings(BaseSettings):
    """Locks on storage (``mammo.storage.lease``): how long a holder's claim lasts without
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
            name = prefix + "_".join(str(p) for p in item["loc"]).upper()
            parts.append(f"{name}: {item['msg'].removeprefix('Value error, ')}")
        raise ConfigError("environment: " + "; ".join(parts)) from None
