"""The image-blind caption baseline of `genlip-eval loss`: hand-computed values on a tiny caption set, a
proper distribution, and its fast argmax against a brute-force one over the whole vocabulary."""

import math
import random

import pytest

from genlip.eval.ngram import NgramBaseline, _Counts, _events, _LeaveOneOut, most_frequent_token_accuracy

V = 10
CAPTIONS = [[1, 2, 9], [1, 3, 9], [1, 2, 9]]  # A, B, C (C repeats A)


def test_hand_computed_leave_one_out_trigram():
    # Caption A, counted from B and C only: unigrams 1:2 2:1 3:1 9:2 (N = 6, T = 4), so
    # P1(w) = (c(w) + 4/10) / 10; bigram histories S->1 x2, 1->{2, 3}, 2->9, 3->9; trigram (S,S)->1 x2,
    # (S,1)->{2, 3}, (1,2)->9, (1,3)->9.
    p1 = {1: 2.4 / 10, 2: 1.4 / 10, 9: 2.4 / 10}
    a1 = (2 + 1 * ((2 + 1 * p1[1]) / 3)) / 3  # token 1 after (S, S)
    a2 = (1 + 2 * ((1 + 2 * p1[2]) / 4)) / 4  # token 2 after (S, 1): 0.41
    a3 = (1 + 1 * ((1 + 1 * p1[9]) / 2)) / 2  # token 9 after (1, 2): 0.81
    assert (a2, a3) == pytest.approx((0.41, 0.81))
    # Caption B, counted from A and C: unigrams 1:2 2:2 9:2 (N = 6, T = 3), P1(w) = (c(w) + 3/10) / 9.
    q1 = {1: 2.3 / 9, 3: 0.3 / 9, 9: 2.3 / 9}
    b1 = (2 + (2 + q1[1]) / 3) / 3  # token 1 after (S, S)
    b2 = (0 + 1 * ((0 + 1 * q1[3]) / 3)) / 3  # token 3 after (S, 1): never seen there by A or C
    b3 = q1[9]  # token 9 after (1, 3): neither (1, 3) nor 3 was a history in A or C: back to unigrams
    expected_nll = 2 * -(math.log(a1) + math.log(a2) + math.log(a3)) - (math.log(b1) + math.log(b2) + math.log(b3))

    base = NgramBaseline(CAPTIONS, V)
    assert base.caption_scores(0)[0] == pytest.approx(-(math.log(a1) + math.log(a2) + math.log(a3)), rel=1e-12)
    scores = base.scores()
    assert scores.targets == 9
    assert scores.loss == pytest.approx(expected_nll / 9, rel=1e-12)
    # Argmax: A and C are predicted entirely (after (S, 1) tokens 2 and 3 tie for A and C: the smaller id, 2,
    # wins); B only its first token (2 is predicted after (S, 1); after (1, 3) the unigrams 1, 2, 9 tie: 1).
    assert [base.caption_scores(i)[2] for i in range(3)] == [3, 1, 3]
    assert scores.accuracy == pytest.approx(7 / 9)
    assert most_frequent_token_accuracy(CAPTIONS) == pytest.approx(3 / 9)


def _dense(base: NgramBaseline, i: int):
    cap = base.captions[i]
    loo = _LeaveOneOut(base.full, _Counts([cap]))
    return [(w, [loo.prob(v, h, base.vocab) for v in range(base.vocab)]) for h, w in _events(cap)]


def test_probabilities_sum_to_one_and_the_fast_argmax_matches_brute_force():
    rng = random.Random(0)
    vocab = 12
    caps = [[rng.choice([1, 2, 3, 5, 7, 7, 8]) for _ in range(rng.randint(1, 6))] + [11] for _ in range(25)]
    base = NgramBaseline(caps, vocab)
    for i in range(len(caps)):
        correct = 0
        for w, dist in _dense(base, i):
            assert sum(dist) == pytest.approx(1.0, abs=1e-12)
            best = max(range(vocab), key=lambda v: (dist[v], -v))
            correct += best == w
        nll, n, fast_correct = base.caption_scores(i)
        assert fast_correct == correct and n == len(caps[i])
        assert nll == pytest.approx(-sum(math.log(d[w]) for w, d in _dense(base, i)))


def test_a_single_caption_gets_uniform_predictions():
    base = NgramBaseline([[4, 5]], vocab_size=8)
    s = base.scores()
    assert s.loss == pytest.approx(math.log(8)) and s.accuracy == 0.0
