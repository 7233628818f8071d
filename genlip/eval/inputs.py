"""What `genlip-eval` reads: shard directories, raw tar/JSONL/CSV/Parquet files and ImageFolder trees,
as one stream of `EvalSample`s in a fixed global order.

- Shard directories (`genlip-data build` output): stored images (already sized as in training), caption +
  end ids, the dataset's prompt (or a sample's own instruction). No labels.
- Raw files (`genlip.data.sources`): images resized by `ImageMode` (fixed 224 x 224 by default, as in
  stage 1), captions tokenized here, the stage-1 prompt; labels from `label_field` (a JSON field or table
  column; `cls` for a tar's KEY.cls).
- ImageFolder (`ROOT/CLASS/*.jpg|jpeg|png|webp`): label = folder name, no captions.

Every rank walks the whole stream (metadata is cheap) but decodes images only for the samples it owns
(`EvalGroup.owns`), so all ranks agree on indices, keys, captions and labels.
"""

from __future__ import annotations

from genlip.errors import UserError

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from genlip.data.images import (BadImage, ImageLimits, ImageMode, decode_stored, load_image, patchify_uint8,
                                 read_image_file, resize_for_mode)
from genlip.data.shards import DatasetError, open_dataset, read_sample
from genlip.data.sources import IMAGE_EXTS, INPUT_SUFFIXES, InputError, RawSample, Skip, SourceOptions, iter_source
from genlip.data.tokenizer import STAGE1_PROMPT, Tokenizer
from genlip.eval.dist import CHUNK, EvalGroup


class EvalInputError(UserError):
    """A user mistake in the evaluation inputs; the message names the file or field and what to do."""


@dataclass
class EvalSample:
    """One evaluated image with what is known about it."""

    index: int
    """Position in the evaluated set (the order of the inputs as given)."""
    key: str
    """Where it came from: input name / sample key."""
    caption: str | None
    """Reference caption text, when the input has one."""
    text: list[int] | None
    """Caption + end token ids (the loss targets), when there is a caption and a tokenizer."""
    prompt: list[int]
    """Prompt ids placed between the image and the caption."""
    label: str | None
    """Class label, when the input has labels."""
    grid: tuple[int, int] = (0, 0)
    """Patch rows, columns (set when the image is decoded)."""
    pixels: np.ndarray | None = None
    """uint8 [rows*cols, 3*p*p] patches; decoded only on the rank that evaluates this sample."""


@dataclass
class InputOptions:
    """How inputs are read."""

    image_mode: ImageMode = field(default_factory=ImageMode)
    """Sizing of raw images (shard directories keep the sizing they were built with)."""
    source: SourceOptions = field(default_factory=SourceOptions)
    """Where raw files keep captions and images."""
    label_field: str | None = None
    """Raw inputs: JSON field / table column of the class label (`cls`: a tar's KEY.cls member)."""
    prompt: str | None = None
    """Prompt text for every sample; default: the dataset's prompt (shards) or the stage-1 prompt (raw)."""
    limit: int | None = None
    """Evaluate only the first N samples."""


def is_image_folder(path: Path) -> bool:
    """A directory of class folders holding images (and no tar/table inputs of its own)."""
    if not path.is_dir() or (path / "manifest.json").exists():
        return False
    if any(f.suffix in INPUT_SUFFIXES for f in path.iterdir() if f.is_file()):
        return False
    return any(_images_in(d) for d in path.iterdir() if d.is_dir())


def _images_in(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower().lstrip(".") in IMAGE_EXTS)


def describe_input(path: Path) -> str:
    """shards | image_folder | raw; errors say what was expected."""
    if not path.exists():
        raise EvalInputError(f"input {path} does not exist")
    if path.is_dir() and (path / "manifest.json").is_file():
        return "shards"
    if is_image_folder(path):
        return "image_folder"
    if path.is_file() and path.suffix in INPUT_SUFFIXES:
        return "raw"
    if path.is_dir():
        raw = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in INPUT_SUFFIXES)
        if raw:
            return "raw"
        raise EvalInputError(f"{path}: not a dataset: expected a shard directory (with manifest.json), an ImageFolder "
                             f"tree (CLASS/*.jpg) or a directory of {'/'.join(INPUT_SUFFIXES)} files")
    raise EvalInputError(f"{path}: unsupported input; expected a shard directory, an ImageFolder tree or a "
                         f"{'/'.join(INPUT_SUFFIXES)} file")


def dataset_tokenizer(paths: list[Path]) -> Path | None:
    """The tokenizer file of the first shard directory among `paths`, if any."""
    for p in paths:
        if p.is_dir() and (p / "manifest.json").is_file():
            try:
                ds = open_dataset(p, check="none")
            except DatasetError as e:
                raise EvalInputError(str(e)) from None
            return p / ds.manifest["tokenizer"]["file"]
    return None


class EvalData:
    """The evaluated set: inputs in order, as one stream of samples with global indices."""

    def __init__(self, paths: list[str | Path], *, tokenizer: Tokenizer | None, options: InputOptions | None = None,
                 patch_size: int = 16, keep: Callable[[EvalSample], str | None] | None = None):
        """`keep(sample)` returns None to evaluate a sample or a reason to leave it out (counted)."""
        if not paths:
            raise EvalInputError("no data given")
        self.paths = [Path(p) for p in paths]
        self.kinds = [describe_input(p) for p in self.paths]
        self.tokenizer = tokenizer
        self.options = options or InputOptions()
        self.patch_size = patch_size
        self.keep = keep
        if self.options.image_mode.patch_size != patch_size:
            raise EvalInputError(f"image patch size {self.options.image_mode.patch_size} differs from the model's "
                                 f"{patch_size}")
        self.samples: list[EvalSample] = []
        """Every sample of the set (without pixels), filled as the stream is read."""
        self.left_out: Counter = Counter()
        """Samples left out before evaluation, by reason (the same on every rank)."""
        self.unreadable: Counter = Counter()
        """Images of this rank's samples that could not be decoded, by reason."""
        self._check_shards()

    def _check_shards(self) -> None:
        for path, kind in zip(self.paths, self.kinds):
            if kind != "shards":
                continue
            try:
                ds = open_dataset(path, check="quick")
            except DatasetError as e:
                raise EvalInputError(str(e)) from None
            if ds.image_mode.patch_size != self.patch_size:
                raise EvalInputError(f"{path}: images are cut in {ds.image_mode.patch_size}-px patches, the model "
                                     f"uses {self.patch_size}")
            if self.tokenizer is not None and ds.manifest["tokenizer"]["sha256"] != self.tokenizer.sha256():
                raise EvalInputError(f"{path} was tokenized with {ds.manifest['tokenizer']['file']} (sha256 "
                                     f"{ds.manifest['tokenizer']['sha256'][:12]}), not with {self.tokenizer.path}; "
                                     "evaluate with the dataset's tokenizer (--tokenizer) or rebuild the dataset")

    def chunks(self, group: EvalGroup, *, desc: str = "", progress: bool = True) -> Iterator[list[EvalSample]]:
        """This rank's chunks of samples, images decoded, in global order. Fills `self.samples` as it goes."""
        from tqdm import tqdm

        self.samples, self.left_out, self.unreadable = [], Counter(), Counter()
        bar = tqdm(total=self._known_total(), desc=desc or "samples", unit=" img", dynamic_ncols=True,
                   disable=not (progress and group.is_main), leave=False)
        chunk: list[EvalSample] = []
        current = 0
        for sample, load in self._stream():
            if self.keep is not None:
                reason = self.keep(sample)
                if reason is not None:
                    self.left_out[reason] += 1
                    continue
            sample.index = len(self.samples)
            self.samples.append(sample)
            if sample.index // CHUNK != current:
                yield from self._hand_over(chunk)
                chunk, current = [], sample.index // CHUNK
            if group.owns(sample.index):
                bar.update(group.world)
                loaded = self._decode(sample, load)
                if loaded is not None:
                    chunk.append(loaded)
            if self.options.limit is not None and len(self.samples) >= self.options.limit:
                break
        yield from self._hand_over(chunk)
        bar.close()

    @staticmethod
    def _hand_over(chunk: list[EvalSample]) -> Iterator[list[EvalSample]]:
        if chunk:
            yield chunk
            for s in chunk:  # evaluated: keep the metadata, not the pixels
                s.pixels = None

    def _known_total(self) -> int | None:
        """Samples in the set when known without reading it (shards, ImageFolder trees), for the progress bar."""
        if "raw" in self.kinds:
            return self.options.limit
        n = 0
        for p, kind in zip(self.paths, self.kinds):
            if kind == "shards":
                n += open_dataset(p, check="none").num_samples
            else:
                n += sum(len(_images_in(d)) for d in p.iterdir() if d.is_dir())
        return min(n, self.options.limit) if self.options.limit is not None else n

    def _decode(self, sample: EvalSample, load) -> EvalSample | None:
        try:
            arr = load()
        except BadImage as e:
            self.unreadable[e.reason] += 1
            return None
        p = self.patch_size
        sample.grid = (arr.shape[0] // p, arr.shape[1] // p)
        sample.pixels = patchify_uint8(arr, p)
        return sample

    def left_out_counts(self, group: EvalGroup) -> dict[str, int]:
        """Every sample not evaluated, by reason, over all ranks (call on every rank after `chunks`)."""
        total = Counter(self.left_out)
        for part in group.gather(dict(self.unreadable)):
            total.update(part)
        return dict(sorted(total.items()))

    # ---- the stream ----------------------------------------------------------------------------------
    def _stream(self) -> Iterator[tuple[EvalSample, Callable[[], np.ndarray]]]:
        for path, kind in zip(self.paths, self.kinds):
            if kind == "shards":
                yield from self._shard_samples(path)
            elif kind == "image_folder":
                yield from self._folder_samples(path)
            else:
                files = [path] if path.is_file() else sorted(f for f in path.iterdir()
                                                             if f.is_file() and f.suffix in INPUT_SUFFIXES)
                for f in files:
                    yield from self._raw_samples(f)

    def _prompt_ids(self, default: list[int] | None = None) -> list[int]:
        if self.options.prompt is not None or default is None:
            if self.tokenizer is None:
                return []
            return self.tokenizer.encode(self.options.prompt if self.options.prompt is not None else STAGE1_PROMPT)
        return default

    def _caption_ids(self, caption: str | None) -> list[int] | None:
        if caption is None or self.tokenizer is None:
            return None
        ids = self.tokenizer.encode(caption)
        return ids + self.tokenizer.end_ids if ids else None

    def _shard_samples(self, root: Path):
        ds = open_dataset(root, check="none")  # checked in __init__
        default = self._prompt_ids(list(ds.manifest["prompt"]["ids"]))
        tok = self.tokenizer or Tokenizer(root / ds.manifest["tokenizer"]["file"])
        n_end = len(tok.end_ids)
        for i in range(ds.num_samples):
            shard, j = ds.locate(i)
            meta = shard.meta[j]
            text = shard.text[j].astype(np.int64).tolist()
            prompt = default
            if self.options.prompt is None and shard.prompt is not None and meta["prompt_len"]:
                prompt = shard.prompt[j].astype(np.int64).tolist()
            grid = (int(meta["grid_h"]), int(meta["grid_w"]))
            sample = EvalSample(-1, f"{root.name}/{shard.name}/{j}", tok.decode(text[:len(text) - n_end]), text,
                                prompt, None)

            def load(i=i, grid=grid):
                image, _, _, _ = read_sample(ds, i)  # CRC-checked
                return decode_stored(image, grid, ds.image_mode)

            yield sample, load

    def _folder_samples(self, root: Path):
        prompt = self._prompt_ids()
        for folder in sorted(d for d in root.iterdir() if d.is_dir()):
            for f in _images_in(folder):
                sample = EvalSample(-1, f"{root.name}/{folder.name}/{f.name}", None, None, prompt, folder.name)
                yield sample, (lambda f=f: self._resize(read_image_file(f, ImageLimits())))

    def _raw_samples(self, path: Path):
        prompt = self._prompt_ids()
        try:
            items = iter_source(path, self.options.source, label_field=self.options.label_field)
            for item in items:
                if isinstance(item, Skip):
                    self.left_out[item.reason] += 1
                    continue
                yield self._raw_sample(path, item, prompt)
        except InputError as e:
            raise EvalInputError(str(e)) from None

    def _raw_sample(self, path: Path, item: RawSample, prompt: list[int]):
        sample = EvalSample(-1, f"{path.name}/{item.key}", item.caption, self._caption_ids(item.caption), prompt,
                            item.label)

        def load(data=item.image):
            if data is None:
                raise BadImage("missing_image")
            return self._resize(data)

        return sample, load

    def _resize(self, data: bytes) -> np.ndarray:
        return np.asarray(resize_for_mode(load_image(data), self.options.image_mode), dtype=np.uint8)


def need_captions(sample: EvalSample) -> str | None:
    """`keep` filter for loss: a caption with tokens."""
    return None if sample.text else "no_caption"


def need_labels(what: str):
    """`keep` filter for zeroshot/probe: every sample needs a label (a clear error naming the first without one)."""

    def keep(sample: EvalSample) -> str | None:
        if sample.label is None:
            raise EvalInputError(f"{what} needs a class label for every image; {sample.key} has none (ImageFolder "
                                 "trees ROOT/CLASS/*.jpg carry labels; raw files need --label-field, a JSON field or "
                                 "table column, or `cls` for a tar's KEY.cls; shard directories hold no labels)")
        return None

    return keep
