"""The time budget requeue path, bf16 on CPU under TP, the deepspeed launcher, and `genlip-data inspect`."""

import shutil
import subprocess
import sys

import pytest

from data_tools.cli import main as data_main
from tests.helpers import build_tiny_dataset, free_port, read_metrics, run_train, train_env


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("misc")
    build_tiny_dataset(root, shards=1)
    config = root / "tiny.yaml"
    config.write_text(f"""
model: {{preset: tiny}}
data: {{datasets: [{root / 'ds'}], seq_len: 256, max_samples_per_row: 8, num_workers: 0}}
train: {{total_samples: 1.0e6, max_steps: 4, global_batch_rows: 2, dtype: fp32, log_interval: 1, save_interval: 0}}
""")
    return root, config


def test_time_limit_checkpoints_and_exits_with_the_requeue_code(setup):
    root, config = setup
    proc = run_train(1, config, f"train.output_dir={root / 'timed'}", "train.time_limit_minutes=0.0001",
                     "train.max_steps=1000")
    assert proc.returncode == 75, proc.stderr[-2000:]
    assert (root / "timed" / "checkpoints" / "latest").read_text().strip() == "step000000001"


def test_bf16_under_tensor_parallel_on_cpu(setup):
    root, config = setup
    proc = run_train(2, config, f"train.output_dir={root / 'bf16'}", "train.dtype=bf16", "parallel.tp=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = read_metrics(root / "bf16")
    assert all(m[s]["train/loss"] == pytest.approx(m[1]["train/loss"], rel=0.05) for s in m)  # finite, sane
    assert (root / "bf16" / "model.safetensors").is_file()


@pytest.mark.skipif(shutil.which("deepspeed") is None, reason="the deepspeed launcher is not on PATH")
def test_deepspeed_launcher(setup):
    root, config = setup
    cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()), "--module", "genlip.train.trainer",
           str(config), f"train.output_dir={root / 'dslaunch'}", "parallel.zero_stage=2"]
    proc = subprocess.run(cmd, env=train_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert "dp 2" in proc.stdout and sorted(read_metrics(root / "dslaunch")) == [1, 2, 3, 4]


def test_inspect_statistics_and_dumps(setup, capsys):
    root, _ = setup
    assert data_main(["inspect", str(root / "ds"), "--dump", "3", "--dump-dir", str(root / "dump")]) == 0
    out = capsys.readouterr().out
    assert "30 samples in 1 shards" in out and "4x4: 30" in out and "#" in out
    assert len(list((root / "dump").glob("*.png"))) == 3 and len(list((root / "dump").glob("*.txt"))) == 3
    assert all(p.read_text().strip() for p in (root / "dump").glob("*.txt"))
    assert sys.executable
