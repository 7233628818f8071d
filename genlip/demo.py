"""genlip-demo: the whole system on a small embedded default, with no network and no downloads.

1. Renders captioned scenes (coloured shapes at named positions, written words; captions exact) into
   img2dataset-style tar shards, plus a held-out set from another seed.
2. Trains a sentencepiece tokenizer and builds indexed shards with `genlip-data`.
3. Trains the `small` GenLIP with 2 processes (data parallel with DeepSpeed ZeRO-1 over megatron-core
   layers by default; `--tp 2` splits the model instead) with `genlip-train`, logging to TensorBoard.
4. Evaluates with `genlip.eval` (the library behind `genlip-eval`): greedy captions of held-out images
   beside their true captions, next-token accuracy against image-blind baselines (the most frequent
   token; a leave-one-out trigram of the captions), zero-shot colour classification by caption
   likelihood against chance, and attentive / linear probes on frozen patch features (the trained model
   against the same model at its random initialisation); then where the logs and the loss-curve PNG are.
About 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from genlip.errors import UserError, cli_main

# torch and the evaluation code load after the arguments are checked (`--help` answers at once).

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "run_scripts" / "configs" / "demo.yaml"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="genlip-demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/demo"), help="working directory (data, run, plots)")
    ap.add_argument("--train-images", type=int, default=8000, help="rendered training scenes")
    ap.add_argument("--held-out", type=int, default=200, help="rendered held-out scenes (another seed)")
    ap.add_argument("--image-size", type=int, default=96, help="image side in pixels (a multiple of 16)")
    ap.add_argument("--samples", type=float, default=36000, help="training samples (the schedule length)")
    ap.add_argument("--nproc", type=int, default=2, help="training processes")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size (the rest is data parallel, ZeRO-1)")
    ap.add_argument("--examples", type=int, default=8, help="held-out captions to print")
    ap.add_argument("--fresh", action="store_true", help="delete --out first (otherwise finished steps are reused)")
    return ap


def _run(cmd: list[str], what: str, env=None) -> None:
    print(f"\n$ {' '.join(map(str, cmd))}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], env=env)
    if proc.returncode != 0:
        raise SystemExit(f"genlip-demo: {what} failed (exit {proc.returncode})")
    print(f"[{what}: {time.perf_counter() - t0:.0f}s]", flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return cli_main("genlip-demo", lambda: _demo(args))


def _check(args) -> None:
    if args.image_size % 16 or args.image_size < 32:
        raise UserError(f"--image-size {args.image_size} must be a multiple of 16, at least 32")
    for name in ("train_images", "held_out", "samples", "nproc", "tp"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name)} must be at least 1")
    if args.nproc % args.tp:
        raise UserError(f"--nproc {args.nproc} is not a multiple of --tp {args.tp}")
    if not DEMO_CONFIG.is_file():
        raise UserError(f"{DEMO_CONFIG} is missing (install the repository with run_scripts/install.sh)")


def _demo(args) -> int:
    _check(args)
    from genlip.data.synthetic import score_captions, write_webdataset_shards
    from genlip.data.tokenizer import Tokenizer
    from genlip.eval.caption import run_caption
    from genlip.eval.dist import EvalGroup
    from genlip.eval.inputs import EvalData
    from genlip.eval.loss import run_loss
    from genlip.eval.loss_curve import plot_loss_curve
    from genlip.weights import load_model

    out = args.out.resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    t_start = time.perf_counter()
    raw, raw_val = out / "raw", out / "raw_val"
    if not raw.exists():
        print(f"rendering {args.train_images} training and {args.held_out} held-out scenes ({args.image_size} px)")
        write_webdataset_shards(raw, num_samples=args.train_images, samples_per_shard=1000, seed=0, size=args.image_size)
        write_webdataset_shards(raw_val, num_samples=args.held_out, samples_per_shard=1000, seed=1, size=args.image_size)
    data_cli = [sys.executable, "-m", "data_tools.cli"]
    tok = out / "tokenizer.model"
    if not tok.exists():
        _run(data_cli + ["tokenizer", raw, "--out", tok, "--vocab-size", "300", "--model-type", "bpe"], "tokenizer")
    for name, src in (("train", raw), ("val", raw_val)):
        _run(data_cli + ["build", src, "--out", out / name, "--tokenizer", tok, "--image-size", str(args.image_size),
                         "--num-workers", "2"], f"build {name} shards")

    run_dir = out / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR=os.environ.get("DS_ACCELERATOR", "cpu"))
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.nproc}",
                f"--master_port={_free_port()}"] if args.nproc > 1 else [sys.executable]
    _run(launcher + ["-m", "genlip.train.trainer", DEMO_CONFIG, f"data.datasets=[{out / 'train'}]",
                     f"data.val_datasets=[{out / 'val'}]", f"train.output_dir={run_dir}",
                     f"train.total_samples={args.samples}", f"parallel.tp={args.tp}"], "training", env=env)

    t_eval = time.perf_counter()
    print("\n=== evaluation (genlip.eval) ===", flush=True)
    loaded = load_model(run_dir)
    model, group = loaded.model, EvalGroup()
    tokenizer = Tokenizer(tok)
    print(f"held-out loss and greedy captions of {args.held_out} images", flush=True)
    loss = run_loss(model, EvalData([out / "val"], tokenizer=tokenizer), group, progress=True)
    captions = run_caption(model, EvalData([out / "val"], tokenizer=tokenizer), group, max_new_tokens=48,
                           progress=True)["predictions"]
    predicted, truth = [c["prediction"] for c in captions], [c["references"][0] for c in captions]
    zeroshot, probes = _zeroshot_and_probes(model, loaded.config, out, tokenizer, args.image_size)
    seen = _captions_of(raw)
    png = plot_loss_curve(run_dir, out / "loss_curve.png")

    print("\n=== held-out images (never seen in training): greedy captions ===")
    for i in range(min(args.examples, len(truth))):
        mark = "OK " if predicted[i].strip() == truth[i].strip() else "   "
        print(f"{mark}true: {truth[i]}\n   pred: {predicted[i]}")
    print(f"\nnext-token accuracy on held-out captions: {100 * loss['accuracy']:.1f}% (image-blind baselines: "
          f"a trigram of the other captions {100 * loss['ngram_accuracy']:.1f}%, always the most frequent token "
          f"{100 * loss['most_frequent_token_accuracy']:.1f}%)")
    print(f"held-out caption loss: {loss['loss']:.3f} nats/token (trigram baseline: {loss['ngram_loss']:.3f})")
    right = [t for p, t in zip(predicted, truth) if p.strip() == t.strip()]
    novel = [t for t in truth if t.strip() not in seen]
    novel_right = sum(t.strip() not in seen for t in right)
    print(f"exactly right captions: {100 * len(right) / len(truth):.1f}% of {len(truth)} ({len(right) - novel_right} "
          f"of these {len(right)} are captions that also occur in training; on the {len(novel)} held-out captions "
          f"never seen in training: {novel_right} right)")
    scores = score_captions(predicted, truth)
    print("attributes right in greedy captions (chance in brackets): " + ", ".join(
        f"{k} {100 * a:.0f}% ({100 * c:.0f}%)" for k, (a, c) in scores.items()))
    print(f"zero-shot colour classification by caption likelihood: {100 * zeroshot['top1']:.1f}% "
          f"(chance {100 * zeroshot['chance_top1']:.1f}%; {zeroshot['images']} one-object images, "
          f"{zeroshot['classes']} colours)")
    print("probes on frozen patch features, colour of one object (chance "
          f"{100 * probes['trained']['chance']:.1f}%): " + "; ".join(
              f"{name}: attentive {100 * r['attentive_top1']:.1f}%, linear {100 * r['linear_top1']:.1f}%"
              for name, r in probes.items()))
    print(f"[evaluation: {time.perf_counter() - t_eval:.0f}s]")
    print(f"TensorBoard: tensorboard --logdir {run_dir / 'tb'}")
    print(f"loss curve: {png}")
    print(f"model: {run_dir / 'model.safetensors'} (+ .json config)")
    print(f"total time: {time.perf_counter() - t_start:.0f}s")
    return 0


def _captions_of(raw: Path) -> set[str]:
    """Every caption of the rendered training shards (to tell recalled captions from new ones)."""
    from genlip.data.sources import SourceOptions, expand_inputs, iter_source

    return {s.caption.strip() for p in expand_inputs([str(raw)])
            for s in iter_source(p, SourceOptions(), captions_only=True) if getattr(s, "caption", None)}


def _zeroshot_and_probes(model, cfg, out: Path, tokenizer, size: int) -> tuple[dict, dict]:
    """Zero-shot colour classification, and colour probes for the trained and a random-init model."""
    from genlip.atomic import atomic_write_json
    from genlip.data.images import ImageMode
    from genlip.data.synthetic import class_templates, write_imagefolder
    from genlip.eval.dist import EvalGroup
    from genlip.eval.features import extract_features
    from genlip.eval.inputs import EvalData, InputOptions
    from genlip.eval.probe import ProbeOptions, run_probes, split_by_fraction, subset
    from genlip.eval.zeroshot import ClassSpec, run_zeroshot
    from genlip.model import build_model

    group, opts = EvalGroup(), InputOptions(image_mode=ImageMode(size=size))
    # Large objects at the center, any shape: 5 templates ("a large {} <shape> at the center.") instead of 90.
    fixed = {"position": "center", "size": "large"}
    zs_dir = out / "zeroshot_colour"
    if not zs_dir.exists():
        write_imagefolder(zs_dir, attribute="colour", per_class=6, seed=2, size=size, fixed=fixed)
    spec = ClassSpec(sorted(p.name for p in zs_dir.iterdir()), class_templates("colour", fixed))
    atomic_write_json(out / "colour_classes.json", {"classes": spec.classes, "templates": spec.templates})
    print(f"zero-shot colour classification of {sum(1 for _ in zs_dir.rglob('*.*'))} images", flush=True)
    zeroshot = run_zeroshot(model, EvalData([zs_dir], tokenizer=tokenizer, options=opts), spec, group, progress=True)
    probe_dir = out / "probe_colour"
    if not probe_dir.exists():
        write_imagefolder(probe_dir, attribute="colour", per_class=30, seed=3, size=size)
    probes = {}
    for name, m in (("trained", model), ("random init", build_model(cfg, seed=0).eval())):
        print(f"attentive and linear colour probes on the {name} model's features", flush=True)
        fs = extract_features(m, EvalData([probe_dir], tokenizer=None, options=opts), group, progress=False)
        train, test = split_by_fraction(fs.keys, fs.labels, 0.25, seed=0)
        probes[name] = run_probes(subset(fs, train), subset(fs, test), ProbeOptions())
    return zeroshot, probes


if __name__ == "__main__":
    sys.exit(main())
