"""Greedy caption decoding (the paper's caption probe) with a KV cache.

All images of one call share a patch grid (h, w) and the prompt, so rows stay aligned and each step
is one token per row. Text token k of a sample sits at MRoPE position max(h, w) + k.
"""

from __future__ import annotations

import torch

from genlip.model.batch import PackedBatch
from genlip.model.layers import KVCache


def _prefill_batch(pixels: torch.Tensor, grid: tuple[int, int], prompt: list[int],
                   caption: torch.Tensor | None = None) -> PackedBatch:
    """One sample per row: `[image][prompt][caption so far]`."""
    B = pixels.shape[0]
    h, w = grid
    c = 0 if caption is None else caption.shape[1]
    tokens = torch.zeros(B, h * w + len(prompt) + c, dtype=torch.long, device=pixels.device)
    tokens[:, h * w:h * w + len(prompt)] = torch.tensor(prompt, dtype=torch.long)
    if c:
        tokens[:, h * w + len(prompt):] = caption
    segments = torch.tensor([[[h, w, len(prompt), c]]] * B, dtype=torch.int32, device=pixels.device)
    return PackedBatch(pixels.reshape(-1, pixels.shape[-1]), tokens, segments)


def _finish(out: torch.Tensor, stop_ids: set[int]) -> list[list[int]]:
    result = []
    for row in out.tolist():
        cut = next((i for i, t in enumerate(row) if t in stop_ids), len(row))
        result.append(row[:cut])
    return result


@torch.no_grad()
def greedy_caption(model, pixels: torch.Tensor, grid: tuple[int, int], prompt: list[int], *,
                   max_new_tokens: int = 32, stop_ids=(), use_cache: bool = True) -> list[list[int]]:
    """Greedy captions for images `pixels` [B, h*w, C*p*p]; returns token ids without the stop token.

    `use_cache=False` reruns the whole sequence each step (the reference the cache is tested against).
    """
    model.eval()
    B = pixels.shape[0]
    stop = set(stop_ids)
    out = torch.zeros(B, 0, dtype=torch.long, device=pixels.device)
    done = torch.zeros(B, dtype=torch.bool, device=pixels.device)
    caches = [KVCache() for _ in model.blocks]
    logits = model.prefill(_prefill_batch(pixels, grid, prompt), caches) if use_cache else None
    text_pos = max(grid) + len(prompt)
    for step in range(max_new_tokens):
        if not use_cache:
            batch = _prefill_batch(pixels, grid, prompt, out)
            logits = model.prefill(batch, [KVCache() for _ in model.blocks])
        nxt = logits.argmax(-1)
        out = torch.cat([out, nxt[:, None]], dim=1)
        if stop:
            done |= torch.isin(nxt, torch.tensor(sorted(stop), device=nxt.device))
            if bool(done.all()):
                break
        if use_cache and step + 1 < max_new_tokens:
            pos = torch.full((B,), text_pos + step, dtype=torch.long, device=pixels.device)
            logits = model.decode(nxt, pos, caches)
    return _finish(out, stop)
