"""The slim, weights-only export of a model for scoring (``mammo predict``, the scorer).

A training checkpoint carries what resuming needs (optimiser, scheduler and scaler state, the
history): about three times the weights. The export keeps what inference needs and nothing else,
as plain tensors and values, loadable with ``torch.load(..., weights_only=True)``:

- ``model``: the network's state_dict, ``model_config``: backbone and input channels;
- ``image_size`` (S or (H, W)) and ``preprocessing``: decode to single-channel uint8, resize to
  ``image_size``, then ``x * scale + shift`` (the normalisation of training, GRAY_MEAN/GRAY_STD),
  repeated to 3 channels when ``in_channels`` is 3; the output is one logit per image,
  sigmoid = probability of cancer;
- ``threshold`` (the operating threshold chosen on validation) and ``breast_aggregation`` (how a
  breast's image probabilities combine), the two things that turn probabilities into a flag;
- ``source``: the checkpoint's sha256, stage, epoch, split fingerprint; ``versions``.

``write_program`` adds an optional ``torch.export`` program of the same network with its
preprocessing (the successor of TorchScript; checked to give the same outputs). ``write_onnx``
writes the same function as an ONNX file for ONNX Runtime, the fast CPU path of ``mammo
predict --runtime onnx`` (``mammo.runtimes``), checked against the eager network at export.
``publish_export`` is what the promoter calls to put the export (and its ONNX file) beside the
production checkpoint.

An ensemble of fold models (``mammo.ensemble``) is one file too (``write_ensemble``, format
``ENSEMBLE_FORMAT``): every member's export, each at its own input size, the ensemble's
threshold and breast rule. It is weights-only already, so it is its own export; it is what
the evaluator offers for promotion, and production holds it as it holds a checkpoint.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from mammo.data.augment import GRAY_MEAN, GRAY_STD, BatchTransform
from mammo.engine.checkpoint import FORMAT as CHECKPOINT_FORMAT
from mammo.engine.checkpoint import check_payload, library_versions, load_checkpoint, load_failure, model_from_checkpoint
from mammo.errors import CheckpointError
from mammo.imagesize import image_hw, parse_image_size
from mammo.storage.atomic import atomic_path
from mammo.storage.integrity import sha256_file

log = logging.getLogger(__name__)

EXPORT_FORMAT = "mammo-weights/1"
ENSEMBLE_FORMAT = "mammo-ensemble-weights/1"
#: Why production holds no separate export and no ONNX file for an ensemble.
ENSEMBLE_NO_EXPORT = "an ensemble's file is its members' weights-only exports (no separate export); its members run eager"
#: Largest absolute difference allowed between the checkpoint's and an export's probabilities.
TOLERANCE = 1e-5
#: Largest absolute difference allowed between eager and ONNX Runtime probabilities: another
#: engine's float kernels (fused convolutions, other summation orders) on any CPU; ResNet-50 and
#: EfficientNet-B0 at 512 px differ by about 1e-6 (``mammo bench predict``).
ONNX_TOLERANCE = 1e-4


def export_name(sha256: str) -> str:
    """The export's file name beside ``model-<sha12>.pt`` in a production folder."""
    return f"model-{sha256[:12]}.weights.pt"


def onnx_name(sha256: str) -> str:
    """The ONNX file's name beside ``model-<sha12>.pt`` in a production folder."""
    return f"model-{sha256[:12]}.onnx"


def preprocessing(in_channels: int) -> dict[str, Any]:
    """How an image becomes the network's input (what ``BatchTransform`` does in evaluation)."""
    return {
        "decode": "single-channel uint8 (8-bit as is, 16-bit scaled to 0..255), resized to image_size",
        "scale": 1.0 / (255.0 * GRAY_STD),
        "shift": -GRAY_MEAN / GRAY_STD,
        "mean": GRAY_MEAN,
        "std": GRAY_STD,
        "in_channels": in_channels,
        "layout": "NCHW float32; y = x * scale + shift; repeated to 3 channels when in_channels is 3",
        "output": "one logit per image; sigmoid(logit) = probability of cancer",
    }


def export_payload(
    checkpoint: dict[str, Any], *, threshold: float | None, breast_aggregation: str = "mean",
    source_sha256: str | None = None,
) -> dict[str, Any]:
    """The export of a loaded checkpoint (``load_checkpoint``)."""
    in_channels = int(checkpoint["model_config"]["in_channels"])
    return {
        "format": EXPORT_FORMAT,
        "model": checkpoint["model"],
        "model_config": dict(checkpoint["model_config"]),
        "image_size": checkpoint["image_size"],
        "preprocessing": preprocessing(in_channels),
        "threshold": None if threshold is None else float(threshold),
        "breast_aggregation": breast_aggregation,
        "source": {
            "sha256": source_sha256, "stage": checkpoint.get("stage"), "epoch": checkpoint.get("epoch"),
            "split_fingerprint": checkpoint.get("split_fingerprint"),
        },
        "versions": library_versions(),
    }


def write_export(
    checkpoint_path: str | Path, out_path: str | Path, *, threshold: float | None,
    breast_aggregation: str = "mean", source_sha256: str | None = None,
) -> dict[str, Any]:
    """Write the export of the checkpoint at ``checkpoint_path``; returns its path, size and
    sha256."""
    checkpoint = load_checkpoint(checkpoint_path, needs=("image_size",))
    payload = export_payload(
        checkpoint, threshold=threshold, breast_aggregation=breast_aggregation,
        source_sha256=source_sha256 or sha256_file(checkpoint_path),
    )
    return save_export(payload, out_path)


def save_export(payload: dict[str, Any], out_path: str | Path) -> dict[str, Any]:
    """Write an export payload (atomically); returns its path, size and sha256."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
    return {"path": str(out), "size": out.stat().st_size, "sha256": sha256_file(out)}


def load_export(path: str | Path) -> dict[str, Any]:
    """An export, loaded with ``weights_only=True``; one-line errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/foreign files
        raise CheckpointError(f"{path}: not a readable model file ({load_failure(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{path}: not a mammo weights export (expected format {EXPORT_FORMAT})")
    check_payload(payload, str(path), ("image_size",))
    return payload


def is_export(path: str | Path) -> bool:
    """Whether ``path`` holds a weights export (an earlier ``mammo export`` may be replaced)."""
    try:
        load_export(path)
    except CheckpointError:
        return False
    return True


def is_program(path: str | Path) -> bool:
    """Whether ``path`` holds a ``torch.export`` program archive (a zip with ``archive_format``)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/archive_format") for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def ensemble_payload(members: list[dict[str, Any]], *, threshold: float | None, breast_aggregation: str) -> dict[str, Any]:
    """One file's content for an ensemble: its ``members``' exports (``export_payload``),
    combined by the mean image probability, then ``breast_aggregation`` and ``threshold``."""
    if not members:
        raise CheckpointError("an ensemble needs at least one member")
    return {
        "format": ENSEMBLE_FORMAT,
        "combine": "mean image probability",
        "members": [{**member, "threshold": None, "breast_aggregation": breast_aggregation} for member in members],
        "threshold": None if threshold is None else float(threshold),
        "breast_aggregation": breast_aggregation,
        "versions": library_versions(),
    }


def write_ensemble(
    members: list[tuple[str | Path, str]], out_path: str | Path, *, threshold: float | None, breast_aggregation: str,
) -> dict[str, Any]:
    """Write the one file of an ensemble from its members' checkpoints (path and sha256 each,
    every file hashed first: ``IntegrityError`` naming a member whose bytes changed); returns
    its path, size and sha256."""
    from mammo.storage.integrity import verify

    exports = []
    for path, sha in members:
        verify(str(path), sha256_file(path), sha)
        exports.append(export_payload(load_checkpoint(path, needs=("image_size",)), threshold=None, source_sha256=sha))
    return save_export(ensemble_payload(exports, threshold=threshold, breast_aggregation=breast_aggregation), out_path)


def check_ensemble(payload: dict[str, Any], where: str) -> dict[str, Any]:
    """An ensemble file's content, checked: members that are each a complete export."""
    members = payload.get("members")
    if not isinstance(members, list) or not members:
        raise CheckpointError(f"{where}: an ensemble file without members")
    for i, member in enumerate(members, start=1):
        if not isinstance(member, dict) or member.get("format") != EXPORT_FORMAT:
            raise CheckpointError(f"{where}: ensemble member {i} is not a weights export")
        check_payload(member, f"{where} (member {i})", ("image_size",))
    return payload


def is_ensemble_file(path: str | Path) -> bool:
    """Whether ``path`` holds an ensemble's one file (``write_ensemble``)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch file, or another kind: the caller's loader reports it
        return False
    return isinstance(payload, dict) and payload.get("format") == ENSEMBLE_FORMAT


def load_model_file(path: str | Path) -> tuple[dict[str, Any], str]:
    """A checkpoint or an export, as an export-shaped dict, and which it was (``checkpoint`` or
    ``export``); threshold None for a checkpoint (it does not know the threshold its
    evaluation chose). An ensemble file (``write_ensemble``) comes back as it is, kind
    ``ensemble``: its ``members`` are export-shaped."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
    except Exception:  # reported below with the checkpoint loader's one-line message
        payload = None
    if isinstance(payload, dict) and payload.get("format") == EXPORT_FORMAT:
        check_payload(payload, str(path), ("image_size",))
        return payload, "export"
    if isinstance(payload, dict) and payload.get("format") == ENSEMBLE_FORMAT:
        return check_ensemble(payload, str(path)), "ensemble"
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        check_payload(payload, str(path), ("image_size",))
        return export_payload(payload, threshold=None), "checkpoint"
    load_checkpoint(path)  # raises the one-line error naming what is wrong
    raise CheckpointError(f"{path}: neither a mammo checkpoint nor a weights export")


def model_from_export(export: dict[str, Any], source: str = "export") -> torch.nn.Module:
    """The network of an export (or ``load_model_file`` result), weights loaded, in eval mode."""
    model = model_from_checkpoint({"model": export["model"], "model_config": export["model_config"]}, source=source)
    return model.eval()


class _Scored(torch.nn.Module):
    """uint8 images [B, 1, H, W] -> probabilities [B]: the network with its normalisation, for
    the exported program (no mammo code needed to use it)."""

    def __init__(self, model: torch.nn.Module, in_channels: int) -> None:
        super().__init__()
        self.model = model
        self.transform = BatchTransform(None, in_channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(self.transform(images)).squeeze(1).float())


def probabilities(model: torch.nn.Module, export: dict[str, Any], images: torch.Tensor) -> torch.Tensor:
    """Probabilities of uint8 images [B, 1, H, W] through ``model`` with the export's
    preprocessing, on the CPU in float32 (the reference for the checks)."""
    with torch.inference_mode():
        return _Scored(model.eval(), int(export["model_config"]["in_channels"]))(images)


def example_images(export: dict[str, Any], batch: int = 4, seed: int = 0) -> torch.Tensor:
    height, width = image_hw(parse_image_size(export["image_size"]))
    return torch.randint(0, 256, (batch, 1, height, width), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def write_program(export: dict[str, Any], out_path: str | Path) -> dict[str, Any]:
    """The export's network with its preprocessing as a ``torch.export`` program (``.pt2``:
    uint8 images [B, 1, H, W] in, probabilities [B] out, any batch size), usable without mammo
    (``torch.export.load(path).module()(images)``). ``torch.export`` succeeds TorchScript, which
    this torch deprecates. Checked against the eager network on images it was not traced with,
    to ``TOLERANCE``; returns its path and the largest difference seen."""
    model = model_from_export(export)
    scored = _Scored(model, int(export["model_config"]["in_channels"])).eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.inference_mode():
        program = torch.export.export(scored, (example_images(export),), dynamic_shapes={"images": {0: batch}})
        other = example_images(export, batch=3, seed=1)
        diff = float((scored(other) - program.module()(other)).abs().max())
    if diff > TOLERANCE:
        raise CheckpointError(f"exported program differs from the model by {diff:.2e} (> {TOLERANCE:g})")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.export.save(program, str(tmp))
    return {"path": str(out), "size": out.stat().st_size, "max_abs_diff": diff}


def write_onnx(export: dict[str, Any], out_path: str | Path) -> dict[str, Any]:
    """The export's network with its preprocessing as an ONNX file (uint8 images [B, 1, H, W]
    named ``images`` in, probabilities [B] out, any batch size), written by torch's
    ``torch.export``-based exporter. Loaded back by ONNX Runtime (``mammo.runtimes``, after its
    sha256 is checked) and compared with the eager network on a probe batch it was not traced
    with, to ``ONNX_TOLERANCE``: a file that scores differently is never written. Returns its
    path, size, sha256 and the largest difference seen."""
    from mammo.runtimes import onnx_probabilities, open_session, require_onnx

    require_onnx(export=True)
    scored = _Scored(model_from_export(export), int(export["model_config"]["in_channels"])).eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mammo-onnx-", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        quiet = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir")]
        levels = [logger.level for logger in quiet]
        try:
            for logger in quiet:
                logger.setLevel(logging.WARNING)  # the exporter's passes log every step at INFO
            program = torch.onnx.export(
                scored, (example_images(export, batch=2),), dynamo=True, verbose=False,
                input_names=["images"], output_names=["probs"], dynamic_shapes={"images": {0: batch}},
            )
            program.save(str(staged))
        except Exception as exc:  # the exporter raises many types; one line names the step
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"ONNX export of {export['model_config']['backbone']} failed: {first[:200]}") from None
        finally:
            for logger, level in zip(quiet, levels, strict=True):
                logger.setLevel(level)
        if sorted(p.name for p in Path(tmp).iterdir()) != [out.name]:
            raise CheckpointError(f"ONNX export wrote external data beside {out.name}: one self-contained file expected")
        digest = sha256_file(staged)
        probe = example_images(export, batch=3, seed=1)
        diff = float(abs(onnx_probabilities(open_session(staged, digest, threads=1), probe.numpy())
                         - probabilities(scored.model, export, probe).numpy()).max())
        if diff > ONNX_TOLERANCE:
            raise CheckpointError(f"ONNX file differs from the model by {diff:.2e} (> {ONNX_TOLERANCE:g}): not written")
        with atomic_path(out) as final:
            staged.replace(final)
    return {"path": str(out), "size": out.stat().st_size, "sha256": digest, "max_abs_diff": diff}


def publish_export(
    checkpoint_uri: str, sha256: str, prefix_uri: str, *, threshold: float | None,
    breast_aggregation: str = "mean", onnx: bool = True,
) -> tuple[list[tuple[str, int, str]], str | None]:
    """Write the export of the checkpoint at ``checkpoint_uri`` (verified against ``sha256``)
    to ``<prefix_uri>/model-<sha12>.weights.pt`` and, with ``onnx``, its ONNX file to
    ``model-<sha12>.onnx``; returns (key, size, sha256) of each, the weights first, for the
    production manifest, and why there is no ONNX file (None when there is). The promoter
    calls this before it moves the production pointer, so the pointer never names a file that
    is not there. An ONNX file that cannot be made is left out, not fatal: eager scoring needs
    only the weights. An ensemble's file is weights-only already: nothing is written (an empty
    list, and ``ENSEMBLE_NO_EXPORT`` as the reason there is no ONNX file)."""
    from mammo import storage
    from mammo.errors import MammoError

    key = export_name(sha256)
    published, onnx_error = [], None
    with tempfile.TemporaryDirectory(prefix="mammo-export-") as tmp:
        local = Path(tmp) / "checkpoint.pt"
        storage.get_file(checkpoint_uri, local, sha256=sha256)
        if is_ensemble_file(local):
            return [], ENSEMBLE_NO_EXPORT
        written = write_export(local, Path(tmp) / key, threshold=threshold,
                               breast_aggregation=breast_aggregation, source_sha256=sha256)
        info = storage.put_file(written["path"], storage.join(prefix_uri, key))
        published.append((key, written["size"], info.sha256 or written["sha256"]))
        log.info("weights-only export %s: %.1f MB", storage.join(prefix_uri, key), written["size"] / 1e6)
        if onnx:
            name = onnx_name(sha256)
            try:
                made = write_onnx(load_export(written["path"]), Path(tmp) / name)
            except MammoError as err:
                onnx_error = str(err)
                log.warning("no ONNX file: %s", err)
            else:
                info = storage.put_file(made["path"], storage.join(prefix_uri, name))
                if info.sha256 not in (None, made["sha256"]):
                    raise CheckpointError(f"{storage.join(prefix_uri, name)}: stored sha256 is not the verified file's")
                published.append((name, made["size"], made["sha256"]))
                log.info("ONNX file %s: %.1f MB, within %.1e of the eager model", storage.join(prefix_uri, name),
                         made["size"] / 1e6, made["max_abs_diff"])
    return published, onnx_error
