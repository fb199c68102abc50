import warnings

import joblib
import numpy as np
import pytest
import sklearn
import torch
from _routing import check_bad_weights_refused, check_weighted_score
from scipy.ndimage import gaussian_filter, uniform_filter
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.utils import estimator_checks
from sklearn.utils.validation import check_is_fitted

from deepblur.estimators.basis import ProductConvolutionBasis
from deepblur.estimators.deblur import TVDeblurrer
from deepblur.metrics import psnr
from deepblur.solvers.tv import deblur

SHAPE = (24, 24)
K = 3


@pytest.fixture(scope="module")
def basis():
    rng = np.random.default_rng(0)
    kernels = rng.random((K, 5, 5))
    kernels /= kernels.sum(axis=(1, 2), keepdims=True)
    maps = rng.random((K,) + SHAPE)
    maps /= maps.sum(axis=0, keepdims=True)
    return ProductConvolutionBasis.from_components(kernels, maps)


@pytest.fixture(scope="module")
def data(basis):
    rng = np.random.default_rng(1)
    n = 6
    clean = np.zeros((n,) + SHAPE)
    for i in range(n):
        a, b = rng.integers(2, 10, size=2)
        clean[i, a:a + 10, b:b + 12] = 1.0
        clean[i, 12:20, 4:9] += 0.5
    gamma = 1.0 + 0.2 * rng.standard_normal((n, K))
    blurry = basis.apply(clean, gamma) + 0.02 * rng.standard_normal(clean.shape)
    return blurry, clean, gamma


class FakeBlurRegressor(BaseEstimator):
    """Fitted stand-in for ResNetBlurRegressor: predicts stored coefficients."""

    def __init__(self, offset=0.0):
        self.offset = offset

    def fit(self, X, y):
        self.table_ = {self._key(x): g for x, g in zip(X, y, strict=True)}
        return self

    @staticmethod
    def _key(x):
        return round(float(np.asarray(x).sum()), 6)

    def predict(self, X):
        check_is_fitted(self)
        return np.stack([self.table_[self._key(x)] + self.offset for x in X])


def _est(basis, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("lam", 100.0)
    return TVDeblurrer(basis, **kw)


def test_fit_attributes_and_transform(basis, data):
    X, clean, gamma = data
    est = _est(basis)
    assert est.fit(X) is est
    assert est.image_shape_ == SHAPE and est.n_components_ == K
    assert est.n_features_in_ == SHAPE[0] * SHAPE[1]
    U = est.transform(X, gamma=gamma)
    assert isinstance(U, np.ndarray) and U.shape == X.shape and U.dtype == np.float32
    assert est.objective_history_.shape == (est.n_iter_ + 1, len(X))
    assert est.converged_.all()
    np.testing.assert_array_equal(est.lam_, np.full(len(X), 100.0))
    # deblurring helps
    assert est.score(X, clean, gamma=gamma) > np.mean(
        10 * np.log10(1 / np.mean((X - clean) ** 2, axis=(1, 2))))


def test_same_as_solver_function(basis, data):
    X, _, gamma = data
    est = _est(basis, dtype="float64", tol=1e-7).fit(X)
    U = est.transform(X, gamma=gamma)
    op = basis.operator_
    g = torch.as_tensor(gamma)
    ref, _ = deblur(torch.as_tensor(X), lambda u: op.forward(u, g),
                    lambda v: op.adjoint(v, g), 100.0, tol=1e-7)
    np.testing.assert_allclose(U, ref.numpy(), atol=1e-6)


def test_single_image_shared_gamma_and_torch(basis, data):
    X, _, gamma = data
    est = _est(basis).fit(X)
    one = est.transform(X[0], gamma=gamma[0])
    assert one.shape == SHAPE
    both = est.transform(X[:2], gamma=gamma[0])
    np.testing.assert_allclose(both[0], one, atol=1e-5)
    out = est.transform(torch.as_tensor(X[:2]), gamma=torch.as_tensor(gamma[:2]))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32


@pytest.mark.parametrize("regularization", ["tv", "l1"])
def test_positive(basis, data, regularization):
    X, _, gamma = data
    U = _est(basis, positive=True, regularization=regularization).fit(X).transform(
        X - 0.3, gamma=gamma)
    assert U.min() >= 0.0


def test_auto_lam(basis, data):
    X, clean, gamma = data
    est = _est(basis, lam="auto").fit(X)
    est.transform(X, gamma=gamma)
    assert est.lam_.shape == (len(X),) and np.all(est.lam_ > 0)


def test_convergence_warning(basis, data):
    X, _, gamma = data
    est = _est(basis, max_iter=2, tol=1e-12).fit(X)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        est.transform(X, gamma=gamma)
    assert est.n_iter_ == 2 and not est.converged_.any()


def test_inputs_not_modified(basis, data):
    X, clean, gamma = data
    X0, g0, c0 = X.copy(), gamma.copy(), clean.copy()
    est = _est(basis).fit(X)
    est.transform(X, gamma=gamma)
    est.score(X, clean, gamma=gamma)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(gamma, g0)
    np.testing.assert_array_equal(clean, c0)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"lam": 0.0}, "lam"),
        ({"lam": -1.0}, "lam"),
        ({"lam": "silverman"}, "lam"),
        ({"regularization": "tikhonov"}, "regularization"),
        ({"max_iter": 0}, "max_iter"),
        ({"tol": -1e-3}, "tol"),
        ({"dtype": "float16"}, "dtype"),
        ({"boundary": "zero"}, "boundary"),
        ({"basis": None}, "basis"),
        ({"blur_estimator": object()}, "blur_estimator"),
    ],
)
def test_bad_parameters(basis, data, params, match):
    X, _, _ = data
    est = _est(basis).set_params(**params)
    with pytest.raises(ValueError, match=match):
        est.fit(X)


def test_unfitted_basis(data):
    X, _, _ = data
    with pytest.raises(ValueError, match="basis must be a fitted"):
        TVDeblurrer(ProductConvolutionBasis(n_components=K, image_shape=SHAPE)).fit(X)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_asked_without_cuda(basis, data):
    with pytest.raises(ValueError, match="device='cuda'"):
        _est(basis, device="cuda").fit(data[0])


def test_bad_inputs(basis, data):
    X, clean, gamma = data
    est = _est(basis).fit(X)
    with pytest.raises(ValueError, match="X must have image_shape"):
        est.transform(np.zeros((2, 20, 24)), gamma=gamma[:2])
    with pytest.raises(ValueError, match="X must have image_shape"):
        est.fit(np.zeros((2, 20, 24)))
    with pytest.raises(ValueError, match="X must have 2 or 3 dimensions"):
        est.transform(np.zeros((1, 1) + SHAPE), gamma=gamma[:1])
    with pytest.raises(ValueError, match="gamma must have K=3"):
        est.transform(X, gamma=gamma[:, :2])
    with pytest.raises(ValueError, match="gamma must have one row per image"):
        est.transform(X, gamma=gamma[:2])
    with pytest.raises(ValueError, match="gamma must have 1 or 2 dimensions"):
        est.transform(X, gamma=gamma[None])
    for empty in (X[:0], np.zeros((0, 2 * SHAPE[0], 2 * SHAPE[1]))):
        with pytest.raises(ValueError, match="X must hold at least one image"):
            est.transform(empty, gamma=gamma[:0])
    bad = X.copy()
    bad[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="X must contain only finite"):
        est.transform(bad, gamma=gamma)
    bad_g = gamma.copy()
    bad_g[1, 0] = np.inf
    with pytest.raises(ValueError, match="gamma must contain only finite"):
        est.transform(X, gamma=bad_g)
    with pytest.raises(ValueError, match="blur_estimator is None"):
        est.transform(X)
    with pytest.raises(ValueError, match="y must have the shape of X"):
        est.score(X, clean[:2], gamma=gamma)
    bad_y = clean.copy()
    bad_y[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="y must contain only finite"):
        est.score(X, bad_y, gamma=gamma)
    # a background patch among the clean images: scored with the set's range
    flat = clean.copy()
    flat[1] = 0.3
    U = est.transform(X, gamma=gamma)
    whole = flat.max() - flat.min()
    expected = np.mean(psnr(flat, U, data_range=np.where(
        np.ptp(flat, axis=(1, 2)) > 0, np.ptp(flat, axis=(1, 2)), whole)))
    assert est.score(X, flat, gamma=gamma) == pytest.approx(expected)


def test_transform_before_fit(basis, data):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        _est(basis).transform(data[0], gamma=data[2])


def test_blind_predictor_output_checked(basis, data):
    X, _, gamma = data
    reg = FakeBlurRegressor().fit(X, np.zeros((len(X), K + 1)))
    est = _est(basis, blur_estimator=reg).fit(X)
    with pytest.raises(ValueError, match=r"blur_estimator.predict\(X\) must have K"):
        est.transform(X)


def test_blind_mode_equals_non_blind(basis, data):
    X, _, gamma = data
    reg = FakeBlurRegressor().fit(X, gamma)
    est = _est(basis, blur_estimator=reg).fit(X)
    np.testing.assert_allclose(est.transform(X), est.transform(X, gamma=gamma))


def test_clone_shares_fitted_components(basis, data):
    X, _, gamma = data
    reg = FakeBlurRegressor().fit(X, gamma)
    est = _est(basis, blur_estimator=reg)
    cloned = clone(est)
    assert cloned.basis is basis and cloned.blur_estimator is reg
    assert cloned.lam == est.lam and not hasattr(cloned, "image_shape_")
    # an unfitted estimator is cloned as usual
    fresh = FakeBlurRegressor(offset=1.0)
    cloned = clone(_est(basis, blur_estimator=fresh))
    assert cloned.blur_estimator is not fresh
    assert cloned.blur_estimator.get_params() == fresh.get_params()
    # FrozenEstimator works too
    frozen = FrozenEstimator(reg)
    assert clone(_est(basis, blur_estimator=frozen)).blur_estimator is frozen


@pytest.mark.parametrize("wrap", [False, True])
def test_grid_search_blind(basis, data, wrap):
    X, clean, gamma = data
    reg = FakeBlurRegressor().fit(X, gamma)
    blur_estimator = FrozenEstimator(reg) if wrap else reg
    search = GridSearchCV(
        _est(basis, blur_estimator=blur_estimator, max_iter=100),
        {"lam": [1.0, 100.0, 1e4]},
        cv=KFold(2),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, clean)
    assert search.best_params_["lam"] == 100.0
    assert search.best_estimator_.blur_estimator is blur_estimator
    assert np.isfinite(search.best_score_)


def test_grid_over_blur_estimators_needs_them_frozen(basis, data):
    """GridSearchCV clones the values of its grid: a grid of fitted
    regressors got unfitted copies and failed in the regressor; the error now
    says to freeze them, and frozen ones are compared."""
    from sklearn.exceptions import NotFittedError

    X, clean, gamma = data
    good = FakeBlurRegressor().fit(X, gamma)
    off = FakeBlurRegressor(offset=0.5).fit(X, gamma)
    est = _est(basis, blur_estimator=good, max_iter=100)
    with pytest.raises(NotFittedError, match="blur_estimator must be fitted.*"
                                             "FrozenEstimator"):
        GridSearchCV(est, {"blur_estimator": [good, off]}, cv=KFold(2),
                     error_score="raise").fit(X, clean)
    search = GridSearchCV(est, {"blur_estimator": [FrozenEstimator(off),
                                                   FrozenEstimator(good)]},
                          cv=KFold(2), error_score="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(X, clean)
    assert search.best_estimator_.blur_estimator.estimator is good
    with pytest.raises(ValueError, match="unfitted ProductConvolutionBasis.*"
                                         "FrozenEstimator"):
        _est(clone(basis)).fit(X)
    # a network, unfitted (skorch says "not initialized")
    from deepblur import ResNetBlurRegressor

    with pytest.raises(NotFittedError, match="not initialized.*FrozenEstimator"):
        _est(basis, blur_estimator=ResNetBlurRegressor(basis=basis)).fit(
            X).transform(X)
    # large images: the same advice from the tiles' estimates
    big = np.tile(X[0], (2, 2))
    with pytest.raises(NotFittedError, match="FrozenEstimator"):
        _est(basis, blur_estimator=clone(good), max_iter=2).fit(big).transform(big)


class _Stateless(BaseEstimator):
    """An estimator with nothing to learn: fit returns self, no attributes."""

    def __init__(self, gamma=None):
        self.gamma = gamma

    def fit(self, X, y=None):
        return self

    def predict(self, X):
        return np.tile(self.gamma, (len(X), 1))


class _DuckTyped:
    """fit and predict, but no scikit-learn base class."""

    def __init__(self, gamma):
        self.gamma = gamma

    def fit(self, X, y=None):
        return self

    def predict(self, X):
        return np.tile(self.gamma, (len(X), 1))


def test_blur_estimators_without_fitted_attributes_are_used(basis, data):
    """Estimators that scikit-learn cannot tell fitted (nothing learnt, or
    not its estimators) are used as they are, cloned or not: only what their
    own predict refuses is called unfitted."""
    X, _, gamma = data
    for estimator in (_Stateless(gamma[0]).fit(X), _DuckTyped(gamma[0])):
        est = _est(basis, blur_estimator=estimator, max_iter=50)
        expected = est.fit(X).transform(X, gamma=gamma[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            np.testing.assert_allclose(est.transform(X), expected)
            np.testing.assert_allclose(clone(est).fit(X).transform(X), expected)


def test_grid_search_non_blind_with_metadata_routing(basis, data):
    X, clean, gamma = data
    with sklearn.config_context(enable_metadata_routing=True):
        est = _est(basis, max_iter=100).set_score_request(gamma=True)
        search = GridSearchCV(est, {"lam": [1.0, 100.0, 1e4]}, cv=KFold(2))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            search.fit(X, clean, gamma=gamma)
    assert search.best_params_["lam"] == 100.0


def _psnrs(est, X, clean):
    """Each image's PSNR by hand, on its clean version's peak-to-peak range."""
    U = est.transform(X).astype(np.float64)
    mse = np.mean((U - clean) ** 2, axis=(1, 2))
    return 10 * np.log10(np.ptp(clean, axis=(1, 2)) ** 2 / mse)


def test_weighted_score_in_pipeline_and_grid_search(basis, data):
    """score took no sample_weight: Pipeline.score failed whenever metadata
    routing was on ("Pipeline.score got unexpected argument(s)
    {'sample_weight'}", even without weights), and with routing off when
    given weights (TypeError). Now it is the weighted mean of the images'
    PSNRs, blind and with gamma routed beside the weights."""
    X, clean, gamma = data
    reg = FakeBlurRegressor().fit(X, gamma)
    w = np.array([0.2, 1.0, 0.0, 3.0, 0.5, 1.5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check_weighted_score(_est(basis, blur_estimator=reg, max_iter=60), X,
                             clean, w, _psnrs, grid={"lam": [1.0, 100.0]})
        est = _est(basis, max_iter=60).fit(X)
        expected = np.average(_psnrs(_est(basis, blur_estimator=reg, max_iter=60)
                                     .fit(X), X, clean), weights=w)
        assert est.score(X, clean, gamma=gamma, sample_weight=w) == \
            pytest.approx(expected, rel=1e-6)
        with sklearn.config_context(enable_metadata_routing=True):
            search = GridSearchCV(
                _est(basis, max_iter=60).set_score_request(gamma=True,
                                                           sample_weight=True),
                {"lam": [100.0]}, cv=KFold(2)).fit(X, clean, gamma=gamma,
                                                   sample_weight=w)
        train, test = next(KFold(2).split(X))
        assert search.cv_results_["split0_test_score"][0] == pytest.approx(
            est.score(X[test], clean[test], gamma=gamma[test],
                      sample_weight=w[test]), rel=1e-6)


@pytest.mark.parametrize("check", [estimator_checks.check_estimator_sparse_array,
                                   estimator_checks.check_estimator_sparse_matrix,
                                   estimator_checks.check_complex_data],
                         ids=lambda check: check.__name__)
def test_sparse_and_complex_input_are_refused_by_name(basis, check):
    """A sparse matrix failed with NumPy's "setting an array element with a
    sequence"."""
    check("TVDeblurrer", _est(basis))


def test_bad_sample_weight_is_refused_before_the_solve(basis, data):
    X, clean, gamma = data
    est = _est(basis, blur_estimator=FakeBlurRegressor().fit(X, gamma)).fit(X)
    check_bad_weights_refused(est, X, clean)
    assert not hasattr(est, "n_iter_")      # no image was deblurred


def test_the_shared_basis_and_blur_estimator_parameters_cannot_be_set(basis, data):
    """As the regressors' basis and sampler: fitted components that clone
    shares, never refitted by fit; their parameters are not listed and not
    settable (set_params would change the components of every clone)."""
    X, _, gamma = data
    reg = FakeBlurRegressor().fit(X, gamma)
    est = _est(basis, blur_estimator=reg)
    assert not [k for k in est.get_params() if "__" in k]
    tol = basis.tol
    for params in ({"basis__tol": 1.0}, {"blur_estimator__anything": 1},
                   {"lam": 3.0, "basis__tol": 1.0}):
        with pytest.raises(ValueError, match="uses its basis and blur_estimator"):
            est.set_params(**params)
    assert basis.tol == tol and est.lam != 3.0
    assert clone(est).basis is basis and est.set_params(lam=3.0).lam == 3.0


def test_fit_transform_non_blind_alone_and_in_a_pipeline(basis, data):
    """gamma reaches transform: fit_transform(X, gamma=...) and a Pipeline's
    fit_transform routing gamma to the deblurrer's transform."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    X, _, gamma = data
    expected = _est(basis, max_iter=20).fit(X).transform(X, gamma=gamma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        np.testing.assert_array_equal(
            _est(basis, max_iter=20).fit_transform(X, gamma=gamma), expected)
        with sklearn.config_context(enable_metadata_routing=True):
            pipe = make_pipeline(
                FunctionTransformer(),
                _est(basis, max_iter=20).set_transform_request(gamma=True))
            np.testing.assert_array_equal(pipe.fit_transform(X, gamma=gamma),
                                          expected)
        with pytest.raises(ValueError, match="blur_estimator is None"):
            _est(basis, max_iter=20).fit_transform(X)


def test_joblib_round_trip(basis, data, tmp_path):
    X, _, gamma = data
    reg = FakeBlurRegressor().fit(X, gamma)
    est = _est(basis, blur_estimator=reg).fit(X)
    path = tmp_path / "deblurrer.joblib"
    joblib.dump(est, path)
    loaded = joblib.load(path)
    np.testing.assert_allclose(loaded.transform(X[:2]), est.transform(X[:2]))
    assert loaded.get_params(deep=False).keys() == est.get_params(deep=False).keys()


@pytest.mark.parametrize("device", ["cuda", "auto"])
def test_fitted_on_cuda_loads_and_runs_on_cpu(basis, data, tmp_path, monkeypatch,
                                              device):
    X, _, gamma = data
    est = _est(basis, device="cpu").fit(X)
    expected = est.transform(X[:2], gamma=gamma[:2])
    est.set_params(device=device)
    est._device = torch.device("cuda")        # as fitted on a GPU machine
    joblib.dump(est, tmp_path / "d.joblib")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if device == "cuda":
        with pytest.warns(UserWarning, match="CUDA is not available"):
            loaded = joblib.load(tmp_path / "d.joblib")
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loaded = joblib.load(tmp_path / "d.joblib")
    np.testing.assert_allclose(loaded.transform(X[:2], gamma=gamma[:2]), expected,
                               rtol=1e-5, atol=1e-6)


def test_fitted_on_mps_loads_and_runs_on_cpu(basis, data, tmp_path, monkeypatch):
    """Only CUDA fell back to the CPU on load; an 'mps' deblurrer kept its
    device where there is none (since resolve_device accepts mps where
    present)."""
    from deepblur import _validation

    X, _, gamma = data
    est = _est(basis, device="cpu").fit(X)
    expected = est.transform(X[:2], gamma=gamma[:2])
    est.set_params(device="mps")
    est._device = torch.device("mps")
    joblib.dump(est, tmp_path / "d.joblib")
    monkeypatch.setitem(_validation._OTHER_ACCELERATORS, "mps", lambda: False)
    with pytest.warns(UserWarning, match="'mps' is not available here"):
        loaded = joblib.load(tmp_path / "d.joblib")
    assert loaded._device.type == "cpu"
    np.testing.assert_allclose(loaded.transform(X[:2], gamma=gamma[:2]), expected,
                               rtol=1e-5, atol=1e-6)


def test_plain_predictor_object(basis, data):
    X, _, gamma = data

    class Predictor:  # not a scikit-learn estimator: shared by clone
        def predict(self, X):
            return np.tile(gamma[0], (len(X), 1))

    pred = Predictor()
    est = _est(basis, blur_estimator=pred)
    assert clone(est).blur_estimator is pred
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        U = est.fit(X).transform(X[:2])
    assert U.shape == (2,) + SHAPE


@pytest.mark.cuda
def test_cuda(basis, data):
    X, _, gamma = data
    est = TVDeblurrer(basis, lam=100.0, device="cuda").fit(X)
    U = est.transform(torch.as_tensor(X), gamma=gamma)
    assert U.device.type == "cuda"
    # float32: cuFFT and the CPU's FFT round differently and 500 iterations
    # carry it (measured on an H100: 3e-3 of an entry at worst, the norm
    # within 1e-3), so compare norms. float64: both devices solve the same
    # problem with the same step sizes (the power iteration's start is drawn
    # on the CPU), so only float64 rounding separates them.
    cpu = _est(basis).fit(X).transform(X, gamma=gamma)
    U = U.cpu().numpy()
    assert np.linalg.norm(U - cpu) <= 1e-3 * np.linalg.norm(cpu)
    U64 = TVDeblurrer(basis, lam=100.0, device="cuda", dtype="float64").fit(X)
    cpu64 = _est(basis, dtype="float64").fit(X).transform(X, gamma=gamma)
    diff = np.linalg.norm(U64.transform(X, gamma=gamma) - cpu64)
    assert diff <= 1e-8 * np.linalg.norm(cpu64)


class _ConstantGamma:
    """A blur estimator that predicts the same gamma for every image/tile."""

    def __init__(self, gamma):
        self.gamma = np.asarray(gamma, dtype=np.float64)

    def predict(self, X):
        return np.tile(self.gamma, (len(X), 1))


def test_last_transform_attributes_describe_the_last_call_only():
    """A call on large images (blocks solved apart) sets converged_ per image
    and no objective_history_; a refit drops what the last call set."""
    rng = np.random.default_rng(4)
    small = ProductConvolutionBasis.from_components(rng.random((2, 5, 5)),
                                                    np.ones((2, 24, 24)))
    gamma = np.array([0.7, 0.4])
    d = TVDeblurrer(small, lam=50.0, max_iter=20, device="cpu").fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        d.transform(rng.random((3, 24, 24)), gamma=gamma)
        assert d.converged_.shape == (3,)
        assert d.objective_history_.shape[1] == 3
        d.transform(rng.random((2, 40, 48)), gamma=gamma)
        assert d.converged_.shape == d.lam_.shape == (2,)
        assert not d.converged_.any()        # 20 iterations at tol 1e-5
        assert not hasattr(d, "objective_history_")
        d.transform(rng.random((24, 24)), gamma=gamma)
    d.fit()
    for name in ("n_iter_", "objective_history_", "converged_", "lam_"):
        assert not hasattr(d, name)


def test_large_images_by_tiles_match_the_operator_of_the_whole_image():
    """Constant maps: the blended tile operators are one convolution of the
    large image, so tiled deblurring equals deblurring with a basis of the
    large image's shape (an independent construction)."""
    rng = np.random.default_rng(3)
    kernels = rng.random((2, 5, 5))
    small = ProductConvolutionBasis.from_components(kernels, np.ones((2, 24, 24)))
    large = ProductConvolutionBasis.from_components(kernels, np.ones((2, 64, 96)))
    gamma = np.array([0.7, 0.4])
    u = rng.random((2, 64, 96))
    y = large.apply(u, gamma) + 0.01 * rng.standard_normal(u.shape)
    ref = TVDeblurrer(large, lam=200.0, tol=1e-7, max_iter=300,
                      device="cpu").fit(y).transform(y, gamma=gamma)
    tiled = TVDeblurrer(small, lam=200.0, tol=1e-7, max_iter=300, device="cpu",
                        tile_stride=8).fit(y)
    np.testing.assert_allclose(tiled.transform(y, gamma=gamma), ref, atol=2e-3)
    blind = TVDeblurrer(small, lam=200.0, tol=1e-7, max_iter=300, device="cpu",
                        blur_estimator=_ConstantGamma(gamma)).fit(y)
    np.testing.assert_allclose(blind.transform(y[0]), ref[0], atol=2e-3)
    assert blind.lam_.shape == (1,)
    # memory-bounded: block-wise solves of at most 4 200 pixels, seams included
    # (converged solves of a Gaussian blur: TV is then local enough)
    from deepblur.datasets import gaussian_kernel

    gauss = np.stack([gaussian_kernel((5, 5), (1.0, 1.5), 0.3),
                      gaussian_kernel((5, 5), (1.2, 1.0), 1.0)])
    small_g = ProductConvolutionBasis.from_components(gauss, np.ones((2, 24, 24)))
    y_g = ProductConvolutionBasis.from_components(gauss, np.ones((2, 64, 96))).apply(
        u[:1], gamma)
    solve = dict(lam=200.0, tol=0.0, max_iter=800, device="cpu", dtype="float64")
    with warnings.catch_warnings():       # tol=0: a fixed number of iterations
        warnings.simplefilter("ignore", ConvergenceWarning)
        whole = TVDeblurrer(small_g, **solve).fit(y_g).transform(y_g, gamma=gamma)
        blocks = TVDeblurrer(small_g, max_pixels=4200, **solve).fit(y_g).transform(
            y_g, gamma=gamma)
    assert np.abs(blocks - whole).max() < 1e-2 * np.ptp(whole)


def _windows(basis, n, pad, seed):
    """Windows of larger scenes: each scene blurred with the basis's maps
    extended by their edge values, then cropped (no dark surrounding)."""
    rng = np.random.default_rng(seed)
    H, W = SHAPE
    maps = np.pad(basis.maps_, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    big = ProductConvolutionBasis.from_components(basis.kernels_, maps)
    scenes = np.stack([0.3 + gaussian_filter(rng.random((H + 2 * pad, W + 2 * pad)),
                                             1.0) for _ in range(n)])
    gamma = 1.0 + 0.2 * rng.standard_normal((n, K))
    y = big.apply(scenes, gamma)[:, pad:-pad, pad:-pad]
    return (y + 0.01 * rng.standard_normal(y.shape), scenes[:, pad:-pad, pad:-pad],
            gamma)


def test_unknown_boundary_solves_on_the_extended_image(basis):
    """boundary="unknown" is the solver on the image extended by the kernel
    radius (2) per side, 28x28, with a zero-boundary basis of the extended
    shape (maps extended by their edge values), the data term on the image's
    pixels, started from the image extended by its edge values; batched, one
    gamma per image. The FFTs' padding to a fast length (30) is inside the
    operator, not in the TV."""
    X, _, gamma = _windows(basis, 3, 6, 0)
    est = _est(basis, boundary="unknown", dtype="float64", tol=0, max_iter=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        U = est.fit(X).transform(X, gamma=gamma)
    pads = ((2, 2), (2, 2))
    maps = np.pad(basis.maps_, ((0, 0),) + pads, mode="edge")
    ext = ProductConvolutionBasis.from_components(basis.kernels_, maps).operator_
    mask = torch.zeros((28, 28), dtype=torch.float64)
    mask[2:26, 2:26] = 1.0
    g = torch.as_tensor(gamma)
    y = torch.as_tensor(np.pad(X, ((0, 0),) + pads, mode="edge"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ref, _ = deblur(y * mask, lambda u: ext.forward(u, g) * mask,
                        lambda v: ext.adjoint(v * mask, g), 100.0, tol=0,
                        max_iter=40, x0=y)
    np.testing.assert_allclose(U, ref[:, 2:26, 2:26].numpy(), atol=1e-8)
    assert U.shape == X.shape


def test_unknown_boundary_restores_the_border_of_windows(basis):
    """On windows of larger scenes the zero model rings at the border; the
    unknown boundary restores it (measured: mean error on the 3-pixel border
    0.039 against 0.48 with the zero model, blurry 0.073; whole images 0.039,
    0.41, 0.072)."""
    X, clean, gamma = _windows(basis, 4, 6, 1)
    errors = {}
    for boundary in ("model", "unknown"):
        U = _est(basis, boundary=boundary, lam=300.0, tol=1e-7,
                 max_iter=2000).fit(X).transform(X, gamma=gamma)
        errors[boundary] = np.abs(U - clean)
    errors["blurry"] = np.abs(X - clean)
    border = np.ones(SHAPE, dtype=bool)
    border[3:-3, 3:-3] = False
    band = {k: e[:, border].mean() for k, e in errors.items()}
    assert band["unknown"] < 0.2 * band["model"]
    assert band["unknown"] < 0.7 * band["blurry"]
    assert errors["unknown"].mean() < 0.7 * errors["blurry"].mean()


def test_unknown_boundary_reaches_large_images():
    """Large images: the tiled solve with boundary="unknown" is
    deblur_stitched's with the given gamma on every tile."""
    from deepblur.tiling import deblur_stitched, tile_grid

    rng = np.random.default_rng(5)
    small = ProductConvolutionBasis.from_components(rng.random((2, 5, 5)),
                                                    np.ones((2, 24, 24)))
    y = rng.random((40, 56))
    gamma = np.array([0.6, 0.5])
    est = TVDeblurrer(small, lam=50.0, device="cpu", dtype="float64", tol=0,
                      max_iter=20, boundary="unknown").fit(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        U = est.transform(y, gamma=gamma)
        grid = tile_grid(y.shape, (24, 24))
        ref, _ = deblur_stitched(y, small, np.tile(gamma, (grid.n_tiles, 1)), grid,
                                 lam=50.0, boundary="unknown", tol=0, max_iter=20,
                                 dtype="float64")
        model, _ = deblur_stitched(y, small, np.tile(gamma, (grid.n_tiles, 1)),
                                   grid, lam=50.0, tol=0, max_iter=20,
                                   dtype="float64")
    np.testing.assert_allclose(U, ref, atol=1e-10)
    assert np.abs(U - model).max() > 1e-3


def test_deblurrer_pickled_without_boundary_loads(basis, data, tmp_path):
    X, _, gamma = data
    est = _est(basis).fit(X)
    del est.__dict__["boundary"]          # as pickled before the parameter
    joblib.dump(est, tmp_path / "old.joblib")
    old = joblib.load(tmp_path / "old.joblib")
    assert old.get_params()["boundary"] == "model"
    np.testing.assert_allclose(old.transform(X, gamma=gamma),
                               _est(basis).fit(X).transform(X, gamma=gamma))


def test_large_image_errors():
    rng = np.random.default_rng(4)
    small = ProductConvolutionBasis.from_components(rng.random((2, 5, 5)),
                                                    np.ones((2, 24, 24)))
    y = rng.random((40, 56))
    est = TVDeblurrer(small, lam=10.0, device="cpu").fit(y)
    with pytest.raises(ValueError, match="blur_estimator is None"):
        est.transform(y)
    with pytest.raises(ValueError, match="gamma must have K=2 coefficients"):
        est.transform(y, gamma=np.ones(3))
    with pytest.raises(ValueError, match="one row per image"):
        est.transform(np.stack([y, y]), gamma=np.ones((3, 2)))
    bad = y.copy()
    bad[1, 2] = np.inf
    with pytest.raises(ValueError, match="finite"):
        est.transform(bad, gamma=np.ones(2))
    with pytest.raises(ValueError, match="too small"):
        est.set_params(max_pixels=50).transform(y, gamma=np.ones(2))
    with pytest.raises(ValueError, match="image_shape"):
        est.transform(rng.random((20, 56)), gamma=np.ones(2))   # smaller on an axis


def test_auto_lam_warns_on_integer_images(basis, data):
    """lam='auto' is calibrated on [0, 1] images: the same image in 8-bit
    counts is over-smoothed (measured by the audit: 17.9 dB against 31.8 dB
    for the image divided by 255), so integer input is flagged."""
    X, _, gamma = data
    counts = np.clip(np.round(X * 200), 0, 255).astype(np.uint8)
    est = _est(basis, lam="auto", max_iter=5).fit(X)
    with pytest.warns(UserWarning, match=r"integers \(uint8\).*Divide the images"):
        est.transform(counts, gamma=gamma)
    with pytest.warns(UserWarning, match=r"integers \(torch.int16\)"):
        est.transform(torch.as_tensor(counts.astype(np.int16)), gamma=gamma)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.transform(counts / 255.0, gamma=gamma)
        est.transform(counts / 255.0 * 40, gamma=gamma)  # simulator-like units
        _est(basis, lam=100.0, max_iter=5).fit(X).transform(counts, gamma=gamma)


def test_auto_lam_warns_on_counts_stored_as_floats(basis, data):
    """16-bit counts read as float32 (65 535 times their [0, 1] units lost 19
    dB with lam='auto', 255 times 5 dB) had no warning: only integer dtypes
    did. Images scaled to a mean, whose sparse peaks may pass 100, are not
    whole numbers and do not warn."""
    X, _, gamma = data
    est = _est(basis, lam="auto", max_iter=5).fit(X)
    u16 = np.clip(np.round(X * 50_000), 0, 65535)
    for counts in (u16.astype(np.float32), torch.as_tensor(np.round(X * 255) + 1)):
        with pytest.warns(UserWarning, match=r"whole-numbered floats reaching"):
            est.transform(counts, gamma=gamma)
    sparse = np.zeros_like(X)
    sparse[:, 5, 7], sparse[:, 15, 12] = 150.3, 99.7     # scaled point sources
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.transform(sparse, gamma=gamma)


class _BrightnessReader:
    """A blur estimator that, like a network trained at a fixed image mean,
    reads the operator's gain from the image's brightness (gamma = mean/0.5
    times a fixed direction), and records the means it was given."""

    def __init__(self, direction):
        self.direction = np.asarray(direction, dtype=np.float64)
        self.seen = []

    def predict(self, X):
        means = np.asarray(X, dtype=np.float64).reshape(len(X), -1).mean(1)
        self.seen.append(means)
        return means[:, None] / 0.5 * self.direction


def _identity_basis(shape, n=2):
    e = np.zeros((n, 3, 3))
    e[:, 1, 1] = 1.0
    return ProductConvolutionBasis.from_components(e, np.full((n,) + shape, 1.0 / n))


def test_unit_gain_keeps_the_brightness():
    """H = 2 I (an identity kernel with gain 2): the solve divides the image
    by 2, unless unit_gain rescales the operator to gain 1 (closed form: a
    smooth image deblurred with a large lam is itself)."""
    basis = _identity_basis(SHAPE)
    rng = np.random.default_rng(0)
    X = 0.4 + gaussian_filter(rng.random((2,) + SHAPE), 3.0)
    gamma = np.array([1.0, 3.0])          # gain (1 + 3) / 2 = 2
    solve = dict(lam=1e4, tol=1e-8, max_iter=400, dtype="float64")
    plain = _est(basis, **solve).fit(X).transform(X, gamma=gamma)
    unit = _est(basis, unit_gain=True, **solve).fit(X).transform(X, gamma=gamma)
    np.testing.assert_allclose(plain, X / 2, atol=2e-3)
    np.testing.assert_allclose(unit, X, atol=2e-3)
    bad = _est(basis, unit_gain=True, **solve).fit(X)
    with pytest.raises(ValueError, match="non-positive gain .* unit_gain=False"):
        bad.transform(X, gamma=np.array([1.0, -3.0]))


def test_unit_gain_on_large_images_with_the_zero_boundary():
    """boundary="model", unit_gain on an image of several tiles: the tiles
    are brought to unit PSF mass (a 3x3 box of mass 1), as the image's own
    operator (a basis of the image's shape, an independent construction),
    and a scene blurred by that box with a zero boundary keeps its
    brightness. Each tile was divided by its whole gain, with its own
    border's losses (0.918 for this box on 16x16): the restored image came
    out 8 % darker. An image of the basis's shape is brought to unit PSF
    mass too, as bright as the larger image; it kept its whole gain, and came
    out 8.2 % darker than the scene."""
    box = np.full((1, 3, 3), 1 / 9)
    basis = ProductConvolutionBasis.from_components(box, np.ones((1, 16, 16)))
    whole = ProductConvolutionBasis.from_components(box, np.ones((1, 40, 56)))
    rng = np.random.default_rng(0)
    clean = 0.3 + gaussian_filter(rng.random((40, 56)), 3.0)
    y = uniform_filter(clean, 3, mode="constant")
    solve = dict(boundary="model", lam=1e4, tol=1e-8, max_iter=400,
                 dtype="float64")
    unit = _est(basis, unit_gain=True, **solve).fit(y[None, :16, :16])
    restored = unit.transform(y, gamma=np.array([2.0]))
    ref = _est(whole, **solve).fit(y[None]).transform(y, gamma=np.array([1.0]))
    np.testing.assert_allclose(restored, ref, atol=1e-4)
    inside = (slice(2, -2), slice(2, -2))
    assert restored[inside].mean() == pytest.approx(clean[inside].mean(), rel=1e-3)
    # an image of the basis's shape: scipy's box of mass 1 on its own scene
    small = uniform_filter(clean[:16, :16], 3, mode="constant")
    one = unit.transform(small, gamma=np.array([2.0]))
    plain = _est(basis, **solve).fit(y[None, :16, :16])
    np.testing.assert_allclose(
        one, plain.transform(small, gamma=np.array([1.0])), atol=1e-6)
    assert one[inside].mean() == pytest.approx(clean[:16, :16][inside].mean(),
                                               rel=1e-3)
    assert one[inside].mean() == pytest.approx(restored[:16, :16][inside].mean(),
                                               rel=1e-3)


def test_blind_target_mean_scales_what_the_estimator_sees():
    """Images in other units than the estimator's (here [0, 1] against a
    network trained at mean 0.5): without target_mean the estimated gain
    follows the units and the restored brightness is wrong; with target_mean
    and unit_gain it is the input's, in any units."""
    basis = _identity_basis(SHAPE)
    rng = np.random.default_rng(1)
    X = 0.1 + 0.2 * gaussian_filter(rng.random((2,) + SHAPE), 2.0)    # mean ~0.2
    solve = dict(lam=1e4, tol=1e-8, max_iter=400, dtype="float64")
    reader = _BrightnessReader([1.0, 1.0])
    naive = _est(basis, blur_estimator=reader, **solve).fit(X).transform(X)
    assert np.all(naive.mean((1, 2)) > 2 * X.mean((1, 2)))   # gain 0.4: too bright
    for units in (1.0, 1000.0):
        reader = _BrightnessReader([1.0, 1.0])
        est = _est(basis, blur_estimator=reader, target_mean=0.5, unit_gain=True,
                   **solve).fit(X * units)
        U = est.transform(X * units)
        np.testing.assert_allclose(reader.seen[-1], 0.5, rtol=1e-6)
        np.testing.assert_allclose(U.mean((1, 2)), units * X.mean((1, 2)), rtol=1e-3)
        one = est.transform(X[0] * units)                      # a single image
        np.testing.assert_allclose(reader.seen[-1], [0.5], rtol=1e-6)
        np.testing.assert_allclose(one, U[0], rtol=1e-5, atol=1e-6 * units)


def test_blind_target_mean_on_large_images_scales_every_tile():
    basis = _identity_basis((24, 24))
    rng = np.random.default_rng(2)
    X = 0.1 + 0.2 * gaussian_filter(rng.random((40, 56)), 2.0)
    reader = _BrightnessReader([1.0, 1.0])
    est = _est(basis, blur_estimator=reader, target_mean=0.5, unit_gain=True,
               lam=1e4, tol=1e-8, max_iter=400, dtype="float64").fit(X)
    U = est.transform(X)
    seen = np.concatenate(reader.seen)
    assert seen.size > 1
    np.testing.assert_allclose(seen, 0.5, rtol=1e-6)
    np.testing.assert_allclose(U.mean(), X.mean(), rtol=2e-3)


@pytest.mark.parametrize("large", [False, True])
def test_blind_target_mean_refuses_images_of_non_positive_mean(large):
    """Refused before any estimate (the estimator is never called)."""
    shape = (40, 56) if large else SHAPE
    basis = _identity_basis(SHAPE)
    X = np.stack([np.full(shape, 0.3), np.full(shape, -0.1)])
    reader = _BrightnessReader([1.0, 1.0])
    est = _est(basis, blur_estimator=reader, target_mean=0.5).fit(X)
    with pytest.raises(ValueError, match="image 1 has a mean intensity -0.1 <= 0"):
        est.transform(X)
    assert reader.seen == []


def test_target_mean_checked_in_fit_and_after_set_params(basis, data):
    X = data[0]
    with pytest.raises(ValueError, match="target_mean"):
        _est(basis, target_mean=-1.0).fit(X)
    est = _est(basis, blur_estimator=_BrightnessReader(np.ones(K))).fit(X)
    est.set_params(target_mean=float("inf"))
    with pytest.raises(ValueError, match="target_mean"):
        est.transform(X)


def test_pickles_without_the_new_parameters_load(basis, data):
    """A TVDeblurrer pickled before target_mean and unit_gain existed loads
    with their defaults (the old behaviour)."""
    import pickle

    est = _est(basis).fit(data[0])
    state = dict(est.__getstate__())
    del state["target_mean"], state["unit_gain"]
    old = TVDeblurrer.__new__(TVDeblurrer)
    old.__setstate__(pickle.loads(pickle.dumps(state)))
    assert old.target_mean is None and old.unit_gain is False
    np.testing.assert_allclose(old.transform(data[0], gamma=data[2]),
                               est.transform(data[0], gamma=data[2]))


def test_blind_target_mean_refuses_a_mean_too_close_to_zero():
    """A positive mean so small that target_mean / mean overflows float32."""
    basis = _identity_basis(SHAPE)
    X = np.stack([np.full(SHAPE, 0.3), np.full(SHAPE, 1e-39)])
    reader = _BrightnessReader([1.0, 1.0])
    est = _est(basis, blur_estimator=reader, target_mean=0.5).fit(X)
    with pytest.raises(ValueError,
                       match="image 1 has a mean intensity .* too close to 0"):
        est.transform(X)
    assert reader.seen == []


def test_blind_single_image_given_as_a_list(basis, data):
    """One image as a nested list, blind: the batch of one was made by
    indexing the list (TypeError: list indices must be integers or slices,
    not NoneType)."""
    X, _, gamma = data
    reg = FakeBlurRegressor().fit(X, gamma)
    est = _est(basis, blur_estimator=reg, max_iter=20).fit(X)
    from_list = est.transform(X[0].tolist())
    assert np.shape(from_list) == SHAPE
    np.testing.assert_allclose(from_list, est.transform(X[0]), atol=1e-6)


def test_auto_lam_warns_on_lists_of_counts(basis, data):
    """A list of 8-bit images did not warn where the same uint8 array did:
    the check read only a dtype, which lists have not."""
    X, _, gamma = data
    counts = np.clip(np.round(X * 200), 0, 255).astype(np.uint8)
    est = _est(basis, lam="auto", max_iter=5).fit(X)
    with pytest.warns(UserWarning, match=r"integers \(uint8\)"):
        est.transform(list(counts), gamma=gamma)
    with pytest.warns(UserWarning, match=r"integers \(int64\)"):
        est.transform(counts[0].astype(int).tolist(), gamma=gamma[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.transform(list(counts / 255.0), gamma=gamma)


@pytest.mark.parametrize("params, match", [
    ({"lam": "banana"}, "'lam' parameter"),
    ({"boundary": "zero"}, "'boundary' parameter"),
    ({"positive": "yes"}, "'positive' parameter"),
    ({"dtype": "float16"}, "'dtype' parameter"),
    ({"max_iter": 0}, "'max_iter' parameter"),
])
def test_parameters_set_after_fit_are_checked(basis, data, params, match):
    """set_params after fit skips fit's validation: lam='banana' was solved
    as lam='auto', boundary='zero' as 'model' and positive='yes' as True
    without a word, and dtype='float16' raised a bare KeyError."""
    X, _, gamma = data
    est = _est(basis, max_iter=5).fit(X).set_params(**params)
    with pytest.raises(ValueError, match=match):
        est.transform(X, gamma=gamma)


def test_score_checks_y_before_the_solve(basis, data, monkeypatch):
    """A y of the wrong shape or with NaN was refused only after the whole
    deblurring had run."""
    X, clean, gamma = data
    est = _est(basis, max_iter=5).fit(X)

    def no_solve(*args, **kwargs):
        raise AssertionError("the solve ran before y was checked")

    monkeypatch.setattr(est, "transform", no_solve)
    with pytest.raises(ValueError, match="y must have the shape of X"):
        est.score(X, clean[:2], gamma=gamma)
    bad = clean.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="y must contain only finite"):
        est.score(X, bad, gamma=gamma)


def test_tags_give_the_output_dtype(basis):
    """The tags said float64 inputs keep their dtype (scikit-learn's default)
    while the default dtype="float32" returns float32 for every input."""
    from sklearn.utils import get_tags

    X = np.random.default_rng(0).random((1,) + basis.image_shape_)
    for dtype in ("float32", "float64"):
        est = TVDeblurrer(basis, lam=10.0, dtype=dtype, max_iter=2,
                          device="cpu").fit(X)
        assert get_tags(est).transformer_tags.preserves_dtype == [dtype]
        for in_dtype in (np.float32, np.float64):
            U = est.transform(X.astype(in_dtype), gamma=np.ones(K))
            assert (U.dtype == in_dtype) == (np.dtype(in_dtype).name == dtype)


def test_basis_set_since_fit_with_another_geometry_asks_for_a_refit(basis):
    """set_params(basis=...) after fit with another K made transform refuse
    gamma of either K ('gamma must have K=3 coefficients', then 'gamma must
    have 4 coefficients'), and another image shape refused the images."""
    from sklearn.exceptions import NotFittedError

    rng = np.random.default_rng(0)
    X = rng.random((2,) + SHAPE)
    est = TVDeblurrer(basis, lam=10.0, max_iter=2, device="cpu").fit(X)
    other_k = ProductConvolutionBasis.from_components(rng.random((K + 1, 5, 5)),
                                                      rng.random((K + 1,) + SHAPE))
    smaller = ProductConvolutionBasis.from_components(rng.random((K, 5, 5)),
                                                      rng.random((K, 20, 20)))
    for other in (other_k, smaller):
        est.set_params(basis=other)
        for gamma in (np.ones(K), np.ones(K + 1)):
            with pytest.raises(ValueError, match=r"call fit again after "
                                                 r"set_params\(basis=\.\.\.\)"):
                est.transform(X, gamma=gamma)
    est.set_params(basis=ProductConvolutionBasis())
    with pytest.raises(NotFittedError, match="the one set since fit is not"):
        est.transform(X, gamma=np.ones(K))
    # refitted, it deblurs with the new basis; a basis of the same geometry
    # is used as it is
    assert est.set_params(basis=other_k).fit(X).transform(
        X, gamma=np.ones(K + 1)).shape == X.shape
    same = ProductConvolutionBasis.from_components(rng.random((K + 1, 5, 5)),
                                                   rng.random((K + 1,) + SHAPE))
    U = est.set_params(basis=same).transform(X, gamma=np.ones(K + 1))
    ref = TVDeblurrer(same, lam=10.0, max_iter=2, device="cpu").fit(X).transform(
        X, gamma=np.ones(K + 1))
    np.testing.assert_array_equal(U, ref)


def test_auto_lam_of_8_bit_images_in_float16(basis, data):
    """TVDeblurrer(lam="auto") reads float16 counts / 255 as the counts (the
    noise estimate's reading): it estimated the noise of the images cast to
    the solver's dtype, where float16's rounding is no longer told from
    noise, and its lam_ was up to 1.26 times that of the same counts in
    float64 (noise of 0.3 level on these 24x24 images)."""
    X, _, gamma = data
    rng = np.random.default_rng(5)
    counts = np.round(40 + 150 * np.clip(X, 0, None)
                      + 0.3 * rng.standard_normal(X.shape)) / 255
    half = counts.astype(np.float16)
    est = _est(basis, lam="auto", max_iter=1, tol=0.0)
    est.fit(counts).transform(counts, gamma=gamma)
    exact = est.lam_.copy()
    est.transform(half, gamma=gamma)
    np.testing.assert_allclose(est.lam_, exact, rtol=1e-5)
    est.transform(torch.from_numpy(half[0]), gamma=gamma[0])
    np.testing.assert_allclose(est.lam_, exact[:1], rtol=1e-5)


def test_auto_lam_of_8_bit_images_in_float16_larger_than_the_basis(basis):
    """The same on images larger than the basis (tiled): their lam was
    computed from the images cast to float64, 1.76 times the lam of the same
    counts in float64 here."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    smooth = gaussian_filter(rng.random((64, 64)), 3)
    smooth = 40 + 180 * (smooth - smooth.min()) / np.ptp(smooth)
    counts = np.round(smooth + 0.3 * rng.standard_normal(smooth.shape)) / 255
    est = _est(basis, lam="auto", max_iter=1, tol=0.0).fit()
    est.transform(counts, gamma=np.ones(K))
    exact = est.lam_.copy()
    est.transform(counts.astype(np.float16), gamma=np.ones(K))
    np.testing.assert_allclose(est.lam_, exact, rtol=1e-9)
    est.transform(torch.from_numpy(np.stack([counts, counts]).astype(np.float16)),
                  gamma=np.ones(K))
    np.testing.assert_allclose(est.lam_, [exact[0], exact[0]], rtol=1e-9)
    # a list of float16 images
    est.transform([counts.astype(np.float16), counts.T.astype(np.float16)],
                  gamma=np.ones(K))
    listed = est.lam_.copy()
    est.transform(counts.T, gamma=np.ones(K))
    np.testing.assert_allclose(listed, [exact[0], est.lam_[0]], rtol=1e-9)
