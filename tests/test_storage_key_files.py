"""Storage keys from files (MINIO_ACCESS_KEY_FILE, MINIO_SECRET_KEY_FILE, MINIO_SESSION_TOKEN_FILE):
a mounted Secret instead of environment variables that every child process inherits."""

from __future__ import annotations

from pathlib import Path

import pytest

from mammo.errors import ConfigError
from mammo.storage.settings import MinioSettings, load_env_settings

VARIABLES = ["MINIO_ACCESS_KEY", "MINIO_SECRET_KEY", "MINIO_SESSION_TOKEN", "AWS_ACCESS_KEY_ID",
             "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"{name}_FILE", raising=False)
    monkeypatch.setenv("MINIO_ENDPOINT", "minio.mammo:9000")


def _secret(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_keys_are_read_from_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIO_ACCESS_KEY_FILE", _secret(tmp_path, "access", "mammo-abc\n"))
    monkeypatch.setenv("MINIO_SECRET_KEY_FILE", _secret(tmp_path, "secret", "s3cr3t-value"))
    monkeypatch.setenv("MINIO_SESSION_TOKEN_FILE", _secret(tmp_path, "token", "tok\n\n"))
    settings = load_env_settings(MinioSettings)
    assert settings.access_key is not None and settings.access_key.get_secret_value() == "mammo-abc"
    assert settings.secret_key is not None and settings.secret_key.get_secret_value() == "s3cr3t-value"
    assert settings.session_token is not None and settings.session_token.get_secret_value() == "tok"
    assert not settings.web_identity


def test_a_key_in_the_environment_wins_over_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIO_ACCESS_KEY", "direct")
    monkeypatch.setenv("MINIO_ACCESS_KEY_FILE", _secret(tmp_path, "access", "from-file"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-direct")
    monkeypatch.setenv("MINIO_SECRET_KEY_FILE", _secret(tmp_path, "secret", "from-file"))
    settings = load_env_settings(MinioSettings)
    assert settings.access_key is not None and settings.access_key.get_secret_value() == "direct"
    assert settings.secret_key is not None and settings.secret_key.get_secret_value() == "aws-direct"


def test_an_empty_key_file_is_no_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline mounts the Secret as files; for IRSA its keys are left empty, and the
    client must then use the web identity, not an empty key."""
    monkeypatch.delenv("MINIO_ACCESS_KEY", raising=False)
    monkeypatch.delenv("MINIO_SECRET_KEY", raising=False)
    monkeypatch.setenv("MINIO_ACCESS_KEY_FILE", _secret(tmp_path, "access", ""))
    monkeypatch.setenv("MINIO_SECRET_KEY_FILE", _secret(tmp_path, "secret", "\n"))
    settings = load_env_settings(MinioSettings)
    assert not settings.access_key and not settings.secret_key


@pytest.mark.parametrize(("content", "reason"), [(None, "No such file")])
def test_a_missing_key_file_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str | None, reason: str
) -> None:
    path = tmp_path / "secret"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("MINIO_ACCESS_KEY", "direct")
    monkeypatch.setenv("MINIO_SECRET_KEY_FILE", str(path))
    with pytest.raises(ConfigError) as caught:
        load_env_settings(MinioSettings)
    message = str(caught.value)
    assert message.startswith("environment: MINIO_SECRET_KEY_FILE: ") and reason in message
    assert "\n" not in message and str(path) in message
