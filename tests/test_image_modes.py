"""Every PIL mode a user's image folder can hold loads as 8-bit RGB with the pixels the rules promise.

The rules are in ``datamodules.folders.to_rgb``. Each test writes a tiny file with known values and states the
expected 8-bit pixels next to it. The 16-bit cases are the issue's bug: plain ``convert("RGB")`` turned them white.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fixtures_images import folder_datamodule
from PIL import Image

from datamodules.folders import ALPHA_BACKGROUND, load_rgb, to_rgb


def _pixels(path: Path) -> np.ndarray:
    img = load_rgb(path)
    assert img.mode == "RGB"
    return np.asarray(img)


def _grey(values: np.ndarray) -> np.ndarray:
    """Expected RGB array for grey 8-bit values (copied to three channels)."""
    return np.repeat(np.asarray(values, dtype=np.uint8)[..., None], 3, axis=-1)


def _png16(path: Path, samples: np.ndarray, color_type: int) -> Path:
    """Write a 16-bit PNG by hand (Pillow cannot write 16-bit colour): samples (H, W, C) uint16."""
    h, w = samples.shape[:2]
    rows = b"".join(b"\x00" + samples[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    path.write_bytes(signature + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


# --------------------------------------------------------------------------- 16-bit, 32-bit integer, float


def test_16bit_png_scales_by_full_range_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "dark16.png"
    Image.fromarray(np.full((4, 4), 4096, dtype=np.uint16)).save(path)
    with Image.open(path) as img:
        assert img.mode == "I;16"
    # round(4096 / 65535 * 255) = 16; the old convert("RGB") gave 255 (a white square).
    np.testing.assert_array_equal(_pixels(path), _grey(np.full((4, 4), 16)))


def test_16bit_values_map_linearly_with_no_min_max_stretch(tmp_path: Path) -> None:
    values = np.array([[0, 257, 4096, 65535], [128, 129, 32768, 65278]], dtype=np.uint16)
    path = tmp_path / "ramp16.png"
    Image.fromarray(values).save(path)
    # v * 255 / 65535 = v / 257, rounded: 128/257 = 0.498 -> 0, 129/257 = 0.502 -> 1, 32768 -> 127.5 -> 128.
    expected = np.array([[0, 1, 16, 255], [0, 1, 128, 254]])
    np.testing.assert_array_equal(_pixels(path), _grey(expected))


def test_16bit_big_endian_tiff(tmp_path: Path) -> None:
    path = tmp_path / "be.tif"
    Image.frombytes("I;16B", (3, 2), np.full((2, 3), 4096, dtype=">u2").tobytes()).save(path)
    with Image.open(path) as img:
        assert img.mode == "I;16B"
    np.testing.assert_array_equal(_pixels(path), _grey(np.full((2, 3), 16)))


def test_16bit_rgb_and_grey_alpha_png_keep_high_byte(tmp_path: Path) -> None:
    rgb = np.empty((2, 2, 3), dtype=np.uint16)
    rgb[...] = (4096, 65535, 32768)
    # Pillow decodes 16-bit colour to 8 bits by the high byte: 4096 >> 8 = 16, 32768 >> 8 = 128.
    np.testing.assert_array_equal(_pixels(_png16(tmp_path / "rgb16.png", rgb, 2)), np.full((2, 2, 3), (16, 255, 128)))
    grey_alpha = np.empty((2, 2, 2), dtype=np.uint16)
    grey_alpha[...] = (4096, 0)  # fully transparent: the background shows
    np.testing.assert_array_equal(
        _pixels(_png16(tmp_path / "la16.png", grey_alpha, 4)), np.full((2, 2, 3), ALPHA_BACKGROUND)
    )


def test_mode_i_tiff_uses_the_16bit_scale(tmp_path: Path) -> None:
    path = tmp_path / "i.tif"
    Image.fromarray(np.array([[0, 4096, 65535, 200]], dtype=np.int32)).save(path)
    with Image.open(path) as img:
        assert img.mode == "I"
    # 200 stays dark (round(200 / 257) = 1) even though it is this image's only non-zero "low" value.
    np.testing.assert_array_equal(_pixels(path), _grey(np.array([[0, 16, 255, 1]])))


@pytest.mark.parametrize(("value", "shown"), [(70000, "70000"), (-5, "-5")])
def test_mode_i_outside_16bit_range_is_refused_naming_file(tmp_path: Path, value: int, shown: str) -> None:
    path = tmp_path / "big.tif"
    Image.fromarray(np.array([[0, value]], dtype=np.int32)).save(path)
    with pytest.raises(OSError) as err:
        load_rgb(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg and "mode I" in msg and shown in msg and "0..65535" in msg


def test_mode_f_tiff_reads_zero_to_one(tmp_path: Path) -> None:
    path = tmp_path / "f.tif"
    Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32)).save(path)
    with Image.open(path) as img:
        assert img.mode == "F"
    # round(v * 255): 63.75 -> 64, 127.5 -> 128; Pillow's convert("RGB") would give 0, 0, 0, 1.
    np.testing.assert_array_equal(_pixels(path), _grey(np.array([[0, 64, 128, 255]])))


@pytest.mark.parametrize(("value", "shown"), [(200.0, "200"), (float("nan"), "NaN"), (-0.5, "-0.5")])
def test_mode_f_outside_zero_one_or_not_finite_is_refused(tmp_path: Path, value: float, shown: str) -> None:
    path = tmp_path / "f_bad.tif"
    Image.fromarray(np.array([[0.0, value]], dtype=np.float32)).save(path)
    with pytest.raises(OSError) as err:
        load_rgb(path)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(path) in msg and "mode F" in msg and shown in msg


# --------------------------------------------------------------------------- transparency


def test_palette_with_transparent_index_composites_over_white(tmp_path: Path) -> None:
    img = Image.fromarray(np.array([[0, 1], [1, 0]], dtype=np.uint8), mode="P")
    img.putpalette([255, 0, 0, 0, 0, 255])  # index 0 red (transparent), index 1 blue
    path = tmp_path / "p.png"
    img.save(path, transparency=0)
    with Image.open(path) as check:
        assert check.mode == "P" and check.info.get("transparency") == 0
    white, blue = ALPHA_BACKGROUND, (0, 0, 255)
    assert white == (255, 255, 255)
    # The hidden red must not show (a plain convert("RGB") shows it).
    np.testing.assert_array_equal(_pixels(path), np.array([[white, blue], [blue, white]]))


def test_la_composites_alpha_over_white(tmp_path: Path) -> None:
    grey = np.array([[0, 100, 0]], dtype=np.uint8)
    alpha = np.array([[0, 255, 128]], dtype=np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(np.stack([grey, alpha], axis=-1), mode="LA").save(path)
    # round((c * a + 255 * (255 - a)) / 255): a=0 -> 255, a=255 -> c, c=0 & a=128 -> 127.
    np.testing.assert_array_equal(_pixels(path), _grey(np.array([[255, 100, 127]])))


def test_rgba_composites_alpha_over_white(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    Image.fromarray(np.array([[[255, 0, 0, 128], [10, 20, 30, 255]]], dtype=np.uint8)).save(path)
    np.testing.assert_array_equal(_pixels(path), np.array([[[255, 127, 127], [10, 20, 30]]]))


def test_pa_and_premultiplied_modes_in_memory() -> None:
    pa = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), mode="P").convert("PA")
    pa.putpalette([255, 0, 0, 0, 0, 255])
    pa.putalpha(Image.fromarray(np.array([[0, 255]], dtype=np.uint8)))
    np.testing.assert_array_equal(np.asarray(to_rgb(pa)), np.array([[[255, 255, 255], [0, 0, 255]]]))
    with pytest.raises(ValueError):
        to_rgb(Image.new("La", (1, 1)))  # Pillow has no conversion from La; refused, not guessed


# --------------------------------------------------------------------------- CMYK, bilevel, plain modes


def test_cmyk_tiff_uses_pillow_conversion(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.tif"
    Image.new("CMYK", (2, 2), (10, 20, 30, 40)).save(path)
    # (255 - C) * (255 - K) / 255: 245 * 215 / 255 = 206.6, 235 * 215 / 255 = 198.1, 225 * 215 / 255 = 189.7.
    np.testing.assert_array_equal(_pixels(path), np.full((2, 2, 3), (207, 198, 190)))


def test_bilevel_grey_and_rgb_pass_through(tmp_path: Path) -> None:
    bits = Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1")
    bits.save(tmp_path / "b.png")
    np.testing.assert_array_equal(_pixels(tmp_path / "b.png"), _grey(np.array([[0, 255]])))
    Image.fromarray(np.array([[3, 130]], dtype=np.uint8)).save(tmp_path / "l.png")
    np.testing.assert_array_equal(_pixels(tmp_path / "l.png"), _grey(np.array([[3, 130]])))
    rgb = np.array([[[1, 2, 3], [250, 128, 0]]], dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(_pixels(tmp_path / "rgb.png"), rgb)


# --------------------------------------------------------------------------- EXIF orientation


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((16, 32), dtype=np.uint8)  # 32 wide, 16 tall: left half black, right half white
    stored[:, 16:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).convert("RGB").save(path, exif=exif, quality=95)
    pixels = _pixels(path).astype(int)
    # Displayed upright: 16 wide, 32 tall; the stored left (black) column becomes the top.
    assert pixels.shape == (32, 16, 3)
    assert pixels[:14].max() < 30, "top half should be black"
    assert pixels[18:].min() > 225, "bottom half should be white"


# --------------------------------------------------------------------------- through the data module


def test_dark_16bit_class_stays_dark_in_the_datamodule(tmp_path: Path) -> None:
    """The issue's case: a class of dark 16-bit images must not be learned as white."""
    rng = np.random.default_rng(0)
    root = tmp_path / "train"
    for name, level in (("dark", 4096), ("bright", 60000)):
        (root / name).mkdir(parents=True)
        for i in range(3):
            noise = rng.integers(-500, 500, size=(8, 8))
            Image.fromarray((level + noise).astype(np.uint16)).save(root / name / f"{i}.png")
    dm = folder_datamodule(str(root), normalize=False)
    dm.setup("fit")
    ds = dm._datasets["train"]
    for i in range(len(ds)):
        item = ds[i]
        mean = float(item["image"].mean()) * 255
        if dm.class_names[item["label"]] == "dark":
            assert 10 < mean < 22, f"dark 16-bit image loaded with mean {mean:.1f} (4096 / 257 = 15.9)"
        else:
            assert 225 < mean < 240, f"bright 16-bit image loaded with mean {mean:.1f} (60000 / 257 = 233.5)"


def test_refused_float_image_is_listed_at_setup_or_skipped(tmp_path: Path) -> None:
    root = tmp_path / "train"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), 0.2 * (i + 1), dtype=np.float32)).save(root / name / f"{i}.tif")
    bad = root / "b" / "1.tif"
    Image.fromarray(np.full((8, 8), 180.0, dtype=np.float32)).save(bad)
    with pytest.raises(OSError) as err:
        folder_datamodule(str(root)).setup("fit")
    assert str(bad) in str(err.value) and "mode F" in str(err.value)
    dm = folder_datamodule(str(root), on_corrupt="skip", normalize=False)
    dm.setup("fit")
    assert dm.skipped_files == [bad]
    first = dm._datasets["train"][0]["image"]
    assert round(float(first.mean()) * 255) == 51  # 0.2 * 255
