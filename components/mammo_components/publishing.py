"""A component's outputs: the published folder (``result.json`` beside the outputs, the
manifest written last), and, for the trainers, the run folder kept in step with storage while
they train (``sync_down`` before, ``RunMirror`` during). Torch-free."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mammo import storage
from mammo.jsonio import write_json
from mammo.storage import MANIFEST_NAME
from mammo.storage.base import local_files
from mammo.storage.integrity import sha256_file

log = logging.getLogger(__name__)

#: Every component stores its result under this name beside its outputs.
RESULT_NAME = "result.json"
#: Files a publication produces; a resumed run regenerates them instead of keeping old copies.
PUBLICATION_FILES = (MANIFEST_NAME, RESULT_NAME)


def publish_outputs(out_dir: Path, out_uri: str, result: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Write ``result.json`` beside the outputs, then publish the folder: objects first, the
    manifest last, so readers see all of it or none."""
    write_json(out_dir / RESULT_NAME, result)
    storage.publish(out_dir, out_uri, metadata=metadata)
    log.info("published %s", out_uri)


def read_result(out_uri: str) -> dict[str, Any]:
    """The ``result.json`` of a published component output folder, verified by its manifest."""
    manifest = storage.read_manifest(out_uri)
    if RESULT_NAME not in manifest.objects:
        raise storage.ArtifactNotFoundError(
            f"artifact not found: {storage.join(out_uri, RESULT_NAME)} (not a component's output folder?)"
        )
    return storage.get_json(storage.join(out_uri, RESULT_NAME), sha256=manifest.objects[RESULT_NAME].sha256)


def sync_down(run_uri: str, run_dir: Path) -> None:
    """Make ``run_dir`` hold what storage holds for this run: the state of an earlier attempt
    (to resume from), or nothing. Storage is the truth; local leftovers are removed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fetched = set(storage.download_prefix(run_uri, run_dir))
    for path in local_files(run_dir).values():
        if path not in fetched or path.name in PUBLICATION_FILES:
            path.unlink()
    if fetched:
        log.info("%s: %d files of an earlier attempt fetched to resume from", run_uri, len(fetched))


class RunMirror:
    """Mirrors a training run directory to ``run_uri`` while the engine writes it.

    Best and top-k checkpoints go up as they are saved. The epoch's resume point
    (``resume_name``, i.e. ``last.pt``) and the small files (history, config) go up at the end
    of the epoch, after them, and top-k files the engine evicted are deleted only after that:
    storage never holds a resume point whose best/top-k files are missing, and a killed pod
    loses at most the epoch it was in. A file with the content of one already uploaded
    (the best and top-k names of one epoch) is copied server-side instead of sent again.
    """

    def __init__(self, run_dir: Path, run_uri: str, resume_name: str) -> None:
        self.run_dir = run_dir
        self.run_uri = run_uri
        self.resume_name = resume_name
        self._pending: Path | None = None
        self._evicted: list[str] = []
        self._uploaded: dict[str, str] = {}  # name -> sha256 of what this mirror put there
        self._small: dict[str, tuple[int, int]] = {}  # name -> (size, mtime_ns) last sent

    def on_checkpoint(self, path: Path, name: str | None) -> None:
        """The engine's ``on_checkpoint`` callback: ``name`` None means ``path`` was deleted."""
        if name is None:
            self._evicted.append(path.name)
        elif name == self.resume_name:
            self._pending = path
        else:
            self._upload(path)

    def end_epoch(self) -> None:
        """Commit the epoch: small files, then the resume point, then evictions."""
        for rel, path in local_files(self.run_dir).items():
            stat = path.stat()
            if not rel.endswith(".pt") and self._small.get(rel) != (stat.st_size, stat.st_mtime_ns):
                storage.put_file(path, storage.join(self.run_uri, rel))
                self._small[rel] = (stat.st_size, stat.st_mtime_ns)
        if self._pending is not None:
            self._upload(self._pending)
            self._pending = None
        for name in self._evicted:
            storage.delete(storage.join(self.run_uri, name))
            self._uploaded.pop(name, None)
        self._evicted.clear()

    def _upload(self, path: Path) -> None:
        digest = sha256_file(path)
        uri = storage.join(self.run_uri, path.name)
        twin = next((n for n, d in self._uploaded.items() if d == digest and n != path.name), None)
        if twin is not None:
            storage.copy(storage.join(self.run_uri, twin), uri)
        else:
            storage.put_file(path, uri)
        self._uploaded[path.name] = digest
