"""The GPU worker: the Celery entry module and task, the model seam, the batching engine,
heartbeats and cancellation.

Importing this package is cheap and torch-free; only ``model`` and ``engine`` import torch and
transformers, and only the worker process loads them. Needs the ``worker`` extra.
"""
