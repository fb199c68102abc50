"""SpectralBlurRegressor: closed-form ridge, learning, sklearn behaviour, bad input."""

import joblib
import numpy as np
import pytest
from _routing import check_weighted_score
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.utils._param_validation import InvalidParameterError

from deepblur import BlindDeblurrer, SpectralBlurRegressor, TVDeblurrer
from deepblur.datasets import make_random_operators
from deepblur.datasets.simulate import BlurDataset, make_blurred_images
from deepblur.estimators.basis import ProductConvolutionBasis
from deepblur.estimators.cone import ConeSampler
from deepblur.features import blur_features
from deepblur.operators.product_convolution import dense_matrix
from deepblur.pretrained import relative_errors


def _gaussian(sigma, size=9):
    r = np.arange(size) - size // 2
    g = np.exp(-0.5 * (r[:, None] ** 2 + r[None] ** 2) / sigma**2)
    return g / g.sum()


@pytest.fixture(scope="module")
def setting():
    """Three Gaussian blurs of different widths, each over a different region."""
    kernels = np.stack([_gaussian(s) for s in (0.6, 1.5, 3.0)])
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    maps = np.stack([np.ones((32, 32)), xx, yy])
    basis = ProductConvolutionBasis.from_components(kernels, maps)
    sampler = ConeSampler(alpha_range=(0.8, 1.2), random_state=0).fit(np.eye(3))
    rng = np.random.default_rng(0)
    pool = np.clip(rng.random((40, 32, 32)).cumsum(1).cumsum(2), 0, None)
    pool = np.concatenate([pool / pool.max(), rng.random((40, 32, 32))])
    X, y = make_blurred_images(pool, basis, sampler, 600, random_state=0)
    Xt, yt = make_blurred_images(pool, basis, sampler, 200, random_state=1)
    return basis, sampler, pool, X, y, Xt, yt


def test_ridge_in_the_gram_metric_matches_the_closed_form(setting):
    basis, _, _, X, y, Xt, _ = setting
    alpha = 3.0
    est = SpectralBlurRegressor(basis, window=16, alphas=[alpha]).fit(X, y)
    F, Ft = blur_features(X, window=16), blur_features(Xt, window=16)
    mean, std = F.mean(0), F.std(0)
    Z, Zt = (F - mean) / std, (Ft - mean) / std
    L = np.linalg.cholesky(basis.gram_)
    T = y @ L
    W = np.linalg.solve(Z.T @ Z + alpha * np.eye(Z.shape[1]),
                        Z.T @ (T - T.mean(0)))
    expected = (Zt @ W + T.mean(0)) @ np.linalg.inv(L)
    np.testing.assert_allclose(est.predict(Xt), expected, rtol=1e-4, atol=1e-5)
    assert est.alpha_ == alpha and est.coef_.shape == (F.shape[1], 3)
    assert est.n_train_images_ == 600 and est.image_shape_ == (32, 32)
    assert est.n_features_in_ == 32 * 32


def test_learns_the_blur_and_scores_the_operator_error(setting):
    basis, sampler, _, X, y, Xt, yt = setting
    est = SpectralBlurRegressor(basis, window=16).fit(X, y)
    pred = est.predict(Xt)
    assert pred.shape == (200, 3) and pred.dtype == np.float32
    err = relative_errors(yt, pred, basis.gram_)["operator"].mean()
    mean_gamma = sampler.sample(20_000).mean(0)
    base = relative_errors(yt, np.tile(mean_gamma, (200, 1)),
                           basis.gram_)["operator"].mean()
    assert err < 0.5 * base
    # score: minus the mean relative Frobenius distance of the dense operators
    ref = []
    for a, b in zip(yt[:3].astype(float), pred[:3].astype(float), strict=True):
        Ha = dense_matrix(basis.operator_, a).numpy()
        Hb = dense_matrix(basis.operator_, b).numpy()
        ref.append(np.linalg.norm(Ha - Hb) / np.linalg.norm(Ha))
    assert est.score(Xt[:3], yt[:3]) == pytest.approx(-np.mean(ref), rel=1e-4)
    # (n, 1, H, W) input gives the same estimates
    np.testing.assert_allclose(est.predict(Xt[:, None]), pred, rtol=1e-6)


def test_fit_on_a_blur_dataset_reads_its_batches(setting):
    basis, sampler, pool, _, _, _, _ = setting
    data = BlurDataset(pool, basis, sampler, batch_size=50, n_batches=6,
                       random_state=3)
    est = SpectralBlurRegressor(basis, window=16).fit(data)
    batches = list(BlurDataset(pool, basis, sampler, batch_size=50, n_batches=6,
                               random_state=3))
    X = np.concatenate([b[0][:, 0].numpy() for b in batches])
    y = np.concatenate([b[1].numpy() for b in batches])
    again = SpectralBlurRegressor(basis, window=16).fit(X, y)
    assert est.n_train_images_ == 300
    np.testing.assert_allclose(est.coef_, again.coef_, rtol=1e-5, atol=1e-8)
    # how the images were blurred at their border: known for the dataset
    assert est.training_boundary_ == "zero" and again.training_boundary_ is None
    other = ProductConvolutionBasis.from_components(basis.kernels_,
                                                    np.ones((3, 16, 16)))
    with pytest.raises(ValueError, match="image shape"):
        SpectralBlurRegressor(other, window=8, border=4).fit(data)


def test_sklearn_clone_grid_search_and_joblib(setting, tmp_path):
    basis, _, _, X, y, Xt, yt = setting
    est = SpectralBlurRegressor(basis, window=16)
    assert clone(est).basis is basis              # the fitted basis is shared
    search = GridSearchCV(est, {"window": [8, 16], "n_angular": [2, 4]}, cv=2)
    search.fit(X[:300], y[:300])
    assert set(search.best_params_) == {"window", "n_angular"}
    assert search.best_score_ < 0
    fitted = clone(est).fit(X, y)
    joblib.dump(fitted, tmp_path / "spectral.joblib")
    loaded = joblib.load(tmp_path / "spectral.joblib")
    np.testing.assert_array_equal(loaded.predict(Xt), fitted.predict(Xt))


def test_sampler_projects_the_estimates(setting, tmp_path):
    basis, sampler, _, X, y, Xt, yt = setting
    raw = SpectralBlurRegressor(basis, window=16).fit(X, y)
    est = SpectralBlurRegressor(basis, sampler=sampler, window=16).fit(X, y)
    pred = est.predict(Xt)
    np.testing.assert_allclose(
        pred, sampler.project(raw.predict(Xt), gram=basis.gram_), rtol=1e-6,
        atol=1e-7)
    after = relative_errors(yt, pred, basis.gram_)["operator"]
    before = relative_errors(yt, raw.predict(Xt), basis.gram_)["operator"]
    assert (after <= before + 1e-6).all()
    assert clone(est).sampler is sampler
    joblib.dump(est, tmp_path / "est.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "est.joblib").predict(Xt),
                                  pred)
    with pytest.raises(NotFittedError, match="sampler must be a fitted"):
        SpectralBlurRegressor(basis, sampler=ConeSampler()).fit(X, y)
    with pytest.raises(ValueError, match="sampler must draw gamma of K=3"):
        SpectralBlurRegressor(basis, sampler=ConeSampler().fit(np.eye(2))).fit(X, y)


@pytest.mark.filterwarnings("ignore:deblur reached max_iter")
def test_in_a_blind_deblurrer():
    ops = make_random_operators(12, image_shape=(32, 32), kernel_shape=(9, 9),
                                grid_shape=(4, 4), random_state=0)
    rng = np.random.default_rng(0)
    clean = rng.random((8, 32, 32)) + 0.1
    model = BlindDeblurrer(
        basis=ProductConvolutionBasis(3, image_shape=(32, 32)),
        regressor=SpectralBlurRegressor(window=16),
        deblurrer=TVDeblurrer(lam=50.0, tol=1e-3, max_iter=20, device="cpu"),
        n_train_images=200, random_state=0)
    model.fit(clean, clean, psf_fields=ops.psf_fields)
    assert isinstance(model.regressor_, SpectralBlurRegressor)
    assert model.regressor_.n_train_images_ >= 200
    assert model.estimate(clean[:2]).shape == (2, 3)
    assert model.transform(clean[:2]).shape == (2, 32, 32)


def test_bad_input(setting):
    basis, _, _, X, y, _, _ = setting
    with pytest.raises(ValueError, match="basis must be given"):
        SpectralBlurRegressor().fit(X, y)
    with pytest.raises(ValueError, match="fitted ProductConvolutionBasis"):
        SpectralBlurRegressor(ProductConvolutionBasis(3)).fit(X, y)
    est = SpectralBlurRegressor(basis, window=16)
    with pytest.raises(NotFittedError):
        est.predict(X)
    with pytest.raises(ValueError, match=r"shape \(n_samples, K=3\)"):
        est.fit(X, y[:, :2])
    with pytest.raises(ValueError, match="y must be given"):
        est.fit(X, None)
    bad_y = y.copy()
    bad_y[0, 0] = np.inf
    with pytest.raises(ValueError, match="y must be finite"):
        est.fit(X, bad_y)
    with pytest.raises(ValueError, match="as many samples"):
        est.fit(X, y[:-1])
    with pytest.raises(ValueError, match="image_shape"):
        est.fit(X[:, :16, :16], y)
    bad_X = X.copy()
    bad_X[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match="finite"):
        est.fit(bad_X, y)
    with pytest.raises(ValueError, match="positive mean"):
        est.fit(np.concatenate([X[:1], -X[1:2]]), y[:2])
    with pytest.raises(ValueError, match="at least 2 images"):
        est.fit(X[:1], y[:1])
    with pytest.raises(ValueError, match="window must be at most"):
        SpectralBlurRegressor(basis, window=64).fit(X, y)
    with pytest.raises(ValueError, match="alphas must be positive"):
        SpectralBlurRegressor(basis, window=16, alphas=[1.0, -1.0]).fit(X, y)
    twice = ProductConvolutionBasis.from_components(
        np.concatenate([basis.kernels_[:1]] * 2), np.ones((2, 32, 32)))
    with pytest.raises(ValueError, match="positive definite"):
        SpectralBlurRegressor(twice, window=16).fit(X, y[:, :2])
    with pytest.raises(InvalidParameterError):
        SpectralBlurRegressor(basis, window=2).fit(X, y)
    with pytest.raises(InvalidParameterError):
        SpectralBlurRegressor(basis, n_radial=0).fit(X, y)
    fitted = SpectralBlurRegressor(basis, window=16).fit(X, y)
    with pytest.raises(ValueError, match="image_shape"):
        fitted.predict(X[:, :16, :16])
    with pytest.raises(ValueError, match="at least one image"):
        fitted.predict(X[:0])
    with pytest.raises(ValueError, match="dtype"):
        est.fit(X, np.full(y.shape, "a"))


def test_score_checks_y_and_sample_weight(setting):
    """As ResNetBlurRegressor.score: one row of y was broadcast to all the
    images (a wrong score, silently), NaN gave nan, a wrong width a torch
    error, a sample_weight of the wrong length numpy's "Axis must be
    specified"."""
    basis, _, _, X, y, _, _ = setting
    est = SpectralBlurRegressor(basis, window=16).fit(X[:40], y[:40])
    nan_y = y[:4].copy()
    nan_y[0, 0] = np.nan
    for bad, match in ((y[:1], "as many samples; got 4 images and 1 gamma"),
                       (nan_y, "y must be finite"),
                       (y[:4, :2], r"shape \(n_samples, K=3\)")):
        with pytest.raises(ValueError, match=match):
            est.score(X[:4], bad)
    with pytest.raises(ValueError, match="got 1 images and 4 gamma"):
        est.score(X[:1], y[:4])
    for bad, match in ((np.ones(2), r"sample_weight.shape == \(2,\)"),
                       (-np.ones(4), "Negative values .*sample_weight")):
        with pytest.raises(ValueError, match=match):
            est.score(X[:4], y[:4], sample_weight=bad)
    w = np.array([0.1, 0.2, 0.3, 1.0])
    err = -np.array([est.score(X[i:i + 1], y[i:i + 1]) for i in range(4)])
    assert est.score(X[:4], y[:4], sample_weight=w) == pytest.approx(
        -np.average(err, weights=w), rel=1e-6)


def test_sparse_input_is_refused_by_name(setting):
    """A sparse image was refused as "X must hold real numbers; got dtype
    object" (NumPy made it a 0-d object array)."""
    import scipy.sparse as sp

    basis, _, _, X, y, _, _ = setting
    est = SpectralBlurRegressor(basis, window=16)
    with pytest.raises(TypeError, match="X must be a dense array or tensor; "
                                        "sparse input is not supported"):
        est.fit(sp.csr_matrix(X[0]), y[:1])
    with pytest.raises(TypeError, match="sparse input is not supported"):
        est.fit(X[:40], y[:40]).predict(sp.csr_matrix(X[0]))


def test_weighted_score_in_pipeline_and_grid_search(setting):
    """The weighted operator error, alone, in a Pipeline and in GridSearchCV,
    with metadata routing on and off."""
    basis, _, _, X, y, _, _ = setting
    X, y = X[:60], y[:60]
    w = np.random.default_rng(4).uniform(0.0, 1.0, len(X))

    def errors(est, X, y):
        return -relative_errors(y, est.predict(X), basis.gram_)["operator"]

    check_weighted_score(SpectralBlurRegressor(basis, window=16), X, y, w, errors,
                         grid={"n_radial": [3, 6]})


def test_predict_warns_about_much_noisier_images(setting):
    import warnings

    from deepblur.exceptions import NoisyImageWarning

    basis, sampler, pool, *_ = setting
    smooth = pool[:40]                  # the integrated noise: smooth content
    X, y = make_blurred_images(smooth, basis, sampler, 200, noise_std=0.01,
                               random_state=2)
    est = SpectralBlurRegressor(basis, window=16).fit(X, y)
    assert 0.008 < est.noise_level_ < 0.02      # measured on the training images
    Xs, _ = make_blurred_images(smooth, basis, sampler, 20, noise_std=0.01,
                                random_state=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoisyImageWarning)
        est.predict(Xs)
    Xn, _ = make_blurred_images(smooth, basis, sampler, 20, noise_std=0.1,
                                random_state=3)
    with pytest.warns(NoisyImageWarning, match="20 of 20 images are over 3 times"):
        est.predict(Xn)
    est.noise_level_ = None                     # unknown: nothing is checked
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoisyImageWarning)
        est.predict(Xn)


def test_support_tolerance_warns_and_support_distance(setting):
    """As the network's: raw estimates with project=False, a warning for those
    farther than the tolerance, their distances from support_distance."""
    import warnings

    from sklearn.utils._param_validation import InvalidParameterError

    from deepblur.estimators._gamma import support_distances
    from deepblur.exceptions import OutOfSupportWarning

    basis, sampler, _, X, y, Xt, _ = setting
    raw = SpectralBlurRegressor(basis, window=16).fit(X, y)
    est = SpectralBlurRegressor(basis, sampler=sampler, project=False,
                                window=16).fit(X, y)
    expected = support_distances(sampler, raw.predict(Xt), basis.gram_)[1]
    dist = est.support_distance(Xt)
    np.testing.assert_allclose(dist, expected, rtol=1e-4, atol=1e-6)
    assert dist.max() > 0
    # a tolerance in the widest gap of the upper half of the distances
    d = np.sort(dist)
    i = len(d) // 2 + int(np.argmax(np.diff(d[len(d) // 2:])))
    tolerance = float(d[i] + d[i + 1]) / 2
    n_far = len(d) - i - 1
    est.set_params(support_tolerance=tolerance)
    with pytest.warns(OutOfSupportWarning, match=f"{n_far} of {len(Xt)} images"):
        pred = est.predict(Xt)
    np.testing.assert_allclose(pred, raw.predict(Xt), rtol=1e-6)     # not projected
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfSupportWarning)
        est.set_params(support_tolerance=2 * dist.max() + 1).predict(Xt)
    with pytest.raises(InvalidParameterError, match="support_tolerance"):
        SpectralBlurRegressor(basis, sampler=sampler, support_tolerance=0).fit(X, y)
    with pytest.raises(ValueError, match="support_tolerance needs a sampler"):
        SpectralBlurRegressor(basis, support_tolerance=0.1).fit(X, y)
    with pytest.raises(ValueError, match="support_distance needs the regressor's"):
        raw.support_distance(Xt)


def test_a_regressor_pickled_before_the_support_check_loads(setting):
    import pickle

    basis, sampler, _, X, y, Xt, _ = setting
    est = SpectralBlurRegressor(basis, sampler=sampler, window=16).fit(X, y)
    expected = est.predict(Xt)
    del est.__dict__["project"], est.__dict__["support_tolerance"]
    old = pickle.loads(pickle.dumps(est))
    assert old.project is True and old.support_tolerance is None
    np.testing.assert_array_equal(old.predict(Xt), expected)


def test_predict_uses_the_statistics_it_was_fitted_on(setting):
    """set_params on a statistic's parameter after fit changes nothing until
    the next fit (the coefficients belong to the fitted statistics), and an
    estimator pickled before they were recorded uses its parameters."""
    import pickle

    basis, _, _, X, y, Xt, _ = setting
    est = SpectralBlurRegressor(basis, window=16).fit(X, y)
    expected = est.predict(Xt)
    assert est.feature_spec_["n_radial"] == 6
    est.set_params(n_radial=4, n_angular=6, stride=8)
    np.testing.assert_array_equal(est.predict(Xt), expected)
    est.fit(X, y)                                   # refit: the new statistics
    assert est.feature_spec_["stride"] == 8
    assert est.coef_.shape[0] == blur_features(X[:1], window=16, n_radial=4,
                                               n_angular=6, stride=8).shape[1]
    old = clone(est).set_params(n_radial=6, n_angular=4, stride=None).fit(X, y)
    expected = old.predict(Xt)
    del old.__dict__["feature_spec_"]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(old)).predict(Xt),
                                  expected)


def test_basis_set_since_fit_with_another_geometry_asks_for_a_refit(setting):
    """set_params(basis=...) after fit with another image shape: predict gave
    the fitted basis's gamma without a word and score measured them in the
    new basis's metric; with another K, score refused y of the fitted K."""
    basis, sampler, _, X, y, _, _ = setting
    est = SpectralBlurRegressor(basis, sampler=sampler, window=16).fit(X[:60],
                                                                       y[:60])
    rng = np.random.default_rng(0)
    smaller = ProductConvolutionBasis.from_components(basis.kernels_,
                                                      rng.random((3, 24, 24)))
    other_k = ProductConvolutionBasis.from_components(rng.random((4, 5, 5)),
                                                      rng.random((4, 32, 32)))
    for other in (smaller, other_k):
        est.set_params(basis=other)
        for call in (lambda: est.predict(X[:2]), lambda: est.score(X[:2], y[:2]),
                     lambda: est.support_distance(X[:2])):
            with pytest.raises(ValueError, match=r"call fit again after "
                                                 r"set_params\(basis=\.\.\.\)"):
                call()
    # the same geometry: used as it is (the basis is shared, not copied)
    est.set_params(basis=basis)
    assert est.predict(X[:2]).shape == (2, 3)
