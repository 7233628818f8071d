"""Tokenizers for captions: a sentencepiece `.model` (ours, trained by `genlip-data tokenizer`) or a
Hugging Face `tokenizer.json` (e.g. Qwen3's, which the paper used) through the `tokenizers` package.

Prompt and caption are tokenized separately with no special tokens, whitespace stripped, and
concatenated with no separator. The end marker follows the caption and is a prediction target: for a
HF tokenizer with `<|im_end|>` it is `<|im_end|>` then `\\n` (two tokens, as the reference); for our
sentencepiece models it is the single user-defined piece `<|im_end|>` (sentencepiece normalises `\\n`).
"""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path
from typing import Iterable

from genlip.errors import UserError

END_MARKER = "<|im_end|>"
STAGE1_PROMPT = "Describe the image in detail."
"""The paper's fixed stage-1 instruction; `genlip-data build` records `encode(STAGE1_PROMPT)` as a
dataset's prompt, and `genlip-eval` uses the same ids for raw inputs."""


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class Tokenizer:
    """Load a `.model` (sentencepiece) or `.json` (HF tokenizers) file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(errno.ENOENT, "tokenizer file does not exist", str(self.path))
        try:
            self._load()
        except UserError:
            raise
        except Exception as e:  # sentencepiece raises RuntimeError/OSError, `tokenizers` a bare Exception
            raise UserError(f"tokenizer {self.path} cannot be loaded ({type(e).__name__}: {str(e)[:200]}); give a "
                            "sentencepiece .model (e.g. from `genlip-data tokenizer`) or a HF tokenizer.json") from None

    def _load(self) -> None:
        if self.path.suffix == ".json":
            from tokenizers import Tokenizer as HFTokenizer

            self.kind = "hf"
            self._tok = HFTokenizer.from_file(str(self.path))
            self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
            end = self._tok.token_to_id(END_MARKER)
            newline = self._tok.encode("\n", add_special_tokens=False).ids  # not encode(): it strips
            self.end_ids = [end] + newline if end is not None else []
        else:
            import sentencepiece as spm

            self.kind = "sentencepiece"
            self._tok = spm.SentencePieceProcessor(model_file=str(self.path))
            self.vocab_size = self._tok.get_piece_size()
            end = self._tok.piece_to_id(END_MARKER)
            self.end_ids = [end] if end != self._tok.unk_id() else []
        if not self.end_ids:
            raise UserError(f"tokenizer {self.path} has no {END_MARKER!r} token to mark the end of a caption; "
                            "train one with `genlip-data tokenizer` or add the token")

    def encode(self, text: str) -> list[int]:
        text = text.strip()
        if not text:
            return []
        if self.kind == "hf":
            return self._tok.encode(text, add_special_tokens=False).ids
        return self._tok.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "hf":
            return self._tok.decode(ids, skip_special_tokens=True)
        return self._tok.decode(ids)

    def sha256(self) -> str:
        return file_sha256(self.path)

    def describe(self) -> dict:
        return {"file": self.path.name, "sha256": self.sha256(), "kind": self.kind, "vocab_size": self.vocab_size,
                "end_ids": self.end_ids}


def train_sentencepiece(texts: Iterable[str], model_path: str | Path, *, vocab_size: int = 8000,
                        model_type: str = "unigram", character_coverage: float = 0.9995,
                        max_sentences: int = 2_000_000, seed: int = 0, byte_fallback: bool = False,
                        prompts: Iterable[str] = ()) -> Path:
    """Train a sentencepiece model on caption texts; writes `model_path` (a `.model` file).

    `byte_fallback`: characters outside the vocabulary (rare capitals of a small corpus, any non-ASCII) become
    UTF-8 byte pieces instead of `<unk>`, so every text decodes back exactly; the 256 byte pieces come on top
    of `vocab_size`, so the learned pieces are the same with or without them.
    `prompts`: instructions kept whole as one piece each, however rare in `texts`. `genlip-data tokenizer`
    turns both on; the defaults keep tokenizers trained by earlier versions reproducible."""
    import sentencepiece as spm

    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    spm.set_random_generator_seed(seed)  # deterministic sampling/shuffling of the input sentences
    sentences = (t.strip() for t in texts)
    spm.SentencePieceTrainer.train(
        sentence_iterator=(s for s in sentences if s),
        model_prefix=str(model_path.with_suffix("")),
        vocab_size=vocab_size + (256 if byte_fallback else 0),
        model_type=model_type,
        character_coverage=character_coverage,
        input_sentence_size=max_sentences,
        shuffle_input_sentence=True,
        user_defined_symbols=[END_MARKER, *(prompt_piece(p) for p in prompts)],
        byte_fallback=byte_fallback,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return model_path.with_suffix(".model")


def prompt_piece(prompt: str) -> str:
    """A prompt as sentencepiece sees it after normalisation (spaces as U+2581, one leading), to match it whole."""
    return "\u2581" + "\u2581".join(prompt.split())
