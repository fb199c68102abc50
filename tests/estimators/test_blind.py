"""BlindDeblurrer: fit order, grid search over K and lambda, caching, errors."""

import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
import sklearn
from _blind_setup import make_blind_data, tiny
from _routing import check_bad_weights_refused
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.model_selection import GridSearchCV, KFold

import deepblur.estimators.blind as blind_module
from deepblur import (
    BlindDeblurrer,
    ConeSimplifier,
    ProductConvolutionBasis,
    TVDeblurrer,
)


@pytest.fixture(scope="module")
def data():
    return make_blind_data()


@pytest.fixture(scope="module")
def fitted(data):
    fields, blurry, clean = data
    return tiny(K=4).fit(blurry, clean, psf_fields=fields)


def test_fit_builds_every_stage_from_the_calibration(data, fitted):
    fields, blurry, clean = data
    model = fitted
    assert model.basis_.kernels_.shape[0] == 4
    # the cone was fitted on the fitted basis's coefficients of the fields
    np.testing.assert_allclose(
        model.cone_.score(model.basis_.transform(fields)),
        ConeSimplifier(n_rays=6).fit(model.basis_.transform(fields)).score(
            model.basis_.transform(fields)))
    np.testing.assert_array_equal(model.sampler_.generators_, model.cone_.rays_)
    assert model.regressor_.basis is model.basis_
    assert model.deblurrer_.blur_estimator is model.regressor_
    gamma = model.estimate(blurry)
    assert gamma.shape == (len(blurry), 4)
    # transform is TV deblurring with the estimated operators
    U = model.transform(blurry)
    np.testing.assert_allclose(
        U, model.deblurrer_.transform(blurry, gamma=gamma), rtol=1e-5, atol=1e-6)
    # the unfitted parameters are left untouched (sklearn convention)
    assert not hasattr(model.basis, "kernels_")
    assert not hasattr(model.regressor, "module_")


def test_fit_is_reproducible_with_an_int_random_state(data, fitted):
    fields, blurry, clean = data
    again = tiny(K=4).fit(blurry, clean, psf_fields=fields).estimate(blurry)
    np.testing.assert_array_equal(again, fitted.estimate(blurry))


def test_random_state_seeds_a_random_basis_start(data, tmp_path):
    """A basis with init="random" and random_state=None kept its own seed:
    two fits of BlindDeblurrer(random_state=0) differed, and a fit with
    memory= differed from one without. Its random_state now comes from the
    BlindDeblurrer's (as the sampler's); one set on the basis is kept."""
    fields, blurry, clean = data

    def model(**basis_params):
        m = tiny(K=3)
        return m.set_params(basis=ProductConvolutionBasis(
            3, image_shape=m.basis.image_shape, init="random", max_iter=5,
            **basis_params))

    a = model().fit(blurry, clean, psf_fields=fields)
    b = model().set_params(memory=str(tmp_path)).fit(blurry, clean,
                                                     psf_fields=fields)
    np.testing.assert_array_equal(a.basis_.kernels_, b.basis_.kernels_)
    np.testing.assert_array_equal(a.estimate(blurry), b.estimate(blurry))
    assert isinstance(a.basis_.random_state, int) and a.basis.random_state is None
    own = model(random_state=7).fit(blurry, clean, psf_fields=fields)
    assert own.basis_.random_state == 7
    assert not np.array_equal(own.basis_.kernels_, a.basis_.kernels_)


def test_score_is_the_psnr_of_the_blind_deblurring(data, fitted):
    fields, blurry, clean = data
    model = fitted
    from deepblur.metrics import psnr

    expected = np.mean(psnr(clean, model.transform(blurry)))
    assert model.score(blurry, clean) == pytest.approx(expected, rel=1e-6)


def test_weighted_score_in_pipeline_and_grid_search(data, fitted):
    """score took no sample_weight: Pipeline.score failed whenever metadata
    routing was on ("Pipeline.score got unexpected argument(s)
    {'sample_weight'}", even without weights), and with routing off when
    given weights (TypeError). Now it is the weighted mean of the images'
    PSNRs; psf_fields reaches fit through routing (set_fit_request)."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    fields, blurry, clean = data
    w = np.linspace(0.0, 2.0, len(blurry))
    U = fitted.transform(blurry).astype(np.float64)
    psnrs = 10 * np.log10(np.ptp(clean, axis=(1, 2)) ** 2
                          / np.mean((U - clean) ** 2, axis=(1, 2)))
    expected = np.average(psnrs, weights=w)
    assert fitted.score(blurry, clean, sample_weight=w) == pytest.approx(
        expected, rel=1e-5)
    check_bad_weights_refused(fitted, blurry, clean)
    for routing in (False, True):
        with sklearn.config_context(enable_metadata_routing=routing):
            if routing:
                step = tiny(K=4).set_fit_request(psf_fields=True).set_score_request(
                    sample_weight=True)
                pipe = make_pipeline(FunctionTransformer(), step).fit(
                    blurry, clean, psf_fields=fields)
            else:
                pipe = make_pipeline(FunctionTransformer(), tiny(K=4)).fit(
                    blurry, clean, blinddeblurrer__psf_fields=fields)
            assert pipe.score(blurry, clean, sample_weight=w) == pytest.approx(
                expected, rel=1e-5)
            assert pipe.score(blurry, clean) == pytest.approx(psnrs.mean(),
                                                              rel=1e-5)
    cv = KFold(2)
    with sklearn.config_context(enable_metadata_routing=True):
        est = tiny(K=4).set_fit_request(psf_fields=True).set_score_request(
            sample_weight=True)
        search = GridSearchCV(est, {"deblurrer__lam": [50.0]}, cv=cv,
                              refit=False).fit(blurry, clean, psf_fields=fields,
                                               sample_weight=w)
    train, test = next(cv.split(blurry))
    by_hand = tiny(K=4).fit(blurry[train], clean[train], psf_fields=fields).score(
        blurry[test], clean[test], sample_weight=w[test])
    assert search.cv_results_["split0_test_score"][0] == pytest.approx(by_hand,
                                                                       rel=1e-5)


def test_sparse_input_is_refused_by_name(data, fitted):
    """A sparse image failed with NumPy's "setting an array element with a
    sequence"."""
    import scipy.sparse as sp

    fields, blurry, clean = data
    for call in (lambda: fitted.transform(sp.csr_matrix(blurry[0])),
                 lambda: tiny().fit(sp.csr_matrix(blurry[0]), clean[:1],
                                    psf_fields=fields)):
        with pytest.raises(TypeError, match="X must be a dense array or tensor; "
                                            "sparse input is not supported"):
            call()


def test_joint_grid_search_over_K_and_lambda(data):
    """One GridSearchCV rebuilds basis, cone and regressor for every K."""
    fields, blurry, clean = data
    grid = {"basis__n_components": [2, 4], "deblurrer__lam": [20.0, 400.0]}
    cv = KFold(2)
    search = GridSearchCV(tiny(), grid, cv=cv).fit(blurry, clean,
                                                   psf_fields=fields)
    assert search.best_estimator_.basis_.kernels_.shape[0] == \
        search.best_params_["basis__n_components"]
    # every entry of cv_results_ is what the candidate scores when refitted by hand
    i = 3
    params = search.cv_results_["params"][i]
    train, test = next(cv.split(blurry))
    by_hand = clone(tiny()).set_params(**params).fit(
        blurry[train], clean[train], psf_fields=fields).score(blurry[test],
                                                              clean[test])
    assert search.cv_results_["split0_test_score"][i] == pytest.approx(by_hand,
                                                                      rel=1e-5)
    # lambda matters: the scores differ across lam at fixed K
    scores = search.cv_results_["mean_test_score"]
    assert not np.allclose(scores[0], scores[1])


def test_memory_trains_one_regressor_per_K_not_per_lambda(data, tmp_path):
    fields, blurry, clean = data
    grid = {"deblurrer__lam": [20.0, 400.0]}
    search = GridSearchCV(tiny(memory=str(tmp_path)), grid, cv=KFold(2),
                          refit=False).fit(blurry, clean, psf_fields=fields)
    entries = [p for p in Path(tmp_path).rglob("output.pkl")]
    assert len(entries) == 2          # one per fold, shared by the two lam
    plain = GridSearchCV(tiny(), grid, cv=KFold(2), refit=False).fit(
        blurry, clean, psf_fields=fields)
    np.testing.assert_allclose(search.cv_results_["mean_test_score"],
                               plain.cv_results_["mean_test_score"], rtol=1e-5)


def test_estimates_are_projected_on_the_sampled_set(data):
    """project=True is the raw network projected by the fitted sampler in the
    operator metric, and never farther from an operator of the sampled set;
    project=False (default) trains the same network and keeps it raw.
    Two rays for K=4 make the sampled set flat, so every raw estimate is off it.
    """
    from deepblur.datasets import make_blurred_images
    from deepblur.pretrained import relative_errors

    fields, blurry, clean = data
    flat = {"cone": ConeSimplifier(n_rays=2)}
    model = tiny(K=4, project=True).set_params(**flat).fit(
        blurry, clean, psf_fields=fields)
    raw_model = tiny(K=4).set_params(**flat).fit(
        blurry, clean, psf_fields=fields)
    assert raw_model.regressor_.sampler is None
    assert model.regressor_.sampler is model.sampler_
    basis, sampler = model.basis_, model.sampler_
    X, g = make_blurred_images(clean, basis, sampler, 32, random_state=1)
    raw = raw_model.estimate(X).astype(np.float64)
    projected = model.estimate(X).astype(np.float64)
    np.testing.assert_allclose(projected, sampler.project(raw, gram=basis.gram_),
                               rtol=1e-5, atol=1e-6)
    assert np.abs(projected - raw).max() > 1e-3 * np.abs(raw).max()
    e_raw = relative_errors(g, raw, basis.gram_)["operator"]
    e_proj = relative_errors(g, projected, basis.gram_)["operator"]
    assert np.all(e_proj <= e_raw + 1e-5)
    assert e_proj.mean() < e_raw.mean()


def test_a_regressor_with_a_support_tolerance_gets_the_sampler_unprojected(data):
    """The fitted sampler serves the regressor's support check; its estimates
    stay raw unless project=True."""
    fields, blurry, clean = data
    checked = tiny().set_params(regressor__support_tolerance=0.5).fit(
        blurry, clean, psf_fields=fields)
    reg = checked.regressor_
    assert reg.sampler is checked.sampler_ and reg.project is False
    assert reg.support_tolerance == 0.5
    assert tiny(project=True).set_params(regressor__support_tolerance=0.5).fit(
        blurry, clean, psf_fields=fields).regressor_.project is True
    dist = reg.support_distance(blurry)
    assert dist.shape == (len(blurry),) and np.isfinite(dist).all()


class MeanGamma(RegressorMixin, BaseEstimator):
    """A regressor of one's own, without ``sampler`` or ``batch_size``: it
    predicts the mean of the cone and records the batch size it was fed."""

    def __init__(self, basis=None):
        self.basis = basis

    def fit(self, X, y=None):
        self.batches_ = X.batch_size
        self.gamma_ = X.sampler.sample(256).mean(0)
        return self

    def predict(self, X):
        return np.tile(self.gamma_, (len(X), 1))


class BatchedMeanGamma(MeanGamma):
    """The same with a ``batch_size``, which the simulated batches follow."""

    def __init__(self, basis=None, batch_size=16):
        super().__init__(basis)
        self.batch_size = batch_size


def test_project_needs_a_regressor_with_a_sampler_parameter(data):
    fields, blurry, clean = data
    with pytest.raises(ValueError, match="project=False"):
        tiny(project=True).set_params(regressor=BatchedMeanGamma()).fit(
            blurry, clean, psf_fields=fields)
    model = tiny().set_params(regressor=BatchedMeanGamma())
    gamma = model.fit(blurry, clean, psf_fields=fields).estimate(blurry)
    assert gamma.shape == (len(blurry), 3)
    assert model.regressor_.batches_ == 16
    with pytest.raises(ValueError, match="project"):
        tiny(project="yes").fit(blurry, clean, psf_fields=fields)


def test_a_regressor_of_its_own_needs_no_batch_size(data):
    """Only ``basis``, ``fit`` and ``predict`` are asked of a custom regressor:
    without a ``batch_size`` it is fitted on batches of 64."""
    fields, blurry, clean = data
    model = tiny().set_params(regressor=MeanGamma())
    gamma = model.fit(blurry, clean, psf_fields=fields).estimate(blurry)
    assert model.regressor_.batches_ == 64
    np.testing.assert_allclose(gamma, np.tile(model.regressor_.gamma_,
                                              (len(blurry), 1)))


def test_train_boundary_sets_how_the_training_images_are_blurred(data, fitted):
    """train_boundary="crop" trains the regressor on windows of larger scenes
    (the tiles of large images are such windows); the default, zero
    boundary, warns when transform tiles a larger image."""
    import warnings

    from deepblur.exceptions import BoundaryWarning

    fields, blurry, clean = data
    assert fitted.regressor_.training_boundary_ == "zero"
    big = np.tile(blurry[:1], (1, 2, 2))[:, :40, :48]
    with pytest.warns(BoundaryWarning, match="boundary='crop'"):
        fitted.transform(big)
    crop = tiny(K=4, train_boundary="crop").fit(blurry, clean, psf_fields=fields)
    assert crop.regressor_.training_boundary_ == "crop"
    assert not np.allclose(crop.estimate(blurry), fitted.estimate(blurry))
    with warnings.catch_warnings():
        warnings.simplefilter("error", BoundaryWarning)
        crop.transform(big)
    with pytest.raises(ValueError, match="train_boundary"):
        tiny(train_boundary="periodic").fit(blurry, clean, psf_fields=fields)
    # pickled before the parameter: its default, for clone and get_params
    old = pickle.loads(pickle.dumps(crop))
    del old.__dict__["train_boundary"]
    old = pickle.loads(pickle.dumps(old))
    assert clone(old).get_params()["train_boundary"] == "zero"


def test_joblib_round_trip(data, fitted, tmp_path):
    fields, blurry, clean = data
    model = fitted
    joblib.dump(model, tmp_path / "m.joblib")
    again = joblib.load(tmp_path / "m.joblib")
    np.testing.assert_array_equal(again.transform(blurry), model.transform(blurry))
    assert pickle.loads(pickle.dumps(clone(model))).get_params()["noise_std"] == 0.01


def test_bad_inputs(data, monkeypatch):
    fields, blurry, clean = data

    def never(*args, **kwargs):             # every bad input fails before fitting
        raise AssertionError("fitted despite a bad input")

    monkeypatch.setattr(blind_module, "_fit_blur_model", never)
    with pytest.raises(ValueError, match="psf_fields must be given"):
        tiny().fit(blurry, clean)
    with pytest.raises(ValueError, match="y must be given"):
        tiny().fit(blurry, None, psf_fields=fields)
    with pytest.raises(ValueError, match="y must have image_shape"):
        tiny().fit(blurry, clean[:, :16], psf_fields=fields)
    with pytest.raises(ValueError, match="X must have 3 dimensions"):
        tiny().fit(blurry[0], clean, psf_fields=fields)
    bad = blurry.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        tiny().fit(bad, clean, psf_fields=fields)
    model = tiny().set_params(basis=ProductConvolutionBasis(3, image_shape=(16, 16)))
    with pytest.raises(ValueError, match="basis.image_shape"):
        model.fit(blurry, clean, psf_fields=fields)
    # an int or an array is a valid image_shape for the basis: compared as a pair
    side = blurry.shape[1]
    for shape in (side + 8, np.array([side, side + 8])):
        model.set_params(basis=ProductConvolutionBasis(3, image_shape=shape))
        with pytest.raises(ValueError, match="basis.image_shape must be the images'"):
            model.fit(blurry, clean, psf_fields=fields)
    assert blurry.shape[1] == blurry.shape[2]
    for shape in (side, np.array([side, side])):     # the right shape: fitted
        model.set_params(basis=ProductConvolutionBasis(3, image_shape=shape))
        with pytest.raises(AssertionError, match="fitted despite"):
            model.fit(blurry, clean, psf_fields=fields)
    with pytest.raises(ValueError, match="same number of images"):
        tiny().fit(blurry[:2], clean, psf_fields=fields)
    with pytest.raises(ValueError, match="n_train_images"):
        tiny().set_params(n_train_images=0).fit(blurry, clean, psf_fields=fields)
    for noise, match in (((0.02, 0.01), "low <= high"), ([0.0, 0.01, 0.02],
                         "float or a"), ((-0.01, 0.01), ">= 0")):
        with pytest.raises(ValueError, match=f"noise_std must be .*{match}"):
            tiny().set_params(noise_std=noise).fit(blurry, clean, psf_fields=fields)
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        tiny().transform(blurry)


@pytest.mark.parametrize("key, name", [
    ("deblurrer__lam", "deblurrer"), ("basis__n_components", "basis"),
    ("regressor__lr", "regressor"), ("cone__n_rays", "cone"),
    ("sampler__alpha_range", "sampler"),
])
def test_nested_parameters_of_a_default_component_say_what_to_pass(key, name):
    """A grid over deblurrer__lam with deblurrer=None (the default) failed
    with "'NoneType' object has no attribute 'set_params'"."""
    with pytest.raises(ValueError, match=rf"{name} is None.*pass the component"):
        BlindDeblurrer().set_params(**{key: 1})
    with pytest.raises(ValueError, match=rf"{name} is None"):
        clone(BlindDeblurrer()).set_params(**{key: 1})
    # the component and its parameter in one call, as a grid's candidate does
    est = BlindDeblurrer().set_params(deblurrer=TVDeblurrer(), deblurrer__lam=3.0)
    assert est.deblurrer.lam == 3.0
    assert BlindDeblurrer(deblurrer=TVDeblurrer()).set_params(
        deblurrer__lam=2.0).deblurrer.lam == 2.0


def test_tags_give_the_deblurrers_output_dtype():
    """The tags said float64 is kept; the default deblurrer returns float32."""
    from sklearn.utils import get_tags

    assert get_tags(BlindDeblurrer()).transformer_tags.preserves_dtype == [
        "float32"]
    model = BlindDeblurrer(deblurrer=TVDeblurrer(dtype="float64"))
    assert get_tags(model).transformer_tags.preserves_dtype == ["float64"]


def test_the_message_for_a_default_sampler_names_its_alpha_range():
    """The message said fit uses 'a default ConeSampler()': one passed as
    told samples alpha_range=(0.5, 1.5), where fit's default takes the
    calibration's ||gamma|| (0.13 to 0.22 on make_random_operators' fields),
    so the regressor trained on operators 4 to 7 times too bright."""
    with pytest.raises(ValueError, match=r"ConeSampler\(alpha_range=\(low, high"
                       r"\)\).*percentiles of \|\|gamma\|\|.*keeps its "
                       r"alpha_range \(default \(0\.5, 1\.5\)"):
        BlindDeblurrer().set_params(sampler__max_rays=3)
    with pytest.raises(ValueError, match=r"default TVDeblurrer\(\); to set or "
                       r"tune .*\(deblurrer=TVDeblurrer\(\.\.\.\)\)\.$"):
        BlindDeblurrer().set_params(deblurrer__lam=3.0)


def test_the_grid_search_examples_pass_the_components_they_tune():
    """docs/user_guide/scale_out.rst searched over basis__n_components and
    deblurrer__lam of BlindDeblurrer(random_state=0), whose components are
    None: the search failed on its first candidate."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    text = (root / "docs" / "user_guide" / "scale_out.rst").read_text()
    example = text[text.index("search = GridSearchCV("):]
    example = example[:example.index("cv=KFold(3))")]
    model = eval(example[example.index("BlindDeblurrer("):example.index("{")]
                 .rstrip().rstrip(","),
                 {"BlindDeblurrer": BlindDeblurrer, "TVDeblurrer": TVDeblurrer,
                  "ProductConvolutionBasis": ProductConvolutionBasis,
                  "blurry": np.zeros((4, 32, 48))})
    model.set_params(basis__n_components=10, deblurrer__lam=50.0)
    # the basis is made for the images (the default 128x128 refused 32x48
    # images in fit: 'basis.image_shape must be the images' shape')
    assert tuple(model.basis.image_shape) == (32, 48)
