"""Tiled blind estimation and deblurring of large images (deepblur.tiling)."""

import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, uniform_filter
from scipy.signal import convolve2d
from sklearn.exceptions import ConvergenceWarning

from deepblur.datasets import gaussian_kernel
from deepblur.estimators.basis import ProductConvolutionBasis
from deepblur.estimators.regressor import ResNetBlurRegressor
from deepblur.operators.product_convolution import ProductConvolution, dense_matrix
from deepblur.solvers.tv import deblur
from deepblur.tiling import (
    LargeDeblurResult,
    deblur_large,
    deblur_stitched,
    estimate_tiles,
    partition_of_unity,
    solve_blocks,
    stitched_maps,
    stitched_operator,
    tile_gains,
    tile_grid,
)

K = 3
TILE = (32, 32)


def _smooth_maps(rng, shape, k):
    maps = np.stack([gaussian_filter(rng.standard_normal(shape), 4.0, mode="reflect")
                     for _ in range(k)])
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True) + 0.2


@pytest.fixture(scope="module")
def basis():
    rng = np.random.default_rng(0)
    kernels = rng.random((K, 5, 5)) + 0.1
    kernels /= kernels.sum(axis=(1, 2), keepdims=True)
    return ProductConvolutionBasis.from_components(kernels, _smooth_maps(rng, TILE, K))


class FixedRegressor:
    """A fake regressor: predicts ``gamma(tile)`` from a function of the tile."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = []

    def predict(self, X):
        X = np.asarray(X)
        self.calls.append(X.shape)
        return np.stack([self.fn(x) for x in X])


# ------------------------------------------------------------------- grid
@pytest.mark.parametrize("shape, tile, stride, rows, cols", [
    ((32, 32), (32, 32), None, (0,), (0,)),
    ((64, 96), (32, 32), None, (0, 16, 32), (0, 16, 32, 48, 64)),
    ((70, 33), (32, 32), (20, 7), (0, 20, 38), (0, 1)),
    ((40, 50), (40, 10), (40, 10), (0,), (0, 10, 20, 30, 40)),
])
def test_tile_grid_starts_flush_and_cover(shape, tile, stride, rows, cols):
    grid = tile_grid(shape, tile, stride)
    assert grid.row_starts == rows and grid.col_starts == cols
    assert grid.n_tiles == len(rows) * len(cols)
    cover = np.zeros(shape, dtype=int)
    for t in range(grid.n_tiles):
        rs, cs = grid.tile_slices(t)
        cover[rs, cs] += 1
        assert tuple(grid.offsets[t]) == (rs.start, cs.start)   # row-major
    assert cover.min() >= 1
    assert grid.row_starts[-1] == shape[0] - tile[0]


def test_tile_grid_errors():
    with pytest.raises(ValueError, match="smaller than one tile"):
        tile_grid((31, 64), TILE)
    with pytest.raises(ValueError, match="columns"):
        tile_grid((64, 20), TILE)
    with pytest.raises(ValueError, match="must not exceed the tile shape"):
        tile_grid((64, 64), TILE, stride=33)
    with pytest.raises(ValueError, match="stride"):
        tile_grid((64, 64), TILE, stride=0)


# ------------------------------------------------------ partition of unity
def _dense_weights(grid):
    """Per-tile weight images, by the direct formula (no shared code)."""
    H, W = grid.image_shape
    h, w = grid.tile_shape
    raw = np.zeros((grid.n_tiles, H, W))
    for t, (r, c) in enumerate(grid.offsets):
        y = np.sin(np.pi * (np.arange(h) + 0.5) / h) ** 2
        x = np.sin(np.pi * (np.arange(w) + 0.5) / w) ** 2
        raw[t, r:r + h, c:c + w] = np.outer(y, x)
    # normalise per axis: the 1-D sums of the row and column windows
    row_sum = np.zeros(H)
    for r in grid.row_starts:
        row_sum[r:r + h] += np.sin(np.pi * (np.arange(h) + 0.5) / h) ** 2
    col_sum = np.zeros(W)
    for c in grid.col_starts:
        col_sum[c:c + w] += np.sin(np.pi * (np.arange(w) + 0.5) / w) ** 2
    return raw / np.outer(row_sum, col_sum)[None]


@pytest.mark.parametrize("shape, stride", [
    ((32, 32), None), ((64, 96), None), ((70, 45), (11, 29)), ((33, 100), (1, 32)),
])
def test_partition_of_unity_sums_to_one(shape, stride):
    grid = tile_grid(shape, TILE, stride)
    a, b = partition_of_unity(grid)
    total = np.zeros(shape)
    for t, (r, c) in enumerate(grid.offsets):
        i, j = divmod(t, grid.shape[1])
        total[r:r + TILE[0], c:c + TILE[1]] += np.outer(a[i], b[j])
    np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-13)
    np.testing.assert_allclose(total, _dense_weights(grid).sum(0), atol=1e-13)
    assert a.min() > 0 and b.min() > 0 and a.max() <= 1 + 1e-15


def test_partition_of_unity_is_one_where_one_tile_and_smooth():
    grid = tile_grid((64, 96), TILE)          # stride 16: interior pixels in 2 tiles
    a, b = partition_of_unity(grid)
    np.testing.assert_allclose(a[0, :16], 1.0)          # the top border: tile 0 only
    np.testing.assert_allclose(b[-1, 16:], 1.0)         # the right border
    # smooth: a weight changes by at most ~ pi / tile per pixel (squared sines)
    assert np.abs(np.diff(a, axis=1)).max() < 1.5 * np.pi / TILE[0]


# ----------------------------------------------------------- stitched maps
def test_stitched_maps_against_direct_sum(basis):
    rng = np.random.default_rng(1)
    grid = tile_grid((50, 70), TILE, (9, 13))
    gamma = rng.standard_normal((grid.n_tiles, K))
    weights = _dense_weights(grid)
    ref = np.zeros((K, 50, 70))
    for t, (r, c) in enumerate(grid.offsets):
        placed = np.zeros((K, 50, 70))
        placed[:, r:r + 32, c:c + 32] = basis.maps_
        ref += gamma[t][:, None, None] * weights[t][None] * placed
    F = stitched_maps(gamma, basis.maps_, grid)
    np.testing.assert_allclose(F, ref, atol=1e-12)
    window = (5, 41, 20, 70)
    np.testing.assert_allclose(stitched_maps(gamma, basis.maps_, grid, window=window),
                               F[:, 5:41, 20:70], atol=1e-12)
    assert stitched_maps(gamma, basis.maps_, grid, dtype=np.float32).dtype == np.float32


def test_stitched_maps_errors(basis):
    grid = tile_grid((40, 40), TILE)
    with pytest.raises(ValueError, match="gamma_tiles must have shape"):
        stitched_maps(np.ones((3, K)), basis.maps_, grid)
    with pytest.raises(ValueError, match="maps must have shape"):
        stitched_maps(np.ones((grid.n_tiles, K)), basis.maps_[:, :16], grid)
    with pytest.raises(ValueError, match="finite"):
        stitched_maps(np.full((grid.n_tiles, K), np.nan), basis.maps_, grid)
    with pytest.raises(ValueError, match="window"):
        stitched_maps(np.ones((grid.n_tiles, K)), basis.maps_, grid,
                      window=(0, 50, 0, 10))


# ------------------------------------------------------- stitched operator
def test_single_tile_operator_is_the_basis_operator(basis):
    gamma = np.array([[1.3, -0.4, 0.7]])
    op = stitched_operator(basis, gamma, tile_grid(TILE, TILE))
    u = torch.from_numpy(np.random.default_rng(2).random((2,) + TILE))
    ones = torch.ones(K, dtype=torch.float64)
    g = torch.from_numpy(gamma[0])
    torch.testing.assert_close(op.forward(u, ones), basis.operator_.forward(u, g))
    torch.testing.assert_close(op.adjoint(u, ones), basis.operator_.adjoint(u, g))


def test_dense_matrix_against_independent_reference():
    """Column y of H is sum_k F_k(y) e_k centred at y (zero boundary)."""
    rng = np.random.default_rng(3)
    kernels = rng.random((2, 3, 3))
    tile_basis = ProductConvolutionBasis.from_components(kernels,
                                                         rng.random((2, 6, 6)))
    grid = tile_grid((10, 9), (6, 6), (3, 2))
    gamma = rng.standard_normal((grid.n_tiles, 2))
    weights = _dense_weights(grid)
    H_img, W_img = grid.image_shape
    F = np.zeros((2, H_img, W_img))
    for t, (r, c) in enumerate(grid.offsets):
        for k in range(2):
            F[k, r:r + 6, c:c + 6] += (gamma[t, k] * weights[t, r:r + 6, c:c + 6]
                                       * tile_basis.maps_[k])
    ref = np.zeros((H_img * W_img, H_img * W_img))
    for j in range(H_img * W_img):
        delta = np.zeros((H_img, W_img))
        delta.flat[j] = 1.0
        ref[:, j] = sum(convolve2d(F[k] * delta, kernels[k], mode="same")
                        for k in range(2)).ravel()
    op = stitched_operator(tile_basis, gamma, grid)
    np.testing.assert_allclose(dense_matrix(op, np.ones(2)).numpy(), ref, atol=1e-12)


def test_stitched_operator_adjoint_identity(basis):
    rng = np.random.default_rng(4)
    grid = tile_grid((48, 72), TILE, (10, 20))
    op = stitched_operator(basis, rng.random((grid.n_tiles, K)) + 0.5, grid)
    u = torch.from_numpy(rng.standard_normal((1, 48, 72)))
    v = torch.from_numpy(rng.standard_normal((1, 48, 72)))
    ones = torch.ones(K, dtype=torch.float64)
    lhs = torch.sum(op.forward(u, ones) * v)
    rhs = torch.sum(u * op.adjoint(v, ones))
    assert float(abs(lhs - rhs)) < 1e-10 * float(abs(lhs))


def test_same_gamma_constant_maps_is_one_convolution():
    """All tiles share gamma and the maps are constant: a plain convolution."""
    rng = np.random.default_rng(5)
    kernels = rng.random((2, 5, 5))
    consts = np.array([0.7, 1.6])
    tile_basis = ProductConvolutionBasis.from_components(
        kernels, consts[:, None, None] * np.ones((2,) + TILE))
    grid = tile_grid((64, 96), TILE, (12, 20))
    gamma = np.array([1.5, -0.5])
    op = stitched_operator(tile_basis, np.tile(gamma, (grid.n_tiles, 1)), grid)
    u = rng.random((64, 96))
    got = op.forward(torch.from_numpy(u)[None], torch.ones(2))[0].numpy()
    psf = sum(g * c * e for g, c, e in zip(gamma, consts, kernels, strict=True))
    np.testing.assert_allclose(got, convolve2d(u, psf, mode="same"), atol=1e-12)


def test_same_gamma_matches_tile_operator_where_one_tile_covers(basis):
    """Where only tile 0 covers the pixels within the kernel's reach, the
    stitched operator is the tile's operator H[gamma] on the tile's crop (the
    maps vary, so elsewhere the blend of shifted maps differs from any one
    tile's maps: that part is tested by the dense reference)."""
    rng = np.random.default_rng(6)
    grid = tile_grid((64, 96), TILE)             # stride 16
    gamma = rng.random(K) + 0.5
    op = stitched_operator(basis, np.tile(gamma, (grid.n_tiles, 1)), grid)
    u = rng.random((64, 96))
    got = op.forward(torch.from_numpy(u)[None], torch.ones(K))[0].numpy()
    tile = basis.apply(u[:32, :32], gamma)
    r = 5 // 2
    lim_r, lim_c = grid.row_starts[1] - r, grid.col_starts[1] - r   # 14, 14
    np.testing.assert_allclose(got[:lim_r, :lim_c], tile[:lim_r, :lim_c], atol=1e-12)
    # and one pixel further the blend differs (a test that can fail)
    assert not np.allclose(got[:32, :32], tile)


# ---------------------------------------------------------------- estimate
def test_estimate_tiles_order_batches_and_scaling():
    image = np.arange(64 * 96, dtype=np.float64).reshape(64, 96) + 1.0
    reg = FixedRegressor(lambda x: np.array([x[0, 0], x.mean()]))
    gamma, grid = estimate_tiles(image, reg, TILE, batch_size=4)
    assert gamma.shape == (15, 2) and [s[0] for s in reg.calls] == [4, 4, 4, 3]
    assert reg.calls[0][1:] == TILE
    np.testing.assert_array_equal(gamma[:, 0], image[tuple(grid.offsets.T)])
    again, _ = estimate_tiles(image, FixedRegressor(reg.fn), TILE, batch_size=64)
    np.testing.assert_allclose(again, gamma)
    # per-tile scaling to target_mean
    scaled, _ = estimate_tiles(image, FixedRegressor(lambda x: np.array([x.mean()])),
                               TILE, target_mean=0.5)
    np.testing.assert_allclose(scaled[:, 0], 0.5, rtol=1e-6)
    for given in (np.float32(0.5), np.array(0.5)):      # 0-d arrays too
        again, _ = estimate_tiles(image, FixedRegressor(
            lambda x: np.array([x.mean()])), TILE, target_mean=given)
        np.testing.assert_allclose(again, scaled, rtol=1e-6)
    for bad in (-1.0, np.nan, True, np.ones(2), "0.5"):
        with pytest.raises(ValueError, match="target_mean must be positive"):
            estimate_tiles(image, reg, TILE, target_mean=bad)
    # black (or signed) tiles are not predicted (a regressor with blur
    # statistics refused them, failing the whole image): they take the mean
    # of the others' estimates, with a warning naming them
    image[:32, :32] = 0.0
    image[32:, 64:] = -1.0
    reg = FixedRegressor(lambda x: np.array([x[0, 0], x.mean()]))
    with pytest.warns(UserWarning, match=r"2 of 15 tiles have a non-positive mean "
                                         r".*offsets \(0, 0\), \(32, 64\)"):
        blank, grid = estimate_tiles(image, reg, TILE, target_mean=0.5)
    assert sum(n for n, *_ in reg.calls) == 13
    ok = np.ones(15, dtype=bool)
    ok[[0, 14]] = False
    assert grid.offsets[14].tolist() == [32, 64]
    np.testing.assert_allclose(blank[ok, 1], 0.5, rtol=1e-6)
    np.testing.assert_allclose(blank[~ok], np.tile(blank[ok].mean(0), (2, 1)))
    with pytest.raises(ValueError, match="every tile has a non-positive mean"):
        # tiles over columns [0, 32) and [16, 48): means 0 and 0, image 2/3
        bands = np.repeat([[2.0, -2.0, 2.0]], 32, axis=0).repeat(16, axis=1)
        estimate_tiles(bands, reg, TILE, target_mean=0.5)


class _BeadsOnly:
    """A point-source fit's behaviour: no estimate for tiles without beads."""

    def predict(self, X):
        from deepblur.exceptions import NoPointSourceError

        X = np.asarray(X)
        gamma = np.stack([X.max(axis=(1, 2)), X.mean(axis=(1, 2))], axis=1)
        empty = np.flatnonzero(X.max(axis=(1, 2)) < 1.0)
        if len(empty):
            gamma[empty] = np.nan
            raise NoPointSourceError("no point source", images=empty,
                                     estimates=gamma)
        return gamma


def test_estimate_tiles_of_a_bead_slide_with_empty_regions():
    """Tiles without a bead take the mean of the others' estimates with a
    warning (a point-source fit failed the whole image), black tiles too;
    an image without any bead is an error."""
    from deepblur.exceptions import NoPointSourceError

    image = np.full((64, 96), 0.1)
    image[8, 10] = image[40, 80] = 3.0            # beads in two corners
    image[32:, :32] = 0.0                          # and a black corner
    with pytest.warns(UserWarning, match=r"of 15 tiles hold no point source"):
        gamma, grid = estimate_tiles(image, _BeadsOnly(), TILE, batch_size=4)
    with_bead = np.array([
        any(r <= y < r + 32 and c <= x < c + 32 for y, x in ((8, 10), (40, 80)))
        for r, c in grid.offsets])
    assert 0 < with_bead.sum() < 15 and np.isfinite(gamma).all()
    np.testing.assert_array_equal(gamma[with_bead, 0], 3.0)
    np.testing.assert_allclose(gamma[~with_bead], np.tile(
        gamma[with_bead].mean(0), ((~with_bead).sum(), 1)))
    with pytest.warns(UserWarning, match="non-positive mean"):
        estimate_tiles(image, _BeadsOnly(), TILE, target_mean=0.5)
    with pytest.raises(NoPointSourceError, match="no tile holds a point source"):
        estimate_tiles(np.full((64, 96), 0.1), _BeadsOnly(), TILE)


def test_estimate_tiles_with_a_resnet_regressor(basis):
    net = ResNetBlurRegressor(basis=basis, module__width=4, module__depth=1,
                              device="cpu", verbose=0).initialize()
    image = np.random.default_rng(7).random((48, 80)).astype(np.float32)
    gamma, grid = estimate_tiles(image, net, stride=16, progress=True)
    assert grid.tile_shape == TILE and gamma.shape == (grid.n_tiles, K)
    crop = image[tuple(slice(o, o + 32) for o in grid.offsets[-1])]
    np.testing.assert_allclose(gamma[-1], net.predict(crop[None])[0], rtol=1e-5)


def test_estimate_tiles_warns_once_about_noisy_tiles():
    """The tiles' noise against the regressor's noise_level_: one warning for
    the image (counting tiles), not one per batch of tiles."""
    import re
    import warnings

    from deepblur.estimators._gamma import warn_if_noisy
    from deepblur.exceptions import NoisyImageWarning

    class NoisyAware(FixedRegressor):     # warns per call, as the regressors do
        noise_level_ = 0.01

        def predict(self, X):
            warn_if_noisy(X, self.noise_level_)
            return super().predict(X)

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:128]
    clean = 1.0 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    noisy = clean.copy()
    noisy[:, 56:] += rng.normal(0, 0.2, (96, 72))     # 20 times, on the right
    class Wrapper:      # a pipeline or a search: no noise_level_ of its own
        def __init__(self, regressor):
            self.regressor = regressor

        def predict(self, X):
            return self.regressor.predict(X)

    for image, expect, wrap in ((clean, 0, False), (noisy, None, False),
                                (clean, 0, True), (noisy, None, True)):
        # a wrapped regressor's tiles are checked too (the check its predict
        # makes was suspended, and the wrapper has no noise_level_: no warning)
        regressor = NoisyAware(lambda x: np.ones(K))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _, grid = estimate_tiles(image, Wrapper(regressor) if wrap else regressor,
                                     TILE, stride=16, batch_size=4, target_mean=1.0)
        found = [w for w in caught if issubclass(w.category, NoisyImageWarning)]
        if expect == 0:
            assert found == []
            continue
        assert len(found) == 1, [str(w.message) for w in found]
        n = int(re.match(rf"(\d+) of {grid.n_tiles} tiles are over",
                         str(found[0].message)).group(1))
        # the tiles mostly in the noisy part (a median estimate): from column 48
        assert n == int(np.sum(grid.offsets[:, 1] >= 48)) == 20
    # tiles in counts (not scaled to a target_mean): the warning says they
    # look unscaled, as predict's does for one image (it advised denoising)
    with pytest.warns(NoisyImageWarning, match=r"^Their mean intensity is 1e\+04 "
                                               r"\(median\).*look unscaled"):
        estimate_tiles(1e4 * noisy, NoisyAware(lambda x: np.ones(K)), TILE,
                       stride=16)
    with pytest.warns(NoisyImageWarning, match=r"^20 of 35 tiles are over"):
        estimate_tiles(1e4 * noisy, NoisyAware(lambda x: np.ones(K)), TILE,
                       stride=16, target_mean=1.0)
    # a regressor that does not say its training noise: nothing is checked
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoisyImageWarning)
        estimate_tiles(noisy, FixedRegressor(lambda x: np.ones(K)), TILE)


def test_estimate_tiles_warns_once_about_tiles_off_the_support():
    """Tiles whose estimates lie off the regressor's support: one warning for
    the image, counting the tiles of all batches (not one per batch)."""
    import re
    import warnings

    from deepblur.estimators._gamma import checked_estimates
    from deepblur.estimators.cone import ConeSampler
    from deepblur.exceptions import OutOfSupportWarning

    sampler = ConeSampler(alpha_range=(0.8, 1.2)).fit(np.eye(K))

    class SupportAware(FixedRegressor):      # checks per call, as the regressors do
        support_tolerance = 0.1

        def predict(self, X):
            return checked_estimates(super().predict(X), sampler, np.eye(K),
                                     project=False,
                                     support_tolerance=self.support_tolerance)

    yy, xx = np.mgrid[0:96, 0:128]
    image = 1.0 + 0.3 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    # tiles brighter than the image on average get gamma (0.8, 0.8, 0.8), at
    # distance 1 from the support (it projects on (0.4, 0.4, 0.4)); the
    # others get (1, 0, 0), on it

    def fn(tile):
        return (np.full(K, 0.8) if tile.mean() > image.mean()
                else np.array([1.0, 0.0, 0.0]))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gamma, grid = estimate_tiles(image, SupportAware(fn), TILE, stride=16,
                                     batch_size=4)
    found = [w for w in caught if issubclass(w.category, OutOfSupportWarning)]
    assert len(found) == 1, [str(w.message) for w in found]
    n_far = int(np.sum(gamma[:, 1] > 0.5))
    assert 0 < n_far < grid.n_tiles and grid.n_tiles > 4       # several batches
    assert re.match(rf"{n_far} of {grid.n_tiles} tiles have estimates farther",
                    str(found[0].message))

    # a wrapper around the regressor (a GridSearchCV, a BlindDeblurrer), which
    # has no support_tolerance of its own: the same single warning
    class Wrapper:
        def __init__(self, inner):
            self.inner = inner

        def predict(self, X):
            return self.inner.predict(X)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimate_tiles(image, Wrapper(SupportAware(fn)), TILE, stride=16,
                       batch_size=4)
    found = [w for w in caught if issubclass(w.category, OutOfSupportWarning)]
    assert len(found) == 1 and str(found[0].message).startswith(
        f"{n_far} of {grid.n_tiles} tiles")


def test_estimate_tiles_errors(basis):
    reg = FixedRegressor(lambda x: np.ones(K))
    with pytest.raises(ValueError, match="smaller than one tile"):
        estimate_tiles(np.ones((20, 64)), reg, TILE)
    bad = np.ones((40, 40))
    bad[3, 5] = np.nan
    with pytest.raises(ValueError, match="finite"):
        estimate_tiles(bad, reg, TILE)
    with pytest.raises(ValueError, match="2-D"):
        estimate_tiles(np.ones((2, 40, 40)), reg, TILE)
    with pytest.raises(ValueError, match="tile_shape must be given"):
        estimate_tiles(np.ones((40, 40)), reg)
    with pytest.raises(ValueError, match="one row of coefficients per tile"):
        estimate_tiles(np.ones((40, 40)), FixedRegressor(lambda x: 1.0), TILE)
    with pytest.raises(ValueError, match="positive mean"):
        estimate_tiles(-np.ones((40, 40)), reg, TILE, target_mean=0.5)
    with pytest.raises(ValueError, match="batch_size"):
        estimate_tiles(np.ones((40, 40)), reg, TILE, batch_size=0)


# ------------------------------------------------------------------ deblur
def test_solve_blocks_fit_and_partition():
    blocks = solve_blocks((100, 130), max_pixels=60 * 60, margin=8, min_core=(16, 16))
    assert len(blocks) > 1
    cover = np.zeros((100, 130), dtype=int)
    for b in blocks:
        a, bb, c, d = b.core
        cover[a:bb, c:d] += 1
        assert b.n_pixels <= 60 * 60
        r0, r1, c0, c1 = b.window
        assert r0 == max(0, a - 8) and r1 == min(100, bb + 8)
        assert c0 == max(0, c - 8) and c1 == min(130, d + 8)
        assert bb - a >= 16 and d - c >= 16
    np.testing.assert_array_equal(cover, 1)
    assert solve_blocks((100, 130), 100 * 130, 8) == solve_blocks((100, 130), 10**6, 8)
    assert len(solve_blocks((100, 130), 100 * 130, 8)) == 1
    with pytest.raises(ValueError, match="too small for one solve"):
        solve_blocks((100, 130), 40 * 40, 8, min_core=(32, 32))
    # a core is at least min_core wide even when that exceeds the image's
    # height (a wide tile of a non-square model): the width was capped at H
    with pytest.raises(ValueError, match="cores of at least 16x64"):  # 50 before
        solve_blocks((20, 300), 20 * 60, 4, min_core=(16, 64))
    for b in solve_blocks((20, 300), 20 * 84, 4, min_core=(16, 64)):
        assert b.core[3] - b.core[2] >= 64
    with pytest.raises(ValueError, match="at least 29x159"):
        solve_blocks((30, 255), 7622, 20, min_core=(29, 159))


def test_solve_blocks_says_the_least_max_pixels_that_works():
    """The number an error gives is enough, and one less is not. Before, it
    was a bound from one core with margins on both sides: too low for some
    images (following the advice failed again, with no number) and too high
    for cuts in two, whose cores have a margin on one side only (refused
    though they fit)."""
    import re

    rng = np.random.default_rng(0)
    for _ in range(200):
        H, W = (int(v) for v in rng.integers(20, 400, 2))
        mh, mw = (int(v) for v in rng.integers(1, 80, 2))
        margin, max_pixels = int(rng.integers(0, 30)), int(rng.integers(100, 40000))
        try:
            solve_blocks((H, W), max_pixels, margin, min_core=(mh, mw))
        except ValueError as exc:
            least = int(re.search(r"windows of (\d+) pixels", str(exc)).group(1))
            assert least > max_pixels
            for b in solve_blocks((H, W), least, margin, min_core=(mh, mw)):
                assert b.n_pixels <= least
            with pytest.raises(ValueError, match="too small for one solve"):
                solve_blocks((H, W), least - 1, margin, min_core=(mh, mw))
    # 40x100 in cores of 16x40 with a margin of 8: the old bound, 32x56 =
    # 1 792 pixels, refused 1 791, which four blocks fit
    blocks = solve_blocks((40, 100), 1791, 8, min_core=(16, 40))
    assert len(blocks) == 4 and max(b.n_pixels for b in blocks) <= 1791
    # the window does not shrink with every core added (49 px, margin 19:
    # 15 cores give 41, 16 give 42): the least is over every count, not the
    # largest (these were refused, asking for 1 134 and more)
    blocks = solve_blocks((27, 49), 1107, 19, min_core=(3, 3))
    assert max(b.n_pixels for b in blocks) <= 1107
    assert len(solve_blocks((25, 25), 361, 8, min_core=(3, 3))) == 49


def test_least_window_is_the_brute_force_minimum():
    from deepblur.tiling import _least_window, _max_window

    rng = np.random.default_rng(1)
    for _ in range(500):
        n = int(rng.integers(2, 300))
        m, margin = min(n, int(rng.integers(1, 30))), int(rng.integers(0, 40))
        assert _least_window(n, m, margin) == min(
            _max_window(n, p, margin) for p in range(1, n // m + 1))


@pytest.fixture(scope="module")
def problem():
    """A 32x64 image blurred by a stitched operator with varying tile gammas.

    Gaussian kernels: a well-conditioned blur (random positive 5x5 kernels
    have near-zeros in their spectra, which makes the TV solution itself
    sensitive to far-away data).
    """
    rng = np.random.default_rng(0)
    kernels = np.stack([gaussian_kernel((7, 7), (s1, s2), a)
                        for s1, s2, a in rng.uniform(0.7, 1.5, (K, 3))])
    tile_basis = ProductConvolutionBasis.from_components(
        kernels, _smooth_maps(rng, (16, 16), K))
    rng = np.random.default_rng(8)
    grid = tile_grid((32, 64), (16, 16))
    gamma = 1.0 + 0.3 * rng.random((grid.n_tiles, K))
    clean = np.zeros((32, 64))
    clean[4:20, 6:40] = 1.0
    clean[15:30, 30:60] += 0.6
    clean[2:10, 44:56] = 0.3
    op = stitched_operator(tile_basis, gamma, grid)
    y = op.forward(torch.from_numpy(clean)[None], torch.ones(K))[0].numpy()
    y = y + 0.01 * rng.standard_normal(y.shape)
    return dict(basis=tile_basis, grid=grid, gamma=gamma, clean=clean, y=y, op=op)


def test_global_solve_is_the_solver_on_the_stitched_operator(problem):
    p = problem
    u, info = deblur_stitched(p["y"], p["basis"], p["gamma"], p["grid"], lam=300.0,
                              max_iter=100, tol=0, dtype="float64")
    assert len(info["blocks"]) == 1
    ones = torch.ones(K, dtype=torch.float64)
    ref, _ = deblur(torch.from_numpy(p["y"])[None],
                    lambda v: p["op"].forward(v, ones),
                    lambda v: p["op"].adjoint(v, ones), 300.0, max_iter=100, tol=0)
    np.testing.assert_allclose(u, ref[0].numpy(), atol=1e-10)


def test_deblur_stitched_takes_flipped_and_big_endian_images(problem):
    """np.flipud / np.rot90 views (negative strides) and big-endian arrays
    gave torch's raw errors; the rest of the API takes them."""
    p = problem
    kw = dict(lam=300.0, max_iter=20, tol=0, dtype="float64")
    y = np.ascontiguousarray(p["y"][::-1, ::-1])
    ref, _ = deblur_stitched(y, p["basis"], p["gamma"], p["grid"], **kw)
    for view in (p["y"].copy()[::-1, ::-1], y.astype(">f8")):
        u, _ = deblur_stitched(view, p["basis"], p["gamma"], p["grid"], **kw)
        np.testing.assert_array_equal(u, ref)


def test_tiled_solve_matches_global_on_the_seams(problem):
    """Two blocks (cores of 32 columns, windows of 44) against one global solve,
    both converged: the difference is largest on the seam and small with a
    margin of 4 kernel radii, large with a margin of one radius."""
    p = problem
    args = (p["y"], p["basis"], p["gamma"], p["grid"])
    kw = dict(lam=2500.0, max_iter=3000, tol=1e-7, dtype="float64")
    glob, _ = deblur_stitched(*args, **kw)
    tiled, info = deblur_stitched(*args, max_pixels=32 * 44, margin=12, **kw)
    blocks = info["blocks"]
    assert [b.core for b in blocks] == [(0, 32, 0, 32), (0, 32, 32, 64)]
    assert all(b.n_pixels <= 32 * 44 for b in blocks)
    span = p["clean"].max() - p["clean"].min()
    diff = np.abs(tiled - glob)
    seam_err = diff[:, 29:35].max()
    assert diff.max() <= 0.005 * span            # measured: 0.0025 / 1.6
    assert seam_err <= 0.005 * span
    # deblurring helps, with either solve
    assert np.abs(tiled - p["clean"]).mean() < 0.1 * np.abs(p["y"] - p["clean"]).mean()
    # the margin matters: with no context beyond the kernel radius the seam is
    # far worse (the seam error is not small by construction)
    small, _ = deblur_stitched(*args, max_pixels=32 * 44, margin=3, **kw)
    assert np.abs(small - glob)[:, 29:35].max() > 20 * seam_err


@pytest.fixture(scope="module")
def window():
    """A 32x64 window on a larger, textured scene, blurred by one convolution
    (a basis of constant maps, so the window's operator is the scene's)."""
    rng = np.random.default_rng(3)
    kernels = np.stack([gaussian_kernel((7, 7), (s, s), 0.0) for s in (0.8, 1.2, 1.6)])
    basis = ProductConvolutionBasis.from_components(
        kernels, np.ones((K, 16, 16)) * np.array([0.5, 0.3, 0.2])[:, None, None])
    scene = 0.2 + gaussian_filter(rng.random((48, 80)), 1.0, mode="reflect")
    scene[14:30, 20:50] += 0.5
    psf = np.einsum("k,kij->ij", [0.5, 0.3, 0.2], kernels)
    blurred = convolve2d(scene, psf, mode="same")
    y = blurred[8:40, 8:72] + 0.005 * rng.standard_normal((32, 64))
    grid = tile_grid((32, 64), (16, 16))
    return dict(basis=basis, grid=grid, gamma=np.ones((grid.n_tiles, K)),
                clean=scene[8:40, 8:72], y=y)


def test_unknown_boundary_global_solve_extends_the_image(window):
    """The global solve is the solver on the image extended by three pixels
    (the kernel radius) per side, 38x70, the maps extended by their edge
    values, a zero-boundary operator there (its border is not fitted), the
    data term on the image's pixels only, started from y extended by its
    edge values; the extension is dropped. The FFTs run at fast lengths
    (40x72), zero-padded inside the operator: the TV, and so the solution,
    stop at 38x70 (they used to cover the FFT padding as free pixels, which
    moved the optimum by up to 2e-2 on small windows)."""
    from scipy.fft import next_fast_len

    w = window
    u, info = deblur_stitched(w["y"], w["basis"], w["gamma"], w["grid"], lam=300.0,
                              boundary="unknown", max_iter=60, tol=0,
                              dtype="float64")
    assert [b.window for b in info["blocks"]] == [(0, 38, 0, 70)]
    assert (next_fast_len(38, real=True), next_fast_len(70, real=True)) == (40, 72)
    pads = ((0, 0), (3, 3), (3, 3))
    F = np.pad(stitched_maps(w["gamma"], w["basis"].maps_, w["grid"]), pads,
               mode="edge")
    op = ProductConvolution(torch.from_numpy(w["basis"].kernels_),
                            torch.from_numpy(F), "zero")
    mask = np.zeros((38, 70))
    mask[3:35, 3:67] = 1.0
    m, ones = torch.from_numpy(mask), torch.ones(K, dtype=torch.float64)
    y = torch.from_numpy(np.pad(w["y"], pads[1:], mode="edge"))[None]
    ref, _ = deblur(y * m, lambda v: op.forward(v, ones) * m,
                    lambda v: op.adjoint(v * m, ones), 300.0, max_iter=60, tol=0,
                    x0=y)
    np.testing.assert_allclose(u, ref[0, 3:35, 3:67].numpy(), atol=1e-10)


def test_unknown_boundary_keeps_the_border_of_a_window(window):
    """Fitted with a zero surrounding, the border of a window on a larger
    scene rings (errors up to 1.7 on a [0.2, 1.7] scene, measured); with the
    scene beyond the border estimated, the border is restored as the
    interior is."""
    w = window
    args = (w["y"], w["basis"], w["gamma"], w["grid"])
    kw = dict(lam=2000.0, max_iter=2000, tol=1e-7, dtype="float64")
    model, _ = deblur_stitched(*args, boundary="model", **kw)
    unknown, _ = deblur_stitched(*args, boundary="unknown", **kw)
    border = np.ones((32, 64), dtype=bool)
    border[4:-4, 4:-4] = False
    err = {name: np.abs(u - w["clean"]) for name, u in
           (("model", model), ("unknown", unknown), ("blurry", w["y"]))}
    # measured: border 0.0181 / 0.239 (blurry 0.032), interior 0.0182 /
    # 0.0185 (blurry 0.047), largest 0.092 / 1.69
    assert err["unknown"][border].mean() < 0.15 * err["model"][border].mean()
    assert err["unknown"].max() < 0.15 * err["model"].max()
    assert err["unknown"][border].mean() < 0.7 * err["blurry"][border].mean()
    assert err["unknown"][border].mean() < 1.3 * err["unknown"][~border].mean()
    assert err["unknown"][~border].mean() < 1.1 * err["model"][~border].mean()
    assert err["unknown"][~border].mean() < 0.5 * err["blurry"][~border].mean()
    # block-wise (windows of 50 columns of the extended 38x70 image), each
    # block fits the pixels whose kernels lie in its window: the seams stay
    # close to the global solve (measured: 0.0057 of a 1.05 range)
    tiled, info = deblur_stitched(*args, boundary="unknown", max_pixels=38 * 50,
                                  margin=12, **kw)
    assert len(info["blocks"]) == 2
    span = w["clean"].max() - w["clean"].min()
    assert np.abs(tiled - unknown).max() <= 0.01 * span


def test_unknown_boundary_solves_blocks_of_any_boundary_model(window):
    """boundary="model" needs zero-boundary blocks; boundary="unknown" does
    not assume the boundary model, so a periodic basis solves by blocks and
    gives the zero basis's result."""
    w = window
    periodic = ProductConvolutionBasis.from_components(
        w["basis"].kernels_, w["basis"].maps_, boundary="periodic")
    kw = dict(lam=300.0, max_iter=30, tol=0, dtype="float64", max_pixels=38 * 50,
              margin=12)
    with pytest.raises(ValueError, match="boundary='unknown'"):
        deblur_stitched(w["y"], periodic, w["gamma"], w["grid"], **kw)
    u_periodic, _ = deblur_stitched(w["y"], periodic, w["gamma"], w["grid"],
                                    boundary="unknown", **kw)
    u_zero, _ = deblur_stitched(w["y"], w["basis"], w["gamma"], w["grid"],
                                boundary="unknown", **kw)
    np.testing.assert_allclose(u_periodic, u_zero, atol=1e-6)
    with pytest.raises(ValueError, match="boundary must be"):
        deblur_stitched(w["y"], w["basis"], w["gamma"], w["grid"],
                        boundary="zero")
    # max_pixels counts the extended image: the error says so
    with pytest.raises(ValueError, match=r"too small for one solve.*extended by "
                                         r"half a kernel \(3 rows and 3 columns\)"
                                         r".*needs max_pixels >= 2660"):
        deblur_stitched(w["y"], w["basis"], w["gamma"], w["grid"],
                        boundary="unknown", max_pixels=32 * 64)


def test_deblur_stitched_errors(problem):
    p = problem
    args = (p["basis"], p["gamma"], p["grid"])
    with pytest.raises(ValueError, match="too small for one solve"):
        deblur_stitched(p["y"], *args, max_pixels=16 * 16, lam=1.0)
    with pytest.raises(ValueError, match="finite"):
        bad = p["y"].copy()
        bad[0, 0] = np.inf
        deblur_stitched(bad, *args, lam=1.0)
    with pytest.raises(ValueError, match="smaller than one tile"):
        deblur_stitched(p["y"][:10], *args, lam=1.0)
    with pytest.raises(ValueError, match="grid's image_shape"):
        deblur_stitched(p["y"][:20], *args, lam=1.0)
    with pytest.raises(ValueError, match="kernel radius"):
        deblur_stitched(p["y"], *args, lam=1.0, margin=1)
    with pytest.raises(ValueError, match="lam"):
        deblur_stitched(p["y"], *args, lam=-1.0)
    with pytest.raises(ValueError, match="regularization"):
        deblur_stitched(p["y"], *args, lam=1.0, regularization="l2")
    with pytest.raises(ValueError, match="lipschitz"):
        deblur_stitched(p["y"], *args, lam=1.0, lipschitz=0.0)


def test_deblur_stitched_reuses_a_given_lipschitz_constant(problem):
    """A block's operator is a restriction of H: its norm is at most ||H||."""
    p = problem
    args = (p["y"], p["basis"], p["gamma"], p["grid"])
    kw = dict(lam=300.0, max_iter=3, tol=0, max_pixels=32 * 44, margin=12)
    _, own = deblur_stitched(*args, **kw)
    _, glob = deblur_stitched(*args, lam=300.0, max_iter=3, tol=0)
    assert own["lipschitz"].max() <= glob["lipschitz"][0] * (1 + 1e-4)
    _, given = deblur_stitched(*args, lipschitz=2.5, **kw)
    np.testing.assert_allclose(given["lipschitz"], 2.5)


def test_deblur_stitched_warns_once_when_not_converged(problem):
    p = problem
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deblur_stitched(p["y"], p["basis"], p["gamma"], p["grid"], lam=300.0,
                        max_iter=2, max_pixels=32 * 44, margin=12)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "block(s)" in messages[0]


def test_deblur_stitched_in_threads_leaves_the_warning_filters_alone(problem):
    """Blocks solved in threads at once (dask's threaded scheduler runs
    deblur_large_images so) silenced their ConvergenceWarnings with
    warnings.catch_warnings, whose process-wide filters the threads restored
    over each other's: 'ignore ConvergenceWarning' stayed in the process and
    every later ConvergenceWarning, the user's own too, was lost."""
    from concurrent.futures import ThreadPoolExecutor

    p = problem
    before = list(warnings.filters)

    def solve(_):
        return deblur_stitched(p["y"], p["basis"], p["gamma"], p["grid"],
                               lam=300.0, max_iter=5, tol=0, max_pixels=32 * 44,
                               margin=12)[0]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(solve, range(24)))
    assert all(np.array_equal(u, results[0]) for u in results)
    assert warnings.filters == before
    # the blocks' warning is still one for the call, in each thread
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda _: deblur_stitched(
                p["y"], p["basis"], p["gamma"], p["grid"], lam=300.0, max_iter=2,
                max_pixels=32 * 44, margin=12), range(2)))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2 and all("2 block(s)" in m for m in messages)


# ------------------------------------------------------------------ blind
def test_deblur_large_with_a_basis_and_regressor(problem):
    p = problem
    basis = p["basis"]
    gains = np.array([basis.apply(np.ones((16, 16)), e).mean() for e in np.eye(K)])
    g = np.random.default_rng(9).random((4, K))
    np.testing.assert_allclose(tile_gains(basis, g), g @ gains)
    with pytest.raises(ValueError, match="gamma_tiles must have shape"):
        tile_gains(basis, g[:, :2])
    with pytest.raises(ValueError, match="basis must be a fitted"):   # not K=None
        tile_gains(ProductConvolutionBasis(K), g)
    reg = FixedRegressor(lambda x: np.array([1.0, 0.5, 2.0]))
    kw = dict(lam=300.0, max_iter=50, tol=0, max_pixels=38 * 50, margin=12)
    result = deblur_large(p["y"], (basis, reg), boundary="model", **kw)
    assert isinstance(result, LargeDeblurResult)
    assert result.grid.n_tiles == 21 and len(result.blocks) == 2
    # unit gain: the interior's (the PSFs' mass), the tiles' borders are
    # inside the image
    inner = np.array([basis.apply(np.ones((16, 16)), e)[3:-3, 3:-3].mean()
                      for e in np.eye(K)])
    np.testing.assert_allclose(result.gamma_tiles @ inner, 1.0)
    # the solve is deblur_stitched's on the image scaled to mean 0.5
    scale = 0.5 / p["y"].mean()
    expected, _ = deblur_stitched(scale * p["y"], basis, result.gamma_tiles,
                                  result.grid, **kw)
    np.testing.assert_allclose(result.restored, expected / scale, atol=1e-5)
    op = result.operator()
    assert isinstance(op, ProductConvolution) and op.image_shape == (32, 64)
    raw = deblur_large(p["y"], (basis, reg), lam=300.0, max_iter=2, tol=0,
                       unit_gain=False)
    np.testing.assert_allclose(raw.gamma_tiles, np.tile([1.0, 0.5, 2.0], (21, 1)))
    # by default (boundary="unknown") the gain is the interior's too
    default = deblur_large(p["y"], (basis, reg), **kw)
    np.testing.assert_allclose(default.gamma_tiles @ inner, 1.0)
    np.testing.assert_allclose(tile_gains(basis, g, interior=True), g @ inner)
    expected, _ = deblur_stitched(scale * p["y"], basis, default.gamma_tiles,
                                  default.grid, boundary="unknown", **kw)
    np.testing.assert_allclose(default.restored, expected / scale, atol=1e-5)
    # image_mean=None: the solve in the input's units
    units = deblur_large(p["y"], (basis, reg), image_mean=None, **kw)
    expected, _ = deblur_stitched(p["y"], basis, units.gamma_tiles, units.grid,
                                  boundary="unknown", **kw)
    np.testing.assert_allclose(units.restored, expected, atol=1e-6)


def _box_basis(tile):
    """A 3x3 box blur of mass 1 on ``tile``: its operator is
    ``uniform_filter(u, 3, mode="constant")`` (zero boundary)."""
    return ProductConvolutionBasis.from_components(np.full((1, 3, 3), 1 / 9),
                                                   np.ones((1,) + tile))


def test_unit_gain_tiles_of_a_larger_image_have_unit_psf_mass():
    """boundary="model" on an image of several tiles: the tiles are parts of
    one operator that loses light at the image's border only, so each is
    brought to unit PSF mass, and a scene blurred with a zero boundary by a
    box of mass 1 (scipy's, an independent operator) is restored at its own
    brightness. Each tile was divided by its whole gain, its own border's
    losses included ((46 / 3 / 16) ** 2 = 0.918 for this box): the operator
    was the box times 1.089, the restored interior 8 % darker than the scene.
    An image of one tile, and boundary="unknown", have the same unit gain
    (test_unit_gain_of_one_tile_is_the_psf_mass_too)."""
    basis = _box_basis((16, 16))
    reg = FixedRegressor(lambda x: np.array([2.0]))      # gain not identifiable
    rng = np.random.default_rng(0)
    clean = 0.3 + gaussian_filter(rng.random((40, 56)), 3.0)
    y = uniform_filter(clean, 3, mode="constant")
    kw = dict(boundary="model", lam=1e4, tol=1e-8, max_iter=400, dtype="float64")
    result = deblur_large(y, (basis, reg), **kw)
    assert result.grid.n_tiles > 1
    np.testing.assert_allclose(result.gamma_tiles, 1.0)
    op = result.operator()
    blurred = op.forward(torch.from_numpy(clean)[None], torch.ones(1))[0].numpy()
    np.testing.assert_allclose(blurred, y, atol=1e-12)
    inside = (slice(2, -2), slice(2, -2))
    assert result.restored[inside].mean() == pytest.approx(clean[inside].mean(),
                                                           rel=1e-3)
    # boundary="unknown": the interior's gain, one tile or several
    for image in (y, y[:16, :16]):
        unknown = deblur_large(image, (basis, reg), max_iter=2, tol=0)
        np.testing.assert_allclose(unknown.gamma_tiles, 1.0)


def test_unit_gain_of_one_tile_is_the_psf_mass_too():
    """boundary="model" on an image of ONE tile: the tile is brought to unit
    PSF mass as the tiles of a larger image are, so a scene blurred with a
    zero boundary by a box of mass 1 (scipy's) is restored as the true
    operator restores it, at the scene's brightness, and an image one row
    taller (two tiles) comes out as bright. The tile was divided by its
    whole gain ((46 / 3 / 16) ** 2 = 0.918): the operator was the box times
    1.089, the restored interior 8.2 % darker than the scene and than the
    17x16 image's."""
    basis = _box_basis((16, 16))
    reg = FixedRegressor(lambda x: np.array([2.0]))      # gain not identifiable
    rng = np.random.default_rng(1)
    clean = 0.3 + gaussian_filter(rng.random((17, 16)), 3.0)
    kw = dict(boundary="model", lam=1e4, tol=1e-8, max_iter=400, dtype="float64")
    y = uniform_filter(clean[:16], 3, mode="constant")
    one = deblur_large(y, (basis, reg), **kw)
    assert one.grid.n_tiles == 1
    np.testing.assert_allclose(one.gamma_tiles, 1.0)
    # the true operator's solve (scipy's box, symmetric: its own adjoint) at
    # the same scale (mean 0.5)
    scale = 0.5 / y.mean()

    def box(u):
        return torch.from_numpy(uniform_filter(u.numpy(), (1, 3, 3),
                                               mode="constant"))

    ref, _ = deblur(torch.from_numpy(y * scale)[None], box, box, 1e4, tol=1e-8,
                    max_iter=400)
    np.testing.assert_allclose(one.restored, ref[0].numpy() / scale, atol=1e-6)
    inside = (slice(2, -2), slice(2, -2))
    assert one.restored[inside].mean() == pytest.approx(clean[:16][inside].mean(),
                                                        rel=1e-3)
    # one row more: two tiles, the same brightness
    taller = deblur_large(uniform_filter(clean, 3, mode="constant"), (basis, reg),
                          **kw)
    assert taller.grid.n_tiles == 2
    assert taller.restored[:16][inside].mean() == pytest.approx(
        one.restored[inside].mean(), rel=1e-3)


@pytest.mark.parametrize("lam", ["auto", 300.0])
def test_deblur_large_does_not_depend_on_the_image_units(problem, lam):
    """A 16-bit image is deblurred as its [0, 1] version (lam, given or auto,
    is for the image scaled to mean 0.5); it was not: lam applied to the raw
    pixels, and "auto" (C / sigma^2) over-smoothed bright images."""
    p = problem
    reg = FixedRegressor(lambda x: np.array([1.0, 0.5, 2.0]))
    kw = dict(lam=lam, max_iter=40, tol=0, dtype="float64")
    one = deblur_large(p["y"], (p["basis"], reg), **kw)
    big = deblur_large(4000.0 * p["y"], (p["basis"], reg), **kw)
    np.testing.assert_allclose(big.restored, 4000.0 * one.restored, rtol=1e-6,
                               atol=1e-6 * 4000.0)
    assert big.lam == pytest.approx(one.lam)
    raw = deblur_large(4000.0 * p["y"], (p["basis"], reg), image_mean=None, **kw)
    assert np.abs(raw.restored - big.restored).max() > 0.01 * 4000.0
    # image_mean=None solves in the input's units, where lam="auto" does not
    # suit counts: 16-bit counts as floats get TVDeblurrer's warning
    counts = np.round(4000.0 * p["y"])
    if lam == "auto":
        for given in (counts, torch.tensor(counts, requires_grad=True)):
            with pytest.warns(UserWarning, match="whole-numbered floats reaching"):
                deblur_large(given, (p["basis"], reg), image_mean=None, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        deblur_large(counts, (p["basis"], reg), **kw)       # scaled: no warning
        if lam != "auto":
            deblur_large(counts, (p["basis"], reg), image_mean=None, **kw)
    # deblur_stitched (public) solves in the image's units too
    solve = dict(lam=lam, max_iter=2, tol=0)
    if lam == "auto":
        with pytest.warns(UserWarning, match="whole-numbered floats reaching"):
            deblur_stitched(counts, p["basis"], p["gamma"], p["grid"], **solve)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)
            deblur_stitched(counts, p["basis"], p["gamma"], p["grid"], **solve)


def test_deblur_stitched_says_a_stalled_block_is_not_a_capped_one(problem):
    """A lipschitz far below ||H||^2: every step overshoots and the block
    stalls after 50 steps; more iterations would not help, and the warning
    no longer says to raise max_iter."""
    p = problem
    with pytest.warns(ConvergenceWarning, match="no longer decreased") as rec:
        _, info = deblur_stitched(p["y"], p["basis"], p["gamma"], p["grid"],
                                  lam=300.0, lipschitz=1e-3, max_iter=500)
    assert not any("increase max_iter" in str(w.message) for w in rec)
    assert info["n_iter"].tolist() == [50] and not info["converged"].any()


def test_large_paths_check_the_solve_before_the_estimates(problem):
    """The solve's parameters are refused before the network estimates the
    tiles (minutes on a large image on a CPU; they were refused after)."""
    from deepblur import TVDeblurrer

    basis = problem["basis"]
    reg = FixedRegressor(lambda x: np.ones(K))
    for bad, match in ((dict(max_pixels=300), "too small for one solve"),
                       (dict(lam=-1.0), "lam must be positive"),
                       (dict(lam="grid"), "lam must be a positive float or 'auto'"),
                       (dict(lam=np.array([5.0])), "lam must be a positive scalar"),
                       (dict(lam=True), "lam must be a positive scalar"),
                       (dict(regularization="L1"), "regularization must be"),
                       (dict(dtype="float16"), "dtype must be"),
                       (dict(lipschitz=0.0), "lipschitz must be"),
                       (dict(margin=1), "margin must be an int"),
                       (dict(max_iter=0), "max_iter must be a positive int"),
                       (dict(max_iter=100.0), "max_iter must be a positive int"),
                       (dict(tol=-1.0), "tol must be a non-negative float")):
        with pytest.raises(ValueError, match=match):
            deblur_large(problem["y"], (basis, reg), **bad)
    deblurrer = TVDeblurrer(basis, blur_estimator=reg, max_pixels=300,
                            device="cpu").fit()
    with pytest.raises(ValueError, match="too small for one solve"):
        deblurrer.transform(np.stack([problem["y"], problem["y"]]))
    # set after fit (a set_params of a fitted estimator)
    deblurrer.set_params(max_pixels=None, max_iter=0)
    with pytest.raises(ValueError, match="'max_iter' parameter"):
        deblurrer.transform(problem["y"])
    assert reg.calls == []


def test_deblur_large_errors(problem):
    basis = problem["basis"]
    reg = FixedRegressor(lambda x: np.ones(K))
    with pytest.raises(ValueError, match="smaller than one tile"):
        deblur_large(np.ones((8, 64)), (basis, reg))
    with pytest.raises(ValueError, match="finite"):
        deblur_large(np.full((20, 20), np.nan), (basis, reg))
    with pytest.raises(ValueError, match="PretrainedModel"):
        deblur_large(problem["y"], basis)
    with pytest.raises(ValueError, match="non-positive gain"):
        deblur_large(problem["y"], (basis, FixedRegressor(lambda x: -np.ones(K))))
    with pytest.raises(ValueError, match="too small for one solve"):
        deblur_large(problem["y"], (basis, reg), max_pixels=300)
    with pytest.raises(ValueError, match="boundary must be"):
        deblur_large(problem["y"], (basis, reg), boundary="zero")
    for bad in (0.0, -1.0, np.nan, "0.5", True):
        with pytest.raises(ValueError, match="image_mean must be"):
            deblur_large(problem["y"], (basis, reg), image_mean=bad)
    with pytest.raises(ValueError, match="mean intensity"):
        deblur_large(problem["y"] - 1.0, (basis, reg))
    # a signed image is deblurred in its own units on request
    deblur_large(problem["y"] - 1.0, (basis, reg), image_mean=None, max_iter=2,
                 tol=0)


def test_deblur_large_with_the_shipped_model_follows_its_intensity_convention():
    """One 128x128 tile: the same gamma as deepblur.pretrained.estimate_gamma
    (the tile scaled to the training mean); a larger image: unit-gain tiles."""
    from deepblur.pretrained import bundled_image, estimate_gamma, load_default

    model = load_default()
    image = 3.0 * bundled_image("camera", (128, 128))
    one = deblur_large(image, model, unit_gain=False, max_iter=2, tol=0)
    expected, _ = estimate_gamma(model, image)
    np.testing.assert_allclose(one.gamma_tiles[0], expected, rtol=1e-5, atol=1e-6)
    big = deblur_large(bundled_image("camera", (128, 200)), model, max_iter=2, tol=0,
                       boundary="model")
    assert big.grid.shape == (1, 3) and big.restored.shape == (128, 200)
    # unit PSF mass: the gain on a flat tile, half a kernel from its border
    gains = np.asarray(model.basis.apply(np.ones((128, 128)), big.gamma_tiles))
    np.testing.assert_allclose(gains[:, 12:-12, 12:-12].mean(axis=(1, 2)), 1.0,
                               rtol=1e-6)


@pytest.mark.parametrize("boundary", ["unknown", "model"])
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_deblur_large_on_one_tile_is_deblur_image(boundary):
    """On an image of the model's shape, deblur_large solves the problem of
    deepblur.pretrained.deblur_image: same gamma, gain, scaling and boundary."""
    from deepblur.pretrained import bundled_image, deblur_image, load_default

    model = load_default()
    image = 3.0 * bundled_image("camera", (128, 128))
    large = deblur_large(image, model, boundary=boundary, lam=800.0, max_iter=15)
    restored, gamma = deblur_image(model, image, boundary=boundary, lam=800.0,
                                   max_iter=15)
    np.testing.assert_allclose(large.gamma_tiles[0], gamma, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(large.restored, restored, atol=2e-4 * image.max())


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_the_front_doors_take_the_solvers_inner_iter_and_tol(monkeypatch):
    """The solver's warning when the objective stalls says to raise
    inner_iter, and the one at max_iter to raise tol: deblur_image took
    neither (TypeError), deblur_large (and so deblur_large_images) no
    inner_iter, simulate_blind_deblurring neither. They reach every solve; bad
    values are refused before the network's estimate."""
    import deepblur.estimators.deblur as estimators
    import deepblur.tiling as tiling
    from deepblur.distributed import _check_keywords
    from deepblur.pretrained import (
        _apply,
        bundled_image,
        deblur_image,
        load_default,
        simulate_blind_deblurring,
    )

    seen = []

    def spy(*args, **kwargs):
        seen.append((kwargs["inner_iter"], kwargs["tol"]))
        return deblur(*args, **kwargs)

    monkeypatch.setattr(tiling, "deblur", spy)
    monkeypatch.setattr(estimators, "deblur", spy)
    model = load_default()
    image = bundled_image("camera", (128, 128))
    big = bundled_image("camera", (128, 200))
    gamma = model.sampler.sample(1)[0]
    for boundary in ("unknown", "model"):
        seen.clear()
        deblur_image(model, image, gamma=gamma, boundary=boundary, lam=800.0,
                     max_iter=3, tol=1e-3, inner_iter=3)
        assert seen and set(seen) == {(3, 1e-3)}
    seen.clear()
    deblur_large(big, model, lam=800.0, max_iter=3, tol=1e-3, inner_iter=4,
                 check_boundary=False)
    assert seen and set(seen) == {(4, 1e-3)}
    _check_keywords({"inner_iter": 4})          # deblur_large_images takes it
    # the demo's solves, of the network (zero boundary) and the crop network's
    for demo in (model, load_default(estimator="crop_network")):
        seen.clear()
        simulate_blind_deblurring(demo, image, max_iter=2, tol=1e-3,
                                  inner_iter=5)
        assert seen and set(seen) == {(5, 1e-3)}

    def never(*args, **kwargs):
        raise AssertionError("estimated before checking the solve")

    monkeypatch.setattr(_apply, "estimate_gamma", never)
    monkeypatch.setattr(tiling, "estimate_tiles", never)
    for bad, match in ((dict(inner_iter=0), "inner_iter must be a positive int"),
                       (dict(tol=-1.0), "tol must be a non-negative float")):
        with pytest.raises(ValueError, match=match):
            deblur_image(model, image, **bad)
        with pytest.raises(ValueError, match=match):
            deblur_large(big, model, **bad)
    with pytest.raises(ValueError, match="inner_iter must be a positive int"):
        simulate_blind_deblurring(model, image, inner_iter=0)
    with pytest.raises(ValueError, match="tol must be a non-negative float"):
        simulate_blind_deblurring(model, image, tol=-1.0)


def test_tiles_of_a_zero_boundary_network_warn():
    """Tiles are windows of a larger scene: a regressor trained with a zero
    boundary (the default network: 40 % error on windows) warns, once per
    call, wherever it meets them (deblur_large, estimate_tiles, TVDeblurrer
    on a large image, a (basis, regressor) pair); not on an image of one
    tile (deblur_large on an image of the model's size is deblur_image), not
    with check_boundary=False, not for networks trained on windows or of
    unknown training (arrays). deblur_large_images warns in the caller's
    process, once, before its tasks (a worker's warnings stay in its logs)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    from deepblur.estimators.deblur import TVDeblurrer
    from deepblur.exceptions import BoundaryWarning
    from deepblur.pretrained import bundled_image, load_default

    zero, crop = load_default(), load_default(estimator="crop_network")
    assert zero.regressor.training_boundary_ == "zero"
    assert crop.regressor.training_boundary_ == "crop"
    assert load_default(estimator="spectral").regressor.training_boundary_ == "crop"
    image = bundled_image("camera", (128, 160))
    kw = dict(max_iter=1, tol=0, lam=500.0)
    for call in (lambda: deblur_large(image, zero, **kw),
                 lambda: deblur_large(image, (zero.basis, zero.regressor), **kw),
                 lambda: estimate_tiles(image, zero.regressor),
                 lambda: TVDeblurrer(zero.basis, blur_estimator=zero.regressor,
                                     max_iter=1).fit(image[None]).transform(
                                         np.stack([image, image])),
                 # through scikit-learn: still at this line
                 lambda: make_pipeline(FunctionTransformer(), TVDeblurrer(
                     zero.basis, blur_estimator=zero.regressor, max_iter=1)
                 ).fit(image[None]).score(image[None], image[None])):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        boundary = [w for w in caught if w.category is BoundaryWarning]
        assert len(boundary) == 1
        assert boundary[0].filename == __file__       # the caller's line
    # a search calls score through joblib: still this file, for each call
    from sklearn.model_selection import cross_val_score

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cross_val_score(TVDeblurrer(zero.basis, blur_estimator=zero.regressor,
                                    max_iter=1), np.stack([image] * 2),
                        np.stack([image] * 2), cv=2)
    boundary = [w for w in caught if w.category is BoundaryWarning]
    assert len(boundary) == 2
    assert {w.filename for w in boundary} == {__file__}
    with warnings.catch_warnings():
        warnings.simplefilter("error", BoundaryWarning)
        deblur_large(image, crop, **kw)
        deblur_large(image, zero, check_boundary=False, **kw)
        deblur_large(image[:128, :128], zero, boundary="model", **kw)  # one tile
        estimate_tiles(image, zero.regressor, check_boundary=False)
        del zero.regressor.training_boundary_      # unknown: trained on arrays
        estimate_tiles(image, zero.regressor)
    zero.regressor.training_boundary_ = "zero"
    for bad in ("no", None, 0):            # refused before any estimate
        with pytest.raises(ValueError, match="check_boundary must be True or "
                                             "False"):
            estimate_tiles(image, zero.regressor, check_boundary=bad)
        with pytest.raises(ValueError, match="check_boundary must be True"):
            deblur_large(image, zero, check_boundary=bad, **kw)
    pytest.importorskip("dask")
    from deepblur.distributed import deblur_large_images

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deblur_large_images([image, image], zero, scheduler="sync", **kw)
    assert [w.category for w in caught].count(BoundaryWarning) == 1
    with pytest.raises(ValueError, match="check_boundary must be True"):
        deblur_large_images([image], zero, compute=False, check_boundary="no")


def test_warnings_point_at_the_users_line():
    """Every warning of the library points at the line of the user's code
    that led to it (the first frame outside deepblur, scikit-learn, joblib
    and skorch), however deep in the library it is raised: the noise check
    of estimate_tiles, called by deblur_large, pointed at deblur_large."""
    from sklearn.exceptions import ConvergenceWarning

    from deepblur.exceptions import NoisyImageWarning
    from deepblur.pretrained import bundled_image, load_default

    crop = load_default(estimator="crop_network")
    image = bundled_image("camera", (128, 160))
    noisy = image + 0.3 * np.random.default_rng(0).standard_normal(image.shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deblur_large(noisy, crop, max_iter=1, tol=0, lam=500.0)
    noise = [w for w in caught if w.category is NoisyImageWarning]
    assert noise and {w.filename for w in noise} == {__file__}
    # the solver's, of the blocks solved after the estimation
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        deblur_large(image, crop, max_iter=1, lam=500.0)
    converged = [w for w in caught if w.category is ConvergenceWarning]
    assert converged and {w.filename for w in converged} == {__file__}
    # through dask's tasks, run in this thread
    dask = pytest.importorskip("dask")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dask.compute(dask.delayed(deblur_large)(noisy, crop, max_iter=1, tol=0,
                                                lam=500.0), scheduler="sync")
    noise = [w for w in caught if w.category is NoisyImageWarning]
    assert noise and {w.filename for w in noise} == {__file__}


def test_deblur_large_puts_a_network_back_on_its_device(problem, monkeypatch):
    """device="cuda" with a network already on CUDA: it was moved to the CPU
    afterwards while its device still said CUDA (its next predict failed).
    Mocked on the CPU: where the module goes, and in which order."""
    import deepblur.tiling as tiling

    p = problem
    K_ = p["gamma"].shape[1]
    moves = []

    class Param:
        device = "cuda:0"

    class Module:
        def parameters(self):
            return iter([Param()])

        def to(self, device):
            moves.append(str(device))
            return self

    class Network:
        module_ = Module()
        device = "cuda:0"

        def predict(self, X):
            return np.ones((len(X), K_))

    net = Network()
    monkeypatch.setattr(tiling, "resolve_device", lambda d: torch.device("cuda"))
    solved = []
    monkeypatch.setattr(tiling, "_deblur_scaled",
                        lambda *a, **k: solved.append(moves[:]) or (
                            None, dict(lam=1.0, blocks=[], n_iter=0)))
    deblur_large(p["y"] + 1.0, (p["basis"], net), device="cuda", max_iter=2)
    assert moves == ["cuda", "cuda:0"] and solved == [moves]
    assert net.device == "cuda:0"
