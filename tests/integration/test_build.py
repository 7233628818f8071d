"""genlip-data end to end: raw shards with planted defects -> dataset -> verify, Megatron reads it,
kill-and-rerun is byte-identical, array tasks split the work, tables and stage 2 work, errors are clear."""

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data_tools.build import key_hash
from data_tools.cli import main as data_main
from genlip.data.images import ImageMode, load_image, resize_for_mode
from genlip.data.shards import open_dataset, read_sample
from genlip.data.synthetic import render_scene, write_jsonl
from genlip.data.tokenizer import Tokenizer
from megatron_ext.indexed import read_megatron_indexed
from tests.helpers import ROOT, make_raw_dataset
from tests.unit.test_images import png_bytes, png_claiming


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    tars, tok = make_raw_dataset(root, shards=3, per_shard=20)
    return root, tars, tok


def jpeg(img):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_bad_shard(path: Path):
    """img2dataset layout via webdataset's writer: good samples interleaved with planted defects."""
    good, bad = {}, {}
    with wds.TarWriter(str(path)) as sink:
        for i in range(6):
            img, cap = render_scene(7, i, size=64)
            key = f"good{i:03d}"
            sample = {"__key__": key, "jpg": jpeg(img)}
            if i % 2:
                sample["json"] = json.dumps({"caption": cap, "url": "x"}).encode()  # caption from json only
            else:
                sample["txt"] = cap.encode()
            sink.write(sample)
            good[key] = (img, cap)
        img, cap = render_scene(7, 99, size=64)
        planted = {
            "undecodable_image": {"jpg": b"\xff\xd8\xffgarbage", "txt": b"a caption"},
            "empty_image": {"jpg": b"", "txt": b"a caption"},
            "image_too_large": {"png": png_claiming(40000, 40000), "txt": b"a caption"},
            "missing_caption": {"jpg": jpeg(img)},
            "empty_caption": {"jpg": jpeg(img), "txt": b"   \n"},
            "non_utf8_caption": {"jpg": jpeg(img), "txt": b"caf\xe9 \xff\xfe"},
            "missing_image": {"txt": b"a caption with no image"},
        }
        for reason, fields in planted.items():
            sink.write({"__key__": f"bad_{reason}", **fields})
            bad[reason] = f"bad_{reason}"
        truncated_jpeg = jpeg(img)[:200]
        sink.write({"__key__": "bad_truncated", "jpg": truncated_jpeg, "txt": b"cut short"})
    return good, bad


def test_tar_round_trip_with_planted_defects(raw, tmp_path):
    _, _, tok_path = raw
    good, bad = write_bad_shard(tmp_path / "mixed.tar")
    out = tmp_path / "ds"
    assert data_main(["build", str(tmp_path / "mixed.tar"), "--out", str(out), "--tokenizer", str(tok_path),
                      "--image-size", "64", "--encoding", "raw", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    skipped = {r: i["count"] for r, i in manifest["skipped"].items()}
    assert skipped == {"undecodable_image": 2, "empty_image": 1, "image_too_large": 1, "missing_caption": 1,
                       "empty_caption": 1, "non_utf8_caption": 1, "missing_image": 1}
    assert manifest["skipped"]["image_too_large"]["examples"] == ["mixed/bad_image_too_large"]
    assert manifest["totals"]["samples"] == len(good)

    ds = open_dataset(out, check="full")
    tok = Tokenizer(out / "tokenizer.model")
    mode = ImageMode(size=64, encoding="raw")
    by_key = {}
    for s in range(ds.num_samples):
        image, text, prompt, meta = read_sample(ds, s)
        by_key[int(meta["key_hash"])] = (image, text, meta)
    for key, (img, cap) in good.items():
        image, text, meta = by_key[key_hash("mixed", key)]
        want = np.asarray(resize_for_mode(load_image(jpeg(img)), mode))
        assert np.array_equal(np.frombuffer(image, np.uint8).reshape(want.shape), want)
        assert text.tolist() == tok.encode(cap) + tok.end_ids
        assert (meta["grid_h"], meta["grid_w"]) == (4, 4)
    assert data_main(["verify", str(out), "--quiet"]) == 0


def test_truncated_tar_keeps_the_complete_samples(raw, tmp_path):
    _, tars, tok_path = raw
    data = tars[0].read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "ds"
    assert data_main(["build", str(cut), "--out", str(out), "--tokenizer", str(tok_path), "--image-size", "64",
                      "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["skipped"]["truncated_tar"]["count"] >= 1
    assert 8 <= m["totals"]["samples"] < 20
    assert data_main(["verify", str(out), "--quiet"]) == 0


def test_megatron_reads_our_index_files(raw, tmp_path):
    _, tars, tok_path = raw
    out = tmp_path / "ds"
    assert data_main(["build", *map(str, tars), "--out", str(out), "--tokenizer", str(tok_path),
                      "--image-size", "64", "--quiet"]) == 0
    ds = open_dataset(out)
    for shard in ds.shards:
        for kind, ours in (("text", shard.text), ("image", shard.image)):
            theirs = read_megatron_indexed(str(out / "shards" / f"{shard.name}.{kind}"))
            assert len(theirs) == len(ours) == 20
            for i, seq in enumerate(theirs):
                assert seq.dtype == ours.dtype and np.array_equal(seq, ours[i])


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_sigkill_then_rerun_is_byte_identical(raw, tmp_path):
    root, tars, tok_path = raw
    many = [tmp_path / f"in{i}.tar" for i in range(6)]
    for i, p in enumerate(many):
        p.write_bytes(tars[i % 3].read_bytes())
    args = ["build", *map(str, many), "--tokenizer", str(tok_path), "--image-size", "64", "--quiet"]
    assert data_main(args + ["--out", str(tmp_path / "clean")]) == 0

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "data_tools.cli", *args, "--out", str(killed)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    deadline = time.time() + 60
    while not list((killed / "shards").glob("*.done.json")) and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifest.json").exists(), "killed too late to test anything; make the inputs bigger"
    assert data_main(args + ["--out", str(killed)]) == 0
    assert _tree(killed) == _tree(tmp_path / "clean")


def test_array_tasks_split_inputs_and_the_last_writes_the_manifest(raw, tmp_path):
    _, tars, tok_path = raw
    common = ["build", *map(str, tars), "--tokenizer", str(tok_path), "--image-size", "64", "--quiet"]
    out = tmp_path / "arr"
    assert data_main(common + ["--out", str(out), "--shard-index", "1", "--num-shard-groups", "2"]) == 0
    assert sorted(p.name for p in (out / "shards").glob("*.done.json")) == ["00001.done.json"]
    assert not (out / "manifest.json").exists()
    assert data_main(common + ["--out", str(out), "--shard-index", "0", "--num-shard-groups", "2"]) == 0
    assert data_main(common + ["--out", str(tmp_path / "one")]) == 0
    assert _tree(out) == _tree(tmp_path / "one")


def _prepare(args):
    from data_tools.build import BuildOptions, prepare_output

    out, tok, barrier = args
    barrier.wait()  # every task at once, as SLURM array tasks starting together
    prepare_output(Path(out), Path(tok), BuildOptions())


def test_array_tasks_preparing_the_output_at_once_all_succeed(raw, tmp_path):
    """Array tasks copy the tokenizer into the same directory at the same moment; a shared temporary name
    made one task's rename find its file gone (seen on the SLURM test cluster). Each now has its own."""
    import multiprocessing as mp

    _, _, tok_path = raw
    ctx = mp.get_context("fork")
    for round_ in range(10):
        out = tmp_path / f"out{round_}"
        with ctx.Manager() as manager:
            barrier = manager.Barrier(6)
            with ctx.Pool(6) as pool:
                pool.map(_prepare, [(str(out), str(tok_path), barrier)] * 6)
        assert (out / "tokenizer.model").read_bytes() == tok_path.read_bytes()
        assert sorted(p.name for p in out.iterdir()) == ["build_options.json", "shards", "tokenizer.model"]


def test_table_inputs_and_native_aspect_stage2(raw, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, _, tok_path = raw
    jsonl = write_jsonl(tmp_path / "j", num_samples=6, seed=3, size=96)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    # stage-2-like images of various aspect ratios, in a Parquet file holding the image bytes
    blobs = []
    for i, r in enumerate(rows):
        img = Image.open(jsonl.parent / r["image"]).resize((96 + 40 * i, 96 + 17 * (5 - i)))
        blobs.append({"image": {"bytes": png_bytes(1, 1) if i == 5 else jpeg(img)}, "caption": r["caption"],
                      "key": f"k{i}", "instruction": "What is shown?" if i % 2 else None})
    blobs[5]["image"] = {"bytes": jpeg(Image.new("RGB", (2000, 10)))}  # extreme aspect ratio
    pq.write_table(pa.Table.from_pylist(blobs), tmp_path / "t.parquet")
    (tmp_path / "c.csv").write_text("image,caption\n" + "".join(f"j/{r['image']},\"{r['caption']}\"\n" for r in rows))

    out = tmp_path / "ds"
    assert data_main(["build", str(jsonl), str(tmp_path / "t.parquet"), str(tmp_path / "c.csv"), "--out", str(out),
                      "--tokenizer", str(tok_path), "--stage", "2", "--min-patches", "16", "--max-patches", "64",
                      "--instruction-field", "instruction", "--key-column", "key", "--quiet"]) == 0
    ds = open_dataset(out)
    m = ds.manifest
    assert [r["samples"] for r in m["shards"]] == [6, 5, 6]
    assert m["skipped"] == {"extreme_aspect_ratio": {"count": 1, "examples": ["t/k5"]}}
    grids = {(int(a), int(b)) for sh in ds.shards for a, b in zip(sh.meta["grid_h"], sh.meta["grid_w"])}
    assert len(grids) > 3 and all(16 <= h * w <= 64 for h, w in grids)
    prompts = [int(p) for p in ds.shards[1].meta["prompt_len"]]
    assert [p > 0 for p in prompts] == [False, True, False, True, False]
    assert data_main(["verify", str(out), "--quiet"]) == 0


def test_missing_inputs_and_bad_arguments_are_clear_errors(raw, tmp_path, capsys):
    _, tars, tok_path = raw
    out = tmp_path / "never"
    assert data_main(["build", str(tmp_path / "nope.tar"), "--out", str(out), "--tokenizer", str(tok_path)]) == 2
    assert "nope.tar does not exist" in capsys.readouterr().err
    empty = tmp_path / "emptydir"
    empty.mkdir()
    assert data_main(["build", str(empty), "--out", str(out), "--tokenizer", str(tok_path)]) == 2
    assert "holds no" in capsys.readouterr().err
    assert data_main(["build", str(tars[0]), "--out", str(out), "--tokenizer", str(tmp_path / "t.model")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.exists()


def test_hf_tokenizer_json_with_two_token_end_marker(raw, tmp_path):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    _, tars, _ = raw
    from genlip.data.sources import SourceOptions
    from data_tools.tokenizer import iter_captions

    hf = HFTokenizer(models.BPE(unk_token="<unk>"))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(list(iter_captions(tars, SourceOptions())), trainer)
    path = tmp_path / "tokenizer.json"
    hf.save(str(path))
    tok = Tokenizer(path)
    assert tok.kind == "hf" and len(tok.end_ids) == 2 and tok.end_ids[0] == hf.token_to_id("<|im_end|>")
    out = tmp_path / "ds"
    assert data_main(["build", str(tars[0]), "--out", str(out), "--tokenizer", str(path), "--image-size", "64",
                      "--quiet"]) == 0
    ds = open_dataset(out)
    _, text, _, _ = read_sample(ds, 0)
    assert text[-2:].tolist() == tok.end_ids and (out / "tokenizer.json").is_file()
