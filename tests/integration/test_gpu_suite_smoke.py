"""The one-call GPU suite (benchmarks/gpu_suite.sh) cannot run here, but its Python can: `--cpu-smoke` runs
every phase at tiny sizes on CPU (attention backends against the oracle, synthetic shards, genlip-train,
the report, the plain fallback loop), so a GPU session finds a script that works."""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_suite_runs_every_phase_on_cpu(tmp_path):
    env = dict(os.environ, WORK=str(tmp_path / "work"), WHEELHOUSE=str(tmp_path / "no_wheels"), OMP_NUM_THREADS="2")
    p = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--cpu-smoke"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-4000:]
    assert "training phase: genlip-train" in out
    for phase in ("attention: correctness", "synthetic stage-1 shards", "tiny training through genlip-train",
                  "report", "the plain fallback loop", "done (status 0)"):
        assert phase in out, phase
    assert "FAILED" not in out
    assert out.count("samples/s") >= 2  # the report after genlip-train and after the plain loop
    assert (tmp_path / "work" / "cpu_smoke" / "run" / "metrics.jsonl").is_file()


def test_gpu_suite_dry_run_prints_the_commands(tmp_path):
    p = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--dry-run", "--cpu-smoke"], cwd=REPO, capture_output=True,
                       text=True, timeout=120, env=dict(os.environ, WORK=str(tmp_path)))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "+ " in p.stdout and "gpu_suite.py train" in p.stdout
    bad = subprocess.run(["bash", "benchmarks/gpu_suite.sh", "--no-such-option"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown option --no-such-option" in bad.stderr
