"""Draw docs/dicom-preprocessing.png, the README's before/after picture of the DICOM preprocessor,
with the project's own code: a synthetic 12-bit MONOCHROME1 mammogram (chest wall on the right,
a burnt-in label in the far corner) as its stored values look when merely scaled to 8 bits,
and what ``mammo data dicom --image-size 1024x512 --align left`` makes of it.

    .venv/bin/python scripts/dicom-figure.py [OUT.png]
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mammo.dicom.convert import convert_file
from mammo.dicom.options import PreprocessConfig
from mammo.dicom.read import decode
from mammo.dicom.synth import breast_phantom, make_dataset, save

PANEL_HEIGHT = 480
CAPTION = 62


def _panel(image: np.ndarray, caption: str) -> Image.Image:
    picture = Image.fromarray(image)
    width = round(picture.width * PANEL_HEIGHT / picture.height)
    picture = picture.resize((width, PANEL_HEIGHT), Image.Resampling.BILINEAR)
    text_width = max(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(line) for line in caption.split("\n"))
    canvas = Image.new("L", (max(width, int(text_width)) + 20, PANEL_HEIGHT + CAPTION + 10), 255)
    canvas.paste(picture, (10, CAPTION))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(caption.split("\n")):
        draw.text((10, 4 + 14 * i), line, fill=0)
    return canvas


def main(out: str = "docs/dicom-preprocessing.png") -> None:
    bits, height, width = 12, 1500, 1200
    stored = breast_phantom(height, width, bits=bits, chest_wall="right", seed=11)
    stored = ((1 << bits) - 1 - stored).astype(np.uint16)  # MONOCHROME1: tissue dark in stored values
    stored = (stored // 2 + 600).astype(np.uint16)  # a detector that uses part of its range
    ds = make_dataset(stored, bits=bits, photometric="MONOCHROME1", laterality="R", window=(1400.0, 1700.0),
                      voi_function="SIGMOID")
    with tempfile.TemporaryDirectory() as tmp:
        path = save(ds, Path(tmp) / "r-cc.dcm", "j2k")
        raw = decode(path).pixels.astype(np.float64)
        naive = np.rint(raw / ((1 << bits) - 1) * 255).astype(np.uint8)
        converted = convert_file(path, PreprocessConfig(image_size="1024x512", align="left"))
    after = np.asarray(Image.open(io.BytesIO(converted.png)))
    r = converted.record
    before = _panel(naive, f"before: stored values / 4095\n{width}x{height}, 12-bit, MONOCHROME1, J2K")
    after_panel = _panel(after, f"after: mammo data dicom\n--image-size 1024x512 --align left\n"
                                f"SIGMOID window, inverted, breast crop\n(label left out), flipped, fit + pad")
    figure = Image.new("L", (before.width + after_panel.width, max(before.height, after_panel.height)), 255)
    figure.paste(before, (0, 0))
    figure.paste(after_panel, (before.width, 0))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    figure.save(out, optimize=True)
    print(f"{out}: {figure.width}x{figure.height}, {Path(out).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main(*sys.argv[1:])
