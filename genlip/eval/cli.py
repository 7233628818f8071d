"""genlip-eval: evaluate a GenLIP model on held-out data.

    genlip-eval loss     MODEL DATA...                  caption loss + token accuracy vs image-blind baselines
    genlip-eval caption  MODEL DATA...                  greedy captions, CIDEr and BLEU-4
    genlip-eval zeroshot MODEL DATA... --classes FILE   classification by caption likelihood
    genlip-eval probe    MODEL TRAIN... [--test DATA...] attentive + linear probes on frozen patch features

MODEL: an exported model.safetensors (+ model.json), a directory holding one, a run or checkpoint
directory, or the authors' Hugging Face layout. DATA: shard directories (`genlip-data build`),
webdataset tars / JSONL / CSV / Parquet files (or directories of them), or ImageFolder trees
(ROOT/CLASS/*.jpg: the folder name is the label). Data parallel: `torchrun --nproc_per_node N -m
genlip.eval.cli ...` splits the samples over the ranks (gloo) and gives the same numbers as one process.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from genlip.errors import UserError, cli_main

# torch and the evaluation code load after the arguments are parsed: --help and usage errors answer at once.

def _common(ap: argparse.ArgumentParser, *, data_required: bool = True) -> None:
    ap.add_argument("model", type=Path, help="model file or directory (export, run, checkpoint, authors' layout)")
    ap.add_argument("data", nargs="+" if data_required else "*", type=Path,
                    help="shard directories, .tar/.jsonl/.csv/.parquet files or directories, ImageFolder trees")
    ap.add_argument("--tokenizer", type=Path, default=None,
                    help="tokenizer file (default: the model's, else the first shard directory's)")
    ap.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples (default: all)")
    ap.add_argument("--image-size", type=int, default=224,
                    help="raw images: resize + center-crop to this side (as stage-1 training); shards keep theirs")
    ap.add_argument("--native", action="store_true",
                    help="raw images: keep the aspect ratio (stage 2) instead of a fixed square")
    ap.add_argument("--min-patches", type=int, default=16, help="with --native: fewest patches per image")
    ap.add_argument("--max-patches", type=int, default=1024, help="with --native: most patches per image")
    ap.add_argument("--caption-field", default="caption", help="raw inputs: JSON field / column of the caption")
    ap.add_argument("--image-column", default="image", help="tables: column with the image path or bytes")
    ap.add_argument("--label-field", default=None,
                    help="raw inputs: JSON field / column of the class label (`cls`: a tar's KEY.cls)")
    ap.add_argument("--prompt", default=None,
                    help="prompt text (default: the dataset's for shards, the stage-1 prompt for raw inputs)")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (cuda:LOCAL_RANK when available)")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="model compute dtype")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="genlip-eval", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="task", required=True, metavar="TASK")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    p = sub.add_parser("loss", formatter_class=fmt, help="held-out caption loss and token accuracy vs baselines",
                       description="Token-mean caption loss and next-token accuracy over every caption + end "
                                   "target, beside an image-blind leave-one-out trigram of the same captions and "
                                   "the most-frequent-token accuracy (see genlip/eval/ngram.py).")
    _common(p)
    p.add_argument("--row-tokens", type=int, default=1024, help="token slots per packed row")
    p.add_argument("--no-baseline", action="store_true", help="skip the n-gram baseline")

    p = sub.add_parser("caption", formatter_class=fmt, help="greedy captions, CIDEr and BLEU-4",
                       description="Greedy captions (KV cache, stop at the end marker) scored against the "
                                   "reference captions with CIDEr-D and BLEU-4 (pycocoevalcap scorers, simple "
                                   "lowercase/no-punctuation tokenization).")
    _common(p)
    p.add_argument("--max-new-tokens", type=int, default=256, help="longest generated caption")
    p.add_argument("--batch-size", type=int, default=16, help="images decoded together")
    p.add_argument("--predictions", type=Path, default=None,
                   help="JSONL of key, prediction, references (default: next to --out as *.predictions.jsonl)")

    p = sub.add_parser("zeroshot", formatter_class=fmt, help="classification by caption likelihood",
                       description="Each image is scored against every class caption (class names in templates); "
                                   "score = log of the template-averaged probability of caption + end tokens "
                                   "given image + prompt.")
    _common(p)
    p.add_argument("--classes", type=Path, required=True,
                   help='JSON/YAML {"classes": [...], "templates": [...], "labels": [...]} or .txt (one per line)')
    p.add_argument("--batch-size", type=int, default=8, help="images per cached prefill")
    p.add_argument("--max-rows", type=int, default=256, help="(image, candidate) rows per continuation pass")
    p.add_argument("--no-cache", action="store_true",
                   help="score every [image][prompt][caption] with a full forward (the slow reference)")
    p.add_argument("--predictions", type=Path, default=None, help="JSONL of key, label, top-5 classes")

    p = sub.add_parser("probe", formatter_class=fmt, help="attentive and linear probes on frozen patch features",
                       description="Frozen final-LN patch features; an attentive probe (learned-query "
                                   "cross-attention + linear, AdamW) and a linear probe (logistic regression on "
                                   "mean-pooled features), trained on the training data, reported on the test data.")
    _common(p, data_required=False)
    p.add_argument("--train", nargs="+", type=Path, default=[], help="training data (or give it positionally)")
    p.add_argument("--test", nargs="+", type=Path, default=[],
                   help="held-out data (default: a per-class --test-fraction of the training data)")
    p.add_argument("--test-fraction", type=float, default=0.25, help="held-out share when --test is not given")
    p.add_argument("--cache", type=Path, default=None, help="feature cache directory (keyed by weights + data)")
    p.add_argument("--seed", type=int, default=0, help="probe initialisation, shuffling and split")
    p.add_argument("--epochs", type=int, default=None, help="attentive probe epochs (default: 50)")
    p.add_argument("--lr", type=float, default=None, help="attentive probe learning rate (default: 3e-3)")
    p.add_argument("--no-attentive", action="store_true", help="skip the attentive probe")
    p.add_argument("--no-linear", action="store_true", help="skip the linear probe")
    return ap


def _device(name: str):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(name)


def _input_options(args):
    from genlip.data.images import ImageMode
    from genlip.data.sources import SourceOptions
    from genlip.eval.inputs import InputOptions

    kind = "native" if args.native else "fixed"
    mode = ImageMode(kind=kind, size=args.image_size, min_patches=args.min_patches, max_patches=args.max_patches)
    try:
        mode.validate()
    except ValueError as e:
        raise UserError(f"--image-size / --native: {e}") from None
    return InputOptions(image_mode=mode, source=SourceOptions(caption_field=args.caption_field,
                                                              image_column=args.image_column),
                        label_field=args.label_field, prompt=args.prompt, limit=args.limit)


def _tokenizer(args, loaded, paths: list[Path]):
    from genlip.data.tokenizer import Tokenizer
    from genlip.eval.inputs import dataset_tokenizer

    path = args.tokenizer or loaded.tokenizer or dataset_tokenizer(paths)
    if path is None:
        return None
    if not Path(path).is_file():
        raise UserError(f"tokenizer {path} does not exist")
    try:
        return Tokenizer(path)
    except (ValueError, RuntimeError, OSError) as e:
        raise UserError(f"tokenizer {path} cannot be used: {e}") from None


def run(args, group) -> dict:
    import torch

    from genlip.eval.inputs import EvalData
    from genlip.weights import load_model

    progress = not args.quiet
    paths = list(args.data) + list(getattr(args, "train", []))
    loaded = load_model(args.model, device=_device(args.device),
                        dtype=torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    model = loaded.model
    tok = _tokenizer(args, loaded, paths + list(getattr(args, "test", [])))
    if tok is None and args.task != "probe":
        raise UserError(f"{args.task} needs a tokenizer: pass --tokenizer (the model at {args.model} names none "
                             "and no shard directory was given)")
    if tok is not None and tok.vocab_size > loaded.config.vocab_size:
        raise UserError(f"tokenizer {tok.path} has {tok.vocab_size} tokens, more than the model's vocabulary "
                             f"({loaded.config.vocab_size}); it is not the tokenizer this model was trained with")
    opts = _input_options(args)
    patch = loaded.config.patch_size
    header = {"model": loaded.source, "tokenizer": str(tok.path) if tok else None}

    def data(p, keep=None):
        return EvalData(p, tokenizer=tok, options=opts, patch_size=patch, keep=keep)

    if args.task == "loss":
        from genlip.eval.loss import run_loss

        return header | {"data": list(map(str, paths))} | run_loss(
            model, data(paths), group, row_tokens=args.row_tokens, baseline=not args.no_baseline, progress=progress)
    if args.task == "caption":
        from genlip.eval.caption import run_caption

        return header | {"data": list(map(str, paths))} | run_caption(
            model, data(paths), group, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            progress=progress)
    if args.task == "zeroshot":
        from genlip.eval.zeroshot import load_classes, run_zeroshot

        spec = load_classes(args.classes)
        return header | {"data": list(map(str, paths)), "classes_file": str(args.classes)} | run_zeroshot(
            model, data(paths), spec, group, cached=not args.no_cache, batch_size=args.batch_size,
            max_rows=args.max_rows, progress=progress)
    return header | _probe(args, model, data, paths, group, progress)


def _probe(args, model, data, paths: list[Path], group, progress: bool) -> dict:
    from genlip.eval.features import cached_features, weights_digest
    from genlip.eval.inputs import need_labels
    from genlip.eval.probe import ProbeOptions, run_probes, split_by_fraction, subset

    if not paths:
        raise UserError("probe needs training data: give it positionally or with --train")
    digest = weights_digest(model) if args.cache else None
    labelled = need_labels("probe")
    cache = {}
    train, cache["train"] = cached_features(model, data(paths, labelled), group, args.cache, model_digest=digest,
                                            progress=progress, desc="train features")
    if args.test:
        test, cache["test"] = cached_features(model, data(args.test, labelled), group, args.cache,
                                              model_digest=digest, progress=progress, desc="test features")
        split = "given"
    else:
        tr, te = split_by_fraction(train.keys, train.labels, args.test_fraction, args.seed)
        train, test = subset(train, tr), subset(train, te)
        split = f"{args.test_fraction:g} of each class held out (seed {args.seed})"
    given = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}
    popts = ProbeOptions(seed=args.seed, **given)
    result = run_probes(train, test, popts, attentive=not args.no_attentive, linear=not args.no_linear,
                        progress=progress and group.is_main)
    return {"data": list(map(str, paths)), "test_data": list(map(str, args.test)), "split": split,
            "cache": cache} | result


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def summary(r: dict) -> str:
    """The human-readable lines printed for a result."""
    task = r["task"]
    left = f" (left out: {r['left_out']})" if r.get("left_out") else ""
    if task == "loss":
        lines = [f"loss {r['loss']:.4f} nats/token, token accuracy {_pct(r['accuracy'])} over {r['targets']} "
                 f"targets of {r['images']} images{left}"]
        if "ngram_loss" in r:
            lines.append(f"image-blind trigram baseline (leave-one-out): loss {r['ngram_loss']:.4f}, accuracy "
                         f"{_pct(r['ngram_accuracy'])}; most frequent token: {_pct(r['most_frequent_token_accuracy'])}")
        return "\n".join(lines)
    if task == "caption":
        lines = [f"{r['images']} captions{left}"]
        if r["with_references"]:
            lines.append(f"CIDEr {r['cider']:.3f}  BLEU-4 {r['bleu4']:.3f}  exact match {_pct(r['exact_match'])} "
                         f"({r['with_references']} images with references)")
        for p in r["predictions"][:3]:
            ref = f"  (reference: {p['references'][0]})" if p["references"] else ""
            lines.append(f"  {p['key']}: {p['prediction']}{ref}")
        return "\n".join(lines)
    if task == "zeroshot":
        top5 = f", top-5 {_pct(r['top5'])} (chance {_pct(r['chance_top5'])})" if r["top5"] is not None else ""
        return (f"zero-shot top-1 {_pct(r['top1'])} (chance {_pct(r['chance_top1'])}){top5}, mean per-class "
                f"{_pct(r['mean_per_class'])}; {r['images']} images, {r['classes']} classes, {r['templates']} "
                f"template(s){left}\nper class: " + ", ".join(f"{k} {_pct(v)}" for k, v in r["per_class"].items()))
    parts = []
    if "attentive_top1" in r:
        parts.append(f"attentive probe {_pct(r['attentive_top1'])} (train {_pct(r['attentive_train_top1'])})")
    if "linear_top1" in r:
        parts.append(f"linear probe {_pct(r['linear_top1'])} (train {_pct(r['linear_train_top1'])})")
    cached = [f"{name} features from {c['cache']}" for name, c in r.get("cache", {}).items() if c.get("cache_hit")]
    return (", ".join(parts) + f"; chance {_pct(r['chance'])}; {r['classes']} classes, {r['train_images']} train / "
            f"{r['test_images']} test images" + (f" ({'; '.join(cached)})" if cached else ""))


def _write_outputs(args, result: dict) -> None:
    rows = result.pop("predictions", None)
    pred_path = getattr(args, "predictions", None)
    if pred_path is None and args.out is not None and args.task == "caption":
        pred_path = args.out.with_name(args.out.stem + ".predictions.jsonl")
    if rows is not None and pred_path is not None:
        from genlip.eval.caption import write_predictions

        result["predictions_file"] = str(write_predictions(pred_path, rows))
    if args.out is not None:
        from genlip.atomic import atomic_write_json

        args.out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out, result)


def _main(args) -> int:
    import torch

    from genlip.eval.dist import init_from_env

    group, created = init_from_env()
    prefix = f"genlip-eval {args.task}" + (f" [rank {group.rank}]" if group.world > 1 else "")
    try:
        result = run(args, group)
    except UserError as e:
        print(f"{prefix}: error: {e}", file=sys.stderr)
        return 2
    if group.is_main:
        print(summary(result))
        _write_outputs(args, result)
        if args.out is not None:
            print(f"results: {args.out}")
    group.barrier()
    if created:
        torch.distributed.destroy_process_group()
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return cli_main(f"genlip-eval {args.task}", lambda: _main(args))


if __name__ == "__main__":
    sys.exit(main())
