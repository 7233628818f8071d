"""What `manifest.json` must hold, and whether it still agrees with the files it describes.

Three levels, cheapest first:
- `structure_problem(manifest)`: types and required keys, checked by every `load_manifest`, so no reader
  ever meets a KeyError or a list where a dict belongs.
- `tokenizer_defects(root, manifest)`: the recorded vocabulary size, end ids, prompt ids and sha256
  against the tokenizer file itself (`open_dataset` with a check, `genlip-data verify`, and
  `check_trainable`, which also refuses a dataset with no samples).
- `record_defects(root, manifest)`: the shard list against the shards on disk, each shard record against
  its `NAME.done.json`, and the totals and skip counts against the sums of the records (`genlip-data verify`,
  which also re-derives every record from the index files).

Problems are one-line strings that name the file and the field; the callers decide whether one is an
exception (`DatasetError`) or a defect in a report.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from genlip.errors import UserError


class DatasetError(UserError):
    """A dataset that does not match its manifest; the message names the file and what to do."""


class _Each:
    """Schema marker: a dict with any keys, every value of the given schema."""

    def __init__(self, schema):
        self.schema = schema


_FILE = {"bytes": int, "sha256": str}
_SKIPS = _Each({"count": int, "examples": [str]})
SCHEMA = {
    "format": str,
    "schema_version": int,
    "tokenizer": {"file": str, "sha256": str, "kind": str, "vocab_size": int, "end_ids": [int]},
    "prompt": {"text": str, "ids": [int]},
    "image": {"kind": str, "size": int, "patch_size": int, "min_patches": int, "max_patches": int,
              "encoding": str, "quality": int},
    "shards": [{"name": str, "samples": int, "text_tokens": int, "patches": int, "files": _Each(_FILE),
                "skipped": _SKIPS}],
    "totals": {"samples": int, "text_tokens": int, "patches": int},
    "skipped": _SKIPS,
}
"""The keys readers rely on (build writes two more: `build` and `command`, and a `source` per shard)."""

_TYPE_NAMES = {int: "a non-negative integer", str: "a string"}
TOTALS = ("samples", "text_tokens", "patches")


def _problem(value, schema, where: str) -> str | None:
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return f"{where or 'the top level'} must be a JSON object, found {type(value).__name__}"
        for key, sub in schema.items():
            if key not in value:
                return f"key {where + '.' if where else ''}{key} is missing"
            found = _problem(value[key], sub, f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    if isinstance(schema, _Each):
        if not isinstance(value, dict):
            return f"{where} must be a JSON object, found {type(value).__name__}"
        return next((p for k, v in value.items() if (p := _problem(v, schema.schema, f"{where}[{k!r}]"))), None)
    if isinstance(schema, list):
        if not isinstance(value, list):
            return f"{where} must be a JSON list, found {type(value).__name__}"
        return next((p for i, v in enumerate(value) if (p := _problem(v, schema[0], f"{where}[{i}]"))), None)
    ok = isinstance(value, schema) and not isinstance(value, bool) and (schema is not int or value >= 0)
    return None if ok else f"{where} must be {_TYPE_NAMES[schema]}, found {value!r}"


def _plain_name(name: str) -> bool:
    """A file name inside the dataset directory (names come from input files: spaces and unicode are fine)."""
    return bool(name) and name not in (".", "..") and not set(name) & {"/", "\\", "\0"}


def structure_problem(manifest) -> str | None:
    """The first way `manifest` (parsed JSON) breaks the schema, or None. Names the key."""
    problem = _problem(manifest, SCHEMA, "")
    if problem:
        return problem
    names = [rec["name"] for rec in manifest["shards"]]
    for name in names:
        if not _plain_name(name):
            return f"shard name {name!r} is not a plain file name"
    if len(set(names)) != len(names):
        return f"shards lists a shard twice ({sorted({n for n in names if names.count(n) > 1})[:3]})"
    for rec in manifest["shards"]:
        name, files = rec["name"], rec["files"]
        need = {f"{name}.{k}.{e}" for k in ("text", "image") for e in ("bin", "idx")} | {f"{name}.meta.npy"}
        prompts = {f"{name}.prompt.bin", f"{name}.prompt.idx"}
        extra = set(files) - need - prompts
        if not need <= set(files) or extra or len(prompts & set(files)) == 1:
            return (f"shards[{name!r}].files must list {sorted(need)} (and both prompt files or none), "
                    f"lists {sorted(files)}")
    if not _plain_name(manifest["tokenizer"]["file"]):
        return f"tokenizer.file {manifest['tokenizer']['file']!r} is not a plain file name in the dataset directory"
    if not manifest["tokenizer"]["end_ids"]:
        return "tokenizer.end_ids is empty"
    from genlip.data.images import ImageMode

    try:
        ImageMode(**manifest["image"]).validate()
    except (TypeError, ValueError) as e:
        return f"image: {e}"
    if manifest["image"]["patch_size"] < 1:
        return "image.patch_size must be positive"
    return None


def tokenizer_defects(root: str | Path, manifest: dict) -> list[str]:
    """The tokenizer fields of the manifest against the tokenizer file (sha256, kind, vocab_size, end_ids,
    prompt ids = encode(prompt text)); [] when they agree. `manifest` has passed `structure_problem`."""
    from genlip.data.tokenizer import Tokenizer, file_sha256

    rec, path = manifest["tokenizer"], Path(root) / manifest["tokenizer"]["file"]
    mpath = Path(root) / "manifest.json"
    if not path.is_file():
        return [f"{path}: missing tokenizer file (manifest.json tokenizer.file)"]
    defects = []
    if file_sha256(path) != rec["sha256"]:
        defects.append(f"{path}: sha256 differs from {mpath} tokenizer.sha256 (another tokenizer, or the record was "
                       "edited); rebuild the dataset with the tokenizer it should use")
    try:
        tok = Tokenizer(path)
    except Exception as e:  # noqa: BLE001 - sentencepiece/tokenizers fail in many ways on a damaged file
        return defects + [f"{path}: cannot be loaded as a tokenizer ({type(e).__name__}: {e})"]
    prompt_ids = tok.encode(manifest["prompt"]["text"])
    for key, recorded, actual in (("tokenizer.kind", rec["kind"], tok.kind),
                                  ("tokenizer.vocab_size", rec["vocab_size"], tok.vocab_size),
                                  ("tokenizer.end_ids", rec["end_ids"], tok.end_ids),
                                  ("prompt.ids", manifest["prompt"]["ids"], prompt_ids)):
        if recorded != actual:
            defects.append(f"{mpath}: {key} is {_short(recorded)} but {path.name} gives {_short(actual)}; "
                           "the manifest was edited or belongs to another tokenizer: rebuild the dataset")
    return defects


def check_tokenizer(root: str | Path, manifest: dict) -> None:
    """Raise DatasetError on the first tokenizer defect (training start-up)."""
    defects = tokenizer_defects(root, manifest)
    if defects:
        raise DatasetError(defects[0] + (f" (and {len(defects) - 1} more: run `genlip-data verify {root}`)"
                                         if len(defects) > 1 else ""))


def check_trainable(root: str | Path, manifest: dict) -> None:
    """What a training run needs of a dataset beyond a valid manifest, checked before any process starts:
    samples at all, and tokenizer fields that agree with the tokenizer (they size the model)."""
    if not any(rec["samples"] for rec in manifest["shards"]):
        raise DatasetError(f"{root}: the dataset has no samples (its manifest.json lists {len(manifest['shards'])} "
                           "shard(s) holding none); rebuild it from inputs with valid samples (its 'skipped' counts "
                           "say why samples were dropped) or leave it out")
    check_tokenizer(root, manifest)


def shards_on_disk(root: str | Path) -> set[str]:
    """Names of the shards with any file in DATASET/shards (temporary files of a writer excluded)."""
    pattern = re.compile(r"(.+)\.(?:(?:text|image|prompt)\.(?:bin|idx)|meta\.npy|done\.json)")
    shard_dir = Path(root) / "shards"
    found = (pattern.fullmatch(p.name) for p in shard_dir.iterdir() if not p.name.startswith(".")) \
        if shard_dir.is_dir() else ()
    return {m[1] for m in found if m}


def record_defects(root: str | Path, manifest: dict) -> list[str]:
    """The manifest's shard list, shard records, totals, skip counts and build options against the shard
    directory, the `NAME.done.json` records and `build_options.json`; [] when they agree."""
    root = Path(root)
    mpath, defects = root / "manifest.json", []
    listed = [rec["name"] for rec in manifest["shards"]]
    for name in sorted(shards_on_disk(root) - set(listed)):
        defects.append(f"{root}/shards/{name}.*: a shard on disk that {mpath} does not list (a shard record was "
                       "removed?); rerun `genlip-data build` with the same inputs to rewrite the manifest")
    for rec in manifest["shards"]:
        done = root / "shards" / f"{rec['name']}.done.json"
        try:
            written = json.loads(done.read_text())
        except (OSError, ValueError):
            defects.append(f"{done}: missing or unreadable: the shard is not finished")
            continue
        diff = sorted(k for k in set(rec) | set(written) if rec.get(k) != written.get(k))
        if diff:
            defects.append(f"{mpath}: shards[{rec['name']!r}] differs from {done.name} in {diff}")
    for key in TOTALS:
        total = sum(rec[key] for rec in manifest["shards"])
        if manifest["totals"][key] != total:
            defects.append(f"{mpath}: totals.{key} is {manifest['totals'][key]}, the shard records sum to {total}")
    skipped: dict[str, int] = {}
    for rec in manifest["shards"]:
        for reason, info in rec["skipped"].items():
            skipped[reason] = skipped.get(reason, 0) + info["count"]
    recorded = {r: i["count"] for r, i in manifest["skipped"].items()}
    if recorded != skipped:
        defects.append(f"{mpath}: skipped counts {_short(recorded)} differ from the shard records' {_short(skipped)}")
    build = manifest.get("build")
    if isinstance(build, dict):
        recorded = {"image": manifest["image"], "prompt": manifest["prompt"]["text"],
                    "tokenizer_file": manifest["tokenizer"]["file"]}
        for key, value in recorded.items():
            for sub, built, ours in _differences(build.get(key), value):
                defects.append(f"{mpath}: build.{key}{sub} is {_short(built)}, but the manifest records {_short(ours)}")
        options = root / "build_options.json"
        if options.is_file() and _read_json(options) != build:
            defects.append(f"{mpath}: build differs from {options.name}, the options the shards were built with")
    return defects


def _differences(a, b):
    """(".key" or "", a's value, b's value) for each top-level key where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [(f".{k}", a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return [] if a == b else [("", a, b)]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _short(value, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[:limit - 3] + "..."
