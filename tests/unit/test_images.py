"""Decoding with limits, channel layouts, and encoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from pixelfleet.models.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from pixelfleet.models.images import decode_image, encode_image, image_metadata, to_array, to_rgb
from tests.conftest import synthetic_photo


def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "AVIF", "BMP", "GIF"])
def test_decodes_supported_formats(fmt):
    image = decode_image(encoded(Image.new("RGB", (20, 10), (10, 200, 30)), fmt), max_pixels=10_000)
    assert image.size == (20, 10)
    assert to_array(image).shape == (10, 20, 3)


def test_not_an_image_is_invalid():
    with pytest.raises(InvalidInput):
        decode_image(b"this is not an image", max_pixels=10_000)


def test_truncated_image_is_invalid():
    data = encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")
    with pytest.raises(InvalidInput):
        decode_image(data[: len(data) // 2], max_pixels=100_000)


def test_unsupported_format_is_415():
    data = encoded(Image.new("RGB", (8, 8)), "PPM")
    with pytest.raises(UnsupportedMediaType):
        decode_image(data, max_pixels=10_000)


def test_pixel_limit_is_checked_before_decoding():
    data = encoded(Image.new("L", (200, 200)), "PNG")
    with pytest.raises(PayloadTooLarge):
        decode_image(data, max_pixels=100 * 100)


def test_decompression_bomb_is_413():
    """A small file that claims a huge canvas: refused from the header."""
    bomb = encoded(Image.new("1", (20_000, 20_000)), "PNG")
    assert len(bomb) < 200_000
    with pytest.raises(PayloadTooLarge):
        decode_image(bomb, max_pixels=16_000_000)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (30, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encoded(image, "JPEG", exif=exif), max_pixels=10_000)
    assert decoded.size == (10, 30)


@pytest.mark.parametrize("mode,channels", [("L", 1), ("LA", 2), ("RGB", 3), ("RGBA", 4), ("P", 3), ("1", 1), ("I;16", 1)])
def test_to_array_channel_layouts(mode, channels):
    array = to_array(Image.new(mode, (6, 4)))
    assert array.shape == (4, 6, channels) and array.dtype == np.uint8


def test_to_rgb_composites_alpha_on_white():
    rgba = np.zeros((2, 2, 4), np.uint8)  # transparent black
    np.testing.assert_array_equal(to_rgb(rgba), np.full((2, 2, 3), 255, np.uint8))


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "tiff", "avif"])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_encode_roundtrip(fmt, channels):
    array = np.full((8, 8, channels), 128, np.uint8)
    image = Image.open(io.BytesIO(encode_image(array, fmt)))
    assert image.format == fmt.upper() and image.size == (8, 8)
    has_alpha = "A" in image.getbands()
    assert has_alpha == (channels in (2, 4) and fmt != "jpeg")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "tiff", "avif"])
def test_exif_and_icc_profile_are_carried_over(fmt):
    source = Image.new("RGB", (16, 8))
    exif = source.getexif()
    exif[0x010F] = "pixelfleet-camera"  # Make
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    decoded = decode_image(encoded(source, "JPEG", exif=exif, icc_profile=icc), max_pixels=10_000)
    metadata = image_metadata(decoded)
    output = Image.open(io.BytesIO(encode_image(np.zeros((32, 64, 3), np.uint8), fmt, metadata)))
    assert output.getexif().get(0x010F) == "pixelfleet-camera"
    assert output.info.get("icc_profile") == icc


def test_no_metadata_when_the_input_has_none():
    assert image_metadata(decode_image(encoded(Image.new("RGB", (4, 4)), "PNG"), max_pixels=100)) == {}


def test_encode_rejects_unknown_format():
    with pytest.raises(UnsupportedMediaType):
        encode_image(np.zeros((2, 2, 3), np.uint8), "gif")


def test_png_level_changes_the_size_not_the_pixels():
    array = synthetic_photo(64, 80)
    stored = encode_image(array, "png", png_level=0)
    smallest = encode_image(array, "png", png_level=9)
    assert len(smallest) < len(stored)
    for data in (stored, smallest, encode_image(array, "png")):
        assert np.array_equal(to_array(decode_image(data, 10**6)), array)
