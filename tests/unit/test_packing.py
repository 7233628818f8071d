"""Packing plans: budget, every sample once per epoch, determinism, epochs differ, fill rate."""

import numpy as np
import pytest

from genlip.data.loader import blend_schedule
from genlip.data.packing import PackingPlan, PackingSpec, fill_rate, pack_epoch


def stage1_lengths(n, seed=0):
    """Stage-1-like samples: 196 patches + 6 prompt tokens + a caption of ~68 tokens."""
    rng = np.random.default_rng(seed)
    return 202 + np.clip(rng.normal(68, 25, n), 5, 400).astype(np.int64)


@pytest.mark.parametrize("spec", [PackingSpec(), PackingSpec(budget=2048, max_samples_per_row=5, window=1000)])
def test_rows_respect_budget_and_hold_every_sample_once(spec):
    lengths = stage1_lengths(50_000)
    offsets, samples = pack_epoch(lengths, spec, epoch=0)
    assert np.array_equal(np.sort(samples), np.arange(len(lengths)))
    per_row = np.add.reduceat(lengths[samples], offsets[:-1])
    assert per_row.max() <= spec.budget
    assert np.diff(offsets).max() <= spec.max_samples_per_row and np.diff(offsets).min() >= 1


def test_plan_is_deterministic_and_epochs_differ():
    lengths = stage1_lengths(20_000)
    spec = PackingSpec(seed=3)
    a, b = pack_epoch(lengths, spec, 0), pack_epoch(lengths, spec, 0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = pack_epoch(lengths, spec, 1)
    assert not np.array_equal(a[1], c[1])
    d = pack_epoch(lengths, PackingSpec(seed=4), 0)
    assert not np.array_equal(a[1], d[1])


def test_stage1_fill_rate_above_99_percent():
    lengths = stage1_lengths(200_000)
    offsets, _ = pack_epoch(lengths, PackingSpec(), 0)
    assert fill_rate(lengths, offsets, 16384) > 0.99


def test_sample_over_budget_is_a_clear_error():
    with pytest.raises(ValueError, match="sample 1 has 5000 tokens, more than the packing budget 4096"):
        pack_epoch(np.array([10, 5000]), PackingSpec(budget=4096), 0)


def test_stored_plan_is_memory_mapped_per_epoch(tmp_path):
    lengths = stage1_lengths(5000)
    spec = PackingSpec(budget=4096)
    plan = PackingPlan(tmp_path, spec, num_samples=len(lengths), dataset_id="x", lengths=lambda: lengths)
    assert not plan.has(0)
    offsets, samples = plan.epoch(0)
    assert isinstance(samples, np.memmap) and plan.has(0) and not plan.has(1)
    ref = pack_epoch(lengths, spec, 0)
    assert np.array_equal(offsets, ref[0]) and np.array_equal(samples, ref[1])
    plan.epoch(1), plan.epoch(2)
    assert sorted(plan._cache) == [1, 2]  # never more than two epochs open
    with pytest.raises(ValueError, match="another dataset"):
        PackingPlan(tmp_path, spec, num_samples=len(lengths), dataset_id="y", lengths=lengths).epoch(0)


def test_blend_schedule_matches_weights_in_every_block():
    which, rank, counts = blend_schedule([3.0, 1.0], block=1000)
    assert counts.tolist() == [750, 250]
    for i in range(2):
        assert np.array_equal(rank[which == i], np.arange(counts[i]))
    prefix = np.cumsum(which == 1) / np.arange(1, 1001)
    assert np.abs(prefix[50:] - 0.25).max() < 0.02  # interleaved, not 750 then 250
