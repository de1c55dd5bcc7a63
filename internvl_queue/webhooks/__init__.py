"""The webhook delivery worker: the outbox pump, the SSRF-guarded HTTP POST, signed delivery with
retries, and its Celery entry module. CPU only: nothing here imports torch.
"""
