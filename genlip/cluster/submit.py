"""genlip-submit: render and submit SLURM jobs for training and for preprocessing.

    genlip-submit train CONFIG.yaml [key=value ...] --nodes 4 --gpus-per-node 8 --time 2-00:00:00 [--dry-run]
    genlip-submit data RAW... --out DATASET --tokenizer tok.model --array-size 64 [--dry-run] [-- BUILD OPTIONS]
    (everything after `--` goes to `genlip-data build`, e.g. `-- --stage 2 --max-patches 1024`)

`train` validates the config for the job's world size, prints the plan (batch, steps, memory per GPU)
and refuses a layout that cannot fit, renders run_scripts/slurm/train.sbatch into the run directory with
the resolved config and the code version, and submits it (`--dry-run` prints it instead).

Every option is checked in one pass (`check_slurm_options`, shared with genlip-sweep) before the config,
torch or anything else heavy is loaded and before any file is written; a bad one is one line naming it.
Templates are filled in one pass (a value is never rescanned for slots), every value that reaches a
shell is quoted, and the scripts run under `set -euo pipefail`: names, paths and overrides never execute
anything, and a failing step stops the job.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from genlip.errors import UserError, cli_main

if TYPE_CHECKING:
    from genlip.config import Config

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "run_scripts" / "slurm"
REQUEUE_CODE = 75
FALLBACK_TOKENS_PER_SAMPLE = 270.0  # stage 1 average (GENLIP_SPEC section 7)
SLOT = re.compile(r"{{(\w+)}}")


def render(template: Path, values: dict[str, str]) -> str:
    """Fill the template's `{{NAME}}` slots in one pass over the template only: an inserted value is never
    scanned again, so a value holding `{{TRAIN_COMMAND}}` stays literal text (callers quote shell values)."""
    text = template.read_text()
    missing = sorted(set(SLOT.findall(text)) - set(values))
    if missing:  # a template/code mismatch, not user input
        raise RuntimeError(f"{template}: no value for {missing}")
    return SLOT.sub(lambda m: values[m.group(1)], text)


def safe_name(name: str) -> str:
    """A job name for #SBATCH lines (which no shell parses): letters, digits, . _ - only."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "genlip"


# ---- one validation pass for every job option (genlip-submit train/data, genlip-sweep's `slurm:`) ----

TIME_RE = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")
SLURM_WORD = re.compile(r"[A-Za-z0-9._,-]+")  # partition (may be a comma list), account, QOS


@dataclass(frozen=True)
class SlurmOptions:
    """Job options after `check_slurm_options`: typed, in range and consistent."""
    nodes: tuple[int, int]
    gpus_per_node: int
    tasks_per_node: int  # resolved: one per GPU when not given
    cpus_per_task: int
    time: str
    signal_seconds: int
    gpu_memory_gib: float
    partition: str | None
    account: str | None
    qos: str | None
    sbatch_args: tuple[str, ...]


def time_seconds(text: str) -> float | None:
    """Seconds in a SLURM time limit (MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS; UNLIMITED or INFINITE:
    inf, the partition's own limit then applies); None if not one."""
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return math.inf
    m = TIME_RE.fullmatch(text)
    if not m:
        return None
    days, a, b, c = m.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, mi, sec = (nums + [0, 0])[:3]
        return ((int(days) * 24 + h) * 60 + mi) * 60 + sec
    if len(nums) == 3:
        return (nums[0] * 60 + nums[1]) * 60 + nums[2]
    return nums[0] * 60 + (nums[1] if len(nums) == 2 else 0)  # M or M:S


def _int(value: Any, what: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{what} must be an integer, not {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise UserError(f"{what} {value} is out of range: give {lo}..{hi}" if hi is not None else
                        f"{what} {value} is out of range: give at least {lo}")
    return value


def _str(value: Any, what: str, pattern: re.Pattern | None = None) -> str:
    if not isinstance(value, str) or not value:
        raise UserError(f"{what} must be a non-empty string, not {value!r}")
    if pattern is not None and not pattern.fullmatch(value):
        raise UserError(f"{what} {value!r}: only letters, digits and . _ , - are allowed")
    return value


def check_slurm_options(raw: dict, name: Callable[[str], str]) -> SlurmOptions:
    """Types, ranges and cross-field rules of the job options in `raw` (keys as in SlurmOptions; `nodes` an
    int or a (MIN, MAX) pair); raises UserError naming the option as `name(key)` spells it."""
    nodes = raw["nodes"]
    if isinstance(nodes, tuple):
        lo = _int(nodes[0], name("nodes"), 1)
        hi = _int(nodes[1], name("nodes"), 1)
        if lo > hi:
            raise UserError(f"{name('nodes')} {lo}-{hi}: need 1 <= MIN <= MAX")
    else:
        lo = hi = _int(nodes, name("nodes"), 1)
    gpus = _int(raw["gpus_per_node"], name("gpus_per_node"), 0)
    tasks = _int(raw["tasks_per_node"], name("tasks_per_node"), 0) or max(gpus, 1)
    cpus = _int(raw["cpus_per_task"], name("cpus_per_task"), 1)
    time = raw["time"]
    if not isinstance(time, str):  # YAML reads an unquoted 10:00 as the number 600 (base 60)
        raise UserError(f"{name('time')} must be a quoted string such as \"1-00:00:00\", not {time!r}")
    limit = time_seconds(time)
    if not limit:
        raise UserError(f"{name('time')} {time!r} is not a SLURM time limit (MM, HH:MM:SS or D-HH:MM:SS, above 0; "
                        "or UNLIMITED)")
    signal = _int(raw.get("signal_seconds", 1), name("signal_seconds"), 1, 65535)
    if "signal_seconds" in raw and signal >= limit:
        raise UserError(f"{name('signal_seconds')} {signal} must be below the time limit ({time} = {limit} s): "
                        "the job would checkpoint and requeue as soon as it starts")
    mem = raw.get("gpu_memory_gib", 1.0)
    if isinstance(mem, bool) or not isinstance(mem, (int, float)) or not mem > 0:
        raise UserError(f"{name('gpu_memory_gib')} must be a number above 0, not {mem!r}")
    words = {k: None if raw.get(k) is None else _str(raw[k], name(k), SLURM_WORD)
             for k in ("partition", "account", "qos")}
    extra = raw.get("sbatch_args", [])
    if not isinstance(extra, (list, tuple)):
        raise UserError(f"{name('sbatch_args')} must be a list of options such as [\"--exclusive\"], not {extra!r}")
    for item in extra:
        if not isinstance(item, str) or not item.startswith("--") or re.search(r"[\x00-\x1f]", item):
            raise UserError(f"{name('sbatch_args')} {item!r}: each must be one option on one line, starting with "
                            "-- (e.g. --exclusive or --constraint=a100)")
    return SlurmOptions(nodes=(lo, hi), gpus_per_node=gpus, tasks_per_node=tasks, cpus_per_task=cpus, time=time,
                        signal_seconds=signal, gpu_memory_gib=float(mem), sbatch_args=tuple(extra), **words)


def cli_name(key: str) -> str:
    return "--sbatch-arg" if key == "sbatch_args" else "--" + key.replace("_", "-")


def parse_nodes(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text.strip())
    if not m:
        raise UserError(f"--nodes {text!r}: give a count (4) or a range (2-4), need 1 <= MIN <= MAX")
    return int(m.group(1)), int(m.group(2) or m.group(1))


def sbatch_path(path: Path, what: str) -> str:
    """A path for an #SBATCH line, which sbatch (not a shell) reads: `#` starts a comment there, quotes
    and backslashes are eaten and `%` is a file-name pattern, so such paths are refused, not mangled."""
    text = str(path)
    if re.search(r"[\s\"'\\#%]", text):
        raise UserError(f"{what} {text!r}: SLURM log paths may not contain spaces, quotes, backslashes, # or %; "
                        "choose another directory")
    return text


def sbatch_extra(opts: SlurmOptions, *, gpus: bool = True) -> str:
    lines = [f"#SBATCH --{flag}={value}" for flag, value in
             (("partition", opts.partition), ("account", opts.account), ("qos", opts.qos)) if value]
    if gpus and opts.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={opts.gpus_per_node}")
    lines += [f"#SBATCH {item}" for item in opts.sbatch_args]
    return "\n".join(lines)


def dataset_stats(cfg: Config) -> tuple[int | None, float, str]:
    """(tokenizer vocab, average tokens per sample, where that came from) from the manifests if readable."""
    from genlip.data.shards import DatasetError, load_manifest

    try:
        manifests = [load_manifest(d) for d in cfg.data.datasets]
    except DatasetError:
        manifests = []
    if not manifests:
        return None, FALLBACK_TOKENS_PER_SAMPLE, "assumed (datasets not readable here)"
    samples = sum(m["totals"]["samples"] for m in manifests)
    tokens = sum(m["totals"]["patches"] + m["totals"]["text_tokens"] + m["totals"]["samples"] * len(m["prompt"]["ids"])
                 for m in manifests)
    return manifests[0]["tokenizer"]["vocab_size"], tokens / max(samples, 1), "from the dataset manifests"


def plan_job(cfg: Config, *, world: int, gpus_per_node: int, gpu_memory_gib: float, force: bool) -> str:
    """Validate and estimate; raises ConfigError when the job cannot work."""
    from genlip.cluster.plan import describe, estimate
    from genlip.config import ConfigError, padded_vocab, validate

    vocab, tokens, source = dataset_stats(cfg)
    m = validate(cfg, world_size=world, vocab_size=padded_vocab(vocab, cfg.data.pad_vocab_to) if vocab else None)
    plan = estimate(cfg, m, world=world, avg_tokens_per_sample=tokens)
    text = describe(plan, cfg) + f"\n(average {tokens:.0f} tokens per sample, {source})"
    if gpus_per_node and plan.total_gib > gpu_memory_gib and not force:
        print(text)  # the plan behind the refusal; the error itself is one line
        raise ConfigError(f"the memory estimate ({plan.total_gib:.1f} GiB per GPU) exceeds --gpu-memory-gib "
                          f"{gpu_memory_gib:g}: raise parallel.tp / parallel.pp / parallel.zero_stage, lower "
                          "train.micro_batch_rows, or pass --force")
    return text


def train_command(python: str, config: Path, overrides: list[str], run_dir: Path) -> list[str]:
    return [python, "-m", "genlip.train.trainer", str(config), *overrides, f"train.output_dir={run_dir}"]


def submit_script(script: Path) -> str:
    """sbatch SCRIPT; the job id."""
    try:
        proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError(f"sbatch not found: submit from a SLURM login node, or check with --dry-run; the script "
                        f"is kept in {script}") from None
    if proc.returncode != 0:
        raise UserError(f"sbatch {script} failed: {' '.join(proc.stderr.split())} (the script is kept; fix the "
                        "option it names and submit again)")
    return proc.stdout.strip().split(";")[0]


def code_version() -> str:
    proc = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def tasks_lines(*, nodes: tuple[int, int], tasks: int, gpus_per_node: int) -> tuple[str, str]:
    """(#SBATCH task line, shell that sets PER_NODE at run time). The task count follows the allocation,
    so a job requeued onto another node count (a --nodes range), or a one-node CPU job whose task count
    was changed while it was pending, starts the matching number of ranks."""
    if gpus_per_node or nodes != (1, 1):
        return f"#SBATCH --ntasks-per-node={tasks}", f"PER_NODE={tasks}"
    return (f"#SBATCH --ntasks={tasks}",
            'CPUS=${SLURM_JOB_CPUS_PER_NODE%%[(,]*}; PER_NODE=$(( CPUS / ${SLURM_CPUS_PER_TASK:-1} ))')


def job_options(args, **fixed) -> SlurmOptions:
    """The command line's job options through the one validation pass."""
    raw = {k: getattr(args, k, None) for k in ("gpus_per_node", "tasks_per_node", "cpus_per_task", "time",
                                               "signal_seconds", "gpu_memory_gib", "partition", "account", "qos")}
    raw = {k: v for k, v in raw.items() if v is not None or k in ("partition", "account", "qos")}
    raw["sbatch_args"] = args.sbatch_arg
    raw.update(fixed)
    if not args.python:
        raise UserError("--python must name the Python that runs the job")
    return check_slurm_options(raw, cli_name)


def run_train(args) -> int:
    opts = job_options(args, nodes=parse_nodes(args.nodes))  # before the config (and torch) load
    if args.run_dir is not None:
        sbatch_path(args.run_dir.resolve(), "--run-dir")
    from genlip.config import load_config

    cfg = load_config(args.config, args.overrides)
    run_dir = (args.run_dir or Path(cfg.train.output_dir)).resolve()
    log_path = sbatch_path(run_dir, "--run-dir" if args.run_dir else "train.output_dir (the run directory)")
    tasks, (lo, hi) = opts.tasks_per_node, opts.nodes
    for n in range(lo, hi):  # every smaller count of a range must work too; the largest is planned below
        plan_job(cfg, world=n * tasks, gpus_per_node=opts.gpus_per_node, gpu_memory_gib=opts.gpu_memory_gib,
                 force=args.force)
    plan_text = plan_job(cfg, world=hi * tasks, gpus_per_node=opts.gpus_per_node,
                         gpu_memory_gib=opts.gpu_memory_gib, force=args.force)
    name = args.name or run_dir.name
    task_line, per_node = tasks_lines(nodes=opts.nodes, tasks=tasks, gpus_per_node=opts.gpus_per_node)
    script = render(SLURM_DIR / "train.sbatch", {
        "JOB_NAME": safe_name(name), "NODES": f"{lo}" if lo == hi else f"{lo}-{hi}", "TASKS_LINE": task_line,
        "PER_NODE": per_node, "CPUS_PER_TASK": str(opts.cpus_per_task), "TIME": opts.time, "RUN_DIR": log_path,
        "RUN_DIR_SHELL": shlex.quote(str(run_dir)), "SIGNAL_SECONDS": str(opts.signal_seconds),
        "REQUEUE_CODE": str(REQUEUE_CODE), "SBATCH_EXTRA": sbatch_extra(opts),
        "WORKDIR": shlex.quote(str(Path.cwd())), "ENV_FILE": shlex.quote(str(SLURM_DIR / "env.sh")),
        "TRAIN_COMMAND": shlex.join(train_command(args.python, Path(args.config).resolve(), args.overrides, run_dir)),
    })
    print(plan_text)
    if args.dry_run:
        print(f"\n# --dry-run: would write {run_dir / 'submit.sbatch'} and run sbatch on it\n")
        print(script)
        return 0
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "submit.sbatch"
    path.write_text(script)
    (run_dir / "submitted_config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    (run_dir / "code_version.txt").write_text(code_version() + "\n")
    job = submit_script(path)
    print(f"submitted job {job}: {path}\nlogs: {run_dir}/slurm-{job}.out")
    return 0


def run_data(args) -> int:
    opts = job_options(args, nodes=1, gpus_per_node=0, tasks_per_node=1)
    _int(args.array_size, "--array-size", 1)
    for item in args.inputs:
        if not Path(item).exists():
            raise UserError(f"input {item!r} does not exist")
    if not Path(args.tokenizer).is_file():
        raise UserError(f"--tokenizer {args.tokenizer!r} is not a file")
    out = Path(args.out).resolve()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {args.out!r} exists and is not a directory")
    log_dir = (args.log_dir or out.parent / f"{out.name}_logs").resolve()
    log_path = sbatch_path(
        log_dir, "--log-dir" if args.log_dir else "--out (its OUT_logs directory; or give --log-dir)")
    build = [args.python, "-m", "data_tools.cli", "build", *[str(Path(i).resolve()) for i in args.inputs],
             "--out", str(out), "--tokenizer", str(Path(args.tokenizer).resolve()), *args.build_args]
    script = render(SLURM_DIR / "preprocess.sbatch", {
        "JOB_NAME": safe_name(args.name or f"build-{out.name}"), "LAST_TASK": str(args.array_size - 1),
        "CPUS_PER_TASK": str(opts.cpus_per_task), "TIME": opts.time, "LOG_DIR": log_path,
        "SBATCH_EXTRA": sbatch_extra(opts, gpus=False),
        "WORKDIR": shlex.quote(str(Path.cwd())), "ENV_FILE": shlex.quote(str(SLURM_DIR / "env.sh")),
        "BUILD_COMMAND": shlex.join(build),
    })
    if args.dry_run:
        print(script)
        return 0
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "preprocess.sbatch"
    path.write_text(script)
    job = submit_script(path)
    print(f"submitted array job {job} ({args.array_size} tasks): {path}")
    return 0


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are UserErrors: one line through `cli_main`, like every other error."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)".replace("\n", "\\n"))  # one line, always


def add_slurm_options(ap: argparse.ArgumentParser, *, time_default: str) -> None:
    ap.add_argument("--name", help="job name (default: the run or dataset directory name)")
    ap.add_argument("--partition", help="SLURM partition")
    ap.add_argument("--account", help="SLURM account")
    ap.add_argument("--qos", help="SLURM QOS")
    ap.add_argument("--time", default=time_default, help="time limit (D-HH:MM:SS)")
    ap.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores per task (loader workers, threads)")
    ap.add_argument("--sbatch-arg", action="append", default=[],
                    help="extra #SBATCH option starting with -- (e.g. --exclusive), repeatable")
    ap.add_argument("--python", default=sys.executable, help="Python that runs the job (its environment)")
    ap.add_argument("--dry-run", action="store_true", help="print the script instead of submitting it")


def build_parser() -> argparse.ArgumentParser:
    ap = ArgumentParser(prog="genlip-submit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tr = sub.add_parser("train", help="a (multi-node) training job that requeues itself before its time limit")
    tr.add_argument("config", help="YAML run config")
    tr.add_argument("overrides", nargs="*", help="dotted overrides (key=value)")
    tr.add_argument("--nodes", default="1", metavar="N|MIN-MAX",
                    help="nodes; a range lets SLURM start (and requeue) the job on any count in it: the run resumes "
                         "on the new world size (the layout is checked for every count)")
    tr.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (0: CPU nodes)")
    tr.add_argument("--tasks-per-node", type=int, default=0, help="tasks per node (default: one per GPU)")
    tr.add_argument("--run-dir", type=Path, help="run directory (default: train.output_dir of the config)")
    tr.add_argument("--signal-seconds", type=int, default=300, help="USR1 this long before the time limit")
    tr.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory per GPU for the fit check")
    tr.add_argument("--force", action="store_true", help="submit even if the memory estimate does not fit")
    add_slurm_options(tr, time_default="2-00:00:00")
    tr.set_defaults(run=run_train)
    da = sub.add_parser("data", help="genlip-data build as a job array over the input files")
    da.add_argument("inputs", nargs="+", help="raw input files or directories")
    da.add_argument("--out", required=True, help="output dataset directory")
    da.add_argument("--tokenizer", required=True, help="tokenizer .model / .json")
    da.add_argument("--array-size", type=int, default=8, help="array tasks (each takes every N-th input)")
    da.add_argument("--log-dir", type=Path, help="where the array's logs go (default: OUT_logs next to OUT)")
    add_slurm_options(da, time_default="12:00:00")
    da.set_defaults(run=run_data)
    return ap


def _run(argv) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    build_args = argv[argv.index("--") + 1:] if "--" in argv else []  # data: passed on to genlip-data build
    argv = argv[:argv.index("--")] if "--" in argv else argv
    args = build_parser().parse_args(argv)
    args.build_args = build_args
    return args.run(args)


def main(argv=None) -> int:
    return cli_main("genlip-submit", lambda: _run(argv))


if __name__ == "__main__":
    sys.exit(main())
