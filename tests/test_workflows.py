"""The workflows of docs/user_guide/workflows.rst, as written there (small sizes).

1. operator model: PSF fields -> ProductConvolutionBasis -> ConeSimplifier in
   a Pipeline, GridSearchCV over K and n_rays on held-out operators;
2. training: clean images + fitted basis + ConeSampler -> ResNetBlurRegressor;
3. blind deblurring: blurry images -> estimated gamma -> TVDeblurrer;
4. the joint search over lambda and K (tests/estimators/test_blind.py).
Every fitted estimator and Pipeline round-trips through joblib.
"""

import joblib
import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline

from deepblur import (
    ConeSampler,
    ConeSimplifier,
    ProductConvolutionBasis,
    ResNetBlurRegressor,
    TVDeblurrer,
)
from deepblur.datasets import (
    BlurDataset,
    make_deblurring_pairs,
    make_random_operators,
)
from deepblur.metrics import psf_field_scorer, psnr

SHAPE = (32, 32)


@pytest.fixture(scope="module")
def operators():
    return make_random_operators(40, image_shape=SHAPE, kernel_shape=(9, 9),
                                 grid_shape=(4, 4), random_state=0)


@pytest.fixture(scope="module")
def operator_model(operators):
    pipe = Pipeline([("basis", ProductConvolutionBasis(4, image_shape=SHAPE,
                                                       random_state=0)),
                     ("cone", ConeSimplifier(n_rays=8))])
    return pipe.fit(operators.psf_fields)


def test_operator_model_pipeline_grid_search(operators):
    fields = operators.psf_fields
    pipe = Pipeline([("basis", ProductConvolutionBasis(image_shape=SHAPE,
                                                       random_state=0)),
                     ("cone", ConeSimplifier())])
    grid = {"basis__n_components": [2, 4, 8], "cone__n_rays": [3, 10]}
    search = GridSearchCV(pipe, grid, scoring=psf_field_scorer,
                          cv=KFold(3)).fit(fields)
    # the score is the held-out relative error through basis then cone
    fold_train, fold_test = next(iter(search.cv.split(fields)))
    params = search.cv_results_["params"][5]
    model = pipe.set_params(**params).fit(fields[fold_train])
    T = fields[fold_test]
    gamma = model["basis"].transform(T)
    projected = model["cone"].inverse_transform(model["cone"].transform(gamma))
    T_hat = model["basis"].inverse_transform(projected)
    expected = -np.mean(np.linalg.norm((T - T_hat).reshape(len(T), -1), axis=1)
                        / np.linalg.norm(T.reshape(len(T), -1), axis=1))
    assert search.cv_results_["split0_test_score"][5] == pytest.approx(expected)
    # Algorithm 1 is greedy: 10 rays contain the first 3, so a larger cone
    # is never farther from a held-out operator
    scores = dict(zip(map(lambda p: tuple(p.values()), search.cv_results_["params"]),
                      search.cv_results_["mean_test_score"], strict=True))
    for K in grid["basis__n_components"]:
        assert scores[(K, 10)] >= scores[(K, 3)] - 1e-12
    best = max(scores, key=scores.get)
    assert search.best_params_ == dict(zip(grid, best, strict=True))


def test_pipeline_joblib_round_trip(operator_model, operators, tmp_path):
    joblib.dump(operator_model, tmp_path / "pipe.joblib")
    again = joblib.load(tmp_path / "pipe.joblib")
    fields = operators.psf_fields[:5]
    np.testing.assert_array_equal(again.transform(fields),
                                  operator_model.transform(fields))
    np.testing.assert_array_equal(
        again.inverse_transform(again.transform(fields)),
        operator_model.inverse_transform(operator_model.transform(fields)))


@pytest.fixture(scope="module")
def trained(operator_model):
    """Workflow 2: clean images + fitted basis + sampler -> regressor."""
    basis, cone = operator_model["basis"], operator_model["cone"]
    sampler = ConeSampler(alpha_range=(0.8, 1.2), random_state=0).fit(cone.rays_)
    rng = np.random.default_rng(0)
    clean = rng.random((40, 48, 48)).cumsum(axis=2) / 48 + 0.05
    data = BlurDataset(list(clean), basis, sampler, batch_size=16, n_batches=4,
                       noise_std=0.01, random_state=0)
    net = ResNetBlurRegressor(basis=basis, module__width=4, max_epochs=2,
                              device="cpu", verbose=0)
    return net.fit(data, None), sampler


def test_training_composition(trained, operator_model):
    net, sampler = trained
    assert len(net.history) == 2
    gamma = sampler.sample(3)
    from deepblur.datasets import blur_images

    y = blur_images(np.full((3,) + SHAPE, 0.5), gamma,
                    operator_model["basis"], random_state=0)
    assert net.predict(y).shape == (3, 4)


def test_blind_deblurring_composition(trained, operator_model, operators,
                                      tmp_path):
    net, _ = trained
    rng = np.random.default_rng(1)
    blurry, clean = make_deblurring_pairs(rng.random((4, 32, 32)) + 0.2,
                                          operators, 3, random_state=0)
    deblurrer = TVDeblurrer(operator_model["basis"], blur_estimator=net, lam=100.0,
                            tol=1e-3, device="cpu").fit(blurry)
    U = deblurrer.transform(blurry)
    np.testing.assert_allclose(
        U, deblurrer.transform(blurry, gamma=net.predict(blurry)), rtol=1e-6)
    assert deblurrer.score(blurry, clean) == pytest.approx(
        np.mean(psnr(clean, U)), rel=1e-6)
    joblib.dump(deblurrer, tmp_path / "d.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "d.joblib").transform(blurry),
                                  U)
