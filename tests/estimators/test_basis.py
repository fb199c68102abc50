"""ProductConvolutionBasis: recovery, API conventions, persistence, bad input."""

import joblib
import numpy as np
import pytest
import torch
from _routing import check_bad_weights_refused, check_weighted_score
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.utils import estimator_checks, get_tags

from deepblur import ConeSimplifier, ProductConvolutionBasis
from deepblur.datasets import make_random_operators
from deepblur.operators.gram import gram_matrix
from deepblur.solvers.psf_decomposition import grid_positions

IMAGE = (24, 24)
GRID = (6, 6)
KSHAPE = (5, 5)


def planted(K=3, P=25, noise=0.0, seed=0, image_shape=IMAGE, grid=GRID):
    """PSF fields of a known rank-K family on a grid (smooth maps, PSF kernels)."""
    r = np.random.default_rng(seed)
    H, W = image_shape
    yy, xx = np.meshgrid(np.linspace(0, 1, H), np.linspace(0, 1, W), indexing="ij")
    maps = np.stack([1 + 0.5 * np.cos(np.pi * ((k + 1) * xx + k * yy) + k)
                     for k in range(K)])
    kernels = r.random((K,) + KSHAPE)
    kernels /= kernels.sum(axis=(1, 2), keepdims=True)
    gamma = r.random((P, K)) + 0.2
    pos = grid_positions(image_shape, grid)
    f_at = maps[:, pos[:, 0], pos[:, 1]]
    fields = np.einsum("pk,kx,khw->pxhw", gamma, f_at, kernels)
    fields = fields.reshape((P,) + grid + KSHAPE)
    if noise:
        fields = fields + noise * np.abs(fields).max() * r.standard_normal(fields.shape)
    return fields, kernels, maps, gamma


# --------------------------------------------------------------- recovery
def test_recovers_planted_family():
    fields, kernels, maps, gamma = planted()
    basis = ProductConvolutionBasis(3, image_shape=IMAGE).fit(fields)
    assert basis.reconstruction_error_ < 1e-3
    assert basis.score(fields) > -1e-3
    # held-out operators of the same family are represented as well
    held_out, *_ = planted(P=10, seed=1)
    # (seed 1 draws other kernels: build held-out fields from the same family)
    g = np.random.default_rng(5).random((10, 3)) + 0.2
    pos = grid_positions(IMAGE, GRID)
    held_out = np.einsum("pk,kx,khw->pxhw", g, maps[:, pos[:, 0], pos[:, 1]],
                         kernels).reshape((10,) + GRID + KSHAPE)
    assert basis.score(held_out) > -1e-3
    # the fitted operators reproduce the planted operators on images
    gamma_hat = basis.transform(held_out)
    u = np.random.default_rng(2).random(IMAGE)
    from deepblur.operators.product_convolution import ProductConvolution
    true_op = ProductConvolution(kernels, maps)
    y_true = true_op.forward(torch.from_numpy(u)[None], torch.from_numpy(g)).numpy()
    y_hat = basis.apply(u, gamma_hat)
    # maps are only known at the grid and interpolated between: a small error
    rel = np.linalg.norm(y_hat - y_true) / np.linalg.norm(y_true)
    assert rel < 2e-2


@pytest.mark.parametrize("noise", [1e-3, 1e-2])
def test_degrades_gracefully_with_noise(noise):
    clean, *_ = planted(P=30)
    eta = np.random.default_rng(3).standard_normal(clean.shape)
    noisy = clean + noise * np.abs(clean).max() * eta
    basis = ProductConvolutionBasis(3, image_shape=IMAGE).fit(noisy)
    # error against the clean fields stays of the order of the noise
    rel_noise = (noise * np.abs(clean).max() * np.sqrt(clean[0].size)
                 / np.linalg.norm(clean[0]))
    assert -basis.score(clean) < rel_noise
    assert -basis.score(noisy) < 1.5 * rel_noise


def test_scattered_positions_equal_grid_fit():
    fields, *_ = planted()
    pos = grid_positions(IMAGE, GRID)
    grid_fit = ProductConvolutionBasis(3, image_shape=IMAGE).fit(fields)
    flat = fields.reshape(fields.shape[0], -1, *KSHAPE)
    scat = ProductConvolutionBasis(3, image_shape=IMAGE, positions=pos).fit(flat)
    np.testing.assert_allclose(scat.kernels_, grid_fit.kernels_, atol=1e-8)
    np.testing.assert_allclose(scat.transform(flat), grid_fit.transform(fields),
                               rtol=1e-6)
    assert scat.inverse_transform(scat.transform(flat)).shape == flat.shape


def test_set_params_positions_takes_effect_on_the_next_fit():
    """set_params(positions=...) after fit changed transform and score at
    once, without a refit (the maps read at the new positions), while
    inverse_transform kept the fitted ones."""
    fields, *_ = planted()
    pos = grid_positions(IMAGE, GRID)
    flat = fields.reshape(fields.shape[0], -1, *KSHAPE)
    scat = ProductConvolutionBasis(3, image_shape=IMAGE, positions=pos).fit(flat)
    gamma, score = scat.transform(flat), scat.score(flat)
    for other in (pos[::-1].copy(), None):
        scat.set_params(positions=other)
        np.testing.assert_array_equal(scat.transform(flat), gamma)
        assert scat.score(flat) == score
    with pytest.raises(ValueError, match="X must have one PSF per position"):
        scat.transform(fields[:, :2].reshape(fields.shape[0], -1, *KSHAPE))
    # the next fit reads the parameter
    refit = scat.set_params(positions=pos[::-1].copy()).fit(flat)
    np.testing.assert_array_equal(refit.positions_, pos[::-1])
    # a basis fitted on a grid takes fields on any grid, whatever positions says
    grid_fit = ProductConvolutionBasis(3, image_shape=IMAGE).fit(fields)
    gamma = grid_fit.transform(fields)
    grid_fit.set_params(positions=pos)
    np.testing.assert_array_equal(grid_fit.transform(fields), gamma)



def test_transform_and_score_take_the_positions_of_fields_measured_elsewhere():
    """PSFs measured elsewhere than the fit's fields (beads of another
    acquisition) are projected with transform(X, positions=...): after
    set_params(positions=...) stopped reaching transform, a basis fitted on a
    grid refused them, telling to 'pass positions for scattered PSFs'."""
    fields, *_ = planted()
    pos = grid_positions(IMAGE, GRID)
    flat = fields.reshape(fields.shape[0], -1, *KSHAPE)
    grid_fit = ProductConvolutionBasis(3, image_shape=IMAGE).fit(fields)
    scat = ProductConvolutionBasis(3, image_shape=IMAGE, positions=pos).fit(flat)
    # the same operators' PSFs on another grid, given as scattered PSFs
    on_grid, *_ = planted(grid=(4, 4))
    other = on_grid.reshape(len(on_grid), 16, *KSHAPE)
    where = grid_positions(IMAGE, (4, 4))
    reference = grid_fit.transform(on_grid)
    for basis in (grid_fit, scat):
        np.testing.assert_allclose(basis.transform(other, positions=where),
                                   reference, rtol=1e-8)
        assert basis.score(other, positions=where) == pytest.approx(
            grid_fit.score(on_grid))
        # the maps are interpolated between the fit's positions
        assert basis.score(other, positions=where) > -5e-2
    with pytest.raises(ValueError, match="or pass positions for scattered"):
        grid_fit.transform(other)
    with pytest.raises(ValueError, match="X must have one PSF per position"):
        scat.transform(other)
    with pytest.raises(ValueError, match=r"\(n_operators, n_positions, kh, kw\) "
                                         "of PSFs at scattered positions"):
        scat.transform(fields)

def test_fitted_attributes_and_normalisation():
    fields, *_ = planted()
    basis = ProductConvolutionBasis(3, image_shape=IMAGE).fit(fields)
    K = 3
    assert basis.kernels_.shape == (K,) + KSHAPE
    assert basis.maps_.shape == (K,) + IMAGE
    np.testing.assert_allclose(np.linalg.norm(basis.kernels_.reshape(K, -1), axis=1), 1)
    np.testing.assert_allclose(np.abs(basis.maps_).reshape(K, -1).max(1), 1)
    assert (basis.kernels_.reshape(K, -1).sum(1) >= 0).all()
    assert np.all(np.diff(basis.component_energy_ratio_) <= 0)
    np.testing.assert_allclose(basis.gram_, gram_matrix(basis.kernels_, basis.maps_))
    assert basis.n_features_in_ == GRID[0] * GRID[1] * 25
    assert basis.n_iter_ >= 1 and basis.grid_shape_ == GRID


def test_inverse_transform_round_trip():
    fields, *_ = planted()
    basis = ProductConvolutionBasis(3, image_shape=IMAGE).fit(fields)
    rec = basis.inverse_transform(basis.transform(fields))
    assert rec.shape == fields.shape
    assert np.linalg.norm(rec - fields) / np.linalg.norm(fields) < 1e-3


def test_inverse_transform_reads_tensors_of_any_kind():
    """Coefficients recording a graph raised torch's "Can't call numpy() on
    Tensor that requires grad", bfloat16 ones a TypeError ('Got unsupported
    ScalarType BFloat16'), where ConeSampler.project reads such estimates."""
    basis = ProductConvolutionBasis.from_components(
        np.random.default_rng(0).random((3, 5, 5)),
        np.random.default_rng(1).random((3, 8, 8)), grid_shape=(2, 2))
    gamma = np.array([[1.0, 0.5, -0.25], [0.0, 2.0, 1.0]])
    expected = basis.inverse_transform(gamma)
    for t in (torch.tensor(gamma, requires_grad=True),
              torch.tensor(gamma, dtype=torch.bfloat16)):
        got = basis.inverse_transform(t)
        assert isinstance(got, np.ndarray) and got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="X must be real"):
        basis.inverse_transform(torch.tensor(gamma) + 1j)


def test_random_init_also_recovers():
    fields, *_ = planted()
    basis = ProductConvolutionBasis(3, image_shape=IMAGE, init="random",
                                    random_state=0).fit(fields)
    assert basis.score(fields) > -1e-3


def _global_rng_state(seed=None):
    """numpy's global RNG (what random_state=None draws from), seeded first."""
    if seed is not None:
        np.random.seed(seed)  # noqa: NPY002 (the legacy global RNG is tested)
    return np.random.get_state()[1].copy()  # noqa: NPY002


def test_svd_init_leaves_the_global_rng_alone():
    """init="svd" is deterministic: fit drew a seed from numpy's global RNG
    (random_state=None) all the same; init="random" still draws from it."""
    fields, *_ = planted()
    before = _global_rng_state(5)
    a = ProductConvolutionBasis(3, image_shape=IMAGE).fit(fields)
    np.testing.assert_array_equal(_global_rng_state(), before)
    b = ProductConvolutionBasis(3, image_shape=IMAGE, random_state=3).fit(fields)
    np.testing.assert_array_equal(a.kernels_, b.kernels_)
    fits = []
    for _ in range(2):
        _global_rng_state(5)
        fits.append(ProductConvolutionBasis(3, image_shape=IMAGE, init="random",
                                            max_iter=3).fit(fields).kernels_)
    np.testing.assert_array_equal(*fits)
    assert not np.array_equal(_global_rng_state(), before)


def test_grid_search_over_n_components_prefers_true_rank():
    fields, *_ = planted(K=3, P=30, noise=1e-3)
    search = GridSearchCV(ProductConvolutionBasis(image_shape=IMAGE),
                          {"n_components": [1, 2, 3]}, cv=3)
    search.fit(fields)
    assert search.best_params_["n_components"] == 3


def test_random_operators_experiment_is_one_fit():
    ops = make_random_operators(12, image_shape=(32, 32), kernel_shape=(9, 9),
                                grid_shape=(8, 8), random_state=0)
    basis = ProductConvolutionBasis(6, image_shape=(32, 32)).fit(ops.psf_fields)
    assert basis.transform(ops.psf_fields).shape == (12, 6)
    # more components explain more
    small = ProductConvolutionBasis(2, image_shape=(32, 32)).fit(ops.psf_fields)
    assert basis.score(ops.psf_fields) > small.score(ops.psf_fields)


# -------------------------------------------------------- operators on images
def test_apply_refuses_sparse_images_by_name(rng):
    """A SciPy sparse image was refused as "u must have 2 or 3 dimensions
    ... got an array of shape () (0 dimensions)", a torch sparse one
    failed in torch."""
    import scipy.sparse as sp

    fields, *_ = planted()
    basis = ProductConvolutionBasis(3, image_shape=IMAGE).fit(fields)
    g = basis.transform(fields)[0]
    u = rng.random(IMAGE)
    for method, name in ((basis.apply, "u"), (basis.adjoint, "v")):
        for bad in (sp.csr_matrix(u), torch.as_tensor(u).to_sparse()):
            with pytest.raises(TypeError, match=f"{name} must be a dense array "
                                                "or tensor; sparse input"):
                method(bad, g)


def test_apply_types_devices_and_dtypes(rng):
    fields, *_ = planted()
    basis = ProductConvolutionBasis(3, image_shape=IMAGE).fit(fields)
    g = basis.transform(fields)[:2]
    u = rng.random((2,) + IMAGE)
    y = basis.apply(u, g)
    assert isinstance(y, np.ndarray) and y.dtype == np.float64 and y.shape == u.shape
    y32 = basis.apply(u.astype(np.float32), g)
    assert y32.dtype == np.float32
    np.testing.assert_allclose(y32, y, rtol=1e-4, atol=1e-5)
    yt = basis.apply(torch.from_numpy(u), torch.from_numpy(g))
    assert isinstance(yt, torch.Tensor)
    np.testing.assert_allclose(yt.numpy(), y)
    assert basis.apply(u[0], g[0]).shape == IMAGE
    # adjoint identity through the estimator
    v = rng.random((2,) + IMAGE)
    np.testing.assert_allclose((y * v).sum(), (u * basis.adjoint(v, g)).sum())
    # integer images become float64
    assert basis.apply((u * 255).astype(np.uint8), g).dtype == np.float64


def test_inputs_not_modified(rng):
    fields, *_ = planted()
    before = fields.copy()
    basis = ProductConvolutionBasis(3, image_shape=IMAGE).fit(fields)
    basis.transform(fields)
    basis.score(fields)
    np.testing.assert_array_equal(fields, before)
    u, g = rng.random(IMAGE), np.ones(3)
    u0, g0 = u.copy(), g.copy()
    basis.apply(u, g)
    basis.adjoint(u, g)
    np.testing.assert_array_equal(u, u0)
    np.testing.assert_array_equal(g, g0)


def test_operator_distance_method():
    fields, *_ = planted()
    basis = ProductConvolutionBasis(3, image_shape=IMAGE).fit(fields)
    g = basis.transform(fields)
    assert basis.operator_distance(g[0], g[0]) == 0
    d = basis.operator_distance(g[:4], g[4:8])
    assert d.shape == (4,) and (d > 0).all()
    assert basis.operator_distance(g[0], 2 * g[0]) == pytest.approx(1.0)


def test_from_components():
    r = np.random.default_rng(0)
    e, f = r.random((2, 3, 3)), r.random((2, 10, 12))
    basis = ProductConvolutionBasis.from_components(e, f, boundary="periodic")
    assert basis.image_shape_ == (10, 12) and basis.n_components == 2
    np.testing.assert_allclose(basis.gram_, gram_matrix(e, f, "periodic"))
    fields = basis.inverse_transform(np.array([[1.0, 2.0]]))
    assert fields.shape == (1, 10, 12, 3, 3)
    np.testing.assert_allclose(basis.transform(fields), [[1.0, 2.0]], rtol=1e-8)
    with pytest.raises(ValueError, match="same number of components"):
        ProductConvolutionBasis.from_components(e, f[:1])


@pytest.mark.parametrize("grid_shape", [(0, 0), (-3, 4), (2.5, 2), "ab", (2, 2, 2),
                                        (True, 2), 0, None])
def test_from_components_refuses_bad_grid_shape(grid_shape):
    """A grid with no (or fractional) positions gave a 'fitted' basis without
    measurement positions, or an IndexError later in inverse_transform."""
    r = np.random.default_rng(0)
    e, f = r.random((2, 3, 3)), r.random((2, 8, 8))
    with pytest.raises(ValueError, match="grid_shape must be a positive int or a "
                                         "pair of positive ints"):
        ProductConvolutionBasis.from_components(e, f, grid_shape=grid_shape)


def test_from_components_grid_shape_int_and_ignored_with_positions():
    r = np.random.default_rng(0)
    e, f = r.random((2, 3, 3)), r.random((2, 8, 8))
    basis = ProductConvolutionBasis.from_components(e, f, grid_shape=3)
    assert basis.grid_shape_ == (3, 3) and basis.positions_.shape == (9, 2)
    # an int pair of numpy ints, and a grid larger than the image is clipped
    basis = ProductConvolutionBasis.from_components(
        e, f, grid_shape=(np.int64(20), np.int64(2)))
    assert basis.grid_shape_ == (8, 2)
    positions = np.array([[1, 1], [4, 6]])
    basis = ProductConvolutionBasis.from_components(e, f, grid_shape=None,
                                                    positions=positions)
    assert basis.grid_shape_ is None and basis.positions_.shape == (2, 2)


# ------------------------------------------------------ sklearn conventions
def test_clone_get_set_params():
    est = ProductConvolutionBasis(4, image_shape=(16, 16), boundary="periodic")
    c = clone(est)
    assert c.get_params() == est.get_params()
    c.set_params(n_components=2)
    assert c.n_components == 2 and est.n_components == 4
    fields, *_ = planted()
    fitted = ProductConvolutionBasis(3, image_shape=IMAGE).fit(fields)
    unfitted = clone(fitted)
    with pytest.raises(NotFittedError):
        unfitted.transform(fields)


def test_fit_is_idempotent_and_returns_self():
    fields, *_ = planted()
    est = ProductConvolutionBasis(3, image_shape=IMAGE)
    assert est.fit(fields) is est
    k1 = est.kernels_.copy()
    est.fit(fields)
    np.testing.assert_array_equal(est.kernels_, k1)


def test_joblib_round_trip(tmp_path, rng):
    fields, *_ = planted()
    basis = ProductConvolutionBasis(3, image_shape=IMAGE).fit(fields)
    u, g = rng.random((2,) + IMAGE), basis.transform(fields)[:2]
    y = basis.apply(u, g)  # fills the spectra cache before saving
    path = tmp_path / "basis.joblib"
    joblib.dump(basis, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.transform(fields), basis.transform(fields))
    np.testing.assert_array_equal(loaded.apply(u, g), y)
    np.testing.assert_array_equal(loaded.gram_, basis.gram_)


# scikit-learn runs none of its common checks on an estimator whose tags say
# it takes no 2-D array (this one takes stacks of PSF fields (P, gy, gx, kh,
# kw) or (P, n_positions, kh, kw)). These checks feed it no tabular data and
# run one by one; the others' intent is covered by the tests of this module
# (idempotence, pickling, clone, NaN/Inf, dtypes, no mutation).
API_CHECKS = [
    estimator_checks.check_estimator_cloneable,
    estimator_checks.check_estimator_tags_renamed,
    estimator_checks.check_valid_tag_types,
    estimator_checks.check_estimator_repr,
    estimator_checks.check_no_attributes_set_in_init,
    estimator_checks.check_estimators_unfitted,
    estimator_checks.check_do_not_raise_errors_in_init_or_set_params,
    estimator_checks.check_mixin_order,
    estimator_checks.check_complex_data,
    estimator_checks.check_estimator_sparse_tag,
    estimator_checks.check_estimator_sparse_array,
    estimator_checks.check_estimator_sparse_matrix,
    estimator_checks.check_transformers_unfitted,
    estimator_checks.check_parameters_default_constructible,
    estimator_checks.check_get_params_invariance,
    estimator_checks.check_set_params,
    estimator_checks.check_fit1d,
]


@pytest.mark.parametrize("check", API_CHECKS, ids=lambda check: check.__name__)
def test_sklearn_compatible_estimator(check):
    check("ProductConvolutionBasis", ProductConvolutionBasis(n_components=1))


def test_tags_say_it_takes_psf_fields():
    """The tags said two_d_array (the default) for 4-D/5-D PSF fields."""
    tags = get_tags(ProductConvolutionBasis())
    assert not tags.input_tags.two_d_array and not tags.input_tags.three_d_array
    assert tags.transformer_tags is not None and not tags.target_tags.required


def test_feature_names_out_and_set_output_in_a_pipeline():
    """A Pipeline holding the basis refused set_output ("set_output is not
    available"): the basis had no get_feature_names_out."""
    fields, *_ = planted()
    with pytest.raises(NotFittedError):
        ProductConvolutionBasis(3, image_shape=IMAGE).get_feature_names_out()
    basis = ProductConvolutionBasis(3, image_shape=IMAGE).fit(fields)
    assert list(basis.get_feature_names_out()) == [
        "productconvolutionbasis0", "productconvolutionbasis1",
        "productconvolutionbasis2"]
    pipe = make_pipeline(ProductConvolutionBasis(3, image_shape=IMAGE),
                         ConeSimplifier(n_rays=2)).set_output(transform="default")
    out = pipe.fit(fields).transform(fields)
    assert isinstance(out, np.ndarray) and out.shape == (len(fields), 2)
    np.testing.assert_allclose(pipe[0].transform(fields),
                               basis.transform(fields))
    assert list(pipe.get_feature_names_out()) == ["conesimplifier0",
                                                  "conesimplifier1"]


def _relative_projection_errors(basis, fields, y=None):
    """Minus each field's relative distance to its least-squares fit by the
    fitted family ``sum_k gamma_k f_k(x) e_k`` (NumPy's lstsq)."""
    pos = grid_positions(IMAGE, GRID)
    design = np.stack([np.outer(basis.maps_[k][pos[:, 0], pos[:, 1]],
                                basis.kernels_[k].ravel()).ravel()
                       for k in range(len(basis.kernels_))], axis=1)
    T = fields.reshape(len(fields), -1)
    gamma = np.linalg.lstsq(design, T.T, rcond=None)[0]
    return -np.linalg.norm(T - (design @ gamma).T, axis=1) / np.linalg.norm(T, axis=1)


def test_weighted_score_in_pipeline_and_grid_search():
    """score took no sample_weight: Pipeline.score failed whenever metadata
    routing was on ("Pipeline.score got unexpected argument(s)
    {'sample_weight'}", even without weights), and with routing off when
    given weights (TypeError); GridSearchCV could not weigh its folds'
    scores. Now it is the weighted mean of the operators' errors."""
    fields, *_ = planted(K=3, P=12, noise=0.05)
    w = np.random.default_rng(3).uniform(0.0, 1.0, len(fields))
    check_weighted_score(ProductConvolutionBasis(2, image_shape=IMAGE), fields,
                         None, w, _relative_projection_errors,
                         grid={"n_components": [1, 2]})
    check_bad_weights_refused(
        ProductConvolutionBasis(2, image_shape=IMAGE).fit(fields), fields, None)


def test_readonly_memmap_input(tmp_path):
    fields, *_ = planted()
    path = tmp_path / "fields.npy"
    np.save(path, fields)
    ro = np.load(path, mmap_mode="r")
    basis = ProductConvolutionBasis(3, image_shape=IMAGE).fit(ro)
    assert basis.score(ro) > -1e-3


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "params, X, match",
    [
        ({}, np.ones((3, 4, 4, 5)), r"X must have 5 dimensions"),
        ({"positions": np.zeros((4, 2))}, np.ones((3, 2, 2, 5, 5)),
         r"X must have 4 dimensions"),
        ({"positions": np.zeros((3, 2))}, np.ones((3, 4, 5, 5)),
         r"positions has 3 rows"),
        ({"positions": np.full((4, 2), 100)}, np.ones((3, 4, 5, 5)),
         r"positions must lie inside image_shape"),
        ({"positions": np.zeros((4, 3))}, np.ones((3, 4, 5, 5)),
         r"positions must have shape \(n_positions, 2\)"),
        ({"kernel_shape": (3, 3)}, np.ones((3, 2, 2, 5, 5)), r"kernel_shape"),
        ({"n_components": 50}, np.ones((3, 2, 2, 5, 5)),
         r"n_components=50 is larger than the data can support"),
        ({"image_shape": (1, 1)}, np.ones((3, 2, 2, 5, 5)), r"image_shape"),
        ({"image_shape": (0, 5)}, np.ones((3, 2, 2, 5, 5)), r"image_shape"),
        ({"kernel_shape": (0, 3)}, np.ones((3, 2, 2, 5, 5)), r"kernel_shape"),
        ({"boundary": "mirror"}, np.ones((3, 2, 2, 5, 5)), r"boundary"),
        ({"n_components": 0}, np.ones((3, 2, 2, 5, 5)), r"n_components"),
        ({}, np.zeros((3, 2, 2, 5, 5)), r"all zeros"),
        # an empty grid or no position: numpy's "cannot reshape array of
        # size 0 into shape (3,0,newaxis)"
        ({}, np.ones((3, 0, 2, 5, 5)), r"X must not be empty"),
        ({}, np.ones((3, 2, 0, 5, 5)), r"X must not be empty"),
        ({"positions": np.zeros((0, 2))}, np.ones((3, 0, 5, 5)),
         r"positions must hold at least one"),
        # strings: numpy's UFuncTypeError; complex: the imaginary part was
        # dropped with only numpy's ComplexWarning (the PSFs read at row 0)
        ({"positions": [["a", "b"]] * 4}, np.ones((3, 4, 5, 5)),
         r"positions must hold numbers.*dtype <U1"),
        ({"positions": np.full((4, 2), 2 + 3j)}, np.ones((3, 4, 5, 5)),
         r"positions must be real"),
    ],
)
def test_bad_fit_input(params, X, match):
    params = {"n_components": 1, "image_shape": (16, 16)} | params
    with pytest.raises(ValueError, match=match):
        ProductConvolutionBasis(**params).fit(X)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_fields(bad):
    fields, *_ = planted()
    fields[0, 0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="X must contain only finite values"):
        ProductConvolutionBasis(3, image_shape=IMAGE).fit(fields)


def test_bad_inputs_after_fit(rng):
    fields, *_ = planted()
    basis = ProductConvolutionBasis(3, image_shape=IMAGE).fit(fields)
    g = np.ones(3)
    with pytest.raises(ValueError, match=r"u must have image_shape \(24, 24\)"):
        basis.apply(rng.random((2, 20, 24)), g)
    with pytest.raises(ValueError, match="u must have 2 or 3 dimensions"):
        basis.apply(rng.random((1, 1, 24, 24)), g)
    with pytest.raises(ValueError, match="gamma must have K=3 coefficients"):
        basis.apply(rng.random(IMAGE), np.ones(4))
    with pytest.raises(ValueError, match="gamma must contain only finite"):
        basis.apply(rng.random(IMAGE), np.array([1, np.nan, 1]))
    with pytest.raises(ValueError, match="u must contain only finite"):
        basis.apply(np.full(IMAGE, np.inf), g)
    with pytest.raises(ValueError, match="v must have image_shape"):
        basis.adjoint(rng.random((5, 5)), g)
    with pytest.raises(ValueError, match="X must have K=3 coefficients"):
        basis.inverse_transform(np.ones((2, 4)))
    with pytest.raises(ValueError, match="kernel_shape"):
        basis.transform(np.ones((2, 6, 6, 3, 3)))
    with pytest.raises(ValueError, match="gamma_b must have K=3"):
        basis.operator_distance(g, np.ones(2))
    with pytest.raises(ValueError, match="X must not be empty"):
        basis.transform(np.ones((2, 0, 6, 5, 5)))
    with pytest.raises(ValueError, match="X must not be empty"):
        basis.score(np.ones((2, 6, 0, 5, 5)))
    with pytest.raises(ValueError, match="positions must hold numbers"):
        basis.transform(np.ones((2, 1, 5, 5)), positions=[["1", "2"]])


def test_not_fitted_errors():
    est = ProductConvolutionBasis()
    for call in (lambda: est.apply(np.ones((128, 128)), np.ones(20)),
                 lambda: est.transform(np.ones((1, 2, 2, 3, 3))),
                 lambda: est.operator_distance(np.ones(20), np.ones(20))):
        with pytest.raises(NotFittedError):
            call()
