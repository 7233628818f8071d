"""CIDEr and BLEU-4 of generated captions against references, with the COCO caption scorers.

The scorers are pycocoevalcap's `Bleu` and `Cider` (pure Python; the COCO evaluation server's code).
Its PTBTokenizer needs Java, so captions are tokenized here instead, deterministically: lowercase,
every character that is not a letter, digit or whitespace replaced by a space, split on whitespace.
CIDEr is pycocoevalcap's CIDEr-D variant (n = 1..4, sigma = 6, x10), with document frequencies
from the evaluated references, as on the COCO server; it is a corpus-level score, so subsets of
different sizes are not comparable. BLEU-4 is the corpus BLEU with the "closest" reference length.
"""

from __future__ import annotations

import re

_NON_WORD = re.compile(r"[^\w\s]|_", re.UNICODE)


def tokenize_caption(text: str) -> str:
    """Lowercase, punctuation to spaces, single spaces: 'A red Circle.' -> 'a red circle'."""
    return " ".join(_NON_WORD.sub(" ", text.lower()).split())


def caption_scores(predictions: list[str], references: list[list[str]]) -> dict[str, float]:
    """{"cider", "bleu4"} of predictions (one per image) against each image's references."""
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
    except ImportError:  # pragma: no cover - an install without the project's requirements
        raise ImportError("CIDEr/BLEU need the pycocoevalcap package: pip install pycocoevalcap") from None
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference sets")
    if not predictions:
        return {"cider": float("nan"), "bleu4": float("nan")}
    res = {i: [tokenize_caption(p)] for i, p in enumerate(predictions)}
    gts = {i: [tokenize_caption(r) for r in refs] for i, refs in enumerate(references)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"cider": float(cider), "bleu4": float(bleu[3])}
