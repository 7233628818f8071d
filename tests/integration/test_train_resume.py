"""Killed runs resume exactly: SIGKILL (from the newest complete checkpoint) and SIGTERM (checkpoint and
exit 75, the requeue code), with no step logged twice. A damaged newest checkpoint is named, kept and
skipped; a failed save stops cleanly (exit 74) or is survived (save_failure=warn). Non-finite steps are
skipped and counted; a resume that cannot work is refused with its reason; stage 2 starts from the
stage-1 export."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from data_tools.cli import main as data_main
from genlip.model import GenLIP
from genlip.weights.model_file import load_model_file
from tests.helpers import build_tiny_dataset, read_metrics, read_samples, run_train, train_cmd, train_env

STEPS = 12


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    _, tars, tok = build_tiny_dataset(root)
    assert data_main(["build", str(tars[0]), "--out", str(root / "val"), "--tokenizer", str(tok),
                      "--image-size", "64", "--quiet"]) == 0
    config = root / "tiny.yaml"
    config.write_text(f"""
model: {{preset: tiny, drop_path: 0.1}}
data: {{datasets: [{root / 'ds'}], val_datasets: [{root / 'val'}], seq_len: 256, max_samples_per_row: 8,
       num_workers: 1}}
train: {{total_samples: 1.0e6, max_steps: {STEPS}, global_batch_rows: 2, dtype: fp32, log_interval: 1,
        save_interval: 4, eval_interval: 6, record_samples: true}}
""")
    ref = root / "ref"
    proc = run_train(1, config, f"train.output_dir={ref}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, config, ref


def _same_run(ref, out):
    a, b = read_metrics(ref), read_metrics(out)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for step in a:
        assert b[step]["train/loss"] == pytest.approx(a[step]["train/loss"], rel=1e-6, abs=1e-7), step
        assert b[step]["samples"] == a[step]["samples"]
    assert read_samples(out) == read_samples(ref)


def _no_step_twice(run_dir):
    """metrics.jsonl and TensorBoard hold each step once after a resume."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [(r["step"], k) for r in records for k in r if k not in ("step", "samples")]
    assert len(logged) == len(set(logged)), sorted(logged)
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)
    tb = EventAccumulator(str(run_dir / "tb"))
    tb.Reload()
    x = [e.step for e in tb.Scalars("train/loss")]
    assert len(x) == len(set(x)) == STEPS, x


def _wait_for(path, timeout=300):
    deadline = time.time() + timeout
    while not path.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(setup):
    """Two processes (DP=2, ZeRO-1: optimizer shards per rank), killed after the step-4 checkpoint."""
    root, config, _ = setup
    ref = root / "ref_dp2"
    proc = run_train(2, config, f"train.output_dir={ref}", "parallel.zero_stage=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = root / "killed"
    cmd = train_cmd(2, config, f"train.output_dir={out}", "parallel.zero_stage=1")
    proc = subprocess.Popen(cmd, env=train_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    _wait_for(out / "checkpoints" / "step000000004" / "genlip_state.json")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model.safetensors").exists()
    again = run_train(2, config, f"train.output_dir={out}", "parallel.zero_stage=1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stdout
    _same_run(ref, out)
    _no_step_twice(out)


def test_sigterm_checkpoints_exits_75_and_resumes(setup):
    root, config, ref = setup
    out = root / "termed"
    proc = subprocess.Popen(train_cmd(1, config, f"train.output_dir={out}"), env=train_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(out / "checkpoints" / "step000000004" / "genlip_state.json")
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 75, stderr[-3000:]
    assert "stop requested" in stdout
    stopped_at = int((out / "checkpoints" / "latest").read_text()[4:])
    assert 4 <= stopped_at < STEPS
    again = run_train(1, config, f"train.output_dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    _same_run(ref, out)
    m = read_metrics(out)
    assert any("val/loss" in r for r in m.values())


def test_nan_steps_are_skipped_then_too_many_stop_the_run(setup):
    root, config, _ = setup
    out = root / "nan"
    proc = run_train(1, config, f"train.output_dir={out}", "train.debug_nan_steps=[3,4]", "train.max_steps=6")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = read_metrics(out)
    assert m[6]["train/skipped_steps"] == 2 and m[6]["train/loss"] == m[6]["train/loss"]  # finite after
    out2 = root / "nan_stop"
    proc = run_train(1, config, f"train.output_dir={out2}", "train.debug_nan_steps=[3,4,5,6]", "train.max_bad_steps=3")
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "3 consecutive steps had a non-finite loss" in proc.stdout
    assert (out2 / "checkpoints" / "step000000005" / "genlip_state.json").is_file()


def test_incompatible_resume_is_refused(setup):
    root, config, ref = setup
    proc = run_train(1, config, f"train.output_dir={ref}", "model.width=32", "train.max_steps=14")
    assert proc.returncode != 0
    assert "cannot resume from this checkpoint" in proc.stderr and "model shape differs" in proc.stderr
    proc = run_train(1, config, f"train.output_dir={ref}", "train.global_batch_rows=4", "train.max_steps=14")
    assert "global_batch_rows differs" in proc.stderr


def test_stage2_starts_from_the_stage1_export(setup):
    root, config, ref = setup
    state, mcfg = load_model_file(ref / "model.safetensors")
    model = GenLIP(mcfg)
    model.load_state_dict(state)  # the export loads into the single-process model, names and shapes
    out = root / "stage2"
    proc = run_train(2, config, f"train.output_dir={out}", f"train.init_from={ref / 'model.safetensors'}",
                     "parallel.tp=2", "train.max_steps=1", "optim.lr=1e-9", "optim.min_lr=0", "optim.warmup_ratio=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    after, _ = load_model_file(out / "model.safetensors")
    for name, t in state.items():
        torch.testing.assert_close(after[name], t, atol=1e-6, rtol=0)


def test_damaged_newest_checkpoint_is_named_kept_and_skipped(setup):
    root, config, ref = setup
    out = root / "damaged"
    assert run_train(1, config, f"train.output_dir={out}", "train.max_steps=8").returncode == 0
    ck = out / "checkpoints"
    optim = next((ck / "step000000008").glob("*optim_states.pt"))
    optim.write_bytes(optim.read_bytes()[:-100])  # truncated
    (ck / "latest").unlink()  # and `latest` gone: found by scanning anyway
    again = run_train(1, config, f"train.output_dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "checkpoint step000000008 is damaged" in again.stdout and optim.name in again.stdout
    assert f"resumed from {ck / 'step000000004'}" in again.stdout
    assert (ck / "step000000008.damaged" / optim.name).is_file()  # kept under another name, not overwritten
    _same_run(ref, out)
    _no_step_twice(out)


def test_failed_save_stops_cleanly_then_resumes(setup):
    root, config, _ = setup
    out = root / "diskfull"
    proc = run_train(2, config, f"train.output_dir={out}", "train.debug_save_fail_steps=[8]")  # rank 1 fails
    assert "exitcode  : 74" in proc.stderr, proc.stderr[-3000:]  # torchrun reports the workers' code, exits 1
    assert "rank 1: OSError" in proc.stdout and "No space left on device" in proc.stdout
    ck = out / "checkpoints"
    assert not (ck / "step000000008").exists()  # the partial directory is gone
    assert (ck / "latest").read_text() == "step000000004" and (ck / "step000000004" / "genlip_state.json").is_file()
    assert json.loads((out / "result.json").read_text())["status"] == "save_failed"
    again = run_train(2, config, f"train.output_dir={out}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resumed from {ck / 'step000000004'}" in again.stdout
    assert sorted(read_metrics(out)) == list(range(1, STEPS + 1))


def test_failed_save_is_survived_with_warn(setup):
    root, config, _ = setup
    out = root / "diskfull_warn"
    proc = run_train(1, config, f"train.output_dir={out}", "train.debug_save_fail_steps=[4]", "train.max_steps=8",
                     "train.save_failure=warn")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint FAILED" in proc.stdout and "training goes on" in proc.stdout
    assert not (out / "checkpoints" / "step000000004").exists()
    assert (out / "checkpoints" / "step000000008" / "genlip_state.json").is_file()
