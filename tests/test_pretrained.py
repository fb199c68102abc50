"""Saving and loading trained regressors without pickle; the default setting."""

import json

import numpy as np
import pytest
import torch

from deepblur.datasets.simulate import make_blurred_images
from deepblur.estimators.regressor import ResNetBlurRegressor
from deepblur.pretrained._default import make_default_setting, relative_errors
from deepblur.pretrained._io import PretrainedModel, load_model, save_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def small_setting():
    return make_default_setting(n_operators=12, image_shape=(16, 16),
                                kernel_shape=(5, 5), grid_shape=(4, 4),
                                n_components=4, n_rays=6)


def test_default_setting_is_seeded(small_setting):
    again = make_default_setting(n_operators=12, image_shape=(16, 16),
                                 kernel_shape=(5, 5), grid_shape=(4, 4),
                                 n_components=4, n_rays=6)
    np.testing.assert_array_equal(again["cone"].rays_, small_setting["cone"].rays_)
    np.testing.assert_allclose(again["basis"].gram_, small_setting["basis"].gram_)
    assert small_setting["sampler"].generators_.shape == (6, 4)
    with pytest.raises(ValueError, match="overrides"):
        make_default_setting(n_layers=3)


def test_relative_errors_against_definitions(rng):
    G = np.diag([1.0, 4.0])
    g = np.array([[1.0, 1.0]])
    err = relative_errors(g, 2 * g, G)
    assert err["operator"][0] == pytest.approx(1.0)
    assert err["direction"][0] == pytest.approx(0.0, abs=1e-7)
    assert err["scale"][0] == pytest.approx(1.0)
    p = np.array([[1.0, 0.0]])          # ||H[g]||^2 = 5, <g, p>_G = 1
    err = relative_errors(g, p, G)
    assert err["operator"][0] == pytest.approx(np.sqrt(4 / 5))
    assert err["direction"][0] == pytest.approx(np.sqrt((5 - 1) / 5))
    assert err["scale"][0] == pytest.approx(abs(np.sqrt(1 / 5) - 1))


def test_save_load_round_trip_without_pickle(small_setting, tmp_path):
    basis, sampler = small_setting["basis"], small_setting["sampler"]
    pool = np.random.default_rng(0).random((10, 16, 16))
    X, y = make_blurred_images(pool, basis, sampler, 32, random_state=0)
    net = ResNetBlurRegressor(basis=basis, module__width=4, module__depth=1,
                              module__stem_stride=2, max_epochs=1, device="cpu",
                              verbose=0).fit(X, y)
    save_model(tmp_path, net, small_setting, extra={"note": "test"})
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["module"]["width"] == 4 and meta["note"] == "test"
    with open(tmp_path / "model.safetensors", "rb") as f:
        assert b"\x80\x04" not in f.read(16)          # not a pickle stream
    model = load_model(tmp_path)
    assert isinstance(model, PretrainedModel)
    assert model.noise_std == small_setting["params"]["noise_std"]
    np.testing.assert_allclose(model.regressor.predict(X), net.predict(X),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(model.basis.gram_, basis.gram_, rtol=1e-6)
    np.testing.assert_allclose(model.cone.rays_, small_setting["cone"].rays_)
    np.testing.assert_allclose(model.sampler.generators_, sampler.generators_)
    assert model.regressor.device == "cpu"


def test_load_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)
