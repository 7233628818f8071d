"""Shared set-up for the benchmarks: a synthetic raw dataset, its tokenizer and its shards."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_tools.build import BuildOptions, build  # noqa: E402
from data_tools.tokenizer import iter_captions  # noqa: E402
from genlip.data.images import ImageMode  # noqa: E402
from genlip.data.sources import SourceOptions, expand_inputs  # noqa: E402
from genlip.data.synthetic import write_webdataset_shards  # noqa: E402
from genlip.data.tokenizer import train_sentencepiece  # noqa: E402


def make_raw(root: Path, *, samples: int, per_shard: int, size: int = 320) -> tuple[list[Path], Path]:
    """Raw tar shards of rendered scenes (size x size JPEG) and a tokenizer trained on their captions."""
    raw = root / "raw"
    if not raw.exists():
        write_webdataset_shards(raw, num_samples=samples, samples_per_shard=per_shard, size=size)
    tars = expand_inputs([str(raw)])
    tok = root / "tok.model"
    if not tok.exists():
        train_sentencepiece(iter_captions(tars, SourceOptions()), tok, vocab_size=500, model_type="bpe")
    return tars, tok


def make_shards(root: Path, tars: list[Path], tok: Path, *, workers: int = 2) -> Path:
    out = root / "ds"
    if not (out / "manifest.json").exists():
        build(tars, out, tok, BuildOptions(image=ImageMode()), num_workers=workers, quiet=True)
    return out


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
