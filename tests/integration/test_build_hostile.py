"""genlip-data against hostile inputs: every rejection is one line and a non-zero exit, never a traceback;
per-sample problems (duplicate keys, decompression bombs, /dev/zero, huge CSV fields) are skipped and
counted under a memory limit; a dataset with no sample writes no manifest; a full disk leaves no partial
shard; the default tokenizer never emits <unk>; `genlip-data --help` does not import torch."""

import errno
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_tools.build import key_hash
from data_tools.cli import main as data_main
from genlip.data.images import ImageMode, load_image, resize_for_mode
from genlip.data.indexed import IndexedWriter
from genlip.data.shards import open_dataset, read_sample
from genlip.data.synthetic import render_scene, write_jsonl
from genlip.data.tokenizer import STAGE1_PROMPT, Tokenizer
from tests.helpers import ROOT, make_raw_dataset


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    tars, tok = make_raw_dataset(root, shards=2, per_shard=10)
    return tars, tok


def encoded(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def build_args(inputs, out: Path, tok: Path, *extra: str) -> list[str]:
    return ["build", *map(str, inputs), "--out", str(out), "--tokenizer", str(tok), "--image-size", "64", "--quiet",
            *extra]


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def skipped(out: Path) -> dict[str, int]:
    return {r: i["count"] for r, i in json.loads((out / "manifest.json").read_text())["skipped"].items()}


def test_a_dataset_with_no_sample_is_an_error_and_writes_no_manifest(raw, tmp_path, capsys):
    _, tok = raw
    empty = tmp_path / "a.jsonl"
    empty.write_text("")
    rows = tmp_path / "b.jsonl"
    rows.write_text("".join(json.dumps({"img": f"x{i}.png", "text": "a caption"}) + "\n" for i in range(3)))
    out = tmp_path / "ds"
    assert data_main(build_args([empty, rows], out, tok)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "no usable samples in a.jsonl, b.jsonl: 3 missing_image" in line and "--caption-field" in line
    assert not (out / "manifest.json").exists()

    # The empty shards are not marked done: fixing the input and rerunning the same command works.
    good = write_jsonl(tmp_path / "good", num_samples=4, seed=1, size=64)
    empty.write_text("".join(json.dumps({**json.loads(r), "image": f"good/{json.loads(r)['image']}"}) + "\n"
                             for r in good.read_text().splitlines()))
    assert data_main(build_args([empty, rows], out, tok)) == 0
    assert json.loads((out / "manifest.json").read_text())["totals"]["samples"] == 4


def test_a_table_without_the_named_columns_is_an_error_naming_them(raw, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, tok = raw
    csv = tmp_path / "c.csv"
    csv.write_text("path,caption\nx.png,a caption\n")
    parquet = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist([{"image": b"x", "text": "a caption"}]), parquet)
    out = tmp_path / "ds"
    assert data_main(build_args([csv], out, tok)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "c.csv has no column 'image' (its columns: path, caption)" in line and "--image-column" in line
    assert data_main(build_args([parquet], out, tok)) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "p.parquet has no column 'caption' (its columns: image, text)" in line and "--caption-field" in line
    assert data_main(build_args([parquet], out, tok, "--caption-field", "text")) == 2  # b"x" is no image
    assert "1 undecodable_image" in one_error_line(capsys.readouterr().err)

    corrupt = tmp_path / "bad.parquet"
    corrupt.write_bytes(b"PAR1" + os.urandom(200))
    assert data_main(build_args([corrupt], tmp_path / "ds2", tok)) == 2
    assert "bad.parquet: not a readable Parquet file" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "ds2").exists()


def test_duplicate_keys_in_a_tar_are_counted_and_never_mispaired(raw, tmp_path):
    _, tok_path = raw
    scenes = [render_scene(5, i, size=64) for i in range(4)]
    jpgs = [encoded(img) for img, _ in scenes]
    tar = write_tar(tmp_path / "dup.tar", [
        ("a.jpg", jpgs[0]), ("a.txt", scenes[0][1].encode()),
        ("b.jpg", jpgs[1]), ("b.txt", scenes[1][1].encode()),
        ("a.jpg", jpgs[2]),  # key a again, later: a duplicate, never paired with a.txt above
        ("c.jpg", jpgs[3]), ("c.txt", scenes[3][1].encode()), ("c.jpg", jpgs[2]),  # c.jpg twice in a row
    ])
    out = tmp_path / "ds"
    assert data_main(build_args([tar], out, tok_path, "--encoding", "raw")) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert m["skipped"] == {"duplicate_key": {"count": 2, "examples": ["dup/a", "dup/c"]}}
    ds, tok, mode = open_dataset(out), Tokenizer(out / "tokenizer.model"), ImageMode(size=64, encoding="raw")
    got = {}
    for s in range(ds.num_samples):
        image, text, _, meta = read_sample(ds, s)
        got[int(meta["key_hash"])] = (image, text)
    assert len(got) == 3
    for key, i in (("a", 0), ("b", 1), ("c", 3)):
        image, text = got[key_hash("dup", key)]
        want = np.asarray(resize_for_mode(load_image(jpgs[i]), mode))
        assert np.array_equal(np.frombuffer(image, np.uint8).reshape(want.shape), want)
        assert text.tolist() == tok.encode(scenes[i][1]) + tok.end_ids


def _limit_memory():
    limit = 3 << 30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_bombs_and_devices_are_skipped_under_a_memory_limit(raw, tmp_path):
    """A 280-byte 1x50000 PNG (stage 1 used to resize it to 224 x 11.2M pixels: 7.5 GB), and /dev/zero and a
    FIFO as image paths, are skipped and counted, with default options, by a build that may map only 3 GiB."""
    _, tok = raw
    good = [render_scene(6, i, size=96) for i in range(3)]
    tar = write_tar(tmp_path / "bombs.tar", [
        ("thin.png", encoded(Image.new("RGB", (1, 50000)), "PNG")), ("thin.txt", b"a thin strip"),
        *[m for i, (img, cap) in enumerate(good) for m in ((f"g{i}.jpg", encoded(img)), (f"g{i}.txt", cap.encode()))],
    ])
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "g.jpg").write_bytes(encoded(good[0][0]))
    table = tmp_path / "paths.csv"
    table.write_text("image,caption\n/dev/zero,endless\nfifo.png,a pipe\ng.jpg,a good one\n")

    def build(inputs, out, *extra):
        cmd = [sys.executable, "-m", "data_tools.cli", *build_args(inputs, out, tok, "--image-size", "224", *extra)]
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        proc = subprocess.run(cmd, env=env, preexec_fn=_limit_memory, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((out / "manifest.json").read_text())

    m = build([tar, table], tmp_path / "ds")
    assert {r: i["count"] for r, i in m["skipped"].items()} == {"extreme_aspect_ratio": 1, "image_not_a_file": 2}
    assert m["totals"]["samples"] == 4
    # Let the strip through: stage 1 resamples only its centre square, so it fits in the same memory.
    assert build([tar], tmp_path / "ds2", "--max-aspect-ratio", "1e6")["totals"]["samples"] == 4


def test_image_limits_are_options(raw, tmp_path):
    _, tok = raw
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    img, cap = render_scene(6, 0, size=96)
    tar = write_tar(tmp_path / "big.tar", [
        ("wide.png", encoded(Image.new("RGB", (2200, 2000)), "PNG")), ("wide.txt", b"4.4 megapixels"),
        ("noisy.png", encoded(noise, "PNG")), ("noisy.txt", b"270 kB of noise"),
        ("strip.png", encoded(Image.new("RGB", (400, 100)), "PNG")), ("strip.txt", b"4:1"),
        ("g.jpg", encoded(img)), ("g.txt", cap.encode()),
    ])
    out = tmp_path / "ds"
    assert data_main(build_args([tar], out, tok, "--max-image-pixels", "4000000", "--max-image-bytes", "200000",
                                "--max-aspect-ratio", "3")) == 0
    assert skipped(out) == {"image_too_large": 2, "extreme_aspect_ratio": 1}
    assert json.loads((out / "manifest.json").read_text())["build"]["limits"] == {
        "max_bytes": 200000, "max_pixels": 4000000, "max_aspect_ratio": 3.0}


def test_table_readers_skip_bad_rows(raw, tmp_path):
    _, tok = raw
    jsonl = write_jsonl(tmp_path, num_samples=3, seed=2, size=64)
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    huge = "x" * (17 << 20)  # over the 16 MiB field limit: the row is skipped, the next ones are read
    lines = [f"{rows[0]['image']},{'a long caption ' * 70_000}", f"{rows[1]['image']},{huge}",
             f"{rows[1]['image']},{rows[1]['caption']}", f"{rows[2]['image']},{rows[2]['caption']}"]
    table = tmp_path / "t.csv"
    table.write_text("image,caption\n" + "\n".join(lines) + "\n")
    with open(tmp_path / "t2.jsonl", "w") as f:
        f.write(json.dumps({"image": rows[0]["image"], "caption": huge}) + "\n" + jsonl.read_text())
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = tmp_path / "p.parquet"  # damaged after its footer was read: its rows are counted, not a traceback
    pq.write_table(pa.Table.from_pylist([{"image": b"x" * 100, "caption": f"c{i}"} for i in range(2000)]), parquet,
                   row_group_size=1000)
    data, offset = bytearray(parquet.read_bytes()), pq.ParquetFile(parquet).metadata.row_group(1).column(0)
    data[offset.data_page_offset:offset.data_page_offset + 40] = b"\xff" * 40
    parquet.write_bytes(bytes(data))
    out = tmp_path / "ds"
    assert data_main(build_args([table, tmp_path / "t2.jsonl", parquet], out, tok)) == 0
    counts = skipped(out)
    counts.pop("undecodable_image", None)  # the Parquet rows read before the damage, if any (b"xxx" images)
    assert counts == {"caption_too_long": 1, "bad_row": 2, "corrupt_table": 1}
    assert json.loads((out / "manifest.json").read_text())["totals"]["samples"] == 2 + 3


def test_unwritable_output_is_one_line_naming_the_path(raw, tmp_path):
    tars, tok = raw
    (tmp_path / "afile").write_text("")
    outs = [tmp_path / "afile" / "ds"]  # a regular file where a directory must be: ENOTDIR, even for root
    if Path("/sys").is_dir():
        outs.append(Path("/sys/genlip-hostile-test"))  # read-only for root too (EPERM / EROFS)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for out in outs:
        proc = subprocess.run([sys.executable, "-m", "data_tools.cli", *build_args(tars[:1], out, tok)], env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 74, proc.stderr
        line = one_error_line(proc.stderr)
        assert line.startswith(f"genlip-data build: error: {out}") and ("directory" in line or "permi" in line)
        assert not out.exists()


@pytest.fixture(params=["tmpfs", "injected"])
def full_disk(request, tmp_path, monkeypatch):
    """A directory that fills up while the big shard is written: a real 352 KiB tmpfs (room for the 240 kB
    tokenizer and the small shard; skipped where mounting is not permitted), or, injected, every write to a
    b_big file failing with ENOSPC (undo with `monkeypatch.undo()`)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if request.param == "injected":
        write = IndexedWriter.add

        def full(self, seq):
            if self.bin_path.name.startswith(".b_big."):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            write(self, seq)

        monkeypatch.setattr(IndexedWriter, "add", full)
        yield disk
        return
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=352k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_is_one_line_keeps_finished_shards_and_leaves_no_partial_files(raw, tmp_path, full_disk,
                                                                                capsys, monkeypatch):
    tars, tok = raw
    small, big = tmp_path / "a_small.tar", tmp_path / "b_big.tar"
    with tarfile.open(tars[0]) as src, tarfile.open(small, "w") as dst:
        for m in src.getmembers()[:4]:  # two samples
            dst.addfile(m, src.extractfile(m))
    shutil.copyfile(tars[1], big)

    def args(out):  # raw images, 12 kB each: the small shard fits on the disk, the big one does not
        return build_args([small, big], out, tok, "--encoding", "raw")

    assert data_main(args(full_disk / "ds")) == 74
    line = one_error_line(capsys.readouterr().err)
    assert f"{full_disk}/ds/shards/b_big." in line and "disk is full" in line
    files = sorted(p.name for p in (full_disk / "ds").rglob("*"))
    assert "a_small.done.json" in files and "manifest.json" not in files
    assert not [f for f in files if f.startswith("b_big") or ".tmp" in f], files
    monkeypatch.undo()

    # The finished shard is kept: a rerun with room to spare builds only the other one, as one clean run would.
    resumed, clean = tmp_path / "resumed", tmp_path / "clean"
    shutil.copytree(full_disk / "ds", resumed)
    assert data_main(args(resumed)) == 0 and data_main(args(clean)) == 0
    tree = {str(p.relative_to(resumed)): p.read_bytes() for p in sorted(resumed.rglob("*")) if p.is_file()}
    assert tree == {str(p.relative_to(clean)): p.read_bytes() for p in sorted(clean.rglob("*")) if p.is_file()}


def test_default_tokenizer_never_emits_unk_and_keeps_the_prompt_whole(raw, tmp_path):
    tars, _ = raw  # 20 lowercase captions: a small corpus
    out = tmp_path / "tok.model"
    assert data_main(["tokenizer", *map(str, tars), "--out", str(out)]) == 0
    tok = Tokenizer(out)
    for text in (STAGE1_PROMPT, "A Red Car, 42 km/h, at the Café — naïve 東京 ✓"):
        ids = tok.encode(text)
        assert tok._tok.unk_id() not in ids and tok.decode(ids) == text
    assert len(tok.encode(STAGE1_PROMPT)) == 1


def test_cli_imports_no_torch():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import data_tools.cli"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    modules = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "data_tools.build" in modules and not {m for m in modules if m.split(".")[0] == "torch"}
