"""internvl-queue: an asynchronous image-question service (Flask API, Redis, Celery GPU workers)."""

__version__ = "0.1.0"
