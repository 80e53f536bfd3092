"""Clusters without MinIO keys: the standard AWS variables reach the S3 server as well, and a
web identity (IRSA) is handed to the minio client's credential provider, never guessed."""

from __future__ import annotations

from pathlib import Path

import pytest

from mammo import storage
from mammo.errors import ConfigError
from mammo.storage.settings import MinioSettings, load_env_settings
from servers import S3Env

AWS_AND_MINIO = ("MINIO_ENDPOINT", "MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_SECURE", "MINIO_REGION",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_WEB_IDENTITY_TOKEN_FILE",
                 "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")


@pytest.fixture
def aws_only(s3_env: S3Env, monkeypatch: pytest.MonkeyPatch) -> S3Env:
    """``s3_env`` reached through the AWS variables only (clients are made per configuration)."""
    server = s3_env.server
    for name in AWS_AND_MINIO:
        monkeypatch.delenv(name, raising=False)
    scheme = "https" if server.secure else "http"
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"{scheme}://{server.endpoint}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", server.secret_key)
    return s3_env


def test_aws_variables_alone_reach_the_s3_server(aws_only: S3Env, tmp_path: Path) -> None:
    source = tmp_path / "a.txt"
    source.write_text("hello")
    uri = storage.join(aws_only.uri, "aws/a.txt")
    storage.put_file(source, uri)
    assert storage.get_bytes(uri) == b"hello"
    settings = load_env_settings(MinioSettings)
    assert settings.secure is (aws_only.server.secure) and "://" not in settings.endpoint
    assert not settings.web_identity


def test_minio_variables_win_over_aws_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in AWS_AND_MINIO:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.example.org")
    monkeypatch.setenv("MINIO_ENDPOINT", "minio.mammo:9000")
    monkeypatch.setenv("MINIO_SECURE", "false")
    settings = load_env_settings(MinioSettings)
    assert (settings.endpoint, settings.secure) == ("minio.mammo:9000", False)


def test_a_web_identity_is_used_only_when_the_environment_names_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in AWS_AND_MINIO:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://s3.eu-west-1.amazonaws.com")
    assert not load_env_settings(MinioSettings).web_identity  # no keys, no role: anonymous, no metadata lookup
    token = tmp_path / "token"
    token.write_text("eyJ...")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/mammo")
    settings = load_env_settings(MinioSettings)
    assert settings.web_identity and settings.secure and settings.endpoint == "s3.eu-west-1.amazonaws.com"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    assert not load_env_settings(MinioSettings).web_identity  # static keys win


def test_a_bad_endpoint_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in AWS_AND_MINIO:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MINIO_ENDPOINT", "minio:9000/bucket")
    with pytest.raises(ConfigError, match=r"^environment: MINIO_ENDPOINT: expected host:port"):
        load_env_settings(MinioSettings)
