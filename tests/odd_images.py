"""Unusual but valid image files, and files that only look like images, made on the fly.

Each valid one must pass the API's checks and decode to RGB in the worker; each of the others
must be refused with a stable code: files that are not images, and images in formats Pillow could
read but the service does not accept (``core.images.FORMATS``), PostScript above all.
"""

from __future__ import annotations

import io

from PIL import Image

__all__ = ["EPS", "NOT_IMAGES", "PDF", "SVG", "odd_images", "other_formats"]


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _gradient(mode: str, size: tuple[int, int]) -> Image.Image:
    return Image.linear_gradient("L").resize(size).convert(mode)


def odd_images() -> dict[str, bytes]:
    palette = Image.new("P", (40, 30), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
    palette.paste(1, (0, 0, 20, 30))
    frames = [Image.new("RGB", (32, 24), colour) for colour in ("red", "green", "blue")]
    return {
        "png-16-bit-grey": _save(Image.new("I;16", (40, 30), 40_000), "PNG"),
        "png-rgba": _save(Image.new("RGBA", (40, 30), (255, 0, 0, 128)), "PNG"),
        "png-palette-transparency": _save(palette, "PNG", transparency=0),
        "png-1-bit": _save(_gradient("1", (40, 30)), "PNG"),
        "png-1x20000": _save(Image.new("RGB", (1, 20_000), "white"), "PNG"),
        "png-20000x1": _save(Image.new("RGB", (20_000, 1), "white"), "PNG"),
        "png-1x1": _save(Image.new("RGB", (1, 1), "white"), "PNG"),
        "jpeg-cmyk": _save(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"),
        "jpeg-grey": _save(_gradient("L", (40, 30)), "JPEG"),
        "jpeg-progressive": _save(_gradient("RGB", (64, 48)), "JPEG", progressive=True),
        "gif-animated": _save(
            frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0
        ),
        "webp-lossless-alpha": _save(Image.new("RGBA", (40, 30), (0, 0, 255, 60)), "WEBP"),
        "bmp": _save(_gradient("RGB", (40, 30)), "BMP"),
        "tiff-rgb": _save(_gradient("RGB", (40, 30)), "TIFF"),
        "tiff-lzw": _save(_gradient("RGB", (40, 30)), "TIFF", compression="tiff_lzw"),
    }


# PostScript that Pillow identifies as EPS by its first line; its decoder would hand the file
# to Ghostscript, which runs the program (here a harmless line).
EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 40 30\n"
    b"newpath 0 0 moveto 40 30 lineto stroke showpage\n%%EOF\n"
)


def other_formats() -> dict[str, bytes]:
    """Images Pillow reads, in formats the service refuses (415 ``unsupported_image``)."""
    gradient = _gradient("RGB", (32, 32))
    return {
        "eps": EPS,
        "eps-by-pillow": _save(gradient, "EPS"),
        "ico": _save(gradient, "ICO"),
        "ppm": _save(gradient, "PPM"),
        "tga": _save(gradient, "TGA"),
        "pcx": _save(gradient, "PCX"),
    }


SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="40" height="30">'
    b'<rect width="40" height="30" fill="red"/></svg>'
)
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"

# What each of these is refused with: they are not images we read.
NOT_IMAGES = {
    "svg": SVG,
    "pdf": PDF,
    "html": b"<!doctype html><html><body>hi</body></html>",
    "zip": b"PK\x03\x04" + b"\x00" * 40,
    "nul-bytes": b"\x00" * 64,
}
