"""Raw image-caption inputs: img2dataset/webdataset tar shards and JSONL/CSV/Parquet tables.

Read by `genlip-data` (building shards) and `genlip-eval` (evaluating on raw data). Each input file
yields `RawSample`s or `Skip`s. Tar members are paired by sample key (the member path up
to the first dot of its file name, as webdataset does), never by file order. Problems with one sample
are `Skip`s with a reason and never stop the file; a missing or unreadable input file is an error.
"""

from __future__ import annotations

from genlip.errors import UserError

import csv
import glob
import json
import tarfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")
INPUT_SUFFIXES = (".tar",) + TABLE_SUFFIXES


class InputError(UserError):
    """A problem with an input file as a whole (not one sample); names the file and what to do."""


@dataclass
class SourceOptions:
    """Where captions, instructions and images are found in the raw data."""

    caption_field: str = "caption"
    """JSON field / table column of the caption (tar: used when KEY.txt is absent or --caption-source=json)."""
    caption_source: str = "auto"
    """Tar captions from: auto (KEY.txt, else KEY.json[caption_field]), txt, or json."""
    instruction_field: str | None = None
    """JSON field / column with a per-sample instruction (stage-2 data); default: none."""
    image_column: str = "image"
    """Table column naming the image file (relative to the table) or holding its bytes."""
    key_column: str | None = None
    """Table column with a sample key; rows without one (and the default) use the row number."""


@dataclass
class RawSample:
    key: str
    image: bytes | None
    caption: str | None
    instruction: str | None = None
    label: str | None = None
    """Class label, read only when a `label_field` is asked for (evaluation)."""


@dataclass
class Skip:
    key: str
    reason: str


def _decode_text(data: bytes, key: str) -> str | Skip:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return Skip(key, "non_utf8_caption")


def _split_key(name: str) -> tuple[str, str]:
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def iter_tar(path: Path, opts: SourceOptions, *, captions_only: bool = False,
             label_field: str | None = None) -> Iterator[RawSample | Skip]:
    """Samples of one tar shard; a truncated tar yields its complete samples, then a Skip.

    `label_field`: "cls" reads the label from `KEY.cls` (webdataset's class member), any other name from
    that field of `KEY.json`."""
    groups: OrderedDict[str, dict[str, tarfile.TarInfo]] = OrderedDict()
    truncated = False
    try:
        tf = tarfile.open(path, mode="r:")
    except tarfile.ReadError as e:
        raise InputError(f"{path}: not a readable tar file ({e})") from None
    with tf:
        try:
            for m in tf:
                if m.isfile():
                    key, ext = _split_key(m.name)
                    groups.setdefault(key, {})[ext] = m
        except (tarfile.ReadError, EOFError, OSError):
            truncated = True
        for key, members in groups.items():
            try:
                yield _tar_sample(tf, key, members, opts, captions_only, label_field)
            except (tarfile.ReadError, EOFError, OSError):
                truncated = True
                yield Skip(key, "truncated_tar")
    if truncated:
        yield Skip(f"{path.name}:<end>", "truncated_tar")


def _read(tf: tarfile.TarFile, m: tarfile.TarInfo) -> bytes:
    data = tf.extractfile(m).read()
    if len(data) != m.size:
        raise EOFError(f"member {m.name} is cut short")
    return data


def _label(value) -> str | None:
    """A class label from a JSON value / table cell: strings and integers (as text); anything else is none."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (str, int)):
        return str(value).strip() or None
    return None


def _tar_sample(tf, key, members, opts: SourceOptions, captions_only: bool,
                label_field: str | None = None) -> RawSample | Skip:
    meta = None
    if "json" in members:
        raw = _decode_text(_read(tf, members["json"]), key)
        if isinstance(raw, Skip):
            return raw
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError:
            meta = None
    caption: str | None = None
    if opts.caption_source in ("auto", "txt") and "txt" in members:
        text = _decode_text(_read(tf, members["txt"]), key)
        if isinstance(text, Skip):
            return text
        caption = text
    if caption is None and opts.caption_source in ("auto", "json") and isinstance(meta, dict):
        value = meta.get(opts.caption_field)
        caption = value if isinstance(value, str) else None
    instruction = meta.get(opts.instruction_field) if opts.instruction_field and isinstance(meta, dict) else None
    label = None
    if label_field == "cls" and "cls" in members:
        text = _decode_text(_read(tf, members["cls"]), key)
        label = _label(text) if isinstance(text, str) else None
    elif label_field and isinstance(meta, dict):
        label = _label(meta.get(label_field))
    image_member = next((members[e] for e in IMAGE_EXTS if e in members), None)
    if captions_only:
        return RawSample(key, None, caption, instruction, label)
    image = _read(tf, image_member) if image_member is not None else None
    return RawSample(key, image, caption, instruction if isinstance(instruction, str) else None, label)


def _table_rows(path: Path) -> Iterator[dict | Skip]:
    if path.suffix == ".jsonl":
        with open(path, "rb") as f:
            for n, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    yield Skip(f"row{n}", "bad_row")
                    continue
                yield row if isinstance(row, dict) else Skip(f"row{n}", "bad_row")
    elif path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            yield from csv.DictReader(f)
    else:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()


def iter_table(path: Path, opts: SourceOptions, *, captions_only: bool = False,
               label_field: str | None = None) -> Iterator[RawSample | Skip]:
    """Rows of a JSONL/CSV/Parquet file naming an image file (relative to the table) or holding its bytes;
    `label_field` names the column holding a class label."""
    for n, row in enumerate(_table_rows(path)):
        if isinstance(row, Skip):
            yield row
            continue
        named = row.get(opts.key_column) if opts.key_column else None
        key = str(named) if named is not None else f"row{n}"
        caption = row.get(opts.caption_field)
        if isinstance(caption, bytes):
            caption = _decode_text(caption, key)
            if isinstance(caption, Skip):
                yield caption
                continue
        if isinstance(caption, str) and any(0xDC80 <= ord(ch) <= 0xDCFF for ch in caption):
            yield Skip(key, "non_utf8_caption")  # CSV bytes that were not UTF-8 (surrogateescape)
            continue
        instruction = row.get(opts.instruction_field) if opts.instruction_field else None
        label = _label(row.get(label_field)) if label_field else None
        if captions_only:
            yield RawSample(key, None, caption if isinstance(caption, str) else None, instruction, label)
            continue
        image = _table_image(path, row.get(opts.image_column))
        if isinstance(image, str):
            yield Skip(key, image)
            continue
        yield RawSample(key, image, caption if isinstance(caption, str) else None,
                        instruction if isinstance(instruction, str) else None, label)


def _table_image(table: Path, value) -> bytes | str:
    """Image bytes, or a skip reason."""
    if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str) or not value:
        return "missing_image"
    path = Path(value) if Path(value).is_absolute() else table.parent / value
    try:
        return path.read_bytes()
    except OSError:
        return "missing_image"


def iter_source(path: Path, opts: SourceOptions, *, captions_only: bool = False,
                label_field: str | None = None) -> Iterator[RawSample | Skip]:
    if path.suffix == ".tar":
        return iter_tar(path, opts, captions_only=captions_only, label_field=label_field)
    if path.suffix in TABLE_SUFFIXES:
        return iter_table(path, opts, captions_only=captions_only, label_field=label_field)
    raise InputError(f"{path}: unsupported input type; expected one of {', '.join(INPUT_SUFFIXES)}")


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Input files from files, directories (their supported files) and globs; sorted; errors name the path."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if any(ch in item for ch in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(item)) if Path(m).suffix in INPUT_SUFFIXES]
            if not matches:
                raise InputError(f"no {'/'.join(INPUT_SUFFIXES)} input matches {item!r}")
            out += matches
        elif p.is_dir():
            try:
                found = sorted(f for f in p.iterdir() if f.suffix in INPUT_SUFFIXES and f.is_file())
            except PermissionError:
                raise InputError(f"input directory {p} is not readable") from None
            if not found:
                raise InputError(f"input directory {p} holds no {'/'.join(INPUT_SUFFIXES)} files")
            out += found
        elif p.is_file():
            if p.suffix not in INPUT_SUFFIXES:
                raise InputError(f"{p}: unsupported input type; expected one of {', '.join(INPUT_SUFFIXES)}")
            out.append(p)
        else:
            raise InputError(f"input {p} does not exist")
    for p in out:
        if not p.is_file() or not _readable(p):
            raise InputError(f"input {p} is not a readable file")
    return out


def _readable(p: Path) -> bool:
    try:
        with open(p, "rb"):
            return True
    except OSError:
        return False


__all__ = ["InputError", "RawSample", "Skip", "SourceOptions", "expand_inputs", "iter_source"]
