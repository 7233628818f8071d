"""Attention whose cost follows the samples: the per-sample `sdpa` path equals the dense-mask oracle
(outputs and gradients, alone and inside the whole model), its bucketing is optimal, FlexAttention's block
mask skips cross-sample blocks, and flash launches two kernels per layer whatever the number of samples."""

import itertools
import random

import pytest
import torch

from genlip.model import build_model, get_preset, make_layout
from genlip.model.attention import (_bucket_samples, _span_attention, make_attention, make_flex_block_mask,
                                    resolve_backend, varlen_reference)
from tests.helpers import MIXED_SEGMENTS, make_batch

# name -> (segment table [B, K, 4], row length S)
ROWS = {
    # padding, prompts, prompt-less samples, non-square grids; row 1 has fewer samples than row 0
    "mixed": (MIXED_SEGMENTS, 40),
    "single_sample_full_row": ([[[3, 4, 2, 6]]], 20),
    "single_sample_with_padding": ([[[2, 2, 0, 3]]], 16),
    "image_only_samples": ([[[2, 2, 0, 0], [1, 3, 0, 0], [2, 3, 1, 1]]], 20),
    # a row that is entirely padding next to rows with 1 and 4 samples
    "padding_row": ([[[0, 0, 0, 0]] * 4, [[2, 3, 0, 5]] + [[0, 0, 0, 0]] * 3, [[1, 2, 1, 1], [2, 2, 0, 4],
                                                                           [1, 1, 2, 2], [3, 1, 0, 1]]], 24),
    # same total length, different image/text split: one bucket must keep each sample's own mask
    "equal_lengths_different_split": ([[[2, 2, 0, 6], [2, 3, 1, 3], [3, 3, 0, 1]], [[1, 2, 4, 4], [0, 0, 0, 0],
                                                                                   [0, 0, 0, 0]]], 30),
    "all_padding": ([[[0, 0, 0, 0]], [[0, 0, 0, 0]]], 8),
}


def _stage1_like_rows(budgets: list[int], seed: int = 0) -> torch.Tensor:
    """Rows of 7x7-patch samples with 0-6 prompt and 3-40 caption tokens (a small stage-1 mix), each row
    filled up to its budget."""
    rng = random.Random(seed)
    table = []
    for budget in budgets:
        row, room = [], budget
        while True:
            s = [7, 7, rng.choice([0, 0, 3, 6]), rng.randint(3, 40)]
            if sum(s[2:]) + 49 > room:
                break
            row.append(s)
            room -= 49 + sum(s[2:])
        table.append(row)
    k = max(map(len, table))
    return torch.tensor([r + [[0, 0, 0, 0]] * (k - len(r)) for r in table])


def _qkv(B, S, H=3, Dh=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, S, H, Dh, generator=g, requires_grad=True) for _ in range(3)]


def _assert_same_as_oracle(layout, attend):
    B, S = layout.sample_id.shape
    q, k, v = _qkv(B, S)
    want = make_attention(layout, "sdpa_dense")(q, k, v)
    got = attend(q, k, v)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)  # every slot, padding included
    grad = torch.randn_like(want)
    grads = [torch.autograd.grad(out, (q, k, v), grad, allow_unused=True, materialize_grads=True) for out in (got, want)]
    for g_got, g_want in zip(*grads):
        torch.testing.assert_close(g_got, g_want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_span_attention_equals_dense_oracle(name):
    segments, S = ROWS[name]
    layout = make_layout(torch.tensor(segments), S)
    _assert_same_as_oracle(layout, make_attention(layout, "sdpa"))


@pytest.mark.parametrize("call_cost", [0, 4096, 10**9])  # one bucket per length ... one bucket for all
def test_span_attention_equals_dense_oracle_for_any_bucketing(call_cost):
    """Stage-1-like rows (many samples, B > 1 with different counts): padding samples up to their bucket's
    longest never changes a result."""
    segments = _stage1_like_rows([300, 200, 90], seed=call_cost % 7)
    layout = make_layout(segments, 300)
    assert len(set((segments.sum(-1) > 0).sum(-1).tolist())) == 3  # rows hold different sample counts
    _assert_same_as_oracle(layout, _span_attention(layout, call_cost=call_cost))


@pytest.mark.parametrize("name,call_cost", [(n, c) for n in sorted(ROWS) for c in (0, 10**9)]
                         + [("stage1", c) for c in (0, 4096, 10**9)])
def test_unpadded_span_attention_equals_dense_oracle_on_the_real_slots(name, call_cost):
    """`unpadded=True` (what the model's trunk uses): q, k, v hold the T real slots only; outputs and gradients
    equal the dense oracle's at those slots, with bucket padding (whose positions repeat a real row and see
    only themselves) never leaking into a real result."""
    segments, S = (_stage1_like_rows([300, 200, 90], seed=2), 300) if name == "stage1" else ROWS[name]
    layout = make_layout(torch.as_tensor(segments), S)
    B = layout.sample_id.shape[0]
    real = layout.real_index
    q, k, v = _qkv(B, S, seed=5)
    grad = torch.randn(B, S, 3, 8, generator=torch.Generator().manual_seed(6))
    want = make_attention(layout, "sdpa_dense")(q, k, v).reshape(B * S, 3, 8)[real]
    want_grads = torch.autograd.grad(want, (q, k, v), grad.reshape(B * S, 3, 8)[real], allow_unused=True,
                                     materialize_grads=True)
    qr, kr, vr = (t.detach().reshape(B * S, 3, 8)[real][None].requires_grad_() for t in (q, k, v))
    got = _span_attention(layout, call_cost=call_cost, unpadded=True)(qr, kr, vr)
    assert got.shape == (1, len(real), 3, 8)
    torch.testing.assert_close(got[0], want, atol=1e-5, rtol=1e-5)
    got_grads = torch.autograd.grad(got, (qr, kr, vr), grad.reshape(B * S, 3, 8)[real][None], allow_unused=True,
                                    materialize_grads=True)
    for g_got, g_want in zip(got_grads, want_grads):
        torch.testing.assert_close(g_got[0], g_want.reshape(B * S, 3, 8)[real], atol=1e-5, rtol=1e-5)


def test_bucketing_is_optimal_and_covers_every_sample_once():
    rng = random.Random(3)
    for _ in range(30):
        lengths = [rng.randint(1, 100) for _ in range(rng.randint(1, 7))]
        call_cost = rng.choice([0, 50, 2000, 10**6])
        groups = _bucket_samples(lengths, call_cost)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))

        def cost(gs):
            return sum(len(g) * max(lengths[i] for i in g) ** 2 + call_cost for g in gs)

        order = sorted(range(len(lengths)), key=lengths.__getitem__)  # brute force over every contiguous cut
        best = min(cost([order[a:b] for a, b in zip((0,) + cuts, cuts + (len(order),))])
                   for r in range(len(order)) for cuts in itertools.combinations(range(1, len(order)), r))
        assert cost(groups) == best
    # with no call cost the padded pairs are exactly the sum of squared sample lengths
    lengths = [5, 9, 9, 30, 2]
    groups = _bucket_samples(lengths, 0)
    assert sum(len(g) * max(lengths[i] for i in g) ** 2 for g in groups) == sum(x * x for x in lengths)


def test_whole_model_span_path_equals_dense_path():
    """A GenLIP forward+backward with `sdpa` gives the dense oracle's loss, hidden states and gradients."""
    cfg = get_preset("tiny")
    batch = make_batch(ROWS["padding_row"][0], 24, cfg.vocab_size, cfg.patch_dim, seed=2)
    results = []
    for backend in ("sdpa", "sdpa_dense"):
        model = build_model(get_preset("tiny", attn_backend=backend), seed=6)
        out = model(batch)
        out.loss.backward()
        with torch.no_grad():
            h, _ = model.hidden(batch)
        results.append((out.loss, h, {n: p.grad for n, p in model.named_parameters()}))
    (loss_a, h_a, g_a), (loss_b, h_b, g_b) = results
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-6)
    torch.testing.assert_close(h_a, h_b, atol=1e-5, rtol=1e-5)  # every slot, padding included
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        torch.testing.assert_close(g_a[name], g_b[name], atol=1e-5, rtol=1e-4, msg=name)
    assert g_a["blocks.0.attn.q_proj.weight"].abs().sum() > 0


def test_a_batch_without_any_sample_runs_on_both_paths():
    """Rows of padding only (a rank's share at the end of a held-out set): the loss is 0 and every gradient
    is 0 on the span path, as on the dense one, instead of a reshape error on zero real slots."""
    cfg = get_preset("tiny")
    batch = make_batch(ROWS["all_padding"][0], ROWS["all_padding"][1], cfg.vocab_size, cfg.patch_dim, seed=1)
    for backend in ("sdpa", "sdpa_dense"):
        model = build_model(get_preset("tiny", attn_backend=backend), seed=1).train()
        out = model(batch)
        out.loss.backward()
        assert out.loss.item() == 0.0
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(not g.any() for g in grads)


def test_the_span_path_runs_the_blocks_on_real_slots_only_with_the_same_droppath():
    """With `sdpa` the blocks see [1, T, D], the T real slots (the rows' unfilled tails skipped); in training
    with DropPath the same per-row draws as on padded rows give the dense path's loss and gradients."""
    segments, S = ROWS["mixed"]
    cfg = get_preset("tiny", drop_path=0.5)
    batch = make_batch(segments, S, cfg.vocab_size, cfg.patch_dim, seed=4)
    layout = make_layout(batch.segments, S)
    results, shapes = [], []
    for backend in ("sdpa", "sdpa_dense"):
        model = build_model(get_preset("tiny", drop_path=0.5, attn_backend=backend), seed=3).train()
        hook = model.blocks[0].register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
        torch.manual_seed(11)
        out = model(batch)
        out.loss.backward()
        hook.remove()
        results.append((out.loss, {n: p.grad for n, p in model.named_parameters()}))
    assert shapes == [(1, len(layout.real_index), cfg.width), (batch.tokens.shape[0], S, cfg.width)]
    assert len(layout.real_index) < batch.tokens.numel()  # the batch has padding to skip
    (loss_a, g_a), (loss_b, g_b) = results
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-6)
    for name in g_a:
        torch.testing.assert_close(g_a[name], g_b[name], atol=1e-5, rtol=1e-4, msg=name)
    torch.manual_seed(12)  # another draw: DropPath really acts (the loss moves)
    model = build_model(get_preset("tiny", drop_path=0.5), seed=3).train()
    assert model(batch).loss.item() != pytest.approx(loss_a.item(), rel=1e-6)


def test_auto_picks_the_span_path_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    assert resolve_backend("sdpa_dense", torch.device("cpu")) == "sdpa_dense"
    get_preset("tiny", attn_backend="sdpa_dense")  # a valid config value
    with pytest.raises(ValueError, match="attn_backend"):
        get_preset("tiny", attn_backend="dense")


def _nonempty_blocks(mask: torch.Tensor, block: int) -> int:
    """[B, S, S] bool -> how many (row, q block, kv block) hold at least one allowed pair."""
    B, S, _ = mask.shape
    n = -(-S // block)
    padded = torch.zeros(B, n * block, n * block, dtype=torch.bool)
    padded[:, :S, :S] = mask
    return int(padded.view(B, n, block, n, block).any(4).any(2).sum())


def test_flex_block_mask_skips_cross_sample_blocks():
    """16 samples of 200-280 slots in one 4096-slot row: the block mask visits exactly the blocks that hold a
    same-sample pair (the dense oracle's rule at 128 x 128 block granularity), about sum(L_i^2) / S^2 of all."""
    rng = random.Random(0)
    S, samples, room = 4096, [], 4096 - 200
    while True:
        p, c = rng.choice([0, 6]), rng.randint(4, 80)
        if 196 + p + c > room:
            break
        samples.append([14, 14, p, c])
        room -= 196 + p + c
    layout = make_layout(torch.tensor([samples]), S)
    block_mask = make_flex_block_mask(layout)
    block = block_mask.BLOCK_SIZE[0]
    visited = int(block_mask.kv_num_blocks.sum())
    if block_mask.full_kv_num_blocks is not None:
        visited += int(block_mask.full_kv_num_blocks.sum())
    want = _nonempty_blocks(layout.dense_mask(), block)
    assert visited == want
    total = (S // block) ** 2
    lengths = [196 + s[2] + s[3] for s in samples]
    assert len(lengths) >= 14
    # every sample spans at most 4 blocks, so its blocks are at most (L/block + 1)^2 (+ the padding diagonal)
    bound = sum((L / block + 1) ** 2 for L in lengths) + 2 * (S - sum(lengths)) / block + 2
    assert sum(L * L for L in lengths) / block**2 <= visited <= bound
    assert visited / total < 0.15  # sum(L_i^2) / S^2 is 0.06 here; the dense path visits every block
    assert block_mask.sparsity() == pytest.approx(100 * (1 - visited / total))


@pytest.mark.parametrize("segments", [[[[3, 3, 2, 5]]], MIXED_SEGMENTS, [[[1, 2, 0, 1]] * 8, [[2, 1, 1, 1]] * 8]])
def test_flash_launches_two_kernels_per_layer_whatever_the_sample_count(segments):
    cfg = get_preset("tiny")
    model = build_model(cfg, seed=1)
    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs.get("causal"))
        return varlen_reference(*args, **kwargs)

    model.varlen_fn = counting
    model(make_batch(segments, 40, cfg.vocab_size, cfg.patch_dim)).loss.backward()
    assert calls == [False, True] * cfg.num_layers
