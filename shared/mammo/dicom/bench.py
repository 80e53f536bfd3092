"""``mammo bench dicom``: files/s of the whole preprocessing against the raw decode alone.

On the same files in one process, alternating per file which of the two runs first (so both see
the file equally often in the page cache): the whole conversion (read, decode, windowing, breast
box, crop, resize, pad, PNG encode and write to a scratch folder) and the decode alone (read and
decode). Both timed in process CPU time, so the figures are per core and unaffected by other
processes. Decoder threads are limited to one. The conversion pseudonymises the ids (with a
fixed benchmark key), as a hospital's run does.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from mammo.dicom.options import PreprocessConfig
from mammo.errors import ConfigError
from mammo.imagesize import size_text

#: The benchmark's pseudonym key (not a secret: it pseudonymises nothing real).
BENCH_KEY = b"mammo-bench-dicom-pseudonym-key"


def _stage_times(path: Path, options: PreprocessConfig) -> dict[str, float]:
    """CPU seconds of each stage of one conversion (for the breakdown)."""
    from mammo.dicom.convert import encode_png, fit, place, resize
    from mammo.dicom.read import decode, read_header
    from mammo.dicom.roi import find_roi
    from mammo.dicom.windowing import choose_voi, to_display
    from mammo.imagesize import image_hw

    clock = time.process_time
    t0 = clock()
    decoded = decode(path, read_header(path))
    t1 = clock()
    display, _ = to_display(decoded.pixels, decoded.dataset, decoded.photometric, bits=options.bits,
                            voi=choose_voi(decoded.dataset, options.voi, options.window_index))
    t2 = clock()
    roi = find_roi(display, margin=options.margin)
    t3 = clock()
    box = roi.box
    _, h, w = fit(box.height, box.width, image_hw(options.image_size))
    fitted = resize(display[box.top : box.bottom, box.left : box.right].copy(), h, w)
    canvas, _, _ = place(fitted, image_hw(options.image_size), roi.chest_wall)
    t4 = clock()
    encode_png(canvas, options.png_compression)
    t5 = clock()
    return {"decode": t1 - t0, "window": t2 - t1, "roi": t3 - t2, "resize_pad": t4 - t3, "png": t5 - t4}


def bench_dicom(
    data: str | os.PathLike[str],
    *,
    image_size: Any = "1024x512",
    files: int | None = None,
    repeats: int = 1,
) -> dict[str, Any]:
    """Per-core files/s of preprocessing and of decoding alone on the DICOMs under ``data``."""
    from mammo.dicom.preprocess import Job, _convert, list_sources
    from mammo.dicom.read import decode

    root = Path(data).resolve()
    if not root.is_dir():
        raise ConfigError(f"--data {data}: not a directory")
    sources = list_sources(str(root))[: files or None]
    if not sources:
        raise ConfigError(f"--data {data}: no DICOM files (*.dcm) found")
    if repeats < 1:
        raise ConfigError("--repeats must be at least 1")
    options = PreprocessConfig(image_size=image_size)
    options_json = options.model_dump_json()
    scratch = Path(tempfile.mkdtemp(prefix="mammo-bench-dicom-"))
    out = scratch / "out"
    clock = time.process_time
    full_s = decode_s = 0.0
    runs = 0
    try:
        decode(sources[0].uri)  # imports and plugin discovery outside the timing
        for repeat in range(repeats):
            for i, src in enumerate(sources):
                job = Job(src)

                def whole() -> float:
                    t = clock()
                    result = _convert(job, str(out), options_json, str(scratch), BENCH_KEY)
                    if "bad" in result or "skip" in result:
                        raise ConfigError(f"bench: {result.get('bad') or result['skip']}")
                    return clock() - t

                def raw() -> float:
                    t = clock()
                    decode(src.uri)
                    return clock() - t

                if (i + repeat) % 2:
                    full_s += whole()
                    decode_s += raw()
                else:
                    decode_s += raw()
                    full_s += whole()
                runs += 1
        stages = [_stage_times(Path(src.uri), options) for src in sources[: min(len(sources), 5)]]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    files_rate, decode_rate = runs / full_s, runs / decode_s
    breakdown = {key: round(statistics.mean(s[key] for s in stages) * 1000, 1) for key in stages[0]}
    return {
        "files_per_second": round(files_rate, 3),
        "decode_only_per_second": round(decode_rate, 3),
        "ratio": round(files_rate / decode_rate, 3),
        "files": len(sources),
        "conversions": runs,
        "image_size": size_text(options.image_size),
        "mean_source_bytes": round(sum(s.size for s in sources) / len(sources)),
        "transfer_syntaxes": sorted({_syntax(Path(s.uri)) for s in sources[:20]}),
        "stage_ms": breakdown,
        "timing": "process_cpu",
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
    }


def _syntax(path: Path) -> str:
    from mammo.dicom.read import read_header, transfer_syntax_of

    return transfer_syntax_of(read_header(path))
