"""genlip-submit / genlip-sweep against hostile input: rendered scripts run under a fake srun/scontrol (values
that hold slot names, shell code, quotes or newlines stay inert; a failing step stops the job; the requeue
path still works under `set -e`), and every bad option or sweep-file key is one line, exit 2, no file."""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from genlip.cluster.submit import main as submit_main
from genlip.cluster.sweep import main as sweep_main
from tests.helpers import ROOT

TINY = str(ROOT / "run_scripts" / "configs" / "tiny.yaml")
FAKE_SRUN = """#!/bin/bash
# Records its arguments (NUL-separated) and exits as told; creates RUN/REQUEUE when told to.
printf '%s\\0' "$@" > "$FAKE_DIR/srun.args"
if [ -n "${FAKE_MARKER:-}" ]; then touch "$FAKE_MARKER"; fi
exit "${FAKE_SRUN_RC:-0}"
"""
FAKE_SCONTROL = """#!/bin/bash
if [ "$1" = show ]; then echo node1; exit 0; fi
echo "$@" >> "$FAKE_DIR/scontrol.calls"
exit "${FAKE_SCONTROL_RC:-0}"
"""


@pytest.fixture(autouse=True)
def _no_real_sbatch(tmp_path_factory, monkeypatch):
    """A check that let a job through must not reach a real cluster (SLURM_CONF may point at one)."""
    bin_dir = tmp_path_factory.mktemp("nosbatch")
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'fake sbatch: a bad option got through' >&2\nexit 1\n")
    (bin_dir / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def fake_bin(tmp: Path) -> Path:
    bin_dir = tmp / "fakebin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run_script(script: str, tmp: Path, **env) -> subprocess.CompletedProcess:
    """Run a rendered job script as SLURM would (its environment), with srun/scontrol faked."""
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    fake = tmp / "fake"
    fake.mkdir(exist_ok=True)
    bin_dir = tmp / "fakebin" if (tmp / "fakebin").is_dir() else fake_bin(tmp)
    job_env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp), "FAKE_DIR": str(fake), "SLURM_JOB_ID": "123",
               "SLURM_JOB_NODELIST": "node1", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_CPUS_PER_NODE": "2",
               "SLURM_CPUS_PER_TASK": "1", "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "1",
               "SLURM_ARRAY_TASK_COUNT": "2", **env}
    return subprocess.run(["bash", "-c", script, "job"], env=job_env, cwd=tmp, capture_output=True, text=True)


def srun_args(tmp: Path) -> list[str] | None:
    f = tmp / "fake" / "srun.args"
    return f.read_text().split("\0")[:-1] if f.exists() else None


def render_train(capsys, *argv, overrides=()) -> str:
    assert submit_main(["train", TINY, *overrides, "--gpus-per-node", "0", "--tasks-per-node", "1",
                        "--cpus-per-task", "1", "--time", "10:00", *argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    return out[out.index("#!/bin/bash"):]


def test_render_fills_slots_in_one_pass(tmp_path):
    """Old render() ran one str.replace per slot, so A's value `{{B}}` became B's value."""
    from genlip.cluster.submit import render

    (tmp_path / "t").write_text("{{A}} {{B}}\n")
    assert render(tmp_path / "t", {"A": "{{B}}", "B": "$(x)"}) == "{{B}} $(x)\n"
    with pytest.raises(RuntimeError, match="no value for"):
        render(tmp_path / "t", {"A": "a"})


@pytest.mark.parametrize("text, seconds", [("10", 600), ("10:30", 630), ("1:00:00", 3600), ("2-0", 172800),
                                           ("1-2:3", 93780), ("1-00:00:01", 86401), ("0", 0), ("1:", None),
                                           ("-1", None), ("1-2:3:4:5", None), ("UNLIMITED", math.inf),
                                           ("infinite", math.inf), ("UNLIMITE", None)])
def test_time_limits(text, seconds):
    from genlip.cluster.submit import time_seconds

    assert time_seconds(text) == seconds


SHELL_CODE = "$(touch pwned_sub) `touch pwned_tick` 'sq' \"dq\" ;touch pwned_semi\nnl"


@pytest.mark.parametrize("slots_in", ["workdir", "everywhere"])
def test_values_holding_slots_shell_code_quotes_and_newlines_stay_literal(capsys, tmp_path, monkeypatch, slots_in):
    """Old render() replaced slot after slot: a `{{TRAIN_COMMAND}}` in the working directory was expanded by
    the later slot, the command's own quotes ended the cd line's quoting and `$(touch ...)` ran ("workdir");
    a slot name in a value rendered last (run dir, override) was refused as a missing value ("everywhere")."""
    slot = "{{TRAIN_COMMAND}}"
    workdir = tmp_path / f"work {slot} {SHELL_CODE}"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    every = slot if slots_in == "everywhere" else ""
    run_dir = tmp_path / f"run{every}$(touch${{IFS}}pwned_run)`id`"
    overrides = [f"train.init_from={every} {SHELL_CODE}", "data.val_datasets=[$(touch pwned_list)]"]
    script = render_train(capsys, "--run-dir", str(run_dir), "--name", f"{every} {SHELL_CODE}", overrides=overrides)
    # literal, never expanded: cd (workdir); #SBATCH --output and RUN= (run dir), srun (override, output_dir)
    assert script.count(slot) == (1 if slots_in == "workdir" else 5)
    proc = run_script(script, tmp_path)
    assert proc.returncode == 0, proc.stderr
    pwned = [p for p in tmp_path.rglob("pwned*")]  # what any of the touch commands would have created
    assert not pwned, pwned
    args = srun_args(tmp_path)
    assert args is not None, proc.stderr  # the job went past cd: the quoted working directory exists
    assert args[-4:] == [TINY, *overrides, f"train.output_dir={run_dir}"]  # each value one literal argument
    assert not run_dir.exists()  # nothing written by a dry run


def test_a_failing_cd_stops_the_job(capsys, tmp_path, monkeypatch):
    """Without `set -e` the old script went on after a failed cd and started the training anyway."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    script = render_train(capsys, "--run-dir", str(tmp_path / "r"))
    monkeypatch.chdir(tmp_path)
    gone.rmdir()
    proc = run_script(script, tmp_path)
    assert proc.returncode != 0 and "gone" in proc.stderr
    assert srun_args(tmp_path) is None


@pytest.mark.parametrize("srun_rc, marker, scontrol_rc, want_rc, requeued", [
    (0, False, 0, 0, False),     # done
    (1, False, 0, 1, False),     # a crash fails the job with its code
    (75, False, 0, 0, True),     # checkpointed before the time limit: requeue
    (143, True, 0, 0, True),     # srun reported 143 after --kill-on-bad-exit, the marker says requeue
    (75, False, 1, 75, True),    # requeue refused: the job fails visibly (the old script exited 0: run lost)
])
def test_requeue_path_under_set_e(capsys, tmp_path, monkeypatch, srun_rc, marker, scontrol_rc, want_rc, requeued):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "r"
    run.mkdir()
    script = render_train(capsys, "--run-dir", str(run))
    proc = run_script(script, tmp_path, FAKE_SRUN_RC=str(srun_rc), FAKE_SCONTROL_RC=str(scontrol_rc),
                      FAKE_MARKER=str(run / "REQUEUE") if marker else "")
    assert proc.returncode == want_rc, proc.stdout + proc.stderr
    calls = tmp_path / "fake" / "scontrol.calls"
    assert (calls.read_text().split() == ["requeue", "123"]) if requeued else not calls.exists()
    assert not (run / "REQUEUE").exists()


def write_sweep(tmp: Path, body: str) -> Path:
    path = tmp / "s.yaml"
    path.write_text(textwrap.dedent(body).format(config=TINY, out=tmp / "out"))
    return path


def test_sweep_script_requeues_its_task_and_refuses_unknown_tasks(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = write_sweep(tmp_path, """
        name: s
        config: {config}
        overrides: ["train.init_from={{{{TRAIN_COMMAND}}}}$(touch pwned)"]
        grid: {{model.preset: [tiny], train.seed: [1, 2]}}
        slurm: {{gpus_per_node: 0, tasks_per_node: 1, cpus_per_task: 1, time: "10:00"}}
        output_dir: {out}
        """)
    assert sweep_main(["submit", str(sweep), "--dry-run"]) == 0
    out = capsys.readouterr().out
    script = out[out.index("#!/bin/bash"):]
    proc = run_script(script, tmp_path, FAKE_SRUN_RC="75")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "fake" / "scontrol.calls").read_text().split() == ["requeue", "77_1"]
    assert srun_args(tmp_path)[-5:] == [TINY, "train.init_from={{TRAIN_COMMAND}}$(touch pwned)", "model.preset=tiny",
                                         "train.seed=2", f"train.output_dir={tmp_path / 'out' / 's' / 'point_001'}"]
    assert not list(tmp_path.rglob("pwned*"))
    (tmp_path / "fake" / "srun.args").unlink()
    proc = run_script(script, tmp_path, SLURM_ARRAY_TASK_ID="5")
    assert proc.returncode == 2 and "not a point of this sweep" in proc.stderr and srun_args(tmp_path) is None


# ---- one validation pass: every bad option is one line naming it, exit 2, nothing written ----

SUBMIT_BAD = [
    (["--nodes", "0"], "--nodes 0 is out of range"),
    (["--nodes", "-2"], "--nodes '-2'"),
    (["--nodes", "4-2"], "need 1 <= MIN <= MAX"),
    (["--nodes", "two"], "--nodes 'two'"),
    (["--gpus-per-node", "-1"], "--gpus-per-node -1 is out of range"),
    (["--gpus-per-node", "x"], "argument --gpus-per-node: invalid int value"),
    (["--tasks-per-node", "-1"], "--tasks-per-node -1"),
    (["--cpus-per-task", "0"], "--cpus-per-task 0"),
    (["--time", "0"], "--time '0' is not a SLURM time limit"),
    (["--time", "1:00; rm -rf /"], "not a SLURM time limit"),
    (["--time", "10:00", "--signal-seconds", "600"], "--signal-seconds 600 must be below the time limit"),
    (["--signal-seconds", "0"], "--signal-seconds 0"),
    (["--gpu-memory-gib", "0"], "--gpu-memory-gib must be a number above 0"),
    (["--sbatch-arg", "exclusive"], "--sbatch-arg 'exclusive'"),
    (["--sbatch-arg", "--comment=a\n#SBATCH --uid=0"], "--sbatch-arg"),
    (["--partition", "gpu; rm"], "--partition 'gpu; rm'"),
    (["--python", ""], "--python"),
    (["--run-dir", "RUN/a b"], "--run-dir"),
    (["--run-dir", "RUN/100%"], "--run-dir"),
]


def assert_one_line_error(capsys, rc: int, prog: str, needle: str) -> None:
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 2, captured.out + err
    assert err.count("\n") == 1 and err.startswith(f"{prog}: error: ") and "Traceback" not in err, err
    assert needle in err, err


@pytest.mark.parametrize("argv, needle", SUBMIT_BAD, ids=[" ".join(a) for a, _ in SUBMIT_BAD])
def test_bad_train_options_are_one_line_and_write_nothing(capsys, tmp_path, monkeypatch, argv, needle):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("RUN", str(tmp_path / "r")) for a in argv]
    rc = submit_main(["train", TINY, "--run-dir", str(tmp_path / "r"), *argv])  # not a dry run: nothing may be written
    assert_one_line_error(capsys, rc, "genlip-submit", needle)
    assert list(tmp_path.iterdir()) == []


DATA_BAD = [
    (["--array-size", "0"], "--array-size 0 is out of range"),
    (["--array-size", "-3"], "--array-size -3"),
    (["--cpus-per-task", "0"], "--cpus-per-task 0"),
    (["--time", "1-"], "--time '1-'"),
    (["--sbatch-arg=-x"], "--sbatch-arg '-x'"),
    (["--tokenizer", "TMP/missing.model"], "--tokenizer"),
    (["--log-dir", "TMP/l o g"], "--log-dir"),
]


@pytest.mark.parametrize("argv, needle", DATA_BAD, ids=[" ".join(a) for a, _ in DATA_BAD])
def test_bad_data_options_are_one_line_and_write_nothing(capsys, tmp_path, monkeypatch, argv, needle):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.tar").write_bytes(b"")
    (src / "tok.model").write_bytes(b"")
    monkeypatch.chdir(src)
    argv = [a.replace("TMP", str(tmp_path)) for a in argv]
    rc = submit_main(["data", str(src / "a.tar"), "--out", str(tmp_path / "ds"), "--tokenizer", str(src / "tok.model"),
                      *argv])
    assert_one_line_error(capsys, rc, "genlip-submit", needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    assert submit_main(["data", str(tmp_path / "nope.tar"), "--out", str(tmp_path / "ds"), "--tokenizer",
                        str(src / "tok.model")]) == 2
    assert "input" in capsys.readouterr().err


GOOD_SLURM = '{gpus_per_node: 0, tasks_per_node: 1, cpus_per_task: 1, time: "10:00"}'
SWEEP_BAD = [  # (sweep file, what the message names)
    ('slurm: {nodes: "2", time: "10:00"}', "slurm.nodes must be an integer, not '2'"),
    ('slurm: {nodes: 0, time: "10:00"}', "slurm.nodes 0 is out of range"),
    ('slurm: {nodes: -2, time: "10:00"}', "slurm.nodes -2 is out of range"),
    ('slurm: {nodes: true, time: "10:00"}', "slurm.nodes must be an integer"),
    ('slurm: {gpus_per_node: 1.5, time: "10:00"}', "slurm.gpus_per_node must be an integer"),
    ('slurm: {time: 10:00}', "slurm.time must be a quoted string"),  # YAML: 600
    ('slurm: {time: "1:00:00", signal_seconds: 3600}', "slurm.signal_seconds 3600 must be below"),
    ('slurm: {sbatch_args: "--exclusive"}', "slurm.sbatch_args must be a list"),
    ('slurm: {sbatch_args: [exclusive]}', "slurm.sbatch_args 'exclusive'"),
    ('slurm: {sbatch_args: [3]}', "slurm.sbatch_args 3"),
    ('slurm: {gpu_memory_gib: "80"}', "slurm.gpu_memory_gib must be a number"),
    ('slurm: {partition: [a, b]}', "slurm.partition must be a non-empty string"),
    ('slurm: {gpus: 8}', "unknown slurm keys ['gpus']"),
    ("slurm: [nodes]", "slurm must be a mapping"),
    ("grid: {model.preset: []}", "grid.model.preset must be a non-empty list"),
    ("grid: {model.preset: tiny}", "grid.model.preset must be a non-empty list"),
    ("grid: {}", "grid must map config keys"),
    ("grid: {model.preset: [tiny, tiny]}", "grid.model.preset lists a value twice"),
    ("grid: {model.preset: [tiny], model.preset: [small]}", "key 'model.preset' appears twice"),
    ("grid: {train.output_dir: [a, b]}", "train.output_dir is set by the sweep"),
    ("overrides: train.seed=1", "overrides must be a list"),
    ("overrides: [train.seed]", "overrides 'train.seed'"),
    ("overrides: [model.preset=tiny]", "model.preset is both in overrides and in grid"),
    ("name: ../up", "name '../up' must be a directory name"),
    ("name: 5", "name 5 must be a directory name"),
    ("config: /nonexistent/run.yaml", "config /nonexistent/run.yaml does not exist"),
    ("output_dir: [a]", "output_dir must be a path"),
    ("output_dir: 'has space'", "output_dir/name"),
    ("colour: blue", "unknown keys ['colour']"),
    ("grid: {model.preset: [tiny}", "not valid YAML"),
]


@pytest.mark.parametrize("line, needle", SWEEP_BAD, ids=[line for line, _ in SWEEP_BAD])
def test_bad_sweep_files_are_one_line_and_write_nothing(capsys, tmp_path, monkeypatch, line, needle):
    monkeypatch.chdir(tmp_path)
    keys = {"name": "name: s", "config": f"config: {TINY}", "grid": "grid: {model.preset: [tiny]}",
            "slurm": f"slurm: {GOOD_SLURM}", "output_dir": f"output_dir: {tmp_path / 'out'}"}
    key = line.split(":")[0]
    body = "\n".join([v for k, v in keys.items() if k != key] + [line]) + "\n"
    (tmp_path / "s.yaml").write_text(body)
    rc = sweep_main(["submit", str(tmp_path / "s.yaml")])  # not a dry run: nothing may be written
    assert_one_line_error(capsys, rc, "genlip-sweep", needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_sweep_top_level_must_be_a_mapping(capsys, tmp_path):
    (tmp_path / "s.yaml").write_text("- name\n- config\n")
    assert_one_line_error(capsys, sweep_main(["submit", str(tmp_path / "s.yaml")]), "genlip-sweep", "must be a mapping")


def test_bad_options_fail_before_anything_heavy_loads(tmp_path):
    """The checks run before the config, torch or deepspeed load: the cluster modules import none of them."""
    (tmp_path / "s.yaml").write_text(f"name: s\nconfig: {TINY}\ngrid: {{a.b: [1]}}\nslurm: {{nodes: '2'}}\n")
    code = textwrap.dedent(f"""
        import sys
        import genlip.cluster.plan, genlip.cluster.submit, genlip.cluster.sweep
        rcs = [genlip.cluster.submit.main(["train", {TINY!r}, "--nodes", "0"]),
               genlip.cluster.submit.main(["data", "x", "--out", "y", "--tokenizer", "z", "--array-size", "0"]),
               genlip.cluster.sweep.main(["submit", {str(tmp_path / 's.yaml')!r}])]
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "deepspeed", "megatron", "matplotlib"}})
        print(rcs, heavy)
        """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.stdout.strip() == "[2, 2, 2] []", proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 3 and all(": error: " in line for line in lines) and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]
