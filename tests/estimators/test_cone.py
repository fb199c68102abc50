"""Estimator API of ConeSimplifier and ConeSampler."""

import cvxpy as cp
import joblib
import numpy as np
import pytest
import torch
from _routing import check_bad_weights_refused, check_weighted_score
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.utils import get_tags
from sklearn.utils.estimator_checks import parametrize_with_checks

from deepblur.estimators.cone import ConeSampler, ConeSimplifier
from deepblur.solvers.cone import circumcenter, cone_nnls, simplify_cone


class NonNegativeDataConeSimplifier(ConeSimplifier):
    """ConeSimplifier whose tags ask scikit-learn's common checks for
    non-negative data. Left to themselves they generate centred data, whose
    cone is not pointed (an error of fit); the estimator itself is not
    positive_only: rows with negative entries in an open half-space are
    valid."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.positive_only = True
        return tags


EXPECTED_FAILED_CHECKS = {
    "check_positive_only_tag_during_fit": (
        "The positive_only tag is set (by the test subclass) so that the "
        "common checks generate non-negative data, whose cone is pointed. The "
        "estimator rightly fits rows with negative entries when they lie in "
        "an open half-space (the scalar-centred iris data do), instead of "
        "rejecting negative values."
    ),
    "check_estimators_dtypes": (
        "The integer-cast copies of the check's data contain an all-zero row; "
        "a zero row has no direction and is an error."
    ),
    "check_fit2d_1feature": (
        "Shifting the data to be non-negative makes one of the 1-feature rows "
        "exactly zero; a zero row has no direction and is an error."
    ),
}


def expected_failed_checks(estimator):
    if isinstance(estimator, ConeSimplifier):
        return EXPECTED_FAILED_CHECKS
    return {}


@parametrize_with_checks(
    [NonNegativeDataConeSimplifier(), ConeSampler()],
    expected_failed_checks=expected_failed_checks,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_simplifier_is_not_positive_only():
    """Its tags said positive_only, but rows with negative entries in an open
    half-space are fitted (and are the rays kept)."""
    assert not get_tags(ConeSimplifier()).input_tags.positive_only
    X = np.array([[1.0, -0.5], [1.0, 0.4], [1.0, 0.0]])
    est = ConeSimplifier(n_rays=2).fit(X)
    np.testing.assert_array_equal(np.sort(est.ray_indices_), [0, 1])


@pytest.fixture
def gammas():
    rng = np.random.default_rng(0)
    return rng.uniform(0.0, 1.0, size=(300, 5)) + 0.01


# --- ConeSimplifier ----------------------------------------------------------


def test_simplifier_fitted_attributes(gammas):
    est = ConeSimplifier(n_rays=7).fit(gammas)
    rays, indices, center, radius = simplify_cone(gammas, 7)
    np.testing.assert_array_equal(est.ray_indices_, indices)
    np.testing.assert_array_equal(est.rays_, rays)
    np.testing.assert_allclose(np.linalg.norm(est.rays_, axis=1), 1.0)
    np.testing.assert_allclose(est.circumcenter_, center)
    assert est.circumradius_ == radius
    assert isinstance(est.circumradius_, float)
    assert est.n_features_in_ == 5
    np.testing.assert_allclose(circumcenter(gammas)[1], est.circumradius_)
    assert list(est.get_feature_names_out()) == [f"conesimplifier{i}" for i in range(7)]


@pytest.mark.parametrize("scale", [1e-200, 1e-165, 1e160, 1e200])
def test_simplifier_fits_and_scores_rows_of_any_magnitude(gammas, scale):
    """Rows scaled by 1e-165 were refused as zero rows, by 1e160 as "not
    pointed": the cone and the relative distances to it do not depend on the
    rows' magnitude."""
    est = ConeSimplifier(n_rays=4).fit(gammas)
    scaled = ConeSimplifier(n_rays=4).fit(gammas * scale)
    np.testing.assert_array_equal(scaled.ray_indices_, est.ray_indices_)
    np.testing.assert_allclose(scaled.rays_, est.rays_, rtol=1e-12)
    assert est.score(gammas * scale) == pytest.approx(est.score(gammas), rel=1e-9)


def test_simplifier_transform_round_trip(gammas):
    est = ConeSimplifier(n_rays=12).fit(gammas)
    rng = np.random.default_rng(1)
    W_true = rng.uniform(size=(20, 12)) * (rng.uniform(size=(20, 12)) < 0.3)
    X = W_true @ est.rays_
    W = est.transform(X)
    assert W.shape == (20, 12) and (W >= 0).all()
    np.testing.assert_allclose(est.inverse_transform(W), X, atol=1e-10)
    assert est.score(X) == pytest.approx(0.0, abs=1e-10)
    np.testing.assert_allclose(est.fit_transform(gammas), est.transform(gammas))


def test_simplifier_score_is_minus_mean_relative_residual(gammas):
    est = ConeSimplifier(n_rays=4).fit(gammas)
    X = np.vstack([gammas[:50], np.zeros((1, 5))])
    residuals = cone_nnls(X, est.rays_)[1]
    relative = residuals[:50] / np.linalg.norm(X[:50], axis=1)
    assert est.score(X) == pytest.approx(-relative.sum() / 51)
    assert -1 <= est.score(-gammas) <= est.score(gammas) <= 0


def _relative_cone_distances(est, X, y=None):
    """Minus each row's relative distance to cone(rays_), by SciPy's NNLS."""
    from scipy.optimize import nnls

    return [-nnls(est.rays_.T, x)[1] / np.linalg.norm(x) for x in X]


def test_simplifier_weighted_score_in_pipeline_and_grid_search(gammas):
    """score took no sample_weight: Pipeline.score failed whenever metadata
    routing was on ("Pipeline.score got unexpected argument(s)
    {'sample_weight'}", even without weights), and with routing off when
    given weights (TypeError); there was no set_score_request. Now it is the
    weighted mean of the rows' distances."""
    X = gammas[:50]
    w = np.random.default_rng(2).uniform(0.0, 1.0, len(X))
    check_weighted_score(ConeSimplifier(n_rays=3), X, None, w,
                         _relative_cone_distances, grid={"n_rays": [2, 4]})
    check_bad_weights_refused(ConeSimplifier(n_rays=3).fit(X), X, None)


def test_simplifier_score_increases_with_n_rays(gammas):
    # The kept rays of a smaller n_rays are a prefix of a larger one, so the
    # cone only grows: the held-out score cannot decrease.
    train, test = gammas[:200], gammas[200:]
    scores = [ConeSimplifier(n_rays=n).fit(train).score(test) for n in (2, 5, 10, 30)]
    assert all(a <= b + 1e-12 for a, b in zip(scores, scores[1:], strict=False))
    assert scores[0] < scores[-1]


def test_simplifier_grid_search(gammas):
    search = GridSearchCV(ConeSimplifier(), {"n_rays": [2, 20]}, cv=3).fit(gammas)
    assert search.best_params_ == {"n_rays": 20}


def test_simplifier_does_not_modify_input(gammas):
    X = gammas.copy()
    est = ConeSimplifier(n_rays=5).fit(X)
    est.transform(X)
    est.score(X)
    np.testing.assert_array_equal(X, gammas)


def test_simplifier_accepts_negative_entries_in_a_half_space():
    rng = np.random.default_rng(2)
    X = rng.uniform(-0.3, 0.3, size=(100, 3)) + np.array([0.0, 0.0, -1.0])
    est = ConeSimplifier(n_rays=5).fit(X)
    assert est.circumcenter_[2] < -0.9
    assert est.circumradius_ < np.pi / 4


@pytest.mark.parametrize(
    ("X", "params", "match"),
    [
        (
            np.array([[1.0, 2.0], [-1.0, -2.0], [1.0, 1.0]]),
            {"n_rays": 2},
            r"cone generated by the rows of X is not pointed.*90 degrees",
        ),
        (
            np.vstack([np.eye(3), -np.eye(3)]),
            {"n_rays": 2},
            r"not pointed: its circumradius is at least pi/2",
        ),
        (
            np.array([[1.0, 1.0], [0.0, 0.0], [1.0, 2.0]]),
            {"n_rays": 2},
            r"X must have no zero rows.*1 zero row\(s\), at index 1",
        ),
        (np.array([[1.0, np.nan], [1.0, 2.0]]), {"n_rays": 1}, r"X contains NaN"),
        (np.array([[1.0, np.inf], [1.0, 2.0]]), {"n_rays": 1}, r"X contains inf"),
        (
            np.eye(3),
            {"n_rays": 4},
            r"n_rays=4 must not exceed the number of rows of X.*n_samples=3",
        ),
        (np.eye(3), {"n_rays": 0}, r"'n_rays' parameter of ConeSimplifier"),
        (np.eye(3), {"n_rays": 2.5}, r"'n_rays' parameter of ConeSimplifier"),
        (np.eye(3), {"solver": "OSQP"}, r"'solver' parameter of ConeSimplifier"),
    ],
)
def test_simplifier_bad_inputs(X, params, match):
    with pytest.raises(ValueError, match=match):
        ConeSimplifier(**params).fit(X)


def test_simplifier_solver_failure(monkeypatch):
    def fail(self, *args, **kwargs):
        raise cp.error.SolverError("numerical trouble")

    monkeypatch.setattr(cp.Problem, "solve", fail)
    with pytest.raises(
        RuntimeError, match=r"tried solver\(s\) \['SCS'\] among the installed"
    ):
        ConeSimplifier(n_rays=2, solver="SCS").fit(np.eye(3))


def test_simplifier_transform_bad_inputs(gammas):
    est = ConeSimplifier(n_rays=3)
    with pytest.raises(NotFittedError):
        est.transform(gammas)
    est.fit(gammas)
    with pytest.raises(ValueError, match="X has 4 features"):
        est.transform(gammas[:, :4])
    with pytest.raises(ValueError, match=r"must have n_rays=3 columns"):
        est.inverse_transform(np.ones((2, 4)))


# --- ConeSampler ---------------------------------------------------------------


def test_sampler_samples_lie_in_the_cone(gammas):
    rays = ConeSimplifier(n_rays=15).fit(gammas).rays_
    sampler = ConeSampler(alpha_range=(0.5, 2.0), random_state=0).fit(rays)
    assert sampler.max_rays_ == 5  # min(K, R)
    samples = sampler.sample(3000)
    assert samples.shape == (3000, 5)
    assert cone_nnls(samples, rays)[1].max() < 1e-10
    # Unit rays combined with simplex weights have norm at most alpha.
    assert np.linalg.norm(samples, axis=1).max() <= 2.0 + 1e-12


def test_sampler_reproducible_stream():
    G = np.random.default_rng(3).uniform(size=(10, 4))
    sampler = ConeSampler(random_state=42).fit(G)
    first, second = sampler.sample(20), sampler.sample(20)
    assert not np.array_equal(first, second)  # the stream moves on
    again = ConeSampler(random_state=42).fit(G)
    np.testing.assert_array_equal(again.sample(20), first)
    np.testing.assert_array_equal(again.sample(20), second)
    np.testing.assert_array_equal(sampler.fit(G).sample(20), first)  # fit restarts
    rs = np.random.RandomState(0)
    assert ConeSampler(random_state=rs).fit(G).sample(3).shape == (3, 4)


def test_sampler_keeps_dtype_and_copies_generators():
    G = np.eye(3, dtype=np.float32)
    sampler = ConeSampler(max_rays=2).fit(G)
    G[0, 0] = 100.0
    assert sampler.generators_[0, 0] == 1.0
    assert sampler.sample(4).dtype == np.float32
    assert sampler.sample(0).shape == (0, 3)


def test_sampler_torch_batches():
    G = np.random.default_rng(4).uniform(size=(8, 3))
    sampler = ConeSampler(random_state=0, alpha_range=(1.0, 2.0)).fit(G)
    batch = sampler.sample_torch(64)
    assert isinstance(batch, torch.Tensor)
    assert batch.shape == (64, 3) and batch.dtype == torch.float64
    assert cone_nnls(batch.numpy(), G)[1].max() < 1e-10
    again = ConeSampler(random_state=0, alpha_range=(1.0, 2.0)).fit(G)
    torch.testing.assert_close(again.sample_torch(64), batch, rtol=0, atol=0)
    g = torch.Generator().manual_seed(5)
    h = torch.Generator().manual_seed(5)
    torch.testing.assert_close(
        sampler.sample_torch(4, generator=g), again.sample_torch(4, generator=h)
    )


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"alpha_range": (1.0, 1.0)}, r"alpha_range must satisfy 0 < alpha_min"),
        ({"alpha_range": (2.0, 1.0)}, r"alpha_range must satisfy.*alpha_max=1\.0"),
        ({"alpha_range": (0.0, 1.0)}, r"alpha_range must satisfy"),
        ({"alpha_range": (-0.5, 1.0)}, r"alpha_range must satisfy"),
        ({"alpha_range": (0.5, 1.0, 2.0)}, r"alpha_range must be a pair"),
        ({"alpha_range": 3.0}, r"'alpha_range' parameter of ConeSampler"),
        ({"max_rays": 0}, r"'max_rays' parameter of ConeSampler"),
        ({"max_rays": 4}, r"max_rays=4 must not exceed the number of generators"),
        ({"random_state": "seed"}, r"'random_state' parameter of ConeSampler"),
    ],
)
def test_sampler_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        ConeSampler(**params).fit(np.eye(3))


def test_sampler_bad_inputs():
    with pytest.raises(NotFittedError):
        ConeSampler().sample(3)
    with pytest.raises(NotFittedError):
        ConeSampler().sample_torch(3)
    sampler = ConeSampler().fit(np.eye(3))
    with pytest.raises(ValueError, match="n_samples must be a non-negative int"):
        sampler.sample(-2)
    with pytest.raises(ValueError, match="X contains NaN"):
        ConeSampler().fit(np.array([[1.0, np.nan]]))


def test_sampler_torch_refuses_a_device_it_cannot_use():
    """An unknown device name raised torch's RuntimeError, and CUDA where
    there is none an AssertionError ('Torch not compiled with CUDA
    enabled'), after the sampler's stream had moved on."""
    sampler = ConeSampler(random_state=0).fit(np.eye(3))
    with pytest.raises(ValueError, match="device must be a torch device.*'gpu'"):
        sampler.sample_torch(2, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            sampler.sample_torch(2, device="cuda")
    # the refused calls drew nothing from the stream
    fresh = ConeSampler(random_state=0).fit(np.eye(3))
    torch.testing.assert_close(sampler.sample_torch(4, device="cpu"),
                               fresh.sample_torch(4), rtol=0, atol=0)


@pytest.mark.parametrize("n_samples", [-1, 2.5, "3"])
def test_sampler_torch_refused_n_samples_leaves_the_stream(n_samples):
    """sample_torch drew its torch seed from the sampler's stream before
    sample_cone_torch refused n_samples, so the refused call moved the
    stream on (sample, the numpy twin, checks first)."""
    sampler = ConeSampler(random_state=0).fit(np.eye(3))
    with pytest.raises(ValueError, match="n_samples must be a non-negative int"):
        sampler.sample_torch(n_samples)
    fresh = ConeSampler(random_state=0).fit(np.eye(3))
    torch.testing.assert_close(sampler.sample_torch(4), fresh.sample_torch(4),
                               rtol=0, atol=0)


# --- clone and persistence ----------------------------------------------------


@pytest.mark.parametrize(
    "estimator",
    [ConeSimplifier(n_rays=6, solver="SCS"), ConeSampler(3, random_state=1)],
)
def test_clone_before_and_after_fit(estimator, gammas):
    cloned = clone(estimator)
    assert cloned.get_params() == estimator.get_params()
    estimator = clone(estimator).fit(gammas)
    refit = clone(estimator)
    assert not hasattr(refit, "n_features_in_")
    assert refit.get_params() == estimator.get_params()


def test_joblib_round_trip_simplifier(gammas, tmp_path):
    est = ConeSimplifier(n_rays=6).fit(gammas)
    joblib.dump(est, tmp_path / "simplifier.joblib")
    loaded = joblib.load(tmp_path / "simplifier.joblib")
    np.testing.assert_array_equal(loaded.rays_, est.rays_)
    np.testing.assert_array_equal(
        loaded.transform(gammas[:10]), est.transform(gammas[:10])
    )


def test_joblib_round_trip_sampler(gammas, tmp_path):
    sampler = ConeSampler(random_state=0).fit(gammas[:20])
    sampler.sample(7)
    joblib.dump(sampler, tmp_path / "sampler.joblib")
    loaded = joblib.load(tmp_path / "sampler.joblib")
    # The stream state travels with the estimator.
    np.testing.assert_array_equal(loaded.sample(11), sampler.sample(11))


def test_project_takes_estimates_recording_a_graph():
    """check_array called numpy() on a tensor that requires grad."""
    sampler = ConeSampler(alpha_range=(0.5, 1.5)).fit(np.eye(3))
    X = np.array([[1.0, 2.0, 0.5]])
    np.testing.assert_allclose(sampler.project(torch.tensor(X, requires_grad=True)),
                               sampler.project(X))
