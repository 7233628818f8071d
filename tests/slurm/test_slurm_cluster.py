"""Against a real SLURM cluster on this machine (tests/slurm/cluster.sh: munge, slurmctld, slurmd):
a 2-task training job, a 2-task preprocessing array, a 2-point sweep and its report, preemption with
requeue and exact resume, a requeued 2-task job that comes back as 1 task and resumes under the new
world size, and inert shell-injection attempts. And that the test cluster owns only what it started: its
own munge, ports, pid files; `stop` never ends a process it did not start.

Skipped with the reason when Debian's slurm-wlm/munge are not installed; under CI (CI=true) that is a
failure instead, since run_scripts/test.sh installs them."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_tools.cli import main as data_main
from genlip.cluster.sweep import main as sweep_main
from tests.helpers import build_tiny_dataset, ROOT, read_metrics, read_samples, run_train

SLURM_DIR = Path(os.environ.get("GENLIP_SLURM_DIR", "/tmp/genlip-slurm"))
CLUSTER_SH = ROOT / "tests" / "slurm" / "cluster.sh"


@pytest.fixture(scope="module")
def cluster():
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(b) is None]
    if missing:
        msg = f"SLURM is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
        if os.environ.get("CI"):
            pytest.fail(msg + " (CI must run these tests; run_scripts/test.sh installs them)")
        pytest.skip(msg)
    if os.geteuid() != 0:
        pytest.skip("starting a local SLURM cluster needs root")
    proc = subprocess.run(["bash", str(CLUSTER_SH), "start"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    started = "started" in proc.stdout.split()  # "already running": someone else's session; leave it running
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(SLURM_DIR / "slurm.conf")
    yield
    if saved is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = saved
    if started:  # everything cluster.sh started (munged too) ends with the suite
        subprocess.run(["bash", str(CLUSTER_SH), "stop"], check=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory, cluster):
    root = tmp_path_factory.mktemp("slurm")
    _, tars, tok = build_tiny_dataset(root)
    config = root / "tiny.yaml"
    config.write_text(f"""
model: {{preset: tiny}}
data: {{datasets: [{root / 'ds'}], seq_len: 256, max_samples_per_row: 8, num_workers: 0}}
train: {{total_samples: 1.0e6, max_steps: 6, global_batch_rows: 2, dtype: fp32, log_interval: 1, save_interval: 3,
        record_samples: true}}
""")
    return root, config, tars, tok


def job_state(job: str) -> tuple[str, int]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    state = out.split("JobState=")[1].split()[0] if "JobState=" in out else "UNKNOWN"
    restarts = int(out.split("Restarts=")[1].split()[0]) if "Restarts=" in out else 0
    return state, restarts


def wait_done(job: str, timeout: float = 600) -> str:
    """Wait for a job (all array tasks) to end; its final state."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        queued = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%i %T"], capture_output=True, text=True).stdout
        if not queued.strip():
            return job_state(job)[0]
        time.sleep(1)
    subprocess.run(["scancel", job])
    raise AssertionError(f"job {job} did not finish in {timeout}s")


def submit(*argv, cwd=ROOT) -> str:
    proc = subprocess.run([sys.executable, "-m", "genlip.cluster.submit", *argv], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return re.search(r"submitted (?:array )?job (\d+)", proc.stdout).group(1)


def test_two_task_training_job(data):
    root, config, _, _ = data
    run = root / "job"
    job = submit("train", str(config), "--gpus-per-node", "0", "--tasks-per-node", "2", "--cpus-per-task", "1",
                 "--time", "10:00", "--run-dir", str(run))
    assert wait_done(job) == "COMPLETED", (run / f"slurm-{job}.out").read_text()[-3000:]
    log = (run / f"slurm-{job}.out").read_text()
    assert "world 2 = tp 1 x pp 1 x dp 2" in log
    assert (run / "checkpoints" / "latest").read_text().strip() == "step000000006"
    assert json.loads((run / "result.json").read_text())["status"] == "done"
    assert (run / "submit.sbatch").is_file() and (run / "submitted_config.json").is_file()
    assert sorted(read_metrics(run)) == [1, 2, 3, 4, 5, 6] and list((run / "tb").iterdir())


def test_preprocessing_array_builds_a_dataset_verify_accepts(data):
    root, _, tars, tok = data
    out = root / "arrayds"
    proc = subprocess.run([sys.executable, "-m", "genlip.cluster.submit", "data", *map(str, tars), "--out", str(out),
                           "--tokenizer", str(tok), "--array-size", "2", "--cpus-per-task", "1", "--time", "10:00",
                           "--", "--image-size", "64"], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    job = re.search(r"submitted array job (\d+)", proc.stdout).group(1)
    assert wait_done(job) == "COMPLETED"
    assert data_main(["verify", str(out), "--quiet"]) == 0
    assert json.loads((out / "manifest.json").read_text())["totals"]["samples"] == 60


def test_two_point_sweep_and_report(data, capsys):
    root, config, _, _ = data
    sweep = root / "sweep.yaml"
    sweep.write_text(f"""
name: tiny_sizes
config: {config}
overrides: [train.max_steps=3, train.save_interval=0]
grid: {{model.width: [32, 64]}}
slurm: {{gpus_per_node: 0, tasks_per_node: 1, cpus_per_task: 1, time: "10:00"}}
output_dir: {root / 'sweeps'}
""")
    assert sweep_main(["submit", str(sweep)]) == 0
    sweep_dir = root / "sweeps" / "tiny_sizes"
    job = (sweep_dir / "job_id").read_text().strip()
    capsys.readouterr()
    assert wait_done(job) == "COMPLETED"
    assert sweep_main(["report", str(sweep_dir)]) == 0
    report = (sweep_dir / "report.md").read_text()
    rows = [line for line in report.splitlines()[2:] if line.startswith("|")]
    assert len(rows) == 2 and all("| done |" in r for r in rows)
    assert "model.width=32" in report and "model.width=64" in report
    assert (sweep_dir / "scaling.png").stat().st_size > 1000 and (sweep_dir / "report.csv").is_file()


def test_preemption_requeues_and_resumes_exactly(data):
    root, config, _, _ = data
    ref = root / "preempt_ref"
    proc = run_train(2, config, f"train.output_dir={ref}", "train.max_steps=24")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = root / "preempt"
    job = submit("train", str(config), "train.max_steps=24", "--gpus-per-node", "0", "--tasks-per-node", "2",
                 "--cpus-per-task", "1", "--time", "10:00", "--run-dir", str(run))
    deadline = time.time() + 300
    while not (run / "checkpoints" / "latest").exists() and time.time() < deadline:
        time.sleep(0.2)
    # What SLURM does --signal seconds before the time limit: USR1 to every task of the job step.
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    assert wait_done(job) == "COMPLETED"  # requeued, eligible again once its credential expired (10 s)
    log = (run / f"slurm-{job}.out").read_text()
    assert "stop requested" in log and "requeueing" in log and "restart 1" in log and "resumed from" in log
    assert job_state(job)[1] == 1
    assert read_samples(run) == read_samples(ref)
    a, b = read_metrics(ref), read_metrics(run)
    assert all(b[s]["train/loss"] == pytest.approx(a[s]["train/loss"], rel=1e-6) for s in a)


def _flat(samples):
    return {st: sorted((r, k) for rep in v for rows, keys in [rep] for r, k in zip(rows, keys)) for st, v in samples.items()}


def test_requeued_job_comes_back_smaller_and_resumes(data):
    """USR1 -> checkpoint, exit 75, requeue; while the job waits to start again it is given one CPU (as a
    partition that shrank would): the job starts one task, the trainer converts the DP=2 checkpoint, and
    the losses and samples equal an unbroken run's (lr 5e-4 so Adam's state matters, see the elastic test)."""
    root, config, _, _ = data
    over = ["optim.lr=5.0e-4", "optim.warmup_ratio=0.0", "train.max_steps=24"]
    ref = root / "shrink_ref"
    proc = run_train(1, config, f"train.output_dir={ref}", *over)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = root / "shrink"
    job = submit("train", str(config), *over, "--gpus-per-node", "0", "--tasks-per-node", "2", "--cpus-per-task", "1",
                 "--time", "10:00", "--run-dir", str(run))
    deadline = time.time() + 300
    while not (run / "checkpoints" / "latest").exists() and time.time() < deadline:
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    while job_state(job) != ("PENDING", 1) and time.time() < deadline:
        time.sleep(0.2)
    subprocess.run(["scontrol", "update", f"JobId={job}", "NumTasks=1", "NumCPUs=1"], check=True)
    assert wait_done(job) == "COMPLETED"
    log = (run / f"slurm-{job}.out").read_text()
    assert "starting 2 tasks" in log and "starting 1 tasks" in log and "restart 1" in log, log[-3000:]
    assert "layout changed" in log and "tp 1 x pp 1 x dp 2, ZeRO-1, this run is tp 1 x pp 1 x dp 1" in log
    a, b = read_metrics(ref), read_metrics(run)
    assert sorted(a) == sorted(b) == list(range(1, 25))
    assert all(b[s]["train/loss"] == pytest.approx(a[s]["train/loss"], rel=1e-5) for s in a)
    assert _flat(read_samples(run)) == _flat(read_samples(ref))


def test_injection_in_names_and_overrides_is_inert(data):
    root, config, _, _ = data
    marker = root / "PWNED"
    evil_name = f'x"; touch {marker}; echo "'
    run = root / "evil"
    # The job's working directory holds a slot name (the old renderer expanded it into the cd line) and shell code.
    workdir = root / "wd {{TRAIN_COMMAND}} $(touch PWNED4) 'q'"
    workdir.mkdir()
    job = submit("train", str(config), f"data.val_datasets=[$(touch {marker}2)]", f"train.init_from=`touch {marker}3`",
                 "--name", evil_name, "--gpus-per-node", "0", "--tasks-per-node", "1", "--cpus-per-task", "1",
                 "--time", "10:00", "--run-dir", str(run), cwd=workdir)
    wait_done(job)
    log = (run / f"slurm-{job}.out").read_text()
    # The trainer ran (the quoted cd worked) and saw the literal text, which it refused as a path.
    assert f"$(touch {marker}2)" in log or f"`touch {marker}3`" in log, log[-2000:]
    assert not any(Path(f"{marker}{s}").exists() for s in ("", "2", "3"))
    assert not list(root.rglob("PWNED*")) and not (ROOT / "PWNED4").exists()


def _cluster(cmd: str, state: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(CLUSTER_SH), cmd], capture_output=True, text=True,
                          env=dict(os.environ, GENLIP_SLURM_DIR=str(state), **env))


def test_stop_ends_only_processes_the_cluster_started(tmp_path):
    """Old cluster.sh stopped with `pkill -x slurmd/slurmctld`: every such process on the machine (a real
    node's daemons). Now only the pids in its own pid files, and only if they are its own processes."""
    state = tmp_path / "state"
    (state / "munge").mkdir(parents=True)
    procs = {}
    for name in ("slurmd", "slurmctld", "munged"):  # stand-ins named like the daemons: `sleep` under their names
        exe = tmp_path / name
        shutil.copy(shutil.which("sleep"), exe)
        procs[name] = subprocess.Popen([str(exe), "300"])
    try:
        # Stale pid files naming them (a reused pid): the names match, but they were not started from this dir.
        (state / "slurmd.pid").write_text(f"{procs['slurmd'].pid}\n")
        (state / "slurmctld.pid").write_text(f"{procs['slurmctld'].pid}\n")
        (state / "munge" / "munged.pid").write_text(f"{procs['munged'].pid}\n")
        proc = _cluster("stop", state)
        assert proc.returncode == 0, proc.stderr
        assert all(p.poll() is None for p in procs.values()), "cluster.sh stop ended a process it did not start"
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_start_refuses_ports_in_use(tmp_path):
    """A daemon this script did not start listens on its port: refuse, and leave nothing running (the old
    script reused any running slurmctld and used SLURM's default ports)."""
    if shutil.which("slurmctld") is None or os.geteuid() != 0:
        pytest.skip("needs slurm-wlm and root")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _cluster("start", tmp_path / "state", GENLIP_SLURM_PORT=str(port))
    assert proc.returncode != 0 and f"port {port} is in use" in proc.stderr, proc.stdout + proc.stderr
    assert not list((tmp_path / "state").rglob("*.pid")), "a refused start left a daemon behind"


def test_cluster_uses_only_its_own_munge_ports_and_files(cluster):
    conf = (SLURM_DIR / "slurm.conf").read_text()
    ports = dict(re.findall(r"^(Slurm(?:ctld|d)Port)=(\d+)$", conf, re.M))
    assert sorted(ports) == ["SlurmctldPort", "SlurmdPort"] and not {"6817", "6818"} & set(ports.values())
    assert f"AuthInfo=socket={SLURM_DIR}/munge/munge.socket," in conf
    for pid_file in (SLURM_DIR / "munge" / "munged.pid", SLURM_DIR / "slurmctld.pid", SLURM_DIR / "slurmd.pid"):
        cmdline = Path(f"/proc/{pid_file.read_text().strip()}/cmdline").read_bytes().decode()
        assert f"{SLURM_DIR}/" in cmdline, (pid_file, cmdline)
    assert f"--key-file={SLURM_DIR}/munge/munge.key" in Path(
        f"/proc/{(SLURM_DIR / 'munge' / 'munged.pid').read_text().strip()}/cmdline").read_bytes().decode().split("\0")
