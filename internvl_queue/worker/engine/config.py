"""Engine knobs, with defaults sized for one H100 and an InternVL3-1B-class model."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EngineConfig"]


@dataclass(frozen=True)
class EngineConfig:
    max_batch_jobs: int = 256
    # Bounds the vision tower's batch (each tile is 1 024 patches) and the prefill length.
    max_batch_tiles: int = 512
    # How long the first job of a batch waits for company. Small: an idle GPU should start at once.
    max_wait_ms: float = 5.0
    # Batch only jobs whose max_new_tokens fall in the same power-of-two bucket, so a 16-token job
    # is not held for a 4 096-token one.
    group_by_length: bool = True
    # Replay each decode step as a CUDA graph (CUDA only): removes the per-kernel launch cost that
    # dominates small-batch decoding.
    cuda_graphs: bool = True
    # Decode steps between looks at the host side (finished rows, deadlines, cancellations).
    check_every: int = 8
    # Row-slots (rows x KV cache length) of the one KV buffer that every decode shape shares; the
    # shapes within it are built, and their CUDA graphs captured, at start-up. 0: twice the image
    # tokens of a full batch (2 x max_batch_tiles x image tokens per tile).
    decode_kv_tokens: int = 0
    # Tiles whose pixels may sit in device memory at once (waiting and running requests); the
    # rest wait on the host until their turn. 0: two full batches (2 x max_batch_tiles).
    max_resident_tiles: int = 0
    # A watchdog declares the engine dead when it makes no progress for this long while work
    # waits (a hung kernel or driver). 0: no watchdog.
    stall_s: float = 0.0

    @property
    def resident_tiles_budget(self) -> int:
        return self.max_resident_tiles or 2 * self.max_batch_tiles
