"""Shared test helpers: deterministic packed batches and a torchrun launcher."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from genlip.model.batch import PackedBatch

ROOT = Path(__file__).resolve().parents[1]

# Mixed grids (square and not), prompt lengths (incl. none) and caption lengths, with padding.
MIXED_SEGMENTS = [
    [[2, 3, 2, 4], [3, 3, 1, 2], [1, 4, 0, 3]],
    [[4, 2, 0, 5], [2, 2, 3, 1], [0, 0, 0, 0]],
]


def make_batch(segments, seq_len: int, vocab: int, patch_dim: int, seed: int = 0) -> PackedBatch:
    g = torch.Generator().manual_seed(seed)
    seg = torch.tensor(segments, dtype=torch.int32)
    n_img = int((seg[..., 0] * seg[..., 1]).sum())
    tokens = torch.randint(1, vocab, (seg.shape[0], seq_len), generator=g)
    return PackedBatch(torch.randn(n_img, patch_dim, generator=g), tokens, seg)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(script: str, nproc: int, out: Path, *args: str, timeout: int = 600) -> dict:
    """Run `script` under torchrun on gloo; return the JSON it wrote to `out`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           f"--master_port={free_port()}", str(ROOT / script), "--out", str(out), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return json.loads(out.read_text())


def make_raw_dataset(root: Path, *, shards: int = 3, per_shard: int = 30, size: int = 64, seed: int = 0,
                     vocab_size: int = 300) -> tuple[list[Path], Path]:
    """Synthetic img2dataset-style tar shards plus a sentencepiece tokenizer trained on their captions."""
    from data_tools.tokenizer import iter_captions
    from genlip.data.sources import SourceOptions
    from genlip.data.synthetic import write_webdataset_shards
    from genlip.data.tokenizer import train_sentencepiece

    tars = write_webdataset_shards(root / "raw", num_samples=shards * per_shard, samples_per_shard=per_shard,
                                   seed=seed, size=size)
    texts = ["Describe the image in detail."] * 5 + list(iter_captions(tars, SourceOptions()))
    tok = train_sentencepiece(texts, root / "tok.model", vocab_size=vocab_size, model_type="bpe")
    return tars, tok


def train_cmd(nproc: int, config: Path, *overrides: str) -> list[str]:
    base = [sys.executable]
    if nproc > 1:
        base += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}"]
    return base + ["-m", "genlip.train.trainer", str(config), *overrides]


def train_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_train(nproc: int, config: Path, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_cmd(nproc, config, *overrides), env=train_env(), capture_output=True, text=True,
                          timeout=timeout)
    return proc


def read_metrics(run_dir: Path) -> dict[int, dict]:
    """step -> the values logged at that step (a resumed run may log a step twice: the last one wins)."""
    out: dict[int, dict] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.setdefault(rec["step"], {}).update(rec)
    return out


def read_samples(run_dir: Path) -> dict[int, list]:
    """step -> [(rows, keys) per data-parallel replica], the last record of each step."""
    out: dict[int, dict] = {}
    for f in sorted((run_dir / "samples").glob("dp_*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            out.setdefault(rec["step"], {})[f.name] = (rec["rows"], rec["keys"])
    return {s: [v[k] for k in sorted(v)] for s, v in out.items()}


def build_tiny_dataset(root: Path, *, shards: int = 2, per_shard: int = 30) -> tuple[Path, list[Path], Path]:
    """(dataset dir, raw tars, tokenizer) of 64-px synthetic scenes, built with `genlip-data build`."""
    from data_tools.cli import main as data_main

    tars, tok = make_raw_dataset(root, shards=shards, per_shard=per_shard)
    out = root / "ds"
    assert data_main(["build", *map(str, tars), "--out", str(out), "--tokenizer", str(tok), "--image-size", "64",
                      "--quiet"]) == 0
    return out, tars, tok


def assert_matches_golden(model, golden: dict) -> None:
    """Run the golden file's packed input through `model` and compare hidden states, target logits and
    loss with the numbers the authors' module produced (tests/data/golden_*.json)."""
    import pytest

    from genlip.model import make_layout

    scope = {"torch": torch, "make_layout": make_layout, "PackedBatch": PackedBatch}
    exec(golden["how_inputs_were_made"], scope)
    batch = scope["batch"]
    with torch.no_grad():
        h, layout = model.hidden(batch)
        h = h[0]
        logits = model.logits(h[layout.target_index])
        loss = model(batch).loss.item()
    if "target_index" in golden:
        assert layout.target_index.tolist() == golden["target_index"]
    assert h.double().abs().sum().item() == pytest.approx(golden["hidden_sum_abs"], rel=1e-6)
    n = len(golden["hidden_first_rows"])
    torch.testing.assert_close(h[:n, :8], torch.tensor(golden["hidden_first_rows"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(h[-n:, :8], torch.tensor(golden["hidden_last_rows"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(logits[:, :8], torch.tensor(golden["target_logits_first8"]), atol=1e-6, rtol=0)
    assert loss == pytest.approx(golden["loss"], abs=1e-6)

