"""One webhook attempt: sign, POST, classify the reply, record it in the outbox.

    2xx                      delivered
    410 Gone                 gone: the receiver asked us to stop; no more attempts for this
                             event, and the job's later events are not sent either
    refused by the SSRF guard refused: the host now resolves to a forbidden address
    anything else            retried per the schedule (Retry-After honoured), then gave_up:
                             3xx (redirects are not followed), 4xx, 5xx, timeouts, connection
                             errors, and a worker with no signing secret configured

Failures are logged and recorded, never raised: an unreachable endpoint cannot fail the task,
the worker or the job, and the job record is never touched.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

import redis

from .. import __version__
from ..core.backoff import next_attempt_at, parse_retry_after
from ..core.outage import Outage
from ..core.outbox import Attempt, DeliveryOutcome, Outbox
from ..core.settings import Settings
from ..core.signing import signature_header
from ..core.webhook_events import WebhookEvent
from .http import AddressRefused, DeliveryFailed, HttpReply, post

__all__ = ["USER_AGENT", "WebhookDelivery"]

# Time an attempt needs beyond its own deadline to record its outcome under its lease.
_RECORD_MARGIN_S = 2.0

log = logging.getLogger("internvl_queue.webhooks")

USER_AGENT = f"internvl-queue/{__version__}"


class WebhookDelivery:
    def __init__(
        self,
        settings: Settings,
        outbox: Outbox,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        outage: Outage | None = None,
    ) -> None:
        self.settings = settings
        self.outbox = outbox
        self.outage = outage or Outage(log, "Redis")  # shared with the pump: one line an outage
        self.clock = clock
        self.rng = rng

    def deliver(self, event_id: str, lease_token: str) -> DeliveryOutcome | None:
        """Make one attempt for a leased event; its outcome, or None if there was nothing to do."""
        try:
            return self._deliver(event_id, lease_token)
        except redis.RedisError as exc:  # its lease runs out and another attempt is made then
            self.outage.failed(exc, f"delivering webhook {event_id}")
            return None
        except Exception:
            # Most likely Redis: the lease runs out and another attempt is made then.
            log.exception("webhook %s: attempt failed unexpectedly; it will be retried", event_id)
            return None

    def _deliver(self, event_id: str, lease_token: str) -> DeliveryOutcome | None:
        event = self.outbox.load(event_id)
        if event is None:
            log.info("webhook %s: expired, nothing to deliver", event_id)
            return None
        if event.outcome or event.lease_token != lease_token:
            # Finished already, or our lease ran out and another attempt holds the event.
            log.info("webhook %s: lease no longer ours; skipped", event_id)
            return None
        if not self._lease_outlasts_an_attempt(event_id):
            # The task waited too long for a thread: an attempt begun now could outlive the lease
            # and overlap the next one. The lease runs out, and the event is leased again.
            log.info("webhook %s: too little of its lease left to start; left for later", event_id)
            return None
        started = self.clock()
        clock_start = time.monotonic()
        number: int | None = None  # the attempt's number, once it is about to be sent
        reply: HttpReply | None = None
        error: str | None = None
        refused = False
        if self.outbox.endpoint_gone(event.job_id):
            # "410 stops that endpoint for that job": recorded, not sent.
            gone = Attempt(
                at=started,
                outcome=DeliveryOutcome.GONE,
                error="not sent: the endpoint answered 410 Gone to an earlier event of this job",
            )
            self.outbox.record_attempt(event_id, lease_token, gone)
            log.info(
                "webhook %s (%s): endpoint gone for job %s", event_id, event.type, event.job_id
            )
            return gone.outcome
        if not self.settings.webhook_secret_list:
            # Never send an unsigned webhook. The API refuses webhook_url without a secret, so
            # this is a worker started without WEBHOOK_SECRETS: retry, in case it is fixed.
            error = "no WEBHOOK_SECRETS configured on the webhook worker: not sent unsigned"
        elif not (number := self.outbox.begin_attempt(event_id, lease_token)):
            log.info("webhook %s: lease no longer ours; skipped", event_id)
            return None
        else:
            try:
                reply = post(
                    event.url,
                    event.body.encode(),
                    self._headers(event, int(started)),
                    timeout_s=self.settings.webhook_timeout_s,
                    allowed=self.settings.webhook_allowed_networks,
                )
            except AddressRefused as exc:
                error, refused = str(exc), True
            except DeliveryFailed as exc:
                error = str(exc)
        duration_ms = (time.monotonic() - clock_start) * 1000
        attempt = self._classify(event, started, duration_ms, reply, error, refused)
        if self.outbox.record_attempt(event_id, lease_token, attempt, number):
            log.info(
                "webhook %s (%s, job %s) attempt %d: %s%s",
                event_id,
                event.type,
                event.job_id,
                number or event.attempts + 1,
                attempt.outcome.value,
                f" ({attempt.status_code or attempt.error})",
            )
        else:
            log.warning("webhook %s: lease lost during the attempt; not recorded", event_id)
        return attempt.outcome

    def _lease_outlasts_an_attempt(self, event_id: str) -> bool:
        lease_ends = self.outbox.due_at(event_id)  # a leased event's score is its lease's end
        needed = self.settings.webhook_timeout_s + _RECORD_MARGIN_S
        return lease_ends is not None and lease_ends - self.clock() >= needed

    def _headers(self, event: WebhookEvent, timestamp: int) -> dict[str, str]:
        body = event.body.encode()
        return {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": event.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(
                self.settings.webhook_secret_list, event.id, timestamp, body
            ),
        }

    def _classify(
        self,
        event: WebhookEvent,
        started: float,
        duration_ms: float,
        reply: HttpReply | None,
        error: str | None,
        refused: bool,
    ) -> Attempt:
        status = None if reply is None else reply.status_code
        due: float | None = None
        if refused:
            outcome = DeliveryOutcome.REFUSED
        elif status is not None and 200 <= status < 300:
            outcome = DeliveryOutcome.DELIVERED
        elif status == 410:
            outcome = DeliveryOutcome.GONE
        else:
            if status is not None and 300 <= status < 400:
                error = f"redirect ({status}) not followed"
            now = self.clock()
            retry_after = None if reply is None else parse_retry_after(reply.retry_after, now)
            due = next_attempt_at(
                event.attempts + 1,
                self.settings.webhook_schedule,
                now=now,
                window_end=event.created_at + self.settings.webhook_window_s,
                retry_after=retry_after,
                rng=self.rng,
            )
            outcome = DeliveryOutcome.GAVE_UP if due is None else DeliveryOutcome.RETRYING
        return Attempt(
            at=started,
            outcome=outcome,
            status_code=status,
            error=error,
            duration_ms=duration_ms,
            next_attempt_at=due,
        )
