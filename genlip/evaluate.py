"""Small-scale versions of the paper's caption probes on a held-out dataset: teacher-forced next-token
accuracy on caption + end tokens (with a most-frequent-token baseline), and greedy captions."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlip.data.images import decode_stored, patchify
from genlip.data.shards import open_dataset, read_sample
from genlip.data.tokenizer import Tokenizer
from genlip.model.batch import PackedBatch
from genlip.model.generate import greedy_caption


@dataclass
class HeldOut:
    """Held-out samples, one per row, with their patch grid and tokens."""

    pixels: list[np.ndarray]  # float [h*w, 3*p*p] each
    grids: list[tuple[int, int]]
    captions: list[list[int]]  # caption + end token ids
    prompt: list[int]
    tokenizer: Tokenizer


def load_held_out(root: str | Path, limit: int | None = None) -> HeldOut:
    ds = open_dataset(root)
    n = ds.num_samples if limit is None else min(limit, ds.num_samples)
    pixels, grids, caps = [], [], []
    for s in range(n):
        image, text, _, meta = read_sample(ds, s)
        grid = (int(meta["grid_h"]), int(meta["grid_w"]))
        pixels.append(patchify(decode_stored(image, grid, ds.image_mode), ds.image_mode.patch_size))
        grids.append(grid)
        caps.append(text.astype(np.int64).tolist())
    tok = Tokenizer(Path(root) / ds.manifest["tokenizer"]["file"])
    return HeldOut(pixels, grids, caps, list(ds.manifest["prompt"]["ids"]), tok)


@torch.no_grad()
def token_accuracy(model, data: HeldOut, batch_size: int = 16) -> tuple[float, float]:
    """(accuracy, most-frequent-token baseline) of next-token prediction on caption + end tokens."""
    model.eval()
    correct = total = 0
    targets_all: list[int] = []
    for start in range(0, len(data.captions), batch_size):
        idx = range(start, min(start + batch_size, len(data.captions)))
        S = max(data.grids[i][0] * data.grids[i][1] + len(data.prompt) + len(data.captions[i]) for i in idx)
        tokens = torch.zeros(len(idx), S, dtype=torch.long)
        segments = torch.zeros(len(idx), 1, 4, dtype=torch.int32)
        for r, i in enumerate(idx):
            n = data.grids[i][0] * data.grids[i][1]
            text = data.prompt + data.captions[i]
            tokens[r, n:n + len(text)] = torch.tensor(text)
            segments[r, 0] = torch.tensor([*data.grids[i], len(data.prompt), len(data.captions[i])])
        batch = PackedBatch(torch.from_numpy(np.concatenate([data.pixels[i] for i in idx])), tokens, segments)
        h, layout = model.hidden(batch)
        pred = model.logits(h.reshape(-1, h.shape[-1])[layout.target_index]).argmax(-1)
        targets = tokens.reshape(-1)[layout.target_index + 1]
        correct += int((pred == targets).sum())
        total += len(targets)
        targets_all += targets.tolist()
    baseline = Counter(targets_all).most_common(1)[0][1] / len(targets_all)
    return correct / total, baseline


@torch.no_grad()
def greedy_captions(model, data: HeldOut, indices, max_new_tokens: int = 48) -> list[str]:
    out = []
    for i in indices:
        ids = greedy_caption(model, torch.from_numpy(data.pixels[i])[None], data.grids[i], data.prompt,
                             max_new_tokens=max_new_tokens, stop_ids=data.tokenizer.end_ids)[0]
        out.append(data.tokenizer.decode(ids))
    return out


def plot_loss_curve(run_dir: Path, path: Path) -> Path:
    """train/loss (and val/loss) against samples seen, from RUN/metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = [], []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("train/loss") is not None:
            train.append((rec["samples"], rec["train/loss"]))
        if rec.get("val/loss") is not None:
            val.append((rec["samples"], rec["val/loss"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss")
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("samples seen")
    ax.set_ylabel("caption loss (nats/token)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
