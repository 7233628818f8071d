"""The shard directory format (docs/DATA_FORMAT.md): writer, reader and integrity checks.

    DATASET/manifest.json               schema, tokenizer, prompt, image mode, per-shard records, skips, command
    DATASET/tokenizer.model|.json       the tokenizer used (copied: the dataset describes itself)
    DATASET/shards/NAME.text.{bin,idx}  MMIDIDX: caption tokens + end tokens, one sequence per sample
    DATASET/shards/NAME.image.{bin,idx} MMIDIDX uint8: the stored (resized) image
    DATASET/shards/NAME.prompt.{bin,idx} optional: per-sample instruction tokens (stage 2 data)
    DATASET/shards/NAME.meta.npy        per sample: grid_h, grid_w, text_len, prompt_len, key_hash, crc32s
    DATASET/shards/NAME.done.json       the shard record, written last: its presence marks a finished shard

Every file is written under a temporary name and renamed when complete, so a killed writer never leaves
a shard that looks finished. Per-sample CRC32s let the loader catch a corrupt byte at read time.
"""

from __future__ import annotations

import functools
import io
import json
import operator
import os
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genlip.atomic import atomic_write_json
from genlip.data.images import ImageMode
from genlip.data.indexed import IndexedFormatError, IndexedReader, IndexedWriter, map_file
from genlip.data.manifest import DatasetError, structure_problem, tokenizer_defects
from genlip.data.tokenizer import file_sha256

SCHEMA_VERSION = 1
FORMAT = "genlip-shards"
META_DTYPE = np.dtype([("grid_h", "<u2"), ("grid_w", "<u2"), ("text_len", "<u4"), ("prompt_len", "<u2"),
                       ("key_hash", "<u8"), ("image_crc", "<u4"), ("text_crc", "<u4")])
KINDS = ("text", "image", "prompt")


def text_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def shard_files(name: str, with_prompts: bool) -> list[str]:
    kinds = KINDS if with_prompts else KINDS[:2]
    return [f"{name}.{k}.{ext}" for k in kinds for ext in ("bin", "idx")] + [f"{name}.meta.npy"]


class ShardWriter:
    """Write one output shard; `finish()` renames every file into place, the record last."""

    def __init__(self, shard_dir: Path, name: str, *, vocab_size: int, with_prompts: bool):
        self.dir, self.name, self.with_prompts = Path(shard_dir), name, with_prompts
        for stale in self.dir.glob(f".{name}.*.tmp-*"):  # left by a killed writer of this shard
            stale.unlink(missing_ok=True)
        self.tmp_tag = f".tmp-{os.getpid()}"
        self._writers = {"text": IndexedWriter(self._tmp(f"{name}.text.bin"), text_dtype(vocab_size)),
                         "image": IndexedWriter(self._tmp(f"{name}.image.bin"), np.uint8)}
        if with_prompts:
            self._writers["prompt"] = IndexedWriter(self._tmp(f"{name}.prompt.bin"), text_dtype(vocab_size))
        self.meta: list[tuple] = []
        self.text_tokens = 0
        self.patches = 0

    def _tmp(self, fname: str) -> Path:
        return self.dir / f".{fname}{self.tmp_tag}"

    def add(self, *, key_hash: int, image: bytes, grid: tuple[int, int], text_ids, prompt_ids=()) -> None:
        text = np.asarray(text_ids, dtype=self._writers["text"].dtype)
        parts = {"image": np.frombuffer(image, dtype=np.uint8), "text": text}
        if self.with_prompts:
            parts["prompt"] = np.asarray(prompt_ids, dtype=self._writers["text"].dtype)
        for kind, arr in parts.items():
            with _naming(self.dir / f"{self.name}.{kind}.bin"):
                self._writers[kind].add(arr)
        self.meta.append((grid[0], grid[1], len(text), len(prompt_ids), key_hash, zlib.crc32(image),
                          zlib.crc32(text.tobytes())))
        self.text_tokens += len(text)
        self.patches += grid[0] * grid[1]

    def finish(self, extra: dict) -> dict:
        """Finalize, checksum and rename; returns the shard record (also written as NAME.done.json)."""
        for kind, w in self._writers.items():
            with _naming(self.dir / f"{self.name}.{kind}.bin"):
                w.finalize(self._tmp(f"{self.name}.{kind}.idx"))
        meta = np.array(self.meta, dtype=META_DTYPE)
        with _naming(self.dir / f"{self.name}.meta.npy"), open(self._tmp(f"{self.name}.meta.npy"), "wb") as f:
            np.save(f, meta)  # renamed into place below, with the other files
            f.flush()
            os.fsync(f.fileno())
        files = {}
        for fname in shard_files(self.name, self.with_prompts):
            tmp = self._tmp(fname)
            files[fname] = {"bytes": tmp.stat().st_size, "sha256": file_sha256(tmp)}
        for fname in files:
            os.replace(self._tmp(fname), self.dir / fname)
        record = {"name": self.name, "samples": len(meta), "text_tokens": int(self.text_tokens),
                  "patches": int(self.patches), "files": files, **extra}
        with _naming(self.dir / f"{self.name}.done.json"):
            atomic_write_json(self.dir / f"{self.name}.done.json", record)
        return record

    def abort(self) -> None:
        """Remove this shard's partial files (after any failure, a full disk included); finished shards stay."""
        for w in self._writers.values():
            try:
                w._f.close()
            except OSError:  # flushing the buffer fails again on a full disk; the file goes anyway
                pass
        partial = list(self.dir.glob(f".{self.name}.*{self.tmp_tag}"))
        if not (self.dir / f"{self.name}.done.json").exists():  # files renamed by a finish() that then failed
            partial += [self.dir / f for f in shard_files(self.name, self.with_prompts)]
        for p in partial:
            p.unlink(missing_ok=True)


@contextmanager
def _naming(path: Path):
    """Give a failed write (an OSError naming no file, e.g. ENOSPC) the path of the file being written."""
    try:
        yield
    except OSError as e:
        if e.filename is not None:
            raise
        raise OSError(e.errno, e.strerror, str(path)) from None


@dataclass
class Shard:
    name: str
    text: IndexedReader
    image: IndexedReader
    prompt: IndexedReader | None
    meta: np.ndarray


def _max_open_shards() -> int:
    """Shards kept open at once: each holds up to 7 file descriptors and memory maps (three .bin/.idx pairs
    and the metadata), so the bound follows this process's descriptor limit, within [16, 2048] (2048 x 7
    maps stays well under Linux's default vm.max_map_count of 65530)."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft == resource.RLIM_INFINITY:
            soft = 1 << 20
    except (ImportError, OSError, ValueError):
        soft = 1024
    return max(16, min(2048, (soft - 128) // 8))


@functools.lru_cache(maxsize=256)
def _npy_header(header: bytes) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) of an .npy v1.0 header; cached, as the shards' metadata
    files share a few headers and parsing one costs more than mapping the file."""
    f = io.BytesIO(header)
    if np.lib.format.read_magic(f) != (1, 0):
        raise ValueError("not an .npy version 1.0 file")
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    return shape, fortran, dtype, f.tell()


class ShardSet(Sequence):
    """The dataset's shards, each opened (memory-mapped) on first use.

    A billion-sample dataset has ~10^5 shards: opening them all would cost every rank most of a minute at
    start-up and more descriptors and memory maps than a process may hold. Here a shard is opened when a
    sample of it is first read, checked then (its files agree with each other and the manifest), and at
    most `max_open` stay open, the least recently used closed first.
    """

    def __init__(self, root: Path, records: list[dict], max_open: int | None = None):
        self.root, self.records = Path(root), records
        self.max_open = max_open or _max_open_shards()
        self._open: OrderedDict[int, Shard] = OrderedDict()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, s: int) -> Shard:
        s = operator.index(s)
        if s < 0:
            s += len(self.records)
        if not 0 <= s < len(self.records):
            raise IndexError(f"shard {s} of {len(self.records)}")
        shard = self._open.get(s)
        if shard is None:
            shard = self._open[s] = self._load(self.records[s])
            if len(self._open) > self.max_open:
                self._open.popitem(last=False)  # its maps close once no view of them is left
        else:
            self._open.move_to_end(s)
        return shard

    @property
    def num_open(self) -> int:
        return len(self._open)

    def meta(self, s: int) -> np.ndarray:
        """Shard s's metadata alone (memory-mapped; for whole-dataset passes such as the packing plan)."""
        if s in self._open:
            return self._open[s].meta
        rec = self.records[s]
        meta = self._load_meta(self.root / "shards" / rec["name"])
        if len(meta) != rec["samples"]:
            raise DatasetError(f"{self.root}/shards/{rec['name']}.meta.npy: holds {len(meta)} samples, manifest says "
                               f"{rec['samples']}")
        return meta

    @staticmethod
    def _load_meta(base: Path) -> np.ndarray:
        """NAME.meta.npy memory-mapped (28 bytes per sample: never all in memory)."""
        path = f"{base}.meta.npy"
        raw = map_file(path)
        try:
            shape, fortran, dtype, offset = _npy_header(bytes(raw[:10 + int.from_bytes(raw[8:10], "little")]))
            if dtype != META_DTYPE or fortran or len(shape) != 1:
                raise ValueError(f"holds {dtype} {shape}, not shard metadata {META_DTYPE}")
            return np.frombuffer(raw, dtype=META_DTYPE, count=shape[0], offset=offset)
        except ValueError as e:  # not an .npy file, truncated, or another array
            raise DatasetError(f"{path}: not readable shard metadata ({e}); run `genlip-data verify`") from None

    def _load(self, rec: dict) -> Shard:
        base = self.root / "shards" / rec["name"]
        try:
            readers = {k: IndexedReader(f"{base}.{k}.bin", f"{base}.{k}.idx")
                       for k in KINDS if f"{rec['name']}.{k}.bin" in rec["files"]}
        except IndexedFormatError as e:
            raise DatasetError(str(e)) from None
        meta = self._load_meta(base)
        n = rec["samples"]
        if not len(readers["text"]) == len(readers["image"]) == len(meta) == n:
            raise DatasetError(f"{base}: text/image/meta hold {len(readers['text'])}/{len(readers['image'])}/"
                               f"{len(meta)} samples, manifest says {n}")
        return Shard(rec["name"], readers["text"], readers["image"], readers.get("prompt"), meta)


@dataclass
class ShardDataset:
    """An opened dataset directory: manifest, image mode and its shards (opened as they are read)."""

    root: Path
    manifest: dict
    image_mode: ImageMode
    shards: ShardSet | list[Shard] = field(default_factory=list)
    offsets: np.ndarray = None  # [num_shards + 1] first global sample index of each shard

    @property
    def num_samples(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[Shard, int]:
        s = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return self.shards[s], index - int(self.offsets[s])

    def shard_lengths(self, s: int, default_prompt_len: int) -> np.ndarray:
        """Tokens per sample of shard s (patches + prompt + caption/end), int64."""
        m = self.shards.meta(s) if isinstance(self.shards, ShardSet) else self.shards[s].meta
        rec = self.manifest["shards"][s]
        prompt = m["prompt_len"].astype(np.int64)
        if f"{rec['name']}.prompt.bin" in rec["files"]:
            prompt[prompt == 0] = default_prompt_len  # samples without their own prompt use the default one
        else:
            prompt[:] = default_prompt_len
        return m["grid_h"].astype(np.int64) * m["grid_w"] + prompt + m["text_len"]

    def lengths(self, default_prompt_len: int) -> np.ndarray:
        """Tokens per sample (patches + prompt + caption/end), in global sample order (int64)."""
        out = [self.shard_lengths(s, default_prompt_len) for s in range(len(self.shards))]
        return np.concatenate(out) if out else np.zeros(0, np.int64)


def load_manifest(root: str | Path) -> dict:
    root = Path(root)
    path = root / "manifest.json"
    if not root.is_dir():
        raise DatasetError(f"dataset directory {root} does not exist")
    if not path.is_file():
        raise DatasetError(f"{path} is missing: the dataset is incomplete (rerun `genlip-data build` to finish it)")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:  # bad JSON or bad UTF-8
        raise DatasetError(f"{path} is not valid JSON ({e}); rebuild the manifest with `genlip-data build`") from None
    if not isinstance(manifest, dict):
        raise DatasetError(f"{path}: holds a JSON {type(manifest).__name__}, not the manifest object; rebuild the "
                           "manifest with `genlip-data build`")
    if manifest.get("format") != FORMAT or manifest.get("schema_version") != SCHEMA_VERSION:
        raise DatasetError(f"{path}: format {manifest.get('format')!r} v{manifest.get('schema_version')} is not "
                           f"{FORMAT} v{SCHEMA_VERSION}")
    problem = structure_problem(manifest)
    if problem:
        raise DatasetError(f"{path}: {problem}; rebuild the manifest with `genlip-data build` (same inputs and "
                           "options) or restore it")
    return manifest


def manifest_hash(root: str | Path) -> str:
    return file_sha256(Path(root) / "manifest.json")


def check_files(root: str | Path, manifest: dict, *, level: str) -> list[str]:
    """Defects of the files against the manifest: missing, size, and sha256 of every file ("full"), of the
    .idx/.npy files ("quick") or of none ("sizes")."""
    root = Path(root)
    defects = []
    tok = manifest["tokenizer"]
    tok_path = root / tok["file"]
    if not tok_path.is_file():
        defects.append(f"{tok_path}: missing tokenizer file")
    elif file_sha256(tok_path) != tok["sha256"]:
        defects.append(f"{tok_path}: sha256 differs from the manifest")
    for rec in manifest["shards"]:
        for fname, info in rec["files"].items():
            path = root / "shards" / fname
            if not path.is_file():
                defects.append(f"{path}: missing")
            elif path.stat().st_size != info["bytes"]:
                defects.append(f"{path}: {path.stat().st_size} bytes, manifest says {info['bytes']}")
            elif (level == "full" or level == "quick" and fname.endswith((".idx", ".npy"))) \
                    and file_sha256(path) != info["sha256"]:
                defects.append(f"{path}: sha256 differs from the manifest (corrupt file)")
    return defects


FULL_CHECK_BYTES = 2 << 30  # "auto" hashes every file of datasets up to this size
QUICK_CHECK_BYTES = 2 << 30  # ... and the .idx/.npy files of datasets whose index files total up to this


def open_dataset(root: str | Path, *, check: str = "auto") -> ShardDataset:
    """Open a dataset for reading after checking it against its manifest.

    check: "full" (sha256 of every file), "quick" (every file present with its size, sha256 of the small
    .idx/.npy files; corrupt .bin bytes are then caught by per-sample CRCs at read time), "sizes" (every file
    present with its size; each shard's index files are checked against each other when it is opened),
    "auto" (full up to 2 GiB of data, quick while the index files total up to 2 GiB, about 30M samples,
    sizes above: hashing a billion samples' 68 GB of index files would hold up every rank for minutes) or
    "none". All but "none" also check the tokenizer fields against the tokenizer file
    (genlip.data.manifest.tokenizer_defects). Shards are opened as they are read (`ShardSet`).
    """
    root = Path(root)
    manifest = load_manifest(root)
    if check == "auto":
        files = [(name, f["bytes"]) for rec in manifest["shards"] for name, f in rec["files"].items()]
        size = sum(b for _, b in files)
        index = sum(b for name, b in files if name.endswith((".idx", ".npy")))
        check = "full" if size <= FULL_CHECK_BYTES else "quick" if index <= QUICK_CHECK_BYTES else "sizes"
    if check != "none":
        # NOTE: the tokenizer too: a vocab_size edited in the manifest would size the model wrongly, and
        # tensor parallelism would then train on out-of-range token ids without an error.
        defects = check_files(root, manifest, level=check) or tokenizer_defects(root, manifest)
        if defects:
            more = f" (and {len(defects) - 1} more defect(s))" if len(defects) > 1 else ""
            raise DatasetError(f"dataset {root} does not match its manifest: {defects[0]}{more}; run "
                               f"`genlip-data verify {root}` for a full report")
    mode = ImageMode(**manifest["image"])
    counts = np.cumsum([0] + [rec["samples"] for rec in manifest["shards"]], dtype=np.int64)
    return ShardDataset(root=root, manifest=manifest, image_mode=mode, shards=ShardSet(root, manifest["shards"]),
                        offsets=counts)


def read_sample(ds: ShardDataset, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.void]:
    """(image bytes, text ids, prompt ids or None, meta) of global sample `index`, CRC-checked."""
    shard, i = ds.locate(index)
    meta = shard.meta[i]
    image, text = shard.image[i], shard.text[i]
    if zlib.crc32(image) != int(meta["image_crc"]) or zlib.crc32(text.tobytes()) != int(meta["text_crc"]):
        raise DatasetError(f"{ds.root}/shards/{shard.name}.*.bin: sample {i} fails its CRC check (corrupt data); "
                           f"run `genlip-data verify {ds.root}`")
    prompt = shard.prompt[i] if shard.prompt is not None and meta["prompt_len"] else None
    return image, text, prompt, meta
