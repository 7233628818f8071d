"""The paper's caption probe: greedy captions from image + prompt, scored with CIDEr and BLEU-4.

Images of one chunk are batched by (patch grid, prompt) so a batch decodes in lockstep with a KV cache
(`genlip.model.generate.greedy_caption`), stopping at the end marker or after `max_new_tokens`.
Scores use every image that has a reference caption (`genlip.eval.caption_metrics`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

from genlip.atomic import atomic_write
from genlip.eval.caption_metrics import caption_scores
from genlip.eval.dist import EvalGroup
from genlip.eval.inputs import EvalData, EvalInputError, EvalSample
from genlip.model.generate import greedy_caption


@torch.no_grad()
def caption_chunk(model, samples: list[EvalSample], tokenizer, *, max_new_tokens: int,
                  batch_size: int = 16) -> dict[int, str]:
    """{sample index: greedy caption text} for one chunk."""
    device = next(model.parameters()).device
    groups: dict[tuple, list[EvalSample]] = defaultdict(list)
    for s in samples:
        groups[(s.grid, tuple(s.prompt))].append(s)
    out = {}
    for (grid, prompt), members in groups.items():
        for lo in range(0, len(members), batch_size):
            part = members[lo:lo + batch_size]
            pixels = torch.stack([torch.from_numpy(s.pixels) for s in part]).to(device)
            ids = greedy_caption(model, pixels, grid, list(prompt), max_new_tokens=max_new_tokens,
                                 stop_ids=tokenizer.end_ids)
            for s, row in zip(part, ids):
                out[s.index] = tokenizer.decode(row)
    return out


def run_caption(model, data: EvalData, group: EvalGroup, *, max_new_tokens: int = 256, batch_size: int = 16,
                progress: bool = True) -> dict:
    """Greedy captions of every image and their CIDEr / BLEU-4 (same result on every rank)."""
    if data.tokenizer is None:
        raise EvalInputError("caption needs a tokenizer (--tokenizer, or a model exported with one)")
    was_training = model.training
    mine: dict[int, str] = {}
    for chunk in data.chunks(group, desc="caption", progress=progress):
        mine.update(caption_chunk(model, chunk, data.tokenizer, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size))
    model.train(was_training)  # greedy_caption switches to eval mode
    predicted = group.gather_indexed(mine)
    if not predicted:
        raise EvalInputError(f"caption: no images could be read from {', '.join(map(str, data.paths))}")
    rows = [{"key": data.samples[i].key, "prediction": p,
             "references": [data.samples[i].caption] if data.samples[i].caption is not None else []}
            for i, p in predicted.items()]
    scored = [r for r in rows if r["references"]]
    metrics = caption_scores([r["prediction"] for r in scored], [r["references"] for r in scored]) if scored \
        else {"cider": None, "bleu4": None}
    exact = sum(r["prediction"].strip() == r["references"][0].strip() for r in scored)
    return {"task": "caption", "images": len(rows), "left_out": data.left_out_counts(group),
            "with_references": len(scored), **metrics,
            "exact_match": exact / len(scored) if scored else None, "max_new_tokens": max_new_tokens,
            "predictions": rows}


def write_predictions(path: str | Path, rows: list[dict]) -> Path:
    """One JSON object per line: key, prediction, references."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path
