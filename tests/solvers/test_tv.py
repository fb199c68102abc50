import itertools
import warnings

import cvxpy as cp
import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from deepblur.solvers.tv import (
    deblur,
    objective,
    prox_l1,
    prox_tv,
    total_variation,
)

SIZE = 24
LAM = 40.0


def _blur_matrix(rng, size=SIZE, n_components=3, width=5):
    """Dense matrix of a random product-convolution-like operator (zero boundary)."""
    n = size * size
    A = np.zeros((n, n))
    half = width // 2
    for _ in range(n_components):
        kernel = rng.random((width, width))
        kernel /= kernel.sum()
        weight = rng.random((size, size)).ravel()
        C = np.zeros((n, n))
        for di in range(-half, half + 1):
            for dj in range(-half, half + 1):
                for i in range(size):
                    ii = i + di
                    if not 0 <= ii < size:
                        continue
                    rows = i * size + np.arange(max(0, -dj), min(size, size - dj))
                    C[rows, rows + di * size + dj] = kernel[di + half, dj + half]
        A += C * weight[None, :]
    return A


def _dense_ops(A, size=SIZE):
    At = torch.as_tensor(A)

    def forward(u):
        return (u.reshape(u.shape[0], -1) @ At.T.to(u.dtype)).reshape(u.shape)

    def adjoint(v):
        return (v.reshape(v.shape[0], -1) @ At.to(v.dtype)).reshape(v.shape)

    return forward, adjoint


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    A = _blur_matrix(rng)
    clean = np.zeros((SIZE, SIZE))
    clean[4:14, 6:20] = 1.0
    clean[10:21, 3:10] += 0.6
    y = (A @ clean.ravel()).reshape(SIZE, SIZE)
    y = y + 0.05 * rng.standard_normal(y.shape) - 0.1
    return A, y


def _cvxpy_optimum(A, y, lam, regularization, positive):
    u = cp.Variable(SIZE * SIZE)
    U = cp.reshape(u, (SIZE, SIZE), order="C")
    if regularization == "tv":
        # Same discretisation as deepblur: forward differences, last one zero.
        d0 = cp.vstack([U[1:, :] - U[:-1, :], np.zeros((1, SIZE))])
        d1 = cp.hstack([U[:, 1:] - U[:, :-1], np.zeros((SIZE, 1))])
        stacked = cp.vstack([cp.vec(d0, order="C"), cp.vec(d1, order="C")])
        reg = cp.sum(cp.norm(stacked, 2, axis=0))
    else:
        reg = cp.norm1(u)
    obj = reg + lam / 2 * cp.sum_squares(A @ u - y.ravel())
    problem = cp.Problem(cp.Minimize(obj), [u >= 0] if positive else [])
    problem.solve(solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11,
                  tol_feas=1e-11)
    assert problem.status == "optimal"
    return problem.value


@pytest.mark.parametrize("positive", [False, True])
@pytest.mark.parametrize("regularization", ["tv", "l1"])
def test_reaches_cvxpy_optimum(problem, regularization, positive):
    A, y = problem
    forward, adjoint = _dense_ops(A)
    reference = _cvxpy_optimum(A, y, LAM, regularization, positive)
    y_t = torch.as_tensor(y)[None]
    u, res = deblur(y_t, forward, adjoint, LAM, regularization=regularization,
                    positive=positive, max_iter=3000, tol=1e-8)
    assert res.converged.all()
    if positive:
        assert float(u.min()) >= 0.0
    value = float(objective(u, y_t, forward, LAM, regularization)[0])
    assert abs(value - reference) <= 1e-4 * abs(reference)
    # the recorded history ends at the same value
    assert res.objective[-1, 0] == pytest.approx(value, rel=1e-12)


def test_cvxpy_tv_discretisation_matches_total_variation():
    rng = np.random.default_rng(1)
    img = rng.standard_normal((SIZE, SIZE))
    U = cp.Constant(img)
    d0 = cp.vstack([U[1:, :] - U[:-1, :], np.zeros((1, SIZE))])
    d1 = cp.hstack([U[:, 1:] - U[:, :-1], np.zeros((SIZE, 1))])
    stacked = cp.vstack([cp.vec(d0, order="C"), cp.vec(d1, order="C")])
    expected = cp.sum(cp.norm(stacked, 2, axis=0)).value
    got = float(total_variation(torch.as_tensor(img)[None])[0])
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("regularization", ["tv", "l1"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_objective_is_monotone(problem, regularization, dtype):
    A, y = problem
    forward, adjoint = _dense_ops(A)
    y_t = torch.as_tensor(y, dtype=dtype)[None].repeat(2, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # tol=0 never warns
        _, res = deblur(y_t, forward, adjoint, [LAM, 3.0],
                        regularization=regularization, max_iter=150, tol=0.0)
    hist = res.objective
    assert hist.shape == (151, 2)
    eps = np.finfo(np.float32 if dtype == torch.float32 else np.float64).eps
    rise = np.diff(hist, axis=0)
    assert np.all(rise <= 10 * eps * np.abs(hist[1:]))


def test_batch_equals_separate_solves(problem):
    A, y = problem
    forward, adjoint = _dense_ops(A)
    ys = torch.stack([torch.as_tensor(y), torch.as_tensor(y[::-1].copy())])
    lams = [LAM, 10.0]
    u_b, _ = deblur(ys, forward, adjoint, lams, max_iter=2000, tol=1e-9)
    for i in range(2):
        u_i, _ = deblur(ys[i:i + 1], forward, adjoint, lams[i], max_iter=2000,
                        tol=1e-9)
        f_b = objective(u_b[i:i + 1], ys[i:i + 1], forward, lams[i])
        f_i = objective(u_i, ys[i:i + 1], forward, lams[i])
        assert float(f_b) == pytest.approx(float(f_i), rel=1e-6)


def test_numpy_in_numpy_out_and_input_untouched(problem):
    A, y = problem
    forward, adjoint = _dense_ops(A)
    y32 = y.astype(np.float32)
    y_copy = y32.copy()
    u, res = deblur(y32, forward, adjoint, LAM, max_iter=50, tol=1e-3)
    assert isinstance(u, np.ndarray) and u.dtype == np.float32
    assert u.shape == y.shape  # 2-D in, 2-D out
    np.testing.assert_array_equal(y32, y_copy)
    assert res.objective.shape[1] == 1


def test_convergence_warning_when_capped(problem):
    A, y = problem
    forward, adjoint = _dense_ops(A)
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        _, res = deblur(y[None], forward, adjoint, LAM, max_iter=3, tol=1e-12)
    assert res.n_iter == 3 and not res.converged.any()
    assert res.n_iter_per_image.tolist() == [3]


def test_given_lipschitz_is_used(problem):
    A, y = problem
    forward, adjoint = _dense_ops(A)
    norm2 = np.linalg.norm(A, 2) ** 2
    _, res = deblur(y[None], forward, adjoint, LAM, lipschitz=norm2, max_iter=5,
                    tol=0.0)
    assert res.lipschitz[0] == pytest.approx(1.05 * LAM * norm2)
    _, res2 = deblur(y[None], forward, adjoint, LAM, max_iter=5, tol=0.0)
    assert res2.lipschitz[0] == pytest.approx(1.05 * LAM * norm2, rel=1e-3)


def test_steps_that_do_not_descend_are_not_convergence(problem):
    """A lipschitz value ten times too small makes every step overshoot, and
    every step is rejected: the objective stays at its start. That used to
    count as converged (a decrease of 0 over the window) and returned ``y``
    without a warning; it is a stall, reported as such."""
    A, y = problem
    forward, adjoint = _dense_ops(A)
    norm2 = np.linalg.norm(A, 2) ** 2
    with pytest.warns(ConvergenceWarning, match="no longer decreased"):
        u, res = deblur(y[None], forward, adjoint, LAM, lipschitz=norm2 / 10,
                        max_iter=500, tol=1e-6)
    assert not res.converged.any()
    assert res.n_iter == 50 and res.n_iter_per_image.tolist() == [50]
    np.testing.assert_array_equal(res.objective[-1], res.objective[0])
    # the right constant converges to the same tolerance
    _, ok = deblur(y[None], forward, adjoint, LAM, lipschitz=norm2,
                   max_iter=3000, tol=1e-6)
    assert ok.converged.all() and ok.objective[-1, 0] < res.objective[-1, 0]


def test_an_overshoot_that_barely_raises_the_objective_is_a_stall(problem,
                                                                   monkeypatch):
    """A lipschitz below ||H||^2 whose first (rejected) step raises the
    objective by less than tol: the l1 step is then the same at every
    iteration, "no worse to tol", and was taken for convergence at y (a
    review found it); it moves far, so it is a stall."""
    import deepblur.solvers.tv as tv

    A, y = problem
    forward, adjoint = _dense_ops(A)
    norm2 = np.linalg.norm(A, 2) ** 2
    seen = []
    check = tv._check_objective
    monkeypatch.setattr(tv, "_check_objective",
                        lambda f, k, d: (seen.append(float(f[0])), check(f, k, d))[1])

    def rise(div):          # relative change of the objective by the first step
        seen.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            deblur(y[None], forward, adjoint, LAM, regularization="l1",
                   lipschitz=norm2 / div, max_iter=1, tol=0)
        return (seen[1] - seen[0]) / seen[0]

    lo, hi = 1.5, 1000.0
    assert rise(lo) < 0 < rise(hi)
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if rise(mid) > 0 else (mid, hi)
        if 0 < rise(hi) < 1e-6:
            break
    assert 0 < rise(hi) < 1e-5
    with pytest.warns(ConvergenceWarning, match="no longer decreased"):
        u, res = deblur(y[None], forward, adjoint, LAM, regularization="l1",
                        lipschitz=norm2 / hi)
    assert not res.converged.any() and res.stalled.all()
    np.testing.assert_array_equal(u[0], y)


def test_a_start_at_the_minimum_converges(problem):
    """No step can lower an objective at its minimum (a black image, a warm
    start from a converged solve): that is convergence, not a stall."""
    A, y = problem
    forward, adjoint = _dense_ops(A)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, res = deblur(np.zeros((1, SIZE, SIZE)), forward, adjoint, LAM)
        assert res.converged.all() and res.n_iter == 5
        u, _ = deblur(y[None], forward, adjoint, LAM, max_iter=3000, tol=1e-9)
        _, again = deblur(y[None], forward, adjoint, LAM, x0=u)
    assert again.converged.all() and again.n_iter < 50


def test_tol_zero_stops_silently_on_a_stall(problem):
    A, y = problem
    forward, adjoint = _dense_ops(A)
    norm2 = np.linalg.norm(A, 2) ** 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, res = deblur(y[None], forward, adjoint, LAM, lipschitz=norm2 / 10,
                        max_iter=500, tol=0)
    assert res.converged.all() and res.n_iter == 50


def test_values_out_of_the_dtype_range_are_refused():
    """lam = 1e-40 is positive in float64 but subnormal in float32: the steps
    were NaN, all rejected, and the solver returned y as converged."""
    y32 = np.random.default_rng(0).random((1, 6, 6)).astype(np.float32)
    identity = lambda u: u  # noqa: E731
    with pytest.raises(ValueError, match="lam = 1e-40 is out of the range of "
                                         "torch.float32"):
        deblur(y32, identity, identity, 1e-40)
    u, res = deblur(y32.astype(np.float64), identity, identity, 1e-40,
                    max_iter=5, tol=0)
    assert np.isfinite(u).all()
    with pytest.raises(ValueError, match="lipschitz = 1e-45 is out of"):
        deblur(y32, identity, identity, 1.0, lipschitz=1e-45)
    with pytest.raises(ValueError, match="the step's inverse"):
        deblur(y32, identity, identity, 1e30, lipschitz=1e30)
    with pytest.raises(FloatingPointError, match="not finite at the start"):
        deblur(1e20 * y32, identity, identity, 1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lipschitz": 0.0}, "lipschitz must be finite"),
        ({"lipschitz": [1.0, 2.0, 3.0]}, "lipschitz must be a positive"),
        ({"lam": 0.0}, "lam"),
        ({"lam": -1.0}, "lam"),
        ({"lam": [1.0, 2.0]}, "lam"),
        ({"lam": float("nan")}, "lam"),
        ({"regularization": "tikhonov"}, "regularization"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": -1.0}, "tol"),
        ({"inner_iter": 0}, "inner_iter"),
    ],
)
def test_bad_parameters(kwargs, match):
    y = np.zeros((1, 6, 6))
    args = {"lam": 1.0, **kwargs}
    lam = args.pop("lam")
    with pytest.raises(ValueError, match=match):
        deblur(y, lambda u: u, lambda v: v, lam, **args)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_observations(bad):
    y = np.zeros((1, 6, 6))
    y[0, 2, 3] = bad
    with pytest.raises(ValueError, match="y must contain only finite"):
        deblur(y, lambda u: u, lambda v: v, 1.0)


def test_bad_ndim():
    with pytest.raises(ValueError, match="y must have"):
        deblur(np.zeros((1, 1, 6, 6)), lambda u: u, lambda v: v, 1.0)


def test_prox_l1_closed_form():
    rng = np.random.default_rng(0)
    v = torch.as_tensor(rng.standard_normal((2, 5, 5)))
    t = torch.tensor([0.3, 1.1]).reshape(2, 1, 1).double()
    expected = np.sign(v.numpy()) * np.maximum(np.abs(v.numpy()) - t.numpy(), 0)
    np.testing.assert_allclose(prox_l1(v, t).numpy(), expected)
    np.testing.assert_allclose(prox_l1(v, t, positive=True).numpy(),
                               np.maximum(v.numpy() - t.numpy(), 0))


def test_prox_tv_closed_forms():
    # t = 0 is the identity (or the projection when positive)
    v = torch.randn(2, 7, 7, dtype=torch.float64)
    assert torch.equal(prox_tv(v, 0.0, max_iter=5), v)
    assert torch.equal(prox_tv(v, 0.0, positive=True, max_iter=5),
                       torch.clamp(v, min=0))
    # a constant image is a fixed point
    c = torch.full((1, 6, 6), 3.0, dtype=torch.float64)
    torch.testing.assert_close(prox_tv(c, 2.0, max_iter=50), c)
    # a two-level image: the jump shrinks by t * (edge length) / (area) per side
    size = 8
    v = torch.zeros(1, size, size, dtype=torch.float64)
    v[0, :, size // 2:] = 1.0
    t = 0.5
    u = prox_tv(v, t, max_iter=500)
    shift = t * size / (size * size // 2)
    torch.testing.assert_close(u[0, :, : size // 2],
                               torch.full((size, size // 2), shift,
                                          dtype=torch.float64))
    torch.testing.assert_close(u[0, :, size // 2:],
                               torch.full((size, size // 2), 1 - shift,
                                          dtype=torch.float64))


def test_prox_tv_matches_cvxpy_denoising():
    rng = np.random.default_rng(3)
    size = 10
    v = rng.standard_normal((size, size))
    t = 0.4
    u = cp.Variable((size, size))
    d0 = cp.vstack([u[1:, :] - u[:-1, :], np.zeros((1, size))])
    d1 = cp.hstack([u[:, 1:] - u[:, :-1], np.zeros((size, 1))])
    stacked = cp.vstack([cp.vec(d0, order="C"), cp.vec(d1, order="C")])
    cons = [u >= 0]
    for positive in (False, True):
        obj = 0.5 * cp.sum_squares(u - v) + t * cp.sum(cp.norm(stacked, 2, axis=0))
        cp.Problem(cp.Minimize(obj), cons if positive else []).solve(
            solver="CLARABEL", tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
        got = prox_tv(torch.as_tensor(v)[None], t, positive=positive, max_iter=3000)
        np.testing.assert_allclose(got[0].numpy(), u.value, atol=2e-4)


def test_prox_tv_does_not_modify_warm_start():
    v = torch.randn(1, 6, 6, dtype=torch.float64)
    p0 = torch.zeros(1, 2, 6, 6, dtype=torch.float64)
    p0[0, 0, 1, 1] = 0.5
    p_copy = p0.clone()
    _, p = prox_tv(v, 1.0, max_iter=3, p0=p0, return_dual=True)
    assert torch.equal(p0, p_copy)
    assert p.shape == p0.shape


@pytest.mark.cuda
def test_deblur_on_cuda(problem):
    A, y = problem
    At = torch.as_tensor(A, device="cuda")

    def forward(u):
        return (u.reshape(u.shape[0], -1) @ At.T.to(u.dtype)).reshape(u.shape)

    def adjoint(v):
        return (v.reshape(v.shape[0], -1) @ At.to(v.dtype)).reshape(v.shape)

    y_t = torch.as_tensor(y, device="cuda")[None]
    u, res = deblur(y_t, forward, adjoint, LAM, max_iter=100, tol=1e-4)
    assert u.device.type == "cuda"


def test_deblur_refuses_a_zero_operator():
    """gamma all zeros: every step would be infinite, and the input came back
    unchanged and reported as converged."""
    y = np.random.default_rng(0).random((2, 8, 8))

    def forward(u):
        return u * torch.tensor([1.0, 0.0], dtype=u.dtype)[:, None, None]

    with pytest.raises(ValueError, match=r"operator of image\(s\) \[1\] is zero"):
        deblur(y, forward, forward, lam=10.0)


def test_deblur_checks_the_shape_of_x0():
    y = np.random.default_rng(0).random((6, 8))
    identity = lambda u: u      # noqa: E731
    with pytest.raises(ValueError, match=r"x0 must have the shape of y, \(6, 8\); "
                       r"got \(8, 6\)"):
        deblur(y, identity, identity, lam=10.0, x0=np.zeros((8, 6)))
    with pytest.raises(ValueError, match="x0 must have the shape of y"):
        deblur(y, identity, identity, lam=10.0, x0=np.zeros((5, 5)))
    u, _ = deblur(y, identity, identity, lam=10.0, x0=y, max_iter=3, tol=0)
    u3, _ = deblur(y[None], identity, identity, lam=10.0, x0=y[None], max_iter=3,
                   tol=0)
    np.testing.assert_allclose(u, u3[0])
    u1, _ = deblur(y[None], identity, identity, lam=10.0, x0=y, max_iter=3, tol=0)
    np.testing.assert_allclose(u1, u3)          # one image: (H, W) is its start


def test_noise_level_of_white_noise_and_of_a_dark_border():
    """The MAD of the finest diagonal Haar coefficients: sigma of white noise,
    whatever the offset; blocks constant at the image's minimum or maximum
    (a dark border, saturation) are left out: with them the median, over a
    border of more than half the image, was 0."""
    from deepblur.solvers.tv import estimate_noise_level

    rng = np.random.default_rng(0)
    y = 0.5 + 0.01 * rng.standard_normal((2, 192, 256))
    np.testing.assert_allclose(estimate_noise_level(y), 0.01, rtol=0.05)
    for frac in (0.3, 0.6, 0.75):
        dark = y.copy()
        dark[:, :, :int(frac * 256)] = 0.0
        np.testing.assert_allclose(estimate_noise_level(dark), 0.01, rtol=0.05)
        bright = y.copy()
        bright[:, :int(frac * 192)] = 3.0            # saturated
        np.testing.assert_allclose(estimate_noise_level(bright), 0.01,
                                   rtol=0.05)
    # a border filled with a value inside the range: 0 in a signed,
    # background-subtracted image, or the mean (it gave 0 too)
    for fill, offset in ((0.0, -0.5), (0.5, 0.0)):
        filled = y.copy() + offset
        filled[:, :, :int(0.6 * 256)] = fill
        np.testing.assert_allclose(estimate_noise_level(filled), 0.01, rtol=0.05)
    # constant blocks inside the range are content, not padding: kept
    steps = np.repeat(np.repeat(rng.integers(1, 9, (32, 32)), 4, 0), 4, 1)
    steps = steps.astype(float)
    steps[0, 0], steps[-1, -1] = 0.0, 10.0
    assert estimate_noise_level(steps) == 0.0
    assert estimate_noise_level(np.full((8, 8), 3.0)) == 0.0
    # a noise-free picture whose flat areas are its extremes (a binary mask,
    # a point on a black ground): its few edge blocks are no sample of noise
    disk = (np.hypot(*np.mgrid[-32:32, -32:32]) < 20).astype(float)
    assert estimate_noise_level(disk) == 0.0
    point = np.zeros((32, 32))
    point[9, 13] = 1.0
    assert estimate_noise_level(point) == 0.0


def test_default_lam_is_c_over_sigma_squared():
    """The calibrated rule (images in [0, 1]): C / sigma^2, floored at 1e-3
    of each image's range."""
    from deepblur.solvers.tv import C_L1, C_TV, default_lam

    rng = np.random.default_rng(1)
    y = rng.random((2, 64, 64))
    np.testing.assert_allclose(default_lam(y, sigma=0.01), C_TV / 0.01**2)
    np.testing.assert_allclose(default_lam(y, "l1", sigma=0.02), C_L1 / 0.02**2)
    flat = np.full((8, 8), 0.5)
    flat[0, 0] = 0.6                          # no noise: the floor, 1e-4
    assert default_lam(flat) == pytest.approx(C_TV / 1e-4**2)


def test_the_stall_message_names_the_inexact_tv_step():
    """Stalls of TV with a tight tol in float64 come from the inexact
    proximal step (the audit's 12x12 solve stalled with inner_iter=10 and
    converged with 50), which the message did not name: it blamed lipschitz,
    which TVDeblurrer has not, or the dtype's precision."""
    from deepblur.solvers.tv import stall_message

    assert "raise inner_iter" in stall_message("1 of 1 image(s) [0]", 1e-10)
    assert "inner_iter" not in stall_message("1 of 1 image(s) [0]", 1e-10, "l1")


def _median_rule(y):
    """The plain median rule on an image's finest diagonal Haar
    coefficients, with torch's lower median: estimate_noise_level's result
    for continuous data."""
    d = np.abs(y[0::2, 0::2] - y[1::2, 0::2] - y[0::2, 1::2] + y[1::2, 1::2]) / 2
    return np.sort(d.ravel())[(d.size - 1) // 2] / 0.6745


@pytest.mark.parametrize("level", [0.1, 0.25, 0.5, 1.0, 2.0])
def test_noise_level_of_quantised_images(level):
    """8-bit images (counts, or counts / 255): the Haar coefficients take a
    few values and their plain median came out in steps of 0.74 grey level
    (0.74 for noise of 1 level, 2.22 for 2, and 0 for a quarter of a level:
    lam='auto' then used the noise floor). Read as grouped data, the level is
    what the data term sees, noise and rounding: sqrt(s^2 + 1/12) (without
    the spread of the grouping itself, step^2 / 12, it came out
    sqrt(s^2 + 1/16): 8 % low for a tenth of a level)."""
    from scipy.ndimage import gaussian_filter

    from deepblur.solvers.tv import estimate_noise_level

    rng = np.random.default_rng(3)
    smooth = 100 + 60 * gaussian_filter(rng.random((256, 256)), 8) / 0.05
    counts = np.round(smooth + level * rng.standard_normal(smooth.shape))
    seen = np.hypot(level, np.sqrt(1 / 12))
    np.testing.assert_allclose(estimate_noise_level(counts), seen, rtol=0.05)
    scaled = (counts / 255).astype(np.float32)
    np.testing.assert_allclose(estimate_noise_level(scaled) * 255, seen,
                               rtol=0.05)
    # continuous data: the median rule, as before
    y = smooth + level * rng.standard_normal(smooth.shape)
    assert estimate_noise_level(y) == pytest.approx(_median_rule(y), rel=1e-9)


@pytest.mark.parametrize("noise, spot", [(1.0, 1e5), (3e-6, 1.0),
                                          (1.0, 1e7), (1e-7, 1.0)])
def test_noise_level_of_continuous_images_is_the_median_rule(noise, spot):
    """Continuous data whose noise is far under the range (a bright spot on
    a background of noise 1, a [0, 1] image with noise 3e-6) have 1 % of
    their coefficients within the tie tolerance (a millionth of the range)
    of the median by chance: they were read as grouped data, on a 'grid' as
    fine as the spacing of the values, and sigma came out 21 % and 16 % low.
    Under the tolerance (noise 1 beside a spot of 1e7, noise 1e-7 in [0, 1])
    nine tenths of them are within it of 0, and were taken for flat
    quantised content: sigma came out 0. Both keep the median rule."""
    from deepblur.solvers.tv import estimate_noise_level

    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:256, :256] / 255.0
    y = 0.5 * cols + 0.4 * np.sin(3 * rows)       # no diagonal Haar content
    y = y + noise * rng.standard_normal(y.shape)
    y[10, 10] = spot
    assert estimate_noise_level(y) == pytest.approx(_median_rule(y), rel=1e-9)
    assert estimate_noise_level(y) == pytest.approx(noise, rel=0.05)


@pytest.mark.parametrize("level", [0.3, 1.0])
def test_noise_level_of_16_bit_images_near_saturation_in_float32(level):
    """16-bit counts near the top of their range divided by 65535 in float32
    are off their grid by float32's rounding, more than the tie tolerance of
    a millionth of their narrow range: their coefficients were not read as
    grouped data, and sigma came out in the median's steps (1.8 and 0.67
    times the level the data term sees)."""
    from deepblur.solvers.tv import estimate_noise_level

    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:256, :256] / 255.0
    bright = 64000 + 1000 * (0.5 * cols + 0.4 * np.sin(3 * rows))
    counts = np.round(bright + level * rng.standard_normal(bright.shape))
    seen = np.hypot(level, np.sqrt(1 / 12))
    scaled = (counts / 65535).astype(np.float32)
    np.testing.assert_allclose(estimate_noise_level(scaled) * 65535, seen,
                               rtol=0.08)
    np.testing.assert_allclose(estimate_noise_level(counts), seen, rtol=0.08)


def test_noise_level_of_quantised_point_sources_on_a_flat_background():
    """8-bit images of blurred point sources whose noise is under one grey
    level: the background is constant 2x2 blocks at the minimum or the
    commonest value, which were left out as padding, and the estimate was
    read on the sources' flanks (2.9 to 3.7 times the level of the rounding,
    0.29 grey level). The blocks beside such a background span one level
    (on a background between levels), or their pixels off it are one level
    off it (on a level), so it is kept; padding next to flat content at the
    fill value, with noise of half a level (blocks beside it like the
    rest), is still left out."""
    from scipy.ndimage import gaussian_filter

    from deepblur.datasets import make_point_sources
    from deepblur.solvers.tv import estimate_noise_level

    seen = np.hypot(0.017, np.sqrt(1 / 12))
    for seed, offset in itertools.product(range(3), (10.3, 10.0)):
        rng = np.random.default_rng(seed)
        u = make_point_sources(1, (128, 128), random_state=seed)[0]
        x = gaussian_filter(u, 2.5)
        counts = np.round(200 * x / x.max() + offset
                          + 0.017 * rng.standard_normal(x.shape))
        np.testing.assert_allclose(estimate_noise_level(counts), seen,
                                   rtol=0.1)
        scaled = (counts / 255).astype(np.float32)
        np.testing.assert_allclose(estimate_noise_level(scaled) * 255, seen,
                                   rtol=0.1)
    rng = np.random.default_rng(0)
    counts = np.round(128 + 0.5 * rng.standard_normal((256, 256)))
    seen = np.hypot(0.5, np.sqrt(1 / 12))
    padded = counts.copy()
    padded[:, :150] = 128
    np.testing.assert_allclose(estimate_noise_level(padded), seen, rtol=0.15)


@pytest.mark.parametrize("level", [0.1, 0.5, 1.0])
def test_noise_level_of_8_bit_images_in_float16(level):
    """8-bit counts divided by 255 in float16 are off their grid by
    float16's rounding (up to an eighth of a level per coefficient): they
    were not read as grouped data, and sigma came out 0.035, 1.8 and 0.71
    times that of the counts in float64. Each pixel within float16's spacing
    of a count / 255 is now read as that count; continuous data in float16
    are read as they are."""
    from scipy.ndimage import gaussian_filter

    from deepblur.solvers.tv import estimate_noise_level

    rng = np.random.default_rng(3)
    smooth = gaussian_filter(rng.random((256, 256)), 8)
    smooth = 40 + 180 * (smooth - smooth.min()) / np.ptp(smooth)
    counts = np.round(smooth + level * rng.standard_normal(smooth.shape))
    seen = np.hypot(level, np.sqrt(1 / 12))
    exact = estimate_noise_level(counts / 255)
    np.testing.assert_allclose(exact * 255, seen, rtol=0.1)
    half = (counts / 255).astype(np.float16)
    assert estimate_noise_level(half) == pytest.approx(exact, rel=1e-9)
    assert (estimate_noise_level(torch.from_numpy(half))
            == pytest.approx(exact, rel=1e-9))
    # bright counts: float16's spacing over a quarter of a level beyond 2,
    # its own values
    y = half.astype(np.float64) * 4
    assert estimate_noise_level(y.astype(np.float16)) == estimate_noise_level(y)
    y = ((smooth + level * rng.standard_normal(smooth.shape)) / 255)
    y = y.astype(np.float16)
    assert estimate_noise_level(y) == estimate_noise_level(y.astype(np.float64))


def test_noise_level_of_a_camera_frame_beside_a_zero_border():
    """A 12-bit camera frame (offset 100.5, noise half a level: 70 % of its
    blocks span one level) beside a registration border of zeros, with
    content away from the border: the border's neighbours span one level
    more often than the image's blocks, and it was kept as a background
    (0.31 for 0.68). A background's neighbours are one step off it; the
    border's are 100 levels off, so it is left out as padding."""
    from scipy.ndimage import gaussian_filter

    from deepblur.solvers.tv import estimate_noise_level

    rng = np.random.default_rng(0)
    u = np.zeros((128, 128))
    u[8:120, 80:124] = rng.random((112, 44)) > 0.7
    counts = np.round(100.5 + 400 * gaussian_filter(u, 3)
                      + 0.5 * rng.standard_normal(u.shape))
    seen = estimate_noise_level(counts[:, 64:])
    counts[:, :64] = 0
    np.testing.assert_allclose(estimate_noise_level(counts), seen, rtol=1e-6)
    np.testing.assert_allclose(estimate_noise_level(counts / 4095) * 4095,
                               seen, rtol=0.02)


@pytest.mark.parametrize("level", [0.1, 0.5, 1.0])
def test_default_lam_of_8_bit_images_in_float16(level):
    """lam="auto" reads float16 counts / 255 as the counts, as
    estimate_noise_level does: default_lam cast them up before estimating
    their noise, where float16's rounding is no longer told from noise, and
    gave 3.4, 0.30 and 2.0 times the lam of the same counts in float64."""
    from scipy.ndimage import gaussian_filter

    from deepblur.solvers.tv import default_lam, estimate_noise_level

    rng = np.random.default_rng(3)
    smooth = gaussian_filter(rng.random((256, 256)), 8)
    smooth = 40 + 180 * (smooth - smooth.min()) / np.ptp(smooth)
    counts = np.round(smooth + level * rng.standard_normal(smooth.shape)) / 255
    exact = default_lam(counts)
    half = counts.astype(np.float16)
    assert default_lam(half) == pytest.approx(exact, rel=1e-6)
    assert default_lam(torch.from_numpy(half)) == pytest.approx(exact, rel=1e-6)
    np.testing.assert_allclose(default_lam(np.stack([half, half])),
                               [exact, exact], rtol=1e-6)
    # a list of float16 images too (3.4, 0.30 and 2.0 times before: the
    # noise estimate too cast a list up before reading it)
    for images in ([half, half], (torch.from_numpy(half),) * 2):
        np.testing.assert_allclose(default_lam(images), [exact, exact], rtol=1e-6)
        np.testing.assert_allclose(estimate_noise_level(images),
                                   [estimate_noise_level(counts)] * 2, rtol=1e-6)


def test_default_lam_of_8_bit_images_floors_sigma_at_the_rounding():
    """lam="auto" of an 8-bit image whose noise estimate reads 0 (cells on a
    background on a grey level, noise under a level: flat content) comes
    from the rounding's level, 1 / 255 / sqrt(12): it fell to the floor of
    1e-3 of the range (lam 1.1e7 here, 55 times the rounding's), and the TV
    solve's relative error against the clean image was 0.34 (0.15 with the
    rounding's level). Continuous images keep their lam bit for bit."""
    from scipy.ndimage import gaussian_filter

    from deepblur.solvers.tv import C_L1, C_TV, default_lam, estimate_noise_level

    g = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
    kernel = torch.as_tensor(np.outer(g, g) / g.sum() ** 2)[None, None]

    def blur(u):                            # symmetric: its own adjoint
        return torch.nn.functional.conv2d(u[:, None], kernel.to(u.dtype),
                                          padding=6)[:, 0]

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    u = np.zeros((64, 64))
    for _ in range(2):
        cy, cx = rng.uniform(14, 50, 2)
        u += (np.hypot(yy - cy, xx - cx) < rng.uniform(3, 6)) * rng.uniform(0.5, 1)
    clean = 50 * gaussian_filter(np.minimum(u, 1), 1) / 255
    x = blur(torch.as_tensor(clean)[None])[0].numpy()
    y = (np.round(255 * x + 10 + 0.02 * rng.standard_normal(x.shape)) - 10) / 255
    assert estimate_noise_level(y) == 0.0
    lam = default_lam(y)
    assert lam == pytest.approx(C_TV * 12 * 255**2, rel=1e-9)
    old = C_TV / (1e-3 * np.ptp(y)) ** 2
    errors = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for weight in (old, lam):
            u_hat, _ = deblur(y, blur, blur, weight, max_iter=300)
            errors.append(np.linalg.norm(u_hat - clean) / np.linalg.norm(clean))
    assert errors[1] < 0.6 * errors[0]
    np.testing.assert_allclose(default_lam(np.stack([y, y]), "l1"),
                               [C_L1 * 12 * 255**2] * 2, rtol=1e-9)
    # continuous images: C / max(estimate, 1e-3 of the range)^2 bit for bit
    for z in (x + 0.001 * rng.standard_normal(x.shape), np.stack([x, clean]),
              x.astype(np.float32)):
        z3 = z if z.ndim == 3 else z[None]
        sigma = np.atleast_1d(estimate_noise_level(z3))
        ptp = np.ptp(z3.reshape(len(z3), -1).astype(np.float64), axis=1)
        expected = C_TV / np.maximum(sigma, 1e-3 * ptp) ** 2
        np.testing.assert_array_equal(np.atleast_1d(default_lam(z)), expected)


def test_quantisation_step_of_counts_and_of_continuous_images():
    """The grid of the pixel values that floors the point-source detection's
    noise level: 1 for counts, 1 / 255 for counts divided by 255 (float32,
    float16), 16 for 12-bit counts stored in 16 bits; none (0) for continuous
    images, a two-valued mask or a constant image."""
    from scipy.ndimage import gaussian_filter

    from deepblur.solvers.tv import _quantisation_step

    rng = np.random.default_rng(0)
    smooth = gaussian_filter(rng.random((2, 64, 64)), (0, 4, 4))
    smooth = 10 + 100 * (smooth - smooth.min()) / np.ptp(smooth)
    counts = np.round(smooth + 0.02 * rng.standard_normal(smooth.shape))
    np.testing.assert_array_equal(_quantisation_step(counts), [1.0, 1.0])
    for dtype in (np.float32, np.float16):
        np.testing.assert_allclose(
            _quantisation_step((counts / 255).astype(dtype)), 1 / 255,
            rtol=1e-3)
    np.testing.assert_array_equal(_quantisation_step(16 * counts), [16, 16])
    continuous = smooth + 0.02 * rng.standard_normal(smooth.shape)
    mask = 255.0 * (smooth > 50)
    flat = np.full((2, 64, 64), 3.0)
    for y in (continuous, continuous.astype(np.float32), mask, flat):
        np.testing.assert_array_equal(_quantisation_step(y), [0.0, 0.0])
