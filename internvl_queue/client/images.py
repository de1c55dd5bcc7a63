"""The images a caller hands the client, as multipart file parts: paths, bytes or PIL images.

A PIL image is encoded to PNG (lossless: the model sees the pixels the caller had). Pillow is a
base dependency, but it is imported only when a PIL image is given.
"""

from __future__ import annotations

import io
import mimetypes
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from .errors import ClientError

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["ImageInput", "ImageUnreadable", "image_parts"]

ImageInput: TypeAlias = "str | os.PathLike[str] | bytes | Image"
# One multipart file part: (field name, (file name, content, content type)).
FilePart: TypeAlias = tuple[str, tuple[str, bytes, str]]


class ImageUnreadable(ClientError):
    """Raised when an image given as a path cannot be read (missing, a directory, no access)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read image {path!r}: {reason}")
        self.path = path


def image_parts(images: ImageInput | Iterable[ImageInput]) -> list[FilePart]:
    """The ``image`` parts of a submit, in order; one image alone may be given bare."""
    alone = isinstance(images, str | bytes | os.PathLike) or _is_pil(images)
    given: Iterable[Any] = [images] if alone else images  # type: ignore[assignment]
    return [_part(image, index) for index, image in enumerate(given)]


def _part(image: Any, index: int) -> FilePart:
    if isinstance(image, bytes | bytearray | memoryview):
        return ("image", (f"image-{index + 1}", bytes(image), "application/octet-stream"))
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageUnreadable(str(path), exc.strerror or str(exc)) from None
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return ("image", (path.name, data, kind))
    if _is_pil(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return ("image", (f"image-{index + 1}.png", buffer.getvalue(), "image/png"))
    raise TypeError(
        f"image {index + 1} is a {type(image).__name__}; give a path, bytes or a PIL image"
    )


def _is_pil(value: object) -> bool:
    # Without importing PIL when no PIL image is given (it costs an import otherwise).
    module = type(value).__module__
    if not module.startswith("PIL."):
        return False
    from PIL.Image import Image

    return isinstance(value, Image)
