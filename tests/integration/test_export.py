"""genlip-export reads checkpoints of any layout offline: a ZeRO-3 DP2 checkpoint, a TP2 x PP2 checkpoint
and a step that is not the last one each give the weights of a single-process run (whose own export is
made by the live consolidation path, not by the offline reader); the authors' layout round-trips exactly;
a run starts from an authors'-layout directory under tensor parallelism with exactly its weights."""

import json
import subprocess
import sys

import pytest
import torch

from genlip.weights import load_model_file
from genlip.weights.deepspeed_files import find_checkpoint, read_training_state
from genlip.weights.export_cli import main as export_main
from genlip.weights.official import load_official
from tests.helpers import build_tiny_dataset, run_train, train_env
from tests.official_fixture import write_official_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    build_tiny_dataset(root, shards=1)
    config = root / "tiny.yaml"
    config.write_text(f"""
model: {{preset: tiny}}
data: {{datasets: [{root / 'ds'}], seq_len: 256, max_samples_per_row: 8, num_workers: 0}}
train: {{total_samples: 1.0e6, max_steps: 4, global_batch_rows: 4, micro_batch_rows: 1, dtype: fp32, log_interval: 1,
        save_interval: 2, keep_last: 0}}
""")
    layouts = {"ref2": (1, ["train.max_steps=2"]), "ref4": (1, []), "zero3_dp2": (2, ["parallel.zero_stage=3"]),
               "tp2_pp2": (4, ["parallel.tp=2", "parallel.pp=2"]), "tp2": (2, ["parallel.tp=2", "train.max_steps=2"])}
    for name, (nproc, overrides) in layouts.items():
        proc = run_train(nproc, config, f"train.output_dir={root / name}", *overrides, timeout=900)
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
    return root, config


def export(src, out, *args) -> dict:
    assert export_main([str(src), "--out", str(out), *args]) == 0
    return load_model_file(out / "model.safetensors")[0]


def assert_same_weights(got: dict, ref: dict):
    assert sorted(got) == sorted(ref)
    for k in ref:  # different reduction orders across layouts: ~2e-8 seen
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-7, msg=k)


@pytest.mark.parametrize("run,step,ref", [("zero3_dp2", 4, "ref4"), ("tp2_pp2", 4, "ref4"), ("zero3_dp2", 2, "ref2"),
                                          ("tp2_pp2", 2, "ref2")])
def test_checkpoint_export_equals_single_process_run(runs, tmp_path, run, step, ref):
    root, _ = runs
    got = export(root / run, tmp_path / "out", "--step", str(step))
    reference, _ = load_model_file(root / ref / "model.safetensors")
    assert_same_weights(got, reference)
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert f"step {step}," in meta["source"] and (tmp_path / "out" / "tokenizer.model").is_file()


def test_official_layout_round_trip_is_exact(runs, tmp_path):
    root, _ = runs
    ours = export(root / "tp2_pp2", tmp_path / "ours")
    assert export_main([str(root / "tp2_pp2"), "--out", str(tmp_path / "hf"), "--format", "official", "--dtype",
                        "fp32"]) == 0
    back, cfg = load_official(tmp_path / "hf")
    assert sorted(back) == sorted(ours) and all(torch.equal(back[k], ours[k]) for k in ours)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["num_hidden_layers"] == cfg.num_layers == 2
    again = export(tmp_path / "hf", tmp_path / "ours_again")  # authors' layout -> ours
    assert all(torch.equal(again[k], ours[k]) for k in ours)


def test_run_starts_from_an_authors_layout_directory_under_tp(runs, tmp_path):
    root, config = runs
    write_official_dir(tmp_path / "hf", seed=7)
    imported, _ = load_official(tmp_path / "hf")
    out = tmp_path / "run"
    # lr 0: one step leaves the weights as loaded, so the export must equal the imported tensors
    proc = run_train(2, config, f"train.output_dir={out}", f"train.init_from={tmp_path / 'hf'}", "parallel.tp=2",
                     "model.vocab_size=1024", "optim.lr=0.0", "optim.min_lr=0.0",
                     "train.max_steps=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "authors' Hugging Face layout" in proc.stdout
    got, _ = load_model_file(out / "model.safetensors")
    assert all(torch.equal(got[k], imported[k]) for k in imported)


def test_bad_sources_give_clear_errors(runs, tmp_path, capsys):
    root, _ = runs
    assert export_main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert export_main([str(root / "ref4"), "--step", "3", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "no checkpoint for step 3" in err and "step000000002" in err


def test_deepspeeds_ds_to_universal_reads_our_tp_checkpoints(runs, tmp_path):
    """DeepSpeed's own converter merges a TP=2 ZeRO-1 checkpoint of ours into the tensors of our export
    (our checkpoints carry `universal_checkpoint_info` derived from the declared TP splits, and no None
    `_extra_state` entries), Adam moments included."""
    root, _ = runs
    step = root / "tp2" / "checkpoints" / "step000000002"
    out = tmp_path / "universal"
    proc = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(step),
                           "--output_folder", str(out)], capture_output=True, text=True, env=train_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ours, _ = load_model_file(root / "tp2" / "model.safetensors")
    states, _ = read_training_state(find_checkpoint(step))
    for name, tensor in ours.items():
        assert torch.equal(torch.load(out / "zero" / name / "fp32.pt", weights_only=False)["param"], tensor), name
        got = torch.load(out / "zero" / name / "exp_avg.pt", weights_only=False)["param"]
        assert torch.equal(got, states["exp_avg"][name]), name

