"""Training under every parallel layout follows the single-process loss curve (tiny preset, fp32, gloo).

Weights are drawn per parameter from (seed, name), so every layout starts from the same model; the
loader hands each data-parallel replica its slice of the same global rows. Tolerance: 2e-5 relative
per step (reductions run in different orders); the consumed rows are identical. The final validation
over the whole held-out set (micro-batches of 2 rows over an odd number of rows: a pipeline fills the
last one with an empty row; replicas with fewer micro-batches repeat one with weight 0) matches too."""

import pytest

from tests.helpers import build_tiny_dataset, read_metrics, read_samples, run_train

STEPS = 10


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    build_tiny_dataset(root)
    config = root / "tiny.yaml"
    config.write_text(f"""
model: {{preset: tiny}}
data: {{datasets: [{root / 'ds'}], val_datasets: [{root / 'ds'}], seq_len: 256, max_samples_per_row: 8, num_workers: 0}}
train: {{total_samples: 1.0e6, max_steps: {STEPS}, global_batch_rows: 4, micro_batch_rows: 2, dtype: fp32,
        activation_checkpointing: true, log_interval: 1, save_interval: 0, record_samples: true}}
""")
    ref = root / "ref"
    proc = run_train(1, config, f"train.output_dir={ref}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, config, read_metrics(ref), read_samples(ref)


LAYOUTS = {
    "tp2": (2, ["parallel.tp=2"]),
    "pp2": (2, ["parallel.pp=2"]),
    "dp2_zero1": (2, ["parallel.zero_stage=1"]),
    "dp2_zero2": (2, ["parallel.zero_stage=2"]),
    "dp2_zero3": (2, ["parallel.zero_stage=3"]),
    "tp2_pp2": (4, ["parallel.tp=2", "parallel.pp=2"]),
    "tp2_pp2_dp2": (8, ["parallel.tp=2", "parallel.pp=2"]),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_layout_matches_single_process(setup, name):
    root, config, ref, ref_samples = setup
    nproc, overrides = LAYOUTS[name]
    out = root / name
    proc = run_train(nproc, config, f"train.output_dir={out}", *overrides, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = read_metrics(out)
    assert sorted(got) == sorted(ref) == list(range(1, STEPS + 1))
    for step in ref:
        assert got[step]["train/loss"] == pytest.approx(ref[step]["train/loss"], rel=2e-5), (name, step)
        assert got[step]["samples"] == ref[step]["samples"]
    assert got[STEPS]["val/loss"] == pytest.approx(ref[STEPS]["val/loss"], rel=2e-5), name
    flat = lambda s: [(r, k) for rep in s for rows, keys in [rep] for r, k in zip(rows, keys)]  # noqa: E731
    assert {st: sorted(flat(v)) for st, v in read_samples(out).items()} == \
        {st: sorted(flat(v)) for st, v in ref_samples.items()}
