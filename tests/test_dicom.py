"""DICOM decoding and pixel processing (``mammo.dicom``) on DICOMs the tests write with pydicom:
windowing against direct numpy computations of the standard's formulas, MONOCHROME1 inversion,
12- and 16-bit, every supported compression, the breast crop (a burnt-in label left out), the
output size with the aspect ratio kept, and one-line errors for bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mammo.dicom.convert import convert_file, render
from mammo.dicom.options import PreprocessConfig
from mammo.dicom.read import DicomError, decode, read_header
from mammo.dicom.roi import find_roi, otsu_threshold
from mammo.dicom.synth import breast_phantom, make_dataset, save
from mammo.dicom.windowing import choose_voi, to_display

H, W = 96, 80


def _ramp(bits: int = 12) -> np.ndarray:
    """Every stored value from 0 to the maximum, laid out as an H x W image."""
    top = (1 << bits) - 1
    return np.linspace(0, top, H * W).round().astype(np.uint16).reshape(H, W)


def _write(tmp_path: Path, pixels: np.ndarray, name: str = "a.dcm", compression: str = "explicit", **tags) -> Path:
    return save(make_dataset(pixels, **tags), tmp_path / name, compression)


def _display(path: Path, bits: int = 8) -> np.ndarray:
    decoded = decode(path)
    return to_display(decoded.pixels, decoded.dataset, decoded.photometric, bits=bits,
                      voi=choose_voi(decoded.dataset))[0]


def _q8(y: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(y, 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID", None])
def test_window_functions_follow_the_standard(tmp_path: Path, function: str | None) -> None:
    x = _ramp().astype(np.float64)
    c, w = 1800.0, 1200.0
    path = _write(tmp_path, _ramp(), window=(c, w), voi_function=function)
    if function in ("LINEAR", None):  # C.11.2.1.2.1 (LINEAR is the default)
        expected = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0,
                            np.where(x > c - 0.5 + (w - 1) / 2, 1.0, ((x - (c - 0.5)) / (w - 1) + 0.5)))
    elif function == "LINEAR_EXACT":  # C.11.2.1.3.2
        expected = np.where(x <= c - w / 2, 0.0, np.where(x > c + w / 2, 1.0, (x - c) / w + 0.5))
    else:  # SIGMOID, C.11.2.1.3.1
        expected = 1 / (1 + np.exp(-4 * (x - c) / w))
    np.testing.assert_array_equal(_display(path), _q8(expected))


def test_rescale_comes_before_the_window_and_monochrome1_is_inverted(tmp_path: Path) -> None:
    x = _ramp().astype(np.float64)
    slope, intercept, c, w = 2.0, -1000.0, 3000.0, 4000.0
    m2 = _write(tmp_path, _ramp(), "m2.dcm", window=(c, w), rescale=(slope, intercept))
    m1 = _write(tmp_path, _ramp(), "m1.dcm", window=(c, w), rescale=(slope, intercept), photometric="MONOCHROME1")
    y = np.clip(((x * slope + intercept) - (c - 0.5)) / (w - 1) + 0.5, 0, 1)
    np.testing.assert_array_equal(_display(m2), _q8(y))
    np.testing.assert_array_equal(_display(m1), _q8(1 - y))
    # 16-bit output keeps the finer steps.
    np.testing.assert_array_equal(_display(m2, bits=16), np.rint(y * 65535).astype(np.uint16))


@pytest.mark.parametrize("lut_bits", [16, 12])
def test_voi_lut_sequence_and_min_max_fallback(tmp_path: Path, lut_bits: int) -> None:
    """A VOI LUT Sequence's entries, as pydicom's apply_voi_lut gives them, over the LUT's
    nominal range 2**bits - 1 (not stretched by the table's own min and max)."""
    from pydicom.pixels import apply_voi_lut

    pixels = _ramp()
    first = 500
    top = (1 << lut_bits) - 1
    table = (np.sqrt(np.arange(2000) / 1999) * 0.6 * top + 0.02 * top).astype(np.uint16)  # 2%..62% of the range
    ds = make_dataset(pixels, voi_lut=(first, table))
    ds.VOILUTSequence[0].LUTDescriptor = [len(table), first, lut_bits]
    lut = save(ds, tmp_path / "lut.dcm")
    index = np.clip(pixels.astype(np.int64) - first, 0, len(table) - 1)
    expected = table[index] / top
    np.testing.assert_array_equal(_display(lut), _q8(expected))
    np.testing.assert_array_equal(_display(lut, bits=16), np.rint(expected * 65535).astype(np.uint16))
    decoded = decode(lut)
    np.testing.assert_array_equal(_display(lut), _q8(apply_voi_lut(decoded.pixels, decoded.dataset) / top))
    voi = choose_voi(read_header(lut))
    assert voi.kind == "lut" and voi.describe() == f"VOI LUT (2000 entries from 500, {lut_bits} bits)"

    narrow = (pixels // 4 + 300).astype(np.uint16)  # no window tags: min-max over the image
    plain = _write(tmp_path, narrow, "plain.dcm")
    x = narrow.astype(np.float64)
    np.testing.assert_array_equal(_display(plain), _q8((x - x.min()) / (x.max() - x.min())))
    # An unusable window (LINEAR with width < 1) is ignored, not divided by.
    broken = _write(tmp_path, narrow, "broken.dcm", window=(500.0, 0.5))
    np.testing.assert_array_equal(_display(broken), _display(plain))


def test_presentation_lut_shape_inverse_inverts_once(tmp_path: Path) -> None:
    """INVERSE inverts a MONOCHROME2 image; with MONOCHROME1 (as MG and DX pair them) it is
    the same one inversion, not a second; IDENTITY changes nothing."""
    c, w = 1800.0, 1200.0

    def shaped(name: str, photometric: str, shape: str | None) -> np.ndarray:
        ds = make_dataset(_ramp(), window=(c, w), photometric=photometric)
        if shape is not None:
            ds.PresentationLUTShape = shape
        return _display(save(ds, tmp_path / name))

    plain = shaped("m2.dcm", "MONOCHROME2", None)
    assert plain.min() == 0 and plain.max() == 255
    np.testing.assert_array_equal(shaped("m2-identity.dcm", "MONOCHROME2", "IDENTITY"), plain)
    np.testing.assert_array_equal(shaped("m2-inverse.dcm", "MONOCHROME2", "INVERSE"), 255 - plain)
    np.testing.assert_array_equal(shaped("m1.dcm", "MONOCHROME1", None), 255 - plain)
    np.testing.assert_array_equal(shaped("m1-inverse.dcm", "MONOCHROME1", "INVERSE"), 255 - plain)


@pytest.mark.parametrize("compression", ["explicit", "rle", "j2k", "jpeg-lossless"])
@pytest.mark.parametrize("bits", [12, 16])
def test_every_supported_compression_decodes_losslessly(tmp_path: Path, compression: str, bits: int) -> None:
    pixels = breast_phantom(H, W, bits=bits, seed=3)
    path = _write(tmp_path, pixels, compression=compression, bits=bits)
    decoded = decode(path)
    np.testing.assert_array_equal(decoded.pixels, pixels)
    assert decoded.transfer_syntax == {
        "explicit": "1.2.840.10008.1.2.1", "rle": "1.2.840.10008.1.2.5",
        "j2k": "1.2.840.10008.1.2.4.90", "jpeg-lossless": "1.2.840.10008.1.2.4.70",
    }[compression]


def test_otsu_separates_two_levels() -> None:
    image = np.r_[np.full(100, 20), np.full(100, 200)].astype(np.uint8)
    t = otsu_threshold(image)
    assert 20 <= t < 200


@pytest.mark.parametrize("side", ["left", "right"])
def test_crop_keeps_the_breast_and_leaves_the_label_out(side: str) -> None:
    height, width = 240, 200
    image = (breast_phantom(height, width, bits=8, chest_wall=side, seed=1)).astype(np.uint8)
    roi = find_roi(image, margin=0.02)
    box = roi.box
    assert roi.fallback == "" and roi.chest_wall == side
    # The breast: rows 0.08H..0.92H, columns 0..0.62W from the chest wall.
    assert box.top <= round(0.09 * height) and box.bottom >= round(0.91 * height)
    breast_cols = (0, round(0.6 * width)) if side == "left" else (width - round(0.6 * width), width)
    assert box.left <= breast_cols[0] and box.right >= breast_cols[1]
    # The label sits in the far corner, beyond the breast: outside the box.
    label_cols = (width - width // 30 - width // 7, width - width // 30)
    if side == "right":
        label_cols = (width - label_cols[1], width - label_cols[0])
    assert box.right <= label_cols[0] or box.left >= label_cols[1]


def test_implausible_masks_fall_back_to_the_full_image() -> None:
    empty = np.zeros((120, 100), dtype=np.uint8)
    roi = find_roi(empty)
    assert (roi.box.height, roi.box.width) == (120, 100) and "covers" in roi.fallback
    speck = empty.copy()
    speck[5:8, 5:8] = 200  # a tiny bright mark and nothing else
    assert find_roi(speck).fallback.startswith("breast mask covers")
    everything = np.full((120, 100), 180, dtype=np.uint8)
    everything[:, :3] = 10
    assert find_roi(everything).box.width == 100


def test_output_keeps_the_aspect_ratio_pads_and_aligns(tmp_path: Path) -> None:
    pixels = breast_phantom(200, 160, bits=12, chest_wall="right", seed=2)
    path = _write(tmp_path, pixels, window=(2047.5, 3686.0))
    options = PreprocessConfig(image_size="128x96", align="left")
    converted = convert_file(path, options)
    image = np.asarray(Image.open(__import__("io").BytesIO(converted.png)))
    assert image.shape == (128, 96) and image.dtype == np.uint8
    record = converted.record
    assert record["chest_wall"] == "right" and record["flipped"] == 1
    crop_h = record["crop_bottom"] - record["crop_top"]
    crop_w = record["crop_right"] - record["crop_left"]
    scale = min(128 / crop_h, 96 / crop_w)
    assert record["scale"] == pytest.approx(scale, abs=1e-5)
    fitted_w = round(crop_w * scale)
    # Flipped so the chest wall is on the left: the image sits against the left edge, padding right.
    assert record["pad_left"] == 0
    if fitted_w < 96:
        assert image[:, fitted_w:].max() == 0
    assert image[:, 0].mean() > image[:, min(fitted_w, 96) - 1].mean()
    sixteen = convert_file(path, PreprocessConfig(image_size=64, bits=16, crop=False))
    wide = np.asarray(Image.open(__import__("io").BytesIO(sixteen.png)))
    assert wide.shape == (64, 64) and wide.dtype == np.uint16 and sixteen.record["crop_fallback"] == "crop disabled"


def test_render_without_crop_or_resize_is_the_windowed_image(tmp_path: Path) -> None:
    path = _write(tmp_path, _ramp(), window=(2000.0, 3000.0), photometric="MONOCHROME1")
    image, record = render(decode(path), PreprocessConfig(image_size=f"{H}x{W}", crop=False))
    np.testing.assert_array_equal(image, _display(path))
    assert (record["source_height"], record["source_width"], record["scale"]) == (H, W, 1.0)
    assert record["voi"] == "LINEAR c=2000 w=3000" and record["photometric"] == "MONOCHROME1"


def test_bad_files_are_one_line_errors_naming_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not a dicom at all" * 20)
    with pytest.raises(DicomError, match=r"garbage\.dcm: not a DICOM file"):
        convert_file(garbage, PreprocessConfig())

    good = _write(tmp_path, breast_phantom(H, W, seed=4), "j2k.dcm", compression="j2k")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])
    with pytest.raises(DicomError, match=r"truncated\.dcm: ") as err:
        convert_file(truncated, PreprocessConfig())
    assert "\n" not in str(err.value)

    ds = make_dataset(breast_phantom(H, W, seed=5))
    del ds.PixelData
    no_pixels = tmp_path / "nopixels.dcm"
    ds.save_as(no_pixels, enforce_file_format=True)
    with pytest.raises(DicomError, match=r"nopixels\.dcm: no pixel data"):
        convert_file(no_pixels, PreprocessConfig())

    colour = make_dataset(breast_phantom(H, W, seed=6), photometric="RGB")
    rgb = tmp_path / "rgb.dcm"
    colour.save_as(rgb, enforce_file_format=True)
    with pytest.raises(DicomError, match=r"rgb\.dcm: photometric interpretation RGB is not grayscale"):
        convert_file(rgb, PreprocessConfig())


def test_a_missing_decoder_names_the_transfer_syntax_and_the_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pydicom.pixels

    path = _write(tmp_path, breast_phantom(H, W, seed=7), compression="j2k")

    class Unavailable:
        is_available = False
        available_plugins = ()

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    with pytest.raises(DicomError, match=r"no decoder for transfer syntax JPEG 2000 Image Compression \(Lossless Only\) "
                                         r"\(1\.2\.840\.10008\.1\.2\.4\.90\): install pylibjpeg and pylibjpeg-openjpeg"):
        decode(path)
