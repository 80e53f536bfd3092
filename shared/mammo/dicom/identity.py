"""Keyed pseudonyms for the identifiers a DICOM export carries (README, Data: DICOM).

A hospital's ``PatientID`` is the medical record number and its UIDs identify the exam; the
preprocessor's outputs (PNG names, ``train.csv``, ``preprocess.json``, journals, manifest) carry
instead ``HMAC-SHA256(site key, kind + value)``, 20 hex digits: the same value with the same key
is the same pseudonym in every run (splits stay stable as the data grow), and without the key
nobody can compute one from a record number. The key comes from ``--pseudonym-key-file`` or the
environment variable ``MAMMO_PSEUDONYM_KEY`` (in the pipeline: a Kubernetes Secret); without one
the preprocessor refuses unless ``keep_identifiers`` says the input is de-identified already
(the RSNA data). The way back (pseudonym -> original) is written only to ``--identifier-map``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from mammo.errors import ConfigError

KEY_ENV = "MAMMO_PSEUDONYM_KEY"
#: A shorter key could be guessed (a record number space is small, the key must not be).
MIN_KEY_BYTES = 16
PSEUDONYM_HEX = 20
#: Columns of the identifier map, pseudonyms first.
MAP_COLUMNS = (
    "patient_id", "image_id", "source_pseudonym", "original_patient_id", "original_image_id", "source",
    "study_instance_uid", "series_instance_uid", "sop_instance_uid", "accession_number",
)


@dataclass(frozen=True)
class Pseudonyms:
    """The site key's pseudonyms of patient ids, image ids and source keys."""

    key: bytes

    def _of(self, kind: str, value: str) -> str:
        digest = hmac.new(self.key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()
        return digest[:PSEUDONYM_HEX]

    def patient(self, value: str) -> str:
        return self._of("patient", value)

    def image(self, value: str) -> str:
        return self._of("image", value)

    def source(self, key: str) -> str:
        """A source file's key below the input (its path can carry identifiers, too)."""
        return "src-" + self._of("source", key)


def _checked(key: bytes, where: str) -> bytes:
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"{where}: the pseudonym key is {len(key)} bytes, at least {MIN_KEY_BYTES} are needed "
            "(e.g. openssl rand -hex 32)"
        )
    return key


def load_key(key_file: str | os.PathLike[str] | None = None) -> bytes | None:
    """The site key: the file's contents (a trailing newline dropped) when ``key_file`` is
    given, else ``$MAMMO_PSEUDONYM_KEY``, else None; a short or unreadable key is a one-line
    ``ConfigError``."""
    if key_file:
        path = Path(key_file)
        try:
            data = path.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ConfigError(f"--pseudonym-key-file {key_file}: cannot be read ({exc.strerror or exc})") from None
        return _checked(data, f"--pseudonym-key-file {key_file}")
    value = os.environ.get(KEY_ENV)
    if value is None or value == "":
        return None
    return _checked(value.encode(), KEY_ENV)


def pseudonyms_for(keep_identifiers: bool, key: bytes | None) -> Pseudonyms | None:
    """None when identifiers are kept (the input is de-identified), else the key's pseudonyms;
    without a key a one-line ``ConfigError``: identifiers never leave by default."""
    if keep_identifiers:
        return None
    if key is None:
        raise ConfigError(
            f"no pseudonym key: patient and image ids are replaced by keyed pseudonyms; set {KEY_ENV} or "
            "--pseudonym-key-file FILE (e.g. openssl rand -hex 32 > FILE, kept secret), or pass "
            "--keep-identifiers (keep_identifiers=true) if the input is de-identified already (e.g. RSNA)"
        )
    return Pseudonyms(key)


__all__ = ["KEY_ENV", "MAP_COLUMNS", "Pseudonyms", "load_key", "pseudonyms_for"]
