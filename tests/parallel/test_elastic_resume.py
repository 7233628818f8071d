"""A run resumes under any layout: one run directory goes through twelve layouts in a chain (each segment
10 steps, each started from the previous segment's checkpoint), and every step's loss and the samples it
consumed match one unbroken single-process run. The transitions: DP2 -> DP1 -> DP2, ZeRO-1 -> ZeRO-2 ->
ZeRO-3, ZeRO-3 -> TP2 -> TP1 -> TP2, TP2 -> TP2 x PP2 -> DP4, DP4 -> PP2 -> PP1.

The learning rate is high (5e-4, no warm-up), so Adam's moments and step count shape every update: a
resume that lost them drifts by ~1e-3 within a few steps (checked: `test_lost_moments_are_detected`).
Tolerance 1e-5 relative at every step (measured: 1.5e-7 over the 120 steps; the layouts reduce in
different orders, so bit equality is not expected; tried at lr 2e-3, the same chain stayed below 1e-6 for
60 steps, then such rounding differences grew step by step to 7e-3 by step 120, so the rate is 5e-4). DropPath is off
because its random draws depend on the number of replicas."""

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from genlip.weights.deepspeed_files import find_checkpoint
from genlip.weights.universal import save_universal
from tests.helpers import build_tiny_dataset, read_metrics, read_samples, run_train

SEG = 10
CHAIN = [  # (processes, overrides) per segment
    (2, ["parallel.zero_stage=1"]),
    (1, ["parallel.zero_stage=1"]),
    (2, ["parallel.zero_stage=1"]),
    (2, ["parallel.zero_stage=2"]),
    (2, ["parallel.zero_stage=3"]),
    (2, ["parallel.tp=2"]),
    (1, []),
    (2, ["parallel.tp=2"]),
    (4, ["parallel.tp=2", "parallel.pp=2"]),
    (4, []),
    (2, ["parallel.pp=2"]),
    (1, []),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic")
    build_tiny_dataset(root, shards=1)
    config = root / "tiny.yaml"
    config.write_text(f"""
model: {{preset: tiny}}
data: {{datasets: [{root / 'ds'}], seq_len: 256, max_samples_per_row: 8, num_workers: 0}}
optim: {{lr: 5.0e-4, warmup_ratio: 0.0}}
train: {{total_samples: 1.0e6, global_batch_rows: 4, micro_batch_rows: 1, dtype: fp32, log_interval: 1,
        save_interval: {SEG}, record_samples: true}}
""")
    ref = root / "ref"
    proc = run_train(1, config, f"train.output_dir={ref}", f"train.max_steps={SEG * len(CHAIN)}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, config, read_metrics(ref), read_samples(ref)


def _flat(samples):
    return {st: sorted((r, k) for rep in v for rows, keys in [rep] for r, k in zip(rows, keys)) for st, v in samples.items()}


@pytest.mark.slow
def test_resume_under_every_layout_in_a_chain(setup):
    root, config, ref, ref_samples = setup
    out = root / "chain"
    for i, (nproc, overrides) in enumerate(CHAIN):
        proc = run_train(nproc, config, f"train.output_dir={out}", f"train.max_steps={SEG * (i + 1)}", *overrides,
                         timeout=900)
        assert proc.returncode == 0, (i, overrides, proc.stderr[-3000:])
        if i:
            assert "layout changed" in proc.stdout and "Adam moments" in proc.stdout, (i, proc.stdout[-2000:])
    got = read_metrics(out)
    assert sorted(got) == sorted(ref) == list(range(1, SEG * len(CHAIN) + 1))
    worst = max(abs(got[s]["train/loss"] / ref[s]["train/loss"] - 1) for s in ref)
    assert worst < 1e-5, worst
    print(f"largest relative loss difference over {len(ref)} steps: {worst:.2e}")
    assert all(got[s]["samples"] == ref[s]["samples"] for s in ref)
    assert _flat(read_samples(out)) == _flat(ref_samples)


def test_lost_moments_are_detected(setup):
    """The check above can fail: a DP2 -> DP1 resume whose universal state has Adam's moments zeroed moves
    the losses by far more than its tolerance."""
    root, config, ref, _ = setup
    out = root / "zeroed"
    assert run_train(2, config, f"train.output_dir={out}", f"train.max_steps={SEG}").returncode == 0
    universal = save_universal(find_checkpoint(out))  # what the resume would write; then spoil it
    for key in ("exp_avg", "exp_avg_sq"):
        tensors = load_file(str(universal / f"{key}.safetensors"))
        save_file({k: torch.zeros_like(v) for k, v in tensors.items()}, str(universal / f"{key}.safetensors"))
    proc = run_train(1, config, f"train.output_dir={out}", f"train.max_steps={2 * SEG}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = read_metrics(out)
    worst = max(abs(got[s]["train/loss"] / ref[s]["train/loss"] - 1) for s in range(SEG + 1, 2 * SEG + 1))
    assert worst > 1e-3, worst


def _convert(args):
    step_dir, barrier = args
    barrier.wait()  # all at once, as a job's rank 0 and `genlip-ckpt universal` run by hand may
    return str(save_universal(find_checkpoint(step_dir)))


def test_converting_one_checkpoint_in_several_processes_at_once(setup, tmp_path):
    """Four processes convert the same DP2 checkpoint at the same moment (a shared temporary directory made
    all but one fail): each succeeds, the directory they return holds what a lone conversion writes, and
    no temporary is left."""
    import multiprocessing as mp

    root, config, _, _ = setup
    out = root / "concurrent"
    assert run_train(2, config, f"train.output_dir={out}", f"train.max_steps={SEG}").returncode == 0
    info = find_checkpoint(out)
    single = save_universal(info, tmp_path / "single")
    ctx = mp.get_context("spawn")
    for _ in range(2):
        with ctx.Manager() as manager:
            barrier = manager.Barrier(4)
            with ctx.Pool(4) as pool:
                paths = pool.map(_convert, [(str(info.path), barrier)] * 4)
        assert len(set(paths)) == 1
        universal = info.path / "universal"
        assert paths[0] == str(universal)
        for key in ("fp32", "exp_avg", "exp_avg_sq"):
            got, want = (load_file(str(d / f"{key}.safetensors")) for d in (universal, single))
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
        assert [p.name for p in info.path.iterdir() if ".tmp-" in p.name] == []
        shutil.rmtree(universal)  # the next round converts from scratch again
