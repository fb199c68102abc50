"""Maths of the cone numerics: closed forms, brute-force references, cvxpy."""

import warnings

import cvxpy as cp
import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.exceptions import ConvergenceWarning

from deepblur.solvers import cone
from deepblur.solvers.cone import (
    SOCP_SOLVERS,
    circumcenter,
    cone_distance_bounds,
    cone_nnls,
    draw_cone_weights,
    greedy_rays,
    project_cone,
    sample_cone,
    sample_cone_torch,
    simplify_cone,
)

INSTALLED_SOCP = [s for s in SOCP_SOLVERS if s in cp.installed_solvers()]
FEW = settings(max_examples=20, deadline=None)


def unit_rows(X):
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def random_orthogonal(rng, k):
    q, r = np.linalg.qr(rng.standard_normal((k, k)))
    return q * np.sign(np.diag(r))


def cvxpy_circumcenter(X):
    """The program on all rows at once, without constraint generation."""
    U = unit_rows(X)
    x, t = cp.Variable(U.shape[1]), cp.Variable()
    cp.Problem(cp.Maximize(t), [U @ x >= t, cp.norm(x, 2) <= 1]).solve(
        solver=INSTALLED_SOCP[0]
    )
    return x.value / np.linalg.norm(x.value), float(t.value)


def brute_force_algorithm1(X, n_rays, center):
    """Algorithm 1 written as in the paper, with explicit angles and sets."""
    U = unit_rows(X)
    kept = [np.asarray(center)]
    to_explore = list(range(len(U)))
    chosen = []
    for _ in range(n_rays):
        best, best_angle = None, -np.inf
        for p in to_explore:  # increasing index: ties go to the lowest
            angle = min(np.arccos(np.clip(np.dot(U[p], r), -1, 1)) for r in kept)
            if angle > best_angle:
                best, best_angle = p, angle
        to_explore.remove(best)
        kept.append(U[best])
        chosen.append(best)
    return np.array(chosen)


def revolution_cone(rng, k, half_angle, n):
    """``n`` rays on the boundary of a revolution cone with a random axis."""
    axis = unit_rows(rng.standard_normal((1, k)))[0]
    v = rng.standard_normal((n, k))
    v -= np.outer(v @ axis, axis)
    v = unit_rows(v)
    return axis, np.cos(half_angle) * axis + np.sin(half_angle) * v


# --- circumcenter -------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 5, 20])
def test_circumcenter_positive_orthant(k):
    center, radius = circumcenter(np.eye(k))
    np.testing.assert_allclose(center, np.full(k, 1 / np.sqrt(k)), atol=1e-6)
    np.testing.assert_allclose(radius, np.arccos(1 / np.sqrt(k)), atol=1e-6)


def test_circumcenter_orthant_with_interior_rows():
    # Rows inside the orthant change nothing; the scale of rows neither.
    rng = np.random.default_rng(0)
    k = 6
    X = np.vstack([3.0 * np.eye(k), rng.uniform(0.1, 1.0, size=(500, k))])
    center, radius = circumcenter(X)
    np.testing.assert_allclose(center, np.full(k, 1 / np.sqrt(k)), atol=1e-6)
    np.testing.assert_allclose(radius, np.arccos(1 / np.sqrt(k)), atol=1e-6)


@pytest.mark.parametrize("half_angle", [0.05, 0.6, 1.3])
@pytest.mark.parametrize("k", [3, 8])
def test_circumcenter_revolution_cone(k, half_angle):
    rng = np.random.default_rng(k)
    axis, X = revolution_cone(rng, k, half_angle, 3000)
    center, radius = circumcenter(X)
    np.testing.assert_allclose(center, axis, atol=1e-4)
    np.testing.assert_allclose(radius, half_angle, atol=1e-7)


def test_circumcenter_two_rays_in_the_plane_is_the_bisector():
    a, b = 0.3, 1.9
    X = np.array([[np.cos(a), np.sin(a)], [np.cos(b), np.sin(b)]])
    center, radius = circumcenter(X)
    m = (a + b) / 2
    np.testing.assert_allclose(center, [np.cos(m), np.sin(m)], atol=1e-6)
    np.testing.assert_allclose(radius, (b - a) / 2, atol=1e-7)


def test_circumcenter_constraint_generation_matches_the_full_program():
    # 5000 rows: far more than the first subset, so rows get added.
    rng = np.random.default_rng(1)
    X = np.abs(rng.standard_normal((5000, 7))) + 0.01
    center, radius = circumcenter(X)
    ref_center, ref_t = cvxpy_circumcenter(X)
    np.testing.assert_allclose(np.cos(radius), ref_t, atol=1e-7)
    np.testing.assert_allclose(center, ref_center, atol=1e-4)
    # The radius is the data's: the farthest row sits exactly at it.
    np.testing.assert_allclose(
        (unit_rows(X) @ center).min(), np.cos(radius), rtol=0, atol=1e-14
    )


@pytest.mark.parametrize("solver", INSTALLED_SOCP)
def test_circumcenter_each_installed_solver_agrees(solver):
    center, radius = circumcenter(np.eye(4), solver=solver)
    np.testing.assert_allclose(center, np.full(4, 0.5), atol=1e-4)
    np.testing.assert_allclose(radius, np.pi / 3, atol=1e-4)


@FEW
@given(
    X=arrays(np.float64, (12, 4), elements=st.floats(0.05, 10.0)),
    seed=st.integers(0, 2**16),
)
def test_circumcenter_rotation_equivariance(X, seed):
    Q = random_orthogonal(np.random.default_rng(seed), 4)
    center, radius = circumcenter(X)
    center_q, radius_q = circumcenter(X @ Q.T)
    np.testing.assert_allclose(radius_q, radius, atol=1e-6)
    # Every row lies within the radius of the axis, and one on the boundary.
    cosines = unit_rows(X) @ center
    assert cosines.min() == pytest.approx(np.cos(radius), abs=1e-12)
    # The axis itself is unique when the cone is not degenerate; compare the
    # cosine to the rotated axis rather than coordinates.
    assert float(center_q @ (Q @ center)) > 1 - 1e-6


@pytest.mark.parametrize(
    "X",
    [
        np.array([[1.0, 2.0], [-1.0, -2.0]]),  # opposite rows
        np.vstack([np.eye(3), -np.eye(3)]),  # the whole space
        np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]),  # a half-plane
    ],
)
def test_circumcenter_not_pointed(X):
    with pytest.raises(ValueError, match=r"not pointed.*pi/2 \(90 degrees\)"):
        circumcenter(X)


def test_circumcenter_bad_rows():
    with pytest.raises(ValueError, match="X must have no zero rows.*index 1"):
        circumcenter(np.array([[1.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="X must contain only finite"):
        circumcenter(np.array([[1.0, np.nan], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="X must be a 2-D array"):
        circumcenter(np.ones(3))


@pytest.mark.parametrize("scale", [1e-200, 1e-165, 1e160, 1e200])
def test_circumcenter_and_simplify_at_any_magnitude(scale):
    """The cone depends on the rows' directions only: rows scaled by 1e-165
    were refused as zero rows (their sum of squares underflowed), by 1e160 as
    "not pointed" (it overflowed)."""
    X = np.array([[1.0, 0.2], [0.3, 1.0], [0.6, 0.6]])
    center, radius = circumcenter(X)
    got_center, got_radius = circumcenter(X * scale)
    np.testing.assert_allclose(got_center, center, rtol=1e-9)
    assert got_radius == pytest.approx(radius, rel=1e-9)
    rays, indices, _, _ = simplify_cone(X * scale, 2)
    np.testing.assert_array_equal(indices, simplify_cone(X, 2)[1])
    np.testing.assert_allclose(rays, unit_rows(X[indices]), rtol=1e-12)


def test_circumcenter_solver_not_installed(monkeypatch):
    monkeypatch.setattr(cp, "installed_solvers", lambda: ["SCS", "OSQP"])
    with pytest.raises(ValueError, match=r"solver='CLARABEL' is not installed.*SCS"):
        circumcenter(np.eye(2), solver="CLARABEL")
    with pytest.raises(ValueError, match="solver must be None or one of"):
        circumcenter(np.eye(2), solver="OSQP")
    monkeypatch.setattr(cp, "installed_solvers", lambda: ["OSQP"])
    with pytest.raises(RuntimeError, match=r"solver=None.*installed.*OSQP"):
        circumcenter(np.eye(2))


def test_circumcenter_solver_failure_names_the_solvers(monkeypatch):
    def fail(self, *args, **kwargs):
        raise cp.error.SolverError(f"boom from {kwargs.get('solver')}")

    monkeypatch.setattr(cp.Problem, "solve", fail)
    with pytest.raises(RuntimeError) as info:
        circumcenter(np.eye(3))
    message = str(info.value)
    for name in INSTALLED_SOCP:
        assert f"{name} raised SolverError: boom from {name}" in message
    assert "installed cvxpy solvers" in message
    assert "`solver` parameter" in message


# --- greedy simplification ----------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_greedy_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    P, K = rng.integers(5, 25), rng.integers(2, 6)
    X = rng.uniform(0.0, 1.0, size=(P, K)) + 0.01
    n_rays = int(rng.integers(1, P + 1))
    rays, indices, center, radius = simplify_cone(X, n_rays)
    np.testing.assert_array_equal(indices, brute_force_algorithm1(X, n_rays, center))
    np.testing.assert_array_equal(greedy_rays(unit_rows(X), n_rays, center=center),
                                  indices)
    np.testing.assert_allclose(rays, unit_rows(X[indices]))


@FEW
@given(
    P=st.integers(1, 30),
    K=st.integers(1, 5),
    data=st.data(),
    seed=st.integers(0, 2**16),
)
def test_greedy_matches_brute_force_any_center(P, K, data, seed):
    # greedy_rays on its own, for any rows (signs mixed) and any unit center.
    # Continuous random rows: exact ties, where the two implementations could
    # legitimately round differently, have probability zero.
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((P, K))
    center = unit_rows(rng.standard_normal((1, K)))[0]
    n_rays = data.draw(st.integers(1, P))
    np.testing.assert_array_equal(
        greedy_rays(unit_rows(X), n_rays, center=center),
        brute_force_algorithm1(X, n_rays, center),
    )


def test_greedy_first_ray_sits_at_the_circumradius():
    rng = np.random.default_rng(3)
    X = rng.uniform(0.1, 1.0, size=(300, 5))
    rays, indices, center, radius = simplify_cone(X, 4)
    np.testing.assert_allclose(np.arccos(rays[0] @ center), radius, atol=1e-12)
    # Positive rescaling of the rows changes nothing.
    scaled = simplify_cone(X * rng.uniform(0.5, 3.0, size=(300, 1)), 4)
    np.testing.assert_array_equal(scaled[1], indices)


def test_greedy_keeps_extreme_rays_first():
    # The orthant's edges, hidden among interior rows, are kept first.
    rng = np.random.default_rng(4)
    K = 4
    X = np.vstack([rng.uniform(0.2, 1.0, size=(50, K)), np.eye(K)])
    _, indices, _, _ = simplify_cone(X, K)
    assert sorted(indices) == list(range(50, 50 + K))


def test_greedy_warns_on_repeated_directions():
    X = np.vstack([np.eye(3), 2 * np.eye(3)])
    with pytest.warns(UserWarning, match=r"n_rays=5: 2 of the kept rays repeat"):
        simplify_cone(X, 5)


def test_greedy_counts_repeats_of_kept_rays_only():
    """The count took the first ray's cosine to the circumcenter (not a kept
    ray) for a repeat: one row and n_rays=1 warned, K=1 and 2 rays said 2 of
    them repeat; a row along the circumcenter kept after the extreme rays
    was a "repeat" too."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        simplify_cone(np.array([[1.0, 2.0]]), 1)
        _, indices, _, _ = simplify_cone(np.array([[1.0, 0.0], [0.0, 1.0],
                                                   [1.0, 1.0]]), 3)
    assert sorted(indices[:2]) == [0, 1] and indices[2] == 2
    with pytest.warns(UserWarning, match=r"n_rays=2: 1 of the kept rays repeat"):
        simplify_cone(np.array([[1.0], [2.0], [3.0]]), 2)


def test_greedy_bad_arguments():
    U = np.eye(3)
    with pytest.raises(ValueError, match=r"n_rays=4 must not exceed.*n_samples=3"):
        greedy_rays(U, 4, center=np.ones(3) / np.sqrt(3))
    with pytest.raises(ValueError, match="n_rays must be a positive int"):
        greedy_rays(U, 0, center=np.ones(3) / np.sqrt(3))
    with pytest.raises(ValueError, match=r"center must have shape \(3,\)"):
        greedy_rays(U, 2, center=np.ones(2))


def test_simplify_does_not_modify_its_input():
    X = np.random.default_rng(5).uniform(0.1, 1.0, size=(40, 3))
    before = X.copy()
    simplify_cone(X, 5)
    np.testing.assert_array_equal(X, before)


# --- non-negative least squares ------------------------------------------------


def test_cone_nnls_matches_cvxpy_projection():
    rng = np.random.default_rng(6)
    rays = rng.uniform(0.0, 1.0, size=(8, 5))
    X = rng.standard_normal((6, 5))
    W, residuals = cone_nnls(X, rays)
    assert W.shape == (6, 8) and (W >= 0).all()
    np.testing.assert_allclose(
        residuals, np.linalg.norm(X - W @ rays, axis=1), atol=1e-12
    )
    for x, r in zip(X, residuals, strict=True):
        w = cp.Variable(8, nonneg=True)
        cp.Problem(cp.Minimize(cp.sum_squares(w @ rays - x))).solve(
            solver=INSTALLED_SOCP[0]
        )
        np.testing.assert_allclose(r, np.linalg.norm(w.value @ rays - x), atol=1e-6)


def test_cone_nnls_is_exact_inside_the_cone():
    rng = np.random.default_rng(7)
    rays = unit_rows(rng.uniform(0.0, 1.0, size=(30, 6)))  # more rays than K
    W_true = rng.uniform(size=(100, 30)) * (rng.uniform(size=(100, 30)) < 0.2)
    W, residuals = cone_nnls(W_true @ rays, rays)
    assert residuals.max() < 1e-10
    np.testing.assert_allclose(W @ rays, W_true @ rays, atol=1e-10)


def test_cone_nnls_reports_non_convergence(monkeypatch):
    def fail(A, b, maxiter=None):
        raise RuntimeError("Maximum number of iterations reached.")

    monkeypatch.setattr(cone.scipy.optimize, "nnls", fail)
    with pytest.raises(RuntimeError, match=r"row 0 of X on the 2 rays did not"):
        cone_nnls(np.ones((1, 2)), np.eye(2))


def test_cone_nnls_shape_mismatch():
    with pytest.raises(ValueError, match="rays must have 3 columns"):
        cone_nnls(np.ones((2, 3)), np.ones((4, 2)))


# --- projection on the cone and on its sampled slab -----------------------------


def _random_metric(rng, K):
    A = rng.standard_normal((K, K))
    return A @ A.T + 0.1 * np.eye(K)


@pytest.mark.parametrize("metric", [False, True])
def test_project_cone_matches_cvxpy(metric):
    """Same optimal distance and a feasible point, rows inside and outside."""
    rng = np.random.default_rng(8)
    K, R, lo, hi = 5, 12, 0.8, 1.2
    rays = unit_rows(rng.uniform(0.0, 1.0, size=(R, K)))
    G = _random_metric(rng, K) if metric else np.eye(K)
    X = np.vstack([
        rng.standard_normal((6, K)),                     # mostly outside the cone
        sample_cone(rays, 4, alpha_range=(lo, hi), random_state=0),  # inside
        3.0 * sample_cone(rays, 3, alpha_range=(lo, hi), random_state=1),  # sum > hi
        0.2 * sample_cone(rays, 3, alpha_range=(lo, hi), random_state=2),  # sum < lo
    ])
    P, W = project_cone(X, rays, alpha_range=(lo, hi), gram=G if metric else None)
    assert (W >= 0).all()
    assert W.sum(axis=1).min() >= lo - 1e-12 and W.sum(axis=1).max() <= hi + 1e-12
    np.testing.assert_allclose(P, W @ rays, atol=1e-12)
    L = np.linalg.cholesky(G)
    for x, p in zip(X, P, strict=True):
        w = cp.Variable(R, nonneg=True)
        problem = cp.Problem(cp.Minimize(cp.sum_squares(L.T @ (rays.T @ w - x))),
                             [cp.sum(w) >= lo, cp.sum(w) <= hi])
        problem.solve(solver=INSTALLED_SOCP[0])
        d = p - x
        np.testing.assert_allclose(d @ G @ d, problem.value, rtol=1e-6, atol=1e-8)
    # points of the slab are fixed points; scaled ones land on the bounds
    np.testing.assert_allclose(P[6:10], X[6:10], atol=1e-10)
    np.testing.assert_allclose(W[10:13].sum(axis=1), hi, rtol=1e-12)
    np.testing.assert_allclose(W[13:].sum(axis=1), lo, rtol=1e-12)


def test_project_cone_without_range_is_cone_nnls():
    rng = np.random.default_rng(9)
    rays = rng.uniform(0.0, 1.0, size=(8, 5))
    X = rng.standard_normal((10, 5))
    P, W = project_cone(X, rays)
    W_ref, _ = cone_nnls(X, rays)
    np.testing.assert_allclose(P, W_ref @ rays, atol=1e-12)


@FEW
@given(seed=st.integers(0, 2**16), K=st.integers(2, 6), R=st.integers(2, 14),
       scale=st.floats(0.05, 5.0))
def test_project_cone_never_moves_away_from_the_slab(seed, K, R, scale):
    """Non-expansive towards every sample of Algorithm 2 (same alpha range)."""
    rng = np.random.default_rng(seed)
    rays = unit_rows(rng.uniform(0.0, 1.0, size=(R, K)))
    G = _random_metric(rng, K)
    z = sample_cone(rays, 20, alpha_range=(0.8, 1.2), random_state=seed)
    X = scale * rng.standard_normal((20, K)) + z
    P, _ = project_cone(X, rays, alpha_range=(0.8, 1.2), gram=G)

    def dist(a, b):
        return np.sqrt(np.einsum("nk,kl,nl->n", a - b, G, a - b))

    assert (dist(P, z) <= dist(X, z) + 1e-9).all()


def _relative_distances(X, rays, alpha_range, G):
    P, _ = project_cone(X, rays, alpha_range=alpha_range, gram=G)
    num = np.einsum("nk,kl,nl->n", X - P, G, X - P)
    den = np.einsum("nk,kl,nl->n", P, G, P)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(np.maximum(num, 0) / den)


@FEW
@given(seed=st.integers(0, 2**16), K=st.integers(2, 6), R=st.integers(2, 14),
       scale=st.floats(0.0, 3.0), n_iter=st.sampled_from([0, 1, 7, 25, 200]),
       bounded=st.booleans())
def test_cone_distance_bounds_hold_after_any_number_of_steps(
        seed, K, R, scale, n_iter, bounded):
    """lower <= the exact relative distance (project_cone) <= upper, for
    points inside and outside the slab or the cone, in a random metric."""
    rng = np.random.default_rng(seed)
    rays = unit_rows(rng.uniform(0.0, 1.0, size=(R, K)))
    G = _random_metric(rng, K)
    alpha = (0.8, 1.2) if bounded else None
    X = (sample_cone(rays, 12, alpha_range=(0.8, 1.2), random_state=seed)
         * rng.uniform(0.3, 2.0, size=(12, 1))
         + scale * rng.standard_normal((12, K)))
    exact = _relative_distances(X, rays, alpha, G)
    lower, upper = cone_distance_bounds(X, rays, alpha_range=alpha, gram=G,
                                        n_iter=n_iter)
    assert lower.dtype == upper.dtype == np.float64
    assert (lower >= 0).all()
    assert (lower <= exact + 1e-9).all(), (lower - exact).max()
    assert (upper >= exact - 1e-9).all(), (exact - upper).max()


def test_cone_distance_bounds_are_tight_inside_and_settle_a_tolerance():
    rng = np.random.default_rng(3)
    K, R, lo, hi = 6, 14, 0.8, 1.2
    rays = unit_rows(rng.uniform(0.0, 1.0, size=(R, K)))
    G = _random_metric(rng, K)
    inside = sample_cone(rays, 50, alpha_range=(lo, hi), random_state=0)
    far = inside + rng.standard_normal((50, K))
    X = np.vstack([inside, far])
    exact = _relative_distances(X, rays, (lo, hi), G)
    lower, upper = cone_distance_bounds(X, rays, alpha_range=(lo, hi), gram=G,
                                        n_iter=400)
    assert exact[:50].max() < 1e-8
    assert np.median(upper[:50]) < 1e-4 and upper[:50].max() < 1e-2
    # far points: both bounds within a factor of the truth
    assert (lower[50:] > 0.25 * exact[50:]).all()
    assert (upper[50:] < 4 * exact[50:]).all()
    # with a tol, each row stops once its bounds settle it, and what they
    # settle agrees with the exact distance
    tol = float(np.median(exact[50:]))
    lo_t, up_t = cone_distance_bounds(X, rays, alpha_range=(lo, hi), gram=G,
                                      n_iter=400, tol=tol)
    near, beyond = up_t <= tol, lo_t > tol
    assert near[:50].all() and beyond.sum() > 10
    assert (exact[near] <= tol).all() and (exact[beyond] > tol).all()
    assert (lo_t <= exact + 1e-9).all() and (up_t >= exact - 1e-9).all()
    # without a range: the bounds of the cone
    exact_cone = _relative_distances(X, rays, None, G)
    lower, upper = cone_distance_bounds(X, rays, gram=G, n_iter=400)
    assert (lower <= exact_cone + 1e-9).all() and (upper >= exact_cone - 1e-9).all()
    assert np.median(upper[:50]) < 1e-4


@FEW
@given(seed=st.integers(0, 2**16), m=st.integers(1, 12),
       spread=st.floats(0.01, 3.0))
def test_weight_projection_is_project_cone_on_the_unit_rays(seed, m, spread):
    """The branch-free projection on {w >= 0, lo <= sum(w) <= hi} against
    the active-set solver on the identity rays (CPU's row-selecting path and
    the sort-every-row path of a GPU alike)."""
    from deepblur.solvers.cone import _project_weights, _project_weights_sorted

    rng = np.random.default_rng(seed)
    V = rng.normal(0.1, spread, size=(30, m))
    ref, _ = project_cone(V, np.eye(m), alpha_range=(0.8, 1.2))
    Vt = torch.as_tensor(V)
    np.testing.assert_allclose(_project_weights(Vt, 0.8, 1.2).numpy(), ref,
                               atol=1e-10)
    np.testing.assert_allclose(_project_weights_sorted(Vt, 0.8, 1.2).numpy(), ref,
                               atol=1e-10)
    np.testing.assert_allclose(_project_weights(Vt, None, None).numpy(),
                               np.maximum(V, 0))


def test_cone_distance_bounds_bad_arguments():
    rays = np.eye(3)
    X = np.ones((2, 3))
    for bad in (-1, 2.5, True, "10"):
        with pytest.raises(ValueError, match="n_iter must be a non-negative "
                                             "integer"):
            cone_distance_bounds(X, rays, n_iter=bad)
    for bad in (-0.1, np.nan, True, "0.1"):
        with pytest.raises(ValueError, match="tol must be a non-negative number"):
            cone_distance_bounds(X, rays, tol=bad)
    for bad in ("gpu", 3.5):
        with pytest.raises(ValueError, match="device must be a torch device"):
            cone_distance_bounds(X, rays, device=bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            cone_distance_bounds(X, rays, device="cuda")
    with pytest.raises(ValueError, match="rays must have 3 columns"):
        cone_distance_bounds(X, np.ones((4, 2)))
    with pytest.raises(ValueError, match="alpha_min < alpha_max"):
        cone_distance_bounds(X, rays, alpha_range=(1.2, 0.8))
    with pytest.raises(ValueError, match=r"gram must be a \(3, 3\) matrix"):
        cone_distance_bounds(X, rays, gram=np.eye(2))
    with pytest.raises(ValueError, match="X"):
        cone_distance_bounds(np.array([[np.nan, 0.0, 0.0]]), rays)
    # the origin is at relative distance 1 from the slab: bounded by p_min
    lower, upper = cone_distance_bounds(np.zeros((1, 3)), rays,
                                        alpha_range=(0.8, 1.2))
    assert 0 <= lower[0] <= 1 + 1e-12 and upper[0] == pytest.approx(1.0)
    # ... and 0/0 from the cone, which holds it: no finite upper bound
    lower, upper = cone_distance_bounds(np.zeros((1, 3)), rays)
    assert upper[0] == np.inf and lower[0] == 0
    assert [len(b) for b in cone_distance_bounds(np.zeros((0, 3)), rays)] == [0, 0]


@pytest.mark.filterwarnings("ignore:The projection of row 0:sklearn.exceptions."
                            "ConvergenceWarning")    # the reference, at 1e16
def test_cone_distance_bounds_at_the_limits_of_floating_point():
    """A sum bound below the rounding of the weights (the simplex threshold's
    first index then fails in floating point) and points 1e16 times the rays:
    bounds, not an out-of-range index (a device-side assert on a GPU)."""
    from deepblur.solvers.cone import _project_weights_sorted

    rays = np.eye(3)
    for X, alpha in (([[2.0, 1.0, 0.5]], (1e-16, 1.5)),
                     ([[2e16, 1e16, 5e15]], (0.5, 1.5))):
        exact = _relative_distances(np.array(X), rays, alpha, np.eye(3))
        lower, upper = cone_distance_bounds(X, rays, alpha_range=alpha)
        assert lower[0] <= exact[0] * (1 + 1e-9) and upper[0] >= exact[0] * (1 - 1e-9)
    W = _project_weights_sorted(torch.tensor([[1.0, 0.5, -1.0]]), 1e-17, 1.5)
    assert torch.isfinite(W).all() and (W >= 0).all()


def test_cone_distance_bounds_with_a_zero_norm_point_in_the_slab():
    """A ray in the null space of the metric: the slab holds points of norm
    0, the exact distance of a point projecting there is inf, and no upper
    bound follows (an inexact smallest norm would claim one)."""
    rays = np.array([[1.0, 0.0], [0.0, 0.0]])
    x = np.array([[-1.0, 0.0]])
    P, _ = project_cone(x, rays, alpha_range=(0.5, 1.5))
    assert np.linalg.norm(P) < 1e-12
    lower, upper = cone_distance_bounds(x, rays, alpha_range=(0.5, 1.5))
    assert upper[0] == np.inf and lower[0] >= 0
    G = np.diag([0.0, 1.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lower, upper = cone_distance_bounds([[0.0, 1.0], [1.0, 1.0]], np.eye(2),
                                            alpha_range=(0.5, 1.5), gram=G)
    exact = _relative_distances(np.array([[0.0, 1.0], [1.0, 1.0]]), np.eye(2),
                                (0.5, 1.5), G)
    assert (lower <= exact + 1e-9).all() and (upper >= exact - 1e-9).all()


def test_cone_distance_bounds_in_threads_leave_the_warning_filters_alone():
    """The bounds silenced their inner projection's ConvergenceWarning with
    warnings.catch_warnings, whose process-wide filters calls in threads at
    once (predict's support check on a GPU, in a threaded search or dask's
    threads) restored over each other's: 'ignore ConvergenceWarning' stayed
    in the process and every later ConvergenceWarning was lost."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(0)
    rays = np.abs(rng.normal(size=(12, 6)))
    X = rng.normal(size=(3, 6))
    before = list(warnings.filters)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)         # threads switch often (as under load)
    try:
        for _ in range(5):
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(lambda _: cone_distance_bounds(
                    X, rays, alpha_range=(0.5, 1.5), n_iter=1), range(400)))
            assert warnings.filters == before
    finally:
        sys.setswitchinterval(interval)
    # the inner projection's warning is still dropped (its weights need not
    # be optimal: the bound is certified whatever they are)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cone_distance_bounds([[2.0, 1.0, 0.5]], np.eye(3), alpha_range=(1e-16, 1.5))


def test_cone_distance_bounds_drop_the_inner_projections_warning(monkeypatch):
    """A fixed-sum projection that does not meet its sum warns in
    project_cone, but not inside cone_distance_bounds (its bound holds
    whatever the weights): the test above never reached an unconverged
    projection, so it could not tell. Here the NNLS of the fixed-sum
    problem (the rays' coordinates plus the sum's row) returns zero weights,
    so no fixed-sum solve meets its sum."""
    import deepblur.solvers.cone as cone_module

    real = cone_module._nnls_row

    def stuck(A, b, i):
        w, res = real(A, b, i)
        return (0.0 * w if A.shape[0] == 5 else w), res

    monkeypatch.setattr(cone_module, "_nnls_row", stuck)
    rng = np.random.default_rng(1)
    rays = np.abs(rng.normal(size=(8, 4)))
    X = 100.0 * np.abs(rng.normal(size=(3, 4)))    # far beyond the slab
    with pytest.warns(ConvergenceWarning, match="did not meet the sum"):
        project_cone(X, rays, alpha_range=(0.5, 1.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        cone_distance_bounds(X, rays, alpha_range=(0.5, 1.5), n_iter=1)


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="CUDA is not available on this machine")
def test_cone_distance_bounds_on_cuda_match_the_cpu():
    rng = np.random.default_rng(4)
    rays = unit_rows(rng.uniform(0.0, 1.0, size=(14, 6)))
    G = _random_metric(rng, 6)
    X = (sample_cone(rays, 300, alpha_range=(0.8, 1.2), random_state=0)
         + 0.1 * rng.standard_normal((300, 6)))
    # no tol: every row takes the same steps on both (a bound within rounding
    # of a tol could stop a row at another step on one of them)
    cpu = cone_distance_bounds(X, rays, alpha_range=(0.8, 1.2), gram=G)
    gpu = cone_distance_bounds(X, rays, alpha_range=(0.8, 1.2), gram=G,
                               device="cuda")
    for a, b in zip(cpu, gpu, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_fixed_sum_projection_warns_when_it_stops_early():
    """Out of iterations, the multiplier loop says so and still returns a
    point of the constraint (its weights rescaled onto the bound)."""
    from sklearn.exceptions import ConvergenceWarning

    from deepblur.solvers.cone import _nnls_fixed_sum

    rng = np.random.default_rng(0)
    A, b = rng.random((6, 4)), 3.0 * rng.random(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w = _nnls_fixed_sum(A, b, 1.2, 0)          # converges: no warning
    with pytest.warns(ConvergenceWarning, match="row 0 .* did not meet the sum"):
        w1 = _nnls_fixed_sum(A, b, 1.2, 0, max_iter=1)
    assert w1.min() >= 0 and w1.sum() == pytest.approx(1.2)
    assert w.sum() == pytest.approx(1.2)
    assert np.linalg.norm(A @ w - b) <= np.linalg.norm(A @ w1 - b) + 1e-12


def test_project_cone_bad_arguments():
    rays = np.eye(3)
    with pytest.raises(ValueError, match="rays must have 3 columns"):
        project_cone(np.ones((2, 3)), np.ones((4, 2)))
    with pytest.raises(ValueError, match="alpha_min < alpha_max"):
        project_cone(np.ones((2, 3)), rays, alpha_range=(1.2, 0.8))
    with pytest.raises(ValueError, match=r"gram must be a \(3, 3\) matrix"):
        project_cone(np.ones((2, 3)), rays, gram=np.eye(2))
    with pytest.raises(ValueError, match="gram must be symmetric"):
        project_cone(np.ones((2, 3)), rays, gram=np.triu(np.ones((3, 3))))
    with pytest.raises(ValueError, match="positive semi-definite"):
        project_cone(np.ones((2, 3)), rays, gram=-np.eye(3))
    with pytest.raises(ValueError, match="gram"):
        project_cone(np.ones((2, 3)), rays, gram=np.full((3, 3), np.nan))
    with pytest.raises(ValueError, match="X"):
        project_cone(np.array([[np.inf, 0.0, 0.0]]), rays)


# --- sampling (Algorithm 2) ----------------------------------------------------


def weights_of(seed, n, R, max_rays, alpha_range=(0.5, 1.5)):
    W = draw_cone_weights(
        np.random.default_rng(seed), n, R, max_rays=max_rays, alpha_range=alpha_range
    )
    return W.toarray()


def test_samples_lie_in_the_cone():
    rng = np.random.default_rng(8)
    generators = unit_rows(rng.uniform(0.0, 1.0, size=(40, 6)))
    samples = sample_cone(generators, 2000, random_state=0)
    residuals = cone_nnls(samples, generators)[1]
    assert residuals.max() < 1e-10 * np.linalg.norm(samples, axis=1).max()


def test_sample_is_weights_times_generators():
    generators = np.random.default_rng(9).standard_normal((12, 4))
    W = draw_cone_weights(np.random.default_rng(3), 500, 12, max_rays=4)
    samples = sample_cone(generators, 500, random_state=np.random.default_rng(3))
    np.testing.assert_allclose(samples, W @ generators, rtol=1e-13)


def test_number_of_active_generators_is_uniform():
    max_rays, n = 7, 14000
    W = weights_of(0, n, 20, max_rays)
    J = np.count_nonzero(W, axis=1)
    counts = np.bincount(J, minlength=max_rays + 1)
    assert counts[0] == 0 and J.max() == max_rays
    assert scipy.stats.chisquare(counts[1:]).pvalue > 1e-3


def test_chosen_generators_are_uniform_distinct_subsets():
    # R = 5, J = 2: the 10 pairs are equally likely; each generator too.
    W = weights_of(1, 30000, 5, 2)
    pairs = W[np.count_nonzero(W, axis=1) == 2] > 0
    codes = pairs @ (1 << np.arange(5))
    counts = np.unique(codes, return_counts=True)[1]
    assert len(counts) == 10
    assert scipy.stats.chisquare(counts).pvalue > 1e-3
    W = weights_of(2, 20000, 9, 9)
    assert scipy.stats.chisquare(np.count_nonzero(W, axis=0)).pvalue > 1e-3


@pytest.mark.parametrize("J", [2, 3, 6])
def test_weights_are_uniform_on_the_simplex(J):
    # beta ~ Dirichlet(1, ..., 1): every coordinate is Beta(1, J - 1).
    W = weights_of(J, 60000, 8, 6)
    W = W[np.count_nonzero(W, axis=1) == J]
    beta = W / W.sum(axis=1, keepdims=True)
    # One coordinate per row (the coordinates of a row are dependent).
    first = beta[np.arange(len(beta)), np.argmax(beta > 0, axis=1)]
    assert scipy.stats.kstest(first, scipy.stats.beta(1, J - 1).cdf).pvalue > 1e-3
    assert scipy.stats.kstest(
        beta[:, -1][beta[:, -1] > 0], scipy.stats.beta(1, J - 1).cdf
    ).pvalue > 1e-3


def test_scale_is_uniform_in_range():
    W = weights_of(3, 20000, 10, 4, alpha_range=(0.2, 3.0))
    alpha = W.sum(axis=1)
    assert alpha.min() >= 0.2 and alpha.max() <= 3.0
    assert scipy.stats.kstest(alpha, scipy.stats.uniform(0.2, 2.8).cdf).pvalue > 1e-3


def test_sampling_in_blocks(monkeypatch):
    monkeypatch.setattr(cone, "_SAMPLE_CHUNK", 64)
    generators = np.eye(5)
    samples = sample_cone(generators, 1000, max_rays=2, random_state=1)
    assert samples.shape == (1000, 5)
    assert (np.count_nonzero(samples, axis=1) <= 2).all()
    assert samples.sum(axis=1).min() >= 0.5 and samples.sum(axis=1).max() <= 1.5


def test_sample_cone_reproducible_dtype_and_empty():
    g64 = np.random.default_rng(0).uniform(size=(6, 3))
    a = sample_cone(g64, 50, random_state=7)
    np.testing.assert_array_equal(a, sample_cone(g64, 50, random_state=7))
    assert not np.array_equal(a, sample_cone(g64, 50, random_state=8))
    assert a.dtype == np.float64
    assert sample_cone(g64.astype(np.float32), 5).dtype == np.float32
    assert sample_cone(g64, 0).shape == (0, 3)
    # max_rays defaults to min(K, R): here K = 3 < R = 6.
    W = weights_of(4, 2000, 6, None)
    assert np.count_nonzero(W, axis=1).max() == 6
    samples = sample_cone(np.eye(3)[:2], 1000, random_state=0)  # R = 2 < K
    assert np.count_nonzero(samples, axis=1).max() == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha_range": (1.0, 1.0)}, r"alpha_range must satisfy 0 < alpha_min"),
        ({"alpha_range": (2.0, 1.0)}, r"alpha_range must satisfy.*alpha_min=2\.0"),
        ({"alpha_range": (0.0, 1.0)}, r"alpha_range must satisfy"),
        ({"alpha_range": (-1.0, 1.0)}, r"alpha_range must satisfy"),
        ({"alpha_range": (0.5, np.inf)}, r"alpha_range must satisfy.*finite"),
        ({"alpha_range": (1.0,)}, r"alpha_range must be a pair"),
        ({"alpha_range": "ab"}, r"alpha_range must be a pair"),
        # numbers given as strings or booleans were read as floats by numpy
        ({"alpha_range": ("0.5", "1.5")}, r"alpha_range must be a pair"),
        ({"alpha_range": (True, 2.0)}, r"alpha_range must be a pair"),
        ({"alpha_range": "12"}, r"alpha_range must be a pair"),
        ({"alpha_range": 1.5}, r"alpha_range must be a pair"),
        ({"alpha_range": np.ones((2, 1))}, r"alpha_range must be a pair"),
        ({"max_rays": 0}, r"max_rays must be a positive int or None; got 0"),
        ({"max_rays": 5}, r"max_rays=5 must not exceed the number of generators"),
        ({"n_samples": -1}, r"n_samples must be a non-negative int; got -1"),
    ],
)
def test_sample_cone_bad_arguments(kwargs, match):
    kwargs = {"n_samples": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        sample_cone(np.eye(4), **kwargs)


def test_draw_cone_weights_needs_a_generator():
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator"):
        draw_cone_weights(0, 3, 4, max_rays=2)


@FEW
@given(
    G=arrays(np.float64, (7, 3), elements=st.floats(-5.0, 5.0)),
    max_rays=st.integers(1, 7),
    seed=st.integers(0, 2**16),
)
def test_samples_in_cone_property(G, max_rays, seed):
    samples = sample_cone(G, 20, max_rays=max_rays, random_state=seed)
    residuals = cone_nnls(samples, G)[1]
    assert residuals.max() <= 1e-9 * (1 + np.abs(G).max())


# --- torch variant --------------------------------------------------------------


def test_torch_sampler_distribution():
    G = torch.as_tensor(unit_rows(np.random.default_rng(10).uniform(size=(15, 5))))
    g = torch.Generator().manual_seed(0)
    samples, W = sample_cone_torch(
        G, 20000, max_rays=5, alpha_range=(0.3, 0.9), generator=g,
        return_weights=True,
    )
    assert samples.dtype == torch.float64 and samples.shape == (20000, 5)
    torch.testing.assert_close(samples, W @ G)
    J = torch.count_nonzero(W, dim=1).numpy()
    assert scipy.stats.chisquare(np.bincount(J, minlength=6)[1:]).pvalue > 1e-3
    alpha = W.sum(dim=1).numpy()
    assert alpha.min() >= 0.3 and alpha.max() <= 0.9
    W2 = W[torch.count_nonzero(W, dim=1) == 3].numpy()
    beta = W2 / W2.sum(axis=1, keepdims=True)
    first = beta[np.arange(len(beta)), np.argmax(beta > 0, axis=1)]
    assert scipy.stats.kstest(first, scipy.stats.beta(1, 2).cdf).pvalue > 1e-3
    residuals = cone_nnls(samples[:500].numpy(), G.numpy())[1]
    assert residuals.max() < 1e-10


def test_torch_sampler_reproducible_and_dtype():
    G = torch.eye(4, dtype=torch.float32)
    a = sample_cone_torch(G, 10, generator=torch.Generator().manual_seed(1))
    b = sample_cone_torch(G, 10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert a.dtype == torch.float32
    with pytest.raises(ValueError, match="generators must be a floating-point"):
        sample_cone_torch(np.eye(3), 2)
    with pytest.raises(ValueError, match="max_rays=5 must not exceed"):
        sample_cone_torch(G, 2, max_rays=5)
    with pytest.raises(ValueError, match="alpha_range must satisfy"):
        sample_cone_torch(G, 2, alpha_range=(1.0, 0.5))
    # a seed or a numpy generator: torch's TypeError listing randint's
    # signatures ('randint() received an invalid combination of arguments')
    for generator in (0, np.random.default_rng(0)):
        with pytest.raises(ValueError, match="generator must be a torch.Generator"):
            sample_cone_torch(G, 2, generator=generator)



@pytest.mark.parametrize(("dtype", "R"), [(torch.float16, 500), (torch.bfloat16, 100)])
def test_torch_sampler_half_precision_generators_are_chosen_uniformly(dtype, R):
    """The keys that choose the generators were drawn in the generators'
    dtype: half-precision keys tie often and topk breaks ties by position,
    so the first half of the generators held 53 % (float16, 500 generators)
    and 54 % (bfloat16, 100) of 20 000 single-generator samples, and
    bfloat16 alphas of 0.498 and 1.508 left alpha_range (0.5, 1.5)."""
    G = torch.ones((R, 2), dtype=dtype)
    samples, W = sample_cone_torch(G, 20000, max_rays=1, return_weights=True,
                                   generator=torch.Generator().manual_seed(0))
    assert samples.dtype == W.dtype == dtype
    chosen = W.float().argmax(dim=1).numpy()
    # binomial standard deviation 0.0035: the bias was 9 to 12 of them
    assert abs(np.mean(chosen < R // 2) - 0.5) < 0.02
    alpha = W.float().sum(dim=1)
    assert alpha.min() >= 0.5 and alpha.max() <= 1.5



def test_torch_sampler_half_precision_keeps_small_exponential_draws(monkeypatch):
    """The exponential draws, made in float32 for float16 generators, were
    still clamped at float16's smallest normal number (6.1e-5): a draw of
    1e-6 beside one of 1 gave its generator a share of 6.1e-5, not 1e-6."""
    def draws(self, *args, **kwargs):      # one small draw, one of 1, per row
        self[:, 0], self[:, 1:] = 1e-6, 1.0
        return self
    monkeypatch.setattr(torch.Tensor, "exponential_", draws)
    G = torch.eye(2, dtype=torch.float16)
    _, W = sample_cone_torch(G, 200, max_rays=2, return_weights=True,
                             generator=torch.Generator().manual_seed(0))
    W = W.double()
    both = (W > 0).all(dim=1)
    assert both.any()
    share = W[both].min(dim=1).values / W[both].sum(dim=1)
    np.testing.assert_allclose(share.numpy(), 1e-6, rtol=0.1)


def test_no_ray_or_no_coefficient_is_refused():
    """rays of shape (0, K) reached scipy's nnls, which aborts the
    interpreter ('double free'); K = 0 returned uninitialised weights."""
    X = np.ones((2, 3))
    for call in (lambda: cone.project_cone(X, np.empty((0, 3))),
                 lambda: cone.project_cone(X, np.empty((0, 3)), alpha_range=(1, 2)),
                 lambda: cone.cone_nnls(X, np.empty((0, 3))),
                 lambda: cone.cone_distance_bounds(X, np.empty((0, 3))),
                 lambda: cone.project_cone(np.ones((2, 0)), np.ones((3, 0)))):
        with pytest.raises(ValueError, match="at least one ray of at least one"):
            call()


def test_complex_and_graph_inputs():
    """Complex X, rays or gram lost their imaginary part with only numpy's
    ComplexWarning; a tensor recording a graph raised torch's numpy() error."""
    X, rays = np.array([[1.0, 2.0, 0.5]]), np.eye(3)
    for kwargs, name in ((dict(X=X + 1j, rays=rays), "X"),
                         (dict(X=X, rays=rays + 1j), "rays"),
                         (dict(X=X, rays=rays, gram=np.eye(3) + 1j), "gram")):
        with pytest.raises(ValueError, match=f"{name} must be real"):
            cone.project_cone(**kwargs)
    with pytest.raises(ValueError, match="X must be real"):
        cone.cone_distance_bounds(X + 1j, rays)
    graph = torch.tensor(X, requires_grad=True)
    np.testing.assert_allclose(cone.project_cone(graph, rays)[0],
                               cone.project_cone(X, rays)[0])
    np.testing.assert_allclose(cone.cone_distance_bounds(graph, rays),
                               cone.cone_distance_bounds(X, rays))
