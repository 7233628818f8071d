"""Packed-row layout against brute-force oracles: mask, positions, loss targets, cross-sample isolation."""

import pytest
import torch

from genlip.model import build_model, get_preset, make_layout
from tests.helpers import MIXED_SEGMENTS, make_batch

S = 40


def brute_force_slots(segments, seq_len):
    """Per row: list of (sample, kind, k, h, w, side) per slot; kind in image/prompt/caption/pad."""
    rows = []
    sample = 0
    for row in segments:
        slots = []
        for h, w, p, c in row:
            if h * w + p + c == 0:
                continue
            for r in range(h):
                for col in range(w):
                    slots.append((sample, "image", (r, col), h, w))
            for k in range(p + c):
                slots.append((sample, "prompt" if k < p else "caption", k, h, w))
            sample += 1
        slots += [(-1, "pad", 0, 0, 0)] * (seq_len - len(slots))
        rows.append(slots)
    return rows


def test_mask_matches_brute_force_rule():
    layout = make_layout(torch.tensor(MIXED_SEGMENTS), S)
    mask = layout.dense_mask()
    for b, slots in enumerate(brute_force_slots(MIXED_SEGMENTS, S)):
        for q, (sq, kq, *_) in enumerate(slots):
            for k, (sk, kk, *_) in enumerate(slots):
                if sq < 0:
                    want = q == k  # padding sees only itself (keeps softmax finite)
                elif sq != sk:
                    want = False
                elif kq == "image":
                    want = kk == "image"
                else:  # prompt / caption: all image of its sample, text causally
                    want = kk == "image" or k <= q
                assert bool(mask[b, q, k]) == want, (b, q, k, slots[q], slots[k])


def test_position_ids_match_spec_formula():
    layout = make_layout(torch.tensor(MIXED_SEGMENTS), S)
    for b, slots in enumerate(brute_force_slots(MIXED_SEGMENTS, S)):
        for i, (smp, kind, k, h, w) in enumerate(slots):
            if kind == "image":
                want = (0, k[0], k[1])
            elif kind == "pad":
                want = (0, 0, 0)
            else:
                s = max(h, w)
                want = (s + k, s + k, s + k)
            assert tuple(layout.position_ids[:, b, i].tolist()) == want, (b, i, slots[i])


def test_targets_are_caption_and_end_tokens_only():
    layout = make_layout(torch.tensor(MIXED_SEGMENTS), S)
    want = []
    for b, slots in enumerate(brute_force_slots(MIXED_SEGMENTS, S)):
        for i, (smp, kind, *_) in enumerate(slots):
            if kind == "caption":
                want.append(b * S + i - 1)  # predicted from the slot before it, same sample
                assert slots[i - 1][0] == smp
    assert layout.target_index.tolist() == want
    assert layout.target_row.tolist() == [t // S for t in want]


def test_segment_table_errors_are_clear():
    with pytest.raises(ValueError, match="row 0 holds 30 tokens, more than the row length 20"):
        make_layout(torch.tensor([[[4, 5, 5, 5]]]), 20)
    with pytest.raises(ValueError, match="no image"):
        make_layout(torch.tensor([[[0, 0, 2, 3]]]), 20)
    with pytest.raises(ValueError, match=r"\[B, K, 4\]"):
        make_layout(torch.zeros(2, 4, dtype=torch.long), 20)


@pytest.mark.parametrize("backend", ["sdpa", "flash"])  # flex has no CPU backward; see test_model
def test_no_dependency_across_samples(backend):
    """d(output at q)/d(input) is non-zero exactly on the slots q may attend to (transitively the same)."""
    cfg = get_preset("tiny", attn_backend="sdpa" if backend == "flash" else backend)
    model = build_model(cfg, seed=3)
    if backend == "flash":
        from genlip.model.attention import varlen_reference
        model.varlen_fn = varlen_reference
    batch = make_batch(MIXED_SEGMENTS, S, cfg.vocab_size, cfg.patch_dim)
    layout = make_layout(batch.segments, S)
    mask = layout.dense_mask()
    x0 = model.embed(batch.pixels, batch.tokens, layout).detach()
    rope, attend = model.context(layout, x0.dtype)
    real = layout.sample_id >= 0
    for b, q in [(0, 0), (0, 7), (0, 12), (0, 20), (0, 30), (1, 3), (1, 10), (1, 19)]:
        assert real[b, q]
        x = x0.clone().requires_grad_(True)
        h = model.run_blocks(x, rope, attend)
        h[b, q].sum().backward()
        depends = x.grad.abs().sum(-1) > 0  # [B, S]
        want = torch.zeros_like(depends)
        want[b] = mask[b, q]
        assert torch.equal(depends, want), (backend, b, q)
