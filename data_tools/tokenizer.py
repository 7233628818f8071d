"""genlip-data tokenizer: train a sentencepiece model on the captions of raw inputs.

Nothing is ever `<unk>`: characters the vocabulary leaves out fall back to UTF-8 byte pieces (256 more
pieces than --vocab-size), and every text decodes back exactly. The prompt is kept whole as one piece.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from genlip.data.sources import InputError, RawSample, SourceOptions, expand_inputs, iter_source
from genlip.data.tokenizer import STAGE1_PROMPT, Tokenizer, train_sentencepiece


def iter_captions(inputs, opts: SourceOptions):
    for path in inputs:
        for item in iter_source(path, opts, captions_only=True):
            if isinstance(item, RawSample):
                if item.caption:
                    yield item.caption
                if item.instruction:
                    yield item.instruction


def add_parser(sub) -> None:
    ap = sub.add_parser("tokenizer", help="train a sentencepiece tokenizer on captions", description=__doc__,
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("inputs", nargs="+", help="input files, directories or globs (.tar, .jsonl, .csv, .parquet)")
    ap.add_argument("--out", required=True, type=Path, help="output .model file")
    ap.add_argument("--vocab-size", type=int, default=8000, help="learned pieces (an upper bound for tiny corpora), plus 256 byte pieces")
    ap.add_argument("--model-type", choices=("unigram", "bpe"), default="unigram", help="sentencepiece model type")
    ap.add_argument("--max-sentences", type=int, default=2_000_000, help="captions sampled for training")
    ap.add_argument("--caption-field", default="caption", help="JSON field / column holding the caption")
    ap.add_argument("--prompt", action="append", default=None,
                    help=f"instruction kept whole as one piece; repeat for several (default: {STAGE1_PROMPT!r})")
    ap.set_defaults(run=run)


def run(args) -> int:
    inputs = expand_inputs(args.inputs)
    opts = SourceOptions(caption_field=args.caption_field)
    out = args.out if args.out.suffix == ".model" else args.out.with_suffix(".model")
    try:
        path = train_sentencepiece(iter_captions(inputs, opts), out, vocab_size=args.vocab_size,
                                   model_type=args.model_type, max_sentences=args.max_sentences, byte_fallback=True,
                                   prompts=args.prompt or [STAGE1_PROMPT])
    except RuntimeError as e:  # sentencepiece's own message says what to change (vocabulary size, no text)
        reason = "no captions found; check --caption-field" if "sentences_.empty()" in str(e) else \
            str(e).rpartition("] ")[2] or str(e)
        raise InputError(f"sentencepiece cannot train on the captions of {', '.join(map(str, inputs[:3]))}"
                         f"{' ...' if len(inputs) > 3 else ''}: {reason.strip()[:300]}") from None
    tok = Tokenizer(path)
    print(f"tokenizer {path}: {tok.vocab_size} pieces ({args.model_type}), end ids {tok.end_ids}", file=sys.stderr)
    return 0
