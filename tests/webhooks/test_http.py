"""The guarded POST on its own: TLS verified against the URL's host, the guard at connect time."""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from internvl_queue.webhooks.http import AddressRefused, DeliveryFailed, post

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class _Ok(BaseHTTPRequestHandler):
    hits = 0

    def do_POST(self) -> None:
        type(self).hits += 1
        self.rfile.read(int(self.headers.get("content-length", "0")))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[int]:
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        [*command, "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Ok.hits = 0
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_https_certificates_are_verified(tls_server: int) -> None:
    # A self-signed certificate is not trusted by the default context: no request is made.
    with pytest.raises(DeliveryFailed, match="TLS error"):
        post(
            f"https://127.0.0.1:{tls_server}/hook",
            b"{}",
            {"content-type": "application/json"},
            timeout_s=2,
            allowed=LOOPBACK,
        )
    assert _Ok.hits == 0


def test_every_resolved_address_is_checked_at_connect_time() -> None:
    # "localhost" resolves to loopback only: refused without an allowlist, before any connect.
    with pytest.raises(AddressRefused, match="loopback"):
        post("http://localhost:9/hook", b"{}", {}, timeout_s=1, allowed=())


def test_an_unresolvable_host_is_a_retryable_failure_not_a_refusal() -> None:
    with pytest.raises(DeliveryFailed) as caught:
        post("http://no-such-host.invalid/hook", b"{}", {}, timeout_s=1, allowed=())
    assert not isinstance(caught.value, AddressRefused)
    assert "does not resolve" in str(caught.value)
