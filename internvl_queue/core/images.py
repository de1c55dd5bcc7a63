"""Image checks shared by the API (validate before queueing) and the worker (decode to RGB).

Pillow reads only the header on ``open``; the pixel limit is checked there, before anything is
decoded, so a decompression bomb costs a few bytes of header parsing. ``load()`` then decodes the
whole image, which is what catches truncated and corrupt files.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageDecodeError, PayloadTooLarge, UnsupportedMediaType, ValidationFailed

__all__ = ["ImageInfo", "decode_rgb", "inspect_image"]


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def inspect_image(data: bytes, *, max_pixels: int, label: str = "image") -> ImageInfo:
    """Check that ``data`` is a whole image within ``max_pixels``; raise ``ServiceError`` if not."""
    if not data:
        raise ValidationFailed(f"{label} is empty", code="empty_image")
    # We apply our own pixel limit before decoding; Pillow's global one would only warn or
    # raise with a different message, so its warning is silenced here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                _check_pixels(width, height, max_pixels, label)
                image.load()
                return ImageInfo(format=image.format or "unknown", width=width, height=height)
        except UnidentifiedImageError:
            raise UnsupportedMediaType(
                f"{label} is not an image format we can read (JPEG, PNG, WebP, GIF, BMP, TIFF...)",
                code="unsupported_image",
            ) from None
        except Image.DecompressionBombError as exc:  # Pillow's own, larger limit tripped first
            raise PayloadTooLarge(
                f"{label} is over the limit of {max_pixels} pixels ({exc})", code="image_too_large"
            ) from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ValidationFailed(
                f"{label} is damaged or truncated and does not decode: {exc}",
                code="corrupt_image",
            ) from None


def _check_pixels(width: int, height: int, max_pixels: int, label: str) -> None:
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"{label} is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
            code="image_too_large",
        )


def decode_rgb(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode a validated image to RGB, upright per its EXIF orientation (first frame only)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                _check_pixels(image.width, image.height, max_pixels, "image")
                upright = ImageOps.exif_transpose(image)
                return upright.convert("RGB")
        except Exception as exc:
            raise ImageDecodeError(f"a stored image does not decode: {exc}") from None
