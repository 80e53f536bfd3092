"""Where things live below a storage root (``s3://bucket`` or a local directory).

    <root>/datasets/<name>/...                     input tables and images
    <root>/splits/<dataset-fingerprint>/...        fixed splits, reused across runs
    <root>/runs/<run-id>/<component>/...           checkpoints, metrics, reports of one run
    <root>/models/<name>/production/...            the promoted model

Every segment is a plain name (letters, digits, ``.``, ``_``, ``-``) so that a run id or
component name can never climb out of its folder or smuggle in a second path level.
"""

from __future__ import annotations

import re

from mammo.errors import ConfigError
from mammo.storage.uri import join

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(kind: str, value: str) -> str:
    """``value`` if it is a plain name, else a ``ConfigError`` naming ``kind``."""
    if not _NAME.match(str(value)) or ".." in str(value):
        raise ConfigError(
            f"{kind} {value!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return str(value)


def dataset_uri(root: str, name: str) -> str:
    return join(root, "datasets", check_name("dataset name", name))


def split_uri(root: str, dataset_fingerprint: str) -> str:
    return join(root, "splits", check_name("dataset fingerprint", dataset_fingerprint))


def run_uri(root: str, run_id: str, component: str) -> str:
    return join(root, "runs", check_name("run id", run_id), check_name("component", component))


def production_model_uri(root: str, name: str) -> str:
    return join(root, "models", check_name("model name", name), "production")
