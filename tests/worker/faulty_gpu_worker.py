"""A real GPU worker process whose GPU fails the way $FAKE_GPU says, after $FAKE_GPU_AFTER
batches: ``sticky_cuda_error`` (every later batch raises an illegal-memory-access error) or
``hang`` (the batch never returns). Run as ``python -m tests.worker.faulty_gpu_worker``; it
starts exactly like ``internvl-queue worker``, with the fake put over the model's decoder once
the model is loaded (the GPU is the outermost edge)."""

from __future__ import annotations

import os
import sys
import threading
import warnings
from typing import Any

from celery import signals

from internvl_queue.worker.main import app, runtime, settings


class _FakeGpu:
    def __init__(self, decoder: Any, fault: str, after: int) -> None:
        self.decoder, self.fault, self.after, self.batches = decoder, fault, after, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.decoder, name)

    def run(self, batch: Any, *args: Any) -> Any:
        self.batches += 1
        if self.batches <= self.after:
            return self.decoder.run(batch, *args)
        if self.fault == "hang":
            threading.Event().wait()  # for ever
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


@signals.worker_init.connect  # after the worker's own hook (connected first): the model is loaded
def _break_the_gpu(**_: Any) -> None:
    fault, after = os.environ["FAKE_GPU"], int(os.environ.get("FAKE_GPU_AFTER", "1"))
    runtime.engine.decoder = _FakeGpu(runtime.engine.decoder, fault, after)


if __name__ == "__main__":
    from celery.exceptions import SecurityWarning

    warnings.filterwarnings("ignore", category=SecurityWarning)  # root in containers, as the CLI
    argv = ["--quiet", "worker", "--loglevel=INFO", "-Q", settings.queue_name]
    argv += ["--without-gossip", "--without-mingle", "--hostname", f"faulty-{os.getpid()}@%h"]
    from celery.worker import state

    app.worker_main(argv)
    sys.exit(int(state.should_stop or 0))  # as the CLI does
