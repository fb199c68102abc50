"""CP decomposition of PSF-field tensors and map interpolation."""

import numpy as np
import pytest

from deepblur.solvers.psf_decomposition import (
    cp_als,
    grid_positions,
    interpolate_maps,
    project_fields,
    reconstruct_fields,
)


@pytest.mark.parametrize("P, X, D, K", [(40, 30, 49, 4), (1, 20, 25, 3), (8, 5, 9, 5),
                                        (4, 8, 400, 3), (1, 4, 100, 3)])
@pytest.mark.parametrize("init", ["svd", "random"])
def test_exact_low_rank_is_recovered(P, X, D, K, init):
    r = np.random.default_rng(P + X)
    T = reconstruct_fields(r.random((P, K)) + 0.1, r.standard_normal((X, K)),
                           r.standard_normal((D, K)))
    g, F, E, info = cp_als(T, K, init=init, random_state=np.random.default_rng(0))
    rel = np.linalg.norm(reconstruct_fields(g, F, E) - T) / np.linalg.norm(T)
    assert rel < 1e-6
    assert info["residual"] == pytest.approx(rel, abs=1e-9)


@pytest.mark.parametrize("m, n", [(50, 20), (12, 300)])
def test_leading_right_vectors_span_the_gram_eigenvectors(m, n):
    """Both routes (the Gram's eigenvectors, or the thin SVD of a wide
    matrix, e.g. few PSFs of large crops) give the same leading subspace."""
    from deepblur.solvers.psf_decomposition import _leading_right_vectors

    r = np.random.default_rng(m)
    M = r.standard_normal((m, 6)) @ np.diag([9, 7, 5, 3, 2, 1.0]) @ r.standard_normal(
        (6, n)) + 1e-3 * r.standard_normal((m, n))
    v = _leading_right_vectors(M, 4, r)
    w, u = np.linalg.eigh(M.T @ M)
    top = u[:, np.argsort(w)[::-1][:4]]
    assert v.shape == (n, 4)
    np.testing.assert_allclose(v @ v.T, top @ top.T, atol=1e-8)
    # past the rows' directions: an orthonormal completion (the Gram route's
    # null-space eigenvectors, up to rotation), never raw random vectors
    k = min(m + 3, n)
    q = _leading_right_vectors(M, k, r)
    assert q.shape == (n, k)
    np.testing.assert_allclose(q.T @ q, np.eye(k), atol=1e-10)
    rows = np.linalg.svd(M, full_matrices=False)[2][:min(m, n)].T
    np.testing.assert_allclose(q[:, :rows.shape[1]] @ q[:, :rows.shape[1]].T,
                               rows @ rows.T, atol=1e-8)


def test_fit_never_worsens_over_sweeps():
    r = np.random.default_rng(1)
    T = r.random((20, 16, 25))
    *_, info = cp_als(T, 4, n_refine=30, max_iter=1, random_state=r)
    hist = info["history"]
    assert np.all(np.diff(hist) <= 1e-12)


def test_projection_is_least_squares():
    r = np.random.default_rng(2)
    F, E = r.standard_normal((10, 3)), r.standard_normal((12, 3))
    T = r.standard_normal((4, 10, 12))
    g = project_fields(T, F, E)
    design = np.einsum("xk,dk->xdk", F, E).reshape(-1, 3)
    ref = np.linalg.lstsq(design, T.reshape(4, -1).T, rcond=None)[0].T
    np.testing.assert_allclose(g, ref, rtol=1e-10)


def test_grid_positions_are_cell_centres():
    pos = grid_positions((16, 32), (2, 4))
    assert pos.shape == (8, 2)
    assert set(pos[:, 0]) == {4, 12} and set(pos[:, 1]) == {4, 12, 20, 28}


def test_interpolation_passes_through_samples_and_keeps_planes():
    pos = grid_positions((20, 20), (5, 5))
    plane = 0.5 + 0.1 * pos[:, 0] - 0.05 * pos[:, 1]
    maps = interpolate_maps(pos, plane[:, None], (20, 20))
    rr, cc = np.mgrid[:20, :20]
    np.testing.assert_allclose(maps[0], 0.5 + 0.1 * rr - 0.05 * cc, atol=1e-8)
    # a single position gives a constant map
    const = interpolate_maps(np.array([[3, 3]]), np.array([[2.0]]), (4, 4))
    np.testing.assert_allclose(const, 2.0)


def test_all_zero_tensor_is_refused():
    with pytest.raises(ValueError, match="all zeros"):
        cp_als(np.zeros((2, 3, 4)), 1, random_state=np.random.default_rng(0))


def test_cp_als_checks_its_arguments():
    """cp_als's default random_state=None (and an int seed) crashed
    init='random' with 'NoneType' object has no attribute 'standard_normal';
    n_components=-1 returned 2 components, an unknown init ran the SVD
    start, and a 2-D T failed in numpy's unpacking."""
    r = np.random.default_rng(0)
    T = reconstruct_fields(r.random((6, 3)) + 0.1, r.standard_normal((10, 3)),
                           r.standard_normal((25, 3)))
    fits = [cp_als(T, 3, init="random", random_state=seed)
            for seed in (None, 0, 0, np.random.RandomState(0))]
    assert all(f[3]["residual"] < 1e-6 for f in fits)
    np.testing.assert_array_equal(fits[1][0], fits[2][0])     # an int seeds it
    for args, kw, match in [((T, 0), {}, "n_components must be a positive int"),
                            ((T, -1), {}, "n_components must be a positive int"),
                            ((T, 2.5), {}, "n_components must be a positive int"),
                            ((T, 3), dict(init="SVD"), "init must be"),
                            ((T[0], 3), {}, "T must have 3 dimensions"),
                            ((T, 3), dict(max_iter=-1), "max_iter"),
                            ((T, 3), dict(n_refine=1.5), "n_refine"),
                            ((T, 3), dict(tol=-1.0), "tol")]:
        with pytest.raises(ValueError, match=match):
            cp_als(*args, **kw)


def test_interpolate_maps_checks_its_arguments():
    """Samples of another count than the positions failed in scipy ('the
    first axis of `d`'), (X, 3) positions in a matmul, a NaN position in
    'SVD did not converge'."""
    pos = np.array([[1, 1], [5, 5], [9, 1]])
    for args, match in [((pos, np.ones((2, 3))), "one row per position"),
                        ((np.c_[pos, pos[:, :1]], np.ones((3, 2))),
                         r"shape \(X, 2\)"),
                        ((np.where(pos == 9, np.nan, pos), np.ones((3, 2))),
                         "finite"),
                        ((pos, np.full((3, 2), np.inf)), "finite")]:
        with pytest.raises(ValueError, match=match):
            interpolate_maps(*args, (10, 10))


def test_exact_low_rank_is_recovered_to_the_tolerance():
    """The stopping test reads the residual directly near an exact fit: the
    expanded formula cancels to ~1e-8 and stopped ALS there whatever tol."""
    r = np.random.default_rng(0)
    T = reconstruct_fields(r.random((30, 3)) + 0.1, r.standard_normal((16, 3)),
                           r.standard_normal((25, 3)))
    g, F, E, info = cp_als(T, 3, random_state=np.random.default_rng(0))
    assert info["residual"] < 1e-10
    assert np.linalg.norm(reconstruct_fields(g, F, E) - T) / np.linalg.norm(T) < 1e-10


@pytest.mark.parametrize("positions", [
    [(4, c) for c in range(2, 30, 4)],          # one row of beads
    [(r, 20) for r in range(3, 30, 5)],         # one column
    [(5, 5), (20, 25)],                          # two beads (a diagonal line)
])
def test_maps_from_positions_on_one_line(positions):
    """A plane is not determined by positions on one line (the spline's
    degree-1 term made fit fail): along the line, constant across it."""
    positions = np.asarray(positions)
    r = np.random.default_rng(len(positions))
    values = r.random((len(positions), 2))
    maps = interpolate_maps(positions, values, (32, 32))
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()
    np.testing.assert_allclose(maps[:, positions[:, 0], positions[:, 1]], values.T,
                               atol=1e-8)
    step = positions[-1] - positions[0]
    step = step // np.gcd(*step)            # the line's smallest pixel step
    across = np.array([-step[1], step[0]])  # perpendicular, in whole pixels
    for p in positions[:2]:                 # constant across the line
        q = p + across
        assert (0 <= q).all() and (q < 32).all()
        np.testing.assert_allclose(maps[:, q[0], q[1]], maps[:, p[0], p[1]],
                                   atol=1e-8)


def test_maps_from_a_row_of_beads_that_wobbles_by_a_pixel():
    """Within a pixel of a line, the plane's slope across it is not
    determined: a full 2-D spline swung the maps to [-3.3, 5.3] for samples
    in [0.06, 1.47]; along the line they stay in the samples' range."""
    r = np.random.default_rng(0)
    cols = np.arange(8, 128, 16)
    positions = np.stack([64 + r.integers(-1, 2, 8), cols], axis=1)
    values = r.random((8, 2)) * 1.4 + 0.06
    maps = interpolate_maps(positions, values, (128, 128))
    np.testing.assert_allclose(maps[:, positions[:, 0], positions[:, 1]],
                               values.T, atol=1e-8)
    span = values.max() - values.min()
    assert values.min() - 0.1 * span < maps.min()
    assert maps.max() < values.max() + 0.1 * span
    # two rows far apart still make a 2-D spline (it varies across them),
    # also on an elongated image, where they are close against its length
    grid = np.stack([np.r_[np.full(8, 32), np.full(8, 96)], np.r_[cols, cols]], 1)
    two = interpolate_maps(grid, r.random((16, 1)), (128, 128))
    assert not np.allclose(two[0, 32], two[0, 96])
    wobble = positions.copy()          # two beads one row apart, one column
    wobble[1] = wobble[0] + (1, 0)
    values = r.random((8, 2)) * 1.4 + 0.06
    maps = interpolate_maps(wobble, values, (128, 128))
    np.testing.assert_allclose(maps[:, wobble[:, 0], wobble[:, 1]], values.T,
                               atol=1e-8)
    close = np.stack([np.r_[np.full(8, 60), np.full(8, 62)], np.r_[cols, cols]], 1)
    values = r.random((16, 1))        # two rows 2 pixels apart: a 2-D spline
    np.testing.assert_allclose(interpolate_maps(close, values, (128, 128))[
        0, close[:, 0], close[:, 1]], values[:, 0], atol=1e-8)
    strip = grid_positions((32, 512), (2, 16))           # rows 8 and 24
    values = r.random((32, 1))
    two = interpolate_maps(strip, values, (32, 512))
    np.testing.assert_allclose(two[0, strip[:, 0], strip[:, 1]], values[:, 0],
                               atol=1e-8)


@pytest.mark.parametrize("grid", [(1, 8), (8, 1)])
def test_basis_fits_one_row_or_column_of_psfs(grid):
    from deepblur import ProductConvolutionBasis
    from deepblur.datasets import make_random_operators

    ops = make_random_operators(10, image_shape=(32, 32), kernel_shape=(9, 9),
                                grid_shape=grid, random_state=0)
    basis = ProductConvolutionBasis(2, image_shape=(32, 32)).fit(ops.psf_fields)
    assert np.isfinite(basis.maps_).all()
    assert -basis.score(ops.psf_fields) < 0.5


def test_interpolate_maps_merges_samples_at_one_position():
    """Two samples at one pixel (two beads rounded to it) made the spline's
    system singular; they count as one, their mean."""
    positions = np.array([[2, 2], [8, 7], [2, 2], [3, 9], [10, 1]])
    values = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 2.0], [0.5, 0.5], [1.5, -1.0]])
    maps = interpolate_maps(positions, values, (12, 12))
    merged = interpolate_maps(positions[[0, 1, 3, 4]],
                              np.array([[2.0, 1.0], [2.0, 1.0], [0.5, 0.5],
                                        [1.5, -1.0]]), (12, 12))
    np.testing.assert_allclose(maps, merged, atol=1e-10)
    np.testing.assert_allclose(maps[:, 2, 2], [2.0, 1.0], atol=1e-10)


def test_basis_fits_positions_that_round_to_one_pixel(rng):
    from deepblur import ProductConvolutionBasis

    positions = np.array([[2.0, 2.0], [2.2, 2.1], [8.0, 7.0], [3.0, 9.0]])
    X = rng.random((4, 4, 3, 3))
    basis = ProductConvolutionBasis(1, image_shape=(12, 12), positions=positions,
                                    random_state=0).fit(X)
    assert np.isfinite(basis.maps_).all()
