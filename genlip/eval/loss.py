"""Held-out caption loss and next-token accuracy over a whole evaluation set, beside image-blind baselines.

loss = (sum over every caption + end target of the set of -log p(target)) / (number of targets): a
token mean over the whole set, independent of batching and of the number of ranks. Accuracy: the
fraction of targets that are the model's most likely token (teacher forcing). Baselines
(`genlip.eval.ngram`): a leave-one-out interpolated trigram over the evaluated captions (knows the
caption grammar and typical openings, not the image) and the most frequent target token.
"""

from __future__ import annotations

from genlip.eval.batching import Sequence, score_sequences
from genlip.eval.dist import EvalGroup
from genlip.eval.inputs import EvalData, EvalInputError, need_captions
from genlip.eval.ngram import NgramBaseline, most_frequent_token_accuracy


def run_loss(model, data: EvalData, group: EvalGroup, *, row_tokens: int = 1024, baseline: bool = True,
             progress: bool = True) -> dict:
    """Loss, accuracy and baselines over every sample of `data` (same result on every rank)."""
    if data.tokenizer is None:
        raise EvalInputError("loss needs a tokenizer (--tokenizer, or a model exported with one)")
    data.keep = need_captions
    mine: dict[int, tuple[float, int, int]] = {}
    for chunk in data.chunks(group, desc="loss", progress=progress):
        seqs = [Sequence(s.pixels, s.grid, s.prompt, s.text) for s in chunk]
        for s, r in zip(chunk, score_sequences(model, seqs, row_tokens=row_tokens)):
            mine[s.index] = (r.nll, r.targets, r.correct)
    per_sample = group.gather_indexed(mine)
    left_out = data.left_out_counts(group)
    if not per_sample:
        raise EvalInputError(f"loss: no captioned images in {', '.join(map(str, data.paths))} "
                             f"(left out: {left_out or 'none'})")
    nll = sum(v[0] for v in per_sample.values())  # summed in global sample order: rank-count independent
    targets = sum(v[1] for v in per_sample.values())
    correct = sum(v[2] for v in per_sample.values())
    result = {"task": "loss", "images": len(per_sample), "left_out": left_out, "targets": targets,
              "loss": nll / targets, "accuracy": correct / targets}
    if baseline:
        captions = [data.samples[i].text for i in per_sample]
        ngram = NgramBaseline(captions, data.tokenizer.vocab_size).scores()
        result.update({"ngram_loss": ngram.loss, "ngram_accuracy": ngram.accuracy,
                       "most_frequent_token_accuracy": most_frequent_token_accuracy(captions)})
    return result

