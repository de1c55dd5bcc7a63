"""The GPU worker: Celery app and tasks, the model seam, heartbeats.

Importing this package is cheap and torch-free; only ``model`` (and the tiny-checkpoint maker)
import torch and transformers, and only the worker process loads them.
"""
