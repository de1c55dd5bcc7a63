"""The images a caller hands the client: paths, bytes or PIL images, sent as multipart file parts
or base64 in JSON; and images by URL (``{"url": ...}``, or a str starting with ``http://`` or
``https://``), which the API fetches itself (docs/api.md "Images by URL").

A PIL image is encoded to PNG (lossless: the model sees the pixels the caller had). Pillow is a
base dependency, but it is imported only when a PIL image is given.
"""

from __future__ import annotations

import base64
import io
import mimetypes
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from .errors import ClientError

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["ImageInput", "ImageUnreadable", "has_url", "image_json", "image_parts"]

# A path, bytes, a PIL image, an http(s) URL (str), or {"url": ...}.
ImageInput: TypeAlias = "str | os.PathLike[str] | bytes | Image | Mapping[str, str]"
# One multipart file part: (field name, (file name, content, content type)).
FilePart: TypeAlias = tuple[str, tuple[str, bytes, str]]


class ImageUnreadable(ClientError):
    """Raised when an image given as a path cannot be read (missing, a directory, no access)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read image {path!r}: {reason}")
        self.path = path


def listed(images: ImageInput | Iterable[ImageInput]) -> list[Any]:
    """The images as a list; one image alone may be given bare."""
    alone = isinstance(images, str | bytes | os.PathLike | Mapping) or _is_pil(images)
    return [images] if alone else list(images)  # type: ignore[arg-type]


def has_url(images: list[Any]) -> bool:
    return any(_url_of(image) is not None for image in images)


def image_parts(images: ImageInput | Iterable[ImageInput]) -> list[FilePart]:
    """The ``image`` parts of a submit, in order (none of them a URL)."""
    return [_part(image, index) for index, image in enumerate(listed(images))]


def image_json(images: ImageInput | Iterable[ImageInput]) -> list[dict[str, str]]:
    """The ``images`` of a JSON body, in order: ``{"url": ...}`` or ``{"data": <base64>}``."""
    found = []
    for index, image in enumerate(listed(images)):
        url = _url_of(image)
        if url is not None:
            found.append({"url": url})
        else:
            found.append({"data": base64.b64encode(_part(image, index)[1][1]).decode("ascii")})
    return found


def _url_of(image: Any) -> str | None:
    if isinstance(image, Mapping):
        if set(image) != {"url"} or not isinstance(image["url"], str):
            raise TypeError('an image given as a dict must be {"url": "http(s)://..."}')
        return image["url"]
    if isinstance(image, str) and image.startswith(("http://", "https://")):
        return image
    return None


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
        f"image {index + 1} is a {type(image).__name__}; give a path, bytes, a PIL image or a URL"
    )


def _is_pil(value: object) -> bool:
    # Without importing PIL when no PIL image is given (it costs an import otherwise).
    module = type(value).__module__
    if not module.startswith("PIL."):
        return False
    from PIL.Image import Image

    return isinstance(value, Image)
