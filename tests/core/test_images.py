import io

import pytest
from PIL import Image

from internvl_queue.core.errors import ImageDecodeError
from internvl_queue.core.images import decode_rgb, inspect_image
from tests.images import photo


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
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
