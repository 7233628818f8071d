"""genlip-sweep: a family of runs (presets x overrides x seeds) as one SLURM job array, its plan and its report.

    genlip-sweep submit SWEEP.yaml [--dry-run]
    genlip-sweep plan --flops 1e18,1e19 --presets b16,l16,so16 --base SWEEP.yaml --out isoflop.yaml
    genlip-sweep report SWEEP_DIR [--target-flops C | --target-gpu-hours H --mfu M --gpu h200]

A sweep file:

    name: sizes
    config: run_scripts/configs/so16_stage1.yaml     # base run config
    overrides: [train.total_samples=1.0e8]           # for every point
    grid:                                            # the cross product; each value a list
      model.preset: [b16, l16, so16, g16]
      train.seed: [1]
    slurm: {nodes: 1, gpus_per_node: 8, time: "1-00:00:00", partition: gpu}
    output_dir: runs/sweeps                          # the sweep lives in OUTPUT_DIR/NAME

Pairs a grid cannot express (an isoFLOP sweep's preset and its own sample count) are listed as points,
each a mapping of the same keys; with a grid as well, every point runs at every grid combination:

    points:
      - {model.preset: b16, train.total_samples: 1.3e+08}
      - {model.preset: l16, train.total_samples: 3.6e+07}

The file is checked whole (types of every key, grid values non-empty lists without repeats, points with
the same keys and no repeats, no key twice, the slurm options through genlip-submit's validation pass)
before any config loads or any file is written; a bad key is one line naming it.

Array task i trains point i into SWEEP_DIR/point_00i (its own run directory, so it resumes after a
requeue) and writes result.json there; `report` gathers them, says which points failed or are still
running, fits scaling laws to the finished ones (genlip.cluster.scaling) and answers a compute budget
(genlip.cluster.sweep_fit). `plan` writes an isoFLOP sweep: per budget C, each preset trains
C / (its training FLOPs per sample) samples.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from genlip.cluster.submit import (REQUEUE_CODE, SLURM_DIR, ArgumentParser, SlurmOptions, check_slurm_options,
                                   plan_job, render, safe_name, sbatch_extra, sbatch_path, submit_script)
from genlip.errors import UserError, cli_main

SLURM_KEYS = {"nodes": 1, "gpus_per_node": 8, "tasks_per_node": 0, "cpus_per_task": 8, "time": "1-00:00:00",
              "partition": None, "account": None, "qos": None, "signal_seconds": 300, "gpu_memory_gib": 80.0,
              "sbatch_args": []}
TOP_KEYS = {"name", "config", "overrides", "grid", "points", "slurm", "output_dir"}
NAME_RE = re.compile(r"[A-Za-z0-9._-]+")


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise UserError(f"line {key_node.start_mark.line + 1}: key {key!r} appears twice")
            seen.add(key if isinstance(key, (str, int, float, bool)) else id(key))
        return super().construct_mapping(node, deep)


def _override_key(item, what: str) -> str:
    if not isinstance(item, str) or "=" not in item or not item.split("=", 1)[0].strip():
        raise UserError(f"{what} {item!r}: each override must be a string key=value")
    return item.split("=", 1)[0].strip()


def load_sweep(path: Path) -> tuple[dict, SlurmOptions]:
    """The sweep file, checked whole (see the module docstring), and its job options."""
    if not path.is_file():
        raise UserError(f"sweep file {path} does not exist")
    try:
        sweep = yaml.load(path.read_text(), Loader=_StrictLoader)
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(sweep, dict):
        raise UserError(f"{path}: must be a mapping with the keys name, config, grid or points (and overrides, "
                        "slurm, output_dir)")
    unknown = set(map(str, sweep)) - TOP_KEYS
    if unknown:
        raise UserError(f"{path}: unknown keys {sorted(unknown)}; valid: {', '.join(sorted(TOP_KEYS))}")
    for key in ("name", "config"):
        if key not in sweep:
            raise UserError(f"{path}: missing {key!r}")
    if "grid" not in sweep and "points" not in sweep:
        raise UserError(f"{path}: missing 'grid' (or 'points'): say which runs the sweep holds")
    name = sweep["name"]
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise UserError(f"{path}: name {name!r} must be a directory name: letters, digits and . _ - only")
    for key in ("config", "output_dir"):
        if key in sweep and (not isinstance(sweep[key], str) or not sweep[key]):
            raise UserError(f"{path}: {key} must be a path (a string), not {sweep[key]!r}")
    if not Path(sweep["config"]).is_file():
        raise UserError(f"{path}: config {sweep['config']} does not exist")
    overrides = sweep.setdefault("overrides", [])
    if not isinstance(overrides, list):
        raise UserError(f"{path}: overrides must be a list of key=value strings, not {overrides!r}")
    fixed = [_override_key(o, f"{path}: overrides") for o in overrides]
    grid = sweep.setdefault("grid", {})
    if not isinstance(grid, dict) or (not grid and "points" not in sweep):
        raise UserError(f"{path}: grid must map config keys to non-empty lists of values")
    for key, values in grid.items():
        _check_key(key, f"{path}: grid key")
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: grid.{key} must be a non-empty list of values, not {values!r}")
        texts = [_yaml_value(v) for v in values]
        if len(set(texts)) != len(texts):
            raise UserError(f"{path}: grid.{key} lists a value twice ({values}): each point must differ")
        if key in fixed:
            raise UserError(f"{path}: {key} is both in overrides and in grid; keep one")
    listed = _check_points(sweep.setdefault("points", []), path, fixed=fixed, grid=grid)
    for key in [*fixed, *grid, *listed]:
        if key == "train.output_dir":
            raise UserError(f"{path}: train.output_dir is set by the sweep (OUTPUT_DIR/NAME/point_NNN); use output_dir")
    slurm = sweep.get("slurm") or {}
    if not isinstance(slurm, dict):
        raise UserError(f"{path}: slurm must be a mapping of {', '.join(SLURM_KEYS)}, not {slurm!r}")
    bad = set(map(str, slurm)) - set(SLURM_KEYS)
    if bad:
        raise UserError(f"{path}: unknown slurm keys {sorted(bad)}; valid: {', '.join(SLURM_KEYS)}")
    sweep["slurm"] = SLURM_KEYS | slurm
    opts = check_slurm_options(sweep["slurm"], lambda key: f"{path}: slurm.{key}")
    sweep.setdefault("output_dir", "runs/sweeps")
    return sweep, opts


def _check_key(key, what: str) -> None:
    if not isinstance(key, str) or not key or re.search(r"[\s=]", key):
        raise UserError(f"{what} {key!r} must be a dotted config key such as model.preset")


def _check_points(pts, path: Path, *, fixed: list[str], grid: dict) -> list[str]:
    """The explicit points: a list of mappings with the same keys, none in overrides or grid, none twice."""
    if not isinstance(pts, list) or (not pts and not grid):
        raise UserError(f"{path}: points must be a non-empty list of mappings such as "
                        "{model.preset: b16, train.total_samples: 1.0e8}")
    keys = None
    seen = {}
    for i, point in enumerate(pts):
        if not isinstance(point, dict) or not point:
            raise UserError(f"{path}: points[{i}] must be a non-empty mapping of config keys to values, not {point!r}")
        for key in point:
            _check_key(key, f"{path}: points[{i}] key")
            if isinstance(point[key], dict) or point[key] is None:
                raise UserError(f"{path}: points[{i}].{key} must be a value, not {point[key]!r}")
        if keys is None:
            keys = list(point)
        elif set(point) != set(keys):
            raise UserError(f"{path}: points[{i}] sets {sorted(point)} but points[0] sets {sorted(keys)}: every "
                            "point must set the same keys")
        text = tuple(_yaml_value(point[k]) for k in keys)
        if text in seen:
            raise UserError(f"{path}: points[{i}] repeats points[{seen[text]}] ({point}): each point must differ")
        seen[text] = i
    for key in keys or []:
        if key in fixed or key in grid:
            raise UserError(f"{path}: {key} is both in points and in {'overrides' if key in fixed else 'grid'}; "
                            "keep one")
    return keys or []


def points(sweep: dict) -> list[list[str]]:
    """Each point's overrides: the explicit points (or one empty point) crossed with the grid."""
    keys = list(sweep["grid"])
    listed = sweep.get("points") or [{}]
    return [[*sweep["overrides"], *(f"{k}={_yaml_value(v)}" for k, v in point.items()),
             *(f"{k}={_yaml_value(v)}" for k, v in zip(keys, combo))]
            for point in listed for combo in itertools.product(*(sweep["grid"][k] for k in keys))]


def _yaml_value(v) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def run_submit(args) -> int:
    sweep, opts = load_sweep(args.sweep)
    sweep_dir = (Path(sweep["output_dir"]) / sweep["name"]).resolve()
    log_path = sbatch_path(sweep_dir, f"{args.sweep}: output_dir/name")
    if not args.python:
        raise UserError("--python must name the Python that runs the jobs")
    from genlip.config import load_config

    config = Path(sweep["config"]).resolve()
    nodes, tasks = opts.nodes[0], opts.tasks_per_node
    pts = points(sweep)
    cases = []
    for i, overrides in enumerate(pts):
        run_dir = sweep_dir / f"point_{i:03d}"
        print(f"point {i}: {' '.join(overrides)}")
        try:
            cfg = load_config(config, overrides)
            plan = plan_job(cfg, world=nodes * tasks, gpus_per_node=opts.gpus_per_node,
                            gpu_memory_gib=opts.gpu_memory_gib, force=args.force)
        except UserError as e:
            raise UserError(f"{args.sweep}: point {i} ({' '.join(overrides)}): {e}") from None
        print("  " + plan.replace("\n", "\n  "))
        cmd = [args.python, "-m", "genlip.train.trainer", str(config), *overrides, f"train.output_dir={run_dir}"]
        cases.append(f"  {i}) RUN={shlex.quote(str(run_dir))}; CMD=({shlex.join(cmd)}) ;;")
    script = render(SLURM_DIR / "sweep.sbatch", {
        "JOB_NAME": safe_name(sweep["name"]), "LAST_TASK": str(len(pts) - 1), "NODES": str(nodes),
        "TASKS_PER_NODE": str(tasks), "CPUS_PER_TASK": str(opts.cpus_per_task), "TIME": opts.time,
        "SWEEP_DIR": log_path, "SIGNAL_SECONDS": str(opts.signal_seconds), "SBATCH_EXTRA": sbatch_extra(opts),
        "WORKDIR": shlex.quote(str(Path.cwd())), "ENV_FILE": shlex.quote(str(SLURM_DIR / "env.sh")),
        "POINT_CASES": "\n".join(cases), "REQUEUE_CODE": str(REQUEUE_CODE),
    })
    if args.dry_run:
        print(script)
        return 0
    (sweep_dir / "logs").mkdir(parents=True, exist_ok=True)
    meta = {"sweep": sweep, "points": pts, "config_path": str(config), "workdir": str(Path.cwd())}
    (sweep_dir / "sweep.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")
    path = sweep_dir / "sweep.sbatch"
    path.write_text(script)
    job = submit_script(path)
    (sweep_dir / "job_id").write_text(f"{job}\n")
    print(f"submitted sweep {sweep['name']} as array job {job} ({len(pts)} points): {sweep_dir}")
    return 0


def _queued_tasks(job: str | None) -> set[int]:
    """Array task ids of `job` still pending or running (empty without squeue)."""
    if not job:
        return set()
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%K"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return set()
    return {int(x) for x in proc.stdout.split() if x.strip().isdigit()}


def gather(sweep_dir: Path) -> list[dict]:
    try:
        meta = json.loads((sweep_dir / "sweep.json").read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{sweep_dir / 'sweep.json'} is not valid JSON ({e}); submit the sweep again") from None
    job_file = sweep_dir / "job_id"
    queued = _queued_tasks(job_file.read_text().strip() if job_file.exists() else None)
    rows = []
    for i, overrides in enumerate(meta["points"]):
        result_file = sweep_dir / f"point_{i:03d}" / "result.json"
        row = {"point": i, "overrides": " ".join(overrides)}
        if result_file.is_file():
            res = json.loads(result_file.read_text())
            row.update({k: res.get(k) for k in ("status", "preset", "params_total", "params_trunk", "train_flops",
                                                "samples", "final_loss", "train_loss_last_interval", "val_loss",
                                                "samples_per_s", "wall_time_s")})
            if res.get("status") == "requeued" and i in queued:
                row["status"] = "running"
        else:
            row["status"] = "running" if i in queued else "failed (no result.json; see logs/point-%d-*.out)" % i
        rows.append(row)
    return rows


COLUMNS = ["point", "status", "preset", "params_total", "params_trunk", "train_flops", "samples", "final_loss",
           "val_loss", "samples_per_s", "wall_time_s", "overrides"]


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def write_report(sweep_dir: Path) -> tuple[Path, Path, Path]:
    rows = gather(sweep_dir)
    csv_path, md_path, png_path = sweep_dir / "report.csv", sweep_dir / "report.md", sweep_dir / "scaling.png"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in COLUMNS) + " |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n")
    _plot(rows, png_path)
    return md_path, csv_path, png_path


def point_labels(rows: list[dict]) -> list[str]:
    """A short name per point: its preset (when presets differ) and the overrides that tell it from the other
    points, samples left out (the x axis shows them), e.g. `small width=64`; `#N` when nothing else does."""
    tokens = [[t for t in (r.get("overrides") or "").split() if not t.startswith(("train.total_samples=",
                                                                                   "model.preset="))]
              for r in rows]
    common = set.intersection(*map(set, tokens)) if tokens else set()
    several = len({r.get("preset") for r in rows}) > 1
    labels = []
    for r, toks in zip(rows, tokens):
        short = [f"{k.rsplit('.', 1)[-1]}={v}" for k, _, v in (t.partition("=") for t in toks if t not in common)]
        parts = ([str(r.get("preset"))] if several else []) + short
        labels.append(" ".join(parts) or f"#{r['point']}")
    return labels


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "done" and r.get("final_loss") is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "params_total", "parameters"), (axes[1], "train_flops", "training FLOPs")):
        for r, name in zip(done, point_labels(done)):
            loss = next(r[k] for k in ("val_loss", "train_loss_last_interval", "final_loss") if r.get(k) is not None)
            ax.scatter(r[key], loss)
            ax.annotate(name, (r[key], loss), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("loss (validation if measured, else training)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{len(done)} of {len(rows)} points done")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _target(args):
    """The budget the report answers for (None: no budget asked), checked before anything heavy loads."""
    from genlip.cluster.sweep_fit import Target, positive

    hours = [args.target_gpu_hours, args.mfu, args.gpu]
    if args.target_flops is not None and any(v is not None for v in hours):
        raise UserError("give --target-flops or --target-gpu-hours with --mfu and --gpu, not both")
    if args.target_flops is not None:
        return Target(positive(args.target_flops, "--target-flops"), "--target-flops")
    if all(v is None for v in hours):
        return None
    if any(v is None for v in hours):
        raise UserError("--target-gpu-hours needs --mfu and --gpu as well (e.g. --target-gpu-hours 5000 --mfu 0.4 "
                        "--gpu h200)")
    gpu_hours = positive(args.target_gpu_hours, "--target-gpu-hours")
    mfu = positive(args.mfu, "--mfu")
    if mfu > 1:
        raise UserError(f"--mfu {args.mfu} must be in (0, 1]: the fraction of the GPU's peak bf16 FLOP/s reached")
    from genlip.info import PEAK_BF16_TFLOPS

    peak = {k.lower(): v for k, v in PEAK_BF16_TFLOPS.items()}.get(args.gpu.lower())
    if peak is None:
        raise UserError(f"--gpu {args.gpu!r}: unknown; choose from {', '.join(k.lower() for k in PEAK_BF16_TFLOPS)}")
    flops = gpu_hours * 3600 * peak * 1e12 * mfu
    return Target(flops, f"{gpu_hours:g} GPU-hours x {peak:g} TFLOP/s peak bf16 ({args.gpu}) x MFU {mfu:g}",
                  gpu_peak=peak * 1e12, mfu=mfu)


def run_report(args) -> int:
    if not (args.sweep_dir / "sweep.json").is_file():
        raise UserError(f"{args.sweep_dir} is not a sweep directory (no sweep.json)")
    if args.nodes is not None and args.nodes < 1:
        raise UserError(f"--nodes {args.nodes} must be at least 1")
    if args.bootstrap < 0:
        raise UserError(f"--bootstrap {args.bootstrap} must be 0 (no intervals) or more")
    target = _target(args)
    md, csv_path, png = write_report(args.sweep_dir)
    print(md.read_text())
    rows = gather(args.sweep_dir)
    pending = [r for r in rows if r["status"] != "done"]
    for r in pending:
        print(f"point {r['point']}: {r['status']}")
    print(f"report: {md}, {csv_path}, {png}")
    from genlip.cluster.sweep_fit import report_scaling

    meta = json.loads((args.sweep_dir / "sweep.json").read_text())
    lines, code = report_scaling(rows, sweep_dir=args.sweep_dir, meta=meta, target=target, nodes=args.nodes,
                                 n_boot=args.bootstrap)
    print("\n".join(lines))
    return code


def run_plan(args) -> int:
    from genlip.cluster.sweep_fit import isoflop_points, parse_list, parse_vary, positive, sample_shape

    budgets = [positive(c, "--flops") for c in parse_list(args.flops, "--flops")]
    if len(set(budgets)) != len(budgets):
        raise UserError(f"--flops {args.flops!r} lists a budget twice")
    presets = parse_list(args.presets, "--presets")
    from genlip.model.config import PRESETS

    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise UserError(f"--presets: unknown {unknown}; choose from {', '.join(PRESETS)}")
    variants = parse_vary(args.vary)
    for flag in ("image_size", "prompt_tokens", "caption_tokens"):
        if getattr(args, flag) is not None and getattr(args, flag) < (1 if flag == "image_size" else 0):
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)} is out of range")
    if (args.base is None) == (args.config is None):
        raise UserError("give --base SWEEP.yaml (name, config, overrides, slurm) or --config CONFIG --name NAME")
    if args.base is not None and args.out.resolve() == args.base.resolve():
        raise UserError(f"--out {args.out} is the --base file; write the plan to another file")
    dropped, set_here = [], {"model.preset", "train.total_samples", *variants[0]}
    if args.base is not None:
        base, _ = load_sweep(args.base)
        overrides = [o for o in base["overrides"] if o.split("=", 1)[0].strip() not in set_here]
        grid = {k: v for k, v in base["grid"].items() if k not in set_here}
        dropped = [f"overrides {o}" for o in base["overrides"] if o not in overrides]
        dropped += [f"grid.{k}" for k in base["grid"] if k not in grid]
        dropped += ["its points"] if base["points"] else []
        slurm = {k: v for k, v in base["slurm"].items() if v != SLURM_KEYS[k]}
        doc = {"name": args.name or f"{base['name']}-isoflop", "config": base["config"], "overrides": overrides}
        output_dir = args.output_dir or base["output_dir"]
    else:
        if not args.name:
            raise UserError("--config needs --name (the sweep's directory name)")
        if not Path(args.config).is_file():
            raise UserError(f"--config {args.config} does not exist")
        doc, grid, slurm, output_dir = {"name": args.name, "config": args.config, "overrides": []}, {}, {}, \
            args.output_dir or "runs/sweeps"
    if not NAME_RE.fullmatch(doc["name"]) or doc["name"] in (".", ".."):
        raise UserError(f"--name {doc['name']!r} must be a directory name: letters, digits and . _ - only")
    from genlip.config import load_config

    shape = sample_shape(load_config(doc["config"], doc["overrides"]), image_size=args.image_size,
                         prompt_tokens=args.prompt_tokens, caption_tokens=args.caption_tokens)
    pts, table = isoflop_points(doc["config"], doc["overrides"], presets, budgets, shape, variants)
    doc["points"] = pts
    if grid:
        doc["grid"] = grid
    if slurm:
        doc["slurm"] = slurm
    doc["output_dir"] = output_dir
    header = (f"# isoFLOP sweep from `genlip-sweep plan`: each preset trains C / (its FLOPs per sample) samples for "
              f"C in {', '.join(f'{c:.3g}' for c in budgets)}\n# FLOPs per sample: genlip-info, {shape.source}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None, width=120))
    try:
        sweep, _ = load_sweep(args.out)
    except UserError as e:  # a bug here, not the user's: say so plainly
        raise RuntimeError(f"genlip-sweep plan wrote {args.out}, which does not load: {e}") from None
    print("\n".join(table))
    for what in dropped:
        print(f"note: dropped the base's {what}: the plan sets {', '.join(sorted(set_here))} per point")
    print(f"wrote {args.out}: {len(points(sweep))} points ({len(presets)} presets"
          + (f" x {len(variants)} --vary values" if variants[0] else "") + f" x {len(budgets)} budgets"
          + (f" x {len(points(sweep)) // len(pts)} grid combinations" if grid else "") + ")")
    print(f"next: genlip-sweep submit {args.out} --dry-run")
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="genlip-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sb = sub.add_parser("submit", help="render the sweep as one job array and submit it")
    sb.add_argument("sweep", type=Path, help="sweep YAML file")
    sb.add_argument("--dry-run", action="store_true", help="print the plan and the script, submit nothing")
    sb.add_argument("--force", action="store_true", help="submit points whose memory estimate does not fit")
    sb.add_argument("--python", default=sys.executable, help="Python that runs the jobs")
    sb.set_defaults(run=run_submit)
    pl = sub.add_parser("plan", help="write an isoFLOP sweep: per budget, each preset's samples for equal FLOPs")
    pl.add_argument("--flops", required=True, help="training FLOPs budgets, comma-separated (e.g. 1e18,1e19)")
    pl.add_argument("--presets", required=True, help="model presets, comma-separated (e.g. b16,l16,so16)")
    pl.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                    help="also vary model keys within each preset: model.width=256,384,512, or keys in step "
                         "model.width:model.heads=256:4,384:6; repeated --vary are crossed; each combination "
                         "trains C / (its own FLOPs per sample)")
    pl.add_argument("--base", type=Path, help="sweep file whose name, config, overrides, grid (seeds) and slurm "
                                              "are kept (its model.preset and train.total_samples are replaced)")
    pl.add_argument("--config", help="run config, when there is no --base")
    pl.add_argument("--name", help="sweep name (default with --base: BASE-isoflop)")
    pl.add_argument("--output-dir", help="where the sweep's runs go (default: the base's, or runs/sweeps)")
    pl.add_argument("--image-size", type=int, help="image side in pixels for FLOPs per sample (default: the "
                                                   "datasets' average, else genlip-info's 224)")
    pl.add_argument("--prompt-tokens", type=int, help="prompt tokens per sample (default: datasets, else 6)")
    pl.add_argument("--caption-tokens", type=int, help="caption + end tokens per sample (default: datasets, else 68)")
    pl.add_argument("--out", type=Path, required=True, help="the sweep file to write")
    pl.set_defaults(run=run_plan)
    rp = sub.add_parser("report", help="table, plots and scaling-law fit of a sweep's results; a budget's answer")
    rp.add_argument("sweep_dir", type=Path, help="the sweep directory (OUTPUT_DIR/NAME)")
    rp.add_argument("--target-flops", help="answer for this training budget (FLOPs): size, samples, loss, "
                                           "genlip-submit line")
    rp.add_argument("--target-gpu-hours", help="the budget as GPU-hours (with --mfu and --gpu)")
    rp.add_argument("--mfu", help="model FLOPs utilisation in (0, 1] for --target-gpu-hours (0.3-0.5 is typical)")
    rp.add_argument("--gpu", help="GPU for its peak bf16 FLOP/s (h200, h100, a100, b200, ...)")
    rp.add_argument("--nodes", type=int, help="nodes for the submit line's layout (default: the sweep's)")
    rp.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits for the intervals (0: none)")
    rp.set_defaults(run=run_report)
    return ap


def main(argv=None) -> int:
    return cli_main("genlip-sweep", lambda: (args := build_parser().parse_args(argv)).run(args))


if __name__ == "__main__":
    sys.exit(main())
