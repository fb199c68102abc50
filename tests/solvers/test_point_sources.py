"""Point-source fits against the dense operator and exact recoveries."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.ndimage import gaussian_filter

from deepblur.operators.product_convolution import ProductConvolution
from deepblur.solvers.point_sources import (
    _amplitude_matrix,
    _atoms,
    _gamma_matrix,
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
    rows, cols, blocks, b = _normal_equations(_atoms(kernels, maps, positions), top,
                                              left, inside, y)
    T = np.zeros((len(positions), 3, len(positions), 3))
    for j, jj, block in zip(rows, cols, blocks, strict=True):
        T[j, :, jj], T[jj, :, j] = block, block.T
    D = np.empty((len(positions), 3, 14, 15))
    for j, p in enumerate(positions):
        delta = np.zeros((14, 15))
        delta[tuple(p)] = 1.0
        for k in range(3):
            D[j, k] = _dense(kernels, maps, delta, np.eye(3)[k])
    np.testing.assert_allclose(T, np.einsum("akxy,blxy->akbl", D, D), atol=1e-12)
    np.testing.assert_allclose(b, np.einsum("akxy,xy->ak", D, y), atol=1e-12)
    # the two quadratic forms the alternation uses, from the stored pairs only
    gamma, a = rng.random(3), rng.random(len(positions))
    np.testing.assert_allclose(
        _amplitude_matrix(rows, cols, blocks, gamma, len(positions)),
        np.einsum("akxy,blxy,k,l->ab", D, D, gamma, gamma), atol=1e-12)
    np.testing.assert_allclose(
        _gamma_matrix(rows, cols, blocks, a),
        np.einsum("akxy,blxy,a,b->kl", D, D, a, a), atol=1e-12)
    # far-apart sources make no pair: storage grows with J, not J^2
    far = np.array([[1, 1], [1, 12], [12, 1], [12, 12]])
    top, left, inside = _windows(far, (5, 6), (14, 15))
    pairs = _normal_equations(_atoms(kernels, maps, far), top, left, inside, y)
    assert len(pairs[0]) == 4


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


def test_detection_counts_tied_maxima_once():
    """A flat top (a saturated bead) is one source at its centre, and equal
    maxima closer than min_distance are one; distinct maxima stay as they
    were (each the largest of its window, so never that close)."""
    y = np.zeros((20, 20))
    y[5:8, 5:8] = 1.0                       # saturated: 9 equal pixels
    y[14, 14] = 0.8
    assert detect_point_sources(y, 0.1).tolist() == [[6, 6], [14, 14]]
    y = np.zeros((20, 20))
    y[3, 3] = y[3, 5] = 1.0                 # equal, 2 apart, a 0 between
    y[10, 3] = y[10, 6] = 1.0               # equal, 3 apart: both kept
    assert detect_point_sources(y, 0.1).tolist() == [[3, 3], [10, 3], [10, 6]]
    assert detect_point_sources(y, 0.1, min_distance=1).tolist() == [
        [3, 3], [3, 5], [10, 3], [10, 6]]
    for bad in (0, -1, 1.5, True):      # 0 made every pixel a "maximum"
        with pytest.raises(ValueError, match="min_distance must be an int >= 1"):
            detect_point_sources(y, 0.1, min_distance=bad)
    rng = np.random.default_rng(1)
    for _ in range(20):
        smooth = gaussian_filter(rng.random((24, 24)), 1.0)
        # without ties: every window maximum above the threshold (brute force)
        brute = {(r, c) for r in range(24) for c in range(24)
                 if smooth[r, c] > 0.5 and smooth[r, c] == smooth[
                     max(r - 2, 0):r + 3, max(c - 2, 0):c + 3].max()}
        assert {tuple(p) for p in detect_point_sources(smooth, 0.5)} == brute
        # with plateaus (quantised values): window maxima, min_distance apart
        img = np.round(smooth * 40) / 40
        found = detect_point_sources(img, 0.5)
        d = np.abs(found[:, None] - found[None]).max(-1)
        assert (d[~np.eye(len(found), dtype=bool)] > 2).all()
        for r, c in found:
            assert img[r, c] == img[max(r - 2, 0):r + 3, max(c - 2, 0):c + 3].max()


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


def _noisy_scene(seed, noise_seed, sigma=0.01):
    kernels, maps = _family()
    u, _ = _scene(seed)
    gamma = np.array([0.7, 1.2, 0.9])
    y = _dense(kernels, maps, u, gamma)
    y = y + sigma * np.random.default_rng(noise_seed).standard_normal(y.shape)
    return kernels, maps, y, gamma


def test_noise_gives_a_small_error():
    kernels, maps, y, gamma = _noisy_scene(4, 0)
    fit = fit_point_sources(y, kernels, maps, np.ones(3), threshold=0.1)
    assert np.linalg.norm(fit.gamma - gamma) / np.linalg.norm(gamma) < 0.02


@pytest.mark.parametrize("offset", [0.07, -0.02])
def test_constant_background_is_fitted_exactly(offset):
    kernels, maps = _family()
    u, pos = _scene(5)
    gamma = np.array([0.9, 0.6, 1.3])
    y = _dense(kernels, maps, u, gamma) + offset
    fit = fit_point_sources(y, kernels, maps, np.ones(3), threshold=0.01,
                            tol=1e-12, max_iter=500)
    np.testing.assert_allclose(fit.gamma, gamma, rtol=1e-6)
    assert fit.background == pytest.approx(offset, abs=1e-8)
    assert fit.residual < 1e-6
    assert sorted(map(tuple, fit.positions)) == sorted(map(tuple, pos))
    # the dark-field model cannot explain the offset: gamma is biased
    dark = fit_point_sources(y, kernels, maps, np.ones(3), positions=pos,
                             background=False, tol=1e-12, max_iter=500)
    assert dark.background == 0.0
    assert np.linalg.norm(dark.gamma - gamma) > 1e-2 * np.linalg.norm(gamma)


def test_background_fit_changes_little_on_a_dark_field():
    kernels, maps, y, gamma = _noisy_scene(6, 1)
    with_bg = fit_point_sources(y, kernels, maps, np.ones(3), threshold=0.1)
    dark = fit_point_sources(y, kernels, maps, np.ones(3), threshold=0.1,
                             background=False)
    assert abs(with_bg.background) < 0.01
    for fit in (with_bg, dark):
        assert np.linalg.norm(fit.gamma - gamma) / np.linalg.norm(gamma) < 0.02


def _fourier_shifted(kernel, offset):
    """``kernel`` moved by ``offset`` by band-limited (Fourier) interpolation:
    another interpolation than the solver's cubic splines."""
    kh, kw = kernel.shape
    pad = np.zeros((3 * kh, 3 * kw))
    pad[kh:2 * kh, kw:2 * kw] = kernel
    fr, fc = np.fft.fftfreq(3 * kh)[:, None], np.fft.fftfreq(3 * kw)[None]
    ramp = np.exp(-2j * np.pi * (fr * offset[0] + fc * offset[1]))
    return np.fft.ifft2(np.fft.fft2(pad) * ramp).real[kh:2 * kh, kw:2 * kw]


def test_sources_between_pixels():
    """Sources off their pixels: the spline model's own images are recovered
    exactly (gamma and offsets); band-limited shifts, which the model only
    approximates, far better than with every source on its pixel."""
    kernels, maps = _family(shape=(40, 48), kernel_shape=(13, 13))
    u, pos = _scene(7, shape=(40, 48), spacing=11)
    offsets = np.random.default_rng(7).uniform(-0.45, 0.45, (len(pos), 2))
    gamma = np.array([0.8, 1.1, 0.7])
    amp = u[pos[:, 0], pos[:, 1]]
    y = point_source_image(kernels, maps, pos, amp, gamma, offsets)
    fit = fit_point_sources(y, kernels, maps, np.ones(3), positions=pos,
                            tol=1e-12, max_iter=500, max_refine=50)
    np.testing.assert_allclose(fit.gamma, gamma, rtol=1e-4)
    order = np.lexsort((pos[:, 1], pos[:, 0]))     # given positions come sorted
    np.testing.assert_array_equal(fit.positions, pos[order])
    np.testing.assert_allclose(fit.offsets, offsets[order], atol=1e-3)
    # band-limited shifts (the maps read at the pixel, as in the model) of
    # kernels wide enough to be sampled (sigma >= 1.2 pixel): the two
    # interpolations then agree to within a fraction of a percent
    kernels = np.stack([_gaussian(s, (15, 15)) for s in (1.2, 2.0, 2.8)])
    y = np.zeros((54, 62))
    for (r, c), d, a in zip(pos, offsets, amp, strict=True):
        psf = sum(g * maps[k, r, c] * _fourier_shifted(kernels[k], d)
                  for k, g in enumerate(gamma))
        y[r:r + 15, c:c + 15] += a * psf
    y = y[7:-7, 7:-7]
    fits = [fit_point_sources(y, kernels, maps, np.ones(3), threshold=0.05 * y.max(),
                              subpixel=flag) for flag in (True, False)]
    errors = [np.linalg.norm(f.gamma - gamma) / np.linalg.norm(gamma) for f in fits]
    assert errors[0] < 0.02 and errors[0] < errors[1] / 10
    assert len(fits[0].positions) == len(pos) < len(fits[1].positions)


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
                      (dict(tol=-1.0), "tol"), (dict(max_new=0), "max_new"),
                      (dict(background="yes"), "background"),
                      (dict(subpixel=1), "subpixel"),
                      (dict(max_refine=-1), "max_refine")]:
        with pytest.raises(ValueError, match=match):
            fit_point_sources(y, kernels, maps, np.ones(3), threshold=0.01, **kw)
    with pytest.raises(ValueError, match="every amplitude is 0"):
        ring = np.zeros((32, 40))
        ring[9:12, 9:12] = -1.0
        ring[10, 10] = 1.0            # a maximum, but anti-correlated with any PSF
        fit_point_sources(ring, kernels, maps, np.ones(3), threshold=0.5)


def test_shapes_and_image_mean_are_checked():
    """A 10x10 y with 16x16 maps was fitted silently (gamma 2.56 for 1: the
    maps read at the wrong pixels, the scale from the wrong pixel count); a
    gamma0 of another length than K and image_mean=0 gave numpy errors."""
    x = np.arange(-2, 3)
    k = np.exp(-(x[:, None] ** 2 + x[None] ** 2) / 2.0)
    k = (k / k.sum())[None]
    maps = np.ones((1, 16, 16))
    u = np.zeros((16, 16))
    u[5, 5] = 0.5 * u.size
    y = _dense(k, maps, u, np.ones(1))
    fit = fit_point_sources(y, k, maps, np.ones(1), threshold=0.05)
    np.testing.assert_allclose(fit.gamma, [1.0], rtol=1e-6)
    one = np.ones(1)
    for args, kw, match in [
            ((y[:10, :10], k, maps, one), {},
             r"maps must have shape \(K, H, W\) = \(1, 10, 10\)"),
            ((y, np.concatenate([k, k]), maps, np.ones(2)), {},
             r"maps must have shape \(K, H, W\) = \(2, 16, 16\)"),
            ((y, k, maps, np.ones(3)), {}, r"gamma0 must have shape \(K,\) = \(1,\)"),
            ((y[None], k, maps, one), {}, "y must have 2 dimensions"),
            ((y, k[0], maps, one), {}, "kernels must have 3 dimensions"),
            ((y, k, maps, one), dict(image_mean=0.0), "image_mean must be positive"),
            ((y, k, maps, one), dict(image_mean=np.nan), "image_mean must be positive"),
    ]:
        with pytest.raises(ValueError, match=match):
            fit_point_sources(*args, threshold=0.05, **kw)


def test_inputs_a_fit_cannot_use_are_refused_by_name():
    """Empty positions (a localisation that found nothing) raised a TypeError
    from formatting threshold=None; a NaN in y was reported as 'no point
    source above the threshold (image maximum nan)', an Inf as scipy's
    'array must not contain infs or NaNs'; a stack or a 1-D array given to
    detect_point_sources raised scipy's 'structure and input must have equal
    rank'; a start gamma0 of zero PSFs failed on every image with 'every
    amplitude is 0: the image does not look like point sources'."""
    from deepblur.exceptions import NoPointSourceError

    kernels, maps = _family()
    u, _ = _scene(0)
    y = _dense(kernels, maps, u, np.ones(3))
    for empty in (np.zeros((0, 2), dtype=int), []):
        with pytest.raises(NoPointSourceError, match="positions is empty"):
            fit_point_sources(y, kernels, maps, np.ones(3), positions=empty)
    for bad in (np.nan, np.inf):
        z = y.copy()
        z[3, 3] = bad
        with pytest.raises(ValueError, match="y must contain only finite"):
            fit_point_sources(z, kernels, maps, np.ones(3), threshold=0.01)
        with pytest.raises(ValueError, match="y must contain only finite"):
            detect_point_sources(z, 0.01)
    with pytest.raises(ValueError, match="gamma0 must contain only finite"):
        fit_point_sources(y, kernels, maps, np.array([1.0, np.nan, 1.0]),
                          threshold=0.01)
    bad_maps = maps.copy()
    bad_maps[1, 0, 0] = np.inf
    with pytest.raises(ValueError, match="maps must contain only finite"):
        fit_point_sources(y, kernels, bad_maps, np.ones(3), threshold=0.01)
    for g0 in (np.zeros(3), -np.ones(3)):
        with pytest.raises(ValueError, match="gamma0 gives PSFs of zero or negative"):
            fit_point_sources(y, kernels, maps, g0, threshold=0.01)
    # a start positive somewhere is taken
    fit = fit_point_sources(y, kernels, maps, np.array([0.0, 1.0, 0.0]),
                            threshold=0.01)
    np.testing.assert_allclose(fit.gamma, np.ones(3), rtol=1e-4, atol=1e-5)
    for shape in ((5,), (2, 9, 9)):
        with pytest.raises(ValueError, match="y must have 2 dimensions"):
            detect_point_sources(np.zeros(shape), 0.1)
    for threshold in (None, np.nan, "0.1"):
        with pytest.raises(ValueError, match="threshold must be a number"):
            detect_point_sources(y, threshold)
    # 0-d arrays are numbers
    np.testing.assert_array_equal(
        detect_point_sources(y, np.array(0.01), smoothing=np.array(1.0)),
        detect_point_sources(y, 0.01, smoothing=1.0))
    # a negative or NaN smoothing ran no filter without a word
    for smoothing in (-1.0, np.nan, None):
        with pytest.raises(ValueError, match="smoothing must be a non-negative"):
            detect_point_sources(y, 0.1, smoothing=smoothing)
        with pytest.raises(ValueError, match="smoothing must be a non-negative"):
            fit_point_sources(y, kernels, maps, np.ones(3), threshold=0.01,
                              smoothing=smoothing)


def test_positions_must_be_rows_of_pixels():
    """positions were reshaped to (-1, 2): np.nonzero's (2, J) layout, or
    (J, 3) rows with an amplitude, were read as other pixels and fitted
    without a word (gamma (0.03, 3.72, -0.03) for (0.52, 0, 0.32) on a
    simulated field);
    point_source_image also truncated fractional positions, ignored extra
    amplitudes and raised IndexErrors for short ones or pixels outside."""
    kernels, maps = _family()
    u, _ = _scene(0)
    gamma = np.array([1.0, 0.5, 0.8])
    y = _dense(kernels, maps, u, gamma)
    pos = np.argwhere(u > 0)[:3]
    assert len(pos) == 3
    for bad in (pos.T, np.c_[pos, np.ones(3, dtype=int)]):
        with pytest.raises(ValueError, match=r"positions must have shape \(J, 2\)"):
            fit_point_sources(y, kernels, maps, gamma, positions=bad)
        with pytest.raises(ValueError, match=r"positions must have shape \(J, 2\)"):
            point_source_image(kernels, maps, bad, np.ones(3), gamma)
    # whole floats and a single (2,) pair are pixels; fractions are refused
    np.testing.assert_array_equal(
        point_source_image(kernels, maps, pos.astype(float), np.ones(3), gamma),
        point_source_image(kernels, maps, pos, np.ones(3), gamma))
    np.testing.assert_array_equal(
        point_source_image(kernels, maps, pos[0], np.ones(1), gamma),
        point_source_image(kernels, maps, pos[:1], np.ones(1), gamma))
    for bad in ([[10.7, 3.0]], [[32, 3]], [[-1, 3]]):
        with pytest.raises(ValueError, match="positions must be integer"):
            point_source_image(kernels, maps, bad, np.ones(1), gamma)
    for amp in (np.ones(2), np.ones(5)):
        with pytest.raises(ValueError, match=r"amplitudes must have shape \(3,\)"):
            point_source_image(kernels, maps, pos, amp, gamma)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\)"):
        point_source_image(kernels, maps, pos, np.ones(3), gamma[:2])
    with pytest.raises(ValueError, match=r"offsets must have shape \(3, 2\)"):
        point_source_image(kernels, maps, pos, np.ones(3), gamma, np.zeros((2, 2)))
    assert not point_source_image(kernels, maps, np.zeros((0, 2), int),
                                  np.zeros(0), gamma).any()


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
    # the sub-pixel refinement stops on steps of 1e-4 pixel
    np.testing.assert_allclose(full.gamma, gamma, rtol=1e-5)


def test_two_sources_under_one_maximum_are_resolved():
    """Two sources closer than the PSF's width make one maximum: the
    detection puts one source between them, and the residual rounds add
    sources a pixel or more from the hidden ones. Those now walk there (an
    offset past 0.6 pixel moves the source to that pixel), and the one
    between them fits to zero; offsets stopped at +-0.5 pixel left the
    added sources where they were, and more were added to make up for them
    (0.3 % mean and 1.5 % 90th-percentile error on such fields,
    benchmarks/README.md)."""
    x = np.arange(-3, 4)
    kernels = np.stack([np.exp(-(x[:, None] ** 2 + x[None] ** 2) / (2 * s**2))
                        for s in (1.0, 2.0)])
    kernels /= kernels.sum(axis=(1, 2), keepdims=True)
    ramp = np.linspace(1, 0.25, 32)[None].repeat(32, 0)
    maps = np.stack([ramp, ramp[:, ::-1]])
    gamma = np.array([0.0, 0.92])                   # the wide kernel only
    u = np.zeros((32, 32))
    pair, others = [(9, 20), (10, 18)], [(5, 5), (25, 23), (24, 8)]
    for (r, c), a in zip(pair + others, (0.73, 0.81, 0.8, 0.8, 0.5), strict=True):
        u[r, c] = a
    u *= 0.5 / u.mean()
    y = _dense(kernels, maps, u, gamma)
    maxima = set(map(tuple, detect_point_sources(y, 0.01).tolist()))
    assert len(maxima) == 4 and not set(pair) & maxima
    fit = fit_point_sources(y, kernels, maps, np.array([0.5, 0.5]),
                            threshold=0.01, tol=1e-12, max_iter=500)
    lit = fit.amplitudes > 1e-6 * fit.amplitudes.max()   # and the first, at 0
    assert set(map(tuple, fit.positions[lit].tolist())) == set(pair + others)
    np.testing.assert_allclose(fit.gamma, gamma, atol=1e-6)
    np.testing.assert_allclose(fit.offsets, 0.0, atol=1e-4)
    assert fit.residual < 1e-6


def test_a_source_walks_as_far_as_it_needs_and_the_fit_matches_its_pixels():
    """A given position 2.5 pixels off walks to the source pixel by pixel;
    the returned positions, amplitudes and residual are those of one fit
    (a walk on the last step used to be returned with the fit before it)."""
    kernels, maps = _family()
    gamma = np.array([0.7, 1.2, 0.9])
    u = np.zeros(maps.shape[1:])
    u[10, 18] = 1.0
    u *= 0.5 / u.mean()
    y = _dense(kernels, maps, u, gamma)
    for start in ([10, 21], [10, 20]):
        fit = fit_point_sources(y, kernels, maps, gamma, positions=[start],
                                tol=1e-12, max_iter=500)
        assert fit.positions.tolist() == [[10, 18]]
        np.testing.assert_allclose(fit.offsets, 0.0, atol=1e-4)
        model = point_source_image(kernels, maps, fit.positions, fit.amplitudes,
                                   fit.gamma, fit.offsets) + fit.background
        assert fit.residual == pytest.approx(
            np.linalg.norm(y - model) / np.linalg.norm(y), rel=1e-9, abs=1e-12)
        assert fit.residual < 1e-6


def test_np_nonzero_of_two_sources_is_refused():
    """np.nonzero's (rows, columns) tuple is refused by its shape (2, J),
    except for two sources: (2, 2) read as the pixels (r1, r2) and (c1, c2),
    and fitted without a word."""
    kernels, maps = _family()
    u = np.zeros(maps.shape[1:])
    u[3, 20] = u[10, 5] = 1.0
    gamma = np.array([1.0, 0.5, 0.8])
    y = _dense(kernels, maps, u, gamma)
    for nonzero in (np.nonzero(u), np.where(u > 0)):
        with pytest.raises(ValueError, match="np.nonzero's"):
            fit_point_sources(y, kernels, maps, gamma, positions=nonzero)
        with pytest.raises(ValueError, match="np.nonzero's"):
            point_source_image(kernels, maps, nonzero, np.ones(2), gamma)
    # nothing found is no source (a NoPointSourceError), as before
    with pytest.raises(ValueError, match="positions is empty"):
        fit_point_sources(y, kernels, maps, gamma, positions=np.nonzero(0 * u))
    # the layouts it names, and a tuple of pairs, give the two sources
    expected = point_source_image(kernels, maps, np.argwhere(u), np.ones(2), gamma)
    np.testing.assert_allclose(expected, _dense(kernels, maps, u, gamma), atol=1e-12)
    for pos in (np.stack(np.nonzero(u), axis=1), [(3, 20), (10, 5)],
                ((3, 20), (10, 5))):
        np.testing.assert_array_equal(
            point_source_image(kernels, maps, pos, np.ones(2), gamma), expected)
