"""genlip-sweep report's scaling fit and budget answer, and genlip-sweep plan's isoFLOP sweeps, on sweep
directories written the way the trainer and gather() leave them, with losses from a known law."""

import json
import math
import shlex
import subprocess
import sys

import numpy as np
import pytest

from genlip.cluster import sweep as sweep_mod
from genlip.cluster.scaling import law
from genlip.cluster.submit import main as submit_main
from genlip.cluster.sweep import load_sweep, points
from genlip.cluster.sweep import main as sweep_main
from genlip.info import count_params, train_flops_per_sample
from genlip.model.config import get_preset
from tests.helpers import ROOT

TINY = str(ROOT / "run_scripts" / "configs" / "tiny.yaml")
TRUE = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 200.0, "beta": 0.28}
PRESETS = ("tiny", "small", "b16", "l16")
SHAPE = {"patches": (224 // 16) ** 2, "prompt_tokens": 6, "caption_tokens": 68}  # genlip-info's defaults


def fps(preset: str) -> float:
    """Training FLOPs per sample straight from genlip/info.py (the preset's own vocabulary)."""
    return train_flops_per_sample(get_preset(preset), **SHAPE)


def trunk(preset: str) -> int:
    return count_params(get_preset(preset)).trunk


def write_sweep(sweep_dir, runs, *, slurm=None, monkeypatch=None, running=()):
    """A sweep directory as `submit` and the trainer leave it: sweep.json, point_NNN/result.json for each run
    (a dict, or None for a point that left no result.json), a job id and the array tasks still queued."""
    sweep_dir.mkdir(parents=True)
    pts = []
    for i, run in enumerate(runs):
        pts.append([f"model.preset={run['preset']}", f"train.total_samples={run['samples']:.0f}"] if run else ["x=1"])
        if run is not None and i not in running:
            (sweep_dir / f"point_{i:03d}").mkdir()
            (sweep_dir / f"point_{i:03d}" / "result.json").write_text(json.dumps(run))
    slurm = {"nodes": 1, "gpus_per_node": 8, "tasks_per_node": 0, "cpus_per_task": 8, "time": "1-00:00:00",
             "partition": "gpu", "account": None, "qos": None, "signal_seconds": 300, "gpu_memory_gib": 141.0,
             "sbatch_args": [], **(slurm or {})}
    sweep = {"name": sweep_dir.name, "config": TINY, "overrides": ["train.total_samples=2000"], "grid": {},
             "points": [], "slurm": slurm, "output_dir": str(sweep_dir.parent)}
    (sweep_dir / "sweep.json").write_text(json.dumps({"sweep": sweep, "points": pts, "config_path": TINY}))
    (sweep_dir / "job_id").write_text("77\n")
    monkeypatch.setattr(sweep_mod, "_queued_tasks", lambda job: set(running) if job == "77" else set())


def result(preset, samples, *, noise=0.0, status="done"):
    N = trunk(preset)
    loss = float(law(TRUE, N, samples)) * math.exp(noise)
    return {"status": status, "preset": preset, "params_trunk": N, "params_total": N + 10**8, "samples": samples,
            "train_flops": fps(preset) * samples, "final_loss": loss + 0.02, "val_loss": loss}


def report(capsys, sweep_dir, *extra):
    code = sweep_main(["report", str(sweep_dir), "--bootstrap", "60", *extra])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


@pytest.fixture()
def grid_sweep(tmp_path, monkeypatch):
    """4 presets x 3 sample budgets from TRUE with 1% noise; point 10 failed, point 11 still running."""
    rng = np.random.default_rng(0)
    runs = [result(p, d, noise=0.01 * rng.standard_normal()) for p in PRESETS for d in (1e6, 1e7, 1e8)]
    runs[10] = None
    write_sweep(tmp_path / "grid", runs, monkeypatch=monkeypatch, running=(11,))
    return tmp_path / "grid"


def test_report_recovers_the_law_and_lists_unfinished_points(capsys, grid_sweep):
    code, out, _ = report(capsys, grid_sweep)
    assert code == 0
    fit = json.loads((grid_sweep / "fit.json").read_text())
    assert fit["law"] == "L(N, D) = E + A / N^alpha + B / D^beta" and fit["n_points"] == 10
    assert fit["loss"] == "val_loss" and fit["N"].startswith("trunk parameters")
    for name in ("E", "alpha", "beta"):  # the truth inside each 95% bootstrap interval
        lo, hi = fit["intervals"][name]
        assert lo <= TRUE[name] <= hi, (name, lo, hi)
    assert abs(fit["params"]["alpha"] - TRUE["alpha"]) < 0.05 and abs(fit["params"]["beta"] - TRUE["beta"]) < 0.05
    # The failed and the running point are listed with their reason, not fitted.
    assert fit["points_fitted"] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert [s["point"] for s in fit["skipped"]] == [10, 11]
    assert "not fitted: point 10: status failed (no result.json" in out
    assert "not fitted: point 11: status running" in out
    assert "alpha  = " in out and "95% interval [" in out and "(10 points, loss = val_loss)" in out
    assert "WARNING: 2 of 12 points not fitted" in out
    png = (grid_sweep / "fit.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 10_000
    assert not (grid_sweep / "isoflop.png").exists()  # no budget holds 3 sizes at equal FLOPs


def test_target_flops_answer_and_its_submit_line(capsys, grid_sweep):
    C = 1e21
    code, out, _ = report(capsys, grid_sweep, "--target-flops", f"{C:g}")
    assert code == 0
    answer = json.loads((grid_sweep / "fit.json").read_text())["target"]
    assert answer["C"] == C
    lo, hi = answer["N_opt_interval"]
    assert lo <= answer["N_opt"] <= hi and answer["L_opt_interval"][0] <= answer["L_opt"] <= answer["L_opt_interval"][1]
    # The recommended preset is the one nearest N_opt in log trunk parameters, trained for C's worth of samples
    # at its FLOPs per sample as this sweep measured it.
    preset = answer["preset"]
    assert preset == answer["nearest_presets"][0]["preset"]
    assert abs(math.log(trunk(preset) / answer["N_opt"])) <= min(
        abs(math.log(p["params_trunk"] / answer["N_opt"])) for p in answer["nearest_presets"])
    fit = json.loads((grid_sweep / "fit.json").read_text())
    largest = trunk("b16") * 1e8  # the largest N D among the fitted points (l16 ran to 1e6 samples only)
    assert answer["extrapolation_compute"] == pytest.approx(C / (fit["k"] * largest))
    assert "WARNING: target compute is" in out and "x the largest measured point" in out
    line = next(x.strip() for x in out.splitlines() if x.strip().startswith("genlip-submit train "))
    argv = shlex.split(line)
    assert f"model.preset={preset}" in argv
    samples = int(next(a for a in argv if a.startswith("train.total_samples=")).split("=")[1])
    assert samples * fps(preset) == pytest.approx(C, rel=1e-6)
    assert submit_main([*argv[1:], "--dry-run"]) == 0  # genlip-submit accepts it: config, layout and memory
    assert "#SBATCH --nodes=1" in capsys.readouterr().out


def test_target_gpu_hours_converts_with_the_gpu_peak(capsys, grid_sweep):
    from genlip.info import PEAK_BF16_TFLOPS

    code, out, _ = report(capsys, grid_sweep, "--target-gpu-hours", "500", "--mfu", "0.4", "--gpu", "h200")
    assert code == 0
    answer = json.loads((grid_sweep / "fit.json").read_text())["target"]
    assert answer["C"] == pytest.approx(500 * 3600 * PEAK_BF16_TFLOPS["H200"] * 1e12 * 0.4)
    assert answer["gpu_hours"] == pytest.approx(500)
    assert "500 GPU-hours x 989 TFLOP/s" in out
    # the whole budget answer runs on a login node without the training stack
    code = ("import sys, genlip.cluster.sweep as s\n"
            "s._queued_tasks = lambda job: {11}\n"
            f"code = s.main(['report', {str(grid_sweep)!r}, '--bootstrap', '10', '--target-gpu-hours', '500', "
            "'--mfu', '0.4', '--gpu', 'h200'])\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'deepspeed', 'megatron'}), code)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip().splitlines()[-1] == "[] 0", run.stdout[-2000:] + run.stderr[-2000:]


def test_isoflop_sweep_gets_parabolas_and_a_plot(capsys, tmp_path, monkeypatch):
    """Three budgets, each spent by four presets: the report fits a parabola per budget and draws them."""
    runs = [result(p, C / fps(p)) for C in (1e17, 1e18, 1e19) for p in PRESETS]
    write_sweep(tmp_path / "iso", runs, monkeypatch=monkeypatch)
    code, out, _ = report(capsys, tmp_path / "iso")
    assert code == 0
    iso = json.loads((tmp_path / "iso" / "fit.json").read_text())["isoflop"]
    assert [len(g["N"]) for g in iso["groups"]] == [4, 4, 4]
    assert [g["C"] for g in iso["groups"]] == pytest.approx([1e17, 1e18, 1e19])
    assert "isoFLOP groups" in out
    assert (tmp_path / "iso" / "isoflop.png").read_bytes()[:4] == b"\x89PNG"


def test_width_sweep_on_one_preset_measures_flops_per_sample_of_that_model_only(tmp_path):
    """A sweep over model.width on the tiny preset: every point's result.json says preset tiny, but only the
    points that trained the preset's own width may lend the submit line their measured FLOPs per sample
    (the median over all widths gave the wrong sample count for the budget)."""
    from genlip.cluster.sweep_fit import _submit_line

    def width_run(width, samples):
        model = get_preset("tiny", width=width, heads=width // 16, ffn=2 * width)
        f = train_flops_per_sample(model, **SHAPE)
        return {"status": "done", "preset": "tiny", "params_trunk": count_params(model).trunk, "samples": samples,
                "train_flops": f * samples, "val_loss": 2.0}

    slurm = {"nodes": 1, "gpus_per_node": 8, "tasks_per_node": 0, "gpu_memory_gib": 141.0, "time": "1:00:00"}
    meta = {"sweep": {"name": "widths", "config": TINY, "overrides": [], "slurm": slurm,
                      "output_dir": str(tmp_path)}, "config_path": TINY}
    C = 1e15
    others = [width_run(w, d) for w in (32, 128, 192) for d in (1e4, 3e4)]
    _, how, f = _submit_line("tiny", others, meta=meta, flops=C, nodes=None)
    assert f == pytest.approx(fps("tiny")) and how.startswith("genlip-info")  # no point trained tiny's width
    own = width_run(64, 2e4) | {"train_flops": fps("tiny") * 2e4 * 1.01}  # measured: 1% more than counted
    line, how, f = _submit_line("tiny", [*others, own], meta=meta, flops=C, nodes=None)
    assert how == "measured in this sweep" and f == pytest.approx(fps("tiny") * 1.01)
    assert f"train.total_samples={round(C / f)}" in shlex.split(line)


def test_too_few_points_says_so(capsys, tmp_path, monkeypatch):
    runs = [result("b16", 1e7), None, result("small", 1e7, status="stopped_bad_steps")]
    write_sweep(tmp_path / "few", runs, monkeypatch=monkeypatch, running=(1,))
    code, out, _ = report(capsys, tmp_path / "few")
    assert code == 0  # the table and plot are still written; the fit says why it is missing
    assert "cannot fit a law: all 1 finished points have one size" in out
    assert "not fitted: point 1: status running" in out and "not fitted: point 2: status stopped_bad_steps" in out
    assert "law" not in json.loads((tmp_path / "few" / "fit.json").read_text())
    code, out, _ = report(capsys, tmp_path / "few", "--target-flops", "1e20")
    assert code == 1 and "cannot answer the budget: no law could be fitted" in out
    assert (tmp_path / "few" / "report.md").is_file()


def test_plan_flops_writes_equal_flops_per_curve(capsys, tmp_path):
    out = tmp_path / "iso.yaml"
    budgets = (1e15, 1e16, 1e17)
    assert sweep_main(["plan", "--flops", ",".join(map(str, budgets)), "--presets", "tiny,small,b16",
                       "--config", TINY, "--name", "iso", "--output-dir", str(tmp_path), "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    sweep, _ = load_sweep(out)
    assert len(sweep["points"]) == 9
    for C in budgets:  # each budget's points spend C, by genlip/info.py computed here
        spent = [p["train.total_samples"] * fps(p["model.preset"]) for p in sweep["points"]
                 if abs(math.log(p["train.total_samples"] * fps(p["model.preset"]) / C)) < 0.1]
        assert len(spent) == 3 and spent == pytest.approx([C] * 3, rel=1e-3)


def test_plan_keeps_the_base_sweeps_seeds_and_slurm(capsys, tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(f"""
name: sizes
config: {TINY}
overrides: [train.total_samples=100, optim.lr=3e-4]
grid: {{model.preset: [tiny, small], train.seed: [1, 2]}}
slurm: {{gpus_per_node: 0, tasks_per_node: 2, time: "10:00"}}
output_dir: {tmp_path}
""")
    out = tmp_path / "iso.yaml"
    assert sweep_main(["plan", "--flops", "1e15,1e16", "--presets", "tiny,small", "--base", str(base),
                       "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "dropped the base's overrides train.total_samples=100" in text and "grid.model.preset" in text
    sweep, opts = load_sweep(out)
    assert sweep["name"] == "sizes-isoflop" and sweep["overrides"] == ["optim.lr=3e-4"]
    assert sweep["grid"] == {"train.seed": [1, 2]} and opts.tasks_per_node == 2 and opts.gpus_per_node == 0
    pts = points(sweep)
    assert len(pts) == 8 and pts[0][:2] == ["optim.lr=3e-4", "model.preset=tiny"] and pts[1][-1] == "train.seed=2"
    assert sweep_main(["submit", str(out), "--dry-run"]) == 0  # and it is submittable
    assert "#SBATCH --array=0-7" in capsys.readouterr().out


@pytest.mark.parametrize("body, message", [
    ("points: {a: 1}", "points must be a non-empty list"),
    ("points: [a=1]", "points[0] must be a non-empty mapping"),
    ("points: [{model.preset: tiny}, {train.seed: 1}]", "every point must set the same keys"),
    ("points: [{model.preset: tiny}, {model.preset: tiny}]", "points[1] repeats points[0]"),
    ("points: [{model.preset: tiny}]\ngrid: {model.preset: [small]}", "model.preset is both in points and in grid"),
    ("points: [{train.output_dir: x}]", "train.output_dir is set by the sweep"),
    ("points: []", "points must be a non-empty list"),
    ("overrides: []", "missing 'grid' (or 'points')"),
])
def test_sweep_file_points_are_checked(capsys, tmp_path, body, message):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nconfig: {TINY}\n{body}\n")
    assert sweep_main(["submit", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("argv, message", [
    (["plan", "--flops=1e19,-1e18", "--presets", "tiny"], "--flops '-1e18' must be a positive, finite number"),
    (["plan", "--flops", "1e18,abc", "--presets", "tiny"], "--flops 'abc' is not a number"),
    (["plan", "--flops", "nan", "--presets", "tiny"], "positive, finite"),
    (["plan", "--flops", "1e18", "--presets", "tiny,x99"], "--presets: unknown ['x99']"),
    (["plan", "--flops", "1e18", "--presets", "tiny"], "give --base SWEEP.yaml"),
    (["report", "SWEEP", "--target-flops", "-5"], "--target-flops '-5' must be a positive"),
    (["report", "SWEEP", "--target-gpu-hours", "10", "--mfu", "0", "--gpu", "h200"], "--mfu '0' must be a positive"),
    (["report", "SWEEP", "--target-gpu-hours", "10", "--mfu", "1.5", "--gpu", "h200"], "--mfu 1.5 must be in (0, 1]"),
    (["report", "SWEEP", "--target-gpu-hours", "10", "--mfu", "0.4"], "needs --mfu and --gpu as well"),
    (["report", "SWEEP", "--target-flops", "1e20", "--mfu", "0.4"], "not both"),
    (["report", "SWEEP", "--target-gpu-hours", "10", "--mfu", "0.4", "--gpu", "tpu9"], "--gpu 'tpu9': unknown"),
])
def test_bad_inputs_are_one_line_errors(capsys, tmp_path, monkeypatch, argv, message):
    write_sweep(tmp_path / "SWEEP", [result("tiny", 1e6)], monkeypatch=monkeypatch)
    argv = [str(tmp_path / "SWEEP") if a == "SWEEP" else a for a in argv]
    if argv[0] == "plan":
        argv += ["--out", str(tmp_path / "out.yaml")]
    assert sweep_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("genlip-sweep: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out.yaml").exists() and not (tmp_path / "SWEEP" / "fit.json").exists()


def test_plan_varies_a_model_key_within_a_preset(capsys, tmp_path):
    """--vary model.width=32,64 with one preset: a width sweep whose every (width, budget) point spends the
    budget by its own FLOPs per sample (genlip-info on the preset with that width, computed here)."""
    out = tmp_path / "widths.yaml"
    budgets = (1e11, 1e12)
    assert sweep_main(["plan", "--flops", "1e11,1e12", "--presets", "tiny", "--vary", "model.width=32,64",
                       "--config", TINY, "--name", "w", "--output-dir", str(tmp_path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tiny model.width=32" in text and "(1 presets x 2 --vary values x 2 budgets)" in text
    sweep, _ = load_sweep(out)
    shape = {"patches": (224 // 16) ** 2, "prompt_tokens": 6, "caption_tokens": 68}
    samples = {}
    for p, C in zip(sweep["points"], budgets * 2):
        assert set(p) == {"model.preset", "model.width", "train.total_samples"}
        fps_w = train_flops_per_sample(get_preset("tiny", width=p["model.width"]), **shape)
        assert abs(p["train.total_samples"] * fps_w - C) <= fps_w / 2  # C, to the nearest whole sample
        samples.setdefault(p["model.width"], []).append(p["train.total_samples"])
    assert sorted(samples) == [32, 64]
    assert all(a > 1.5 * b for a, b in zip(samples[32], samples[64]))  # the narrower model sees more samples
    # keys in step (one --vary) and crossed (two): 2 tied (width, heads) pairs x 2 ffn values
    assert sweep_main(["plan", "--flops", "1e12", "--presets", "tiny", "--vary", "model.width:model.heads=32:2,64:4",
                       "--vary", "model.ffn=64,128", "--config", TINY, "--name", "w", "--out", str(out)]) == 0
    pts = load_sweep(out)[0]["points"]
    assert [(p["model.width"], p["model.heads"], p["model.ffn"]) for p in pts] == [
        (32, 2, 64), (32, 2, 128), (64, 4, 64), (64, 4, 128)]
    for p in pts:
        fps_p = train_flops_per_sample(get_preset("tiny", width=p["model.width"], heads=p["model.heads"],
                                                  ffn=p["model.ffn"]), **shape)
        assert abs(p["train.total_samples"] * fps_p - 1e12) <= fps_p / 2


@pytest.mark.parametrize("vary, message", [
    ("model.preset=tiny,small", "give model keys other than model.preset"),
    ("optim.lr=1e-3,2e-3", "give model keys other than model.preset"),
    ("model.width", "give model keys other than model.preset"),
    ("model.width=32,32", "lists a value twice"),
    ("model.width=32,32.0", "lists '32.0' twice"),
    ("model.width:model.heads=32:2,64", "'64' has 1 values for 2 keys"),
    ("model.width:model.width=32:32", "a key is given twice"),
    ("model.width=32,wide", "model.width"),
])
def test_plan_refuses_bad_vary(capsys, tmp_path, vary, message):
    assert sweep_main(["plan", "--flops", "1e12", "--presets", "tiny", "--vary", vary, "--config", TINY,
                       "--name", "w", "--out", str(tmp_path / "w.yaml")]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "w.yaml").exists()


def test_point_labels_name_what_tells_points_apart():
    from genlip.cluster.sweep import point_labels

    width = [{"point": i, "preset": "tiny", "overrides": f"train.seed=1 model.width={w} train.total_samples={n}"}
             for i, (w, n) in enumerate([(32, 100), (64, 50), (32, 400)])]
    assert point_labels(width) == ["width=32", "width=64", "width=32"]
    presets = [{"point": i, "preset": p, "overrides": f"model.preset={p} train.total_samples=9"}
               for i, p in enumerate(["b16", "l16"])]
    assert point_labels(presets) == ["b16", "l16"]
    lrs = [{"point": i, "preset": "tiny", "overrides": f"optim.lr={lr}"} for i, lr in enumerate(["1.0e-3", "2.5e-3"])]
    assert point_labels(lrs) == ["lr=1.0e-3", "lr=2.5e-3"]  # a value's own dots kept
    same = [{"point": i, "preset": "tiny", "overrides": f"train.total_samples={n}"} for i, n in enumerate([1, 2])]
    assert point_labels(same) == ["#0", "#1"]
