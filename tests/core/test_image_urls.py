"""Image URLs meet the webhooks' SSRF guard: every refusal of the SSRF matrix holds for them too
(with the image codes), before any connection is made; and an Idempotency-Key fingerprint counts
a URL image as its URL."""

from __future__ import annotations

import ipaddress

import pytest

from internvl_queue.core.errors import ImageUrlFailed, WebhookUrlNotAllowed
from internvl_queue.core.idempotency import request_fingerprint
from internvl_queue.core.image_urls import ImageFetcher, ImageUrl
from internvl_queue.core.job import Job, JobParams
from internvl_queue.core.webhook_url import parse_webhook_url
from tests.core.ssrf_matrix import ACCEPTED, NOT_ALLOWED, ROWS, Row
from tests.images import photo

REFUSED = [row for row in ROWS if row.outcome != ACCEPTED]


def _expected_code(row: Row) -> str:
    """A URL that does not parse (not http(s), credentials, a bad host or port: some of these
    are ``webhook_url_not_allowed`` in the matrix) could never be fetched: image_url_invalid.
    One that parses was refused for its address: image_url_not_allowed."""
    try:
        parse_webhook_url(row.url)
    except WebhookUrlNotAllowed:
        return "image_url_invalid"
    assert row.outcome == NOT_ALLOWED
    return "image_url_not_allowed"


@pytest.mark.parametrize("row", REFUSED, ids=[row.id for row in REFUSED])
def test_the_ssrf_matrix_refusals_hold_for_image_urls(row: Row) -> None:
    allowed = [ipaddress.ip_network(c, strict=False) for c in row.allowed.split(",") if c]
    fetcher = ImageFetcher(allowed=allowed, timeout_s=2.0, concurrency=1)
    with pytest.raises(ImageUrlFailed) as refused:
        fetcher.fetch([ImageUrl(row.url, "images[0].url")], max_bytes=10**6, max_images=8)
    assert refused.value.code == _expected_code(row)
    assert row.says in refused.value.message
    assert "webhook" not in refused.value.message.lower()


def test_a_refusal_frees_the_fetch_slot() -> None:
    fetcher = ImageFetcher(allowed=[], timeout_s=2.0, concurrency=1)
    for _ in range(2):  # a second fetch would be image_fetch_busy if the slot were kept
        with pytest.raises(ImageUrlFailed, match="loopback"):
            fetcher.fetch([ImageUrl("http://127.0.0.1/", "u")], max_bytes=100, max_images=8)


def test_the_fingerprint_counts_a_url_as_sent_not_its_bytes() -> None:
    job = Job.new("q", JobParams(max_new_tokens=8, max_tiles=1, timeout_s=60), image_count=1)
    url = ImageUrl("https://example.com/a.jpg", "images[0].url")
    same_url_again = ImageUrl("https://example.com/a.jpg", "image_url[0]")
    assert request_fingerprint(job, [url]) == request_fingerprint(job, [same_url_again])
    assert request_fingerprint(job, [url]) != request_fingerprint(
        job, [ImageUrl("https://example.com/b.jpg", "images[0].url")]
    )
    assert request_fingerprint(job, [url]) != request_fingerprint(job, [photo(8, 8)])
