"""A Python client of the internvl-queue API (base install: ``requests``, no torch).

    from internvl_queue.client import Client

    print(Client("http://127.0.0.1:8000").run(["examples/cat.jpg"], "What is it?").result.answer)

``AsyncClient`` is the same for ``asyncio``, on ``httpx`` (the ``async`` extra: not in the base
install; imported only when asked for). ``verify_webhook`` (for receivers of the service's
webhooks) is here too, beside the client. See docs/client.md.
"""

from typing import TYPE_CHECKING, Any

from ..core.signing import WebhookVerificationError, verify_webhook
from .batch import Batch, BatchCounts
from .calls import POLL_S, WAIT_MARGIN_S
from .deliveries import Delivery
from .errors import (
    ApiError,
    ApiUnreachable,
    BadRequest,
    ClientError,
    Conflict,
    JobFailed,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    UnsupportedMediaType,
    ValidationFailed,
    WaitTimeout,
)
from .images import ImageInput, ImageUnreadable
from .job import Job, JobError, JobPage, JobResult, JobStatus, Usage
from .retry import RetryPolicy
from .sync import API_KEY_ENV, Client

if TYPE_CHECKING:
    from .aio import AsyncClient

__all__ = [
    "API_KEY_ENV",
    "POLL_S",
    "WAIT_MARGIN_S",
    "ApiError",
    "ApiUnreachable",
    "AsyncClient",
    "BadRequest",
    "Batch",
    "BatchCounts",
    "Client",
    "ClientError",
    "Conflict",
    "Delivery",
    "ImageInput",
    "ImageUnreadable",
    "Job",
    "JobError",
    "JobFailed",
    "JobPage",
    "JobResult",
    "JobStatus",
    "NotFound",
    "PayloadTooLarge",
    "RateLimited",
    "RetryPolicy",
    "ServiceUnavailable",
    "Unauthorized",
    "UnsupportedMediaType",
    "Usage",
    "ValidationFailed",
    "WaitTimeout",
    "WebhookVerificationError",
    "verify_webhook",
]


def __getattr__(name: str) -> Any:
    # httpx is optional: imported (or the missing package named) only for AsyncClient.
    if name == "AsyncClient":
        from .aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
