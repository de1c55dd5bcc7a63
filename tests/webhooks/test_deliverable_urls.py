"""A webhook URL the guard accepts can be sent by the delivery's own machinery.

The delivery (``webhooks/http.py``) resolves the host with ``getaddrinfo`` (which encodes a str
host with the ``idna`` codec), sends the request through ``http.client`` (whose
``GuardedHTTPConnection`` overrides only ``connect``) and, for https, names the host to ``ssl``.
Each accepted URL goes through each of these here; the IP-address ones are also really sent.
And what the submit refuses, a delivery refuses too, by the same function.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl

import pytest

from internvl_queue.core.webhook_url import parse_webhook_url
from internvl_queue.webhooks.http import AddressRefused, post
from tests.core.ssrf_matrix import ACCEPTED, ROWS, Row
from tests.receiver import Receiver

# Hosts that are names are not resolved here (no DNS in tests): their syntax is what counts.
ODD_BUT_SENDABLE = [
    "http://example.com/",
    "https://EXAMPLE.com:8443/Hook?x=1#fragment",
    "http://under_score.example/",
    "http://-dash-.example/",
    "http://example.com./",
    "https://xn--bcher-kva.example/",
    "http://" + "a" * 63 + ".example/",
    "http://" + "a." * 121 + "example.com/",  # a host of 253 characters
    "http://example.com:/x",
    "http://example.com?q",
    'http://example.com/%zz%20<>"{}|\\^`',
    "http://example.com/~!$&'()*+,;=:@",
    "http://1.2.3.4.example/",
    "http://[2606:4700::1111]:8080/",
    "https://[::ffff:8.8.8.8]/",
]
ACCEPTED_URLS = ODD_BUT_SENDABLE + [row.url for row in ROWS if row.outcome == ACCEPTED]


class _Captured(http.client.HTTPConnection):
    """http.client with its socket one end of a local pair: what it writes can be read back."""

    peer: socket.socket

    def connect(self) -> None:
        self.sock, self.peer = socket.socketpair()


@pytest.mark.parametrize("url", ACCEPTED_URLS, ids=ascii)
def test_an_accepted_url_passes_the_resolver_http_client_and_tls(url: str) -> None:
    webhook = parse_webhook_url(url)
    webhook.host.encode("idna")  # what socket.getaddrinfo does with a str host
    context = ssl.create_default_context()
    context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=webhook.host)
    connection = _Captured(webhook.host, webhook.port)
    try:
        connection.request("POST", webhook.target, body=b"{}", headers={"x": "y"})
        sent = connection.peer.recv(65536)
    finally:
        connection.close()
        connection.peer.close()
    request_line, host_header = sent.split(b"\r\n")[:2]
    assert request_line == f"POST {webhook.target} HTTP/1.1".encode()
    assert host_header.startswith(b"Host: ")


@pytest.mark.parametrize(
    ("suffix", "path"),
    [
        ("", "/"),
        ("?only=query", "/?only=query"),
        ("/a%20b?x=1&y=%zz", "/a%20b?x=1&y=%zz"),
        ("/~!$&'()*+,;=:@", "/~!$&'()*+,;=:@"),
        ('/<>"{}|\\^`', '/<>"{}|\\^`'),
        ("/hook#fragment", "/hook"),
    ],
)
def test_an_accepted_url_is_really_sent(receiver: Receiver, suffix: str, path: str) -> None:
    url = f"http://127.0.0.1:{receiver.port}{suffix}"
    loopback = [ipaddress.ip_network("127.0.0.0/8")]
    reply = post(url, b"{}", {"content-type": "application/json"}, timeout_s=5, allowed=loopback)
    assert reply.status_code == 204
    assert [r.path for r in receiver.wait_for(1)] == [path]


@pytest.mark.parametrize(
    "target", ["/a b", "/hook\r\nX-Injected: 1", "/\x00", "/caf\u00e9", "/\u200b"]
)
def test_what_is_refused_as_invalid_http_client_cannot_send(target: str) -> None:
    # Why these are refused at submit: the delivery could never send them.
    connection = _Captured("127.0.0.1", 9)
    with pytest.raises((http.client.InvalidURL, UnicodeEncodeError)):
        connection.putrequest("POST", target)


REFUSED = [row for row in ROWS if row.outcome != ACCEPTED]


@pytest.mark.parametrize("row", REFUSED, ids=[row.id for row in REFUSED])
def test_the_delivery_refuses_what_the_submit_refuses_with_the_same_sentence(row: Row) -> None:
    # A URL stored before the guard knew better (or by a bug) is refused when it connects.
    allowed = [ipaddress.ip_network(c, strict=False) for c in row.allowed.split(",") if c]
    with pytest.raises(AddressRefused) as refused:
        post(row.url, b"{}", {}, timeout_s=2, allowed=allowed)
    assert row.says in str(refused.value)
