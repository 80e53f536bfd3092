"""User-facing errors.

Anything a user can cause (bad table, missing file, wrong config value) raises a subclass of
``MammoError`` with a one-line message naming the file, row or field. The CLI prints that line
and exits non-zero; only programming errors produce tracebacks.
"""


class MammoError(Exception):
    """A problem the user can fix; ``str(err)`` is the whole message."""

    exit_code = 2


class DataError(MammoError):
    """The dataset table or an image is invalid."""


class ConfigError(MammoError):
    """A configuration value is invalid."""


class CheckpointError(MammoError):
    """A checkpoint is missing, unreadable or incompatible."""


class StorageError(MammoError):
    """Object storage failed: unreachable endpoint, rejected credentials, missing bucket, ..."""


class ArtifactNotFoundError(StorageError):
    """The object (or a step's manifest) does not exist; callers may treat this as "not yet"."""


class PreconditionFailed(StorageError):
    """A conditional write found the object changed (or present, or gone) since it was read."""


class IntegrityError(StorageError):
    """Stored bytes do not match their recorded sha256: never load them."""


class TrainingError(MammoError):
    """Training cannot go on: the loss became NaN or infinite."""


class DiskFullError(MammoError):
    """A file could not be written for lack of space (or quota): naming the file and the free
    space. Retrying on the same disk cannot help."""
