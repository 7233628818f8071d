"""Scoring paths of genlip-eval on a random tiny model: the cached continuation scorer against a plain
packed forward, packed per-sample scores against one sample per row and against the model's own loss."""

import numpy as np
import pytest
import torch

from genlip.eval.batching import Sequence, make_packed_batch, pack_rows, score_sequences
from genlip.eval.zeroshot import class_scores
from genlip.eval.inputs import EvalSample
from genlip.model import build_model, get_preset
from genlip.model.generate import score_continuations


@pytest.fixture(scope="module")
def model():
    cfg = get_preset("tiny")
    m = build_model(cfg, seed=7).eval()
    with torch.no_grad():  # LayerScale 1 instead of 0.1: the blocks move the logits a lot, so errors show
        for name, p in m.named_parameters():
            if name.endswith("gamma"):
                p.fill_(1.0)
    return m


def _images(n, grid, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, grid[0] * grid[1], 3 * 16 * 16), generator=g, dtype=torch.uint8)


CANDIDATES = [[10, 11, 12, 3], [13], [14, 15, 16, 17, 18, 19, 3], [20, 3], [10, 11, 3]]


@pytest.mark.parametrize("grid,prompt,max_rows", [((2, 3), [5, 6, 7], 4), ((3, 3), [], 64), ((1, 4), [8], 1)])
def test_cached_continuation_scores_equal_the_plain_packed_forward(model, grid, prompt, max_rows):
    pixels = _images(3, grid, seed=sum(grid))
    cached = score_continuations(model, pixels, grid, prompt, CANDIDATES, max_rows=max_rows)
    seqs = [Sequence(pixels[b].numpy(), grid, prompt, c) for b in range(3) for c in CANDIDATES]
    plain = score_sequences(model, seqs, row_tokens=80)  # several [image][prompt][candidate] per packed row
    reference = torch.tensor([-s.nll for s in plain], dtype=torch.float64).view(3, len(CANDIDATES))
    torch.testing.assert_close(cached, reference, atol=1e-5, rtol=1e-6)
    # Not vacuous: the scores differ between images and between candidates of equal length by far more.
    assert (reference[0] - reference[1]).abs().max() > 1e-2
    assert abs(reference[0, 0] - reference[0, 4]) > 1e-2


def test_packed_sequence_scores_equal_one_per_row_and_the_model_loss(model):
    rng = np.random.default_rng(0)
    grids = [(2, 2), (1, 3), (3, 2), (2, 2), (4, 1)]
    seqs = [Sequence(_images(1, g, i)[0].numpy(), g, [4, 5][: i % 3], rng.integers(1, 500, 2 + 3 * i).tolist())
            for i, g in enumerate(grids)]
    packed = score_sequences(model, seqs, row_tokens=64)
    alone = score_sequences(model, seqs, row_tokens=1, max_per_row=1)
    assert len(pack_rows([s.length for s in seqs], row_tokens=64, max_per_row=64)) < len(seqs)
    for p, a, s in zip(packed, alone, seqs):
        assert p.targets == a.targets == len(s.text)
        assert p.nll == pytest.approx(a.nll, rel=1e-5) and p.predicted == a.predicted
        assert p.correct == sum(int(x == y) for x, y in zip(p.predicted, s.text))
    rows = pack_rows([s.length for s in seqs], row_tokens=64, max_per_row=64)
    out = model(make_packed_batch(seqs, rows))
    for r, row in enumerate(rows):
        assert out.row_loss_sum[r].item() == pytest.approx(sum(packed[i].nll for i in row), rel=1e-5)
        assert int(out.row_targets[r]) == sum(len(seqs[i].text) for i in row)


def test_zeroshot_class_scores_cached_equal_uncached(model):
    samples = [EvalSample(i, f"k{i}", None, None, [5, 6], None, g, _images(1, g, 10 + i)[0].numpy())
               for i, g in enumerate([(2, 2), (2, 2), (3, 2), (2, 2)])]
    cands = CANDIDATES[:4] + [[21, 22, 3], [23, 3]]  # 3 classes x 2 templates
    cached = class_scores(model, samples, cands, 3, cached=True, batch_size=2, max_rows=3)
    plain = class_scores(model, samples, cands, 3, cached=False)
    assert sorted(cached) == [0, 1, 2, 3]
    for i in cached:
        torch.testing.assert_close(cached[i], plain[i], atol=1e-5, rtol=1e-6)
        # probability-space template average: log((p_t1 + p_t2) / 2) for class 0
        both = score_continuations(model, torch.from_numpy(samples[i].pixels)[None], samples[i].grid, [5, 6],
                                   cands[:2])[0]
        assert float(cached[i][0]) == pytest.approx(float(torch.logsumexp(both, 0) - np.log(2)), abs=1e-9)
