"""The training loss curve (and validation points) of a run, as a PNG, from RUN/metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


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
