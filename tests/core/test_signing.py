"""Standard Webhooks v1 signing, checked with the receiver's own ``verify_webhook``."""

from __future__ import annotations

import base64
import json
import time

import pytest

from internvl_queue import WebhookVerificationError, verify_webhook
from internvl_queue.core.signing import generate_secret, sign, signature_header

BODY = json.dumps({"type": "job.succeeded", "data": {"id": "j1"}}).encode()


def _headers(secrets: list[str], timestamp: int, body: bytes = BODY) -> dict[str, str]:
    return {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": signature_header(secrets, "msg_1", timestamp, body),
    }


def test_the_published_standard_webhooks_example() -> None:
    # The example from the Standard Webhooks / Svix documentation.
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    signature = sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_generated_secret_holds_32_random_bytes() -> None:
    a, b = generate_secret(), generate_secret()
    assert a.startswith("whsec_") and a != b
    assert len(base64.b64decode(a.removeprefix("whsec_"))) == 32


def test_a_signed_webhook_verifies_and_returns_the_payload() -> None:
    secret = generate_secret()
    now = int(time.time())
    assert verify_webhook(_headers([secret], now), BODY, secret) == json.loads(BODY)
    # Lower-case header names (a WSGI server's) and a str body work too.
    lower = {k.lower(): v for k, v in _headers([secret], now).items()}
    assert verify_webhook(lower, BODY.decode(), [secret])["data"] == {"id": "j1"}


def test_tampered_body_fails() -> None:
    secret = generate_secret()
    headers = _headers([secret], int(time.time()))
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(headers, BODY.replace(b"j1", b"j2"), secret)


def test_wrong_secret_fails() -> None:
    headers = _headers([generate_secret()], int(time.time()))
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(headers, BODY, generate_secret())


def test_changed_id_fails() -> None:
    secret = generate_secret()
    headers = _headers([secret], int(time.time())) | {"Webhook-Id": "msg_2"}
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify_webhook(headers, BODY, secret)


@pytest.mark.parametrize("offset", [-360, 360])
def test_a_timestamp_six_minutes_off_fails(offset: int) -> None:
    secret = generate_secret()
    now = time.time()
    headers = _headers([secret], int(now) + offset)
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verify_webhook(headers, BODY, secret, now=now)
    # Inside the tolerance the same headers verify: the timestamp was the only problem.
    assert verify_webhook(headers, BODY, secret, now=now + offset)


def test_two_secrets_both_verify_for_rotation() -> None:
    old, new = generate_secret(), generate_secret()
    headers = _headers([new, old], int(time.time()))
    assert len(headers["Webhook-Signature"].split()) == 2
    assert verify_webhook(headers, BODY, old)
    assert verify_webhook(headers, BODY, new)
    assert verify_webhook(headers, BODY, [generate_secret(), old])


@pytest.mark.parametrize("missing", ["Webhook-Id", "Webhook-Timestamp", "Webhook-Signature"])
def test_missing_header_fails(missing: str) -> None:
    secret = generate_secret()
    headers = _headers([secret], int(time.time()))
    del headers[missing]
    with pytest.raises(WebhookVerificationError, match=missing.lower()):
        verify_webhook(headers, BODY, secret)


def test_unversioned_or_garbled_signatures_fail() -> None:
    secret = generate_secret()
    now = int(time.time())
    good = sign(secret, "msg_1", now, BODY)
    headers = _headers([secret], now) | {"Webhook-Signature": "v2," + good[3:] + " garbage"}
    with pytest.raises(WebhookVerificationError):
        verify_webhook(headers, BODY, secret)


def test_the_package_root_stays_import_light() -> None:
    import subprocess
    import sys

    code = (
        "import sys, internvl_queue\n"
        "print(sorted(m for m in ('redis', 'flask', 'celery') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
