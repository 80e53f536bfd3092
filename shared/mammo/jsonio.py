"""JSON files as every part of mammo writes them: plain values, sorted keys, written atomically.

numpy scalars and arrays become plain numbers and lists, and undefined figures (NaN, inf)
become ``null``, so a metrics file is always valid JSON. numpy only: the torch-free components
write their ``result.json`` with this too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from mammo.storage.atomic import write_text_atomic


def to_jsonable(obj: Any) -> Any:
    """Plain Python values for json.dumps: numpy scalars/arrays converted, NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [to_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(payload: Any) -> str:
    """``payload`` as indented JSON with sorted keys and a final newline."""
    return json.dumps(to_jsonable(payload), indent=2, sort_keys=True) + "\n"


def write_json(path: str | Path, payload: Any) -> None:
    """Write ``payload`` to ``path`` as JSON (``dumps``); the file appears whole or not at all."""
    write_text_atomic(path, dumps(payload))
