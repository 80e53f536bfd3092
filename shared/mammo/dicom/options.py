"""Options of the DICOM preprocessor (``mammo data dicom``, the ``preprocessor`` component and
the pipeline's ``preprocess_set``). Torch-free and pydicom-free: config code reads it."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from mammo.config import DEFAULT_MAX_PIXELS
from mammo.imagesize import ImageSize, parse_image_size, size_text

#: Bumped whenever the conversion changes the pixels or the record it writes: every file is
#: converted again. 2: the records' tags gained view_modifier, implant, machine_id and the
#: header fields the skip policy reads. 3: a VOI LUT Sequence scaled by its nominal range (not
#: the table's min and max), PresentationLUTShape INVERSE read.
CONVERTER_VERSION = 3
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
    keep_identifiers: bool = Field(
        False, description="Keep PatientID and image ids as they are: only for input that is de-identified already "
        "(RSNA). Otherwise they are replaced by keyed pseudonyms (MAMMO_PSEUDONYM_KEY or --pseudonym-key-file).",
    )
    max_pixels: int = Field(
        DEFAULT_MAX_PIXELS, ge=1, le=2**40,
        description="Largest image (Rows x Columns x frames, from the header, before decompressing), as data.max_pixels.",
    )
    views: list[str] = Field(
        ["CC", "MLO"], description="Views converted (ViewPosition, else the view code); others are skipped and "
        "counted. A file naming no view is kept.",
    )
    view_modifiers: Literal["skip", "keep"] = Field(
        "skip", description="Spot compression and magnification views (ViewModifierCodeSequence): skip and count, or keep.",
    )
    implants: Literal["keep", "skip"] = Field(
        "keep", description="Images with a breast implant (BreastImplantPresent YES; the implant column): keep, or skip.",
    )
    for_processing: Literal["skip", "keep"] = Field(
        "skip", description="Raw detector images (PresentationIntentType FOR PROCESSING): skip and count, or keep.",
    )

    @field_validator("image_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> ImageSize:
        return parse_image_size(value)

    @field_validator("views", mode="before")
    @classmethod
    def _views(cls, value: Any) -> list[str]:
        items = value.split(",") if isinstance(value, str) else list(value)
        views = [str(v).strip().upper() for v in items if str(v).strip()]
        if not views:
            raise ValueError("expected at least one view, e.g. CC,MLO")
        return views

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

    def policy(self) -> dict[str, Any]:
        """Which files are converted and which skipped (a skip is remembered under these)."""
        return {
            "views": self.views, "view_modifiers": self.view_modifiers, "implants": self.implants,
            "for_processing": self.for_processing, "max_pixels": self.max_pixels,
        }

    def policy_digest(self) -> str:
        return hashlib.sha256(json.dumps(self.policy(), sort_keys=True).encode()).hexdigest()[:16]


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
    parser.add_argument("--max-pixels", type=int, metavar="N", help=shown("max_pixels"))
    parser.add_argument("--views", metavar="V,V", help=f"{fields['views'].description} (default: CC,MLO)")
    parser.add_argument("--view-modifiers", choices=["skip", "keep"], help=shown("view_modifiers"))
    parser.add_argument("--implants", choices=["keep", "skip"], help=shown("implants"))
    parser.add_argument("--for-processing", choices=["skip", "keep"], help=shown("for_processing"))
    parser.add_argument("--keep-identifiers", action="store_true", default=None, help=fields["keep_identifiers"].description)
    parser.add_argument("--pseudonym-key-file", metavar="FILE",
                        help="File holding the site key of the pseudonyms (default: $MAMMO_PSEUDONYM_KEY).")
    parser.add_argument("--identifier-map", metavar="FILE",
                        help="Write the map from pseudonyms back to the original ids and UIDs here (CSV; never "
                        "written otherwise, and refused inside --out).")


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
