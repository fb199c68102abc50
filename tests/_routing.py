"""Checks of ``score(..., sample_weight=...)`` alone, in a ``Pipeline`` and in
``GridSearchCV``, with scikit-learn's metadata routing on and off, shared by
the estimators' tests.

Importable from any test module because setup.cfg puts ``tests`` on pytest's
``pythonpath``.
"""

import re

import numpy as np
import pytest
import sklearn
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer


def _rows(a, index):
    return None if a is None else a[index]


def check_weighted_score(estimator, X, y, sample_weight, per_sample, grid=None):
    """``score`` of ``estimator`` (unfitted) is the weighted mean of the
    per-sample scores that ``per_sample(fitted, X, y)`` computes by hand, alone
    and as the last step of a ``Pipeline``, with metadata routing off and on
    (requested by ``set_score_request``); unweighted, the plain mean. With
    ``grid``, every split score of a routed ``GridSearchCV`` is the weighted
    score of the fold's test samples by a fit on its training samples."""
    for routing in (False, True):
        with sklearn.config_context(enable_metadata_routing=routing):
            step = clone(estimator)
            if routing:
                step = step.set_score_request(sample_weight=True)
            pipe = make_pipeline(FunctionTransformer(), step).fit(X, y)
            scores = np.asarray(per_sample(pipe[-1], X, y), dtype=np.float64)
            assert scores.shape == (len(X),)
            expected = np.sum(sample_weight * scores) / np.sum(sample_weight)
            assert not np.isclose(expected, scores.mean(), rtol=1e-6, atol=0)
            assert pipe[-1].score(X, y, sample_weight=sample_weight) == \
                pytest.approx(expected, rel=1e-6)
            assert pipe.score(X, y, sample_weight=sample_weight) == \
                pytest.approx(expected, rel=1e-6)
            assert pipe.score(X, y) == pytest.approx(scores.mean(), rel=1e-6)
    if grid is None:
        return
    cv = KFold(2)
    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(
            clone(estimator).set_score_request(sample_weight=True), grid, cv=cv,
            refit=False, error_score="raise").fit(X, y, sample_weight=sample_weight)
        for i, params in enumerate(search.cv_results_["params"]):
            for k, (train, test) in enumerate(cv.split(X)):
                by_hand = clone(estimator).set_params(**params).fit(
                    X[train], _rows(y, train)).score(
                    X[test], _rows(y, test), sample_weight=sample_weight[test])
                assert search.cv_results_[f"split{k}_test_score"][i] == \
                    pytest.approx(by_hand, rel=1e-6)


def check_bad_weights_refused(fitted, X, y):
    """A ``sample_weight`` of the wrong length, or with a negative, NaN or
    infinite entry, or all zero, is a ValueError that names ``sample_weight``
    and the number of samples."""
    n = len(X)
    negative, nan, inf = np.ones(n), np.ones(n), np.ones(n)
    negative[0], nan[-1], inf[0] = -1.0, np.nan, np.inf
    for bad, match in ((np.ones(n + 1), rf"sample_weight.shape == \({n + 1},\)"),
                       (np.ones((n, 1)), "sample_weight"),
                       (negative, "Negative values .*sample_weight"),
                       (nan, "sample_weight contains NaN"),
                       (inf, "sample_weight contains infinity"),
                       (np.zeros(n), "at least one non-zero")):
        with pytest.raises(ValueError, match=match) as info:
            fitted.score(X, y, sample_weight=bad)
        assert re.match(rf"sample_weight must hold one real, finite, "
                        rf"non-negative weight per sample \({n}\)",
                        str(info.value))
