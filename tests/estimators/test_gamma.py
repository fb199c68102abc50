"""What the gamma estimators share: the distance of estimates to the sampler's
support, and the warning about estimates far from it."""

import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deepblur.estimators._gamma import (
    check_score_targets,
    check_support_params,
    check_support_tolerance,
    checked_estimates,
    estimates_score,
    gathered_support_message,
    operator_error_score,
    out_of_support_message,
    settled_check_pays,
    support_distances,
    support_distances_gathered,
    support_distances_settled,
)
from deepblur.estimators.cone import ConeSampler
from deepblur.exceptions import OutOfSupportWarning

K = 3
SAMPLER = ConeSampler(alpha_range=(0.8, 1.2), random_state=0).fit(np.eye(K))


def test_distance_closed_form_on_the_simplex_slab():
    """Generators e_1..e_K, Euclidean metric: the support is {w >= 0,
    0.8 <= sum(w) <= 1.2}. c/K * (1, ..., 1) for c > 1.2 projects on
    1.2/K * (1, ..., 1) (symmetry), at relative distance c / 1.2 - 1; a point
    with a negative coordinate projects by dropping it (when the rest is in
    the slab)."""
    gram = np.eye(K)
    g = np.array([[2.4 / K] * K, [0.5, 0.5, -0.3], [0.3, 0.3, 0.4]])
    proj, dist = support_distances(SAMPLER, g, gram)
    np.testing.assert_allclose(proj[0], [1.2 / K] * K, atol=1e-9)
    np.testing.assert_allclose(dist[0], 2.4 / 1.2 - 1, rtol=1e-9)
    np.testing.assert_allclose(proj[1], [0.5, 0.5, 0.0], atol=1e-9)
    np.testing.assert_allclose(dist[1], 0.3 / np.sqrt(0.5), rtol=1e-9)
    np.testing.assert_allclose(proj[2], g[2], atol=1e-12)
    assert dist[2] == pytest.approx(0.0, abs=1e-9)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-2, 2), min_size=K, max_size=K),
       st.lists(st.floats(0.1, 3), min_size=K, max_size=K))
def test_distance_is_the_relative_operator_distance_to_the_projection(g, diag):
    """In any metric G: sqrt((g-p)^T G (g-p) / p^T G p), p the projection, and
    0 exactly for points of the support."""
    rng = np.random.default_rng(0)
    A = rng.normal(size=(K, K))
    gram = A @ A.T + np.diag(diag)
    g = np.array([g])
    proj, dist = support_distances(SAMPLER, g, gram)
    np.testing.assert_allclose(proj, SAMPLER.project(g, gram=gram))
    d = g[0] - proj[0]
    assert dist[0] == pytest.approx(np.sqrt(d @ gram @ d / (proj[0] @ gram @ proj[0])),
                                    rel=1e-9, abs=1e-12)
    # the projection is the nearest point of the set: no sample is nearer
    others = SAMPLER.sample(200)
    diffs = g[0] - others
    assert d @ gram @ d <= np.einsum("ij,jk,ik->i", diffs, gram, diffs).min() + 1e-9
    inside = SAMPLER.sample(5)
    assert support_distances(SAMPLER, inside, gram)[1] == pytest.approx(
        np.zeros(5), abs=1e-6)


def test_checked_estimates_project_warn_or_pass():
    gram = np.eye(K)
    g = np.array([[2.4 / K] * K, [0.3, 0.3, 0.4]], dtype=np.float32)
    # no sampler, or neither projection nor check: untouched
    assert checked_estimates(g, None, gram, project=True,
                             support_tolerance=None) is g
    assert checked_estimates(g, SAMPLER, gram, project=False,
                             support_tolerance=None) is g
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        projected = checked_estimates(g, SAMPLER, gram, project=True,
                                      support_tolerance=None)
        assert projected.dtype == np.float32
        np.testing.assert_allclose(projected[0], [0.4] * K, rtol=1e-6)
        # a tolerance above the far point's distance (1.0): silent
        checked_estimates(g, SAMPLER, gram, project=False, support_tolerance=1.5)
    with pytest.warns(OutOfSupportWarning, match="1 of 2 images") as record:
        out = checked_estimates(g, SAMPLER, gram, project=False,
                                support_tolerance=0.5)
    assert "median 1" in str(record[0].message)
    assert out is g                     # the check does not project
    # gathered instead of warned (tiles)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with support_distances_gathered() as gathered:
            checked_estimates(g, SAMPLER, gram, project=False,
                              support_tolerance=0.5)
            checked_estimates(g[1:], SAMPLER, gram, project=False,
                              support_tolerance=0.5)
    assert [(len(d), t) for d, t in gathered] == [(2, 0.5), (1, 0.5)]
    np.testing.assert_allclose(np.concatenate([d for d, _ in gathered]),
                               [1.0, 0.0, 0.0], atol=1e-6)
    assert gathered_support_message(gathered).startswith("1 of 3 tiles")


def test_score_in_threads_leaves_the_warning_filters_alone():
    """score silenced the support check with warnings.catch_warnings, whose
    process-wide filters concurrent calls (a threaded search) restored over
    each other's: 'ignore OutOfSupportWarning' stayed in the process and no
    later predict warned about estimates off the support."""
    from concurrent.futures import ThreadPoolExecutor

    from deepblur.estimators._gamma import estimates_score

    gram = np.eye(K)
    g = np.array([[2.4 / K] * K, [0.3, 0.3, 0.4]])

    class Checked:          # a predict that warns about the first estimate
        def predict(self, X):
            return checked_estimates(g, SAMPLER, gram, project=False,
                                     support_tolerance=0.5)

    X = np.zeros((2, 4, 4))
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(4) as pool:
            scores = list(pool.map(lambda _: estimates_score(Checked(), gram, X, g),
                                   range(200)))
    assert scores == [0.0] * 200 and caught == []
    assert warnings.filters == before
    with pytest.warns(OutOfSupportWarning, match="1 of 2 images"):
        Checked().predict(X)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), tolerance=st.floats(0.01, 0.5))
def test_settled_distances_decide_as_the_exact_ones(seed, tolerance):
    """The check's cheaper distances: exact above the tolerance, at most it
    where the exact one is; so the same estimates are flagged."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(K, K))
    gram = A @ A.T + 0.5 * np.eye(K)
    g = (SAMPLER.sample(40) * rng.uniform(0.5, 1.5, size=(40, 1))
         + rng.uniform(0, 0.3) * rng.normal(size=(40, K)))
    exact = support_distances(SAMPLER, g, gram)[1]
    settled = support_distances_settled(SAMPLER, g, gram, tolerance)
    far = exact > tolerance
    np.testing.assert_array_equal(settled > tolerance, far)
    np.testing.assert_allclose(settled[far], exact[far], rtol=1e-12)
    assert (settled[~far] >= exact[~far] - 1e-9).all()
    assert (settled[~far] <= tolerance).all()
    # and the warning counts and median as the exact distances do
    assert (out_of_support_message(settled, tolerance)
            == out_of_support_message(exact, tolerance))


def test_predict_checks_with_bounds_only_on_a_gpu_and_large_batches(
        monkeypatch):
    """On the CPU the exact projections are cheap (0.06 ms apiece) and the
    bounds' fixed cost is not: only CUDA batches of SETTLED_MIN_ROWS or more
    take the settled check (same flags, tested above)."""
    from deepblur.estimators import _gamma

    assert not settled_check_pays(None, 10**6)
    assert not settled_check_pays("cpu", 10**6)
    assert not settled_check_pays("cuda", _gamma.SETTLED_MIN_ROWS - 1)
    assert settled_check_pays("cuda", _gamma.SETTLED_MIN_ROWS)
    assert settled_check_pays("cuda:1", 10**6)
    assert not settled_check_pays("no such device", 10**6)
    calls = []
    monkeypatch.setattr(_gamma, "support_distances_settled",
                        lambda *a: calls.append(a) or np.zeros(len(a[1])))
    monkeypatch.setattr(_gamma, "SETTLED_MIN_ROWS", 2)
    g = np.array([[2.4 / K] * K, [0.3, 0.3, 0.4]])
    with pytest.warns(OutOfSupportWarning):
        checked_estimates(g, SAMPLER, np.eye(K), project=False,
                          support_tolerance=0.5, device="cpu")
    assert not calls
    checked_estimates(g, SAMPLER, np.eye(K), project=False,
                      support_tolerance=0.5, device="cuda")
    assert len(calls) == 1 and calls[0][3:] == (0.5, "cuda")


def test_out_of_support_message():
    assert out_of_support_message([0.01, 0.05], 0.06) is None
    message = out_of_support_message([0.01, 0.1, 0.3], 0.06, "tiles")
    assert message.startswith("2 of 3 tiles have estimates farther than "
                              "support_tolerance=0.06")
    assert "median 0.2" in message and "estimator='points'" in message
    # gathered from calls with their own tolerances (regressors of a wrapper)
    assert gathered_support_message([]) is None
    assert gathered_support_message([(np.array([0.05]), 0.06)]) is None
    message = gathered_support_message([(np.array([0.05, 0.2]), 0.06),
                                        (np.array([0.05, 0.07]), 0.04)])
    assert message.startswith("3 of 4 tiles have estimates farther than "
                              "support_tolerance=0.04-0.06")
    assert "median 0.07" in message


@pytest.mark.parametrize("tolerance", [0.0, -0.1, np.nan, np.inf, True, "0.1",
                                       np.bool_(True), 10**400, -Fraction(1, 10)])
def test_bad_support_tolerance(tolerance):
    with pytest.raises(ValueError, match="support_tolerance must be a positive"):
        check_support_params(True, tolerance, SAMPLER)


@pytest.mark.parametrize("tolerance", [0.1, 1, np.float32(0.1), np.float64(0.1),
                                       np.int64(1), Fraction(1, 10)])
def test_support_tolerance_takes_any_positive_real(tolerance):
    check_support_params(True, tolerance, SAMPLER)
    assert check_support_tolerance(tolerance) == float(tolerance)
    assert type(check_support_tolerance(tolerance)) is float
    assert check_support_tolerance(None) is None


def test_support_tolerance_needs_a_sampler_and_project_a_bool():
    with pytest.raises(ValueError, match="support_tolerance needs a sampler"):
        check_support_params(True, 0.1, None)
    with pytest.raises(TypeError, match="project must be True or False"):
        check_support_params("yes", None, SAMPLER)
    check_support_params(False, 0.1, SAMPLER)
    check_support_params(True, None, None)


def test_check_score_targets():
    """One gamma per image (no broadcasting of a single row), finite; the
    sample_weight of the images' length, finite and non-negative."""
    X, y = np.zeros((4, 8, 8)), np.ones((4, K))
    got_y, got_w = check_score_targets(X, y.tolist(), K, [1, 2, 3, 4])
    assert got_y.dtype == got_w.dtype == np.float64
    np.testing.assert_array_equal(got_w, [1, 2, 3, 4])
    assert check_score_targets(X, y, K)[1] is None
    with pytest.raises(ValueError, match="got 4 images and 1 gamma"):
        check_score_targets(X, y[:1], K)
    with pytest.raises(ValueError, match="y must be finite"):
        check_score_targets(X, np.full((4, K), np.nan), K)
    for bad, match in ((np.ones(5), r"sample_weight.shape == \(5,\)"),
                       ([1, np.inf, 1, 1], "sample_weight contains infinity"),
                       ([1, -1, 1, 1], "Negative values .*sample_weight"),
                       (np.zeros(4), "at least one non-zero")):
        with pytest.raises(ValueError, match=match):
            check_score_targets(X, y, K, bad)


def test_operator_error_score_refuses_zero_true_operators():
    """A row of zeros in y (a zero operator) scored -inf, NaN with a zero
    weight or a perfect estimate, without a word: in a search every
    candidate got the same -inf on that fold, and the first one won."""
    gram = np.array([[2.0, 0.5], [0.5, 1.0]])
    y = np.array([[1.0, 0.5], [0.0, 0.0], [0.5, 1.0], [0.0, 0.0]])
    pred = y + 0.1
    for weights in (None, np.array([1.0, 0.0, 1.0, 0.0])):
        with pytest.raises(ValueError, match=r"zero operator .* row 1 and 1 more"):
            operator_error_score(gram, y, pred, weights)
    # the other rows score as before: minus the mean relative operator error
    keep = [0, 2]
    d = pred[keep] - y[keep]
    expected = -np.mean(np.sqrt(np.einsum("nk,kl,nl->n", d, gram, d)
                                / np.einsum("nk,kl,nl->n", y[keep], gram, y[keep])))
    assert operator_error_score(gram, y[keep], pred[keep]) == pytest.approx(expected)


def test_zero_true_operators_are_refused_before_the_estimates():
    """The score of a gamma estimator refused a zero operator in y only after
    predicting every image (a point-source fit each, minutes for a set)."""
    class Unpredictable:
        def predict(self, X):
            raise AssertionError("predict called before y was checked")

    gram = np.array([[2.0, 0.5], [0.5, 1.0]])
    y = np.array([[1.0, 0.5], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"zero operator .* row 1\)"):
        estimates_score(Unpredictable(), gram, np.zeros((2, 4, 4)), y)


def test_noise_check_on_images_recording_a_graph_warns_only_about_noise():
    """The images' means were taken without detach: torch's 'Converting a
    tensor with requires_grad=True to a scalar' warning leaked to the user."""
    import torch

    from deepblur.estimators._gamma import warn_if_noisy
    from deepblur.exceptions import NoisyImageWarning

    X = torch.rand(4, 32, 32, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_noisy(X, noise_level=1e-6)
    assert [type(w.message) for w in caught] == [NoisyImageWarning]
