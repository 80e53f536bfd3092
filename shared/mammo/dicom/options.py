"""Options of the DICOM preprocessor (``mammo data dicom``, the ``preprocessor`` component and
the pipeline's ``preprocess_set``). Torch-free and pydicom-free: config code reads it."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mammo.imagesize import ImageSize, parse_image_size, size_text

#: Bumped whenever the conversion changes the pixels it writes: every file is converted again.
CONVERTER_VERSION = 1
DEFAULT_IMAGE_SIZE = "1024x512"


class PreprocessConfig(BaseModel):
    """What the preprocessor does to each image; see README, Data."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    image_size: ImageSize = Field(
        parse_image_size(DEFAULT_IMAGE_SIZE),
        description="Output size S or HxW (height first); the crop is fitted with its aspect kept, then padded.",
    )
    bits: Literal[8, 16] = Field(8, description="Bit depth of the PNGs: 8 (default) or 16.")
    crop: bool = Field(True, description="Crop to the breast (Otsu threshold, largest component, margin).")
    margin: float = Field(0.02, ge=0, le=0.25, description="Crop margin as a fraction of the image's height and width.")
    align: Literal["none", "left", "right"] = Field(
        "none", description="Flip images so the chest wall is on this side (none: keep as acquired)."
    )
    voi: Literal["auto", "minmax"] = Field(
        "auto", description="auto: the file's window (or VOI LUT Sequence), min-max when none; minmax: ignore the tags."
    )
    window_index: int = Field(0, ge=0, description="Which of several WindowCenter/WindowWidth pairs to use.")
    bad_files: Literal["fail", "skip"] = Field(
        "fail", description="An unreadable or unusable DICOM: stop naming it (fail), or skip, count and list it."
    )
    png_compression: int = Field(3, ge=0, le=9, description="zlib level of the PNGs (speed vs size; pixels are the same).")

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> ImageSize:
        return parse_image_size(value)

    def pixel_settings(self) -> dict[str, Any]:
        """The settings the written pixels depend on (the incremental rerun compares these)."""
        return {
            "converter": CONVERTER_VERSION,
            "image_size": size_text(self.image_size),
            "bits": self.bits,
            "crop": self.crop,
            "margin": self.margin,
            "align": self.align,
            "voi": self.voi,
            "window_index": self.window_index,
        }

    def digest(self) -> str:
        """sha256 of ``pixel_settings``: equal digests, equal pixels for the same input."""
        text = json.dumps(self.pixel_settings(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def add_arguments(parser: Any) -> None:
    """The conversion options as argparse flags (``mammo data dicom``, ``mammo component
    preprocessor``); defaults from ``PreprocessConfig``."""
    from mammo.imagesize import image_size_arg

    fields = PreprocessConfig.model_fields

    def shown(key: str) -> str:
        default = fields[key].get_default()
        return f"{fields[key].description} (default: {size_text(default) if key == 'image_size' else default})"

    parser.add_argument("--image-size", type=image_size_arg, metavar="HxW", help=shown("image_size"))
    parser.add_argument("--bits", type=int, choices=[8, 16], help=shown("bits"))
    parser.add_argument("--no-crop", dest="crop", action="store_false", default=None,
                        help="Keep the whole image instead of cropping to the breast.")
    parser.add_argument("--margin", type=float, metavar="F", help=shown("margin"))
    parser.add_argument("--align", choices=["none", "left", "right"], help=shown("align"))
    parser.add_argument("--voi", choices=["auto", "minmax"], help=shown("voi"))
    parser.add_argument("--window-index", type=int, metavar="N", help=shown("window_index"))
    parser.add_argument("--bad-files", choices=["fail", "skip"], help=shown("bad_files"))
    parser.add_argument("--png-compression", type=int, metavar="0-9", help=shown("png_compression"))


def options_from_args(args: Any) -> PreprocessConfig:
    """``PreprocessConfig`` from parsed flags (unset flags keep the defaults); one-line
    ``ConfigError`` for a bad value."""
    from pydantic import ValidationError

    from mammo.errors import ConfigError

    values = {
        key: getattr(args, key)
        for key in PreprocessConfig.model_fields
        if getattr(args, key, None) is not None
    }
    try:
        return PreprocessConfig.model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"--{where.replace('_', '-')}: {first['msg'].removeprefix('Value error, ')}") from None
