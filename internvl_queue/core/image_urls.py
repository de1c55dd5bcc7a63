"""Images named by URL, fetched by the API at submit through the webhooks' SSRF guard.

A caller may name an image by URL instead of sending its bytes. The API fetches it while it
handles the submit, so that a bad URL is refused at once (422 with an ``image_url_*`` code), and
the job is then stored exactly as if the bytes had been uploaded: the job record and the worker
never see a URL. The rules, in the order a fetch meets them:

1. The URL is parsed, and every address its host resolves to checked, by the functions that
   check a ``webhook_url`` (``webhook_url``), and checked again on the address actually connected
   to (``guarded_http``): DNS may change between the two. Only public addresses, or the
   operator's ``INTERNVL_IMAGE_URL_ALLOWED_CIDRS`` (an allow-list of its own: letting webhooks
   post to an internal receiver must not let any caller read internal images into a model's
   answer). http and https both, as for webhooks: the guard is on addresses, not schemes.
2. A plain GET: no credentials, cookies or proxies. At most ``MAX_REDIRECTS`` redirects, each
   target parsed and checked as in 1 before it is connected to, so none leads into private space.
3. One deadline for all the URL images of one submit (``INTERNVL_IMAGE_FETCH_TIMEOUT_S``): DNS,
   connecting, TLS, redirects and the body, each step given only the time left and the
   connection cut off at the deadline (a server dripping bytes cannot stretch it).
4. Bytes: a request's images, uploaded and fetched, together at most
   ``INTERNVL_MAX_REQUEST_BYTES``, the limit on an upload's body. A fetch gets what is left; it is
   refused from its Content-Length, or as soon as it reads one byte more.
5. Content: nothing of the reply's headers is trusted. The bytes meet the upload's checks in
   ``prepare_job`` (``images.inspect_image``: the format from the file's own signature, pixel
   limits, integrity).
6. Threads: a fetch holds an API request thread (8 per process). At most
   ``INTERNVL_IMAGE_FETCH_CONCURRENCY`` submits of one process fetch at once; one more is answered
   503 ``image_fetch_busy`` at once rather than queued, so slow URLs cannot take every thread
   from polls, uploads and health checks. Standard library only.
"""

from __future__ import annotations

import http.client
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urljoin

from .errors import ImageUrlFailed, ServiceUnavailable, ValidationFailed, WebhookUrlNotAllowed
from .guarded_http import CutOff, Deadline, GuardedHTTPConnection, GuardedHTTPSConnection
from .settings import Settings
from .webhook_url import HostDoesNotResolve, Network, WebhookUrl, parse_webhook_url

__all__ = ["MAX_REDIRECTS", "ImageFetcher", "ImageUrl"]

MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
# Asked of every server: what we take, and who we are (some image hosts refuse a bare client).
_HEADERS = {"Accept": "image/*", "User-Agent": "internvl-queue image fetch"}
_REMEDY = (
    "use a public URL (an operator can allow internal networks with "
    "INTERNVL_IMAGE_URL_ALLOWED_CIDRS)"
)
_BUSY_RETRY_AFTER_S = 1


@dataclass(frozen=True)
class ImageUrl:
    """An image a caller named by URL; ``name`` is the request field, for messages."""

    url: str
    name: str


class ImageFetcher:
    """Fetches a submit's image URLs under the rules of the module docstring; one per process."""

    def __init__(self, *, allowed: Sequence[Network], timeout_s: float, concurrency: int) -> None:
        self.allowed = allowed
        self.timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(concurrency)

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageFetcher:
        return cls(
            allowed=settings.image_url_allowed_networks,
            timeout_s=settings.image_fetch_timeout_s,
            concurrency=settings.image_fetch_concurrency,
        )

    def fetch(
        self, images: Sequence[bytes | ImageUrl], *, max_bytes: int, max_images: int
    ) -> list[bytes]:
        """``images`` with every ``ImageUrl`` replaced by the bytes it names, in order; an
        ``ImageUrlFailed`` (422) naming the first that fails, or 503 ``image_fetch_busy``."""
        if not any(isinstance(image, ImageUrl) for image in images):
            return [image for image in images if isinstance(image, bytes)]
        if len(images) > max_images:  # prepare_job's check, before any fetch is spent on it
            raise ValidationFailed(
                f"{len(images)} images sent; at most {max_images} per job",
                code="too_many_images",
            )
        if not self._slots.acquire(blocking=False):
            raise ServiceUnavailable(
                "this API process is already fetching as many image URLs as it may "
                "(INTERNVL_IMAGE_FETCH_CONCURRENCY); try again in a moment",
                code="image_fetch_busy",
                retry_after=_BUSY_RETRY_AFTER_S,
            )
        try:
            deadline = Deadline(self.timeout_s)
            left = max_bytes - sum(len(image) for image in images if isinstance(image, bytes))
            fetched: list[bytes] = []
            for image in images:
                if isinstance(image, ImageUrl):
                    data = self._fetch_one(image, deadline, left)
                    left -= len(data)
                    fetched.append(data)
                else:
                    fetched.append(image)
            return fetched
        finally:
            self._slots.release()

    def _fetch_one(self, image: ImageUrl, deadline: Deadline, max_bytes: int) -> bytes:
        url, name = image.url, image.name
        for _ in range(MAX_REDIRECTS + 1):
            target = _parse(url, name)
            reply = self._get(target, name, deadline, max_bytes)
            if isinstance(reply, bytes):
                return reply
            url, name = urljoin(url, reply), f"{image.name}'s redirect target"
        raise ImageUrlFailed(
            f"{image.name} redirects more than {MAX_REDIRECTS} times; give the image's own URL",
            code="image_url_unreachable",
        )

    def _get(
        self, target: WebhookUrl, name: str, deadline: Deadline, max_bytes: int
    ) -> bytes | str:
        """The body of a 2xx reply, or the Location of a redirect."""
        kind = GuardedHTTPSConnection if target.https else GuardedHTTPConnection
        connection = kind(
            target.host,
            target.port,
            deadline=deadline,
            allowed=self.allowed,
            name=name,
            remedy=_REMEDY,
        )
        timed_out = ImageUrlFailed(
            f"{name} did not deliver its image within {self.timeout_s:g} s "
            "(INTERNVL_IMAGE_FETCH_TIMEOUT_S, for all of a request's image URLs)",
            code="image_url_timeout",
        )
        response: http.client.HTTPResponse | None = None
        try:
            with CutOff(connection):
                connection.request("GET", target.target, headers=_HEADERS)
                response = connection.getresponse()
                status = response.status
                if status in _REDIRECTS and (location := response.getheader("Location")):
                    return location
                if not 200 <= status < 300:
                    raise _unreachable(
                        f"{name} answered HTTP {status} {response.reason}; it must answer a "
                        "plain GET with 200 and the image"
                    )
                data = _body(response, name, max_bytes)
                if deadline.passed:
                    raise TimeoutError
                return data
        except HostDoesNotResolve as exc:
            raise _unreachable(exc.message) from None
        except WebhookUrlNotAllowed as exc:  # an address the guard refused at connect time
            raise ImageUrlFailed(exc.message, code="image_url_not_allowed") from None
        except TimeoutError:
            raise timed_out from None
        except ssl.SSLError as exc:
            if deadline.passed:
                raise timed_out from None
            raise _unreachable(f"{name}: TLS error: {exc}") from None
        except ConnectionRefusedError:
            raise _unreachable(f"{name}: the connection was refused") from None
        except (OSError, http.client.HTTPException) as exc:
            # Cut off at the deadline, a read ends in a closed connection: say it was the deadline.
            if deadline.passed:
                raise timed_out from None
            raise _unreachable(f"{name}: {type(exc).__name__}: {exc}") from None
        finally:
            if response is not None:  # a reply without a length holds the socket, not connection
                response.close()
            connection.close()


def _parse(url: str, name: str) -> WebhookUrl:
    if not isinstance(url, str):
        raise ImageUrlFailed(f"{name} must be a string", code="image_url_invalid")
    try:
        return parse_webhook_url(url, name=name)
    except WebhookUrlNotAllowed as exc:  # not http(s), credentials, bad host: never fetchable
        raise ImageUrlFailed(exc.message, code="image_url_invalid") from None


def _unreachable(message: str) -> ImageUrlFailed:
    return ImageUrlFailed(message, code="image_url_unreachable")


def _body(response: http.client.HTTPResponse, name: str, max_bytes: int) -> bytes:
    too_large = ImageUrlFailed(
        f"{name}'s image is over the {max(max_bytes, 0)} bytes this request may still carry "
        "(INTERNVL_MAX_REQUEST_BYTES, for all its images together); send a smaller image",
        code="image_url_too_large",
    )
    length = response.getheader("Content-Length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise too_large
    data = bytearray()
    while len(data) <= max_bytes:
        chunk = response.read(min(_CHUNK, max_bytes + 1 - len(data)))
        if not chunk:
            break
        data += chunk
    if len(data) > max_bytes:
        raise too_large
    return bytes(data)
