"""Self-describing checkpoints and the policy that decides which ones to keep.

A checkpoint is a plain dict saved with ``torch.save``: model, optimiser, scheduler and AMP
scaler state, epoch, resolved config, validation metrics, split fingerprint and library versions.
It holds only tensors and plain Python values so it loads with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import platform
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torchvision
from pydantic import ValidationError

from mammo import __version__
from mammo.config import ModelConfig, lookup_metric, metric_mode
from mammo.config_files import format_validation_error
from mammo.errors import CheckpointError
from mammo.imagesize import parse_image_size
from mammo.storage.atomic import atomic_path, link_or_copy

log = logging.getLogger(__name__)

FORMAT = "mammo-checkpoint/1"
#: File name -> metric it tracks. pF1 is the competition metric, judged per breast.
BEST_CHECKPOINTS = {
    "best_loss.pt": "image.loss",
    "best_auc.pt": "image.auc",
    "best_pr_auc.pt": "image.pr_auc",
    "best_pf1.pt": "breast.pf1",
}
LAST = "last.pt"

#: Called with (path, name) after a checkpoint file is written, and with (path, None) after one
#: is deleted, so a caller can mirror the run directory to object storage as it changes.
CheckpointListener = Callable[[Path, "str | None"], None]


def library_versions() -> dict[str, str]:
    return {
        "mammo": __version__,
        "torch": str(torch.__version__),  # a TorchVersion object, which weights_only refuses
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def save_checkpoint(payload: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


#: What readers of a checkpoint use besides the weights: its stage and epoch (evaluation's
#: log, the export's provenance) and the input size it was trained at.
RECORDED = ("stage", "epoch", "image_size")


def load_failure(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in a few words. Its message
    begins with advice to load again with ``weights_only=False`` - which would run whatever
    code the file carries - so the line that names what was refused is said instead."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    refused = "it holds Python objects a weights-only load refuses{}; it may carry code, so it is not loaded"
    for line in lines:
        found = re.search(r"(?:unsupported GLOBAL|Unsupported global: GLOBAL) ([\w.]+)", line)
        if found:
            return refused.format(f" ({found.group(1)})")
    for line in lines:
        if line.startswith("WeightsUnpickler error"):
            return line.removeprefix("WeightsUnpickler error:").strip()[:200]
    if lines and lines[0].startswith("Weights only load failed"):
        return refused.format("")
    return (lines or [type(exc).__name__])[0][:200]


def load_checkpoint(path: str | Path, needs: tuple[str, ...] = RECORDED) -> dict[str, Any]:
    """Load on CPU with ``weights_only=True``; a missing, foreign or malformed file (its weights,
    its model config, the ``needs`` of ``RECORDED``) is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({load_failure(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a mammo checkpoint (expected format {FORMAT})")
    check_payload(payload, str(path), needs)
    return payload


def check_payload(payload: dict[str, Any], source: str, needs: tuple[str, ...] = ()) -> None:
    """The parts readers rely on are there and sound - the weights (a state dict of tensors),
    the model's config and those of ``RECORDED`` named in ``needs`` - so a malformed file is
    one line naming what is wrong, not a traceback in whichever command meets it first."""
    weights = payload.get("model")
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise CheckpointError(f"{source}: not a mammo checkpoint (no model weights: 'model' is not a state dict)")
    broken = next((name for name, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())), None)
    if broken is not None:
        raise CheckpointError(f"{source}: its weights hold NaN or infinite values ({broken}): a diverged model scores nothing")
    kinds = {"stage": str, "epoch": int, "model_config": dict}
    for key in (*(k for k in needs if k in kinds), "model_config"):
        if not isinstance(payload.get(key), kinds[key]) or isinstance(payload.get(key), bool):
            raise CheckpointError(f"{source}: not a mammo checkpoint (no valid {key!r})")
    try:
        ModelConfig.model_validate({**payload["model_config"], "weights": None})
    except ValidationError as err:
        raise CheckpointError(f"{source}: its model_config is not valid ({format_validation_error(err, 'model_config')})") from None
    if "image_size" in needs:
        try:
            parse_image_size(payload.get("image_size"))
        except ValueError as err:
            raise CheckpointError(f"{source}: its recorded {err}") from None


def model_from_checkpoint(payload: dict[str, Any], source: str = "checkpoint") -> torch.nn.Module:
    """Rebuild the network a checkpoint was trained with and load its weights."""
    from mammo.models import build_model

    config = ModelConfig.model_validate({**payload["model_config"], "weights": None})
    model = build_model(config)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{source}: weights do not fit {config.backbone} ({first[:200]})") from None
    return model


class CheckpointKeeper:
    """Writes ``last.pt`` every epoch, ``best_<metric>.pt`` on improvement and keeps the
    ``top_k`` best epochs by the primary metric as ``topk_epochNNN.pt``.

    An epoch is saved once, as ``last.pt``; the other names it earns are hard links to that
    file, so a run directory holds each epoch at most once (a ResNet-50 checkpoint with Adam
    state is about 300 MB)."""

    def __init__(self, out_dir: Path, primary: str, top_k: int, listener: CheckpointListener | None = None) -> None:
        self.out_dir = out_dir
        self.primary = primary
        self.top_k = top_k
        self.listener = listener
        self.best: dict[str, float] = {}
        self.topk: list[tuple[float, int]] = []  # (primary value, epoch), best first

    def _better(self, key: str, value: float, than: float) -> bool:
        return value < than if metric_mode(key) == "min" else value > than

    def _notify(self, path: Path, name: str | None) -> None:
        if self.listener is not None:
            self.listener(path, name)

    def _link(self, source: Path, name: str) -> None:
        target = self.out_dir / name
        link_or_copy(source, target)
        self._notify(target, name)

    def update(
        self, epoch: int, metrics: dict[str, Any], make_payload: Callable[[dict[str, Any]], dict[str, Any]]
    ) -> list[str]:
        """Save this epoch where it earns a place; return the file names written.

        ``make_payload`` receives the keeper's state after this epoch, to store inside the
        checkpoint, so a resumed run continues with the right bests and top-k."""
        improved = self._record_bests(metrics)
        entered, evicted = self._rank(epoch, metrics)
        last = self.out_dir / LAST
        save_checkpoint(make_payload(self.state_dict()), last)
        self._notify(last, LAST)
        names = improved + ([f"topk_epoch{epoch:03d}.pt"] if entered else [])
        for name in names:
            self._link(last, name)
        for old in evicted:
            path = self.out_dir / f"topk_epoch{old:03d}.pt"
            path.unlink(missing_ok=True)
            self._notify(path, None)
        return [LAST, *names]

    def _record_bests(self, metrics: dict[str, Any]) -> list[str]:
        improved = []
        for name, key in BEST_CHECKPOINTS.items():
            value = lookup_metric(metrics, key)
            if value is None:
                continue
            if key not in self.best or self._better(key, value, self.best[key]):
                self.best[key] = value
                improved.append(name)
        return improved

    def _rank(self, epoch: int, metrics: dict[str, Any]) -> tuple[bool, list[int]]:
        """Insert this epoch into the top-k; return (entered, evicted epochs)."""
        value = lookup_metric(metrics, self.primary)
        if self.top_k == 0 or value is None:
            return False, []
        sign = -1.0 if metric_mode(self.primary) == "max" else 1.0
        ranked = sorted([*self.topk, (value, epoch)], key=lambda item: (sign * item[0], item[1]))
        self.topk = ranked[: self.top_k]
        return (value, epoch) in self.topk, [e for _, e in ranked[self.top_k :] if e != epoch]

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "topk": [[v, e] for v, e in self.topk]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = {k: float(v) for k, v in state["best"].items()}
        self.topk = [(float(v), int(e)) for v, e in state["topk"]]
