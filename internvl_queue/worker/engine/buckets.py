"""Which decode shapes (rows x KV slots) get a workspace and a CUDA graph: a pure function.

A decode step replays a CUDA graph of one fixed shape. Capturing one stalls the GPU (0.1-1 s), so
the engine captures every shape the batcher can form before the worker reports ready, and none
after. The set is bounded by a budget of KV *row-slots* (rows x slots): all shapes share one KV
buffer of that size (one batch decodes at a time), so the budget, not the number of shapes, sets
the memory. A batch outside the set (many rows padded to a long prompt or answer, beyond the
budget) decodes step by step without a graph, in buffers of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ROW_BUCKETS",
    "SLOT_BUCKETS",
    "DecodePlan",
    "bucket",
    "default_kv_budget",
    "plan_decode",
]

# Rows a decode shape is built for; a batch takes the next one up (spare rows are masked as done).
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)
# KV cache lengths, doubling: a decode step reads every slot, but slots cost far less than rows
# (a W1 batch of 256 reads 1.2 GB of K/V at 384 slots, 1.6 GB at 512: +0.1 ms a step on an H200),
# and doubling keeps the number of graphs to capture small.
SLOT_BUCKETS = tuple(128 << k for k in range(12))  # 128 .. 262 144


def bucket(n: int, sizes: tuple[int, ...]) -> int:
    """The smallest size that holds ``n`` (``n`` itself beyond the largest)."""
    for size in sizes:
        if size >= n:
            return size
    return n


def default_kv_budget(max_batch_tiles: int, tokens_per_tile: int) -> int:
    """Row-slots for a batch that fills the tile budget: its image tokens, twice over, leave room
    for the questions, the answers and the left padding (a full W1 batch of 256 with 512-token
    answers needs 256 x 1 024; a full W7 batch of 73 with 64-token answers 96 x 2 048)."""
    return 2 * max_batch_tiles * tokens_per_tile


@dataclass(frozen=True)
class DecodePlan:
    shapes: tuple[tuple[int, int], ...]  # (rows, slots), the largest KV first
    kv_budget: int  # row-slots of the shared KV buffer: the largest rows x slots of the shapes
    row_buckets: tuple[int, ...]

    def shape_for(self, rows: int, slots: int) -> tuple[int, int] | None:
        """The planned shape for a batch of ``rows`` needing ``slots`` (prompt + answer), or None
        when the batch lies outside the plan."""
        shape = (bucket(rows, self.row_buckets), bucket(slots, SLOT_BUCKETS))
        return shape if shape in self.shapes else None


def plan_decode(*, max_batch_jobs: int, kv_budget: int, context_tokens: int) -> DecodePlan:
    """Every (rows bucket, slots bucket) a batch can need, within ``kv_budget`` row-slots.

    Rows: the buckets up to ``max_batch_jobs`` (which is a bucket itself, so a full batch wastes no
    row). Slots: the buckets up to the first that holds ``context_tokens`` (a prompt and its answer
    never exceed the model's context)."""
    rows = (*(r for r in ROW_BUCKETS if r < max_batch_jobs), max_batch_jobs)
    slot_cap = bucket(context_tokens, SLOT_BUCKETS)
    slots = tuple(s for s in SLOT_BUCKETS if s <= slot_cap)
    shapes = [(r, s) for r in rows for s in slots if r * s <= kv_budget]
    shapes.sort(key=lambda shape: (shape[0] * shape[1], shape), reverse=True)
    largest = shapes[0][0] * shapes[0][1] if shapes else 0
    return DecodePlan(shapes=tuple(shapes), kv_budget=largest, row_buckets=rows)
