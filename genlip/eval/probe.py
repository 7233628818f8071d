"""The paper's discriminative protocol, scaled down: probes trained on frozen patch features.

1. Attentive probe: one learned query cross-attends over an image's final-LN patch features
   (multi-head, LayerNorm on the keys/values, no positions: the features carry what they carry),
   then a linear classifier; trained with AdamW on the training split.
2. Linear probe: multinomial logistic regression (L-BFGS, L2 penalty) on mean-pooled patch features,
   standardised with the training split's mean and standard deviation.

Both are deterministic given the seed (their own RNG; the global one is left as it was), and run
the same on every rank from the same gathered features. Reported: top-1 accuracy on the held-out
split, the training split's accuracy, and chance (1 / number of classes).

Legend: N images, P patches, D width, K classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from hashlib import blake2b

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from genlip.eval.features import FeatureSet
from genlip.eval.inputs import EvalInputError


@dataclass
class ProbeOptions:
    """How the probes are trained."""

    seed: int = 0
    """Seed of the probes' initialisation and shuffling (and of the train/test split by fraction)."""
    epochs: int = 50
    """Attentive probe: passes over the training split."""
    lr: float = 3e-3
    """Attentive probe: AdamW peak learning rate (cosine decay to 0)."""
    weight_decay: float = 0.05
    """Attentive probe: AdamW weight decay."""
    batch_size: int = 64
    """Attentive probe: images per step."""
    heads: int = 0
    """Attentive probe: attention heads (0: width / 64, at least 1)."""
    linear_l2: float = 1e-3
    """Linear probe: L2 penalty on the weights (added to the mean cross-entropy as l2/2 |W|^2)."""
    linear_iters: int = 300
    """Linear probe: L-BFGS iterations."""


def split_by_fraction(keys: list[str], labels: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, test) positions: per class, the `fraction` of images with the smallest hash of (seed, key) is
    held out (at least one image of every class with two or more)."""
    if not 0 < fraction < 1:
        raise EvalInputError(f"--test-fraction must be between 0 and 1, got {fraction}")
    by_class: dict[str, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    train, test = [], []
    for members in by_class.values():
        order = sorted(members, key=lambda i: blake2b(f"{seed}:{keys[i]}".encode(), digest_size=8).digest())
        n_test = max(1, round(fraction * len(order))) if len(order) > 1 else 0
        test += order[:n_test]
        train += order[n_test:]
    return sorted(train), sorted(test)


def subset(fs: FeatureSet, idx: list[int]) -> FeatureSet:
    parts = [fs.features[fs.offsets[i]:fs.offsets[i + 1]] for i in idx]
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
    return FeatureSet(np.concatenate(parts), offsets, [fs.keys[i] for i in idx], [fs.labels[i] for i in idx])


class AttentiveProbe(nn.Module):
    """Learned-query cross-attention pooling over patch features, then a linear classifier."""

    def __init__(self, dim: int, num_classes: int, heads: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.out_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [N, P, D], mask [N, P] (True = real patch) -> logits [N, K]."""
        kv = self.norm(x)
        pooled, _ = self.attn(self.query.expand(x.shape[0], -1, -1), kv, kv, key_padding_mask=~mask,
                              need_weights=False)
        return self.head(self.out_norm(pooled[:, 0]))


def _heads(dim: int, asked: int) -> int:
    heads = asked or max(1, dim // 64)
    if dim % heads:
        raise EvalInputError(f"attentive probe: {heads} heads do not divide the feature width {dim}")
    return heads


@torch.enable_grad()  # also when called from evaluation code that runs under no_grad
def train_attentive(x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor, num_classes: int,
                    opts: ProbeOptions, *, progress: bool = False) -> AttentiveProbe:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed)
        probe = AttentiveProbe(x.shape[-1], num_classes, _heads(x.shape[-1], opts.heads))
    gen = torch.Generator().manual_seed(opts.seed)
    optim = torch.optim.AdamW(probe.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    steps_per_epoch = -(-len(y) // opts.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=max(1, opts.epochs * steps_per_epoch))
    probe.train()
    for _ in tqdm(range(opts.epochs), desc="attentive probe", unit=" epoch", disable=not progress, leave=False):
        order = torch.randperm(len(y), generator=gen)
        for lo in range(0, len(y), opts.batch_size):
            idx = order[lo:lo + opts.batch_size]
            loss = nn.functional.cross_entropy(probe(x[idx], mask[idx]), y[idx])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            sched.step()
    return probe.eval()


@dataclass
class LinearProbe:
    weight: torch.Tensor  # [K, D]
    bias: torch.Tensor  # [K]
    mean: torch.Tensor  # [D]
    std: torch.Tensor  # [D]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std) @ self.weight.T + self.bias


@torch.enable_grad()
def train_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, opts: ProbeOptions) -> LinearProbe:
    x = x.double()
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    optim = torch.optim.LBFGS([w, b], lr=1.0, max_iter=opts.linear_iters, line_search_fn="strong_wolfe",
                              tolerance_grad=1e-9, tolerance_change=1e-12, history_size=20)

    def closure():
        optim.zero_grad()
        loss = nn.functional.cross_entropy(z @ w.T + b, y) + 0.5 * opts.linear_l2 * (w * w).sum()
        loss.backward()
        return loss

    optim.step(closure)
    return LinearProbe(w.detach(), b.detach(), mean, std)


def _accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(-1) == y).double().mean())


def run_probes(train: FeatureSet, test: FeatureSet, opts: ProbeOptions, *, attentive: bool = True,
               linear: bool = True, progress: bool = False) -> dict:
    """Train the probes on `train`, report accuracy on `test` (see module docstring)."""
    for name, fs in (("training", train), ("test", test)):
        if len(fs) == 0:
            raise EvalInputError(f"probe: the {name} split is empty")
        if any(lab is None for lab in fs.labels):
            raise EvalInputError(f"probe: the {name} split has images without labels")
    classes = sorted(set(train.labels))
    if len(classes) < 2:
        raise EvalInputError(f"probe: the training split has {len(classes)} class(es); need at least 2")
    unseen = sorted(set(test.labels) - set(classes))
    if unseen:
        raise EvalInputError(f"probe: test labels {unseen[:5]} never occur in the training split")
    index = {c: i for i, c in enumerate(classes)}
    y_train = torch.tensor([index[lab] for lab in train.labels])
    y_test = torch.tensor([index[lab] for lab in test.labels])
    result = {"task": "probe", "train_images": len(train), "test_images": len(test), "classes": len(classes),
              "chance": 1.0 / len(classes), "seed": opts.seed}
    if linear:
        lin = train_linear(torch.from_numpy(train.mean_pooled()), y_train, len(classes), opts)
        result["linear_top1"] = _accuracy(lin.logits(torch.from_numpy(test.mean_pooled()).double()), y_test)
        result["linear_train_top1"] = _accuracy(lin.logits(torch.from_numpy(train.mean_pooled()).double()), y_train)
    if attentive:
        x, m = train.padded()
        att = train_attentive(x, m, y_train, len(classes), opts, progress=progress)
        with torch.no_grad():
            xt, mt = test.padded()
            result["attentive_top1"] = _accuracy(att(xt, mt), y_test)
            result["attentive_train_top1"] = _accuracy(att(x, m), y_train)
    return result
