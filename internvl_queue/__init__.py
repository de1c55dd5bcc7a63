"""internvl-queue: an asynchronous image-question service (Flask API, Redis, Celery GPU workers).

Receivers of its webhooks need only ``verify_webhook`` (standard library only, like this module).
"""

from .core.signing import WebhookVerificationError, verify_webhook

__all__ = ["WebhookVerificationError", "__version__", "verify_webhook"]

__version__ = "0.1.0"
