"""Packing plans: budget, every sample once per epoch, determinism, epochs differ, fill rate; the same rows
as the original per-sample algorithm; int32 plans, int64 plans of before still read; bounded build memory."""

import bisect
import json
import tracemalloc

import numpy as np
import pytest

from genlip.data.loader import blend_schedule
from genlip.data.packing import PackingPlan, PackingSpec, fill_rate, index_dtype, pack_epoch


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


def reference_pack_epoch(lengths, spec, epoch):
    """The plan as version 1 first computed it, one sample per step (kept here to pin the order down)."""
    perm = np.random.default_rng([spec.seed, epoch]).permutation(len(lengths))
    samples, offsets = [], [0]
    for w, start in enumerate(range(0, len(perm), spec.window)):
        idx = perm[start:start + spec.window]
        window = lengths[idx]
        order = np.argsort(window, kind="stable")
        values, starts = np.unique(window[order], return_index=True)
        stacks = {int(v): order[a:b].tolist() for v, a, b in zip(values, starts, list(starts[1:]) + [len(order)])}
        keys, rows = [int(v) for v in values], []
        while keys:
            row, room = [], spec.budget
            while len(row) < spec.max_samples_per_row:
                k = bisect.bisect_right(keys, room) - 1
                if k < 0:
                    break
                v = keys[k]
                row.append(stacks[v].pop())
                room -= v
                if not stacks[v]:
                    del keys[k]
            rows.append(row)
        for r in np.random.default_rng([spec.seed, epoch, w]).permutation(len(rows)):
            samples.append(idx[rows[r]])
            offsets.append(offsets[-1] + len(rows[r]))
    return np.asarray(offsets, dtype=np.int64), np.concatenate(samples).astype(np.int64)


@pytest.mark.parametrize("case", ["stage1", "stage2", "ties", "tiny_rows", "zeros"])
def test_plan_is_the_same_as_the_per_sample_algorithm(case):
    """Runs of equal lengths are taken in one step now; training order of existing runs must not change."""
    rng = np.random.default_rng(7)
    n = 40_000
    spec, lengths = {
        "stage1": (PackingSpec(seed=2), stage1_lengths(n)),
        "stage2": (PackingSpec(), rng.integers(16, 1025, n) + 6 + np.clip(rng.normal(200, 80, n), 10, 800).astype(int)),
        "ties": (PackingSpec(budget=1000, max_samples_per_row=7, window=3000), rng.integers(1, 6, n) * 100),
        "tiny_rows": (PackingSpec(budget=4096, max_samples_per_row=3, window=777, seed=9), rng.integers(1, 4097, n)),
        "zeros": (PackingSpec(budget=64, max_samples_per_row=5, window=500), rng.integers(0, 40, n)),
    }[case]
    for epoch in (0, 3):
        want = reference_pack_epoch(np.asarray(lengths, dtype=np.int64), spec, epoch)
        got = pack_epoch(np.asarray(lengths, dtype=np.int32), spec, epoch)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_index_dtype_is_sized_to_the_dataset():
    assert index_dtype(2**31 - 1) == np.int32 and index_dtype(2**31) == np.int64
    offsets, samples = pack_epoch(stage1_lengths(1000), PackingSpec(), 0)
    assert offsets.dtype == samples.dtype == np.int32


def test_stored_build_streams_the_same_plan_as_the_in_memory_one(tmp_path):
    lengths = stage1_lengths(100_000).astype(np.int32)
    spec = PackingSpec(window=5000)  # 20 windows streamed one after another
    plan = PackingPlan(tmp_path, spec, num_samples=len(lengths), dataset_id="x", lengths=lengths)
    fill = plan.build(0)
    offsets, samples = plan.epoch(0)
    ref = pack_epoch(lengths, spec, 0)
    assert offsets.dtype == samples.dtype == np.int32
    assert np.array_equal(offsets, ref[0]) and np.array_equal(samples, ref[1])
    assert fill == fill_rate(lengths, ref[0], spec.budget)
    assert sorted(p.name for p in plan.dir.iterdir()) == [".epoch_00000.lock", "epoch_00000.rows.npy",
                                                          "epoch_00000.samples.npy", "plan.json"]


def test_int64_plans_written_before_are_read_as_they_are(tmp_path):
    """Plans of before hold the same values in int64; they are used, not rebuilt."""
    lengths = stage1_lengths(20_000)
    spec = PackingSpec(budget=4096)
    plan_dir = tmp_path / "packing" / spec.name
    plan_dir.mkdir(parents=True)
    (plan_dir / "plan.json").write_text(json.dumps({"version": 1, "spec": {"budget": 4096, "max_samples_per_row": 128,
                                                    "seed": 0, "window": 16384}, "num_samples": 20_000, "dataset": "x"}))
    old = reference_pack_epoch(lengths, spec, 0)
    np.save(plan_dir / "epoch_00000.rows.npy", old[0])
    np.save(plan_dir / "epoch_00000.samples.npy", old[1])
    stamp = (plan_dir / "epoch_00000.samples.npy").stat().st_mtime_ns
    plan = PackingPlan(tmp_path, spec, num_samples=len(lengths), dataset_id="x", lengths=lambda: 1 / 0)
    offsets, samples = plan.epoch(0)
    assert samples.dtype == offsets.dtype == np.int64 and plan.rows_in_epoch(0) == len(old[0]) - 1
    assert np.array_equal(samples[offsets[5]:offsets[6]], old[1][old[0][5]:old[0][6]])
    assert (plan_dir / "epoch_00000.samples.npy").stat().st_mtime_ns == stamp  # read, not rebuilt
    plan._lengths = lengths
    plan.build(1)  # a new epoch beside them is int32; both are the same plan
    assert plan.epoch(1)[1].dtype == np.int32
    assert np.array_equal(plan.epoch(1)[1], reference_pack_epoch(lengths, spec, 1)[1])


def test_building_an_epoch_holds_the_order_and_one_window_not_the_epoch(tmp_path):
    """Peak Python/numpy allocation of a stored build: the int32 permutation (4 bytes per sample) plus
    window-sized work and the row sizes; the in-memory pack_epoch (several N-sized arrays) breaks the bound."""
    n = 3_000_000
    lengths = stage1_lengths(n).astype(np.int32)
    bound = 4 * n + (4 << 20)
    plan = PackingPlan(tmp_path, PackingSpec(), num_samples=n, dataset_id="x", lengths=lengths)
    tracemalloc.start()
    try:
        plan.build(0)
        _, stored_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        pack_epoch(lengths, PackingSpec(), 0)
        _, memory_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored_peak < bound < memory_peak, (stored_peak, bound, memory_peak)


def test_negative_length_is_refused():
    with pytest.raises(ValueError, match="sample 1 has a negative length"):
        pack_epoch(np.array([10, -5]), PackingSpec(), 0)


def _build_when_told(plan, go):
    go.wait()
    plan.build(0)


def test_a_second_builder_on_the_host_waits_for_the_first(tmp_path):
    """Every loader process that meets a missing epoch calls build(); one host builds it once."""
    import fcntl
    import multiprocessing as mp

    lengths = stage1_lengths(50_000)
    plan = PackingPlan(tmp_path, PackingSpec(), num_samples=len(lengths), dataset_id="x", lengths=lengths)
    plan._check_header()
    ctx = mp.get_context("fork")
    go = ctx.Event()
    waiter = ctx.Process(target=_build_when_told, args=(plan, go))
    waiter.start()  # before the lock is taken: a forked child would inherit (and hold) it
    with open(plan.dir / ".epoch_00000.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "the first builder"
        go.set()
        waiter.join(timeout=2)
        assert waiter.is_alive() and sorted(p.name for p in plan.dir.iterdir()) == [".epoch_00000.lock", "plan.json"]
        rows_path, samples_path = plan._paths(0)
        ref = pack_epoch(lengths, PackingSpec(), 0)
        np.save(samples_path, ref[1])
        np.save(rows_path, ref[0])
        stamp = samples_path.stat().st_mtime_ns
    waiter.join(timeout=60)
    assert waiter.exitcode == 0 and samples_path.stat().st_mtime_ns == stamp  # it read the first one's files
