"""Read a form body (``multipart/form-data`` or urlencoded) with the same rules as a JSON body.

Werkzeug's form parser (what ``request.form`` runs) differs from the JSON path in two ways that
a caller sees:

- it decodes text fields with ``errors="replace"``: a question with a byte that is not UTF-8
  arrived with U+FFFD in its place and was accepted, while the same question in a JSON body is
  refused. Here every text field is decoded strictly, and one that is not UTF-8 is refused
  (``400 invalid_utf8``, naming the field), as a JSON body that is not UTF-8 is;
- it reports its part limit as ``413 request_too_large`` ("the body is larger than 20 MB" for a
  56 KB body of 1 001 parts). Here that is ``413 too_many_parts``.

The body is split by Werkzeug's own multipart decoder (``werkzeug.sansio.multipart``): only the
assembly of its events into fields and files is ours. The front (``api/front.py``) has read the
whole body, bounded by ``INTERNVL_MAX_REQUEST_BYTES``, so no per-field memory limit is needed here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from werkzeug.datastructures import Headers, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import MultiPartParser
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from ..core.errors import BadRequest, PayloadTooLarge

__all__ = ["MAX_PARTS", "FormBody", "not_utf8", "read_form"]

# Werkzeug's default. A submit needs at most 8 images and a dozen fields.
MAX_PARTS = 1000
# The chunks the decoder is fed, as Werkzeug feeds it (its boundary search stays linear).
_CHUNK_BYTES = 64 * 1024


@dataclass(frozen=True)
class FormBody:
    """A form's text fields, and its file parts' contents (parts sent with a filename)."""

    fields: MultiDict[str, str] = field(default_factory=MultiDict)
    files: MultiDict[str, bytes] = field(default_factory=MultiDict)


def read_form(body: bytes, mimetype: str, options: dict[str, str]) -> FormBody:
    """The fields and files of a form ``body`` whose content type is ``mimetype`` with
    parameters ``options``; raise ``ServiceError`` for a body that breaks the rules above."""
    if mimetype == "multipart/form-data":
        return _multipart(body, options.get("boundary", ""))
    return FormBody(fields=_urlencoded(body))


def _multipart(body: bytes, boundary: str) -> FormBody:
    if not boundary:
        raise BadRequest(
            "the multipart/form-data content type has no boundary parameter; let your HTTP "
            "client build the body and its Content-Type",
            code="bad_request",
        )
    decoder = MultipartDecoder(boundary.encode("latin-1"), max_parts=MAX_PARTS)
    fields: MultiDict[str, str] = MultiDict()
    files: MultiDict[str, bytes] = MultiDict()
    part: Field | File | None = None
    chunks: list[bytes] = []
    chunked = [body[at : at + _CHUNK_BYTES] for at in range(0, len(body), _CHUNK_BYTES)]
    try:
        for chunk in [*chunked, None]:
            decoder.receive_data(chunk)
            event = decoder.next_event()
            while not isinstance(event, Epilogue | NeedData):
                if isinstance(event, Field | File):
                    part, chunks = event, []
                elif isinstance(event, Data) and part is not None:
                    chunks.append(event.data)
                    if not event.more_data:
                        content = b"".join(chunks)
                        if isinstance(part, File):
                            files.add(part.name, content)
                        else:
                            fields.add(part.name, _text(part.name, content, part.headers))
                event = decoder.next_event()
    except RequestEntityTooLarge:  # the decoder's only limit here: max_parts
        raise PayloadTooLarge(
            f"the multipart body has more than {MAX_PARTS} parts; a job takes one part per "
            "image and per field: send only those",
            code="too_many_parts",
        ) from None
    except ValueError as exc:  # a malformed part, as Werkzeug's decoder words it
        raise BadRequest(
            f"the multipart body cannot be read ({exc}); let your HTTP client build it",
            code="bad_request",
        ) from None
    return FormBody(fields=fields, files=files)


def _text(name: str, content: bytes, headers: Headers) -> str:
    # The charsets Werkzeug honours in a part's Content-Type (UTF-8 unless the part says so).
    charset = MultiPartParser().get_part_charset(headers)
    try:
        return content.decode(charset)
    except UnicodeDecodeError as exc:
        raise not_utf8(f"the field {name!r}", exc) from None


def _urlencoded(body: bytes) -> MultiDict[str, str]:
    try:
        # Percent-escapes too must decode to UTF-8 (errors="strict"), not stand for themselves.
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except UnicodeDecodeError as exc:
        raise not_utf8("the form body", exc) from None
    return MultiDict(pairs)


def not_utf8(what: str, exc: UnicodeDecodeError) -> BadRequest:
    """The refusal of text that is not UTF-8, the same for every field and body."""
    return BadRequest(
        f"{what} is not valid UTF-8 text (byte {exc.object[exc.start]:#04x} at offset "
        f"{exc.start}): send text as UTF-8",
        code="invalid_utf8",
    )
