"""Scaling-law fits against synthetic laws with known answers: recovery, bootstrap intervals that cover the
truth and shrink with more points, the compute-optimal closed form and isoFLOP vertices against brute force,
and the warnings that say when a fit cannot be trusted."""

import numpy as np
import pytest

from genlip.cluster.scaling import (analyse, compute_optimal, fit_joint, fit_power_law, group_by_flops, isoflop, law,
                                    optimal_allocation, parabola_vertex, points_from_rows)

TRUE = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 200.0, "beta": 0.28}  # both terms ~0.3..3 over the grid
K = 2000.0  # FLOPs per trunk parameter per sample (genlip-info: ~1700 g16 .. ~2200 b16 at 224 px)
SEEDS = (0, 1, 2)


def grid_points(n: int, seed: int | None = None, noise: float = 0.01):
    """An n x n grid over N 1e6..1e9 and D 1e7..1e10, losses from TRUE with multiplicative noise."""
    N, D = (a.ravel() for a in np.meshgrid(np.logspace(6, 9, n), np.logspace(7, 10, n)))
    L = law(TRUE, N, D)
    if seed is not None:
        L = L * np.exp(noise * np.random.default_rng(seed).standard_normal(L.shape))
    return N, D, L


@pytest.fixture(scope="module")
def noisy_fits():
    """{n: [joint fits of n x n grids, one per seed]}, shared by the coverage and shrinkage tests."""
    return {n: [fit_joint(*grid_points(n, seed), n_boot=100, seed=seed) for seed in SEEDS] for n in (3, 6)}


def test_clean_laws_recovered_exactly():
    fit = fit_joint(*grid_points(4), n_boot=0)
    for name, value in TRUE.items():
        assert fit.params[name] == pytest.approx(value, rel=1e-6), name
    assert fit.warnings == [] and fit.at_bound == []
    N = np.logspace(5, 9, 8)
    fit = fit_power_law(N, law({"E": 2.0, "A": 50.0, "alpha": 0.3}, N), n_boot=0)
    assert fit.params == pytest.approx({"E": 2.0, "A": 50.0, "alpha": 0.3}, rel=1e-6)


def test_noisy_joint_fit_intervals_cover_the_truth(noisy_fits):
    """95% intervals on 1%-noise 6x6 grids: the truth inside in nearly every (seed, parameter) case, and no
    warnings for a well-determined fit."""
    covered = [fit.intervals[p][0] <= TRUE[p] <= fit.intervals[p][1]
               for fit in noisy_fits[6] for p in ("E", "alpha", "beta")]
    assert sum(covered) >= len(covered) - 1, covered
    for fit in noisy_fits[6]:
        assert fit.warnings == []
        assert abs(fit.params["alpha"] - TRUE["alpha"]) < 0.05 and abs(fit.params["beta"] - TRUE["beta"]) < 0.05
        lo, hi = fit.predict_interval(3e8, 3e9)
        assert lo <= law(TRUE, 3e8, 3e9) <= hi


def test_intervals_shrink_with_more_points(noisy_fits):
    def mean_width(fits):
        return np.mean([(f.intervals[p][1] - f.intervals[p][0]) / TRUE[p]
                        for f in fits for p in ("E", "alpha", "beta")])

    assert mean_width(noisy_fits[6]) < 0.5 * mean_width(noisy_fits[3])


def test_noisy_power_law_covers_the_truth():
    true = {"E": 2.0, "A": 50.0, "alpha": 0.3}
    N = np.logspace(5, 9, 10)
    covered = []
    for seed in (0, 1):
        L = law(true, N) * np.exp(0.01 * np.random.default_rng(seed).standard_normal(N.shape))
        fit = fit_power_law(N, L, n_boot=100, seed=seed)
        covered += [fit.intervals[p][0] <= true[p] <= fit.intervals[p][1] for p in ("E", "alpha")]
        assert fit.boot.shape == (100, 3)
    assert all(covered), covered


def test_bootstrap_is_seeded():
    N, D, L = grid_points(3, seed=0)
    a, b, c = (fit_joint(N, D, L, n_boot=10, seed=s) for s in (5, 5, 6))
    assert np.array_equal(a.boot, b.boot) and a.intervals == b.intervals
    assert not np.array_equal(a.boot, c.boot)


def test_compute_optimal_matches_brute_force():
    """The closed form against a grid over N on the constraint k N D = C."""
    N_grid = np.logspace(3, 16, 1_000_001)
    for C in (1e17, 1e19, 1e22):
        N_opt, D_opt, L_opt = optimal_allocation(TRUE, C, K)
        L_grid = law(TRUE, N_grid, C / (K * N_grid))
        i = int(np.argmin(L_grid))
        assert 0 < i < len(N_grid) - 1  # an interior minimum, not the grid's edge
        assert N_opt == pytest.approx(N_grid[i], rel=1e-4)
        assert L_opt == pytest.approx(L_grid[i], rel=1e-9)
        assert K * N_opt * D_opt == pytest.approx(C, rel=1e-12)
    budgets = np.array([1e17, 1e24])
    alloc = compute_optimal(fit_joint(*grid_points(4), n_boot=8), budgets, k=K)
    assert alloc.exponent_N == pytest.approx(TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"]), rel=1e-6)
    assert alloc.N_opt == pytest.approx(optimal_allocation(TRUE, budgets, K)[0], rel=1e-4)
    for name, values in (("N_opt", alloc.N_opt), ("D_opt", alloc.D_opt), ("L_opt", alloc.L_opt)):
        lo, hi = alloc.intervals[name]
        assert np.all(lo <= values * (1 + 1e-6)) and np.all(values <= hi * (1 + 1e-6)), name
    assert alloc.extrapolation == pytest.approx(budgets / (K * 1e9 * 1e10))
    assert any("50x the largest" in w for w in alloc.warnings), alloc.warnings


def test_isoflop_vertex_matches_brute_force():
    """Five sizes half a decade apart per budget, off-centre from the optimum as a real sweep's presets are:
    the parabola's vertex lands near the law's true minimum along the budget, and N*(C) grows as
    C^(beta/(alpha+beta))."""
    budgets = [1e16, 1e17, 1e18, 1e19]
    N_fine = np.logspace(3, 14, 200_001)
    Ns, Cs, Ls, truth = [], [], [], []
    for j, C in enumerate(budgets):
        L_fine = law(TRUE, N_fine, C / (K * N_fine))
        truth.append(N_fine[np.argmin(L_fine)])
        sizes = truth[-1] * np.logspace(-1.0, 1.0, 5) * 10 ** (0.15 * (j % 2))
        jitter = 1 + 0.01 * np.cos(np.arange(5))  # measured FLOPs differ a little within a budget
        Ns += list(sizes)
        Cs += list(C * jitter)
        Ls += list(law(TRUE, sizes, C * jitter / (K * sizes)))
    result = isoflop(Ns, Cs, Ls)
    assert [len(g.N) for g in result.groups] == [5] * 4 and all(g.ok for g in result.groups)
    for g, n_true in zip(result.groups, truth):
        assert g.N_star == pytest.approx(n_true, rel=0.1)
        L_true = law(TRUE, n_true, g.C / (K * n_true))
        assert g.L_star == pytest.approx(L_true, rel=0.01)
    assert result.exponent == pytest.approx(TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"]), abs=0.02)
    assert result.warnings == []


def test_parabola_vertex_is_the_fitted_parabolas_minimum():
    rng = np.random.default_rng(0)
    N = np.logspace(6, 8, 7)
    L = 3 + 0.05 * (np.log(N) - np.log(2e7)) ** 2 + 0.01 * rng.standard_normal(7)
    n_star, l_star, curvature = parabola_vertex(N, L)
    c2, c1, c0 = np.polyfit(np.log(N), L, 2)
    x = np.linspace(np.log(N[0]), np.log(N[-1]), 100_001)
    i = int(np.argmin(np.polyval([c2, c1, c0], x)))
    assert curvature > 0 and np.log(n_star) == pytest.approx(x[i], abs=1e-4)
    assert l_star == pytest.approx(np.polyval([c2, c1, c0], x[i]), abs=1e-9)


def test_isoflop_flags_groups_it_cannot_use():
    N = [1e6, 1e7, 1e8, 1e6, 1e7]
    C = [1e17, 1.02e17, 0.99e17, 1e19, 1e19]
    L = [3.0, 2.0, 2.5, 3.0, 2.9]  # the second budget has only two sizes
    result = isoflop(N, C, L)
    assert [sorted(g) for g in group_by_flops(C)] == [[0, 1, 2], [3, 4]]
    assert len(result.groups) == 1 and result.exponent is None
    assert any("2 distinct N" in w for w in result.warnings)
    edge = isoflop([1e6, 1e7, 1e8], [1e17] * 3, [3.0, 2.5, 2.2])  # still falling at the largest size
    assert not edge.groups[0].ok and any("no minimum inside" in w for w in edge.warnings)


def test_warning_for_an_under_constrained_fit():
    N, D, L = grid_points(4, seed=0)
    fit = fit_joint(N[:3], D[:3], L[:3], n_boot=20)
    assert any("3 points for 5 parameters" in w for w in fit.warnings), fit.warnings


def test_warning_for_an_exponent_at_its_bound():
    N = np.logspace(6, 7, 8)
    L = 2.0 + 5.0 * (N / 1e6) ** -4.0  # steeper than the default bound of 3 allows
    fit = fit_power_law(N, L, n_boot=20)
    assert fit.at_bound == ["alpha"] and fit.params["alpha"] == pytest.approx(3.0)
    assert any("alpha" in w and "bound" in w for w in fit.warnings), fit.warnings
    fit = fit_power_law(N, L, n_boot=20, exponent_bounds=(0.0, 6.0))
    assert fit.at_bound == [] and fit.params["alpha"] == pytest.approx(4.0, rel=1e-4)


def test_points_from_rows_fits_done_points_and_lists_the_rest():
    def row(i, status="done", **kw):
        return {"point": i, "status": status, "params_trunk": 1e7 * (i + 1), "samples": 1e9, "train_flops": 2e19,
                "final_loss": 3.0 - 0.1 * i, "val_loss": 3.1 - 0.1 * i, **kw}

    rows = [row(0), row(1), row(2, "running"), row(3, "failed (no result.json; see logs/point-3-*.out)"),
            row(4, params_trunk=None), row(5, val_loss=None, final_loss=float("nan")), row(6, "stopped_bad_steps")]
    pts = points_from_rows(rows)
    assert pts.point == [0, 1] and pts.loss_key == "val_loss"
    assert list(pts.L) == [3.1, 3.0] and list(pts.N) == [1e7, 2e7]
    assert pts.k == pytest.approx([2000.0, 1000.0])
    assert [p for p, _ in pts.skipped] == [2, 3, 4, 5, 6]
    assert dict(pts.skipped)[4] == "done but no positive params_trunk in result.json"
    assert dict(pts.skipped)[2] == "status running"
    # One done point without a validation loss: every point falls back to the final training loss, and a
    # point with only a validation loss is then listed, not fitted.
    pts = points_from_rows([row(0), row(1, val_loss=None), row(2, final_loss=None)])
    assert pts.loss_key == "final_loss" and list(pts.L) == [3.0, 2.9] and [p for p, _ in pts.skipped] == [2]
    # With the mean training loss of the last logging interval (what genlip-train writes), that is preferred
    # to one step's loss; when one point lacks it (an older result.json), every point uses the step's loss.
    rows = [row(i, val_loss=None, train_loss_last_interval=2.5 - 0.1 * i) for i in range(3)]
    pts = points_from_rows(rows)
    assert pts.loss_key == "train_loss_last_interval" and list(pts.L) == pytest.approx([2.5, 2.4, 2.3])
    pts = points_from_rows(rows + [row(3, val_loss=None)])
    assert pts.loss_key == "final_loss" and list(pts.L) == pytest.approx([3.0, 2.9, 2.8, 2.7]) and not pts.skipped


def sweep_rows(N, D, L, k):
    return [{"point": i, "status": "done", "params_trunk": n, "samples": d, "train_flops": kk * n * d,
             "final_loss": loss + 0.05, "val_loss": loss} for i, (n, d, loss, kk) in enumerate(zip(N, D, L, k))]


def test_analyse_fits_what_the_rows_support():
    """gather()-style rows in, the right fit out: joint with an allocation when N and D vary, a power law in N
    when D is fixed; unfinished points listed, not fitted."""
    N, D, L = grid_points(4, seed=0)
    k = np.where(N > 1e8, 1400.0, 2200.0)  # larger presets spend fewer FLOPs per trunk parameter
    rows = sweep_rows(N, D, L, k) + [{"point": 16, "status": "running"}]
    result = analyse(rows, target_flops=1e23, n_boot=10)
    assert result.points.skipped == [(16, "status running")] and result.points.loss_key == "val_loss"
    assert set(result.fit.params) == set(TRUE) and result.k == 2200.0
    assert result.allocation.C == pytest.approx([1e23])
    # The grid's anti-diagonals share N D: the groups with three sizes or more get parabolas.
    assert result.isoflop.groups and all(len(g.N) >= 3 for g in result.isoflop.groups)
    assert any("1 of 17 points not fitted" in w for w in result.warnings)
    assert result.k_range == (1400.0, 2200.0)
    assert any("range 1400..2200" in w for w in result.warnings), result.warnings
    sizes = np.logspace(6, 9, 6)
    rows = sweep_rows(sizes, np.full(6, 1e9), law({"E": 2.0, "A": 50.0, "alpha": 0.3}, sizes), [2000.0] * 6)
    result = analyse(rows, target_flops=[1e21], n_boot=10)
    assert set(result.fit.params) == {"E", "A", "alpha"} and result.fit.params["alpha"] == pytest.approx(0.3, rel=1e-4)
    assert result.allocation is None and result.isoflop is None
    assert [w for w in result.warnings if "range" in w] == []  # one k
    assert any("vary D as well" in w for w in result.warnings)


def test_isoflop_needs_a_measured_size_beyond_the_best_one():
    """Real tiny sweep (3 widths at 1.6e11 FLOPs): the loss rises with size, yet the parabola through the three
    points puts its vertex just inside the range. The smallest size is the best: no minimum was measured."""
    result = isoflop([48224, 141504, 463232], [1.605e11, 1.587e11, 1.605e11], [0.7011, 1.021, 2.707])
    g = result.groups[0]
    assert 48224 <= g.N_star <= 463232  # the vertex alone would pass
    assert not g.ok and result.exponent is None
    assert any("the smallest size has the lowest loss" in w for w in result.warnings)


def test_n_opt_interval_reaching_zero_is_said_in_words():
    """Bootstrap refits with alpha at 0 give N_opt = 0: the warning says so instead of 'a factor of inf'
    (and no divide-by-zero RuntimeWarning)."""
    import warnings as w

    N, D, L = grid_points(4, seed=0)
    fit = fit_joint(N, D, L, n_boot=20)
    fit.boot[:5, list(fit.params).index("alpha")] = 0.0
    with w.catch_warnings():
        w.simplefilter("error")
        alloc = compute_optimal(fit, 1e21, k=K)
    assert alloc.intervals["N_opt"][0][0] == 0
    assert any("interval reaches 0" in x for x in alloc.warnings)
    assert not any("factor of inf" in x for x in alloc.warnings)


def _isoflop_rows(centres, loss):
    """Rows of five sizes half a decade apart around centres[C] per budget C, losses loss(N, C)."""
    pairs = [(n, c) for c, centre in centres.items() for n in centre * np.logspace(-1, 1, 5)]
    N, C = (np.array(v) for v in zip(*pairs))
    return sweep_rows(N, C / (K * N), loss(N, C), [K] * len(N))


def test_fit_and_isoflop_disagreement_is_flagged_only_when_they_disagree():
    """The joint law and the isoFLOP parabolas read the same points twice. On points from the law they name the
    same best sizes (no warning); when each budget's best size shrinks with compute, which no law of the form
    E + A/N^alpha + B/D^beta can give, the report says where and by how much they part."""
    N_fine = np.logspace(3, 14, 200_001)
    budgets = [1e16, 1e17, 1e18, 1e19]
    centres = {C: N_fine[np.argmin(law(TRUE, N_fine, C / (K * N_fine)))] for C in budgets}
    agree = analyse(_isoflop_rows(centres, lambda N, C: law(TRUE, N, C / (K * N))), n_boot=10)
    assert all(g.ok for g in agree.isoflop.groups) and len(agree.isoflop.groups) == 4
    assert not [w for w in agree.warnings if "apart" in w or "isoFLOP minima" in w], agree.warnings

    def best(C):  # shrinks as C^-0.3
        return 1e8 * (np.asarray(C) / 1e16) ** -0.3

    part = analyse(_isoflop_rows({C: best(C) for C in budgets},
                                 lambda N, C: 2.0 + 0.05 * np.log(N / best(C)) ** 2 + 5 * C ** -0.05), n_boot=10)
    assert part.isoflop.exponent == pytest.approx(-0.3, abs=1e-6)
    apart = [w for w in part.warnings if "apart" in w]
    assert apart and apart[0].startswith("C = 1e+16: the joint fit puts N_opt at")
    assert "isoFLOP parabola at 1e+08" in apart[0]
    assert any("across the isoFLOP minima" in w and "C^-0.3" in w for w in part.warnings), part.warnings
