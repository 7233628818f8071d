"""What `genlip-sweep report` says about scaling, and `genlip-sweep plan`'s isoFLOP sweeps.

    report_scaling(rows, ...)   the fit printed, fit.json, fit.png (curves over points, extrapolation
                                dashed) and isoflop.png; with a target budget, the recommended preset,
                                samples, predicted loss and the genlip-submit line (layout from plan.py)
    write_isoflop_plan(...)     a sweep file whose points spend the same training FLOPs per budget

N is trunk parameters and D samples seen (genlip.cluster.scaling says why). FLOPs per sample of a preset
are genlip-info's count (genlip/info.py) for the sweep config's model (the tokenizer's vocabulary when the
dataset manifests are readable) at one sample's shape: the datasets' average patches, prompt and caption
tokens per sample when readable, else genlip-info's defaults. NOTE: attention is quadratic in the sample
length, so FLOPs at the average shape differ a little from the trainer's per-sample sum; the report uses
the trainer's measured FLOPs per sample for presets the sweep trained.

Everything heavy (numpy, scipy, matplotlib, the config) is imported inside the functions: genlip-sweep
answers --help and bad options before any of it loads.
"""

from __future__ import annotations

import itertools
import json
import math
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from genlip.errors import UserError

N_MEANS = "trunk parameters (params_trunk: patch embedding, blocks, final LayerNorm; the text side is dropped " \
          "after pre-training and barely changes between presets)"
D_MEANS = "samples seen (image-caption pairs; tokens per sample are fixed by the data)"


# ---------------------------------------------------------------------------------- FLOPs per sample
@dataclass
class SampleShape:
    """One training sample as genlip-info counts it."""

    patches: int | None
    """patches per sample (None: (image_size // patch_size)^2 of the model)"""
    image_size: int
    prompt_tokens: int
    caption_tokens: int
    """caption + end tokens"""
    vocab_size: int | None
    """the tokenizer's, padded as the trainer pads it (None: the preset's)"""
    source: str


def sample_shape(cfg, *, image_size: int | None = None, prompt_tokens: int | None = None,
                 caption_tokens: int | None = None) -> SampleShape:
    """The run's sample shape: options first, then the dataset manifests (when readable), then genlip-info."""
    from genlip.config import padded_vocab
    from genlip.data.shards import load_manifest
    from genlip.info import build_parser

    info = build_parser()
    try:
        manifests = [load_manifest(d) for d in cfg.data.datasets]
    except (UserError, OSError):
        manifests = []
    patches, vocab = None, None
    prompt, caption = info.get_default("prompt_tokens"), info.get_default("caption_tokens")
    source = "genlip-info defaults (datasets not readable here)"
    if manifests:
        samples = max(sum(m["totals"]["samples"] for m in manifests), 1)
        patches = round(sum(m["totals"]["patches"] for m in manifests) / samples)
        caption = round(sum(m["totals"]["text_tokens"] for m in manifests) / samples)
        prompt = len(manifests[0]["prompt"]["ids"])
        vocab = padded_vocab(manifests[0]["tokenizer"]["vocab_size"], cfg.data.pad_vocab_to)
        source = "dataset manifests (average sample)"
    if image_size is not None:
        patches = None
    return SampleShape(patches=patches, image_size=image_size or info.get_default("image_size"),
                       prompt_tokens=prompt if prompt_tokens is None else prompt_tokens,
                       caption_tokens=caption if caption_tokens is None else caption_tokens,
                       vocab_size=vocab, source=source)


def preset_config(config: str | Path, overrides: list[str], preset: str):
    """The run config with model.preset=preset (any model.preset in overrides replaced)."""
    from genlip.config import load_config
    from genlip.model.config import PRESETS

    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    keep = [o for o in overrides if o.split("=", 1)[0].strip() != "model.preset"]
    return load_config(config, [*keep, f"model.preset={preset}"])


def flops_per_sample(cfg, shape: SampleShape) -> tuple[float, int]:
    """(training FLOPs of one sample, trunk parameters) of cfg's model at `shape` (genlip/info.py)."""
    from genlip.info import count_params, train_flops_per_sample

    model = cfg.model.build(shape.vocab_size)
    patches = shape.patches if shape.patches is not None else (shape.image_size // model.patch_size) ** 2
    flops = train_flops_per_sample(model, patches=patches, prompt_tokens=shape.prompt_tokens,
                                   caption_tokens=shape.caption_tokens)
    return flops, count_params(model).trunk


# -------------------------------------------------------------------------------------- isoFLOP plan
def parse_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise UserError(f"{what} {text!r}: give a comma-separated list")
    if len(set(items)) != len(items):
        raise UserError(f"{what} {text!r} lists a value twice")
    return items


def positive(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise UserError(f"{what} {text!r} is not a number") from None
    if not (math.isfinite(v) and v > 0):
        raise UserError(f"{what} {text!r} must be a positive, finite number")
    return v


def parse_vary(items: list[str]) -> list[dict]:
    """--vary values -> every combination as {KEY: value} (values read as YAML scalars); [{}] for none.
    One --vary is a key and its values (model.width=256,384) or keys tied together, values in step
    (model.width:model.heads=256:4,384:6); separate --vary options are crossed."""
    axes, seen = [], set()
    for item in items:
        keys, sep, values = item.partition("=")
        keys = [k.strip() for k in keys.split(":")]
        bad = [k for k in keys if not k.startswith("model.") or k == "model.preset"]
        if not sep or bad:
            raise UserError(f"--vary {item!r}: give model keys other than model.preset and their values, e.g. "
                            "--vary model.width=256,384,512 or --vary model.width:model.heads=256:4,384:6")
        if seen & set(keys) or len(set(keys)) != len(keys):
            raise UserError(f"--vary {item!r}: a key is given twice")
        seen.update(keys)
        combos = []
        for value in parse_list(values, f"--vary {':'.join(keys)}"):
            parts = value.split(":")
            if len(parts) != len(keys):
                raise UserError(f"--vary {item!r}: {value!r} has {len(parts)} values for {len(keys)} keys")
            combo = {k: yaml.safe_load(v) for k, v in zip(keys, parts)}
            if combo in combos:  # as read: 32 and 32.0 are one model
                raise UserError(f"--vary {item!r} lists {value!r} twice")
            combos.append(combo)
        axes.append(combos)
    return [{k: v for part in combo for k, v in part.items()} for combo in itertools.product(*axes)]


def isoflop_points(config, overrides: list[str], presets: list[str], budgets: list[float],
                   shape: SampleShape, variants: list[dict] = ({},)) -> tuple[list[dict], list[str]]:
    """The points (preset, any --vary values, samples) that spend each budget, and a table for the console."""
    points, notes, lines = [], [], [f"FLOPs per sample from genlip-info at {_shape_text(shape)}: {shape.source}",
                         f"{'model':<24} {'trunk':>10} {'FLOPs/sample':>13}  " +
                         "  ".join(f"{'C=' + format(c, '.3g'):>12}" for c in budgets)]
    for preset in presets:
        for variant in variants:
            extra = [f"{k}={v}" for k, v in variant.items()]
            name = " ".join([preset, *extra])
            fps, trunk = flops_per_sample(preset_config(config, [*overrides, *extra], preset), shape)
            samples = [round(c / fps) for c in budgets]  # NOTE: whole samples (a config may hold an integer)
            for c, d in zip(budgets, samples):
                if d < 1:
                    raise UserError(f"--flops {c:g} is less than one sample of {name} ({fps:.3g} FLOPs): "
                                    "raise the budget")
                if abs(d * fps / c - 1) > 0.01:
                    notes.append(f"note: {name} at C = {c:.3g} trains {d} samples, {d * fps / c - 1:+.1%} off the "
                                 "budget after rounding to whole samples; raise the budget")
                points.append({"model.preset": preset, **variant, "train.total_samples": d})
            lines.append(f"{name:<24} {trunk:>10,} {fps:>13.4g}  " + "  ".join(f"{d:>12,}" for d in samples))
    return points, lines + notes


def _shape_text(shape: SampleShape) -> str:
    img = f"{shape.patches} patches" if shape.patches is not None else f"{shape.image_size} px"
    return f"{img}, {shape.prompt_tokens} prompt + {shape.caption_tokens} caption tokens per sample"


# --------------------------------------------------------------------------------------- the report
@dataclass
class Target:
    """The compute budget the report answers for."""

    flops: float
    how: str
    """how it was given (the GPU-hours conversion, or --target-flops)"""
    gpu_peak: float | None = None
    """peak bf16 FLOP/s of the GPU, with mfu: for a wall-time estimate"""
    mfu: float | None = None


def report_scaling(rows: list[dict], *, sweep_dir: Path, meta: dict, target: Target | None, nodes: int | None,
                   n_boot: int = 200) -> tuple[list[str], int]:
    """Fit, print, save fit.json / fit.png / isoflop.png; with a target, the budget answer. (lines, exit code:
    0, or 1 when the target cannot be answered)."""
    import numpy as np

    from genlip.cluster.scaling import analyse

    a = analyse(rows, target_flops=[target.flops] if target else (), n_boot=n_boot)
    out = {"N": N_MEANS, "D": D_MEANS, "loss": a.points.loss_key, "points_fitted": a.points.point,
           "skipped": [{"point": p, "reason": r} for p, r in a.points.skipped], "k": a.k, "k_range": a.k_range}
    lines = ["", "== scaling fit =="]
    lines += [f"not fitted: point {p}: {r}" for p, r in a.points.skipped]
    fit = a.fit
    if fit is None:
        lines.append(f"cannot fit a law: {'; '.join(a.warnings[-1:])} ({len(a.points.L)} finished points)")
    else:
        joint = fit.D is not None
        out["law"] = "L(N, D) = E + A / N^alpha + B / D^beta" if joint else "L(N) = E + A / N^alpha"
        out |= {"params": fit.params, "intervals": fit.intervals, "level": fit.level, "n_points": fit.n_points,
                "exponents_at_bound": fit.at_bound}
        lines += [f"law: {out['law']}  ({fit.n_points} points, loss = {a.points.loss_key}"
                  + ("" if joint else f", D fixed at ~{_geo(a.points.D):.3g} samples") + ")",
                  f"  N = {N_MEANS}", f"  D = {D_MEANS}"]
        for name, value in fit.params.items():
            lo, hi = fit.intervals[name]
            lines.append(f"  {name:<6} = {value:<10.4g} {fit.level:.0%} interval [{lo:.4g}, {hi:.4g}]")
        if a.k is not None:
            lines.append(f"  C = k N D with k = {a.k:.4g} FLOPs per trunk parameter per sample "
                         f"(points: {a.k_range[0]:.4g}..{a.k_range[1]:.4g})")
        _plot_fit(a, sweep_dir / "fit.png")
        lines.append(f"plot: {sweep_dir / 'fit.png'} (dashed: extrapolated beyond the largest measured point)")
    if a.isoflop is not None and a.isoflop.groups:
        iso = a.isoflop
        out["isoflop"] = {"groups": [{"C": g.C, "N": list(g.N), "L": list(g.L), "N_star": g.N_star,
                                      "L_star": g.L_star, "ok": g.ok} for g in iso.groups],
                          "N_star_exponent": iso.exponent, "N_star_coef": iso.coef}
        lines.append("isoFLOP groups (parabola in log N; its minimum):")
        lines += [f"  C = {g.C:.3g}: {len(g.N)} sizes, N* = {g.N_star:.3g}, L* = {g.L_star:.4g}" if g.ok else
                  f"  C = {g.C:.3g}: {len(g.N)} sizes, no minimum inside the measured sizes (lowest loss "
                  f"{g.L.min():.4g} at N = {g.N[np.argmin(g.L)]:.3g})" for g in iso.groups]
        if iso.exponent is not None:
            lines.append(f"  N* ~ {iso.coef:.3g} C^{iso.exponent:.3f}")
        _plot_isoflop(iso, sweep_dir / "isoflop.png")
        lines.append(f"plot: {sweep_dir / 'isoflop.png'}")
    warnings = a.warnings + (fit.warnings if fit is not None else []) + \
        (a.isoflop.warnings if a.isoflop is not None else [])
    code = 0
    if target is not None:
        answer, more, code = _budget_answer(a, rows, meta=meta, target=target, nodes=nodes)
        out["target"] = answer
        lines += more
        if a.allocation is not None:
            warnings += [w for w in a.allocation.warnings if w not in warnings]
    out["warnings"] = list(dict.fromkeys(warnings))
    lines += [f"WARNING: {w}" for w in out["warnings"]]
    (sweep_dir / "fit.json").write_text(json.dumps(out, indent=1, default=_jsonable) + "\n")
    lines.append(f"fit: {sweep_dir / 'fit.json'}")
    return lines, code


def _geo(x) -> float:
    import numpy as np

    return float(np.exp(np.log(x).mean()))


def _jsonable(v):
    import numpy as np

    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return str(v)


def _budget_answer(a, rows, *, meta: dict, target: Target, nodes: int | None) -> tuple[dict, list[str], int]:
    """The recommended size, samples, loss and genlip-submit line at target.flops; exit code 1 if none."""
    from genlip.model.config import PRESETS, get_preset
    from genlip.info import count_params

    lines = ["", f"== budget: C = {target.flops:.3g} training FLOPs ({target.how}) =="]
    alloc = a.allocation
    if alloc is None:
        why = "needs a joint fit: finished points that vary both size and samples" if a.fit is not None else \
            "no law could be fitted"
        lines.append(f"cannot answer the budget: {why}")
        return {"C": target.flops, "answer": None, "why": why}, lines, 1
    lvl = f"{a.fit.level:.0%}"

    def iv(name):
        lo, hi = alloc.intervals.get(name, ([math.nan], [math.nan]))
        return float(lo[0]), float(hi[0])

    n_opt, d_opt, l_opt = float(alloc.N_opt[0]), float(alloc.D_opt[0]), float(alloc.L_opt[0])
    trunks = sorted((count_params(get_preset(p)).trunk, p) for p in PRESETS)
    below = [t for t in trunks if t[0] <= n_opt][-1:]
    above = [t for t in trunks if t[0] > n_opt][:1]
    near = sorted(below + above, key=lambda t: abs(math.log(t[0] / n_opt)))
    answer = {"C": target.flops, "how": target.how, "N_opt": n_opt, "N_opt_interval": iv("N_opt"), "D_opt": d_opt,
              "D_opt_interval": iv("D_opt"), "L_opt": l_opt, "L_opt_interval": iv("L_opt"),
              "extrapolation_compute": float(alloc.extrapolation[0]),
              "extrapolation_N": n_opt / float(a.points.N.max()), "extrapolation_D": d_opt / float(a.points.D.max()),
              "nearest_presets": [{"preset": p, "params_trunk": t} for t, p in near]}
    lines += [f"N_opt = {n_opt:.3g} trunk parameters   {lvl} [{iv('N_opt')[0]:.3g}, {iv('N_opt')[1]:.3g}]",
              f"D_opt = {d_opt:.3g} samples            {lvl} [{iv('D_opt')[0]:.3g}, {iv('D_opt')[1]:.3g}]",
              f"loss  = {l_opt:.4g}                     {lvl} [{iv('L_opt')[0]:.4g}, {iv('L_opt')[1]:.4g}]",
              f"extrapolation: {answer['extrapolation_compute']:.3g}x the largest measured compute (k N D), "
              f"N {answer['extrapolation_N']:.3g}x, D {answer['extrapolation_D']:.3g}x the largest measured",
              "nearest presets by trunk parameters: " +
              ", ".join(f"{p} ({t:.3g}, {t / n_opt:.2f}x N_opt)" for t, p in near)]
    preset = near[0][1]
    submit, how, fps = _submit_line(preset, rows, meta=meta, flops=target.flops, nodes=nodes)
    samples = target.flops / fps
    n_preset = count_params(get_preset(preset)).trunk
    loss = float(a.fit.predict(n_preset, samples))
    lo, hi = (float(x) for x in a.fit.predict_interval(n_preset, samples))
    answer |= {"preset": preset, "samples": samples, "flops_per_sample": fps, "flops_per_sample_from": how,
               "predicted_loss": loss, "predicted_loss_interval": (lo, hi), "submit": submit}
    lines += [f"recommended: {preset} for {samples:.4g} samples ({fps:.4g} FLOPs per sample, {how}): "
              f"predicted loss {loss:.4g}, {lvl} [{lo:.4g}, {hi:.4g}]"]
    if target.gpu_peak and target.mfu:
        gpu_hours = target.flops / (target.gpu_peak * target.mfu) / 3600
        answer["gpu_hours"] = gpu_hours
        lines.append(f"GPU time at MFU {target.mfu:g}: {gpu_hours:.4g} GPU-hours")
    lines += ["submit:", f"  {submit}" if isinstance(submit, str) else f"  (no submit line: {submit['why']})"]
    return answer, lines, 0


def _submit_line(preset: str, rows: list[dict], *, meta: dict, flops: float, nodes: int | None):
    """(genlip-submit line or {'why': ...}, where FLOPs per sample came from, FLOPs per sample)."""
    from genlip.cluster.plan import choose_layout
    from genlip.cluster.submit import dataset_stats
    from genlip.config import padded_vocab

    sweep = meta["sweep"]
    config = meta.get("config_path") or sweep["config"]
    overrides = [o for o in sweep.get("overrides", [])
                 if o.split("=", 1)[0].strip() not in ("model.preset", "train.total_samples", "parallel.tp",
                                                       "parallel.pp", "parallel.zero_stage", "train.output_dir")]
    try:
        cfg = preset_config(config, overrides, preset)
    except UserError as e:  # the sweep's config moved or changed since it ran: no submit line, still an answer
        cfg, error = None, e
    # Measured FLOPs per sample only from points that trained this very model: a point with the preset's name
    # but its own model.width (a width sweep on one preset) has other FLOPs per sample; its trunk tells.
    from genlip.info import count_params
    from genlip.model.config import get_preset

    trunk = count_params(cfg.model.build() if cfg is not None else get_preset(preset)).trunk
    measured = [r["train_flops"] / r["samples"] for r in rows if r.get("status") == "done" and r.get("preset") == preset
                and r.get("params_trunk") == trunk
                and isinstance(r.get("train_flops"), (int, float)) and isinstance(r.get("samples"), (int, float))
                and r["samples"] > 0]
    median = sorted(measured)[len(measured) // 2] if measured else None
    if cfg is None:
        from genlip.config import Config

        if median is not None:
            return {"why": f"config {config}: {error}"}, "measured in this sweep", median
        cfg = Config()
        cfg.model.preset = preset
        shape = sample_shape(cfg)
        return {"why": f"config {config}: {error}"}, f"genlip-info at {_shape_text(shape)}", flops_per_sample(cfg, shape)[0]
    if median is not None:
        fps, how = median, "measured in this sweep"
    else:
        shape = sample_shape(cfg)
        fps, how = flops_per_sample(cfg, shape)[0], f"genlip-info at {_shape_text(shape)}"
    samples = round(flops / fps)
    cfg.train.total_samples = samples
    slurm = sweep.get("slurm", {})
    n, gpus = nodes or (slurm.get("nodes") or 1), slurm.get("gpus_per_node", 8)
    tasks = slurm.get("tasks_per_node") or max(gpus, 1)
    vocab, tokens, _ = dataset_stats(cfg)
    memory = slurm.get("gpu_memory_gib", 80.0)
    layout, plan = choose_layout(cfg, world=n * tasks, gpus_per_node=gpus, gpu_memory_gib=memory,
                                 vocab_size=padded_vocab(vocab, cfg.data.pad_vocab_to) if vocab else None,
                                 avg_tokens_per_sample=tokens)
    if layout is None:
        return {"why": f"no layout fits {n} node(s) x {tasks} tasks: {plan}; try --nodes"}, how, fps
    run_dir = Path(sweep.get("output_dir", "runs/sweeps")) / f"{sweep['name']}-{preset}-target"
    argv = ["genlip-submit", "train", str(config), *overrides, f"model.preset={preset}",
            f"train.total_samples={samples}", *layout, "--nodes", str(n), "--gpus-per-node", str(gpus)]
    if slurm.get("tasks_per_node"):
        argv += ["--tasks-per-node", str(tasks)]
    for key in ("partition", "account", "qos"):
        if slurm.get(key):
            argv += [f"--{key}", str(slurm[key])]
    argv += ["--time", str(slurm.get("time", "2-00:00:00")), "--gpu-memory-gib", f"{memory:g}", "--run-dir", str(run_dir)]
    return shlex.join(argv), how, fps


# ------------------------------------------------------------------------------------------- plots
def _plot_fit(a, path: Path) -> None:
    """Measured points and the fitted law: L vs N per D (and L vs D per N for the joint law); solid over the
    measured range, dashed beyond it (shaded: extrapolation), the budget's optimum as a star with its interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from genlip.cluster.scaling import group_by_flops

    fit, pts, alloc = a.fit, a.points, a.allocation
    axes_spec = [("N", pts.N, pts.D, "trunk parameters N")]
    if fit.D is not None:
        axes_spec.append(("D", pts.D, pts.N, "samples seen D"))
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(6 * len(axes_spec), 4.5), squeeze=False)
    for ax, (var, x, other, label) in zip(axes[0], axes_spec):
        top = x.max()
        reach = top * 10
        if alloc is not None:
            reach = max(reach, 1.5 * float((alloc.N_opt if var == "N" else alloc.D_opt)[0]))
        grid = np.logspace(np.log10(x.min() / 1.5), np.log10(reach), 200)
        groups = group_by_flops(other) if fit.D is not None else [np.arange(len(x))]
        for j, idx in enumerate(groups):
            color = f"C{j % 10}"
            held = _geo(other[idx])
            args = (grid, held) if var == "N" else (held, grid)
            args = args if fit.D is not None else (grid,)
            pred = fit.predict(*args)
            lo, hi = fit.predict_interval(*args)
            inside = grid <= top
            tag = f"{'D' if var == 'N' else 'N'} = {held:.3g}" if fit.D is not None else "fit"
            ax.plot(grid[inside], pred[inside], color=color, label=tag)
            ax.plot(grid[~inside], pred[~inside], color=color, linestyle="--")
            if np.all(np.isfinite(lo)):
                ax.fill_between(grid, lo, hi, color=color, alpha=0.12, linewidth=0)
            ax.scatter(x[idx], pts.L[idx], color=color, zorder=3, edgecolor="k", linewidth=0.5)
        ax.axvspan(top, grid[-1], color="0.5", alpha=0.08, label="extrapolation")
        if alloc is not None:
            opt = float((alloc.N_opt if var == "N" else alloc.D_opt)[0])
            lo, hi = alloc.intervals.get("L_opt", ([math.nan], [math.nan]))
            L = float(alloc.L_opt[0])
            yerr = [[max(L - float(lo[0]), 0)], [max(float(hi[0]) - L, 0)]] if math.isfinite(lo[0]) else None
            ax.errorbar([opt], [L], yerr=yerr, marker="*", markersize=12, color="k", linestyle="none",
                        label=f"optimum at C = {float(alloc.C[0]):.3g}")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"loss ({pts.loss_key})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    law = "E + A/N^alpha + B/D^beta" if fit.D is not None else "E + A/N^alpha"
    fig.suptitle(f"L = {law} on {fit.n_points} points: " +
                 ", ".join(f"{k} {v:.3g}" for k, v in fit.params.items()), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_isoflop(iso, path: Path) -> None:
    """Loss vs N per FLOPs budget with its parabola and minimum; N* vs C when two or more minima exist."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = 2 if iso.exponent is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    ax = axes[0][0]
    for j, g in enumerate(iso.groups):
        color = f"C{j % 10}"
        ax.scatter(g.N, g.L, color=color, edgecolor="k", linewidth=0.5, zorder=3)
        x = np.linspace(np.log(g.N.min()), np.log(g.N.max()), 100)
        ax.plot(np.exp(x), np.polyval(np.polyfit(np.log(g.N), g.L, 2), x), color=color, label=f"C = {g.C:.3g}")
        if g.ok:
            ax.scatter([g.N_star], [g.L_star], marker="*", s=120, color=color, edgecolor="k", zorder=4)
    ax.set_xscale("log")
    ax.set_xlabel("trunk parameters N")
    ax.set_ylabel("loss")
    ax.set_title("isoFLOP: loss vs size at fixed training FLOPs (star: parabola minimum)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if panels == 2:
        ax = axes[0][1]
        good = [g for g in iso.groups if g.ok]
        C = np.array([g.C for g in good])
        ax.scatter(C, [g.N_star for g in good], color="k")
        c_grid = np.logspace(np.log10(C.min()), np.log10(C.max()), 50)
        ax.plot(c_grid, iso.coef * c_grid ** iso.exponent, label=f"N* = {iso.coef:.3g} C^{iso.exponent:.3f}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training FLOPs C")
        ax.set_ylabel("N* (loss-minimising size)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
