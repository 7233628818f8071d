"""Model behaviour: packing equivalence, loss placement, backends, decoding, init, RoPE, sizes."""

import math

import pytest
import torch

from genlip.info import count_params, main as info_main, train_flops_per_sample
from genlip.model import GenLIP, PackedBatch, build_model, get_preset, greedy_caption, make_layout
from genlip.model.attention import varlen_reference
from genlip.model.rope import make_rope, mrope_slot_axes
from tests.helpers import MIXED_SEGMENTS, make_batch

S = 40


def _sample_alone(batch, b, k, pad_to=None):
    """Row b, slot k of a packed batch as its own one-sample batch."""
    seg = batch.segments.long()
    n = (seg[..., 0] * seg[..., 1] + seg[..., 2] + seg[..., 3])
    start = int(n[b, :k].sum())
    length = int(n[b, k])
    patches = (seg[..., 0] * seg[..., 1]).flatten()
    first = int(patches[: b * seg.shape[1] + k].sum())
    h, w = seg[b, k, :2].tolist()
    L = pad_to or length
    tokens = torch.zeros(1, L, dtype=torch.long)
    tokens[0, :length] = batch.tokens[b, start:start + length]
    return PackedBatch(batch.pixels[first:first + h * w], tokens, batch.segments[b:b + 1, k:k + 1]), start, length


def test_packed_row_equals_samples_alone():
    cfg = get_preset("tiny", drop_path=0.1)
    model = build_model(cfg, seed=1).eval()
    batch = make_batch(MIXED_SEGMENTS, S, cfg.vocab_size, cfg.patch_dim)
    packed = model(batch)
    h_packed, _ = model.hidden(batch)
    for b in range(2):
        weighted, count = 0.0, 0
        for k in range(3):
            if int(batch.segments[b, k].sum()) == 0:
                continue
            single, start, length = _sample_alone(batch, b, k, pad_to=length_pad(k))
            out = model(single)
            c = int(batch.segments[b, k, 3])
            weighted += out.loss.item() * c
            count += c
            h_single, _ = model.hidden(single)
            torch.testing.assert_close(h_single[0, :length], h_packed[b, start:start + length], atol=2e-5, rtol=1e-4)
        assert packed.row_targets[b] == count
        assert packed.row_loss_sum[b].item() / count == pytest.approx(weighted / count, rel=1e-5)
    assert packed.loss.item() == pytest.approx((packed.row_loss_sum.sum() / packed.row_targets.sum()).item(), rel=1e-6)


def test_loss_is_token_mean_over_the_micro_batch():
    """Two rows with 12 and 4 targets: the loss is the mean over all 16 targets (the reference stacks its
    rows into one micro-batch and takes cross-entropy's mean), not the mean of the two row means."""
    cfg = get_preset("tiny")
    model = build_model(cfg, seed=3).eval()
    batch = make_batch([[[2, 2, 2, 12]], [[3, 2, 1, 4]]], 24, cfg.vocab_size, cfg.patch_dim, seed=5)
    with torch.no_grad():
        out = model(batch)
        h, layout = model.hidden(batch)
        logits = model.logits(h.reshape(-1, h.shape[-1])[layout.target_index])
    targets = batch.tokens.reshape(-1)[layout.target_index + 1]
    assert out.row_targets.tolist() == [12, 4]
    token_mean = torch.nn.functional.cross_entropy(logits, targets).item()  # independent: torch's own mean
    per_tok = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    row_mean = (per_tok[:12].mean() + per_tok[12:].mean()).item() / 2
    assert out.loss.item() == pytest.approx(token_mean, rel=1e-6)
    assert abs(token_mean - row_mean) > 1e-3  # the case tells the two rules apart


def length_pad(k):
    return None if k % 2 else 33  # alone both without padding and with padding at the end


def test_loss_reaches_only_target_slots():
    cfg = get_preset("tiny")
    model = build_model(cfg, seed=2)
    batch = make_batch(MIXED_SEGMENTS, S, cfg.vocab_size, cfg.patch_dim)
    layout = make_layout(batch.segments, S)
    h = torch.randn(2, S, cfg.width, requires_grad=True)
    model.head.loss(h, batch.tokens, layout).loss.backward()
    got = set((h.grad.abs().sum(-1).flatten() > 0).nonzero().flatten().tolist())
    assert got == set(layout.target_index.tolist())
    # prompt and image slots (except the one before the first caption token) never get loss gradient
    assert not (got & set(layout.image_index.tolist())) - set(layout.target_index.tolist())


def test_loss_changes_only_with_target_tokens():
    cfg = get_preset("tiny")
    model = build_model(cfg, seed=2)
    batch = make_batch(MIXED_SEGMENTS, S, cfg.vocab_size, cfg.patch_dim)
    layout = make_layout(batch.segments, S)
    base = model(batch).loss.item()
    pad = (layout.sample_id < 0).nonzero()
    tokens = batch.tokens.clone()
    tokens[pad[:, 0], pad[:, 1]] = 7  # padding token ids are inert
    assert model(PackedBatch(batch.pixels, tokens, batch.segments)).loss.item() == base


@pytest.mark.parametrize("backend", ["flash", "flex"])
def test_attention_backends_match_sdpa(backend):
    cfg = get_preset("tiny")
    ref = build_model(cfg, seed=4).eval()
    other = build_model(get_preset("tiny", attn_backend="flex" if backend == "flex" else "sdpa"), seed=4).eval()
    if backend == "flash":
        other.varlen_fn = varlen_reference  # flash-attn's varlen semantics, exercising our index plumbing
    batch = make_batch(MIXED_SEGMENTS, S, cfg.vocab_size, cfg.patch_dim)
    with torch.no_grad():
        h_ref, layout = ref.hidden(batch)
        h_other, _ = other.hidden(batch)
        real = layout.real_index
        torch.testing.assert_close(h_other.reshape(-1, cfg.width)[real], h_ref.reshape(-1, cfg.width)[real],
                                   atol=1e-5, rtol=1e-4)
        assert other(batch).loss.item() == pytest.approx(ref(batch).loss.item(), rel=1e-5)


@pytest.mark.parametrize("prompt", [[5, 9, 11], []])
def test_cached_greedy_decoding_equals_uncached(prompt):
    cfg = get_preset("tiny", init_std=0.2)
    model = build_model(cfg, seed=5, dtype=torch.float64)
    pixels = torch.randn(3, 2 * 3, cfg.patch_dim, dtype=torch.float64)
    cached = greedy_caption(model, pixels, (2, 3), prompt, max_new_tokens=10)
    plain = greedy_caption(model, pixels, (2, 3), prompt, max_new_tokens=10, use_cache=False)
    assert cached == plain
    assert len(set(map(tuple, cached))) > 1 and all(len(c) == 10 for c in cached)


def test_greedy_decoding_stops_at_end_token():
    cfg = get_preset("tiny", init_std=0.2)
    model = build_model(cfg, seed=5, dtype=torch.float64)
    pixels = torch.randn(1, 4, cfg.patch_dim, dtype=torch.float64)
    full = greedy_caption(model, pixels, (2, 2), [3], max_new_tokens=8)[0]
    stopped = greedy_caption(model, pixels, (2, 2), [3], max_new_tokens=8, stop_ids=[full[3]])[0]
    assert stopped == full[: full.index(full[3])]


def test_features_are_final_ln_patch_features():
    cfg = get_preset("tiny")
    model = build_model(cfg, seed=6)
    batch = make_batch(MIXED_SEGMENTS, S, cfg.vocab_size, cfg.patch_dim)
    feats = model.features(batch)
    assert feats.shape == batch.pixels.shape[:1] + (cfg.width,)
    # final LayerNorm with its initial affine (1, 0): zero mean, unit variance per feature vector
    torch.testing.assert_close(feats.mean(-1), torch.zeros(len(feats)), atol=1e-5, rtol=0)


def test_init_follows_reference_rules():
    cfg = get_preset("small")
    model = build_model(cfg, seed=7)
    D = cfg.width
    attn, mlp = model.blocks[0].attn, model.blocks[0].mlp
    bound_q = math.sqrt(6 / (D + 2 * D))  # xavier fans from the full (2D, D) q+gate weight
    assert attn.q_proj.weight.abs().max() <= bound_q
    assert attn.q_proj.weight.std().item() == pytest.approx(bound_q / math.sqrt(3), rel=0.05)
    assert attn.k_proj.weight.std().item() == pytest.approx(math.sqrt(6 / (2 * D)) / math.sqrt(3), rel=0.05)
    for w in (mlp.fc_in.weight, mlp.fc2.weight, model.embed.tok_embed.weight, model.head.lm_head.weight,
              model.embed.patch_embed.weight, model.embed.in_proj.weight, model.head.proj.weight):
        assert w.std().item() == pytest.approx(0.02, rel=0.05)
    for b in (attn.q_proj.bias, attn.out_proj.bias, mlp.fc_in.bias, model.embed.patch_embed.bias, model.head.ln_post.bias):
        assert torch.count_nonzero(b) == 0
    assert torch.all(model.blocks[1].ls2.gamma == 0.1) and torch.all(model.head.ln_post.weight == 1)
    same = build_model(cfg, seed=7)
    other = build_model(cfg, seed=8)
    assert torch.equal(same.blocks[2].mlp.fc2.weight, model.blocks[2].mlp.fc2.weight)
    assert not torch.equal(other.blocks[2].mlp.fc2.weight, model.blocks[2].mlp.fc2.weight)


@pytest.mark.parametrize("section,slots", [((12, 12, 12), 36), ((8, 12, 12), 36), ((16, 16, 16), 48),
                                           ((11, 11, 10), 32), ((3, 3, 2), 8)])
def test_mrope_slots_interleave_t_h_w(section, slots):
    assert mrope_slot_axes(2 * slots, section).tolist() == [i % 3 for i in range(slots)]


def test_mrope_angles_match_reference_formula():
    """Chunked-then-interleaved construction of the reference (overwrite t's slots with h and w)."""
    Dh, section, theta = 24, (2, 2, 1), 10000.0  # partial sections: some h/w slots fall back to t
    pos = torch.randint(0, 50, (3, 2, 7))
    inv = 1.0 / theta ** (torch.arange(0, Dh, 2).float() / Dh)
    freqs = pos.float()[..., None] * inv  # [3, B, S, Dh/2]
    f = freqs[0].clone()
    for axis in (1, 2):
        f[..., slice(axis, 3 * section[axis], 3)] = freqs[axis][..., slice(axis, 3 * section[axis], 3)]
    emb = torch.cat([f, f], -1)
    cos, sin = make_rope(pos, head_dim=Dh, section=section, theta=theta, dtype=torch.float32)
    torch.testing.assert_close(cos, emb.cos())
    torch.testing.assert_close(sin, emb.sin())


@pytest.mark.parametrize("name,trunk", [("l16", 0.39e9), ("so16", 0.47e9), ("g16", 1.2e9)])
def test_released_sizes_match_spec(name, trunk):
    cfg = get_preset(name)
    counts = count_params(cfg)
    assert counts.trunk == pytest.approx(trunk, rel=0.03)
    with torch.device("meta"):
        model = GenLIP(cfg)
    assert sum(p.numel() for p in model.parameters()) == counts.total
    trunk = ("embed.patch_embed.", "blocks.", "head.ln_post.")
    assert sum(p.numel() for n, p in model.named_parameters() if n.startswith(trunk)) == counts.trunk


def test_flops_count_attention_pairs():
    cfg = get_preset("tiny")
    a = train_flops_per_sample(cfg, patches=4, prompt_tokens=0, caption_tokens=2)
    b = train_flops_per_sample(cfg, patches=4, prompt_tokens=0, caption_tokens=3)
    D, E, F, V = cfg.width, cfg.text_width, cfg.ffn, cfg.vocab_size
    # one more text token: its embedding projection, its layer matmuls, 4 + 3 more attention pairs, one more head row
    extra = 2 * E * D + cfg.num_layers * (2 * (5 * D * D + 3 * D * F) + 4 * D * (4 + 3)) + 2 * (E * V + D * E)
    assert b - a == pytest.approx(3 * extra)


def test_info_cli(capsys):
    assert info_main(["so16", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "so16" in out and "467M" in out
    assert info_main(["nope"]) == 2


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="width=100 is not divisible by model.heads=3"):
        get_preset("tiny", width=100, heads=3)
    with pytest.raises(KeyError, match="unknown model preset"):
        get_preset("huge")
    with pytest.raises(KeyError, match="unknown model field"):
        get_preset("tiny", widht=3)
