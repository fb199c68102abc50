"""ResNetBlurRegressor: skorch/sklearn behaviour, data paths, bad input."""

import copy
import functools
import pickle
import platform
import warnings

import joblib
import numpy as np
import pytest
import torch
from _routing import check_weighted_score
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.utils import estimator_checks, get_tags
from skorch.callbacks import Callback, Checkpoint, EarlyStopping, LoadInitState

from deepblur.datasets.simulate import BlurDataset, make_blurred_images
from deepblur.estimators.basis import ProductConvolutionBasis
from deepblur.estimators.cone import ConeSampler
from deepblur.estimators.regressor import ResNetBlurRegressor, check_mixed_precision
from deepblur.exceptions import NoisyImageWarning
from deepblur.operators.product_convolution import dense_matrix
from deepblur.pretrained import relative_errors

SMALL = dict(module__width=4, module__depth=1, device="cpu", verbose=0,
             batch_size=16)


@pytest.fixture(scope="module")
def setting():
    rng = np.random.default_rng(0)
    basis = ProductConvolutionBasis.from_components(rng.random((3, 3, 3)),
                                                    rng.random((3, 16, 16)))
    sampler = ConeSampler(alpha_range=(0.8, 1.2), random_state=0).fit(np.eye(3))
    pool = rng.random((20, 16, 16))
    X, y = make_blurred_images(pool, basis, sampler, 48, random_state=0)
    return basis, sampler, pool, X, y


def test_fit_predict_score_is_relative_operator_error(setting):
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=2, **SMALL).fit(X, y)
    pred = net.predict(X)
    assert pred.shape == (48, 3) and pred.dtype == np.float32
    ref = [np.linalg.norm(dense_matrix(basis.operator_, a).numpy()
                          - dense_matrix(basis.operator_, b).numpy())
           / np.linalg.norm(dense_matrix(basis.operator_, a).numpy())
           for a, b in zip(y[:4].astype(float), pred[:4].astype(float),
                           strict=True)]
    assert net.score(X[:4], y[:4]) == pytest.approx(-np.mean(ref), rel=1e-4)
    assert net.module_.fc.out_features == 3          # K inferred from the basis
    # 4-D input and float64 give the same predictions.
    np.testing.assert_allclose(net.predict(X[:, None].astype(np.float64)), pred,
                               rtol=1e-5)


def test_weighted_score_in_a_pipeline_with_and_without_routing(setting):
    """skorch's set_score_request carries sample_weight to score: the
    weighted mean of the operator errors, alone and in a Pipeline."""
    basis, _, _, X, y = setting
    w = np.random.default_rng(5).uniform(0.0, 1.0, len(X))

    def errors(net, X, y):
        return -relative_errors(y, net.predict(X), basis.gram_)["operator"]

    check_weighted_score(ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL),
                         X, y, w, errors)


def test_training_lowers_the_loss(setting):
    basis, sampler, pool, _, _ = setting
    X, y = make_blurred_images(pool, basis, sampler, 64, random_state=1)
    mean = sampler.sample(5000).mean(0)
    net = ResNetBlurRegressor(basis=basis, max_epochs=4, lr=3e-3,
                              module__output_bias=mean, train_split=None,
                              **SMALL).fit(X, y)
    losses = net.history[:, "train_loss"]
    assert losses[-1] < losses[0]


def test_mse_criterion_option(setting):
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, criterion=torch.nn.MSELoss,
                              max_epochs=1, **SMALL).fit(X, y)
    assert isinstance(net.criterion_, torch.nn.MSELoss)
    assert net.score(X, y) < 0        # still the operator error


def test_gram_without_basis(setting):
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(criterion__gram=basis.gram_, max_epochs=1,
                              **SMALL).fit(X, y)
    with_basis = ResNetBlurRegressor(basis=basis, **SMALL).initialize()
    with_basis.module_.load_state_dict(net.module_.state_dict())
    assert net.score(X, y) == pytest.approx(with_basis.score(X, y), rel=1e-5)


def test_fit_on_blur_dataset(setting):
    basis, sampler, pool, X, y = setting
    data = BlurDataset(pool, basis, sampler, batch_size=8, n_batches=3,
                       random_state=0)
    net = ResNetBlurRegressor(basis=basis, max_epochs=2, n_valid_batches=2,
                              iterator_train__num_workers=1,
                              callbacks=[EarlyStopping(patience=5)],
                              **SMALL).fit(data, None)
    assert len(net.history) == 2
    assert net.history[-1, "batches"][0]["train_batch_size"] == 8
    assert np.isfinite(net.history[:, "valid_loss"]).all()
    assert net.predict(X).shape == (48, 3)


def test_validation_batches_of_a_random_state_are_reproducible(setting):
    """A BlurDataset seeded with a RandomState is validated on batches drawn
    from a copy of it: the same state gives the same valid_loss (they came
    from numpy's global generator, and differed from run to run)."""
    basis, sampler, pool, _, _ = setting

    def valid_losses(state):
        data = BlurDataset(pool, basis, sampler, batch_size=8, n_batches=2,
                           random_state=state)
        torch.manual_seed(0)
        net = ResNetBlurRegressor(basis=basis, max_epochs=1, n_valid_batches=1,
                                  **SMALL).fit(data, None)
        return net.history[:, "valid_loss"]

    np.random.seed(1)  # noqa: NPY002 (the global stream must not matter)
    first = valid_losses(np.random.RandomState(0))
    np.random.seed(2)  # noqa: NPY002
    again = valid_losses(np.random.RandomState(0))
    assert first == again
    # drawn from a copy: the training stream is left as it was
    state = np.random.RandomState(0)
    data = BlurDataset(pool, basis, sampler, batch_size=8, n_batches=2,
                       random_state=state)
    net = ResNetBlurRegressor(basis=basis, n_valid_batches=1, **SMALL)
    before = state.get_state()[1].copy()
    net.get_split_datasets(data)
    np.testing.assert_array_equal(state.get_state()[1], before)


def test_blur_dataset_epochs_draw_new_samples_with_workers(setting):
    """Each epoch's DataLoader starts new workers; the data must still be new."""
    from skorch.callbacks import Callback

    class Targets(Callback):
        def initialize(self):
            self.seen = []
            return self

        def on_batch_begin(self, net, batch=None, training=None, **kwargs):
            if training:
                self.seen.append(batch[1].clone())

    basis, sampler, pool, X, y = setting
    data = BlurDataset(pool, basis, sampler, batch_size=8, n_batches=1,
                       random_state=0)
    record = Targets()
    ResNetBlurRegressor(basis=basis, max_epochs=2, train_split=None,
                        iterator_train__num_workers=1, callbacks=[record],
                        **SMALL).fit(data, None)
    assert len(record.seen) == 2
    assert not torch.equal(record.seen[0], record.seen[1])


def _smooth_pool(n, shape, seed):
    """Smooth images: their finest Haar coefficients hold noise, not content."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    return np.stack([gaussian_filter(rng.random(shape), 3) for _ in range(n)])


def _count_noisy(net, X):
    """How many images predict's NoisyImageWarning counts (0: no warning)."""
    import re
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net.predict(X)
    noisy = [w for w in caught if issubclass(w.category, NoisyImageWarning)]
    assert len(noisy) <= 1
    if not noisy:
        return 0
    return int(re.match(r"(\d+) of %d images are over 3 times noisier" % len(X),
                        str(noisy[0].message)).group(1))


def test_training_noise_is_recorded_and_predict_warns_beyond_it(setting, tmp_path,
                                                               monkeypatch):
    _, sampler, _, _, _ = setting
    # smooth images, blurs and maps: what is left at the finest scale is noise
    r = np.arange(5) - 2
    kernels = np.stack([np.exp(-0.5 * (r[:, None] ** 2 + r ** 2) / s**2)
                        for s in (0.7, 1.2, 2.0)])
    yy, xx = np.mgrid[0:16, 0:16] / 15.0
    basis = ProductConvolutionBasis.from_components(
        kernels / kernels.sum((1, 2), keepdims=True),
        np.stack([np.ones((16, 16)), xx, yy]))
    pool = _smooth_pool(20, (16, 16), 1)

    def data(noise, **kw):
        return BlurDataset(pool, basis, sampler, batch_size=16, n_batches=2,
                           noise_std=noise, random_state=0, **kw)

    def images(noise, seed=3):
        return make_blurred_images(pool, basis, sampler, 32, noise_std=noise,
                                   random_state=seed)[0]

    net = ResNetBlurRegressor(basis=basis, max_epochs=1, train_split=None,
                              **SMALL).fit(data((0.0, 0.02)), None)
    assert net.noise_level_ == 0.02                 # the top of the range
    assert net.training_noise_std_ == (0.0, 0.02)   # the range itself
    assert _count_noisy(net, images(0.02)) == 0
    assert _count_noisy(net, images(0.0)) == 0
    assert _count_noisy(net, images(0.2)) >= 30     # ten times: nearly all
    with pytest.warns(NoisyImageWarning, match=r"\(median\), (9|10|11) times"):
        net.predict(images(0.2, seed=4))
    # raw counts (clean mean 0.5 times 1 000) read as noise: the warning says
    # the scale first; images at the convention's scale do not get the hint
    with pytest.warns(NoisyImageWarning, match=r"^Their mean intensity is "
                      r"[1-9]\d\d \(median\).*look unscaled"):
        net.predict(1000 * images(0.02, seed=4))
    with pytest.warns(NoisyImageWarning) as record:
        net.predict(images(0.2, seed=4))
    assert not any("mean intensity" in str(w.message) for w in record)
    counts = torch.from_numpy(np.round(1000 * images(0.02, seed=4)).astype(np.int32))
    with pytest.warns(NoisyImageWarning, match="look unscaled"):
        net.predict(counts)                     # integer tensors are checked too
    # a large call checks 64 evenly spaced images, and says so
    many = make_blurred_images(pool, basis, sampler, 130, noise_std=0.2,
                               random_state=6)[0]
    with pytest.warns(NoisyImageWarning, match=r"^(6[0-4]) of 64 images checked "
                                               r"\(evenly spaced among 130\)"):
        net.predict(many)
    # continued training widens the level and the range, a fresh fit starts
    # over
    net.partial_fit(data(0.05), None)
    assert net.noise_level_ == 0.05 and net.training_noise_std_ == (0.0, 0.05)
    net.partial_fit(data(0.01), None)
    assert net.noise_level_ == 0.05 and net.training_noise_std_ == (0.0, 0.05)
    assert _count_noisy(net, images(0.1)) == 0
    net.fit(data(0.01), None)
    assert net.noise_level_ == 0.01 and net.training_noise_std_ == 0.01
    assert _count_noisy(net, images(0.1)) >= 30
    # it survives a pickle (joblib) round trip
    joblib.dump(net, tmp_path / "net.joblib")
    assert joblib.load(tmp_path / "net.joblib").noise_level_ == 0.01
    # on arrays, the level is measured on the training images
    X, y = make_blurred_images(pool, basis, sampler, 64, noise_std=0.05,
                               random_state=5)
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, train_split=None,
                              **SMALL).fit(X, y)
    assert 0.04 < net.noise_level_ < 0.08
    assert net.training_noise_std_ is None          # drawn with what? unknown
    assert _count_noisy(net, images(0.05)) == 0
    assert _count_noisy(net, images(0.5)) >= 30
    # noise given as an SNR depends on the image: unknown, nothing checked
    net.fit(data(None, snr=20.0), None)
    assert net.noise_level_ is None
    assert _count_noisy(net, images(0.5)) == 0
    assert net.training_noise_std_ is None
    # drawn without noise: known to be none (what save_model records), and
    # no check (any natural image reads as noisier than zero)
    net.fit(data(None), None)
    assert net.noise_level_ == 0.0 and net.training_noise_std_ == 0.0
    from deepblur.estimators import _gamma

    with monkeypatch.context() as m:        # not even estimated
        m.setattr(_gamma, "image_noise_levels", None)
        assert _count_noisy(net, images(0.5)) == 0
    net.partial_fit(data(0.02), None)
    assert net.noise_level_ == 0.02 and net.training_noise_std_ == (0.0, 0.02)


def test_training_boundary_is_recorded(setting):
    """How the training images were blurred at their border (tiling warns
    about zero-boundary networks on windows): a BlurDataset's boundary, None
    for arrays or once a continued training mixed boundaries."""
    basis, sampler, _, X, y = setting
    pool = _smooth_pool(20, (16, 16), 1)

    def data(boundary):
        return BlurDataset(pool, basis, sampler, batch_size=16, n_batches=1,
                           boundary=boundary, random_state=0)

    net = ResNetBlurRegressor(basis=basis, max_epochs=1, train_split=None,
                              **SMALL).fit(data("zero"), None)
    assert net.training_boundary_ == "zero"
    net.partial_fit(data("zero"), None)
    assert net.training_boundary_ == "zero"
    net.partial_fit(data("crop"), None)
    assert net.training_boundary_ is None              # mixed
    net.fit(data("crop"), None)
    assert net.training_boundary_ == "crop"
    net.fit(X, y)
    assert net.training_boundary_ is None              # arrays: unknown
    assert not hasattr(net.initialize(), "training_boundary_")


def test_clone_gridsearch_and_joblib(setting, tmp_path):
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, train_split=None,
                              **SMALL)
    assert clone(net).get_params()["basis"] is basis
    search = GridSearchCV(net, {"module__width": [2, 4]}, cv=2).fit(X, y)
    assert search.best_params_["module__width"] in (2, 4)
    # a grid of NumPy integers (torch's samplers take only Python ints)
    search = GridSearchCV(net, {"batch_size": np.array([8, -1])}, cv=2,
                          error_score="raise").fit(X, y)
    assert search.best_params_["batch_size"] in (8, -1)
    best = search.best_estimator_
    joblib.dump(best, tmp_path / "net.joblib")
    loaded = joblib.load(tmp_path / "net.joblib")
    np.testing.assert_array_equal(loaded.predict(X), best.predict(X))
    fitted_clone = clone(best)
    assert not hasattr(fitted_clone, "module_") or not getattr(
        fitted_clone, "initialized_", False)
    # n_features_in_, as the other estimators of images give it: H * W once
    # fitted or loaded, absent before (and with no basis to say H and W)
    assert best.n_features_in_ == loaded.n_features_in_ == X[0].size
    assert not hasattr(net, "n_features_in_")
    assert not hasattr(fitted_clone, "n_features_in_")
    no_basis = ResNetBlurRegressor(criterion__gram=basis.gram_, max_epochs=1,
                                   train_split=None, **SMALL)
    assert not hasattr(no_basis.fit(X, y), "n_features_in_")


def test_the_shared_basis_and_sampler_parameters_cannot_be_set(setting):
    """The basis and sampler are used as fitted and shared by clone (as in
    FrozenEstimator): their own parameters are neither listed nor settable,
    so no grid search or set_params changes a basis that others share."""
    basis, sampler, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, sampler=sampler, max_epochs=1, **SMALL)
    deep = net.get_params(deep=True)
    assert "basis" in deep and "sampler" in deep and "module__width" in deep
    assert not [k for k in deep if k.startswith(("basis__", "sampler__"))]
    tol, alpha_range = basis.tol, sampler.alpha_range
    for params in ({"basis__tol": 1e-9}, {"sampler__alpha_range": (0.9, 1.1)},
                   {"lr": 0.5, "basis__n_components": 2}):
        with pytest.raises(ValueError, match="uses its basis and sampler as they are"):
            net.set_params(**params)
    assert basis.tol == tol and sampler.alpha_range == alpha_range
    assert net.lr != 0.5                  # nothing of a refused call is set
    with pytest.raises(ValueError, match="Invalid parameter|uses its basis"):
        GridSearchCV(net, {"sampler__alpha_range": [(0.9, 1.1)]}, cv=2,
                     error_score="raise").fit(X, y)
    net.fit(X, y).set_params(iterator_valid__batch_size=4, lr=0.5)
    assert net.lr == 0.5
    from deepblur import SpectralBlurRegressor

    spectral = SpectralBlurRegressor(basis, sampler=sampler)
    assert not [k for k in spectral.get_params() if "__" in k]
    with pytest.raises(ValueError, match="uses its basis and sampler as they are"):
        spectral.set_params(basis__tol=1e-9)


def test_loader_parameters_can_be_set_on_a_trained_regressor(setting):
    """set_params(iterator_valid__batch_size=...) on a trained (or loaded)
    regressor sets predict's batches; skorch alone refuses it there (nothing
    to re-initialise) with a request for a bug report. The weights are kept,
    get_params and clone see the value, a module parameter still
    re-initialises the network, and an unknown loader argument is still an
    error of the loader."""
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, train_split=None,
                              **SMALL).fit(X, y)
    before = net.predict(X)
    weights = {k: v.clone() for k, v in net.module_.state_dict().items()}
    assert net.set_params(iterator_valid__batch_size=5, lr=0.02) is net
    assert net.get_params()["iterator_valid__batch_size"] == 5 and net.lr == 0.02
    assert clone(net).get_params()["iterator_valid__batch_size"] == 5
    assert net.get_iterator(net.get_dataset(X)).batch_size == 5
    assert all(torch.equal(v, net.module_.state_dict()[k])
               for k, v in weights.items())
    np.testing.assert_allclose(net.predict(X), before, rtol=1e-5, atol=1e-6)
    sizes = [len(xb) for xb, _ in net.get_iterator(net.get_dataset(X))]
    assert sizes == [5] * 9 + [3]
    net.set_params(iterator_valid__batch_size=7, module__width=2)
    assert net.module_.stem[0].out_channels == 2      # re-initialised
    assert net.iterator_valid__batch_size == 7
    # the loader class itself, and skorch's checks: a shuffled predict warns,
    # misspelt and fitted names are refused
    net.set_params(iterator_valid=torch.utils.data.DataLoader)
    assert net.get_params()["iterator_valid"] is torch.utils.data.DataLoader
    with pytest.warns(UserWarning, match="iterator_valid__shuffle=True"):
        net.set_params(iterator_valid__shuffle=True)
    net.set_params(iterator_valid__shuffle=False)
    with pytest.raises(ValueError, match="fitted attributes"):
        net.set_params(iterator_valid__batch_size_=3)
    net.set_params(iterator_valid__no_such_argument=1)
    with pytest.raises(TypeError, match="no_such_argument"):
        net.predict(X)
    with pytest.raises(ValueError, match="did you mean iterator_valid__batch"):
        net.set_params(iterator_validbatch=3)


def test_sampler_projects_predictions_on_its_support(setting, tmp_path):
    basis, sampler, _, X, y = setting
    raw = ResNetBlurRegressor(basis=basis, max_epochs=1, train_split=None,
                              **SMALL).fit(X, y)
    net = clone(raw).set_params(sampler=sampler).initialize()
    net.module_.load_state_dict(raw.module_.state_dict())
    pred = net.predict(X)
    assert pred.dtype == np.float32
    np.testing.assert_allclose(
        pred, sampler.project(raw.predict(X), gram=basis.gram_), rtol=1e-6,
        atol=1e-7)
    # the training gamma lie in the projected-on set: no error increases
    after = relative_errors(y, pred, basis.gram_)["operator"]
    before = relative_errors(y, raw.predict(X), basis.gram_)["operator"]
    assert (after <= before + 1e-6).all()
    assert net.score(X, y) >= raw.score(X, y)
    # clone shares the fitted sampler (GridSearchCV), joblib keeps it
    assert clone(net).sampler is sampler
    search = GridSearchCV(clone(net).set_params(max_epochs=1),
                          {"lr": [1e-3, 2e-3]}, cv=2).fit(X, y)
    assert search.best_estimator_.sampler is sampler
    joblib.dump(net, tmp_path / "net.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "net.joblib").predict(X),
                                  pred)


def test_bad_sampler_fails_before_training(setting):
    basis, _, _, X, y = setting
    with pytest.raises(NotFittedError, match="sampler must be a fitted ConeSampler"):
        ResNetBlurRegressor(basis=basis, sampler=ConeSampler(), **SMALL).fit(X, y)
    four = ConeSampler().fit(np.eye(4))
    with pytest.raises(ValueError, match="sampler must draw gamma of K=3"):
        ResNetBlurRegressor(basis=basis, sampler=four, **SMALL).fit(X, y)
    with pytest.raises(TypeError, match="sampler must be a fitted ConeSampler"):
        ResNetBlurRegressor(basis=basis, sampler=np.eye(3), **SMALL).fit(X, y)
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).fit(X, y)
    with pytest.raises(ValueError, match="sampler must draw gamma of K=3"):
        net.set_params(sampler=four).predict(X)


def test_feature_head_is_the_ridge_folded_into_the_network(setting, monkeypatch):
    """fit_feature_head = RidgeCV on [trunk output, statistics] (operator metric)."""
    from sklearn.linear_model import RidgeCV

    from deepblur.features import blur_features

    basis, sampler, pool, X, y = setting
    feats = dict(window=8, n_radial=2, n_angular=2, border=3, n_segments=2)
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, train_split=None,
                              module__blur_features=feats,
                              module__image_shape=(16, 16), **SMALL).fit(X, y)
    net.module_.eval()

    def trunk(images):
        with torch.no_grad():
            out = net.module_.forward_parts(torch.as_tensor(images[:, None]))[0]
        return out.numpy().astype(np.float64)

    Xf, yf = make_blurred_images(pool, basis, sampler, 200, random_state=3)
    P, before = trunk(Xf), trunk(X)
    net.fit_feature_head(Xf, yf, alphas=[0.1, 1.0, 10.0])
    # the same ridge, written independently
    L = np.linalg.cholesky(basis.gram_)
    Z = np.hstack([P, blur_features(Xf, **feats)])
    mu, sd = Z.mean(0), Z.std(0)
    ridge = RidgeCV(alphas=[0.1, 1.0, 10.0]).fit((Z - mu) / sd, (yf - P) @ L)
    assert net.feature_head_alpha_ == ridge.alpha_
    assert net.feature_head_n_images_ == 200
    Zt = np.hstack([before, blur_features(X, **feats)])
    expected = before + ridge.predict((Zt - mu) / sd) @ np.linalg.inv(L)
    np.testing.assert_allclose(net.predict(X), expected, rtol=1e-4, atol=1e-5)
    # in-sample, the ridge can only lower the squared operator error
    after = net.predict(Xf).astype(np.float64)

    def sq(p):
        d = p - yf
        return np.einsum("nk,kl,nl->", d, basis.gram_, d)

    assert sq(after) < sq(P)
    # on a BlurDataset too, and still trainable
    data = BlurDataset(pool, basis, sampler, batch_size=16, n_batches=4,
                       random_state=5)
    net.fit_feature_head(data)
    assert net.feature_head_n_images_ == 64
    # a worker simulates the batches beside the fit: the fit is that of its
    # stream, seeded by the fit's loader (its own torch.Generator(), so the
    # same here; handed over in pieces of 5 images, joined again into the
    # batches of 16)
    import deepblur.estimators.regressor as regressor_module

    monkeypatch.setattr(regressor_module, "_WORKER_CHUNK", 5)
    state = copy.deepcopy(net.module_.state_dict())
    worker_batches = list(torch.utils.data.DataLoader(
        data, batch_size=None, num_workers=1, generator=torch.Generator()))
    Xw = torch.cat([xb for xb, _ in worker_batches]).numpy()
    yw = torch.cat([yb for _, yb in worker_batches]).numpy()
    net.fit_feature_head(Xw, yw)
    expected = net.predict(X)
    net.module_.load_state_dict(state)
    net.fit_feature_head(data, num_workers=1)
    assert net.feature_head_n_images_ == 64
    np.testing.assert_allclose(net.predict(X), expected, rtol=1e-5, atol=1e-6)
    net.fit_feature_head(data, num_workers=2)         # the batches split between
    assert net.feature_head_n_images_ == 64           # them, every one used once
    net.partial_fit(X, y)


def test_head_workers_hand_over_small_copies_joined_into_batches(setting):
    """A worker's pieces own their storage (a view would share the whole
    batch's memory), and are joined again, in order, into whole batches."""
    from deepblur.estimators.regressor import _Chunks, _regrouped

    basis, sampler, pool, _, _ = setting
    data = BlurDataset(pool, basis, sampler, batch_size=16, n_batches=4,
                       random_state=5)
    batches = list(data)
    data.set_epoch(0)                                # the same stream again
    pieces = list(_Chunks(data, 5))
    assert [len(xb) for xb, _ in pieces] == [5, 5, 5, 1] * 4
    for xb, yb in pieces:
        for t in (xb, yb):
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size()
    X = torch.cat([xb for xb, _ in batches])
    y = torch.cat([yb for _, yb in batches])
    for size, sizes in ((16, [16] * 4), (7, [7] * 9 + [1]), (100, [64])):
        joined = list(_regrouped(pieces, size))
        assert [len(xb) for xb, _ in joined] == sizes
        torch.testing.assert_close(torch.cat([xb for xb, _ in joined]), X)
        torch.testing.assert_close(torch.cat([yb for _, yb in joined]), y)


def test_feature_head_bad_input(setting):
    basis, _, _, X, y = setting
    with pytest.raises(NotFittedError, match="initialised and trained"):
        ResNetBlurRegressor(basis=basis, **SMALL).fit_feature_head(X, y)
    plain = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).fit(X, y)
    with pytest.raises(ValueError, match="no blur-statistics branch"):
        plain.fit_feature_head(X, y)
    with pytest.raises(ValueError, match="image_shape must be given"):
        ResNetBlurRegressor(basis=basis, module__blur_features={},
                            **SMALL).initialize()
    with pytest.raises(ValueError, match="unknown parameter"):
        ResNetBlurRegressor(basis=basis, module__blur_features={"size": 3},
                            module__image_shape=(16, 16), **SMALL).initialize()
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, module__image_shape=(16, 16),
                              module__blur_features=dict(window=8, border=3),
                              **SMALL).fit(X, y)
    with pytest.raises(ValueError, match="alphas must be positive"):
        net.fit_feature_head(X, y, alphas=[-1.0])
    with pytest.raises(ValueError, match="num_workers must be a non-negative int"):
        net.fit_feature_head(X, y, num_workers=-1)
    on_gpu = BlurDataset(X, basis, setting[1], batch_size=4, n_batches=1,
                         device="cuda")
    with pytest.raises(ValueError, match="DataLoader workers cannot use"):
        net.fit_feature_head(on_gpu, num_workers=1)
    bad_batch = BlurDataset(X, basis, setting[1], batch_size=2.5, n_batches=1)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        net.fit_feature_head(bad_batch, num_workers=1)
    with pytest.raises(ValueError, match=r"y must have shape \(n_samples, K=3\)"):
        net.fit_feature_head(X, y[:, :2])
    with pytest.raises(ValueError, match="positive mean intensity"):
        net.predict(-X)


def test_cuda_pickle_loads_on_cpu(setting, monkeypatch):
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).fit(X, y)
    net.device = "cuda"        # as if trained on a GPU machine
    blob = pickle.dumps(net)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(Warning, match="cuda|CUDA"):
        loaded = pickle.loads(blob)
    assert loaded.device == "cpu" or str(loaded.device) == "cpu"
    assert loaded.predict(X).shape == (48, 3)


@pytest.mark.parametrize("check", [estimator_checks.check_estimator_sparse_array,
                                   estimator_checks.check_estimator_sparse_matrix],
                         ids=lambda check: check.__name__)
def test_sparse_input_is_refused_by_name(setting, check):
    """A sparse matrix was refused as "X must hold real numbers; got dtype
    object" (NumPy made it a 0-d object array)."""
    check("ResNetBlurRegressor", ResNetBlurRegressor(basis=setting[0], **SMALL))


def test_sparse_tensors_are_refused_by_name(setting):
    """A torch sparse tensor passed the sparse check and failed in torch."""
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL)
    sparse = torch.as_tensor(X[:4]).to_sparse()
    with pytest.raises(TypeError, match="X must be a dense array or tensor; "
                                        "sparse input is not supported"):
        net.fit(sparse, y[:4])
    with pytest.raises(TypeError, match="sparse input is not supported"):
        net.fit(X, y).predict(sparse)


def test_set_params_device_on_a_trained_regressor_is_checked(setting, monkeypatch):
    """set_params(device='cuda') on a trained regressor was taken without a
    word where there is no CUDA (the module stayed on the CPU, net.device
    said 'cuda'), and the next predict failed in torch ("Torch not compiled
    with CUDA enabled"). Refused now, before anything changes."""
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).fit(X, y)
    expected = net.predict(X)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, match in (("cuda", "CUDA is not available"),
                          ("auto", "device must name a device"),
                          ("meta", "not a device deepblur runs on")):
        with pytest.raises(ValueError, match=match):
            net.set_params(device=device)
        assert net.device == "cpu"
    np.testing.assert_array_equal(net.predict(X), expected)
    # unfitted, the device is checked by fit, as before
    unfitted = ResNetBlurRegressor(basis=basis, **SMALL).set_params(device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        unfitted.fit(X, y)


def test_set_params_device_refuses_a_cuda_index_beyond_the_devices(setting,
                                                                    monkeypatch):
    """set_params(device='cuda:1') on a one-GPU machine recorded the device
    and then failed in torch while moving the module: net.device said
    'cuda:1', the weights stayed where they were. Refused before anything
    changes now (CUDA faked present: torch's move fails on a CPU build as
    it does for a missing index)."""
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).fit(X, y)
    expected = net.predict(X)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match=r"device='cuda:1': this machine has 1 "
                                         r"CUDA device \(cuda:0\)"):
        net.set_params(device="cuda:1")
    assert net.device == "cpu"
    monkeypatch.undo()
    np.testing.assert_array_equal(net.predict(X), expected)


def test_set_params_device_keeps_the_training_state(setting):
    """The move goes through the optimizer's state_dict: training goes on
    exactly as without it (Adam's moments and step counts kept)."""
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).fit(X, y)
    moved = copy.deepcopy(net).set_params(device=torch.device("cpu"))
    assert str(moved.device) == "cpu"
    for regressor in (net, moved):
        torch.manual_seed(0)
        regressor.partial_fit(X, y)
    for a, b in zip(net.module_.parameters(), moved.module_.parameters(),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.cuda
def test_set_params_device_moves_a_trained_regressor(setting, monkeypatch):
    """set_params(device=...) on a trained regressor moves its module,
    criterion and optimizer state: skorch only recorded the name."""
    # TF32 convolutions (cuDNN's default) round to 1e-3: compare in float32
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).fit(X, y)
    expected = net.predict(X)
    net.set_params(device="cuda")
    assert {p.device.type for p in net.module_.parameters()} == {"cuda"}
    assert {b.device.type for b in net.criterion_.buffers()} == {"cuda"}
    assert {v.device.type for state in net.optimizer_.state.values()
            for k, v in state.items() if k != "step"} == {"cuda"}
    np.testing.assert_allclose(net.predict(X), expected, rtol=1e-4, atol=1e-5)
    net.partial_fit(X, y)
    assert np.isfinite(net.history[-1, "train_loss"])
    after = net.predict(X)
    net.set_params(device="cpu")
    assert {p.device.type for p in net.module_.parameters()} == {"cpu"}
    np.testing.assert_allclose(net.predict(X), after, rtol=1e-4, atol=1e-5)
    net.partial_fit(X, y)


def test_cuda_requested_without_cuda_is_an_error(setting, monkeypatch):
    basis, _, _, X, y = setting
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    net = ResNetBlurRegressor(basis=basis, **dict(SMALL, device="cuda"))
    with pytest.raises(ValueError, match="CUDA is not available"):
        net.fit(X, y)


@pytest.mark.cuda
@pytest.mark.parametrize("mixed_precision", [None, "bf16"])
def test_fit_on_cuda(setting, mixed_precision):
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=1,
                              mixed_precision=mixed_precision,
                              **dict(SMALL, device="cuda")).fit(X, y)
    assert net.predict(X).shape == (48, 3)
    assert np.isfinite(net.history[-1, "train_loss"])


def _record_stem_dtypes(net):
    """(training mode, dtype) of every output of the network's stem."""
    seen = []
    net.module_.stem.register_forward_hook(
        lambda module, inputs, out: seen.append((module.training, out.dtype)))
    return seen


@pytest.mark.parametrize("compile", [False, True])
def test_mixed_precision_trains_in_bf16_and_predicts_in_float32(setting,
                                                                compile):
    """The training forward passes run in bfloat16, validation and predict
    in float32: predict equals the plain float32 network's output."""
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=2, mixed_precision="bf16",
                              compile=compile, **SMALL).initialize()
    seen = _record_stem_dtypes(net) if not compile else None
    net.partial_fit(X, y)
    net.partial_fit(X, y)
    losses = net.history[:, "train_loss"]
    assert np.all(np.isfinite(losses)) and np.all(np.isfinite(
        net.history[:, "valid_loss"]))
    if seen is not None:
        assert {(True, torch.bfloat16), (False, torch.float32)} == set(seen)
    pred = net.predict(X)
    assert pred.dtype == np.float32
    module = getattr(net.module_, "_orig_mod", net.module_).eval()
    with torch.no_grad():
        ref = module(torch.as_tensor(X, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(pred, ref, rtol=1e-5, atol=1e-6)
    # a float32 regressor with the same weights predicts the same (to the
    # rounding of the compiled graph)
    plain = ResNetBlurRegressor(basis=basis, **SMALL).initialize()
    plain.module_.load_state_dict(module.state_dict())
    np.testing.assert_allclose(plain.predict(X), pred, rtol=1e-5, atol=1e-6)


def test_mixed_precision_learns_like_float32(setting):
    """Same seed, data and steps: bfloat16 training ends within a few percent
    of float32's loss (and both below where they started)."""
    basis, sampler, pool, _, _ = setting
    X, y = make_blurred_images(pool, basis, sampler, 64, random_state=1)
    mean = sampler.sample(5000).mean(0)
    losses = {}
    for mixed_precision in (None, "bf16"):
        torch.manual_seed(0)
        net = ResNetBlurRegressor(basis=basis, max_epochs=4, lr=3e-3,
                                  module__output_bias=mean, train_split=None,
                                  mixed_precision=mixed_precision,
                                  **SMALL).fit(X, y)
        losses[mixed_precision] = net.history[:, "train_loss"]
    for curve in losses.values():
        assert curve[-1] < curve[0]
    assert losses["bf16"][-1] == pytest.approx(losses[None][-1], rel=0.05)


def test_mixed_precision_with_psf_moments(setting):
    """The (gamma, moments) pair of a moment-supervised network is cast back
    to float32 for its loss."""
    from deepblur.nets.losses import PSFMomentLoss

    basis, sampler, _, X, y = setting
    net = ResNetBlurRegressor(
        basis=basis, criterion=PSFMomentLoss, module__moment_stage=1,
        criterion__gamma_samples=sampler.sample(200), max_epochs=1,
        mixed_precision="bf16", **SMALL).fit(X, y)
    assert np.isfinite(net.history[-1, "train_loss"])


@pytest.mark.parametrize("value", ["fp16", "bfloat16", True, torch.bfloat16,
                                   ["bf16"]])
def test_mixed_precision_bad_values(setting, value):
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, mixed_precision=value,
                              **SMALL)
    with pytest.raises(ValueError, match="mixed_precision must be None or 'bf16'"):
        net.fit(X, y)
    # set on a trained regressor, it is refused at the next training step
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).fit(X, y)
    net.set_params(mixed_precision=value)
    with pytest.raises(ValueError, match="mixed_precision must be None or 'bf16'"):
        net.partial_fit(X, y)
    assert net.predict(X).shape == (48, 3)     # predict runs in float32


def test_mixed_precision_refuses_a_cuda_device_without_bf16(monkeypatch):
    """Compute capability below 8.0 (before Ampere) is refused, per device."""
    capabilities = {0: (8, 0), 1: (7, 0)}
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda index=None: capabilities[index])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "V100")
    with pytest.raises(ValueError, match=r"\(V100\) has no native bfloat16"):
        check_mixed_precision("bf16", torch.device("cuda:1"))
    assert check_mixed_precision("bf16", torch.device("cuda")) is torch.bfloat16
    assert check_mixed_precision("bf16", torch.device("cuda:0")) is torch.bfloat16
    assert check_mixed_precision(None, torch.device("cuda:1")) is None
    assert check_mixed_precision("bf16", torch.device("cpu")) is torch.bfloat16


def test_mixed_precision_probes_other_devices(monkeypatch):
    """Devices other than the CPU and NVIDIA's (ROCm, MPS) are accepted only
    if a bfloat16 convolution runs there under autocast: here the CPU runs
    it, torch refuses autocast on the meta device, and a backend that
    leaves autocast off (MPS before macOS 14 warns and computes in float32)
    is refused too."""
    from deepblur.estimators import regressor

    monkeypatch.setattr(regressor, "_bf16_autocast_problem",
                        functools.lru_cache(regressor._bf16_autocast_problem
                                            .__wrapped__))
    # whatever the caller's grad mode, and without touching its RNG
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with torch.inference_mode():
        assert regressor._bf16_autocast_problem("cpu") is None
    regressor._bf16_autocast_problem.cache_clear()
    with torch.no_grad():
        assert regressor._bf16_autocast_problem("cpu") is None
    assert torch.equal(torch.rand(3), expected)
    with pytest.raises(ValueError, match=r"bfloat16 autocast does not run on "
                                         r"device 'meta' \(RuntimeError: .*meta"):
        check_mixed_precision("bf16", torch.device("meta"))
    assert check_mixed_precision(None, torch.device("meta")) is None

    class Off:                          # autocast that does nothing
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    regressor._bf16_autocast_problem.cache_clear()
    with monkeypatch.context() as m:
        m.setattr(torch, "autocast", Off)
        assert "autocast computed in torch.float32" in (
            regressor._bf16_autocast_problem("cpu"))
    regressor._bf16_autocast_problem.cache_clear()
    # a ROCm build's "cuda" devices are probed too (without a GPU: refused)
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.version, "hip", "6.2")
        with pytest.raises(ValueError, match="bfloat16 autocast does not run "
                                             "on device 'cuda'"):
            check_mixed_precision("bf16", torch.device("cuda"))


def test_the_bf16_probe_leaves_the_warnings_of_other_threads_alone(monkeypatch):
    """The probe silenced torch's warnings with warnings.catch_warnings,
    whose filters are the process's: while it ran (fits on an MPS or ROCm
    device in a threaded search), the warnings of every other thread were
    dropped, and a filter another thread set meanwhile was undone when it
    left. Here the probe is held inside (its autocast paused) while this
    thread warns and sets a filter."""
    import threading

    from deepblur.estimators import regressor

    inside, resume, answers = threading.Event(), threading.Event(), []

    class Paused(torch.autocast):
        def __enter__(self):
            inside.set()
            resume.wait(10)
            return super().__enter__()

    monkeypatch.setattr(torch, "autocast", Paused)
    probe = threading.Thread(target=lambda: answers.append(
        regressor._bf16_autocast_problem.__wrapped__("cpu")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe.start()
        try:
            assert inside.wait(10)
            warnings.warn("another thread's warning", UserWarning, stacklevel=1)
            warnings.filterwarnings("error", "another thread's filter")
            filters = list(warnings.filters)
        finally:
            resume.set()
            probe.join()
        assert warnings.filters == filters
    assert [str(w.message) for w in caught] == ["another thread's warning"]
    assert answers == [None]


def test_mixed_precision_warns_on_a_cpu_without_bf16_units(setting,
                                                          monkeypatch):
    basis, _, _, X, y = setting
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False,
                        raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False,
                        raising=False)
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, mixed_precision="bf16",
                              **SMALL)
    with pytest.warns(UserWarning, match="this CPU has no bfloat16 units"):
        net.fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ResNetBlurRegressor(basis=basis, **SMALL).initialize()   # float32
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True,
                            raising=False)
        net.initialize()
        # other architectures (Arm CPUs may have bfloat16): no judgement
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False,
                            raising=False)
        monkeypatch.setattr(platform, "machine", lambda: "arm64")
        net.initialize()


def test_a_regressor_pickled_before_mixed_precision_loads(setting):
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).fit(X, y)
    del net.__dict__["mixed_precision"]
    old = pickle.loads(pickle.dumps(net))
    assert old.mixed_precision is None
    old.partial_fit(X, y)                       # trains in float32
    assert "mixed_precision" in old.get_params()


def test_checkpoint_resume_keeps_finished_epochs(setting, tmp_path):
    basis, _, _, X, y = setting
    cp = Checkpoint(dirname=str(tmp_path), monitor=None)
    net = ResNetBlurRegressor(basis=basis, max_epochs=2, callbacks=[cp],
                              **SMALL).fit(X, y)
    resumed = ResNetBlurRegressor(
        basis=basis, max_epochs=1, callbacks=[
            Checkpoint(dirname=str(tmp_path), monitor=None),
            LoadInitState(Checkpoint(dirname=str(tmp_path), monitor=None))],
        **SMALL).fit(X, y)
    assert len(resumed.history) == 3
    assert resumed.history[:2, "train_loss"] == net.history[:, "train_loss"]


def test_bad_input(setting):
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL)
    with pytest.raises(ValueError, match=r"image_shape \(16, 16\)"):
        net.fit(X[:, :8], y)
    bad = X.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="finite"):
        net.fit(bad, y)
    with pytest.raises(ValueError, match=r"K=3"):
        net.fit(X, y[:, :2])
    with pytest.raises(ValueError, match="as many samples"):
        net.fit(X, y[:10])
    with pytest.raises(ValueError, match=r"\(n, H, W\)"):
        net.fit(X[0], y)
    with pytest.raises(ValueError, match="basis must be given"):
        ResNetBlurRegressor(**SMALL).fit(X, y)
    with pytest.raises(NotFittedError, match="basis must be a fitted"):
        ResNetBlurRegressor(basis=ProductConvolutionBasis(3), **SMALL).fit(X, y)
    fitted = net.fit(X, y)
    with pytest.raises(ValueError, match="finite"):
        fitted.predict(bad)
    with pytest.raises(ValueError, match=r"image_shape"):
        fitted.predict(X[:, :8, :8])
    with pytest.raises(ValueError, match="at least one image"):
        fitted.predict(X[:0])
    # big-endian arrays (FITS files, some TIFFs) are read in native order
    for dtype in (">f4", ">f8"):
        np.testing.assert_array_equal(fitted.predict(X.astype(dtype)),
                                      fitted.predict(X))
    with pytest.raises(ValueError, match="at least one image"):
        ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).fit(X[:0], y[:0])
    # a refused continuation leaves the recorded training noise alone
    level, noise = fitted.noise_level_, fitted.training_noise_std_
    noisy = X + np.random.default_rng(0).normal(0, 0.2, X.shape).astype(X.dtype)
    with pytest.raises(ValueError, match=r"K=3"):
        fitted.partial_fit(noisy, y[:, :2])
    assert (fitted.noise_level_, fitted.training_noise_std_) == (level, noise)
    # skorch moves tensors to the device as given: a name, not 'auto'
    with pytest.raises(ValueError, match="device must name a device"):
        ResNetBlurRegressor(basis=basis, **dict(SMALL, device="auto")).fit(X, y)
    # without a basis, the number of outputs must come from somewhere
    with pytest.raises(ValueError, match="basis must be given"):
        ResNetBlurRegressor(criterion=torch.nn.MSELoss, **SMALL).fit(X, y)
    assert ResNetBlurRegressor(criterion=torch.nn.MSELoss, module__n_outputs=3,
                               max_epochs=1, **SMALL).fit(X, y).predict(X).shape \
        == (len(X), 3)
    # a module of one's own says its outputs its own way
    class Linear(torch.nn.Module):
        def __init__(self, out_features=3):
            super().__init__()
            self.fc = torch.nn.Linear(16 * 16, out_features)

        def forward(self, x):
            return self.fc(x.flatten(1))

    assert ResNetBlurRegressor(module=Linear, criterion=torch.nn.MSELoss,
                               module__out_features=3, max_epochs=1, device="cpu",
                               verbose=0).fit(X, y).predict(X).shape == (len(X), 3)
    # y as a list of lists (skorch's split took a list for several inputs)
    ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).fit(X, y.tolist())
    # score checks its targets
    for bad, match in ((y[:, :2], "K=3"), (np.full_like(y, np.nan), "finite"),
                       (y[:5], "as many samples")):
        with pytest.raises(ValueError, match=match):
            fitted.score(X, bad)
    with pytest.raises(TypeError, match="score needs images and their gamma"):
        fitted.score(BlurDataset(X, basis, ConeSampler().fit(np.eye(3))), None)
    # and its sample_weight (a wrong length was numpy's "Axis must be specified")
    for bad, match in ((np.ones(5), r"sample_weight.shape == \(5,\)"),
                       (np.full(len(X), np.nan), "sample_weight contains NaN"),
                       (-np.ones(len(X)), "Negative values .*sample_weight")):
        with pytest.raises(ValueError, match=match):
            fitted.score(X, y, sample_weight=bad)
    w = np.linspace(0.1, 1.0, len(X))
    err = -np.array([fitted.score(X[i:i + 1], y[i:i + 1]) for i in range(len(X))])
    assert fitted.score(X, y, sample_weight=w) == pytest.approx(
        -np.average(err, weights=w), rel=1e-5)


def _constant_network(basis, sampler, outputs, **params):
    """A regressor whose network returns ``outputs`` for every image (the last
    layer's weights at 0, its bias ``outputs``)."""
    net = ResNetBlurRegressor(basis=basis, sampler=sampler, **SMALL,
                              **params).initialize()
    with torch.no_grad():
        net.module_.fc.weight.zero_()
        net.module_.fc.bias.copy_(torch.as_tensor(outputs, dtype=torch.float32))
    return net


def test_support_tolerance_warns_about_estimates_off_the_support(setting, tmp_path):
    """The sampler spans e_1..e_3 with alpha in [0.8, 1.2]: (0.8, 0.8, 0.8)
    lies off it; its distance is independent of the image."""
    import warnings

    from deepblur.estimators._gamma import support_distances
    from deepblur.exceptions import OutOfSupportWarning

    basis, sampler, _, X, _ = setting
    far = np.array([0.8, 0.8, 0.8])
    (dist,) = support_distances(sampler, far[None], basis.gram_)[1]
    assert dist > 0.3
    net = _constant_network(basis, sampler, far, project=False,
                            support_tolerance=dist / 2)
    with pytest.warns(OutOfSupportWarning, match=f"48 of 48 images .* "
                                                 f"support_tolerance={dist / 2:.3g}"):
        pred = net.predict(X)
    np.testing.assert_allclose(pred, np.tile(far, (48, 1)), rtol=1e-6)   # raw
    np.testing.assert_allclose(net.support_distance(X), dist, rtol=1e-5)
    # project=True: the projections, and still the warning (distances before it)
    net.set_params(project=True)
    with pytest.warns(OutOfSupportWarning):
        projected = net.predict(X[:4])
    np.testing.assert_allclose(projected, sampler.project(pred[:4], gram=basis.gram_),
                               rtol=1e-5)
    # a tolerance above the distance, or none: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfSupportWarning)
        net.set_params(support_tolerance=2 * dist).predict(X[:4])
        net.set_params(support_tolerance=None).predict(X[:4])
    # kept by clone (GridSearchCV) and joblib
    net.set_params(support_tolerance=dist / 2, project=False)
    assert clone(net).get_params()["support_tolerance"] == dist / 2
    assert clone(net).project is False
    joblib.dump(net, tmp_path / "net.joblib")
    with pytest.warns(OutOfSupportWarning):
        joblib.load(tmp_path / "net.joblib").predict(X[:2])
    # an estimate on the support: silent
    inside = _constant_network(basis, sampler, [0.5, 0.3, 0.2], project=False,
                               support_tolerance=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfSupportWarning)
        inside.predict(X)
    assert inside.support_distance(X) == pytest.approx(np.zeros(48), abs=1e-5)


def test_support_check_bad_input(setting):
    basis, sampler, _, X, y = setting
    with pytest.raises(ValueError, match="support_tolerance needs a sampler"):
        ResNetBlurRegressor(basis=basis, support_tolerance=0.1, **SMALL).fit(X, y)
    with pytest.raises(ValueError, match="support_tolerance must be a positive"):
        ResNetBlurRegressor(basis=basis, sampler=sampler, support_tolerance=-1,
                            **SMALL).fit(X, y)
    with pytest.raises(TypeError, match="project must be True or False"):
        ResNetBlurRegressor(basis=basis, sampler=sampler, project="no",
                            **SMALL).fit(X, y)
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).fit(X, y)
    with pytest.raises(ValueError, match="support_distance needs the regressor's "
                                         "sampler"):
        net.support_distance(X)
    # set after fitting (as load_model does): checked at predict
    with pytest.raises(ValueError, match="support_tolerance must be a positive"):
        net.set_params(sampler=sampler, support_tolerance=float("nan")).predict(X)
    with pytest.raises(ValueError, match="support_tolerance needs a sampler"):
        net.set_params(sampler=None, support_tolerance=0.1).predict(X)


def test_a_regressor_pickled_before_the_support_check_loads(setting):
    """Pickles of regressors made before ``project`` and ``support_tolerance``
    existed load with what they did then: project with a sampler, no check."""
    basis, sampler, _, X, _ = setting
    net = _constant_network(basis, sampler, [0.8, 0.8, 0.8])
    expected = net.predict(X[:2])
    del net.__dict__["project"], net.__dict__["support_tolerance"]
    old = pickle.loads(pickle.dumps(net))
    assert old.project is True and old.support_tolerance is None
    np.testing.assert_array_equal(old.predict(X[:2]), expected)
    assert {"project", "support_tolerance"} <= set(old.get_params())


def test_predict_without_a_basis_needs_no_gram(setting):
    """MSE on gamma with module__n_outputs trains without a basis; predict
    (neither projecting nor checking) does not ask for the Gram matrix."""
    _, _, _, X, y = setting
    net = ResNetBlurRegressor(criterion=torch.nn.MSELoss, module__n_outputs=3,
                              max_epochs=1, **SMALL).fit(X, y)
    assert net.predict(X).shape == (48, 3)


def test_fit_hands_a_blurdataset_back_to_per_pass_seeding(setting):
    """After a training (set_epoch every epoch), the dataset used with
    DataLoader workers must not replay the last epoch at every pass."""
    basis, sampler, pool, _, _ = setting
    data = BlurDataset(pool, basis, sampler, batch_size=8, n_batches=2,
                       random_state=0)
    ResNetBlurRegressor(basis=basis, max_epochs=2, train_split=None,
                        **SMALL).fit(data, None)

    def plain_pass():
        loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=1)
        return torch.cat([y for _, y in loader])

    assert not torch.equal(plain_pass(), plain_pass())



def test_tags_say_it_takes_images_and_predicts_k_outputs():
    """The tags said two_d_array and single-output (skorch's defaults) for
    images (n, H, W) and estimates (n, K)."""
    tags = get_tags(ResNetBlurRegressor())
    assert not tags.input_tags.two_d_array and tags.input_tags.three_d_array
    assert tags.target_tags.multi_output and tags.target_tags.required
    assert tags.estimator_type == "regressor"


def test_tags_say_it_is_not_deterministic(setting):
    """The tags said deterministic (scikit-learn's default), but with no
    random_state two fits on the same data give different networks (the
    weights' start and the batches follow torch's global generator)."""
    basis, _, _, X, y = setting
    assert get_tags(ResNetBlurRegressor()).non_deterministic
    a, b = (ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).fit(X, y)
            for _ in range(2))
    assert not np.allclose(a.predict(X), b.predict(X))


def _closed_basis():
    """A basis made of the orbits of two components under the rotations and
    flips: exactly closed under them."""
    from deepblur.operators import dihedral_transform

    rng = np.random.default_rng(3)
    e0, f0 = rng.random((2, 3, 3)), rng.random((2, 16, 16))
    return ProductConvolutionBasis.from_components(
        np.concatenate([dihedral_transform(e0, t) for t in range(8)]),
        np.concatenate([dihedral_transform(f0, t) for t in range(8)]))


def test_test_time_augmentation_averages_the_copies_brought_back():
    """predict averages the 8 transformed copies' estimates brought back by
    the basis's maps, and so is equivariant: the estimate of a turned image
    is the turned estimate."""
    from deepblur.operators import dihedral_maps, dihedral_transform

    basis = _closed_basis()
    forward, back, _ = dihedral_maps(basis.kernels_, basis.maps_)
    net = ResNetBlurRegressor(basis=basis, **SMALL).initialize()
    X = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    plain = [net.predict(dihedral_transform(X, t)) @ back[t].T for t in range(8)]
    net.set_params(test_time_augmentation="dihedral")
    tta = net.predict(X)
    assert tta.dtype == np.float32 and tta.shape == (3, 16)
    np.testing.assert_allclose(tta, np.mean(plain, 0), rtol=1e-5, atol=1e-6)
    for t in (1, 4, 6):
        np.testing.assert_allclose(net.predict(dihedral_transform(X, t)),
                                   tta @ forward[t].T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.predict(torch.from_numpy(X)), tta, rtol=1e-6)
    assert clone(net).get_params()["test_time_augmentation"] == "dihedral"
    restored = pickle.loads(pickle.dumps(net))
    np.testing.assert_allclose(restored.predict(X), tta, rtol=1e-6)


def test_test_time_augmentation_bad_input(setting):
    basis, sampler, _, X, y = setting
    # refused before any training, not by every predict after it
    net = ResNetBlurRegressor(basis=basis, test_time_augmentation="dihedral",
                              max_epochs=1, **SMALL)
    with pytest.raises(ValueError, match="needs a basis closed under rotations "
                       "and flips; up to .* % of a transformed"):
        net.fit(X, y)
    with pytest.raises(ValueError, match="must be None or 'dihedral'"):
        ResNetBlurRegressor(basis=_closed_basis(), test_time_augmentation="Dihedral",
                            **SMALL).initialize()
    net = ResNetBlurRegressor(basis=basis, **SMALL).initialize()
    net.set_params(test_time_augmentation="dihedral")
    with pytest.raises(ValueError, match="needs a basis closed under rotations"):
        net.predict(X)
    closed = ResNetBlurRegressor(basis=_closed_basis(), **SMALL).initialize()
    closed.set_params(test_time_augmentation="rotate")
    with pytest.raises(ValueError, match="must be None or 'dihedral'"):
        closed.predict(X)
    closed.set_params(test_time_augmentation="dihedral")
    with pytest.raises(TypeError, match="not a BlurDataset"):
        closed.predict(BlurDataset(X, closed.basis, ConeSampler(random_state=0).fit(
            np.eye(16)), batch_size=4, n_batches=1, random_state=0))
    with pytest.raises(ValueError, match="basis=None"):
        ResNetBlurRegressor(test_time_augmentation="dihedral",
                            module__n_outputs=3, **SMALL).initialize().predict(X)


class _BatchSizes(Callback):
    """Records the size of every training batch."""

    def initialize(self):
        self.sizes = []
        return self

    def on_batch_begin(self, net, batch=None, training=None, **kwargs):
        if training:
            self.sizes.append(len(batch[0]))


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_lone_last_training_image_joins_the_batch_before(setting, shuffle):
    """16x16 images: the network's last stage is 1x1, where BatchNorm refuses a
    training batch of one image. A training set of n_train % batch_size == 1
    images (e.g. a fold of a grid search) gives its last image to the batch
    before; other sizes batch as before, and every image is trained on."""
    basis, _, _, X, y = setting
    kw = dict(SMALL, max_epochs=2, train_split=None,
              iterator_train__shuffle=shuffle)
    for n, sizes in ((17, [17]), (33, [16, 17]), (18, [16, 2]), (16, [16])):
        record = _BatchSizes()
        ResNetBlurRegressor(basis=basis, callbacks=[record], **kw).fit(X[:n], y[:n])
        assert record.sizes == sizes * 2
    # with the default validation split (22 images: 17 to train on), and a
    # batch size given as a NumPy integer
    record = _BatchSizes()
    ResNetBlurRegressor(basis=basis, callbacks=[record],
                        **dict(SMALL, max_epochs=1,
                               batch_size=np.int64(16))).fit(X[:22], y[:22])
    assert record.sizes == [17]
    # the batches hold every image once, in the sampler's order
    from deepblur.estimators.regressor import _NoLoneLastBatch

    for n in range(1, 40):
        batches = list(_NoLoneLastBatch(range(n), 8))
        assert len(batches) == len(_NoLoneLastBatch(range(n), 8))
        assert sum(batches, []) == list(range(n))
        assert all(len(b) > 1 for b in batches) or n == 1
        plain = list(torch.utils.data.BatchSampler(range(n), 8, drop_last=False))
        assert batches == plain or n % 8 == 1


def test_feature_head_takes_batch_size_minus_one(setting):
    """batch_size=-1 is skorch's one batch (fit and predict honour it): the
    head read no batch at all (range(0, n, -1))."""
    basis, _, _, X, y = setting
    feats = dict(window=8, n_radial=2, n_angular=2, border=3, n_segments=2)
    net = ResNetBlurRegressor(basis=basis, module__blur_features=feats,
                              module__image_shape=(16, 16),
                              **dict(SMALL, batch_size=-1)).initialize()
    state = copy.deepcopy(net.module_.state_dict())
    net.fit_feature_head(X, y)
    assert net.feature_head_n_images_ == len(X)
    one_batch = net.predict(X)
    net.module_.load_state_dict(state)
    net.set_params(batch_size=len(X)).fit_feature_head(X, y)
    np.testing.assert_allclose(one_batch, net.predict(X), rtol=1e-6, atol=1e-7)
    for bad in (0, -2, 2.5, True):
        net.set_params(batch_size=bad)
        with pytest.raises(ValueError, match=r"batch_size must be a positive int "
                                             r"or -1 \(one batch\)"):
            net.fit_feature_head(X, y)


def test_tensors_of_complex_or_bool_dtype_are_refused(setting):
    """As arrays of those dtypes are: a complex tensor lost its imaginary part
    (with torch's warning only), a boolean one was read as 0/1 images."""
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).initialize()
    Xt = torch.from_numpy(X[:4])
    for bad in (Xt.to(torch.complex64), Xt > 0.5):
        with pytest.raises(ValueError, match=rf"X must hold real numbers; got "
                                             rf"dtype {bad.dtype}"):
            net.predict(bad)
        with pytest.raises(ValueError, match="must hold real numbers"):
            net.fit(bad, y[:4])
    assert net.predict(Xt.double()).shape == (4, 3)      # real tensors: as before
    assert net.predict(Xt.to(torch.int32)).shape == (4, 3)


def test_training_refuses_sample_weight(setting):
    """skorch handed sample_weight to the split or the module's forward, which
    failed with their own messages; a fitted network keeps its weights."""
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).initialize()
    state = copy.deepcopy(net.module_.state_dict())
    for method in ("fit", "partial_fit"):
        with pytest.raises(ValueError, match=rf"sample_weight is not supported for "
                                             rf"training \({method}\).*score "
                                             r"takes sample_weight"):
            getattr(net, method)(X, y, sample_weight=np.ones(len(X)))
    for key, value in net.module_.state_dict().items():
        torch.testing.assert_close(value, state[key])
    assert len(net.history) == 0


def test_non_finite_estimates_are_refused_with_their_cause(setting):
    """A network whose weights diverged returned NaN estimates (and a NaN
    score) without a word, or scikit-learn's bare "Input contains NaN." when
    they were projected on the sampler's support."""
    basis, sampler, _, X, y = setting
    diverged = _constant_network(basis, None, [np.nan, 0.1, 0.1])
    message = (r"the network's estimates are not finite \(NaN or Inf\) for 4 of "
               r"4 images: its weights are not finite either: its training "
               "diverged")
    with pytest.raises(ValueError, match=message):
        diverged.predict(X[:4])
    with pytest.raises(ValueError, match=message):
        diverged.score(X[:4], y[:4])
    diverged.set_params(sampler=sampler)
    for call in (diverged.predict, diverged.support_distance):
        with pytest.raises(ValueError, match=message):
            call(X[:4])
    diverged.set_params(project=False, support_tolerance=0.05)
    with pytest.raises(ValueError, match=message):
        diverged.predict(X[:4])
    # finite weights whose outputs overflow
    net = _constant_network(basis, None, [0.1, 0.1, 0.1])
    net.module_.register_forward_hook(lambda module, args, out: out * np.inf)
    with pytest.raises(ValueError, match="weights are finite but so large"):
        net.predict(X[:4])


@pytest.mark.parametrize("workers", [0, 1])
def test_a_lone_last_image_keeps_the_loaders_shuffled_order(workers):
    """The batches with a lone last image joined are drawn lazily: the epoch's
    order is the plain DataLoader's for the same seed, with or without a
    worker (built eagerly, the sampler drew before the loader's base seed)."""
    from skorch.dataset import Dataset

    X = np.arange(33, dtype=np.float32)[:, None, None] * np.ones((1, 16, 16),
                                                                np.float32)
    ds = Dataset(X, np.zeros((33, 3), np.float32))
    net = ResNetBlurRegressor(batch_size=16, iterator_train__shuffle=True,
                              iterator_train__num_workers=workers, device="cpu")
    torch.manual_seed(0)
    ours = [b[0][:, 0, 0].int().tolist() for b in net.get_iterator(ds, training=True)]
    torch.manual_seed(0)
    plain = [b[0][:, 0, 0].int().tolist() for b in torch.utils.data.DataLoader(
        ds, batch_size=16, shuffle=True, num_workers=workers)]
    assert [len(b) for b in ours] == [16, 17]
    assert sum(ours, []) == sum(plain, [])


def test_n_valid_batches_is_checked(setting):
    """n_valid_batches=-1 failed in the split with Python's '__len__() should
    return >= 0', and 2.5 or "2" trained with 2 batches without a word."""
    basis, sampler, pool, _, _ = setting
    data = BlurDataset(pool, basis, sampler, batch_size=8, n_batches=2,
                       random_state=0)
    for bad in (-1, 2.5, "2", True):
        net = ResNetBlurRegressor(basis=basis, max_epochs=1, n_valid_batches=bad,
                                  **SMALL)
        with pytest.raises(ValueError, match=r"n_valid_batches must be a "
                                             rf"non-negative int .*{bad!r}"):
            net.fit(data, None)
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).fit(data, None)
    assert "valid_loss" in net.history[-1]
    with pytest.raises(ValueError, match="n_valid_batches must be"):
        net.set_params(n_valid_batches=-1).partial_fit(data, None)
    for off in (0, None):
        net = ResNetBlurRegressor(basis=basis, max_epochs=1, n_valid_batches=off,
                                  **SMALL).fit(data, None)
        assert "valid_loss" not in net.history[-1]


def test_basis_of_another_k_set_since_fit_is_refused(setting):
    """set_params(basis=...) with another K after fit: predict returned the
    fitted K's estimates as the new basis's gamma without a word."""
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).fit(X, y)
    rng = np.random.default_rng(0)
    other = ProductConvolutionBasis.from_components(rng.random((4, 3, 3)),
                                                    rng.random((4, 16, 16)))
    net.set_params(basis=other)
    with pytest.raises(ValueError, match=r"the network gives 3 coefficients per "
                                         r"image but the basis .* has K=4"):
        net.predict(X[:2])
    assert net.set_params(basis=basis).predict(X[:2]).shape == (2, 3)


def test_basis_of_another_k_with_test_time_augmentation_is_refused_by_name():
    """With test_time_augmentation, a basis of another K set since fit failed
    in numpy's matmul ('mismatch in its core dimension 0'), before the check
    of the estimates' K."""
    from deepblur.operators import dihedral_transform

    net = ResNetBlurRegressor(basis=_closed_basis(), **SMALL).initialize()
    e0, f0 = np.random.default_rng(4).random((2, 1, 3, 3))
    smaller = ProductConvolutionBasis.from_components(   # one orbit: K=8
        np.stack([dihedral_transform(e0[0], t) for t in range(8)]),
        np.stack([dihedral_transform(np.tile(f0[0], (6, 6))[:16, :16], t)
                  for t in range(8)]))
    net.set_params(basis=smaller, test_time_augmentation="dihedral")
    X = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    with pytest.raises(ValueError, match=r"the network gives 16 coefficients "
                                         r"per image but the basis .* has K=8"):
        net.predict(X)


def test_basis_of_another_image_shape_set_since_fit_is_refused(setting):
    """set_params(basis=...) with the same K but another image shape after
    fit: predict read images of the new shape and returned the trained
    basis's coefficients as the new maps' without a word (the spectral and
    point-source estimators refuse it)."""
    basis, _, _, X, y = setting
    net = ResNetBlurRegressor(basis=basis, max_epochs=1, **SMALL).fit(X, y)
    assert net.image_shape_ == (16, 16)
    rng = np.random.default_rng(0)
    larger = ProductConvolutionBasis.from_components(basis.kernels_,
                                                     rng.random((3, 24, 24)))
    net.set_params(basis=larger)
    for call in (lambda: net.predict(rng.random((2, 24, 24))),
                 lambda: net.score(rng.random((2, 24, 24)), y[:2])):
        with pytest.raises(ValueError, match=r"basis has image shape \(24, 24\), "
                                             r"but this network was trained with "
                                             r"a basis of image shape \(16, 16\)"):
            call()
    # trained on it, the network takes it; without the record (a loaded
    # model, an old pickle) nothing is refused
    Xl, yl = rng.random((8, 24, 24)), rng.random((8, 3)) + 0.1
    assert net.partial_fit(Xl, yl).image_shape_ == (24, 24)
    assert net.predict(Xl[:2]).shape == (2, 3)
    del net.image_shape_
    assert net.set_params(basis=basis).predict(X[:2]).shape == (2, 3)
    assert "image_shape_" not in vars(net.initialize())
