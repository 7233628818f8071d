"""Scaling laws from a sweep's points: fits with bootstrap intervals, compute-optimal allocation, isoFLOPs.

    L(N)    = E + A / N^alpha                    fit_power_law(N, L)      (a size sweep at fixed D)
    L(N, D) = E + A / N^alpha + B / D^beta       fit_joint(N, D, L)       (sizes x training lengths)
    C = k N D; N_opt(C), D_opt(C)                compute_optimal(fit, C, k=k)
    loss vs log N per equal-C group              isoflop(N, C, L)
    all of the above from gather() rows          analyse(rows, target_flops=...) (points_from_rows splits them)

What is measured (`points_from_rows` reads them from the rows `genlip-sweep`'s `gather()` returns):
  N  trunk parameters (`params_trunk`: patch embedding, blocks, final LayerNorm). The text side (token
     embedding, LM head, in/out projections: 230-350M across presets) hardly changes between presets
     and is dropped after pre-training; counting it would squeeze b16..g16 (93M..1.2B trunk) into
     326M..1.5B total and bend the curve, as embedding parameters did in Kaplan et al. (2020).
  D  samples seen (image-caption pairs, `samples`), not tokens: a sample's token count is fixed by the
     data, so samples and tokens differ by a constant and the exponents are the same.
  C  training matmul FLOPs as the trainer counted them (`train_flops`); k = C / (N D) per point. It
     is not constant across presets (the text side and attention do not scale with N: at 224 px
     ~2200 for b16, ~1700 for g16), so C = k N D with the median k is an approximation, and its spread
     is reported.
  L  validation loss when every fitted point has one, else the final training loss for all of them
     (mixing the two would fit their gap).

Fitting follows Hoffmann et al. (2022, approach 3): parameters in log space (E = exp(e), A = exp(a),
...), the Huber loss (delta 1e-3) of log(predicted) - log(L), L-BFGS from the best starts of a grid,
keep the best. NOTE: A is fitted at the geometric-mean N of the data (A = exp(a') N0^alpha), which
decouples a' from alpha; the reported A is in plain units. Exponents are bounded (default 0..3) and
flagged when they end at a bound. Intervals are bootstrap percentiles: points resampled with
replacement and refitted (a resample that repeats points may be under-determined; that is part of
the honest width). NOTE: with few points per parameter (a 3x3 grid for 5) the percentile bootstrap
can still be too narrow; read the intervals with the point count. Every result carries `warnings`:
too few points, exponents at a bound, intervals wider than WIDE_INTERVAL of the value, extrapolation
beyond EXTRAPOLATION_WARN x the largest point.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize

DELTA = 1e-3  # Huber threshold on log-loss residuals (Hoffmann et al.)
EXPONENT_BOUNDS = (0.0, 3.0)
WIDE_INTERVAL = 0.5  # warn when an exponent's interval is wider than this fraction of its value
EXTRAPOLATION_WARN = 10.0  # warn when a target lies this far beyond the largest measured point
LOSS_KEYS = ("val_loss", "train_loss_last_interval", "final_loss")  # by preference


# ---------------------------------------------------------------------------------------------- points
@dataclass
class Points:
    """The fit-able points of a sweep and the ones left out (with why)."""

    point: list[int]
    N: np.ndarray
    """trunk parameters"""
    D: np.ndarray
    """samples seen"""
    C: np.ndarray
    """training FLOPs"""
    L: np.ndarray
    loss_key: str
    """which loss L is: val_loss when every point has one, else the training loss most points have: the mean
    over the last logging interval (train_loss_last_interval), or the last step's (final_loss)"""
    skipped: list[tuple[int, str]] = field(default_factory=list)
    """(point, reason) for every row not fitted: running, failed, or missing a number"""

    @property
    def k(self) -> np.ndarray:
        """FLOPs per trunk parameter per sample of each point (C = k N D)."""
        return self.C / (self.N * self.D)


def points_from_rows(rows: list[dict]) -> Points:
    """Split `gather()` rows into fit-able points (status done, positive finite N, D, C, loss) and the rest."""
    def number(r, key):
        v = r.get(key)
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        return float(v) if ok else None

    done, skipped = [], []
    for r in rows:
        if r.get("status") != "done":
            skipped.append((r["point"], f"status {r.get('status')}"))
            continue
        missing = [k for k in ("params_trunk", "samples", "train_flops") if number(r, k) is None]
        if all(number(r, k) is None for k in LOSS_KEYS):
            missing.append("loss")
        if missing:
            skipped.append((r["point"], f"done but no positive {', '.join(missing)} in result.json"))
        else:
            done.append(r)
    if done and all(number(r, "val_loss") for r in done):
        loss_key = "val_loss"
    else:  # the training loss most points have; max() keeps the first of equal counts, the steadier interval mean
        loss_key = max(LOSS_KEYS[1:], key=lambda key: sum(number(r, key) is not None for r in done))
    skipped += [(r["point"], f"done but no positive {loss_key} (used because not every point has a val_loss)")
                for r in done if number(r, loss_key) is None]
    done = [r for r in done if number(r, loss_key) is not None]
    skipped.sort()
    def column(key):
        return np.array([number(r, key) for r in done], dtype=float)

    return Points(point=[r["point"] for r in done], N=column("params_trunk"), D=column("samples"),
                  C=column("train_flops"), L=column(loss_key), loss_key=loss_key, skipped=skipped)


def distinct(x: np.ndarray, rtol: float = 0.02) -> int:
    """How many values of x differ by more than rtol (samples seen vary a little with packing)."""
    lx = np.sort(np.log(np.asarray(x, float)))
    return int(len(lx) > 0) + int(np.sum(np.diff(lx) > math.log1p(rtol)))


# ------------------------------------------------------------------------------------------------ fits
@dataclass
class Fit:
    """A fitted law, its bootstrap intervals and the limits of trusting it."""

    params: dict[str, float]
    """E, A, alpha (and B, beta for the joint law), plain units"""
    intervals: dict[str, tuple[float, float]]
    """bootstrap percentile interval of each parameter at `level` (nan without a bootstrap)"""
    level: float
    boot: np.ndarray
    """(n_boot, parameters) refitted on resampled points, columns in `params` order"""
    N: np.ndarray
    D: np.ndarray | None
    L: np.ndarray
    exponent_bounds: tuple[float, float]
    at_bound: list[str]
    """exponents that ended at a bound (the data do not pin them down)"""
    warnings: list[str]

    @property
    def n_points(self) -> int:
        return len(self.L)

    def predict(self, N, D=None) -> np.ndarray:
        return law(self.params, N, D)

    def predict_interval(self, N, D=None) -> tuple[np.ndarray, np.ndarray]:
        """Bootstrap percentile interval of the predicted loss at (N, D) (nan without a bootstrap)."""
        if not len(self.boot):
            nan = np.full(np.broadcast(np.asarray(N), np.asarray(1.0 if D is None else D)).shape, np.nan)
            return nan, nan
        names = list(self.params)
        preds = np.array([law(dict(zip(names, row)), N, D) for row in self.boot])
        q = 50 * (1 - self.level)
        return np.nanpercentile(preds, q, axis=0), np.nanpercentile(preds, 100 - q, axis=0)


def law(params: dict[str, float], N, D=None) -> np.ndarray:
    """E + A/N^alpha (+ B/D^beta when params has B)."""
    L = params["E"] + params["A"] / np.asarray(N, float) ** params["alpha"]
    if "B" in params:
        L = L + params["B"] / np.asarray(D, float) ** params["beta"]
    return L


def fit_power_law(N, L, *, n_boot: int = 200, level: float = 0.95, seed: int = 0, delta: float = DELTA,
                  exponent_bounds: tuple[float, float] = EXPONENT_BOUNDS) -> Fit:
    """L(N) = E + A / N^alpha, with bootstrap intervals (see the module docstring)."""
    return _fit(np.asarray(N, float), None, np.asarray(L, float), n_boot=n_boot, level=level, seed=seed,
                delta=delta, bounds=exponent_bounds)


def fit_joint(N, D, L, *, n_boot: int = 200, level: float = 0.95, seed: int = 0, delta: float = DELTA,
              exponent_bounds: tuple[float, float] = EXPONENT_BOUNDS) -> Fit:
    """L(N, D) = E + A / N^alpha + B / D^beta, with bootstrap intervals (see the module docstring)."""
    return _fit(np.asarray(N, float), np.asarray(D, float), np.asarray(L, float), n_boot=n_boot, level=level,
                seed=seed, delta=delta, bounds=exponent_bounds)


def _objective(theta: np.ndarray, x: np.ndarray, logL: np.ndarray, w: np.ndarray, delta: float):
    """Huber(log pred - log L) / delta, weighted by w, and its gradient; theta = (e, a, alpha[, b, beta]) and
    x = (n, 1 or 2) centred log N (and log D). Log pred = logsumexp(e, a - alpha x_N[, b - beta x_D])."""
    n, m = x.shape
    T = np.empty((n, m + 1))
    T[:, 0] = theta[0]
    T[:, 1:] = theta[1::2] - x * theta[2::2]
    top = T.max(axis=1)
    ex = np.exp(T - top[:, None])
    total = ex.sum(axis=1)
    r = top + np.log(total) - logL
    abs_r = np.abs(r)
    h = np.where(abs_r <= delta, 0.5 * r * r / delta, abs_r - 0.5 * delta)
    g = w * np.clip(r / delta, -1.0, 1.0) / total  # dHuber/dr times the softmax normaliser
    grad = np.empty(2 * m + 1)
    grad[0] = g @ ex[:, 0]
    grad[1::2] = g @ ex[:, 1:]
    grad[2::2] = -(g @ (x * ex[:, 1:]))
    return float(w @ h), grad


def _grid_losses(grid: np.ndarray, x: np.ndarray, logL: np.ndarray, w: np.ndarray, delta: float) -> np.ndarray:
    """The objective at every start of the grid, vectorised."""
    terms = [np.broadcast_to(grid[:, :1], (len(grid), len(logL)))]
    terms += [grid[:, 1 + 2 * j, None] - grid[:, 2 + 2 * j, None] * x[None, :, j] for j in range(x.shape[1])]
    r = np.logaddexp.reduce(np.stack(terms), axis=0) - logL
    return np.where(np.abs(r) <= delta, 0.5 * r * r / delta, np.abs(r) - 0.5 * delta) @ w


FIT_TOL = {"ftol": 1e-15, "gtol": 1e-10}
BOOT_TOL = {"ftol": 1e-10, "gtol": 1e-7}  # NOTE: looser: fewer iterations, and moves far less than resamples do


def _minimise(starts, x, logL, w, delta, box, tol):
    best = None
    for t0 in starts:
        res = minimize(_objective, t0, args=(x, logL, w, delta), jac=True, method="L-BFGS-B", bounds=box,
                       options={"maxiter": 1000, **tol})
        if best is None or res.fun < best.fun:
            best = res
    return best.x


def _fit(N, D, L, *, n_boot, level, seed, delta, bounds) -> Fit:
    cols = [N] if D is None else [N, D]
    if any(len(c) != len(L) for c in cols) or len(L) == 0:
        raise ValueError(f"need equal-length, non-empty arrays; got lengths {[len(c) for c in cols]} and {len(L)}")
    if np.any(~np.isfinite(L)) or np.any(L <= 0) or any(np.any(~(c > 0)) for c in cols):
        raise ValueError("N, D and L must be positive and finite")
    logs = np.log(np.stack(cols, axis=1))
    centre = logs.mean(axis=0)  # NOTE: fit at the geometric mean N (and D): decouples a from alpha
    x, logL = logs - centre, np.log(L)
    lo_L, hi_L = logL.min(), logL.max()
    # Box: E below the largest loss; each term's log scale at the centre in a wide band; exponents bounded.
    box = [(lo_L - 15.0, hi_L + 0.5)] + [(lo_L - 15.0, hi_L + 5.0), bounds] * x.shape[1]
    e_grid = lo_L + np.log([0.1, 0.5, 0.8, 0.95])
    a_grid = logL.mean() + np.log([0.01, 0.1, 0.5])
    p_grid = [p for p in (0.1, 0.3, 0.6, 1.0, 2.0) if bounds[0] <= p <= bounds[1]] or [sum(bounds) / 2]
    grid = np.array(list(itertools.product(e_grid, *([a_grid, p_grid] * x.shape[1]))))
    ones = np.ones(len(L))
    order = np.argsort(_grid_losses(grid, x, logL, ones, delta))
    theta = _minimise(grid[order[:6]], x, logL, ones, delta, box, FIT_TOL)

    def plain(t):
        out = [math.exp(t[0])]
        for j in range(x.shape[1]):
            out += [math.exp(t[1 + 2 * j] + t[2 + 2 * j] * centre[j]), float(t[2 + 2 * j])]
        return out

    names = ["E", "A", "alpha"] + (["B", "beta"] if D is not None else [])
    rng = np.random.default_rng(seed)
    boot = np.empty((n_boot, len(names)))
    near = grid[order[:64]]  # the resamples' candidate starts: the full data's best grid points
    for i in range(n_boot):
        w = np.bincount(rng.integers(0, len(L), len(L)), minlength=len(L)).astype(float)
        # From the full-data optimum, and from the resample's best grid start when that starts lower (a
        # resample can move to another basin).
        losses = _grid_losses(near, x, logL, w, delta)
        starts = [theta] + ([near[np.argmin(losses)]] if losses.min() < _objective(theta, x, logL, w, delta)[0] else [])
        boot[i] = plain(_minimise(starts, x, logL, w, delta, box, BOOT_TOL))
    params = dict(zip(names, plain(theta)))
    q = 50 * (1 - level)
    intervals = {n: ((float(np.percentile(boot[:, j], q)), float(np.percentile(boot[:, j], 100 - q)))
                     if n_boot else (math.nan, math.nan)) for j, n in enumerate(names)}
    at_bound = [n for n in ("alpha", "beta") if n in params and
                min(abs(params[n] - b) for b in bounds) < 1e-4 * max(1.0, bounds[1] - bounds[0])]
    fit = Fit(params=params, intervals=intervals, level=level, boot=boot, N=N, D=D, L=L, exponent_bounds=bounds,
              at_bound=at_bound, warnings=[])
    fit.warnings = _limits(fit, e_floor=math.exp(box[0][0]))
    return fit


def _limits(fit: Fit, *, e_floor: float) -> list[str]:
    """What makes `fit` untrustworthy, one line each."""
    out, p, n = [], fit.params, fit.n_points
    if n < len(p) + 1:
        out.append(f"{n} points for {len(p)} parameters: under-constrained (needs at least {len(p) + 1}); the fit "
                   "and its intervals mean little")
    for what, values in (("N", fit.N), ("D", fit.D)):
        if values is not None and distinct(values) < 3:
            out.append(f"only {distinct(values)} distinct {what}: its exponent is not identified (needs 3 or more)")
    for name in fit.at_bound:
        out.append(f"{name} = {p[name]:.3g} sits at its bound {fit.exponent_bounds}: the data do not pin it down")
    if p["E"] <= e_floor * 1.001:
        out.append("E is at its lower bound (~0): no loss floor is identified")
    for name in ("alpha", "beta"):
        lo, hi = fit.intervals.get(name, (math.nan, math.nan))
        if name in p and p[name] > 0 and (hi - lo) / p[name] > WIDE_INTERVAL:
            out.append(f"{name} = {p[name]:.3g}, {fit.level:.0%} interval [{lo:.3g}, {hi:.3g}]: wider than "
                       f"{WIDE_INTERVAL:.0%} of its value")
    return out


# ---------------------------------------------------------------------------------- compute-optimal
@dataclass
class Allocation:
    """Compute-optimal N and D at each training budget C under C = k N D, from a joint fit."""

    C: np.ndarray
    k: float
    N_opt: np.ndarray
    D_opt: np.ndarray
    L_opt: np.ndarray
    intervals: dict[str, tuple[np.ndarray, np.ndarray]]
    """N_opt, D_opt, L_opt -> (low, high) bootstrap percentiles at the fit's level"""
    exponent_N: float
    """N_opt grows as C^exponent_N = beta / (alpha + beta); D_opt as C^(1 - exponent_N)"""
    extrapolation: np.ndarray
    """C / the largest measured k N D"""
    warnings: list[str]


def optimal_allocation(params: dict[str, float], C, k: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N_opt, D_opt, L_opt) minimising E + A/N^alpha + B/D^beta subject to k N D = C (closed form):
    N_opt = G (C/k)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta)), D_opt = C / (k N_opt)."""
    a, b, A, B = params["alpha"], params["beta"], params["A"], params["B"]
    budget = np.asarray(C, float) / k
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        G = (a * A / (b * B)) ** (1.0 / (a + b))
        N = G * budget ** (b / (a + b))
        D = budget / N
        return N, D, law(params, N, D)


def compute_optimal(fit: Fit, C, *, k: float) -> Allocation:
    """N_opt(C), D_opt(C) and the predicted loss from a joint fit, with bootstrap intervals."""
    if fit.D is None:
        raise ValueError("compute-optimal allocation needs a joint L(N, D) fit")
    C = np.atleast_1d(np.asarray(C, float))
    N, D, L = optimal_allocation(fit.params, C, k)
    names = list(fit.params)
    q = 50 * (1 - fit.level)
    intervals = {}
    if len(fit.boot):
        boot = np.array([optimal_allocation(dict(zip(names, row)), C, k) for row in fit.boot])  # (n_boot, 3, len C)
        boot[~np.isfinite(boot)] = np.nan
        for j, name in enumerate(("N_opt", "D_opt", "L_opt")):
            intervals[name] = (np.nanpercentile(boot[:, j], q, axis=0), np.nanpercentile(boot[:, j], 100 - q, axis=0))
    extrapolation = C / np.max(k * fit.N * fit.D)
    warnings = list(fit.warnings)
    far = extrapolation.max()
    if far > EXTRAPOLATION_WARN:
        warnings.append(f"target compute is {far:.3g}x the largest measured point: the law is extrapolated")
    if "N_opt" in intervals:
        lo, hi = intervals["N_opt"]
        if not np.all(lo > 0):  # bootstrap fits with alpha ~ 0: size does not help, N_opt -> 0
            warnings.append(f"N_opt's {fit.level:.0%} interval reaches 0: some bootstrap refits find that size does "
                            "not lower the loss (alpha ~ 0), so N_opt is not determined")
        else:
            spread = np.max(hi / lo)
            if not spread < 4.0:
                warnings.append(f"N_opt is known only within a factor of {spread:.3g} ({fit.level:.0%} interval)")
    a, b = fit.params["alpha"], fit.params["beta"]
    return Allocation(C=C, k=k, N_opt=N, D_opt=D, L_opt=L, intervals=intervals,
                      exponent_N=b / (a + b) if a + b > 0 else math.nan, extrapolation=extrapolation, warnings=warnings)


# -------------------------------------------------------------------------------------------- isoFLOP
@dataclass
class IsoFlopGroup:
    """Points trained with (about) the same compute and the vertex of the parabola L(log N) through them."""

    C: float
    """geometric mean of the group's FLOPs"""
    N: np.ndarray
    L: np.ndarray
    N_star: float
    L_star: float
    ok: bool
    """a minimum (positive curvature) inside the measured N range"""


@dataclass
class IsoFlop:
    """The fitted groups (those with 3 or more sizes) and how the best size grows with compute."""

    groups: list[IsoFlopGroup]
    exponent: float | None
    """N* grows as coef * C^exponent, least squares over the ok groups (None with fewer than 2)"""
    coef: float | None
    warnings: list[str]


def group_by_flops(C, rtol: float = 0.05) -> list[np.ndarray]:
    """Indices of points whose FLOPs lie within rtol of the smallest in their group (sorted by C)."""
    C = np.asarray(C, float)
    order = np.argsort(C)
    groups, start = [], 0
    for i in range(1, len(order) + 1):
        if i == len(order) or C[order[i]] > C[order[start]] * (1 + rtol):
            groups.append(order[start:i])
            start = i
    return groups


def parabola_vertex(N, L) -> tuple[float, float, float]:
    """(N*, L*, curvature) of the least-squares parabola L = c2 (ln N)^2 + c1 ln N + c0."""
    c2, c1, c0 = np.polyfit(np.log(N), L, 2)
    if c2 == 0:
        return math.nan, math.nan, 0.0
    x = -c1 / (2 * c2)
    return math.exp(x) if abs(x) < 700 else math.nan, float(c0 - c1 * c1 / (4 * c2)), float(c2)


def isoflop(N, C, L, *, rtol: float = 0.05) -> IsoFlop:
    """Per equal-C group a parabola in log N and its minimum; a power law N*(C) across groups."""
    N, C, L = (np.asarray(v, float) for v in (N, C, L))
    groups, warnings = [], []
    for idx in group_by_flops(C, rtol):
        c = float(np.exp(np.log(C[idx]).mean()))
        if distinct(N[idx]) < 3:
            warnings.append(f"C = {c:.3g}: {distinct(N[idx])} distinct N, a parabola needs 3; group not fitted")
            continue
        n_star, l_star, curv = parabola_vertex(N[idx], L[idx])
        # A minimum needs the parabola's vertex inside the sizes AND a measured size on each side of the best
        # one: when the smallest (largest) size has the lowest loss, a convex parabola through monotone points
        # can still put its vertex just inside the range, but nothing was measured beyond it.
        best = N[idx][np.argmin(L[idx])]
        edge = "smallest" if best <= N[idx].min() else "largest" if best >= N[idx].max() else None
        ok = curv > 0 and N[idx].min() <= n_star <= N[idx].max() and edge is None
        if not ok:
            where = f": the {edge} size has the lowest loss" if edge else ""
            warnings.append(f"C = {c:.3g}: no minimum inside the measured N range "
                            f"({N[idx].min():.3g}..{N[idx].max():.3g}){where}; extend the sizes toward the lower loss")
        groups.append(IsoFlopGroup(C=c, N=N[idx], L=L[idx], N_star=n_star, L_star=l_star, ok=ok))
    good = [g for g in groups if g.ok]
    exponent = coef = None
    if len(good) >= 2:
        slope, intercept = np.polyfit(np.log([g.C for g in good]), np.log([g.N_star for g in good]), 1)
        exponent, coef = float(slope), float(math.exp(intercept))
        if len(good) == 2:
            warnings.append("N*(C) from 2 groups: an exact line through two vertices, no check on the fit")
    return IsoFlop(groups=groups, exponent=exponent, coef=coef, warnings=warnings)


# ------------------------------------------------------------------------------------------ the sweep
K_SPREAD_WARN = 1.5  # warn when FLOPs per parameter-sample differ more than this across points (b16..g16: 1.3)
DISAGREE_WARN = 2.0  # warn when the joint fit's N_opt and an isoFLOP minimum differ by more than this factor
DISAGREE_EXPONENT = 0.15  # ... or their growth exponents of N_opt(C) by more than this


@dataclass
class Analysis:
    """What a sweep's points say about scaling; each part None where the points cannot support it."""

    points: Points
    fit: Fit | None
    """joint L(N, D) when N and D both vary, L(N) when D is fixed"""
    allocation: Allocation | None
    """compute-optimal N, D at the target FLOPs (joint fit only)"""
    isoflop: IsoFlop | None
    """when some equal-FLOPs group has 3 or more sizes"""
    k: float | None
    """median FLOPs per trunk parameter per sample, the k of C = k N D"""
    k_range: tuple[float, float] | None
    """smallest and largest k across the points: how far C = k N D is from each point's own FLOPs"""
    warnings: list[str]


def _disagreements(fit: Fit, iso: IsoFlop, k: float) -> list[str]:
    """Where the joint law and the isoFLOP parabolas, two readings of the same points, name different best
    sizes: then the law's form does not describe the points (or the parabolas are too coarse)."""
    out = []
    for g in (g for g in iso.groups if g.ok):
        n_fit = float(optimal_allocation(fit.params, g.C, k)[0])
        if not (n_fit > 0 and math.isfinite(n_fit)):
            out.append(f"C = {g.C:.3g}: the joint fit gives no finite N_opt, the isoFLOP parabola {g.N_star:.3g}")
            continue
        ratio = max(n_fit / g.N_star, g.N_star / n_fit)
        if ratio > DISAGREE_WARN:
            out.append(f"C = {g.C:.3g}: the joint fit puts N_opt at {n_fit:.3g}, the isoFLOP parabola at "
                       f"{g.N_star:.3g} ({ratio:.3g}x apart): the law does not describe these points well; trust "
                       f"neither far from the measured sizes")
    a, b = fit.params["alpha"], fit.params["beta"]
    if iso.exponent is not None and a + b > 0 and abs(b / (a + b) - iso.exponent) > DISAGREE_EXPONENT:
        out.append(f"N_opt grows as C^{b / (a + b):.3g} by the joint fit but as C^{iso.exponent:.3g} across the "
                   f"isoFLOP minima")
    return out


def analyse(rows: list[dict], *, target_flops=(), n_boot: int = 200, seed: int = 0) -> Analysis:
    """Fit what the done points of `gather()` rows support; the other rows are in points.skipped."""
    pts = points_from_rows(rows)
    warnings = [f"{len(pts.skipped)} of {len(rows)} points not fitted (running, failed or incomplete)"] \
        if pts.skipped else []
    if len(pts.L) == 0:
        return Analysis(pts, None, None, None, None, None, warnings + ["no finished point to fit"])
    k, k_range = float(np.median(pts.k)), (float(pts.k.min()), float(pts.k.max()))
    if pts.k.max() / pts.k.min() > K_SPREAD_WARN:
        warnings.append(f"FLOPs per parameter-sample range {pts.k.min():.4g}..{pts.k.max():.4g} across points: "
                        f"C = k N D with the median {k:.4g} is approximate")
    targets = np.atleast_1d(np.asarray(target_flops, float))
    n_N, n_D = distinct(pts.N), distinct(pts.D)
    fit = allocation = None
    if n_N >= 2 and n_D >= 2:
        fit = fit_joint(pts.N, pts.D, pts.L, n_boot=n_boot, seed=seed)
        if targets.size:
            allocation = compute_optimal(fit, targets, k=k)
    elif n_N >= 2:
        fit = fit_power_law(pts.N, pts.L, n_boot=n_boot, seed=seed)
        if targets.size:
            warnings.append("compute-optimal allocation needs points that vary D as well as N")
    else:
        warnings.append(f"all {len(pts.L)} finished points have one size: no law in N to fit")
    iso = None
    if any(distinct(pts.N[g]) >= 3 for g in group_by_flops(pts.C)):
        iso = isoflop(pts.N, pts.C, pts.L)
        if fit is not None and "B" in fit.params:
            warnings += _disagreements(fit, iso, k)
    return Analysis(points=pts, fit=fit, allocation=allocation, isoflop=iso, k=k, k_range=k_range, warnings=warnings)
