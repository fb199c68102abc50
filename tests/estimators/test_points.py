"""PointSourceBlurEstimator: accuracy on simulated sources, sklearn, bad input."""

import warnings

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.utils import estimator_checks
from sklearn.utils._param_validation import InvalidParameterError

from deepblur import PointSourceBlurEstimator
from deepblur.datasets import blur_images, make_point_sources
from deepblur.estimators.basis import ProductConvolutionBasis
from deepblur.estimators.cone import ConeSampler
from deepblur.exceptions import PoorPointSourceFitWarning
from deepblur.pretrained import relative_errors


def _gaussian(sigma, size=11):
    r = np.arange(size) - size // 2
    g = np.exp(-0.5 * (r[:, None] ** 2 + r[None] ** 2) / sigma**2)
    return g / g.sum()


@pytest.fixture(scope="module")
def setting():
    kernels = np.stack([_gaussian(s) for s in (0.8, 1.6, 2.6)])
    yy, xx = np.mgrid[0:48, 0:48] / 47.0
    basis = ProductConvolutionBasis.from_components(kernels, np.stack(
        [np.ones((48, 48)), xx, yy]))
    sampler = ConeSampler(alpha_range=(0.8, 1.2), random_state=0).fit(np.eye(3))
    gamma = sampler.sample(6)
    u = make_point_sources(6, (48, 48), density=0.004, random_state=0)
    X = blur_images(u, gamma, basis, noise_std=0.002, random_state=0)
    return basis, sampler, X, gamma


def test_accurate_on_point_sources_far_better_than_the_start(setting):
    basis, sampler, X, gamma = setting
    est = PointSourceBlurEstimator(basis).fit(None, sampler.sample(500))
    pred = est.predict(X)
    assert pred.shape == (6, 3) and pred.dtype == np.float32
    err = relative_errors(gamma, pred, basis.gram_)["operator"]
    start = relative_errors(gamma, np.tile(est.gamma_init_, (6, 1)),
                            basis.gram_)["operator"]
    assert err.mean() < 0.02 < 0.05 < start.mean()
    assert est.score(X, gamma) == pytest.approx(-err.mean(), rel=1e-4)
    fits = est.predict_sources(X[:2])
    assert len(fits) == 2 and fits[0].positions.shape[1] == 2
    assert fits[0].amplitudes.mean() > 0 and fits[0].residual < 0.05
    assert est.image_shape_ == (48, 48) and est.n_features_in_ == 48 * 48


def test_start_noise_level_parallel_and_progress_bar(setting):
    basis, sampler, X, gamma = setting
    init = sampler.sample(500).mean(0)
    a = PointSourceBlurEstimator(basis, gamma_init=init).fit()
    np.testing.assert_allclose(a.gamma_init_, init)
    b = PointSourceBlurEstimator(basis, n_jobs=2, verbose=1).fit(
        None, sampler.sample(500))
    np.testing.assert_allclose(a.predict(X), b.predict(X), rtol=1e-3, atol=1e-4)
    c = PointSourceBlurEstimator(basis, noise_std=0.002, gamma_init=init).fit()
    assert c.score(X, gamma) > -0.02
    d = PointSourceBlurEstimator(basis, smoothing=1.0, threshold=5.0,
                                 gamma_init=init).fit()
    assert d.score(X, gamma) > -0.05


def test_parallel_tasks_carry_one_image_each(setting, monkeypatch):
    """With n_jobs, each task was a closure over every image and the
    estimator (basis included), pickled for every task: the data sent grew
    with the square of the number of images (64 images of 128x128 with the
    shipped basis: 11 MB per task)."""
    import deepblur.estimators.points as points

    cloudpickle = pytest.importorskip("cloudpickle")

    basis, _, X, gamma = setting
    est = PointSourceBlurEstimator(basis, gamma_init=gamma.mean(0), n_jobs=2).fit()
    sizes = {}

    def serial(n_jobs=None):
        def run(tasks):
            tasks = list(tasks)
            sizes[len(tasks)] = max(len(cloudpickle.dumps(t)) for t in tasks)
            return [f(*a, **k) for f, a, k in tasks]
        return run

    monkeypatch.setattr(points, "Parallel", serial)
    expected = est.set_params(n_jobs=None).predict(X)
    np.testing.assert_array_equal(est.predict(X[:2]), expected[:2])
    np.testing.assert_array_equal(est.predict(X), expected)
    assert sizes[6] < 1.1 * sizes[2]


def test_score_checks_y_and_sample_weight(setting):
    """One row of y was broadcast to all the images (a wrong score, silently),
    NaN gave nan."""
    basis, _, X, gamma = setting
    est = PointSourceBlurEstimator(basis, gamma_init=gamma.mean(0)).fit()
    nan_y = gamma[:2].copy()
    nan_y[1, 2] = np.nan
    for bad, match in ((gamma[:1], "as many samples; got 2 images and 1 gamma"),
                       (nan_y, "y must be finite"),
                       (gamma[:2, :2], r"shape \(n_samples, K=3\)")):
        with pytest.raises(ValueError, match=match):
            est.score(X[:2], bad)
    with pytest.raises(ValueError, match=r"sample_weight.shape == \(3,\)"):
        est.score(X[:2], gamma[:2], sample_weight=np.ones(3))


def test_camera_offset_is_fitted(setting):
    """A dark level added to every image: fitted (default), the estimate is
    the dark-field one; the offset comes back in ``predict_sources``."""
    basis, sampler, X, gamma = setting
    est = PointSourceBlurEstimator(basis, noise_std=0.002)
    est.fit(None, sampler.sample(500))
    np.testing.assert_allclose(est.predict(X + 0.1), est.predict(X), rtol=1e-3,
                               atol=1e-3)
    fits = est.predict_sources(X[:2] + 0.1)
    assert [f.background for f in fits] == pytest.approx([0.1, 0.1], abs=1e-3)
    # ignoring the offset: noise maxima above 10 sigma become "sources", and
    # the offset is explained by them and by a wider PSF
    # (and the residual says that the model does not fit)
    with pytest.warns(PoorPointSourceFitWarning, match="1 of 1 image"):
        dark = est.set_params(background=False).predict_sources(X[:1] + 0.1)[0]
    assert len(dark.positions) > 2 * len(fits[0].positions)
    errors = relative_errors(gamma[:1], np.stack([dark.gamma, fits[0].gamma]),
                             basis.gram_)["operator"]
    assert errors[0] > 0.1 > 0.02 > errors[1]


def test_clone_grid_search_and_joblib(setting, tmp_path):
    basis, sampler, X, gamma = setting
    est = PointSourceBlurEstimator(basis, threshold=20.0)
    assert clone(est).basis is basis
    search = GridSearchCV(est, {"threshold": [5.0, 20.0]}, cv=2).fit(X, gamma)
    assert search.best_params_["threshold"] in (5.0, 20.0)
    fitted = est.fit(X, gamma)
    joblib.dump(fitted, tmp_path / "p.joblib")
    loaded = joblib.load(tmp_path / "p.joblib")
    np.testing.assert_array_equal(loaded.predict(X[:2]), fitted.predict(X[:2]))


def test_saturated_sources_and_hot_pixels_warn(setting):
    """Clipped sources or a hot pixel are not the model, and their gamma is
    far off: the fit's residual, far above the noise, says so (a good fit
    leaves about the noise, and warns not)."""
    basis, sampler, X, gamma = setting
    est = PointSourceBlurEstimator(basis, noise_std=0.002).fit(
        None, sampler.sample(500))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PoorPointSourceFitWarning)
        good = est.predict(X[:3])
    clipped = np.minimum(X[:3], 0.6 * X[:3].max(axis=(1, 2), keepdims=True))
    hot = X[:3].copy()
    hot[1, 5, 40] += X.max()
    for bad, images in ((clipped, r"3 of 3 image\(s\): 0 \(\d+x\), 1"),
                       (hot, r"1 of 3 image\(s\): 1 \(\d+x\)\.")):
        with pytest.warns(PoorPointSourceFitWarning, match=images):
            worse = est.predict(bad)
        assert (relative_errors(gamma[:3], worse, basis.gram_)["operator"].max()
                > 3 * relative_errors(gamma[:3], good, basis.gram_)["operator"].max())


@pytest.mark.parametrize("check", [estimator_checks.check_estimator_sparse_array,
                                   estimator_checks.check_estimator_sparse_matrix],
                         ids=lambda check: check.__name__)
def test_sparse_input_is_refused_by_name(setting, check):
    """A sparse matrix was refused as "X must hold real numbers; got dtype
    object" (NumPy made it a 0-d object array)."""
    check("PointSourceBlurEstimator", PointSourceBlurEstimator(setting[0]))


def test_bad_input(setting):
    basis, sampler, X, gamma = setting
    with pytest.raises(ValueError, match="basis=None"):
        PointSourceBlurEstimator().fit(X, gamma)
    with pytest.raises(NotFittedError, match="unfitted"):
        PointSourceBlurEstimator(ProductConvolutionBasis(2)).fit(X, gamma)
    periodic = ProductConvolutionBasis.from_components(
        basis.kernels_, basis.maps_, boundary="periodic")
    with pytest.raises(ValueError, match="boundary='zero'"):
        PointSourceBlurEstimator(periodic).fit(X, gamma)
    with pytest.raises(ValueError, match="starting gamma"):
        PointSourceBlurEstimator(basis).fit(X)
    with pytest.raises(ValueError, match=r"shape \(n_samples, K=3\)"):
        PointSourceBlurEstimator(basis).fit(X, gamma[:, :2])
    with pytest.raises(ValueError, match=r"gamma_init must have shape \(K,\) = \(3,\)"):
        PointSourceBlurEstimator(basis, gamma_init=[1.0, 2.0]).fit()
    with pytest.raises(ValueError, match=r"got shape \(2, 3\)"):   # a row dropped
        PointSourceBlurEstimator(basis, gamma_init=np.ones((2, 3))).fit()
    with pytest.raises(ValueError, match="finite"):
        PointSourceBlurEstimator(basis).fit(X, np.full_like(gamma, np.nan))
    # a start of zero PSFs failed every image in predict, blaming the images
    # ('every amplitude is 0: the image does not look like point sources')
    with pytest.raises(ValueError, match="gamma_init gives PSFs of zero"):
        PointSourceBlurEstimator(basis, gamma_init=np.zeros(3)).fit()
    with pytest.raises(ValueError, match="the mean of y .* gives PSFs of zero"):
        PointSourceBlurEstimator(basis).fit(X, np.zeros_like(gamma))
    with pytest.raises(ValueError, match="as many samples"):
        PointSourceBlurEstimator(basis).fit(X, gamma[:3])
    with pytest.raises(InvalidParameterError):
        PointSourceBlurEstimator(basis, threshold=0.0).fit(X, gamma)
    with pytest.raises(InvalidParameterError, match="max_new"):
        PointSourceBlurEstimator(basis, max_new=0).fit(X, gamma)
    with pytest.raises(InvalidParameterError, match="background"):
        PointSourceBlurEstimator(basis, background="auto").fit(X, gamma)
    with pytest.raises(InvalidParameterError, match="subpixel"):
        PointSourceBlurEstimator(basis, subpixel="yes").fit(X, gamma)
    est = PointSourceBlurEstimator(basis)
    with pytest.raises(NotFittedError):
        est.predict(X)
    est.fit(X, gamma)
    with pytest.raises(ValueError, match="image_shape"):
        est.predict(np.zeros((2, 32, 32)))
    with pytest.raises(ValueError, match="at least one image"):
        est.predict(X[:0])
    bad = X.copy()
    bad[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        est.predict(bad)
    dark = X.copy()
    dark[1] = 0.0
    dark[4] = 0.0
    with pytest.raises(ValueError, match="image 1: no point source"):
        est.predict(dark)
    # the other images are fitted all the same, and carried by the error
    from deepblur.exceptions import NoPointSourceError

    with pytest.raises(NoPointSourceError,
                       match=r"and 1 more of the 6 images: \[4\]") as info:
        est.predict(dark)
    assert info.value.images == [1, 4]
    rows = [0, 2, 3, 5]
    np.testing.assert_array_equal(info.value.estimates[rows], est.predict(X[rows]))
    assert np.isnan(info.value.estimates[[1, 4]]).all()
    with pytest.raises(NoPointSourceError) as info:
        est.predict_sources(dark[:2])
    assert info.value.images == [1] and info.value.estimates is None


def test_maps_that_vanish_do_not_rescale_gamma():
    """With gamma on one ray and maps that reach 0 at the border, the PSF
    vanishes there: a source moved there took any amplitude and rescaled
    gamma (25-fold on one of these images). Sources the operator does not
    show are left out of the fit."""
    x = np.arange(-3, 4)
    k = [np.exp(-(x[:, None] ** 2 + x[None] ** 2) / (2 * s**2)) for s in (1, 2)]
    ramp = np.linspace(1, 0, 32)[None].repeat(32, 0)
    basis = ProductConvolutionBasis.from_components(
        np.stack([g / g.sum() for g in k]), np.stack([ramp, ramp[:, ::-1]]))
    gamma = ConeSampler(random_state=0).fit(np.eye(2)).sample(4)
    u = make_point_sources(4, (32, 32), density=0.01, random_state=0)
    X = blur_images(u, gamma, basis, noise_std=1e-3, random_state=0)
    est = PointSourceBlurEstimator(basis, noise_std=1e-3).fit(X, gamma)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PoorPointSourceFitWarning)
        fits = est.predict_sources(X)
    err = relative_errors(gamma, np.stack([f.gamma for f in fits]),
                          basis.gram_)["operator"]
    assert err.max() < 0.05
    for f in fits:
        lit = f.positions[f.amplitudes > 0]
        gain = f.gamma @ (np.asarray(basis.maps_)[:, lit[:, 0], lit[:, 1]]
                          * np.asarray(basis.kernels_).sum(axis=(1, 2))[:, None])
        assert gain.min() > 0.05 * np.median(gain)


def test_basis_set_since_fit_with_another_geometry_asks_for_a_refit(setting):
    """set_params(basis=...) after fit with another K failed in the fit of
    the first image ('image 0: gamma0 must have shape (K,) = (4,)'), with
    another image shape in the image check."""
    basis, sampler, X, gamma = setting
    est = PointSourceBlurEstimator(basis).fit(None, sampler.sample(50))
    rng = np.random.default_rng(0)
    other_k = ProductConvolutionBasis.from_components(rng.random((4, 5, 5)),
                                                      rng.random((4, 48, 48)))
    smaller = ProductConvolutionBasis.from_components(basis.kernels_,
                                                      rng.random((3, 40, 40)))
    for other in (other_k, smaller):
        est.set_params(basis=other)
        for call in (lambda: est.predict(X[:1]), lambda: est.score(X[:1], gamma[:1]),
                     lambda: est.predict_sources(X[:1])):
            with pytest.raises(ValueError, match=r"call fit again after "
                                                 r"set_params\(basis=\.\.\.\)"):
                call()


@pytest.mark.parametrize("params", [
    {"background": "no"}, {"subpixel": "no"}, {"threshold": -1.0},
    {"noise_std": -0.01}, {"n_rounds": 2.7}, {"image_mean": "0.5"},
])
def test_parameters_set_after_fit_are_checked(setting, params):
    """set_params after fit skips fit's validation: background='no' was
    fitted as True, a negative threshold or noise_std detected every maximum
    of the noise, n_rounds=2.7 ran 2 rounds, all without a word."""
    basis, _, X, gamma = setting
    est = PointSourceBlurEstimator(basis, gamma_init=gamma.mean(0)).fit()
    est.set_params(**params)
    name = next(iter(params))
    for method in (est.predict, est.predict_sources):
        with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
            method(X[:1])


def test_noise_level_of_8_bit_images_in_float16(setting, monkeypatch):
    """The detection threshold reads float16 counts / 255 as the counts, as
    estimate_noise_level does: the images were cast up before their noise
    was estimated, where float16's rounding is no longer told from noise:
    the thresholds were 1.5 to 2.95 times those of the same counts in
    float64."""
    import deepblur.estimators.points as points

    basis, _, X, gamma = setting
    rng = np.random.default_rng(2)
    peaks = X.max(axis=(1, 2), keepdims=True)
    counts = np.round(10 + 240 * np.clip(X, 0, None) / peaks      # 8-bit
                      + 0.3 * rng.standard_normal(X.shape)) / 255
    thresholds = []
    fit_one = points._fit_one

    def spy(i, image, kernels, maps, init, threshold, params):
        thresholds.append(threshold)
        return fit_one(i, image, kernels, maps, init, threshold, params)

    monkeypatch.setattr(points, "_fit_one", spy)
    est = PointSourceBlurEstimator(basis, gamma_init=gamma.mean(0), max_iter=1,
                                   n_rounds=1).fit()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PoorPointSourceFitWarning)
        est.predict(counts)
        exact = np.array(thresholds)
        del thresholds[:]
        est.predict(counts.astype(np.float16))
        np.testing.assert_allclose(thresholds, exact, rtol=1e-5)
        del thresholds[:]
        est.predict(list(counts.astype(np.float16)))       # a list of them
    np.testing.assert_allclose(thresholds, exact, rtol=1e-5)


def test_quantised_images_threshold_no_lower_than_their_rounding(setting):
    """8-bit images of sources on a background on a grey level, noise far
    under one level: nine tenths of the Haar coefficients are 0 and the
    noise estimate is 0 (flat content), so the threshold was 0 and every
    maximum of the rounding's staircase on the sources' flanks was detected
    (20 sources fitted for 2 here, 9 and 12 of them bright). The noise level
    is now floored at the rounding's, ``1 / sqrt(12)`` grey level (the grid
    of the values); continuous images keep the estimate."""
    from deepblur.solvers.tv import estimate_noise_level

    basis, _, _, gamma = setting
    est = PointSourceBlurEstimator(basis, gamma_init=gamma.mean(0)).fit()
    truth = gamma[0] / np.linalg.norm(gamma[0])
    for seed in (1, 2):
        u = make_point_sources(1, (48, 48), density=0.002, random_state=seed)
        x = blur_images(u, gamma[:1], basis, noise_std=None)
        rng = np.random.default_rng(seed)
        counts = np.round(100 * x / x.max() + 10
                          + 0.017 * rng.standard_normal(x.shape))
        assert estimate_noise_level(counts[0]) == 0.0
        for y in (counts, (counts / 255).astype(np.float32)):
            fit = est.predict_sources(y)[0]
            assert len(fit.positions) == int((u > 0).sum()) == 2
            direction = fit.gamma / np.linalg.norm(fit.gamma)
            assert np.linalg.norm(direction - truth) < 0.03
        # given the rounding's level, the same fit
        given = clone(est).set_params(noise_std=1 / np.sqrt(12)).fit()
        np.testing.assert_allclose(given.predict_sources(counts)[0].gamma,
                                   est.predict_sources(counts)[0].gamma)
        # continuous data: the estimate as it is
        y = 100 * x / x.max() + 10 + 0.3 * rng.standard_normal(x.shape)
        sigma = estimate_noise_level(y[0])
        given = clone(est).set_params(noise_std=sigma).fit()
        a, b = est.predict_sources(y)[0], given.predict_sources(y)[0]
        np.testing.assert_array_equal(a.gamma, b.gamma)
        np.testing.assert_array_equal(a.positions, b.positions)
