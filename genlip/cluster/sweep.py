"""genlip-sweep: a family of runs (presets x overrides x seeds) as one SLURM job array, and its report.

    genlip-sweep submit SWEEP.yaml [--dry-run]
    genlip-sweep report SWEEP_DIR            # table (Markdown + CSV) and scaling plot (PNG)

A sweep file:

    name: sizes
    config: run_scripts/configs/so16_stage1.yaml     # base run config
    overrides: [train.total_samples=1.0e8]           # for every point
    grid:                                            # the cross product; each value a list
      model.preset: [b16, l16, so16, g16]
      train.seed: [1]
    slurm: {nodes: 1, gpus_per_node: 8, time: "1-00:00:00", partition: gpu}
    output_dir: runs/sweeps                          # the sweep lives in OUTPUT_DIR/NAME

The file is checked whole (types of every key, grid values non-empty lists without repeats, no key
twice, the slurm options through genlip-submit's validation pass) before any config loads or any file is
written; a bad key is one line naming it.

Array task i trains point i into SWEEP_DIR/point_00i (its own run directory, so it resumes after a
requeue) and writes result.json there; `report` gathers them and says which points failed or are still
running.
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
TOP_KEYS = {"name", "config", "overrides", "grid", "slurm", "output_dir"}
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
        raise UserError(f"{path}: must be a mapping with the keys name, config, grid (and overrides, slurm, "
                        "output_dir)")
    unknown = set(map(str, sweep)) - TOP_KEYS
    if unknown:
        raise UserError(f"{path}: unknown keys {sorted(unknown)}; valid: {', '.join(sorted(TOP_KEYS))}")
    for key in ("name", "config", "grid"):
        if key not in sweep:
            raise UserError(f"{path}: missing {key!r}")
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
    grid = sweep["grid"]
    if not isinstance(grid, dict) or not grid:
        raise UserError(f"{path}: grid must map config keys to non-empty lists of values")
    for key, values in grid.items():
        if not isinstance(key, str) or not key or re.search(r"[\s=]", key):
            raise UserError(f"{path}: grid key {key!r} must be a dotted config key such as model.preset")
        if not isinstance(values, list) or not values:
            raise UserError(f"{path}: grid.{key} must be a non-empty list of values, not {values!r}")
        texts = [_yaml_value(v) for v in values]
        if len(set(texts)) != len(texts):
            raise UserError(f"{path}: grid.{key} lists a value twice ({values}): each point must differ")
        if key in fixed:
            raise UserError(f"{path}: {key} is both in overrides and in grid; keep one")
    for key in [*fixed, *grid]:
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


def points(sweep: dict) -> list[list[str]]:
    keys = list(sweep["grid"])
    return [[*sweep["overrides"], *(f"{k}={_yaml_value(v)}" for k, v in zip(keys, combo))]
            for combo in itertools.product(*(sweep["grid"][k] for k in keys))]


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
    (sweep_dir / "sweep.json").write_text(json.dumps({"sweep": sweep, "points": pts}, indent=1, default=str) + "\n")
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
                                                "samples", "final_loss", "val_loss", "samples_per_s", "wall_time_s")})
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


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "done" and r.get("final_loss") is not None]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "params_total", "parameters"), (axes[1], "train_flops", "training FLOPs")):
        for r in done:
            loss = r["val_loss"] if r.get("val_loss") is not None else r["final_loss"]
            ax.scatter(r[key], loss)
            ax.annotate(f"{r['preset']}#{r['point']}", (r[key], loss), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("loss (validation if measured, else final train)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{len(done)} of {len(rows)} points done")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_report(args) -> int:
    if not (args.sweep_dir / "sweep.json").is_file():
        raise UserError(f"{args.sweep_dir} is not a sweep directory (no sweep.json)")
    md, csv_path, png = write_report(args.sweep_dir)
    print(md.read_text())
    rows = gather(args.sweep_dir)
    pending = [r for r in rows if r["status"] != "done"]
    for r in pending:
        print(f"point {r['point']}: {r['status']}")
    print(f"report: {md}, {csv_path}, {png}")
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
    rp = sub.add_parser("report", help="table (Markdown, CSV) and scaling plot of a sweep's results")
    rp.add_argument("sweep_dir", type=Path, help="the sweep directory (OUTPUT_DIR/NAME)")
    rp.set_defaults(run=run_report)
    return ap


def main(argv=None) -> int:
    return cli_main("genlip-sweep", lambda: (args := build_parser().parse_args(argv)).run(args))


if __name__ == "__main__":
    sys.exit(main())
