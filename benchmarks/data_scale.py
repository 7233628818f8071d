"""Data at scale, by simulation: packing-plan build and per-rank loader start-up for N-sample datasets.

    flock /tmp/genlip-bench.lock python benchmarks/data_scale.py                      # 1M samples, ~1 minute
    flock /tmp/genlip-bench.lock python benchmarks/data_scale.py --samples 1e7,1e8 --plan-only 1e9   # README table

Real: the library code (`open_dataset`, `RowSource`, `PackingPlan.build` and its files, `PackedRows` /
`MicroBatches` index arithmetic), and the files it reads: `manifest.json` (one record per shard),
`NAME.meta.npy` (28 bytes per sample) and MMIDIDX `.text.idx` / `.image.idx` (20 bytes per sample each).
Simulated: pixels and tokens (the `.bin` files are sparse: the right size, no bytes written; the sha256s
and the tokenizer are placeholders, so ranks open with check="none" and then time, apart, the check that
the trainer's default check="auto" makes above ~30M samples: "sizes", every file present with its size), and the
lengths (stage 1: 14x14 patches + 6 prompt tokens + a caption of ~68 +- 25 tokens; stage 2: 4..32 x 4..32
patches + 6 + ~200 +- 80). The DP ranks run one after another on this machine, each a fresh process, with
the page cache warm after the first, not concurrently on their own nodes; `--rank-procs` of each D are
started, spread over 0..D-1. `--plan-only N` builds an epoch from lengths held in memory (no shard files):
the packing itself at sizes whose shard metadata would not fit this disk.

Baseline (same run, `--baseline-max`): the plan build as it was before (per-sample best-fit loop, int64
ids, `ds.lengths` joined in int64, whole arrays serialised in memory). Peak memory is the process's
VmHWM (resident, including mapped file pages) and its peak anonymous resident memory (sampled every 20
ms), which is what must fit in RAM. A missing 1e9 row is extrapolated from the two largest sizes
measured: value(1e9) = value(N2) * (1e9 / N2) ** a, a = log(value(N2) / value(N1)) / log(N2 / N1).
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genlip.atomic import atomic_save_npy  # noqa: E402
from genlip.data.indexed import DTYPE_CODES, MAGIC, VERSION  # noqa: E402
from genlip.data.packing import PackingSpec  # noqa: E402
from genlip.data.shards import FORMAT, META_DTYPE, SCHEMA_VERSION  # noqa: E402

PROMPT = [11, 12, 13, 14, 15, 16]  # a 6-token default prompt, like "Describe the image in detail."
DISK_BYTES_PER_SAMPLE = 28 + 40 + 8 + 4  # meta, two .idx, plan (int32 ids, offsets), slack
MEM_BYTES_PER_SAMPLE = 9  # a build: int32 lengths and order, row sizes


# ---- the fabricated dataset -------------------------------------------------------------------------------
def _shard_meta(rng, n: int, stage: int) -> np.ndarray:
    meta = np.zeros(n, dtype=META_DTYPE)
    if stage == 1:
        meta["grid_h"], meta["grid_w"] = 14, 14
        meta["text_len"] = np.clip(rng.normal(68, 25, n), 5, 400)
    else:
        meta["grid_h"], meta["grid_w"] = rng.integers(4, 33, n), rng.integers(4, 33, n)
        meta["text_len"] = np.clip(rng.normal(200, 80, n), 10, 800)
    meta["key_hash"] = rng.integers(0, 2**63, n)
    return meta


def _write_idx(path: Path, dtype, lengths: np.ndarray) -> int:
    """genlip.data.indexed.write_index's layout, without its fsync (thousands of shards); the .bin beside it
    is sparse. Returns the .bin's size."""
    itemsize = np.dtype(dtype).itemsize
    pointers = np.zeros(len(lengths), dtype=np.int64)
    pointers[1:] = np.cumsum(lengths[:-1] * itemsize)
    with open(path, "wb") as f:
        f.write(MAGIC + VERSION.to_bytes(8, "little") + DTYPE_CODES[dtype].to_bytes(1, "little"))
        f.write(len(lengths).to_bytes(8, "little") + (len(lengths) + 1).to_bytes(8, "little"))
        f.write(lengths.astype(np.int32).tobytes() + pointers.tobytes())
        f.write(np.arange(len(lengths) + 1, dtype=np.int64).tobytes())
    size = int(lengths.sum()) * itemsize
    with open(path.with_suffix(".bin"), "wb") as f:
        f.truncate(size)
    return size


def fabricate(root: Path, n: int, *, stage: int, per_shard: int, seed: int = 0) -> Path:
    """A dataset directory of n samples that `open_dataset(check="none")` accepts (module docstring)."""
    (root / "shards").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    records = []
    for s, start in enumerate(range(0, n, per_shard)):
        name, k = f"{s:06d}", min(per_shard, n - start)
        meta = _shard_meta(rng, k, stage)
        files = {}
        patches = meta["grid_h"].astype(np.int64) * meta["grid_w"]
        files[f"{name}.text.bin"] = _write_idx(root / "shards" / f"{name}.text.idx", np.uint16, meta["text_len"])
        files[f"{name}.image.bin"] = _write_idx(root / "shards" / f"{name}.image.idx", np.uint8, patches * 75)
        np.save(root / "shards" / f"{name}.meta.npy", meta)
        for f in (f"{name}.text.idx", f"{name}.image.idx", f"{name}.meta.npy"):
            files[f] = (root / "shards" / f).stat().st_size
        records.append({"name": name, "samples": k, "text_tokens": int(meta["text_len"].sum()),
                        "patches": int(patches.sum()), "skipped": {},
                        "files": {f: {"bytes": b, "sha256": "0" * 64} for f, b in files.items()}})
    image = {"kind": "fixed" if stage == 1 else "native", "size": 224, "patch_size": 16, "min_patches": 16,
             "max_patches": 1024, "encoding": "jpeg", "quality": 95}
    manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "image": image, "shards": records,
                "tokenizer": {"file": "tokenizer.model", "sha256": hashlib.sha256(b"placeholder").hexdigest(),
                              "kind": "sentencepiece",
                              "vocab_size": 32000, "end_ids": [2]},
                "prompt": {"text": "Describe the image in detail.", "ids": PROMPT},
                "totals": {t: sum(r[t] for r in records) for t in ("samples", "text_tokens", "patches")},
                "skipped": {}}
    (root / "tokenizer.model").write_bytes(b"placeholder")
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


# ---- the plan build as it was before (the baseline) ------------------------------------------------------
def _legacy_window(lengths, budget, max_k):
    order = np.argsort(lengths, kind="stable")
    values, starts = np.unique(lengths[order], return_index=True)
    stacks = {int(v): order[a:b].tolist() for v, a, b in zip(values, starts, list(starts[1:]) + [len(order)])}
    keys, rows = [int(v) for v in values], []
    while keys:
        row, room = [], budget
        while len(row) < max_k:
            k = bisect.bisect_right(keys, room) - 1
            if k < 0:
                break
            v = keys[k]
            row.append(stacks[v].pop())
            room -= v
            if not stacks[v]:
                del keys[k]
        rows.append(np.asarray(row, dtype=np.int64))
    return rows


def legacy_build(ds, spec: PackingSpec, out: Path) -> None:
    lengths = np.asarray(ds.lengths(len(ds.manifest["prompt"]["ids"])), dtype=np.int64)
    perm = np.random.default_rng([spec.seed, 0]).permutation(len(lengths))
    samples, offsets = [], [0]
    for w, start in enumerate(range(0, len(perm), spec.window)):
        idx = perm[start:start + spec.window]
        rows = _legacy_window(lengths[idx], spec.budget, spec.max_samples_per_row)
        for r in np.random.default_rng([spec.seed, 0, w]).permutation(len(rows)):
            samples.append(idx[rows[r]])
            offsets.append(offsets[-1] + len(rows[r]))
    atomic_save_npy(out / "samples.npy", np.concatenate(samples).astype(np.int64))
    atomic_save_npy(out / "rows.npy", np.asarray(offsets, dtype=np.int64))


# ---- child processes: each measures one thing and prints one JSON line -----------------------------------
class _Peak:
    """Peak anonymous resident memory of this process, sampled by a thread; VmHWM at `stop`."""

    def __init__(self):
        self.anon, self._run = 0, True
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()

    @staticmethod
    def status(field: str) -> int:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        return 0

    def _poll(self):
        while self._run:
            self.anon = max(self.anon, self.status("RssAnon"))
            time.sleep(0.02)

    def stop(self) -> dict:
        self._run = False
        self._t.join()
        self.anon = max(self.anon, self.status("RssAnon"))
        return {"hwm": self.status("VmHWM"), "anon": self.anon}


def child(job: dict) -> dict:
    t0 = time.perf_counter()
    peak = _Peak()
    from genlip.data.loader import LoaderSpec, MicroBatches, PackedRows, RowSource
    from genlip.data.packing import PackingPlan
    from genlip.data.shards import open_dataset

    spec = PackingSpec(**job["spec"])
    out = {"import_s": time.perf_counter() - t0}
    t = time.perf_counter()
    if job["kind"] == "plan_only":
        rng, lengths = np.random.default_rng(0), np.empty(job["n"], dtype=np.int32)
        for start in range(0, job["n"], 10**7):  # the meta of a billion samples would be 28 GB
            m = _shard_meta(rng, min(10**7, job["n"] - start), job["stage"])
            lengths[start:start + len(m)] = m["grid_h"].astype(np.int32) * m["grid_w"] + len(PROMPT) + m["text_len"]
        out["lengths_s"], t = time.perf_counter() - t, time.perf_counter()
        plan = PackingPlan(job["root"], spec, num_samples=len(lengths), dataset_id="sim", lengths=lengths)
        out["fill"], out["pack_s"], out["rows"] = plan.build(0), time.perf_counter() - t, plan.rows_in_epoch(0)
    elif job["kind"] == "build":
        src = RowSource(open_dataset(job["root"], check="none"), spec)
        out["open_s"], t = time.perf_counter() - t, time.perf_counter()
        src.plan.lengths  # noqa: B018 (timed apart from the packing)
        out["lengths_s"], t = time.perf_counter() - t, time.perf_counter()
        out["fill"], out["pack_s"], out["rows"] = src.plan.build(0), time.perf_counter() - t, src.plan.rows_in_epoch(0)
    elif job["kind"] == "legacy":
        ds = open_dataset(job["root"], check="none")
        out["open_s"], t = time.perf_counter() - t, time.perf_counter()
        legacy_build(ds, spec, Path(job["out"]))
        out["pack_s"] = time.perf_counter() - t
    else:  # one DP rank: open, then the sample ids of its first step and of a step in mid-epoch
        D, r = job["dp"], job["rank"]
        rows = PackedRows(LoaderSpec(datasets=[job["root"]], packing=spec, global_rows=2 * D, micro_rows=1,
                                     num_workers=0, check="none"))
        out["open_s"], t = time.perf_counter() - t, time.perf_counter()
        from genlip.data.shards import check_files

        assert not check_files(job["root"], rows.datasets[0].manifest, level="sizes")
        out["check_s"], t = time.perf_counter() - t, time.perf_counter()
        micro = MicroBatches(rows, dp_rank=r, dp_size=D)

        def step_ids(step):
            return [rows.sources[i].samples(j) for k in range(step * micro.accum, (step + 1) * micro.accum)
                    for i, j in map(rows.locate, micro.global_rows(k))]

        for ids in step_ids(0):  # and open the shards its samples are in (their .bin bytes are not read)
            for i in ids.tolist():
                rows.datasets[0].locate(i)
        out["first_s"], t = time.perf_counter() - t, time.perf_counter()
        epoch_rows = rows.sources[0].plan.rows_in_epoch(0)
        step_ids(epoch_rows // 2 // (2 * D))
        out["resume_s"] = time.perf_counter() - t
        if job.get("index_rows"):  # the manifest's sha256 (part of open_s), and the index arithmetic
            from genlip.data.shards import manifest_hash

            t = time.perf_counter()
            manifest_hash(job["root"])
            out["manifest_hash_s"] = time.perf_counter() - t
            n = min(job["index_rows"], epoch_rows)
            for name, order in (("seq", np.arange(n)), ("rand", np.random.default_rng(1).integers(0, epoch_rows, n))):
                t = time.perf_counter()
                for g in order.tolist():
                    i, j = rows.locate(g)
                    rows.sources[i].samples(j)
                out[f"rows_per_s_{name}"] = n / (time.perf_counter() - t)
        out["open_shards"] = rows.datasets[0].shards.num_open
        out["fds"] = len(os.listdir("/proc/self/fd"))  # each memory-mapped file holds a descriptor and a map
        out["maps"] = sum(1 for _ in open("/proc/self/maps"))
    out["total_s"] = time.perf_counter() - t0
    out.update(peak.stop())
    return out


def run_child(job: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True, env=env)
    if p.returncode:
        raise RuntimeError(f"child {job['kind']} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


# ---- the driver ------------------------------------------------------------------------------------------
def _meminfo(field: str) -> int:
    for line in open("/proc/meminfo"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _fmt_n(n: float) -> str:
    return f"{n:.0e}".replace("e+0", "e")


def _gb(b: float) -> str:
    return f"{b / 2**30:.2f}"


def measure(n: int, args, work: Path) -> dict:
    spec = {"budget": 16384, "max_samples_per_row": 128, "seed": 0, "window": 16384}
    row = {"N": n}
    root = work / f"ds_{n}"
    t = time.perf_counter()
    fabricate(root, n, stage=args.stage, per_shard=args.per_shard)
    row["shards"], row["fabricate_s"] = math.ceil(n / args.per_shard), time.perf_counter() - t
    print(f"[{_fmt_n(n)}] fabricated {row['shards']} shards in {row['fabricate_s']:.0f}s", flush=True)
    b = run_child({"kind": "build", "root": str(root), "spec": spec})
    row.update(build_s=b["lengths_s"] + b["pack_s"], lengths_s=b["lengths_s"], pack_s=b["pack_s"], fill=b["fill"],
               build_hwm=b["hwm"], build_anon=b["anon"], rows=b["rows"], plan_bytes=_du(root / "packing"))
    print(f"[{_fmt_n(n)}] build {row['build_s']:.1f}s, anon peak {_gb(b['anon'])} GiB", flush=True)
    if n <= args.baseline_max:
        out = work / "legacy"
        out.mkdir()
        leg = run_child({"kind": "legacy", "root": str(root), "spec": spec, "out": str(out)})
        row.update(legacy_s=leg["pack_s"], legacy_hwm=leg["hwm"], legacy_anon=leg["anon"], legacy_bytes=_du(out))
        shutil.rmtree(out)
        print(f"[{_fmt_n(n)}] baseline build {leg['pack_s']:.1f}s, anon peak {_gb(leg['anon'])} GiB", flush=True)
    for D in args.ranks:
        ranks = sorted({round(k * (D - 1) / max(1, args.rank_procs - 1)) for k in range(min(D, args.rank_procs))})
        res = [run_child({"kind": "rank", "root": str(root), "spec": spec, "dp": D, "rank": r,
                          "index_rows": args.index_rows if r == 0 and D == args.ranks[0] else 0}) for r in ranks]
        start = [x["open_s"] + x["check_s"] + x["first_s"] for x in res]  # the interpreter and torch import apart: import_s
        row[f"start_{D}"] = (start[0], float(np.median(start)), max(start))
        row[f"open_{D}"] = float(np.median([x["open_s"] for x in res]))
        row["check_s"] = float(np.median([x["check_s"] for x in res]))
        row["open_shards"] = max(x["open_shards"] for x in res)
        row[f"rank_hwm_{D}"] = max(x["hwm"] for x in res)
        row[f"rank_anon_{D}"] = max(x["anon"] for x in res)
        row[f"resume_{D}"] = max(x["resume_s"] for x in res)
        row["import_s"] = float(np.median([x["import_s"] for x in res]))
        row["fds_maps"] = (max(x["fds"] for x in res), max(x["maps"] for x in res))
        if "rows_per_s_seq" in res[0]:
            row["rows_per_s"] = (res[0]["rows_per_s_seq"], res[0]["rows_per_s_rand"])
            row["manifest_hash_s"] = res[0]["manifest_hash_s"]
        print(f"[{_fmt_n(n)}] D={D}: {len(ranks)} ranks started, start-up median {row[f'start_{D}'][1]:.1f}s", flush=True)
    if not args.keep:
        shutil.rmtree(root)
    return row


def plan_only(n: int, args, work: Path) -> dict:
    spec = {"budget": 16384, "max_samples_per_row": 128, "seed": 0, "window": 16384}
    b = run_child({"kind": "plan_only", "root": str(work / f"plan_{n}"), "spec": spec, "n": n, "stage": args.stage})
    row = {"N": n, "plan_only": True, "build_s": b["pack_s"], "pack_s": b["pack_s"], "lengths_s": 0.0,
           "fill": b["fill"], "build_hwm": b["hwm"], "build_anon": b["anon"], "rows": b["rows"],
           "plan_bytes": _du(work / f"plan_{n}")}
    shutil.rmtree(work / f"plan_{n}")
    print(f"[{_fmt_n(n)} plan only] build {row['build_s']:.1f}s, anon peak {_gb(b['anon'])} GiB", flush=True)
    return row


def extrapolate(rows: list[dict], n: int) -> dict:
    """value(n) from the two largest measured sizes, each quantity with its own power law (module docstring)."""
    a, b = sorted(rows, key=lambda r: r["N"])[-2:]
    out = {"N": n, "extrapolated": True}
    for k, v in b.items():
        if k in ("N", "plan_only", "extrapolated") or k not in a:
            continue
        va, vb = (np.asarray(a[k], float), np.asarray(v, float))
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where((va > 0) & (vb > 0), np.log(vb / va) / math.log(b["N"] / a["N"]), 1.0)
        out[k] = vb * (n / b["N"]) ** p
        out[k] = tuple(out[k]) if out[k].ndim else float(out[k])
        if k == "build_s":
            out["build_exp"] = float(p)
    return out


def table(rows: list[dict], ranks: list[int]) -> str:
    head = ["samples", "how", "shards", "plan build s (lengths + pack)", "build peak anon / HWM GiB", "plan MB",
            "fill %", "baseline build s, peak anon GiB"]
    head += [f"rank start-up s D={D} (first/med/max)" for D in ranks]
    head += ["of which sizes check s", "of which manifest sha256 s", "shards opened", "import s", "rank peak anon / HWM GiB", "rank fds / maps",
             "rows/s seq / rand"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        how = "extrapolated" if r.get("extrapolated") else "plan only" if r.get("plan_only") else "measured"
        cells = [_fmt_n(r["N"]), how, f"{r['shards']:.0f}" if "shards" in r else "-",
                 f"{r['build_s']:.1f} ({r['lengths_s']:.1f} + {r['pack_s']:.1f})",
                 f"{_gb(r['build_anon'])} / {_gb(r['build_hwm'])}", f"{r['plan_bytes'] / 1e6:.0f}",
                 f"{100 * r['fill']:.2f}" if not r.get("extrapolated") else "-",
                 f"{r['legacy_s']:.1f}, {_gb(r['legacy_anon'])} ({r['legacy_s'] / r['build_s']:.1f}x, "
                 f"{r['legacy_anon'] / r['build_anon']:.1f}x)" if "legacy_s" in r else "-"]
        cells += ["/".join(f"{x:.1f}" for x in r[f"start_{D}"]) if f"start_{D}" in r else "-" for D in ranks]
        cells.append(f"{r['check_s']:.2f}" if "check_s" in r else "-")
        cells.append(f"{r['manifest_hash_s']:.2f}" if "manifest_hash_s" in r else "-")
        cells.append(f"{r['open_shards']:.0f}" if "open_shards" in r else "-")
        cells.append(f"{r['import_s']:.1f}" if "import_s" in r else "-")
        k = f"rank_anon_{ranks[-1]}" if ranks else None
        cells.append(f"{_gb(r[k])} / {_gb(r[f'rank_hwm_{ranks[-1]}'])}" if k in r else "-")
        cells.append("/".join(f"{x:,.0f}" for x in r["fds_maps"]) if "fds_maps" in r else "-")
        cells.append("/".join(f"{x:,.0f}" for x in r["rows_per_s"]) if "rows_per_s" in r else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--samples", default="1e6", help="dataset sizes, comma-separated (0: none)")
    ap.add_argument("--plan-only", default="", help="sizes to build a plan for from in-memory lengths only")
    ap.add_argument("--stage", type=int, choices=(1, 2), default=1, help="length distribution")
    ap.add_argument("--ranks", default="8,64", help="simulated DP sizes")
    ap.add_argument("--rank-procs", type=int, default=8, help="ranks actually started per DP size")
    ap.add_argument("--per-shard", type=int, default=10_000, help="samples per shard")
    ap.add_argument("--index-rows", type=int, default=100_000, help="rows looked up for the rows/s figure")
    ap.add_argument("--baseline-max", type=float, default=1e7, help="largest size the old build also runs at")
    ap.add_argument("--dir", type=Path, help="work directory (default: a new temporary one, removed)")
    ap.add_argument("--keep", action="store_true", help="keep the fabricated datasets")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    sizes = [int(float(s)) for s in args.samples.split(",") if float(s) > 0]
    only = [int(float(s)) for s in args.plan_only.split(",") if s]
    args.ranks = [int(d) for d in args.ranks.split(",") if d]
    work = Path(tempfile.mkdtemp(prefix="genlip-scale-", dir=args.dir))
    try:
        free = shutil.disk_usage(work).free
        need = max([n * DISK_BYTES_PER_SAMPLE for n in sizes] + [n * 5 for n in only] + [0])  # plan only: 4 B ids
        print(f"work dir {work}: {_gb(free)} GiB free, the largest size needs about {_gb(need)} GiB", flush=True)
        if need > 0.8 * free:
            print("not enough disk space: pass smaller --samples or another --dir", file=sys.stderr)
            return 1
        avail = _meminfo("MemAvailable")
        if max(sizes + only + [0]) * MEM_BYTES_PER_SAMPLE > 0.8 * avail:
            print(f"not enough memory ({_gb(avail)} GiB available) to build a plan of {max(sizes + only)} samples",
                  file=sys.stderr)
            return 1
        rows = [measure(n, args, work) for n in sizes] + [plan_only(n, args, work) for n in only]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    full = [r for r in rows if not r.get("plan_only")]
    if len(full) >= 2 and max(r["N"] for r in full) < 10**9:
        rows.append(extrapolate(full, 10**9))
    print(f"\nstage-{args.stage} lengths, budget 16384, K 128, window 16384, {args.per_shard} samples per shard; "
          f"{args.rank_procs} ranks started per DP size")
    print(table(rows, args.ranks))
    ex = [r for r in rows if r.get("extrapolated")]
    if ex:
        print(f"1e9 extrapolated per column from {_fmt_n(full[-2]['N'])} and {_fmt_n(full[-1]['N'])} "
              f"(plan build time grows as N^{ex[0]['build_exp']:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
