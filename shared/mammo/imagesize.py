"""Input sizes: ``S`` (square, as before) or ``HxW`` (e.g. ``1024x512``, height first).

One canonical form everywhere a size is stored: an ``int`` for a square size and a ``(height,
width)`` tuple otherwise, so that configs, checkpoints and caches written for square sizes read
exactly as before. Pipeline parameters are text (``"512"``, ``"1024x512"``): KFP parameters have
one type. Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Union

#: Smallest and largest side in pixels.
MIN_SIDE = 16
MAX_SIDE = 8192

#: An image size in its canonical form: ``S`` or ``(H, W)``.
ImageSize = Union[int, tuple[int, int]]

_TEXT = re.compile(r"^\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*$")


def _check(height: int, width: int, original: Any) -> None:
    for side in (height, width):
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise ValueError(
                f"image size {original!r}: each side must be between {MIN_SIDE} and {MAX_SIDE} pixels"
            )


def parse_image_size(value: Any) -> ImageSize:
    """``512``, ``"512"``, ``"1024x512"``, ``[1024, 512]`` or ``(1024, 512)`` -> ``512`` or
    ``(1024, 512)``; ``ValueError`` with a one-line reason otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"image size {value!r}: expected S or HxW, e.g. 512 or 1024x512")
    if isinstance(value, int):
        height = width = value
    elif isinstance(value, str):
        match = _TEXT.match(value)
        if not match:
            raise ValueError(f"image size {value!r}: expected S or HxW, e.g. 512 or 1024x512")
        height = int(match.group(1))
        width = int(match.group(2) or match.group(1))
    elif isinstance(value, Sequence) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        height, width = int(value[0]), int(value[1])
    else:
        raise ValueError(f"image size {value!r}: expected S or HxW, e.g. 512 or 1024x512")
    _check(height, width, value)
    return height if height == width else (height, width)


def image_hw(value: Any) -> tuple[int, int]:
    """(height, width) of any accepted size."""
    size = parse_image_size(value)
    return (size, size) if isinstance(size, int) else size


def size_text(value: Any) -> str:
    """``"512"`` or ``"1024x512"``: the text form (pipeline parameters, file names, logs)."""
    height, width = image_hw(value)
    return str(height) if height == width else f"{height}x{width}"


def image_size_arg(text: str) -> ImageSize:
    """argparse ``type=`` for ``--image-size``: argparse reports the ``ValueError``'s message."""
    import argparse

    try:
        return parse_image_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
