"""Packed teacher-forced scoring: many `[image][prompt][text]` sequences per row, per-sequence results.

`score_sequences` is the one forward used by `loss` (captions), by uncached zero-shot scoring
(candidate captions) and by the test of the cached continuation scorer: for each sequence it returns
the summed negative log-likelihood of its text tokens (caption + end), their number and how many the
model predicts exactly (argmax). The LM head runs only at target positions, in slices, so a large
vocabulary never needs a [tokens, V] tensor for a whole row.

Legend: B rows, S slots per row, M targets, V vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from genlip.model.batch import PackedBatch

LOGIT_SLICE = 512
"""Targets per LM-head call (bounds the [M, V] logits in memory)."""


@dataclass
class Sequence:
    """One sample to score: its image patches, prompt and target text (caption + end ids)."""

    pixels: np.ndarray
    """uint8 or float [rows*cols, 3*p*p] patches."""
    grid: tuple[int, int]
    prompt: list[int]
    text: list[int]

    @property
    def length(self) -> int:
        return self.grid[0] * self.grid[1] + len(self.prompt) + len(self.text)


@dataclass
class SequenceScore:
    nll: float
    """Sum over the text tokens of -log p(token | image, prompt, earlier tokens), in nats."""
    targets: int
    """Number of text tokens scored."""
    correct: int
    """Text tokens that are the model's most likely next token."""
    predicted: list[int]
    """The model's most likely token at each text position."""


def pack_rows(lengths: list[int], *, row_tokens: int, max_per_row: int) -> list[list[int]]:
    """Sequences (by position) into rows, in order, a new row when the next one does not fit."""
    rows: list[list[int]] = []
    used = row_tokens + 1
    for i, n in enumerate(lengths):
        if used + n > row_tokens or len(rows[-1]) >= max_per_row:
            rows.append([])
            used = 0
        rows[-1].append(i)
        used += n
    return rows


def make_packed_batch(seqs: list[Sequence], rows: list[list[int]]) -> PackedBatch:
    """Rows of samples back to back from slot 0, padded to the longest row."""
    S = max(sum(seqs[i].length for i in row) for row in rows)
    K = max(len(row) for row in rows)
    tokens = torch.zeros(len(rows), S, dtype=torch.long)
    segments = torch.zeros(len(rows), K, 4, dtype=torch.int32)
    pixels = []
    for r, row in enumerate(rows):
        pos = 0
        for k, i in enumerate(row):
            s = seqs[i]
            pos += s.grid[0] * s.grid[1]
            text = s.prompt + s.text
            tokens[r, pos:pos + len(text)] = torch.tensor(text, dtype=torch.long)
            pos += len(text)
            segments[r, k] = torch.tensor([s.grid[0], s.grid[1], len(s.prompt), len(s.text)])
            pixels.append(torch.from_numpy(np.ascontiguousarray(s.pixels)))
    return PackedBatch(torch.cat(pixels), tokens, segments)


@torch.no_grad()
def score_sequences(model, seqs: list[Sequence], *, row_tokens: int = 1024, max_per_row: int = 64,
                    device=None) -> list[SequenceScore]:
    """Teacher-forced scores of every sequence (see module docstring), in the order given."""
    if not seqs:
        return []
    longest = max(s.length for s in seqs)
    rows = pack_rows([s.length for s in seqs], row_tokens=max(row_tokens, longest), max_per_row=max_per_row)
    device = device if device is not None else next(model.parameters()).device
    batch = make_packed_batch(seqs, rows).to(device)
    h, layout = model.hidden(batch)
    flat = h.reshape(-1, h.shape[-1])
    targets = batch.tokens.reshape(-1)[layout.target_index + 1]
    nll, pred = [], []
    for start in range(0, len(targets), LOGIT_SLICE):
        idx = layout.target_index[start:start + LOGIT_SLICE]
        logits = model.logits(flat[idx]).float()
        t = targets[start:start + LOGIT_SLICE]
        nll.append(torch.nn.functional.cross_entropy(logits, t, reduction="none"))
        pred.append(logits.argmax(-1))
    nll_all = torch.cat(nll).double().cpu()
    pred_all = torch.cat(pred).cpu()
    order = [i for row in rows for i in row]  # the layout numbers samples row by row, slot by slot
    out: list[SequenceScore | None] = [None] * len(seqs)
    start = 0
    for i in order:
        n = len(seqs[i].text)
        p = pred_all[start:start + n]
        t = targets[start:start + n].cpu()
        out[i] = SequenceScore(float(nll_all[start:start + n].sum()), n, int((p == t).sum()), p.tolist())
        start += n
    return out
