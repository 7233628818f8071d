"""genlip-submit: render and submit SLURM jobs for training and for preprocessing.

    genlip-submit train CONFIG.yaml [key=value ...] --nodes 4 --gpus-per-node 8 --time 2-00:00:00 [--dry-run]
    genlip-submit data RAW... --out DATASET --tokenizer tok.model --array-size 64 [--dry-run] [-- BUILD OPTIONS]
    (everything after `--` goes to `genlip-data build`, e.g. `-- --stage 2 --max-patches 1024`)

`train` validates the config for the job's world size, prints the plan (batch, steps, memory per GPU)
and refuses a layout that cannot fit, renders run_scripts/slurm/train.sbatch into the run directory with
the resolved config and the code version, and submits it (`--dry-run` prints it instead). Every value
that reaches a shell is quoted: names and overrides never execute anything.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from genlip.cluster.plan import describe, estimate
from genlip.config import Config, ConfigError, load_config, padded_vocab, validate
from genlip.data.shards import DatasetError, load_manifest

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "run_scripts" / "slurm"
REQUEUE_CODE = 75
FALLBACK_TOKENS_PER_SAMPLE = 270.0  # stage 1 average (GENLIP_SPEC section 7)


def render(template: Path, values: dict[str, str]) -> str:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    left = re.findall(r"{{(\w+)}}", text)
    if left:
        raise ValueError(f"{template}: no value for {sorted(set(left))}")
    return text


def safe_name(name: str) -> str:
    """A job name for #SBATCH lines (which no shell parses): letters, digits, . _ - only."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:100] or "genlip"


def slurm_time(value: str) -> str:
    if not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", value):
        raise ValueError(f"--time {value!r} is not a SLURM time limit (MM, HH:MM:SS or D-HH:MM:SS)")
    return value


def sbatch_path(path: Path) -> str:
    text = str(path)
    if re.search(r"[\s\"'\n\\]", text):
        raise ValueError(f"{text!r}: SLURM #SBATCH paths may not contain spaces, quotes or backslashes")
    return text


def sbatch_extra(partition: str | None, account: str | None, qos: str | None, gpus: int, extra: list[str]) -> str:
    lines = []
    for flag, value in (("partition", partition), ("account", account), ("qos", qos)):
        if value:
            lines.append(f"#SBATCH --{flag}={safe_name(value)}")
    if gpus:
        lines.append(f"#SBATCH --gpus-per-node={gpus}")
    for item in extra:
        if "\n" in item:
            raise ValueError("--sbatch-arg values may not contain newlines")
        lines.append(f"#SBATCH {item}")
    return "\n".join(lines)


def dataset_stats(cfg: Config) -> tuple[int | None, float, str]:
    """(tokenizer vocab, average tokens per sample, where that came from) from the manifests if readable."""
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
    vocab, tokens, source = dataset_stats(cfg)
    m = validate(cfg, world_size=world, vocab_size=padded_vocab(vocab, cfg.data.pad_vocab_to) if vocab else None)
    plan = estimate(cfg, m, world=world, avg_tokens_per_sample=tokens)
    text = describe(plan, cfg) + f"\n(average {tokens:.0f} tokens per sample, {source})"
    if gpus_per_node and plan.total_gib > gpu_memory_gib and not force:
        raise ConfigError(f"{text}\nthe estimate ({plan.total_gib:.1f} GiB) exceeds --gpu-memory-gib "
                          f"{gpu_memory_gib:g}: raise parallel.tp / parallel.pp / parallel.zero_stage, lower "
                          "train.micro_batch_rows, or pass --force")
    return text


def train_command(python: str, config: Path, overrides: list[str], run_dir: Path) -> list[str]:
    return [python, "-m", "genlip.train.trainer", str(config), *overrides, f"train.output_dir={run_dir}"]


def submit_script(script: Path, dry_run: bool) -> str | None:
    if dry_run:
        return None
    proc = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch {script} failed: {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]


def code_version() -> str:
    proc = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def node_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    try:
        lo_n, hi_n = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--nodes {text!r}: give a count (4) or a range (2-4)") from None
    if not 1 <= lo_n <= hi_n:
        raise argparse.ArgumentTypeError(f"--nodes {text!r}: need 1 <= MIN <= MAX")
    return lo_n, hi_n


def tasks_lines(*, nodes: tuple[int, int], tasks: int, gpus_per_node: int) -> tuple[str, str]:
    """(#SBATCH task line, shell that sets PER_NODE at run time). The task count follows the allocation,
    so a job requeued onto another node count (a --nodes range), or a one-node CPU job whose task count
    was changed while it was pending, starts the matching number of ranks."""
    if gpus_per_node or nodes != (1, 1):
        return f"#SBATCH --ntasks-per-node={tasks}", f"PER_NODE={tasks}"
    return (f"#SBATCH --ntasks={tasks}",
            'CPUS=${SLURM_JOB_CPUS_PER_NODE%%[(,]*}; PER_NODE=$(( CPUS / ${SLURM_CPUS_PER_TASK:-1} ))')


def run_train(args) -> int:
    cfg = load_config(args.config, args.overrides)
    tasks = args.tasks_per_node or max(args.gpus_per_node, 1)
    lo, hi = args.nodes
    for n in range(lo, hi):  # every smaller count of a range must work too; the largest is planned below
        plan_job(cfg, world=n * tasks, gpus_per_node=args.gpus_per_node, gpu_memory_gib=args.gpu_memory_gib,
                 force=args.force)
    world = hi * tasks
    run_dir = (args.run_dir or Path(cfg.train.output_dir)).resolve()
    plan_text = plan_job(cfg, world=world, gpus_per_node=args.gpus_per_node, gpu_memory_gib=args.gpu_memory_gib,
                         force=args.force)
    name = args.name or run_dir.name
    task_line, per_node = tasks_lines(nodes=args.nodes, tasks=tasks, gpus_per_node=args.gpus_per_node)
    script = render(SLURM_DIR / "train.sbatch", {
        "JOB_NAME": safe_name(name), "NODES": f"{lo}" if lo == hi else f"{lo}-{hi}", "TASKS_LINE": task_line,
        "PER_NODE": per_node,
        "CPUS_PER_TASK": str(args.cpus_per_task), "TIME": slurm_time(args.time), "RUN_DIR": sbatch_path(run_dir), "RUN_DIR_SHELL": shlex.quote(str(run_dir)),
        "SIGNAL_SECONDS": str(args.signal_seconds), "REQUEUE_CODE": str(REQUEUE_CODE),
        "SBATCH_EXTRA": sbatch_extra(args.partition, args.account, args.qos, args.gpus_per_node, args.sbatch_arg),
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
    job = submit_script(path, dry_run=False)
    print(f"submitted job {job}: {path}\nlogs: {run_dir}/slurm-{job}.out")
    return 0


def run_data(args) -> int:
    out = Path(args.out).resolve()
    log_dir = (args.log_dir or out.parent / f"{out.name}_logs").resolve()
    build = [args.python, "-m", "data_tools.cli", "build", *[str(Path(i).resolve()) for i in args.inputs],
             "--out", str(out), "--tokenizer", str(Path(args.tokenizer).resolve()), *args.build_args]
    script = render(SLURM_DIR / "preprocess.sbatch", {
        "JOB_NAME": safe_name(args.name or f"build-{out.name}"), "LAST_TASK": str(args.array_size - 1),
        "CPUS_PER_TASK": str(args.cpus_per_task), "TIME": slurm_time(args.time), "LOG_DIR": sbatch_path(log_dir),
        "SBATCH_EXTRA": sbatch_extra(args.partition, args.account, args.qos, 0, args.sbatch_arg),
        "WORKDIR": shlex.quote(str(Path.cwd())), "ENV_FILE": shlex.quote(str(SLURM_DIR / "env.sh")),
        "BUILD_COMMAND": shlex.join(build),
    })
    if args.dry_run:
        print(script)
        return 0
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "preprocess.sbatch"
    path.write_text(script)
    job = submit_script(path, dry_run=False)
    print(f"submitted array job {job} ({args.array_size} tasks): {path}")
    return 0


def add_slurm_options(ap: argparse.ArgumentParser, *, time_default: str) -> None:
    ap.add_argument("--name", help="job name (default: the run or dataset directory name)")
    ap.add_argument("--partition", help="SLURM partition")
    ap.add_argument("--account", help="SLURM account")
    ap.add_argument("--qos", help="SLURM QOS")
    ap.add_argument("--time", default=time_default, help="time limit (D-HH:MM:SS)")
    ap.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores per task (loader workers, threads)")
    ap.add_argument("--sbatch-arg", action="append", default=[], help="extra #SBATCH option, repeatable")
    ap.add_argument("--python", default=sys.executable, help="Python that runs the job (its environment)")
    ap.add_argument("--dry-run", action="store_true", help="print the script instead of submitting it")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="genlip-submit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tr = sub.add_parser("train", help="a (multi-node) training job that requeues itself before its time limit")
    tr.add_argument("config", help="YAML run config")
    tr.add_argument("overrides", nargs="*", help="dotted overrides (key=value)")
    tr.add_argument("--nodes", type=node_range, default=(1, 1), metavar="N|MIN-MAX",
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


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    build_args = argv[argv.index("--") + 1:] if "--" in argv else []  # data: passed on to genlip-data build
    argv = argv[:argv.index("--")] if "--" in argv else argv
    args = build_parser().parse_args(argv)
    args.build_args = build_args
    try:
        return args.run(args)
    except (ConfigError, ValueError, RuntimeError, FileNotFoundError) as e:
        print(f"genlip-submit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
