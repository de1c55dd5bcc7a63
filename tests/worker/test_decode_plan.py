"""The planned decode shapes (rows x KV slots) cover every batch the batcher can form within the
KV budget, stay within it, and are few enough to capture at start-up."""

from __future__ import annotations

import pytest

from internvl_queue.worker.engine.buckets import (
    SLOT_BUCKETS,
    bucket,
    default_kv_budget,
    plan_decode,
)

# The 1B shape: 256 image tokens per tile, a 32 768-token context; the engine's defaults.
CONTEXT = 32_768
BUDGET = default_kv_budget(max_batch_tiles=512, tokens_per_tile=256)


def test_every_batch_within_the_budget_has_a_shape_that_holds_it() -> None:
    plan = plan_decode(max_batch_jobs=256, kv_budget=BUDGET, context_tokens=CONTEXT)
    for rows in range(1, 257):
        for slots in range(1, CONTEXT + 1, 61):
            shape = plan.shape_for(rows, slots)
            fits = bucket(rows, plan.row_buckets) * bucket(slots, SLOT_BUCKETS) <= BUDGET
            assert (shape is not None) == fits, (rows, slots)
            if shape is not None:
                assert shape[0] >= rows and shape[1] >= slots
                assert shape[0] * shape[1] <= plan.kv_budget


def test_the_benchmark_workloads_and_the_default_answer_length_are_planned() -> None:
    plan = plan_decode(max_batch_jobs=256, kv_budget=BUDGET, context_tokens=CONTEXT)
    w1_prompt, w7_prompt = 256 + 40, 7 * 256 + 40  # image tokens + template and question
    assert plan.shape_for(256, w1_prompt + 64) == (256, 512)
    assert plan.shape_for(256, w1_prompt + 512) == (256, 1024)  # the default max_new_tokens
    assert plan.shape_for(73, w7_prompt + 64) == (96, 2048)  # 73 x 7 tiles fill 512 tiles
    assert plan.shape_for(1, 13 * 256 + 40 + 4096) == (1, 8192)  # one job, longest answer
    assert plan.shape_for(1, CONTEXT) == (1, CONTEXT)
    # 256 rows padded to a 7-tile prompt exceed the budget: no shape, no capture while serving.
    assert plan.shape_for(256, w7_prompt + 64) is None


def test_the_plan_is_bounded_and_largest_first() -> None:
    plan = plan_decode(max_batch_jobs=256, kv_budget=BUDGET, context_tokens=CONTEXT)
    assert len(set(plan.shapes)) == len(plan.shapes) <= 100
    sizes = [r * s for r, s in plan.shapes]
    assert sizes == sorted(sizes, reverse=True)
    assert plan.kv_budget == sizes[0] <= BUDGET
    assert max(r for r, _ in plan.shapes) == 256
    assert max(s for _, s in plan.shapes) == CONTEXT


@pytest.mark.parametrize("max_batch_jobs", [1, 5, 200, 256])
def test_the_largest_batch_is_a_rows_bucket_of_its_own(max_batch_jobs: int) -> None:
    plan = plan_decode(max_batch_jobs=max_batch_jobs, kv_budget=BUDGET, context_tokens=CONTEXT)
    assert plan.row_buckets[-1] == max_batch_jobs
    assert plan.shape_for(max_batch_jobs, 100) == (max_batch_jobs, 128)
    assert all(r <= max_batch_jobs for r, _ in plan.shapes)


def test_a_small_context_caps_the_slots() -> None:
    plan = plan_decode(max_batch_jobs=8, kv_budget=10**9, context_tokens=1000)
    assert {s for _, s in plan.shapes} == {128, 256, 512, 1024}
    assert len(plan.shapes) == 4 * 4  # rows 1, 2, 4, 8 (8 is max_batch_jobs) x 4 lengths
