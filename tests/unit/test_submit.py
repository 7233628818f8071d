"""genlip-submit / genlip-sweep without a cluster: the rendered multi-node script, quoting, the plan."""

import shlex
import subprocess

import pytest

from genlip.cluster.plan import estimate
from genlip.cluster.submit import main as submit_main
from genlip.cluster.sweep import main as sweep_main
from genlip.config import load_config, validate
from tests.helpers import ROOT

SO16 = str(ROOT / "run_scripts" / "configs" / "so16_stage1.yaml")


def dry_run(capsys, *argv):
    assert submit_main(["train", *argv, "--dry-run"]) == 0
    return capsys.readouterr().out


def test_multi_node_gpu_dry_run(capsys, tmp_path):
    out = dry_run(capsys, SO16, "parallel.tp=2", "--nodes", "4", "--gpus-per-node", "8", "--partition", "gpu",
                  "--account", "proj", "--time", "2-00:00:00", "--run-dir", str(tmp_path / "r"))
    script = out[out.index("#!/bin/bash"):]
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --time=2-00:00:00", "#SBATCH --partition=gpu", "#SBATCH --account=proj",
                 "#SBATCH --signal=USR1@300", "#SBATCH --requeue", f"#SBATCH --output={tmp_path / 'r'}/slurm-%j.out",
                 'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                 "export MASTER_PORT=$(( 20000 + SLURM_JOB_ID % 20000 ))", 'scontrol requeue "$SLURM_JOB_ID"'):
        assert line in script, line
    assert f"source {ROOT / 'run_scripts/slurm/env.sh'}" in script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    args = shlex.split(srun)
    assert args[:4] == ["srun", "--kill-on-bad-exit=1", "--ntasks=$NTASKS", "--ntasks-per-node=$PER_NODE"]
    assert args[5:7] == ["-m", "genlip.train.trainer"]
    assert args[7:] == [SO16, "parallel.tp=2", f"train.output_dir={tmp_path / 'r'}", "||", "code=$?"]
    assert "PER_NODE=8" in script and "NTASKS=$(( SLURM_JOB_NUM_NODES * PER_NODE ))" in script
    assert "32 GPUs = tp 2 x pp 1 x dp 16" in out and "steps" in out and "memory per GPU" in out
    assert not (tmp_path / "r").exists()  # a dry run writes nothing
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_names_and_overrides_cannot_inject(capsys, tmp_path):
    evil = ['data.val_datasets=[$(touch PWNED)]', 'train.init_from=x; touch PWNED2 #', 'train.output_dir=`touch PWNED3`',
            "data.datasets=['a b', \"c'd\", '${HOME}']"]
    out = dry_run(capsys, SO16, *evil, "--name", 'x"; touch PWNED4; echo "', "--run-dir", str(tmp_path / "r"))
    script = out[out.index("#!/bin/bash"):]
    assert "#SBATCH --job-name=x___touch_PWNED4__echo__\n" in script
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    assert shlex.split(srun)[8:-3] == evil  # each override arrives as one literal argument
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    assert submit_main(["train", SO16, "--time", "1:00; rm -rf /", "--dry-run"]) == 2
    assert "not a SLURM time limit" in capsys.readouterr().err


def test_node_range_checks_every_count_and_follows_the_allocation(capsys, tmp_path):
    out = dry_run(capsys, SO16, "parallel.tp=2", "train.global_batch_rows=384", "--nodes", "2-4", "--gpus-per-node", "8",
                  "--run-dir", str(tmp_path / "r"))
    assert "#SBATCH --nodes=2-4" in out and "#SBATCH --ntasks-per-node=8" in out and "32 GPUs" in out
    # 512 rows cannot be split over 3 nodes x 8 GPUs / tp 2 = 12 replicas (384 can, for 2, 3 and 4 nodes): refused before submission
    assert submit_main(["train", SO16, "parallel.tp=2", "train.global_batch_rows=512", "--nodes", "2-4",
                        "--gpus-per-node", "8", "--dry-run"]) == 2
    assert "multiple of dp" in capsys.readouterr().err
    out = dry_run(capsys, SO16, "--nodes", "1", "--gpus-per-node", "0", "--tasks-per-node", "2",
                  "--run-dir", str(tmp_path / "c"))
    assert "#SBATCH --ntasks=2" in out and "SLURM_JOB_CPUS_PER_NODE" in out  # one CPU node: tasks follow the CPUs
    assert submit_main(["train", SO16, "--nodes", "4-2", "--dry-run"]) == 2
    assert "need 1 <= MIN <= MAX" in capsys.readouterr().err


def test_a_layout_that_cannot_fit_fails_before_submission(capsys):
    assert submit_main(["train", str(ROOT / "run_scripts/configs/g16_stage1.yaml"), "train.micro_batch_rows=8",
                        "train.global_batch_rows=512", "train.activation_checkpointing=false", "--nodes", "8",
                        "--gpus-per-node", "8", "--gpu-memory-gib", "80", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "exceeds --gpu-memory-gib 80" in err and "raise parallel.tp" in err
    assert submit_main(["train", SO16, "parallel.tp=3", "--nodes", "1", "--gpus-per-node", "6", "--dry-run"]) == 2
    assert "not divisible by parallel.tp=3" in capsys.readouterr().err


def test_memory_estimate_follows_zero_and_parallel_splits():
    cfg = load_config(SO16, [])
    m = validate(cfg, world_size=64)
    base = estimate(cfg, m, world=64, avg_tokens_per_sample=270)
    z0 = estimate(load_config(SO16, ["parallel.zero_stage=0"]), m, world=64, avg_tokens_per_sample=270)
    z3 = estimate(load_config(SO16, ["parallel.zero_stage=3"]), m, world=64, avg_tokens_per_sample=270)
    tp2 = estimate(load_config(SO16, ["parallel.tp=2"]), m, world=64, avg_tokens_per_sample=270)
    assert z0.memory_gib["optimizer"] == pytest.approx(64 * base.memory_gib["optimizer"])
    assert z3.memory_gib["weights"] == pytest.approx(base.memory_gib["weights"] / 64)
    assert tp2.params_per_rank < 0.55 * base.params_per_rank
    assert base.steps == pytest.approx(8e9 / base.samples_per_step, rel=1e-3)
    assert base.memory_gib["weights"] == pytest.approx(base.params_per_rank * 2 / 2**30)


def test_sweep_dry_run_renders_one_array(capsys, tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"""
name: sizes
config: {ROOT / 'run_scripts/configs/tiny.yaml'}
overrides: [train.total_samples=100]
grid: {{model.preset: [tiny, small], train.seed: [1, 2]}}
slurm: {{gpus_per_node: 0, tasks_per_node: 2, time: "10:00"}}
output_dir: {tmp_path}
""")
    assert sweep_main(["submit", str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "#SBATCH --array=0-3" in out and out.count("; CMD=(") == 4
    assert "model.preset=small train.seed=2 train.output_dir=" + str(tmp_path / "sizes" / "point_003") in out
    (tmp_path / "bad.yaml").write_text("name: x\nconfig: y\ngrid: {a: []}\n")
    assert sweep_main(["submit", str(tmp_path / "bad.yaml"), "--dry-run"]) == 2
