"""Raw image-caption inputs: img2dataset/webdataset tar shards and JSONL/CSV/Parquet tables.

Read by `genlip-data` (building shards) and `genlip-eval` (evaluating on raw data). Each input file
yields `RawSample`s or `Skip`s. Tar members are paired by sample key (the member path up
to the first dot of its file name, as webdataset does) and, as webdataset does, a sample's members are
contiguous: a key that comes back later is a `duplicate_key`. Problems with one sample are `Skip`s with a
reason and never stop the file; reads are bounded (MAX_TEXT_BYTES, MAX_ROW_BYTES, ImageLimits.max_bytes);
a missing or unreadable input file, or a table without the named columns, is an error.
"""

from __future__ import annotations

import csv
import glob
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from genlip.data.images import BadImage, ImageLimits, check_limits, read_image_file
from genlip.errors import UserError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TABLE_SUFFIXES = (".jsonl", ".csv", ".parquet")
INPUT_SUFFIXES = (".tar",) + TABLE_SUFFIXES
MAX_TEXT_BYTES = 1 << 20
"""Longest caption, instruction or tar text member read; a longer one is skipped as caption_too_long."""
MAX_ROW_BYTES = 16 << 20
"""Longest JSONL line or CSV field parsed (bounds memory); a longer one is skipped as bad_row."""


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


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, mode="r:")
    except tarfile.ReadError as e:
        raise InputError(f"{path}: not a readable tar file ({e}); check the file or leave it out") from None


def iter_tar(path: Path, opts: SourceOptions, *, captions_only: bool = False, label_field: str | None = None,
             limits: ImageLimits = ImageLimits()) -> Iterator[RawSample | Skip]:
    """Samples of one tar shard, read in one pass; a truncated tar yields its complete samples, then a Skip.

    `label_field`: "cls" reads the label from `KEY.cls` (webdataset's class member), any other name from
    that field of `KEY.json`."""
    seen: set[str] = set()
    key, members, duplicate, truncated = None, {}, False, False
    with _open_tar(path) as tf:
        try:
            for m in tf:
                if not m.isfile():
                    continue
                k, ext = _split_key(m.name)
                if k == key and ext not in members:
                    members[ext] = m
                    continue
                if key is not None:
                    yield _tar_sample(tf, key, None if duplicate else members, opts, captions_only, label_field,
                                      limits)
                # A key seen before, or an extension repeated inside one group, starts a duplicate sample.
                key, members, duplicate = k, {ext: m}, k in seen
                seen.add(k)
        except (tarfile.ReadError, EOFError, OSError):
            truncated = True  # the group being read may miss members
        if key is not None:
            yield Skip(key, "truncated_tar") if truncated else \
                _tar_sample(tf, key, None if duplicate else members, opts, captions_only, label_field, limits)
    if truncated:
        yield Skip(f"{path.name}:<end>", "truncated_tar")


class _TooLong(Exception):
    """A tar member bigger than its read limit."""


def _read(tf: tarfile.TarFile, m: tarfile.TarInfo, limit: int = MAX_TEXT_BYTES) -> bytes:
    if m.size > limit:
        raise _TooLong(m.name)
    data = tf.extractfile(m).read(limit)
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


def _tar_sample(tf, key, members, opts: SourceOptions, captions_only: bool, label_field: str | None,
                limits: ImageLimits) -> RawSample | Skip:
    """The sample of one group of members (None: a duplicate key), or a Skip; never raises for bad data."""
    if members is None:
        return Skip(key, "duplicate_key")
    try:
        return _tar_members(tf, key, members, opts, captions_only, label_field, limits)
    except BadImage as e:
        return Skip(key, e.reason)
    except _TooLong:
        return Skip(key, "caption_too_long")
    except (tarfile.ReadError, EOFError, OSError):
        return Skip(key, "truncated_tar")


def _tar_members(tf, key, members, opts: SourceOptions, captions_only: bool, label_field: str | None,
                 limits: ImageLimits) -> RawSample | Skip:
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
    image = None
    if image_member is not None:
        check_limits(limits, nbytes=image_member.size)
        image = _read(tf, image_member, limits.max_bytes)
    return RawSample(key, image, caption, instruction if isinstance(instruction, str) else None, label)


def _jsonl_rows(path: Path) -> Iterator[dict | Skip]:
    with open(path, "rb") as f:
        n = -1
        while line := f.readline(MAX_ROW_BYTES + 1):
            n += 1
            if len(line) > MAX_ROW_BYTES:
                while line and not line.endswith(b"\n"):  # skip the rest of the over-long line
                    line = f.readline(MAX_ROW_BYTES)
                yield Skip(f"row{n}", "bad_row")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                row = None
            yield row if isinstance(row, dict) else Skip(f"row{n}", "bad_row")


def _csv_rows(path: Path) -> Iterator[dict | Skip]:
    csv.field_size_limit(MAX_ROW_BYTES)
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = csv.DictReader(f)
        n = 0
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except csv.Error:  # NOTE: the reader resumes at the next line, so one bad row costs one row
                row = Skip(f"row{n}", "bad_row")
            n += 1
            yield row


def _parquet_rows(path: Path) -> Iterator[dict | Skip]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError):  # corrupt past the footer: keep the rows read, count the rest
        yield Skip(f"{path.name}:<end>", "corrupt_table")


def table_columns(path: Path) -> list[str] | None:
    """Column names of a CSV (header row) or Parquet (schema) file; None for JSONL, which has no header."""
    if path.suffix == ".csv":
        csv.field_size_limit(MAX_ROW_BYTES)
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            try:
                return next(csv.reader(f), [])
            except csv.Error as e:
                raise InputError(f"{path}: unreadable CSV header ({e}); check the file") from None
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_schema(path).names
        except (pa.ArrowException, OSError) as e:
            raise InputError(f"{path}: not a readable Parquet file ({e}); check the file or leave it out") from None
    return None


def check_input(path: Path, opts: SourceOptions, *, captions_only: bool = False,
                label_field: str | None = None) -> None:
    """Raise InputError if `path` cannot be read at all, or is a table missing a column the options name."""
    if path.suffix == ".tar":
        _open_tar(path).close()
        return
    columns = table_columns(path)
    if columns is None:
        return
    # Instructions and keys are optional per row (several tables may share one build), images and captions not.
    wanted = [("--image-column", None if captions_only else opts.image_column),
              ("--caption-field", None if label_field else opts.caption_field)]
    for option, column in wanted:
        if column is not None and column not in columns:
            raise InputError(f"{path} has no column {column!r} (its columns: {', '.join(columns) or 'none'}); "
                             f"name the right one with {option}")


def iter_table(path: Path, opts: SourceOptions, *, captions_only: bool = False, label_field: str | None = None,
               limits: ImageLimits = ImageLimits()) -> Iterator[RawSample | Skip]:
    """Rows of a JSONL/CSV/Parquet file naming an image file (relative to the table) or holding its bytes;
    `label_field` names the column holding a class label."""
    check_input(path, opts, captions_only=captions_only, label_field=label_field)
    rows = {".jsonl": _jsonl_rows, ".csv": _csv_rows, ".parquet": _parquet_rows}[path.suffix](path)
    for n, row in enumerate(rows):
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
        if isinstance(caption, str) and len(caption) > MAX_TEXT_BYTES:
            yield Skip(key, "caption_too_long")
            continue
        instruction = row.get(opts.instruction_field) if opts.instruction_field else None
        label = _label(row.get(label_field)) if label_field else None
        if captions_only:
            yield RawSample(key, None, caption if isinstance(caption, str) else None, instruction, label)
            continue
        try:
            image = _table_image(path, row.get(opts.image_column), limits)
        except BadImage as e:
            yield Skip(key, e.reason)
            continue
        yield RawSample(key, image, caption if isinstance(caption, str) else None,
                        instruction if isinstance(instruction, str) else None, label)


def _table_image(table: Path, value, limits: ImageLimits) -> bytes:
    """Image bytes from a cell (bytes, or a path relative to the table); raises BadImage with a skip reason."""
    if isinstance(value, dict):  # Hugging Face datasets' Image feature: {"bytes": ..., "path": ...}
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        check_limits(limits, nbytes=len(value))
        return bytes(value)
    if not isinstance(value, str) or not value:
        raise BadImage("missing_image")
    return read_image_file(Path(value) if Path(value).is_absolute() else table.parent / value, limits)


def iter_source(path: Path, opts: SourceOptions, *, captions_only: bool = False, label_field: str | None = None,
                limits: ImageLimits = ImageLimits()) -> Iterator[RawSample | Skip]:
    if path.suffix == ".tar":
        return iter_tar(path, opts, captions_only=captions_only, label_field=label_field, limits=limits)
    if path.suffix in TABLE_SUFFIXES:
        return iter_table(path, opts, captions_only=captions_only, label_field=label_field, limits=limits)
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


__all__ = ["InputError", "RawSample", "Skip", "SourceOptions", "check_input", "expand_inputs", "iter_source"]
