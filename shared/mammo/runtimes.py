"""How ``mammo predict`` and the scorer run the network: eager PyTorch or ONNX Runtime.

``eager`` (the default) is the computation evaluation ran: the operating threshold was chosen
on its outputs, bit for bit. ``onnx`` runs the model's ONNX file (``mammo.export.write_onnx``:
uint8 images in, probabilities out, the normalisation inside) with ONNX Runtime's CPU provider,
faster on a CPU node (``mammo bench predict``, README: Scoring on CPU nodes); its
probabilities differ from eager by float rounding, checked at export to ``ONNX_TOLERANCE``.

The ONNX file is the one the production manifest lists (fetched and verified) or, for a
checkpoint, a weights export or an older production folder, exported for this run. Either way
its sha256 is checked against the recorded one right before ONNX Runtime reads it, and a file
ONNX Runtime cannot load is a one-line ``CheckpointError``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mammo.errors import CheckpointError, ConfigError

# numpy, torch and ONNX Runtime are imported where used: the CLI reads RUNTIMES at start-up.

RUNTIMES = ("eager", "onnx")
DEFAULT_RUNTIME = "eager"


def import_onnxruntime() -> Any:
    """``onnxruntime`` with its telemetry off. Its Linux builds otherwise keep a device id and an
    event database under ``~/.cache/Microsoft`` and try to upload them over HTTPS: nothing a
    hospital's scoring node may do, and a write outside the pod's scratch. The switch is read
    when the library starts, so it is set before the first import."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    import onnxruntime

    onnxruntime.disable_telemetry_events()
    return onnxruntime


def require_onnx(*, export: bool = False) -> None:
    """ONNX Runtime (and, to write a file, onnx and onnxscript for torch's exporter) is
    importable; else a one-line ``ConfigError`` naming the extra to install."""
    modules = ("onnxruntime", "onnx", "onnxscript") if export else ("onnxruntime",)
    for module in modules:
        try:
            import_onnxruntime() if module == "onnxruntime" else __import__(module)
        except ImportError:
            raise ConfigError(f"--runtime onnx needs {module}: pip install 'mammo[onnx]'") from None


def check_runtime(runtime: str, device: str) -> str:
    """``runtime`` if it is one of ``RUNTIMES`` and fits ``device`` (ONNX Runtime runs here on the
    CPU only); else a one-line ``ConfigError``."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    if runtime == "onnx":
        if device not in ("auto", "cpu"):
            raise ConfigError(f"--runtime onnx runs on the CPU; --device {device} needs --runtime eager")
        require_onnx()
    return runtime


def open_session(path: str | Path, sha256: str | None, threads: int | None = None) -> Any:
    """An ONNX Runtime CPU session of the file at ``path``, after its sha256 is checked against
    ``sha256`` (a file without a recorded hash is refused: ORT would parse whatever is there).
    ``threads``: intra-op threads (default: torch's thread count, as eager uses)."""
    import torch

    ort = import_onnxruntime()

    from mammo.storage.integrity import sha256_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"ONNX file not found: {path}")
    actual = sha256_file(path)
    if sha256 is None or actual != sha256:
        raise CheckpointError(
            f"{path}: sha256 {actual[:12]}... is not the recorded "
            f"{'(none)' if sha256 is None else sha256[:12] + '...'}; refusing to load this ONNX file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own types for malformed files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CheckpointError(f"{path}: not a loadable ONNX model ({first[:200]})") from None
    inputs = session.get_inputs()
    if [i.name for i in inputs] != ["images"] or inputs[0].type != "tensor(uint8)":
        raise CheckpointError(f"{path}: not a mammo ONNX file (expected one uint8 input named 'images')")
    return session


def onnx_probabilities(session: Any, images: Any) -> Any:
    """Probabilities [B] (float32 numpy) of uint8 images [B, 1, H, W] (numpy)."""
    import numpy as np

    return session.run(None, {"images": np.ascontiguousarray(images, dtype=np.uint8)})[0].reshape(-1)


def predict_onnx(session: Any, loader: Any, desc: str) -> Any:
    """``mammo.engine.loop.predict`` with ONNX Runtime in place of the network: probabilities
    of every readable image of ``loader``, in dataset order."""
    import numpy as np

    from mammo.engine.loop import Predictions
    from mammo.progress import track

    indices, probs, skipped = [], [], 0
    for batch in track(loader, desc=desc):
        skipped += batch["skipped"]
        if len(batch["labels"]) == 0:
            continue
        probs.append(onnx_probabilities(session, batch["images"].numpy()))
        indices.append(batch["index"].numpy())
    return Predictions(
        index=np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64),
        probs=np.concatenate(probs).astype(np.float64) if probs else np.zeros(0),
        loss=None, skipped=skipped,
    )
