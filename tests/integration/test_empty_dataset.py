"""A dataset no row can be packed from is refused at once, naming its directory, and leaves no plan files:
one with no samples (the loader, the packing plan, and genlip-train end to end, which used to write empty
epochs forever), and one whose samples are all longer than a row. A stored plan with an empty epoch (left
by an older version) is refused instead of spinning."""

import json
import shutil
import signal
from contextlib import contextmanager

import numpy as np
import pytest

from genlip.data.loader import LoaderSpec, PackedRows, RowSource
from genlip.data.packing import PackingSpec
from genlip.data.shards import DatasetError, ShardWriter, open_dataset
from tests.helpers import build_tiny_dataset, run_train


@contextmanager
def deadline(seconds: int):
    """Turn a hang (the old behaviour) into a test failure."""
    def fail(signum, frame):
        raise AssertionError(f"still running after {seconds}s: the loop that builds empty epochs is back")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    ds, _, _ = build_tiny_dataset(tmp_path_factory.mktemp("tiny"), shards=1, per_shard=6)
    return ds


@pytest.fixture(scope="module")
def empty(tiny, tmp_path_factory):
    """What an older `genlip-data build` wrote when every input was skipped: one finished shard of 0
    samples and a manifest with totals.samples 0 (builds now refuse to finish such a dataset)."""
    out = tmp_path_factory.mktemp("empty") / "ds"
    shutil.copytree(tiny, out, ignore=shutil.ignore_patterns("shards"))
    (out / "shards").mkdir()
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = {"missing_image": {"count": 4, "examples": []}}
    writer = ShardWriter(out / "shards", "00000", vocab_size=manifest["tokenizer"]["vocab_size"], with_prompts=False)
    record = writer.finish({"source": "00000.tar", "skipped": skipped})
    manifest.update(shards=[record], totals={"samples": 0, "text_tokens": 0, "patches": 0}, skipped=skipped)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def plan_files(ds):
    return sorted(p.name for p in (ds / "packing").rglob("*")) if (ds / "packing").exists() else []


def test_loader_refuses_a_dataset_with_no_samples(empty):
    spec = LoaderSpec([str(empty)], packing=PackingSpec(budget=256, max_samples_per_row=8))
    with deadline(30), pytest.raises(DatasetError, match=f"{empty}: the dataset has no samples"):
        PackedRows(spec).row(0)
    assert plan_files(empty) == []


def test_loader_refuses_a_manifest_listing_no_shards(tiny, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(tiny, ds)
    manifest = json.loads((ds / "manifest.json").read_text())
    manifest.update(shards=[], totals={"samples": 0, "text_tokens": 0, "patches": 0})
    (ds / "manifest.json").write_text(json.dumps(manifest))
    spec = LoaderSpec([str(ds)], packing=PackingSpec(budget=256, max_samples_per_row=8))
    with deadline(30), pytest.raises(DatasetError, match=rf"{ds}: the dataset has no samples \(its manifest.json "
                                                         r"lists 0 shard\(s\) holding none\)"):
        PackedRows(spec).row(0)
    assert plan_files(ds) == []


def test_packing_plan_refuses_no_samples_and_never_spins(empty):
    ds = open_dataset(empty)
    source = RowSource(ds, PackingSpec(budget=256, max_samples_per_row=8))
    with deadline(30), pytest.raises(DatasetError, match="no samples"):
        source.samples(0)
    assert plan_files(empty) == []


def test_stored_empty_epoch_is_refused(empty, tmp_path):
    """The plan the old code wrote for an empty dataset (epoch files with zero rows) is refused, not extended."""
    shutil.copytree(empty, tmp_path / "ds")
    source = RowSource(open_dataset(tmp_path / "ds"), PackingSpec(budget=256, max_samples_per_row=8))
    source.plan._check_header()
    rows_path, samples_path = source.plan._paths(0)
    np.save(samples_path, np.zeros(0, np.int64))
    np.save(rows_path, np.zeros(1, np.int64))
    with deadline(30), pytest.raises(DatasetError, match="epoch 0 of the stored packing plan has no rows"):
        source.samples(0)
    assert not source.plan.has(1)


def test_samples_longer_than_a_row_are_a_clear_error(tiny):
    spec = LoaderSpec([str(tiny)], packing=PackingSpec(budget=20, max_samples_per_row=8))
    with pytest.raises(DatasetError, match=rf"{tiny}: 6 of 6 samples need more slots than a row has \(20: "
                                           r"data.seq_len, or --budget; the longest needs \d+\); raise it"):
        PackedRows(spec).row(0)
    assert plan_files(tiny) == []


def test_genlip_train_exits_at_once_on_an_empty_dataset(empty, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(f"""
model: {{preset: tiny}}
data: {{datasets: [{empty}], seq_len: 256, max_samples_per_row: 8, num_workers: 0}}
train: {{total_samples: 1.0e6, max_steps: 2, global_batch_rows: 1, dtype: fp32, output_dir: {tmp_path / 'run'}}}
""")
    proc = run_train(1, config, timeout=180)  # the old code never returned (TimeoutExpired)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert str(empty) in last and "no samples" in last, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert plan_files(empty) == []


def test_verify_reports_a_dataset_with_no_samples(empty, capsys):
    from data_tools.cli import main as data_main

    assert data_main(["verify", str(empty), "--quiet"]) == 1
    assert "the dataset has no samples" in capsys.readouterr().err


def test_check_trainable_refuses_before_any_process_starts(empty, tiny):
    """What genlip-train's pre-flight check (before torch loads) can call: no samples, or a bad tokenizer record."""
    from genlip.data.manifest import check_trainable
    from genlip.data.shards import load_manifest

    with pytest.raises(DatasetError, match=f"{empty}: the dataset has no samples"):
        check_trainable(empty, load_manifest(empty))
    manifest = load_manifest(tiny)
    check_trainable(tiny, manifest)
    manifest["tokenizer"]["vocab_size"] += 1
    with pytest.raises(DatasetError, match="tokenizer.vocab_size"):
        check_trainable(tiny, manifest)
