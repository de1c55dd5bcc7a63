import io

import pytest
from PIL import EpsImagePlugin, Image

from internvl_queue.core.errors import (
    ImageDecodeError,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from internvl_queue.core.images import FORMATS, check_total_pixels, decode_rgb, inspect_image
from tests.images import photo, png_bomb
from tests.odd_images import EPS, NOT_IMAGES, odd_images, other_formats


def test_the_accepted_formats_are_the_six_the_readme_names() -> None:
    assert FORMATS == ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


@pytest.mark.parametrize("fmt", FORMATS)
def test_common_formats_pass(fmt: str) -> None:
    info = inspect_image(photo(40, 30, fmt=fmt), max_pixels=10_000)
    assert (info.format, info.width, info.height) == (fmt, 40, 30)


def test_decode_applies_exif_orientation() -> None:
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: the upright picture is 20 wide, 40 high
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    decoded = decode_rgb(buffer.getvalue(), max_pixels=10_000)
    assert (decoded.mode, decoded.size) == ("RGB", (20, 40))


def test_decode_failure_is_a_job_failure() -> None:
    with pytest.raises(ImageDecodeError) as caught:
        decode_rgb(b"garbage", max_pixels=10_000)
    assert caught.value.code == "image_decode_error"


@pytest.mark.parametrize(("name", "data"), sorted(odd_images().items()))
def test_odd_but_valid_images_pass_and_decode_to_rgb(name: str, data: bytes) -> None:
    info = inspect_image(data, max_pixels=40_000_000)
    decoded = decode_rgb(data, max_pixels=40_000_000)
    assert decoded.mode == "RGB"
    assert decoded.size == (info.width, info.height)


@pytest.mark.parametrize(("name", "data"), sorted(NOT_IMAGES.items()))
def test_files_that_are_not_images_are_unsupported(name: str, data: bytes) -> None:
    with pytest.raises(UnsupportedMediaType) as caught:
        inspect_image(data, max_pixels=40_000_000)
    assert caught.value.code == "unsupported_image"


@pytest.mark.parametrize(("name", "data"), sorted(other_formats().items()))
def test_formats_pillow_reads_but_the_service_does_not_are_unsupported(
    name: str, data: bytes
) -> None:
    with Image.open(io.BytesIO(data)) as image:  # Pillow alone would open it...
        assert image.format not in FORMATS
    with pytest.raises(UnsupportedMediaType) as caught:  # ...the API's check does not
        inspect_image(data, max_pixels=40_000_000)
    assert caught.value.code == "unsupported_image"
    assert "JPEG, PNG, WebP, GIF, BMP or TIFF" in caught.value.message


class _GhostscriptCalled(Exception):
    pass


def _ghostscript_trap(*args: object, **kwargs: object) -> None:
    raise _GhostscriptCalled  # where Pillow would start Ghostscript on the file


def test_the_worker_never_hands_postscript_to_ghostscript(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An EPS file that reached the worker anyway (stored before the API checked formats, or
    written to Redis by other means) is refused before any PostScript decoder runs."""
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", _ghostscript_trap)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    with pytest.raises(_GhostscriptCalled), Image.open(io.BytesIO(EPS)) as image:
        image.load()  # the trap works: Pillow left to itself runs Ghostscript on it
    with pytest.raises(ImageDecodeError) as caught:
        decode_rgb(EPS, max_pixels=10_000)
    assert caught.value.code == "image_decode_error"
    assert "not in a format the worker accepts" in caught.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])  # what the API checks fully
def test_truncated_files_are_corrupt(fmt: str) -> None:
    whole = photo(256, 256, seed=3, fmt=fmt)
    with pytest.raises(ValidationFailed) as caught:
        inspect_image(whole[: len(whole) * 2 // 3], max_pixels=10_000_000)
    assert caught.value.code == "corrupt_image"


def test_a_png_with_a_damaged_chunk_is_corrupt() -> None:
    data = bytearray(photo(64, 64, fmt="PNG"))
    data[60] ^= 0xFF  # inside the first IDAT chunk: its CRC no longer matches
    with pytest.raises(ValidationFailed) as caught:
        inspect_image(bytes(data), max_pixels=10_000_000)
    assert caught.value.code == "corrupt_image"


def test_the_pixels_of_a_request_are_capped_in_total() -> None:
    infos = [inspect_image(photo(100, 100), max_pixels=10_000)] * 3
    check_total_pixels(infos, 30_000)
    with pytest.raises(PayloadTooLarge) as caught:
        check_total_pixels(infos, 29_999)
    assert caught.value.code == "image_too_large"
    assert "30000 pixels" in caught.value.message


def test_a_single_colour_bomb_is_checked_without_decoding_it() -> None:
    """6300 x 6300 (39.7 MP, about 50 KB): accepted by its header and checksums, not decoded;
    ``benchmarks/image_check.py`` measures the time (a timed unit test would be flaky)."""
    info = inspect_image(png_bomb(6300, 6300), max_pixels=40_000_000)
    assert (info.width, info.height) == (6300, 6300)
