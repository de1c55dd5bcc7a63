"""The shared core: settings, job records and states, the Redis store, errors.

Nothing in this package imports Flask, Celery or torch, so the API, the workers and the tests can
all use it.
"""
