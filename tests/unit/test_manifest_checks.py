"""manifest.json is checked field by field: `genlip-data verify` re-derives every field from the shards and
the tokenizer and names the one that was edited; `load_manifest` refuses a malformed manifest with one
line naming the file and key, through the library and through the CLI (no traceback)."""

import json
import shutil
from pathlib import Path

import pytest

from data_tools.cli import main as data_main
from data_tools.verify import verify
from genlip.data.shards import DatasetError, load_manifest
from tests.helpers import build_tiny_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    ds, _, _ = build_tiny_dataset(root, shards=2, per_shard=6)
    assert verify(ds, quiet=True) == []
    return ds


def edited(dataset, tmp_path, edit) -> Path:
    out = tmp_path / "ds"
    shutil.copytree(dataset, out)
    m = json.loads((out / "manifest.json").read_text())
    edit(m, out)
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def _drop_last_shard(m, _):
    gone = m["shards"].pop()
    for k in m["totals"]:  # totals made consistent with the remaining records: only the disk tells
        m["totals"][k] -= gone[k]


def _set(*keys, value=None, fn=None):
    def edit(m, _):
        d = m
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = fn(d[keys[-1]]) if fn else value
    return edit


def _both(m, root, key, fn):
    """Edit a shard record in the manifest and in its done.json alike (only the index files can tell)."""
    m["shards"][0][key] = fn(m["shards"][0][key])
    m["totals"][key] = sum(r[key] for r in m["shards"])
    done = root / "shards" / f"{m['shards'][0]['name']}.done.json"
    rec = json.loads(done.read_text())
    rec[key] = m["shards"][0][key]
    done.write_text(json.dumps(rec))


EDITS = {
    "shard record removed": (_drop_last_shard, "does not list"),
    "totals.samples": (_set("totals", "samples", fn=lambda v: v + 1), "totals.samples"),
    "totals.text_tokens": (_set("totals", "text_tokens", fn=lambda v: v - 3), "totals.text_tokens"),
    "totals.patches": (_set("totals", "patches", fn=lambda v: v * 2), "totals.patches"),
    "shard samples": (_set("shards", 0, "samples", fn=lambda v: v - 1), "'samples'"),
    "shard + done.json text_tokens": (lambda m, r: _both(m, r, "text_tokens", lambda v: v + 5), "tokens, manifest says"),
    "shard + done.json patches": (lambda m, r: _both(m, r, "patches", lambda v: v + 16), "patches, manifest says"),
    "vocab_size": (_set("tokenizer", "vocab_size", fn=lambda v: v - 77), "tokenizer.vocab_size"),
    "vocab_size larger": (_set("tokenizer", "vocab_size", fn=lambda v: v + 51), "tokenizer.vocab_size"),
    "end_ids": (_set("tokenizer", "end_ids", fn=lambda v: [v[0] + 1]), "tokenizer.end_ids"),
    "prompt ids": (_set("prompt", "ids", fn=lambda v: v[:-1]), "prompt.ids"),
    "tokenizer sha256": (_set("tokenizer", "sha256", value="0" * 64), "sha256"),
    "tokenizer kind": (_set("tokenizer", "kind", value="hf"), "tokenizer.kind"),
    "image size": (_set("image", "size", value=128), "image.size"),
    "image patch size": (_set("image", "patch_size", value=32), "image.patch_size"),
    "image encoding": (_set("image", "encoding", value="raw"), "image.encoding"),
    "skip counts": (_set("skipped", value={"missing_image": {"count": 4, "examples": []}}), "skipped counts"),
}


@pytest.mark.parametrize("name", EDITS)
def test_verify_names_every_edited_field(dataset, tmp_path, capsys, name):
    edit, needle = EDITS[name]
    ds = edited(dataset, tmp_path, edit)
    assert data_main(["verify", str(ds), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert needle in err, err
    assert "Traceback" not in err


def test_vocab_size_edit_is_refused_when_a_run_opens_the_dataset(dataset, tmp_path):
    """Training opens its datasets with a check (open_dataset check != none): the tokenizer fields are part of it."""
    from genlip.data.shards import open_dataset

    ds = edited(dataset, tmp_path, _set("tokenizer", "vocab_size", fn=lambda v: v - 77))
    with pytest.raises(DatasetError, match="tokenizer.vocab_size"):
        open_dataset(ds, check="quick")


def test_token_ids_past_the_vocabulary_are_refused_by_the_loader(dataset, tmp_path):
    from genlip.data.loader import LoaderSpec, PackedRows
    from genlip.data.packing import PackingSpec

    ds = edited(dataset, tmp_path, _set("tokenizer", "vocab_size", value=10))
    rows = PackedRows(LoaderSpec([str(ds)], packing=PackingSpec(budget=256, max_samples_per_row=8), check="none"))
    with pytest.raises(DatasetError, match="not below the tokenizer's vocab_size 10"):
        rows.row(0)


MALFORMED = {
    "a JSON list": (lambda m: [m], "JSON list"),
    "no shards": (lambda m: {k: v for k, v in m.items() if k != "shards"}, "key shards is missing"),
    "no tokenizer": (lambda m: {k: v for k, v in m.items() if k != "tokenizer"}, "key tokenizer is missing"),
    "vocab_size a string": (lambda m: m | {"tokenizer": m["tokenizer"] | {"vocab_size": "277"}},
                            "tokenizer.vocab_size must be a non-negative integer"),
    "shards an object": (lambda m: m | {"shards": {}}, "shards must be a JSON list"),
    "shard without files": (lambda m: m | {"shards": [{k: v for k, v in m["shards"][0].items() if k != "files"}]},
                            "key shards[0].files is missing"),
    "shard missing its meta": (lambda m: m | {"shards": [m["shards"][0] | {"files": {
        k: v for k, v in m["shards"][0]["files"].items() if not k.endswith("meta.npy")}}]}, "must list"),
    "shard name with a path": (lambda m: m | {"shards": [m["shards"][0] | {"name": "../x"}]}, "not a plain file name"),
    "unknown image key": (lambda m: m | {"image": m["image"] | {"sizee": 3}}, "image:"),
    "no totals": (lambda m: {k: v for k, v in m.items() if k != "totals"}, "key totals is missing"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_manifest_is_one_line_naming_file_and_key(dataset, tmp_path, capsys, name):
    change, needle = MALFORMED[name]
    ds = tmp_path / "ds"
    shutil.copytree(dataset, ds)
    (ds / "manifest.json").write_text(json.dumps(change(json.loads((ds / "manifest.json").read_text()))))
    with pytest.raises(DatasetError, match="manifest.json") as e:
        load_manifest(ds)
    assert needle in str(e.value) and "\n" not in str(e.value)
    assert data_main(["verify", str(ds), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
