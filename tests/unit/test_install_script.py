"""run_scripts/install.sh picks torch's CPU wheel index on a machine without CUDA, PyPI's default build with
nvidia-smi, and TORCH_INDEX_URL when given. A stand-in python records the pip commands; nothing is installed."""

import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FAKE_PYTHON = """#!/usr/bin/env bash
# No torch yet: `python -c "import torch"` fails; `python -m pip ...` is recorded.
if [ "$1" = "-c" ]; then exit 1; fi
echo "$@" >> "$LOG"
"""


def _install(tmp_path: Path, *, cuda: bool, index: str | None = None) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    py = bin_dir / "python"
    py.write_text(FAKE_PYTHON)
    py.chmod(py.stat().st_mode | stat.S_IXUSR)
    if cuda:
        smi = bin_dir / "nvidia-smi"
        smi.write_text("#!/bin/sh\nexit 0\n")
        smi.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHON": str(py), "LOG": str(tmp_path / "log"), "HOME": str(tmp_path)}
    if index:
        env["TORCH_INDEX_URL"] = index
    subprocess.run(["bash", str(ROOT / "run_scripts" / "install.sh"), "dev"], env=env, check=False,
                   capture_output=True, text=True)
    return (tmp_path / "log").read_text().splitlines()


@pytest.mark.parametrize("cuda, index, expect", [
    (False, None, "--index-url https://download.pytorch.org/whl/cpu"),
    (True, None, None),
    (True, "https://mirror.example/whl/cu128", "--index-url https://mirror.example/whl/cu128"),
])
def test_torch_build_follows_the_machine(tmp_path, cuda, index, expect):
    lines = _install(tmp_path, cuda=cuda, index=index)
    torch_line = next(line for line in lines if "torch==2.13.0" in line)
    if expect:
        assert expect in torch_line
    else:
        assert "--index-url" not in torch_line
    assert any("-e .[dev]" in line for line in lines), lines
