"""Image-blind baselines for caption-token prediction.

The model's next-token accuracy on captions means little alone: captions of one dataset share a
grammar and a typical opening, which a model gets right without looking at the image. The baseline
here knows all of that and nothing of the image:

**Leave-one-out interpolated trigram (Witten-Bell).** Each caption is its target token sequence
t_1..t_n (caption + end tokens, exactly the model's targets); t_j is predicted from (t_{j-2}, t_{j-1}),
with a start marker before t_1 (the prompt is fixed, so conditioning on the start is what the model
gets from the prompt). For caption i, every count comes from the *other* evaluated captions (leave
one out), so the baseline never memorises the caption it predicts. With c(.) those counts, N the number
of unigram tokens, T(h) the number of distinct tokens seen after history h, and V the vocabulary size:

    P0(w)       = 1 / V
    P1(w)       = (c(w)      + T()    P0(w))     / (N      + T())      [P0 when N = 0]
    P2(w | v)   = (c(v w)    + T(v)   P1(w))     / (c(v)   + T(v))     [P1 when c(v) = 0]
    P3(w | u v) = (c(u v w)  + T(u v) P2(w | v)) / (c(u v) + T(u v))   [P2 when c(u v) = 0]

Reported: its accuracy (argmax of P3; ties go to the smaller token id) and its loss (mean of
-log P3(t_j | .) over all targets, nats), beside the model's. Also reported: the accuracy of always
predicting the most frequent target token of the evaluated set.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass

START = -1  # history marker before the first target token (not a vocabulary id)


@dataclass
class BaselineScores:
    accuracy: float
    """Fraction of targets that are the baseline's most likely token."""
    loss: float
    """Mean negative log-likelihood per target (nats)."""
    targets: int


class _Counts:
    """n-gram counts of a set of captions: c[n][history][token] for histories of length n - 1."""

    def __init__(self, captions: list[list[int]]):
        self.c = [defaultdict(Counter) for _ in range(3)]
        for cap in captions:
            for h, w in _events(cap):
                for n in range(3):
                    self.c[n][h[2 - n:]][w] += 1
        self.total = [{h: sum(cnt.values()) for h, cnt in level.items()} for level in self.c]


def _events(caption: list[int]):
    """(history (t_{j-2}, t_{j-1}), t_j) for every target of one caption."""
    padded = [START, START] + list(caption)
    return [((padded[j], padded[j + 1]), padded[j + 2]) for j in range(len(caption))]


class _LeaveOneOut:
    """Counts of all captions minus one caption's own counts, as the formulas above read them."""

    def __init__(self, full: _Counts, own: _Counts):
        self.full, self.own = full, own
        self._types: dict = {}

    def count(self, n: int, h: tuple, w: int) -> int:
        return self.full.c[n].get(h, {}).get(w, 0) - self.own.c[n].get(h, {}).get(w, 0)

    def total(self, n: int, h: tuple) -> int:
        return self.full.total[n].get(h, 0) - self.own.total[n].get(h, 0)

    def types(self, n: int, h: tuple) -> int:
        """Distinct tokens after h in the other captions: the full count less those only this caption has."""
        key = (n, h)
        if key not in self._types:
            full, own = self.full.c[n].get(h, {}), self.own.c[n].get(h, {})
            self._types[key] = len(full) - sum(1 for w, k in own.items() if full.get(w, 0) == k)
        return self._types[key]

    def prob(self, w: int, h: tuple, vocab: int) -> float:
        p = 1.0 / vocab
        for n in range(3):
            hist = h[2 - n:]
            tot = self.total(n, hist)
            if tot > 0:
                t = self.types(n, hist)
                p = (self.count(n, hist, w) + t * p) / (tot + t)
        return p


class NgramBaseline:
    """The leave-one-out Witten-Bell trigram of the module docstring, over the evaluated captions."""

    def __init__(self, captions: list[list[int]], vocab_size: int):
        if vocab_size < 1:
            raise ValueError("vocab_size must be positive")
        self.captions = [list(map(int, c)) for c in captions]
        self.vocab = vocab_size
        self.full = _Counts(self.captions)
        # Unigrams by (count descending, id ascending), for the leave-one-out unigram argmax.
        self._by_count = sorted(self.full.c[0][()].items(), key=lambda kv: (-kv[1], kv[0]))

    def _best_unigram(self, loo: _LeaveOneOut) -> int | None:
        """The token with the most leave-one-out unigram counts (smaller id on ties); None if there are none."""
        best, best_count = None, 0
        for w, full_count in self._by_count:
            if full_count < best_count or (full_count == best_count and best is not None and w > best):
                break  # the leave-one-out count never exceeds the full count: nothing later can win
            k = loo.count(0, (), w)
            if k > best_count or (k == best_count > 0 and w < best):
                best, best_count = w, k
        return best

    def _predict(self, loo: _LeaveOneOut, h: tuple, top: int | None) -> int:
        if top is None:
            return 0  # no other caption: every token is equally likely and the smallest id wins
        # A token seen after neither history scores c(w)-proportionally, so only the best unigram of those
        # can win; tokens seen after a history are checked one by one.
        candidates = set(self.full.c[2].get(h, {})) | set(self.full.c[1].get(h[1:], {})) | {top}
        return min(candidates, key=lambda w: (-loo.prob(w, h, self.vocab), w))

    def caption_scores(self, i: int) -> tuple[float, int, int]:
        """(summed NLL, targets, correct) for caption i."""
        cap = self.captions[i]
        loo = _LeaveOneOut(self.full, _Counts([cap]))
        top = self._best_unigram(loo)
        nll = 0.0
        correct = 0
        for h, w in _events(cap):
            nll -= math.log(loo.prob(w, h, self.vocab))
            correct += self._predict(loo, h, top) == w
        return nll, len(cap), correct

    def scores(self) -> BaselineScores:
        nll = targets = correct = 0
        for i in range(len(self.captions)):
            a, b, c = self.caption_scores(i)
            nll, targets, correct = nll + a, targets + b, correct + c
        return BaselineScores(correct / max(targets, 1), nll / max(targets, 1), targets)


def most_frequent_token_accuracy(captions: list[list[int]]) -> float:
    """Accuracy of always predicting the most frequent target token of the set (in-sample)."""
    counts = Counter(t for c in captions for t in c)
    total = sum(counts.values())
    return counts.most_common(1)[0][1] / total if total else 0.0
