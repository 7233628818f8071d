"""Evaluation during training: `run_evals(model, spec, tokenizer_path=..., group=...)` -> flat metrics.

Runs the chosen evaluations on a plain (single-process) GenLIP, on every rank of a torch.distributed
group (or alone), each rank evaluating its share of the samples; every rank returns the same numbers.
Metric names are "eval/<task>/<metric>", e.g. eval/loss/loss, eval/loss/accuracy,
eval/loss/ngram_accuracy, eval/caption/cider, eval/caption/bleu4, eval/zeroshot/top1,
eval/zeroshot/top5, eval/probe/attentive_top1, eval/probe/linear_top1. The model's train/eval mode
is restored afterwards; no feature cache is used (the weights change between calls).

Results are gathered with `all_gather_object`: a gloo group is the simplest choice (with NCCL, each rank
must have set its CUDA device). Every rank of the group must call `run_evals` with the same spec.
"""

from __future__ import annotations

from pathlib import Path

from genlip.data.images import ImageMode
from genlip.data.tokenizer import Tokenizer
from genlip.eval.dist import group_of
from genlip.eval.inputs import EvalData, InputOptions, need_labels
from genlip.eval.spec import TASKS, EvalSpec  # noqa: F401  (re-exported)

def run_evals(model, spec: EvalSpec, *, tokenizer_path: str | Path | None, group=None,
              progress: bool = False) -> dict[str, float]:
    """Every evaluation of `spec` on `model`; {metric name: value} (identical on all ranks of `group`)."""
    spec.validate()
    g = group_of(group)
    tok = Tokenizer(tokenizer_path) if tokenizer_path else None
    patch = model.cfg.patch_size
    opts = InputOptions(image_mode=ImageMode(size=spec.image_size, patch_size=patch), label_field=spec.label_field,
                        limit=spec.max_samples)

    def data(paths, keep=None):
        return EvalData(paths, tokenizer=tok, options=opts, patch_size=patch, keep=keep)

    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    try:
        for task in spec.probes:
            out.update({f"eval/{task}/{k}": v for k, v in _run(task, model, spec, data, g, progress).items()})
    finally:
        model.train(was_training)
    return out


def _run(task, model, spec: EvalSpec, data, g, progress) -> dict[str, float]:
    if task == "loss":
        from genlip.eval.loss import run_loss

        r = run_loss(model, data(spec.loss_data), g, progress=progress)
        return {k: r[k] for k in ("loss", "accuracy", "ngram_loss", "ngram_accuracy")}
    if task == "caption":
        from genlip.eval.caption import run_caption

        r = run_caption(model, data(spec.caption_data or spec.loss_data), g, max_new_tokens=spec.max_new_tokens,
                        progress=progress)
        return {k: r[k] for k in ("cider", "bleu4", "exact_match") if r[k] is not None}
    if task == "zeroshot":
        from genlip.eval.zeroshot import load_classes, run_zeroshot

        r = run_zeroshot(model, data(spec.zeroshot_data), load_classes(spec.classes), g, progress=progress)
        return {k: r[k] for k in ("top1", "top5", "mean_per_class") if r[k] is not None}
    from genlip.eval.features import extract_features
    from genlip.eval.probe import ProbeOptions, run_probes, split_by_fraction, subset

    train = extract_features(model, data(spec.probe_train, need_labels("probe")), g, progress=progress)
    if spec.probe_test:
        test = extract_features(model, data(spec.probe_test, need_labels("probe")), g, progress=progress)
    else:
        tr, te = split_by_fraction(train.keys, train.labels, spec.probe_test_fraction, spec.seed)
        train, test = subset(train, tr), subset(train, te)
    r = run_probes(train, test, ProbeOptions(seed=spec.seed, epochs=spec.probe_epochs))
    return {k: r[k] for k in ("attentive_top1", "linear_top1")}
