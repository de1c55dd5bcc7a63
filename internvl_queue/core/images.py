"""Image checks shared by the API (validate before queueing) and the worker (decode to RGB).

The API never decodes a whole image: that is the worker's preprocessing (which fails a job whose
image does not decode with ``image_decode_error``). A request thread that decoded up to 8 images
of 40 MP each would spend seconds of CPU on one 50 KB PNG of a single colour. Instead it checks,
per image, what costs little:

- the header (``Image.open`` reads only that): one of ``FORMATS``, and the pixel limits (per
  image and for the whole request) before any pixel is decoded, so a decompression bomb costs a
  few bytes;
- integrity without decoding pixels where the format allows: PNG's chunk checksums up to
  ``IEND`` (``verify()``); a JPEG decoded at 1/8 scale (``draft``), which reads every entropy-coded
  segment, so a truncated or damaged file is caught at 1/64 of the pixel work;
- for other formats ``verify()``, which checks what each format plugin knows how to check.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import (
    ImageDecodeError,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
    ValidationFailed,
)

__all__ = ["FORMATS", "ImageInfo", "check_total_pixels", "decode_rgb", "inspect_image"]

# The only formats Pillow may open, here and in the worker (``Image.open(..., formats=...)``):
# without the list Pillow tries each of its ~40 plugins, EPS among them, whose decoder runs
# Ghostscript on the file: untrusted PostScript executed. These six cover photos, screenshots
# and scans; a JPEG with a multi-picture extension (a phone's MPO) opens through JPEG's plugin.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_FORMAT_NAMES = "JPEG, PNG, WebP, GIF, BMP or TIFF"


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def inspect_image(data: bytes, *, max_pixels: int, label: str = "image") -> ImageInfo:
    """Check that ``data`` is a whole image within ``max_pixels``, without decoding its pixels
    in full; raise ``ServiceError`` if not."""
    if not data:
        raise ValidationFailed(f"{label} is empty", code="empty_image")
    # We apply our own pixel limit before decoding; Pillow's global one would only warn or
    # raise with a different message, so its warning is silenced here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                width, height = image.size
                info = ImageInfo(format=image.format or "unknown", width=width, height=height)
                _check_pixels(width, height, max_pixels, label)
                _check_integrity(image)
                return info
        except UnidentifiedImageError:
            raise UnsupportedMediaType(
                f"{label} is not an image in a format we accept: send it as {_FORMAT_NAMES}",
                code="unsupported_image",
            ) from None
        except Image.DecompressionBombError as exc:  # Pillow's own, larger limit tripped first
            raise PayloadTooLarge(
                f"{label} is over the limit of {max_pixels} pixels ({exc})", code="image_too_large"
            ) from None
        except ServiceError:
            raise
        except Exception as exc:  # a damaged file makes format plugins raise almost anything
            raise ValidationFailed(
                f"{label} is damaged or truncated and does not decode: {exc}",
                code="corrupt_image",
            ) from None


def _check_integrity(image: Image.Image) -> None:
    """Raise (OSError, SyntaxError...) if the file is visibly damaged; decode no full image."""
    if image.format == "JPEG":
        # Scaled decoding at 1/8 (libjpeg's DCT scaling) still reads the whole file.
        image.draft(image.mode, (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
    else:
        image.verify()


def check_total_pixels(images: list[ImageInfo], max_total: int) -> None:
    """Refuse a request whose images together exceed ``max_total`` pixels."""
    total = sum(info.pixels for info in images)
    if total > max_total:
        raise PayloadTooLarge(
            f"the {len(images)} images total {total} pixels; a request may carry at most "
            f"{max_total}: send fewer or smaller images",
            code="image_too_large",
        )


def _check_pixels(width: int, height: int, max_pixels: int, label: str) -> None:
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"{label} is {width}x{height} = {width * height} pixels; the limit is {max_pixels}",
            code="image_too_large",
        )


def decode_rgb(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode a validated image to RGB, upright per its EXIF orientation (first frame only).

    Opened with the same ``FORMATS`` as the API's check: a stored file that is anything else
    (an API before this check, a job written to Redis by other means) is not decoded at all."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                _check_pixels(image.width, image.height, max_pixels, "image")
                upright = ImageOps.exif_transpose(image)
                return upright.convert("RGB")
        except UnidentifiedImageError:
            raise ImageDecodeError(
                f"a stored image is not in a format the worker accepts ({_FORMAT_NAMES}); "
                "submit it in one of those"
            ) from None
        except Exception as exc:
            raise ImageDecodeError(f"a stored image does not decode: {exc}") from None
