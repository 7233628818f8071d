"""Bad inputs, as a new user would type them, across every command: each one exits non-zero with exactly
one `PROG: error: ...` line that names the thing to fix (`genlip-data verify`: one `PROG: DIR: N defect(s)`
line, its defects indented below), prints no traceback, and writes nothing outside the case's output
directory (the shared dataset and the case's own input files are left byte-identical).
"""

from __future__ import annotations

import hashlib
import os
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import build_tiny_dataset

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "run_scripts" / "configs" / "tiny.yaml"
MODULES = {"genlip-data": "data_tools.cli", "genlip-train": "genlip.train.cli", "genlip-submit": "genlip.cluster.submit",
           "genlip-sweep": "genlip.cluster.sweep", "genlip-export": "genlip.weights.export_cli",
           "genlip-ckpt": "genlip.train.ckpt_cli", "genlip-eval": "genlip.eval.cli"}


@dataclass
class Ctx:
    case: Path  # the case's working directory (cwd of the command)
    ds: Path  # a tiny real dataset shared by all cases (must stay untouched)
    tok: Path
    tar: Path  # one raw webdataset tar

    @property
    def out(self) -> Path:
        return self.case / "out"

    def write(self, name: str, text: str) -> str:
        p = self.case / name
        p.write_text(text)
        return str(p)

    def dataset_copy(self, edit=None) -> str:
        """A copy of the tiny dataset whose manifest went through `edit(manifest) -> manifest`."""
        dst = self.case / "ds_copy"
        shutil.copytree(self.ds, dst)
        if edit is not None:
            m = json.loads((dst / "manifest.json").read_text())
            (dst / "manifest.json").write_text(json.dumps(edit(m)))
        return str(dst)


def _corrupt_images(c: Ctx) -> str:
    """A copy of the tiny dataset with most image bytes flipped (manifest untouched: caught when read); under
    out/, since training writes its packing plans into the dataset."""
    dst = c.out / "ds"
    shutil.copytree(c.ds, dst)
    for path in Path(dst, "shards").glob("*.image.bin"):
        data = bytearray(path.read_bytes())
        data[len(data) // 8:] = bytes(b ^ 0xFF for b in data[len(data) // 8:])
        path.write_bytes(bytes(data))
    return str(dst)


def _train(*args):
    return lambda c: ["genlip-train", str(TINY), f"data.datasets=[{c.ds}]", f"train.output_dir={c.out}", *args]


def _submit(*args):
    return lambda c: ["genlip-submit", "train", str(TINY), f"data.datasets=[{c.ds}]", f"train.output_dir={c.out}",
                      "--gpus-per-node", "1", "--dry-run", *args]


def _manifest_edit(fn):
    return lambda c: ["genlip-data", "verify", c.dataset_copy(fn)]


def _drop_first_shard(m):
    m["shards"] = m["shards"][1:]
    return m


# (case id, argv builder, words the error line must contain)
CASES = [
    # --- genlip-train: the run config -----------------------------------------------------------------
    ("train-missing-config", lambda c: ["genlip-train", str(c.case / "nope.yaml")], "does not exist"),
    ("train-malformed-yaml", lambda c: ["genlip-train", c.write("bad.yaml", "train:\n  lr: [1\n")], "line"),
    ("train-yaml-list", lambda c: ["genlip-train", c.write("list.yaml", "- a\n- b\n")], "mapping"),
    ("train-unknown-key", _train("train.lr=1e-3"), "train.lr"),
    ("train-global-batch-0", _train("train.global_batch_rows=0"), "train.global_batch_rows"),
    ("train-micro-batch-0", _train("train.micro_batch_rows=0"), "train.micro_batch_rows"),
    ("train-pad-vocab-0", _train("data.pad_vocab_to=0"), "data.pad_vocab_to"),
    ("train-log-interval-0", _train("train.log_interval=0"), "train.log_interval"),
    ("train-lr-nan", _train("optim.lr=nan"), "optim.lr"),
    ("train-lr-negative", _train("optim.lr=-1e-3"), "optim.lr"),
    ("train-betas-one", _train("optim.betas=[0.9]"), "optim.betas"),
    ("train-width-text", _train("model.width=wide"), "model.width"),
    ("train-dtype-fp16", _train("train.dtype=fp16"), "train.dtype"),
    ("train-tp-not-dividing-heads", _train("parallel.tp=3"), "parallel.tp"),
    ("train-missing-dataset", lambda c: ["genlip-train", str(TINY), f"data.datasets=[{c.case / 'data/tiny'}]"],
     "data/tiny"),
    ("train-no-dataset", lambda c: ["genlip-train", str(TINY), "data.datasets=[]"], "data.datasets"),
    ("train-init-from-missing", _train("train.init_from=/nonexistent/run"), "train.init_from"),
    ("train-output-dir-is-file", lambda c: ["genlip-train", str(TINY), f"data.datasets=[{c.ds}]",
                                            f"train.output_dir={c.write('file', 'x')}"], "train.output_dir"),
    ("train-empty-dataset", lambda c: ["genlip-train", str(TINY), f"data.datasets=[{c.dataset_copy(_no_samples)}]",
                                       f"train.output_dir={c.out}"], "ds_copy"),
    # a corrupt image found by a DataLoader worker, not by the quick start-up check: the worker's error as is
    ("train-corrupt-image-read-by-worker", lambda c: ["genlip-train", str(TINY), f"data.datasets=[{_corrupt_images(c)}]",
                                                      f"train.output_dir={c.out / 'run'}", "data.check=quick",
                                                      "data.num_workers=2"], "fails its CRC check"),
    # --- genlip-data build ----------------------------------------------------------------------------
    ("build-missing-input", lambda c: ["genlip-data", "build", str(c.case / "nope.tar"), "--out", str(c.out),
                                       "--tokenizer", str(c.tok)], "nope.tar"),
    ("build-empty-jsonl", lambda c: ["genlip-data", "build", c.write("empty.jsonl", ""), "--out", str(c.out),
                                     "--tokenizer", str(c.tok)], "empty.jsonl"),
    ("build-csv-without-image-column", lambda c: ["genlip-data", "build", c.write("t.csv", "caption,x\na cat,1\n"),
                                                  "--out", str(c.out), "--tokenizer", str(c.tok)], "t.csv"),
    ("build-missing-tokenizer", lambda c: ["genlip-data", "build", str(c.tar), "--out", str(c.out),
                                           "--tokenizer", str(c.case / "tok.model")], "tok.model"),
    ("build-unsupported-input", lambda c: ["genlip-data", "build", c.write("notes.txt", "hello"), "--out",
                                           str(c.out), "--tokenizer", str(c.tok)], "notes.txt"),
    ("build-out-is-file", lambda c: ["genlip-data", "build", str(c.tar), "--out", c.write("out", "x"),
                                     "--tokenizer", str(c.tok)], "out"),
    ("build-out-read-only", lambda c: ["genlip-data", "build", str(c.tar), "--out", "/proc/genlip-out",
                                       "--tokenizer", str(c.tok)], "/proc/genlip-out"),
    # --- genlip-data verify ---------------------------------------------------------------------------
    ("verify-missing-dir", lambda c: ["genlip-data", "verify", str(c.case / "nope")], "nope"),
    ("verify-manifest-list", lambda c: ["genlip-data", "verify", c.dataset_copy(lambda m: [m])], "manifest.json"),
    ("verify-manifest-no-shards", _manifest_edit(lambda m: {k: v for k, v in m.items() if k != "shards"}), "shards"),
    ("verify-manifest-no-tokenizer", _manifest_edit(lambda m: {k: v for k, v in m.items() if k != "tokenizer"}),
     "tokenizer"),
    ("verify-vocab-edited", _manifest_edit(lambda m: m | {"tokenizer": m["tokenizer"] | {"vocab_size": 7}}),
     "vocab_size"),
    ("verify-shard-record-removed", _manifest_edit(_drop_first_shard), "shard"),
    # --- genlip-submit / genlip-sweep -----------------------------------------------------------------
    ("submit-nodes-negative", _submit("--nodes", "-2"), "--nodes"),
    ("submit-nodes-zero", _submit("--nodes", "0"), "--nodes"),
    ("submit-nodes-reversed", _submit("--nodes", "4-2"), "--nodes"),
    ("submit-bad-time", _submit("--time", "tomorrow"), "--time"),
    ("submit-bad-config-value", _submit("optim.lr=-1"), "optim.lr"),
    ("submit-array-size-0", lambda c: ["genlip-submit", "data", str(c.tar), "--out", str(c.out), "--tokenizer",
                                       str(c.tok), "--array-size", "0", "--dry-run"], "--array-size"),
    ("sweep-missing-file", lambda c: ["genlip-sweep", "submit", str(c.case / "nope.yaml"), "--dry-run"], "nope.yaml"),
    # --- genlip-export / genlip-ckpt / genlip-eval ----------------------------------------------------
    ("export-missing-source", lambda c: ["genlip-export", str(c.case / "run"), "--out", str(c.out)], "run"),
    ("ckpt-inspect-missing", lambda c: ["genlip-ckpt", "inspect", str(c.case / "run")], "run"),
    ("eval-missing-model", lambda c: ["genlip-eval", "loss", str(c.case / "model"), str(c.ds)], "model"),
]


def _no_samples(m):
    """What a build of inputs with no usable sample wrote before it was refused: a dataset with no shards."""
    m = json.loads(json.dumps(m))
    m["shards"], m["num_samples"] = [], 0
    return m


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    ds, tars, tok = build_tiny_dataset(root, shards=2, per_shard=6)
    return ds, tars[0], tok


def test_there_are_enough_cases():
    groups = {argv_group for argv_group in ("train", "build", "verify", "submit") if
              sum(c[0].startswith(argv_group) for c in CASES) >= 5}
    assert len(CASES) >= 30 and groups == {"train", "build", "verify", "submit"}, (len(CASES), groups)


@pytest.mark.parametrize("name, argv, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_line(name, argv, words, shared, tmp_path):
    ds, tar, tok = shared
    ctx = Ctx(case=tmp_path / "case", ds=ds, tok=tok, tar=tar)
    ctx.case.mkdir()
    args = argv(ctx)
    before_case, before_ds = _digest_tree(ctx.case), _digest_tree(ds)
    proc = subprocess.run([sys.executable, "-m", MODULES[args[0]], *args[1:]], cwd=ctx.case, capture_output=True,
                          text=True, timeout=120, env=_env())
    assert proc.returncode not in (0, None), f"{name}: exit 0\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, f"{name}:\n{proc.stderr}"
    # One line names the command and the problem; `verify` lists its defects on indented lines below it.
    lines = proc.stderr.splitlines()
    head = [i for i, line in enumerate(lines) if line.startswith((f"{args[0]} ", f"{args[0]}:"))]
    assert len(head) == 1, f"{name}: expected one line from {args[0]}, got:\n{proc.stderr}"
    message = lines[head[0]] if args[1] != "verify" else "\n".join(lines[head[0]:])
    assert (": error:" in message) or ("defect" in message), message
    assert words in message, f"{name}: {words!r} not in {message!r}"
    outside_out = lambda tree: {k: v for k, v in tree.items() if not k.startswith("out/")}  # noqa: E731
    assert outside_out(_digest_tree(ctx.case)) == outside_out(before_case), name
    assert _digest_tree(ds) == before_ds, f"{name} changed the shared dataset"


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID"):
        env.pop(k, None)
    return env
