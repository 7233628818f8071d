"""Greedy caption decoding (the paper's caption probe) and candidate-caption scoring, with a KV cache.

All images of one call share a patch grid (h, w) and the prompt, so rows stay aligned. Text token k of a
sample sits at MRoPE position max(h, w) + k. Decoding adds one token per row per step;
`score_continuations` runs image + prompt once per image, then scores every candidate caption as a
continuation of that cache (candidate token j attends to the whole cache and to candidate tokens <= j).

Legend: B images, P patches per image, C candidates, L candidate length, V vocabulary.
"""

from __future__ import annotations

import torch

from genlip.model.attention import attend_cached
from genlip.model.batch import PackedBatch
from genlip.model.layers import KVCache
from genlip.model.rope import make_rope

LOGIT_SLICE = 512  # positions per LM-head call when scoring (bounds the [positions, V] logits)


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


@torch.no_grad()
def score_continuations(model, pixels: torch.Tensor, grid: tuple[int, int], prompt: list[int],
                        candidates: list[list[int]], *, max_rows: int = 256) -> torch.Tensor:
    """log p(candidate | image, prompt) summed over each candidate's tokens: [B, C] float64.

    pixels [B, P, C*p*p] (one patch grid for all); candidates: token id lists (caption + end ids), each
    non-empty. Image + prompt run once per image (the cache); candidates run as continuations in groups
    of at most `max_rows` (image, candidate) rows. Equal to scoring each `[image][prompt][candidate]`
    with a plain forward (tested). The model must be in eval mode.
    """
    if any(len(c) == 0 for c in candidates):
        raise ValueError("every candidate needs at least one token")
    B, C = pixels.shape[0], len(candidates)
    device = pixels.device
    caches = [KVCache() for _ in model.blocks]
    first = torch.log_softmax(model.prefill(_prefill_batch(pixels, grid, prompt), caches).float(), -1)  # [B, V]
    text_pos = max(grid) + len(prompt)
    out = torch.zeros(B, C, dtype=torch.float64)
    first_ids = torch.tensor([c[0] for c in candidates], device=device)
    out += first[:, first_ids].double().cpu()  # token 0 is predicted by the prompt's last slot
    rest = [c[1:] for c in candidates]
    per_group = max(1, max_rows // B)
    for lo in range(0, C, per_group):
        group = rest[lo:lo + per_group]
        L = max(len(c) for c in group)
        if L == 0:
            continue
        n = len(group)
        # Inputs are the candidate tokens 0..L-1 (the last token of each candidate is a target only).
        inputs = torch.zeros(n, L, dtype=torch.long, device=device)
        targets = torch.zeros(n, L, dtype=torch.long, device=device)
        valid = torch.zeros(n, L, dtype=torch.bool, device=device)
        for j, c in enumerate(candidates[lo:lo + n]):
            inputs[j, :len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
            targets[j, :len(c) - 1] = torch.tensor(c[1:], dtype=torch.long)
            valid[j, :len(c) - 1] = True
        rows_in = inputs.repeat(B, 1)  # row b*n + j: image b, candidate lo + j
        group_caches = [cache.repeated(n) for cache in caches]
        x = model.embed.text(rows_in)
        pos = (text_pos + torch.arange(L, device=device)).view(1, 1, L).expand(3, B * n, L)
        c = model.cfg
        rope = make_rope(pos, head_dim=c.head_dim, section=c.mrope_section, theta=c.rope_theta, dtype=x.dtype)
        h = model.head.ln_post(model.run_blocks(x, rope, attend_cached, caches=group_caches))  # [B*n, L, D]
        mask = valid.repeat(B, 1).reshape(-1)
        flat_h = h.reshape(-1, h.shape[-1])[mask]
        flat_t = targets.repeat(B, 1).reshape(-1)[mask]
        logp = torch.cat([torch.log_softmax(model.logits(flat_h[s:s + LOGIT_SLICE]).float(), -1)
                          .gather(1, flat_t[s:s + LOGIT_SLICE, None])[:, 0]
                          for s in range(0, len(flat_t), LOGIT_SLICE)])
        row_of = torch.arange(B * n, device=device)[:, None].expand(B * n, L).reshape(-1)[mask]
        sums = torch.zeros(B * n, dtype=torch.float64).index_add_(0, row_of.cpu(), logp.double().cpu())
        out[:, lo:lo + n] += sums.view(B, n)
    return out
