"""Point-source fits against the dense operator and exact recoveries."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepblur.operators.product_convolution import ProductConvolution
from deepblur.solvers.point_sources import (
    _atoms,
    _normal_equations,
    _windows,
    detect_point_sources,
    fit_point_sources,
    point_source_image,
)


def _gaussian(sigma, shape=(9, 9)):
    r = np.arange(shape[0]) - (shape[0] - 1) // 2
    c = np.arange(shape[1]) - (shape[1] - 1) // 2
    g = np.exp(-0.5 * (r[:, None] ** 2 + c[None] ** 2) / sigma**2)
    return g / g.sum()


def _family(shape=(32, 40), kernel_shape=(9, 9)):
    kernels = np.stack([_gaussian(s, kernel_shape) for s in (0.8, 1.6, 2.6)])
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    maps = np.stack([np.ones(shape), xx / (shape[1] - 1), yy / (shape[0] - 1)])
    return kernels, maps


def _dense(kernels, maps, u, gamma):
    op = ProductConvolution(torch.from_numpy(kernels), torch.from_numpy(maps))
    out = op.forward(torch.from_numpy(u)[None], torch.from_numpy(gamma)[None])
    return out[0].numpy()


@settings(max_examples=25, deadline=None)
@given(kh=st.integers(2, 7), kw=st.integers(2, 7), seed=st.integers(0, 2**16),
       n=st.integers(1, 6))
def test_image_of_sources_matches_the_operator(kh, kw, seed, n):
    """Any kernel size (odd or even), sources anywhere, border included."""
    rng = np.random.default_rng(seed)
    kernels, maps = rng.random((2, kh, kw)), rng.random((2, 12, 10))
    positions = np.stack([rng.integers(0, 12, n), rng.integers(0, 10, n)], 1)
    positions = np.unique(positions, axis=0)
    amplitudes, gamma = rng.random(len(positions)), rng.random(2)
    u = np.zeros((12, 10))
    u[positions[:, 0], positions[:, 1]] = amplitudes
    np.testing.assert_allclose(
        point_source_image(kernels, maps, positions, amplitudes, gamma),
        _dense(kernels, maps, u, gamma), atol=1e-12)


def test_normal_equations_match_dense_atoms():
    rng = np.random.default_rng(1)
    kernels, maps = rng.random((3, 5, 6)), rng.random((3, 14, 15))
    # overlapping pairs, a source in a corner and one on an edge
    positions = np.array([[0, 0], [2, 3], [7, 7], [8, 9], [13, 5], [6, 14]])
    y = rng.standard_normal((14, 15))
    top, left, inside = _windows(positions, (5, 6), (14, 15))
    T, b = _normal_equations(_atoms(kernels, maps, positions), top, left, inside, y)
    D = np.empty((len(positions), 3, 14, 15))
    for j, p in enumerate(positions):
        delta = np.zeros((14, 15))
        delta[tuple(p)] = 1.0
        for k in range(3):
            D[j, k] = _dense(kernels, maps, delta, np.eye(3)[k])
    np.testing.assert_allclose(T, np.einsum("akxy,blxy->akbl", D, D), atol=1e-12)
    np.testing.assert_allclose(b, np.einsum("akxy,xy->ak", D, y), atol=1e-12)


def test_detection_windows_and_smoothing():
    y = np.zeros((20, 20))
    y[5, 5], y[5, 7], y[15, 15] = 1.0, 0.8, 0.5
    assert detect_point_sources(y, 0.1).tolist() == [[5, 5], [15, 15]]
    assert detect_point_sources(y, 0.1, min_distance=1).tolist() == [
        [5, 5], [5, 7], [15, 15]]
    assert detect_point_sources(y, 0.6).tolist() == [[5, 5]]
    # a flat noise field has no maxima above a high threshold once smoothed
    noise = np.random.default_rng(0).standard_normal((64, 64))
    assert len(detect_point_sources(noise, 3.0)) > 0
    assert len(detect_point_sources(noise, 3.0 * 0.2, smoothing=1.5)) == 0


def _scene(seed, n=8, shape=(32, 40), spacing=9):
    """Sources on a jittered grid (well separated), mean 0.5."""
    rng = np.random.default_rng(seed)
    rows = np.arange(4, shape[0] - 2, spacing)
    cols = np.arange(4, shape[1] - 2, spacing)
    grid = np.array([(r, c) for r in rows for c in cols])
    pos = grid[rng.choice(len(grid), n, replace=False)]
    u = np.zeros(shape)
    u[pos[:, 0], pos[:, 1]] = rng.uniform(0.5, 1.0, n)
    return u * (0.5 / u.mean()), pos


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_gamma_and_sources_exactly_without_noise(seed):
    kernels, maps = _family()
    u, pos = _scene(seed)
    gamma = np.random.default_rng(seed).uniform(0.5, 1.5, 3)
    y = _dense(kernels, maps, u, gamma)
    fit = fit_point_sources(y, kernels, maps, np.ones(3), threshold=0.01,
                            tol=1e-12, max_iter=500)
    np.testing.assert_allclose(fit.gamma, gamma, rtol=1e-6)
    found = np.zeros_like(u)
    found[fit.positions[:, 0], fit.positions[:, 1]] = fit.amplitudes
    np.testing.assert_allclose(found, u, atol=1e-6 * u.max())
    assert fit.converged and fit.residual < 1e-6
    # with the positions given, the same answer in one round
    given_fit = fit_point_sources(y, kernels, maps, np.ones(3), positions=pos,
                                  tol=1e-12, max_iter=500)
    np.testing.assert_allclose(given_fit.gamma, gamma, rtol=1e-6)


def test_the_scale_follows_the_image_mean():
    kernels, maps = _family()
    u, _ = _scene(0)
    gamma = np.array([1.0, 0.5, 0.8])
    y = _dense(kernels, maps, u, gamma)
    fit = fit_point_sources(y, kernels, maps, np.ones(3), threshold=0.01,
                            image_mean=0.25, tol=1e-12, max_iter=500)
    np.testing.assert_allclose(fit.gamma, 2 * gamma, rtol=1e-6)


def test_residual_rounds_find_a_source_hidden_by_a_brighter_neighbour():
    kernels, maps = _family()
    u, _ = _scene(3)
    r, c = np.argwhere(u > 0)[0]
    u[r, c + 2] = 0.6 * u[r, c]          # not a maximum within 2 pixels
    u *= 0.5 / u.mean()
    gamma = np.array([0.7, 1.2, 0.9])
    y = _dense(kernels, maps, u, gamma)
    one = fit_point_sources(y, kernels, maps, np.ones(3), threshold=0.01,
                            n_rounds=1, tol=1e-12, max_iter=500)
    three = fit_point_sources(y, kernels, maps, np.ones(3), threshold=0.01,
                              n_rounds=3, tol=1e-12, max_iter=500)
    assert [r, c + 2] not in one.positions.tolist()
    assert [r, c + 2] in three.positions.tolist()
    assert np.abs(one.gamma - gamma).max() > 1e-3
    np.testing.assert_allclose(three.gamma, gamma, rtol=1e-6)


def test_noise_gives_a_small_error():
    kernels, maps = _family()
    u, _ = _scene(4)
    gamma = np.array([0.7, 1.2, 0.9])
    y = _dense(kernels, maps, u, gamma)
    y = y + 0.01 * np.random.default_rng(0).standard_normal(y.shape)
    fit = fit_point_sources(y, kernels, maps, np.ones(3), threshold=0.1)
    assert np.linalg.norm(fit.gamma - gamma) / np.linalg.norm(gamma) < 0.02


def test_bad_input():
    kernels, maps = _family()
    u, _ = _scene(0)
    y = _dense(kernels, maps, u, np.ones(3))
    with pytest.raises(ValueError, match="no point source above"):
        fit_point_sources(y, kernels, maps, np.ones(3), threshold=10 * y.max())
    with pytest.raises(ValueError, match="threshold must be given"):
        fit_point_sources(y, kernels, maps, np.ones(3))
    with pytest.raises(ValueError, match="positions must be integer"):
        fit_point_sources(y, kernels, maps, np.ones(3), positions=[[40, 1]])
    with pytest.raises(ValueError, match="positions must be integer"):
        fit_point_sources(y, kernels, maps, np.ones(3), positions=[[1.5, 2.0]])
    for kw, match in [(dict(n_rounds=0), "n_rounds"), (dict(max_iter=0), "max_iter"),
                      (dict(tol=-1.0), "tol"), (dict(max_new=0), "max_new")]:
        with pytest.raises(ValueError, match=match):
            fit_point_sources(y, kernels, maps, np.ones(3), threshold=0.01, **kw)
    with pytest.raises(ValueError, match="every amplitude is 0"):
        ring = np.zeros((32, 40))
        ring[9:12, 9:12] = -1.0
        ring[10, 10] = 1.0            # a maximum, but anti-correlated with any PSF
        fit_point_sources(ring, kernels, maps, np.ones(3), threshold=0.5)


def test_sources_added_a_few_per_round():
    """``max_new`` caps the sources added per round; rounds continue until the
    residual has no maximum above the threshold."""
    kernels, maps = _family()
    u, _ = _scene(3)
    r, c = np.argwhere(u > 0)[0]
    u[r, c + 2] = 0.6 * u[r, c]
    r2, c2 = np.argwhere(u > 0)[-1]
    u[r2 - 2, c2] = 0.5 * u[r2, c2]
    u *= 0.5 / u.mean()
    gamma = np.array([0.7, 1.2, 0.9])
    y = _dense(kernels, maps, u, gamma)
    detected = len(detect_point_sources(y, 0.01))
    two_rounds = fit_point_sources(y, kernels, maps, np.ones(3), threshold=0.01,
                                   n_rounds=2, max_new=1, tol=1e-12, max_iter=500)
    assert len(two_rounds.positions) == detected + 1
    full = fit_point_sources(y, kernels, maps, np.ones(3), threshold=0.01,
                             max_new=1, tol=1e-12, max_iter=500)
    assert {(r, c + 2), (r2 - 2, c2)} <= set(map(tuple, full.positions.tolist()))
    np.testing.assert_allclose(full.gamma, gamma, rtol=1e-6)
