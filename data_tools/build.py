"""genlip-data build: raw tar / JSONL / CSV / Parquet files -> a tokenized shard directory.

One output shard per input file, named after it. Shards already finished (their NAME.done.json is
present) are skipped, so a killed run is finished by rerunning the same command. `--shard-index I
--num-shard-groups N` takes every N-th input from the I-th, so the tasks of a SLURM array split the
work with no coordination; the task that finds every shard done writes manifest.json.
Bad samples never stop a run: each is skipped and counted by reason (with a few example keys), including
images over the --max-image-* limits, which are checked before an image is read or decoded. A run that
yields no sample at all is an error and writes no manifest.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shlex
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from hashlib import blake2b
from pathlib import Path

from tqdm import tqdm

from genlip.atomic import atomic_write, atomic_write_json
from genlip.data.images import BadImage, ImageLimits, ImageMode, encode_image, load_image, resize_for_mode
from genlip.data.shards import FORMAT, SCHEMA_VERSION, ShardWriter
from genlip.data.sources import (InputError, RawSample, SourceOptions, Skip, check_input, expand_inputs,
                                 iter_source)
from genlip.data.tokenizer import STAGE1_PROMPT, Tokenizer, file_sha256

EXAMPLES_PER_REASON = 5


@dataclass
class BuildOptions:
    """Everything that determines the output bytes (recorded in the manifest)."""

    image: ImageMode = field(default_factory=ImageMode)
    source: SourceOptions = field(default_factory=SourceOptions)
    limits: ImageLimits = field(default_factory=ImageLimits)
    prompt: str = STAGE1_PROMPT
    max_text_tokens: int = 1024
    tokenizer_file: str = "tokenizer.model"

    def to_dict(self) -> dict:
        return {"image": self.image.to_dict(), "source": asdict(self.source), "limits": asdict(self.limits),
                "prompt": self.prompt,
                "max_text_tokens": self.max_text_tokens, "tokenizer_file": self.tokenizer_file}


def key_hash(source: str, key: str) -> int:
    return int.from_bytes(blake2b(f"{source}/{key}".encode(), digest_size=8).digest(), "little")


def _process(sample: RawSample, tok: Tokenizer, opts: BuildOptions):
    """(image bytes, grid, text ids, prompt ids) or a skip reason."""
    if sample.image is None:
        return "missing_image"
    if sample.caption is None:
        return "missing_caption"
    text = tok.encode(sample.caption)
    if not text:
        return "empty_caption"
    if len(text) > opts.max_text_tokens:
        return "caption_too_long"
    try:
        img = resize_for_mode(load_image(sample.image, opts.limits), opts.image)
    except BadImage as e:
        return e.reason
    p = opts.image.patch_size
    prompt = tok.encode(sample.instruction) if sample.instruction else []
    return encode_image(img, opts.image), (img.size[1] // p, img.size[0] // p), text + tok.end_ids, prompt


def build_shard(input_path: Path, name: str, out: Path, opts: BuildOptions, progress=None) -> dict:
    """Write shard `name` from one input file; returns its record. Reuses a finished shard."""
    shard_dir = out / "shards"
    done = shard_dir / f"{name}.done.json"
    if done.is_file():
        return load_json(done)
    tok = Tokenizer(out / opts.tokenizer_file)
    with_prompts = opts.source.instruction_field is not None
    writer = ShardWriter(shard_dir, name, vocab_size=tok.vocab_size, with_prompts=with_prompts)
    skipped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    seen: set[str] = set()
    pending = reported_skips = 0
    try:
        for item in iter_source(input_path, opts.source, limits=opts.limits):
            result = item.reason if isinstance(item, Skip) else None
            if result is None:
                result = "duplicate_key" if item.key in seen else _process(item, tok, opts)
                seen.add(item.key)
            if isinstance(result, str):
                skipped[result] += 1
                examples.setdefault(result, [])
                if len(examples[result]) < EXAMPLES_PER_REASON:
                    examples[result].append(f"{name}/{item.key}")
            else:
                image, grid, text, prompt = result
                writer.add(key_hash=key_hash(name, item.key), image=image, grid=grid, text_ids=text,
                           prompt_ids=prompt)
            pending += 1
            if progress is not None and pending >= 64:
                total_skips = sum(skipped.values())
                progress.put((pending, total_skips - reported_skips))
                pending, reported_skips = 0, total_skips
        record = writer.finish({"source": input_path.name,
                                "skipped": {r: {"count": c, "examples": examples[r]} for r, c in sorted(skipped.items())}})
    except BaseException:
        writer.abort()
        raise
    if progress is not None:
        progress.put((pending, sum(skipped.values()) - reported_skips))
        progress.put(None)  # this shard is finished
    return record


def load_json(path: Path) -> dict:
    return json.loads(path.read_text())


def _worker(args):
    input_path, name, out, opts, queue = args
    return build_shard(input_path, name, out, opts, queue)


def prepare_output(out: Path, tokenizer: Path, opts: BuildOptions) -> None:
    """Create the output directory, copy the tokenizer, and refuse a directory built differently."""
    (out / "shards").mkdir(parents=True, exist_ok=True)
    dest = out / opts.tokenizer_file
    if dest.exists():
        if file_sha256(dest) != file_sha256(tokenizer):
            raise InputError(f"{dest} differs from --tokenizer {tokenizer}: this directory was built with another "
                             "tokenizer; use a new output directory")
    else:  # array tasks get here at the same time: each writes its own temporary, the renames are atomic
        atomic_write(dest, tokenizer.read_bytes())
    options = out / "build_options.json"
    if options.exists():
        if load_json(options) != opts.to_dict():
            raise InputError(f"{out} was started with different build options ({options}); use a new output "
                             "directory or the same options")
    else:
        atomic_write_json(options, opts.to_dict())


def shard_names(inputs: list[Path]) -> list[str]:
    names = [p.name.removesuffix(p.suffix) for p in inputs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"several inputs share the shard name(s) {dupes}; shard names come from input file "
                         "names, so give them distinct names")
    return names


def write_manifest(out: Path, names: list[str], opts: BuildOptions, command: str) -> dict | None:
    """Assemble manifest.json once every shard is done (None if some are still missing)."""
    records = []
    for name in names:
        done = out / "shards" / f"{name}.done.json"
        if not done.is_file():
            return None
        records.append(load_json(done))
    skipped: dict[str, dict] = {}
    for rec in records:
        for reason, info in rec["skipped"].items():
            agg = skipped.setdefault(reason, {"count": 0, "examples": []})
            agg["count"] += info["count"]
            agg["examples"] = (agg["examples"] + info["examples"])[:EXAMPLES_PER_REASON]
    if not any(rec["samples"] for rec in records):
        for name in names:  # not finished: a rerun after fixing the inputs reads them again
            (out / "shards" / f"{name}.done.json").unlink(missing_ok=True)
        raise InputError(_no_samples_message([rec["source"] for rec in records], skipped))
    tok = Tokenizer(out / opts.tokenizer_file)
    manifest = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION,
        "tokenizer": tok.describe() | {"file": opts.tokenizer_file},
        "prompt": {"text": opts.prompt, "ids": tok.encode(opts.prompt)},
        "image": opts.image.to_dict(),
        "build": opts.to_dict(),
        "shards": records,
        "totals": {k: sum(r[k] for r in records) for k in ("samples", "text_tokens", "patches")},
        "skipped": skipped,
        "command": command,
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def _no_samples_message(sources: list[str], skipped: dict[str, dict]) -> str:
    files = ", ".join(sources[:5]) + (f" and {len(sources) - 5} more" if len(sources) > 5 else "")
    reasons = ", ".join(f"{info['count']} {reason}" for reason, info in skipped.items()) or "no rows or samples"
    return (f"no usable samples in {files}: {reasons}; check the files and --image-column, --caption-field, "
            "--caption-source (a build with other options needs a new --out directory)")


def build(inputs: list[Path], out: Path, tokenizer: Path, opts: BuildOptions, *, num_workers: int = 1,
          shard_index: int = 0, num_shard_groups: int = 1, command: str = "", quiet: bool = False) -> dict | None:
    names = shard_names(inputs)
    mine = [(p, n) for i, (p, n) in enumerate(zip(inputs, names)) if i % num_shard_groups == shard_index]
    todo = [(p, n) for p, n in mine if not (out / "shards" / f"{n}.done.json").is_file()]
    Tokenizer(tokenizer)  # unreadable inputs, tokenizers and column-mapping mistakes fail before anything is written
    for p, _ in todo:
        check_input(p, opts.source)
    prepare_output(out, tokenizer, opts)
    if not quiet:
        print(f"{len(inputs)} input file(s), this task: {len(mine)}, "
              f"already done: {len(mine) - len(todo)}, to build: {len(todo)}", file=sys.stderr)
    t0 = time.perf_counter()
    if todo:
        ctx = mp.get_context("fork")
        with ctx.Manager() as manager:
            queue = manager.Queue()
            # ETA counts shards (sample counts of tar shards are unknown until read); postfix: samples.
            bar = tqdm(total=len(todo), desc="shards", unit=" shard", disable=quiet, dynamic_ncols=True)
            with ctx.Pool(min(num_workers, len(todo))) as pool:
                result = pool.map_async(_worker, [(p, n, out, opts, queue) for p, n in todo], chunksize=1)
                samples = skipped = 0
                while not (result.ready() and queue.empty()):
                    while not queue.empty():
                        msg = queue.get()
                        if msg is None:
                            bar.update(1)
                            continue
                        samples, skipped = samples + msg[0], skipped + msg[1]
                        rate = samples / max(time.perf_counter() - t0, 1e-9)
                        bar.set_postfix_str(f"{samples} samples, {rate:.0f}/s, {skipped} skipped")
                    time.sleep(0.1)
                result.get()
            bar.close()
    manifest = write_manifest(out, names, opts, command)
    if not quiet:
        if manifest is None:
            done = sum((out / "shards" / f"{n}.done.json").is_file() for n in names)
            print(f"{done}/{len(names)} shards done; the task that finishes the last one writes manifest.json",
                  file=sys.stderr)
        else:
            t = manifest["totals"]
            skips = ", ".join(f"{r} {i['count']}" for r, i in manifest["skipped"].items()) or "none"
            print(f"dataset {out}: {t['samples']} samples, {t['text_tokens']} text tokens, {t['patches']} patches "
                  f"in {len(names)} shard(s); skipped: {skips}; {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return manifest


def add_parser(sub) -> None:
    ap = sub.add_parser("build", help="raw tar/JSONL/CSV/Parquet -> tokenized indexed shards", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="input files, directories or globs (.tar, .jsonl, .csv, .parquet)")
    ap.add_argument("--out", required=True, type=Path, help="output dataset directory")
    ap.add_argument("--tokenizer", required=True, type=Path, help="sentencepiece .model or HF tokenizer.json")
    ap.add_argument("--stage", choices=("1", "2"), default="1",
                    help="1: fixed-size images (resize + center crop); 2: native aspect ratio")
    ap.add_argument("--image-size", type=int, default=224, help="stage-1 image side")
    ap.add_argument("--min-patches", type=int, default=16, help="stage-2 fewest 16x16 patches per image")
    ap.add_argument("--max-patches", type=int, default=1024, help="stage-2 most patches per image")
    ap.add_argument("--encoding", choices=("jpeg", "raw"), default="jpeg", help="stored image encoding")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality")
    ap.add_argument("--prompt", default=STAGE1_PROMPT, help="instruction used when a sample has none of its own")
    ap.add_argument("--caption-field", default="caption", help="JSON field / column holding the caption")
    ap.add_argument("--caption-source", choices=("auto", "txt", "json"), default="auto",
                    help="tar captions from KEY.txt, KEY.json, or txt falling back to json")
    ap.add_argument("--instruction-field", default=None, help="JSON field / column with per-sample instructions")
    ap.add_argument("--image-column", default="image", help="table column with the image path or bytes")
    ap.add_argument("--key-column", default=None, help="table column with the sample key (default: row number)")
    ap.add_argument("--max-text-tokens", type=int, default=1024, help="skip captions longer than this")
    limits = ImageLimits()
    ap.add_argument("--max-image-bytes", type=int, default=limits.max_bytes,
                    help="skip image files/members bigger than this, unread (default: %(default)s)")
    ap.add_argument("--max-image-pixels", type=int, default=limits.max_pixels,
                    help="skip images with more pixels than this, from the header, undecoded (default: %(default)s)")
    ap.add_argument("--max-aspect-ratio", type=float, default=limits.max_aspect_ratio,
                    help="skip images whose long side exceeds this many times the short one (default: %(default)s)")
    ap.add_argument("--num-workers", type=int, default=1, help="processes (one shard at a time each)")
    ap.add_argument("--shard-index", type=int, default=0, help="this task's index in a job array")
    ap.add_argument("--num-shard-groups", type=int, default=1, help="number of tasks in the job array")
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    ap.set_defaults(run=run)


def run(args) -> int:
    if not 0 <= args.shard_index < args.num_shard_groups:
        raise InputError(f"--shard-index {args.shard_index} must be in [0, --num-shard-groups {args.num_shard_groups})")
    if not args.tokenizer.is_file():
        raise InputError(f"--tokenizer {args.tokenizer} does not exist (train one with `genlip-data tokenizer`)")
    mode = ImageMode(kind="fixed" if args.stage == "1" else "native", size=args.image_size,
                     min_patches=args.min_patches, max_patches=args.max_patches, encoding=args.encoding,
                     quality=args.quality)
    mode.validate()
    limits = ImageLimits(max_bytes=args.max_image_bytes, max_pixels=args.max_image_pixels,
                         max_aspect_ratio=args.max_aspect_ratio)
    limits.validate()
    if args.num_workers < 1 or args.max_text_tokens < 1:
        raise InputError(f"--num-workers ({args.num_workers}) and --max-text-tokens ({args.max_text_tokens}) "
                         "must be at least 1")
    source = SourceOptions(caption_field=args.caption_field, caption_source=args.caption_source,
                           instruction_field=args.instruction_field, image_column=args.image_column,
                           key_column=args.key_column)
    opts = BuildOptions(image=mode, source=source, limits=limits, prompt=args.prompt,
                        max_text_tokens=args.max_text_tokens,
                        tokenizer_file="tokenizer" + (".json" if args.tokenizer.suffix == ".json" else ".model"))
    inputs = expand_inputs(args.inputs)
    # The recorded command leaves out what only splits the work (so every array task records the same one)
    # and the output directory (the dataset's own location).
    per_task = {"shard_index", "num_shard_groups", "num_workers", "quiet", "run", "inputs", "out", "command"}
    flags = [f"--{k.replace('_', '-')}={shlex.quote(str(v))}" for k, v in sorted(vars(args).items())
             if k not in per_task and v is not None]
    command = shlex.join(["genlip-data", "build", *map(str, inputs)]) + " " + " ".join(flags)
    build(inputs, args.out, args.tokenizer, opts, num_workers=args.num_workers, shard_index=args.shard_index,
          num_shard_groups=args.num_shard_groups, command=command, quiet=args.quiet)
    return 0


__all__ = ["BuildOptions", "build", "build_shard"]
