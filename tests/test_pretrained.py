"""Saving and loading trained regressors without pickle; the default setting."""

import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from deepblur.datasets.simulate import make_blurred_images
from deepblur.estimators.regressor import ResNetBlurRegressor, plain_module
from deepblur.exceptions import OutOfSupportWarning
from deepblur.nets.resnet import ResNet
from deepblur.pretrained._default import (
    compare_estimators,
    make_default_setting,
    relative_errors,
)
from deepblur.pretrained._io import (
    PretrainedModel,
    has_crop_network,
    load_model,
    save_crop_network,
    save_model,
    save_spectral,
)
from deepblur.pretrained._train import (
    add_feature_head,
    train_crop_network,
    train_regressor,
    train_spectral_regressor,
)


@pytest.fixture(scope="module")
def small_setting():
    return make_default_setting(n_operators=12, image_shape=(16, 16),
                                kernel_shape=(5, 5), grid_shape=(4, 4),
                                n_components=4, n_rays=6)


@pytest.mark.parametrize("bad, match", [
    (dict(noise_std=-0.1), "noise_std must be >= 0"),
    (dict(noise_std=(0.02, 0.01)), "low <= high"),
    (dict(image_mean=-1.0), "image_mean must be a positive float"),
    (dict(boundary="periodic"), "boundary must be one of"),
    (dict(alpha_range=(0.0, 1.0)), "0 < alpha_min < alpha_max"),
    (dict(alpha_range=1.0), "alpha_range must be a pair"),
    (dict(n_rays=True), "n_rays must be a positive int"),
    (dict(n_operators=0), "n_operators must be a positive int"),
    (dict(image_shape="big"), "image_shape"),
    (dict(symmetry="cyclic"), "symmetry must be one of"),
    (dict(depth=3), "overrides must be among"),
])
def test_default_setting_checks_its_entries_before_fitting(monkeypatch, bad,
                                                           match):
    """The noise, image mean, boundary and the cone's and sampler's entries
    were used (and refused) only after the fits, or by what trains later."""
    import deepblur.pretrained._default as default

    def no_fit(*args, **kwargs):
        raise AssertionError("fitted before the entries were checked")

    monkeypatch.setattr(default, "make_random_operators", no_fit)
    with pytest.raises(ValueError, match=match):
        make_default_setting(**bad)


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


def test_compare_estimators_scores_every_estimator_on_the_same_images(
        small_setting):
    basis, sampler = small_setting["basis"], small_setting["sampler"]
    scenes = list(np.random.default_rng(4).random((3, 24, 24)) + 0.1)
    mean_gamma = sampler.sample(1000).mean(0)

    class Constant:
        def __init__(self, gamma):
            self.gamma = np.asarray(gamma)

        def predict(self, X):
            return np.tile(self.gamma, (len(X), 1))

    half = Constant(0.5 * mean_gamma)
    errors, rates = compare_estimators({"half": half}, basis, sampler, scenes,
                                       40, noise_std=0.02, boundary="crop",
                                       mean_gamma=mean_gamma, random_state=7)
    X, y = make_blurred_images(scenes, basis, sampler, 40, noise_std=0.02,
                               boundary="crop", random_state=7)
    for name, gamma in (("half", 0.5 * mean_gamma), ("baseline", mean_gamma)):
        expected = relative_errors(y, np.tile(gamma, (40, 1)), basis.gram_)
        for key in ("operator", "direction", "scale"):
            assert errors[name][key] == pytest.approx(expected[key].mean())
    assert set(rates) == {"half"} and rates["half"] > 0
    assert errors["half"]["direction"] == pytest.approx(
        errors["baseline"]["direction"])          # a rescaling changes no direction


def _tiny_regressor(setting, n_images=32, **params):
    """A one-epoch regressor of the small setting, and its training images."""
    pool = np.random.default_rng(0).random((10, 16, 16))
    X, y = make_blurred_images(pool, setting["basis"], setting["sampler"],
                               n_images, random_state=0)
    net = ResNetBlurRegressor(basis=setting["basis"], module__width=4,
                              module__depth=1, module__stem_stride=2,
                              max_epochs=1, device="cpu", verbose=0, **params)
    return net.fit(X, y), X


def test_save_load_round_trip_without_pickle(small_setting, tmp_path):
    basis, sampler = small_setting["basis"], small_setting["sampler"]
    net, X = _tiny_regressor(small_setting)
    save_model(tmp_path, net, small_setting, extra={"note": "test"})
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["module"]["width"] == 4 and meta["note"] == "test"
    with open(tmp_path / "model.safetensors", "rb") as f:
        assert b"\x80\x04" not in f.read(16)          # not a pickle stream
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    model = load_model(tmp_path)
    assert torch.equal(torch.rand(3), expected)     # the caller's stream is left
    assert isinstance(model, PretrainedModel)
    assert model.noise_std == small_setting["params"]["noise_std"]
    # the sampler is kept for the support check only; no tolerance was saved
    assert model.regressor.sampler is model.sampler
    assert model.regressor.project is False
    assert model.regressor.support_tolerance is None
    np.testing.assert_allclose(model.regressor.predict(X), net.predict(X),
                               rtol=1e-5, atol=1e-7)
    # raw by default (above); project=True projects on the sampler's support
    projected = load_model(tmp_path, project=True).regressor.predict(X)
    np.testing.assert_allclose(
        projected, sampler.project(net.predict(X), gram=basis.gram_),
        rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.basis.gram_, basis.gram_, rtol=1e-6)
    np.testing.assert_allclose(model.cone.rays_, small_setting["cone"].rays_)
    np.testing.assert_allclose(model.sampler.generators_, sampler.generators_)
    assert model.regressor.device == "cpu"


def test_save_model_never_leaves_a_mixed_or_unloadable_directory(small_setting,
                                                                 tmp_path,
                                                                 monkeypatch):
    """A save that fails (metadata JSON cannot hold) writes nothing: the
    weights were written before the JSON failed, beside the old model.json.
    A network tuned over np.arange saves; networks the loader cannot rebuild,
    or trained in another basis, are refused before anything is written."""
    from sklearn.base import clone

    net, X = _tiny_regressor(small_setting)
    save_model(tmp_path, net, small_setting)
    before = load_model(tmp_path).regressor.predict(X)
    other = clone(net).set_params(module__width=np.int64(3),
                                  module__depth=np.int64(1)).fit(X, small_setting[
                                      "sampler"].sample(len(X)))
    with pytest.raises(TypeError, match="not JSON serializable"):
        save_model(tmp_path, other, small_setting, extra={"bad": object()})
    np.testing.assert_array_equal(load_model(tmp_path).regressor.predict(X), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json",
                                                          "model.safetensors"]
    # model.json held open (Windows): the old weights are put back
    from deepblur.pretrained import _io

    real_replace = _io.os.replace

    def replace(src, dst):
        if Path(dst).name == "model.json":
            raise PermissionError("model.json is open in another process")
        real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(_io.os, "replace", replace)
        with pytest.raises(PermissionError):
            save_model(tmp_path, other, small_setting)
    np.testing.assert_array_equal(load_model(tmp_path).regressor.predict(X), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json",
                                                          "model.safetensors"]
    save_model(tmp_path, other, small_setting)           # np.int64 parameters
    assert json.loads((tmp_path / "model.json").read_text())["module"]["width"] == 3
    np.testing.assert_allclose(load_model(tmp_path).regressor.predict(X),
                               other.predict(X), rtol=1e-5, atol=1e-7)
    for bad, match in (
            (clone(net), "never initialised"),
            (ResNetBlurRegressor(module=ResNet(4, width=4, depth=1),
                                 basis=small_setting["basis"], device="cpu",
                                 verbose=0).initialize(), "the class"),
            (_tiny_regressor(make_default_setting(
                n_operators=12, image_shape=(16, 16), kernel_shape=(5, 5),
                grid_shape=(4, 4), n_components=4, n_rays=6,
                random_state=7))[0], "the setting's basis")):
        with pytest.raises(ValueError, match=match):
            save_model(tmp_path / "refused", bad, small_setting)
    assert not (tmp_path / "refused").exists()


def test_train_regressor_does_not_depend_on_earlier_draws(small_setting):
    """The default output bias comes from a fresh stream of the sampler: the
    same seed gives the same network whatever the caller drew before, and
    the caller's stream does not move."""
    pool = np.random.default_rng(0).random((10, 16, 16)) + 0.1
    kw = dict(n_images=16, epochs=1, batch_size=8, width=4, depth=1,
              stem_stride=2, num_workers=0, device="cpu", verbose=0)
    sampler = small_setting["sampler"]
    a = train_regressor(small_setting, pool, **kw)
    sampler.sample(123)
    state = copy.deepcopy(sampler._rng.bit_generator.state)
    b = train_regressor(small_setting, pool, **kw)
    X = pool[:3].astype(np.float32)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    assert sampler._rng.bit_generator.state == state


def test_save_model_stores_the_layer_weights_in_half_precision(small_setting,
                                                              tmp_path):
    """weights_dtype="float16": the weights of the convolutions and dense
    layers in half precision (a smaller file), read back into the float32
    network; the basis, the cone, the biases and every buffer (batch-norm
    statistics, the blur-statistics branch's standardisation) exact. A weight
    that float16 cannot hold is a clear error, not a NaN network."""
    from safetensors.torch import load_file

    pool = np.random.default_rng(0).random((10, 16, 16)) + 0.1
    net = train_regressor(small_setting, pool, n_images=32, epochs=1, batch_size=8,
                          width=4, depth=1, stem_stride=2, num_workers=0,
                          device="cpu", verbose=0)
    net = add_feature_head(small_setting, pool, net, n_images=32, batch_size=16,
                           blur_features=dict(window=8, n_radial=2, n_angular=2,
                                              border=3, n_segments=2))
    X = pool[:4].astype(np.float32)
    full = save_model(tmp_path / "full", net, small_setting)
    with pytest.warns(UserWarning, match=r"extra holds \['weights_dtype'\]"):
        half = save_model(tmp_path / "half", net, small_setting,
                          weights_dtype="float16", extra={"weights_dtype": "stale"})
    a, b = (load_file(d / "model.safetensors") for d in (full, half))
    module = net.module_
    layers = {f"module.{name}.weight" for name, m in module.named_modules()
              if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    buffers = {f"module.{name}" for name, _ in module.named_buffers()}
    assert "module.feature_fc.weight" in layers and "module.feature_scale" in buffers
    assert all(b[k].dtype == torch.float16 for k in layers)
    assert all(torch.equal(a[k], b[k]) for k in a if k not in layers)
    assert ((half / "model.safetensors").stat().st_size
            < (full / "model.safetensors").stat().st_size)
    assert json.loads((half / "model.json").read_text())["weights_dtype"] == "float16"
    model = load_model(half)
    assert all(p.dtype == torch.float32 for p in model.regressor.module_.parameters())
    np.testing.assert_allclose(model.regressor.predict(X), net.predict(X),
                               rtol=1e-2, atol=1e-3)
    with pytest.raises(ValueError, match="weights_dtype must be one of"):
        save_model(tmp_path / "bad", net, small_setting, weights_dtype="bfloat16")
    # out of float16's range: refused, naming the tensor
    for factor in (1e9, 1e-9):
        tiny = copy.deepcopy(net)
        with torch.no_grad():
            tiny.module_.fc.weight.mul_(factor)
        with pytest.raises(ValueError, match="cannot store module.fc.weight"):
            save_model(tmp_path / "range", tiny, small_setting,
                       weights_dtype="float16")
        assert not (tmp_path / "range").exists()        # nothing written


def test_save_model_stores_the_large_convolutions_in_int8(small_setting, tmp_path,
                                                          monkeypatch):
    """weights_dtype="int8": the convolutions of at least _INT8_MIN_SIZE
    weights as int8 codes (``int8.module.<name>``) with a float32 scale per
    output channel (``scale.module.<name>``), the other layer weights as
    float16; read back into the float32 network as codes times scales,
    checked here against a dense re-quantisation. A loader that knows
    nothing of int8 (a strict load_state_dict of the ``module.*`` tensors,
    as before this storage) fails on the missing weights instead of loading
    codes; a code without its scale is a clear error. A tensor that int8
    cannot hold to 2 % (channels of one large weight and many small ones,
    which round to 0) is refused."""
    from safetensors.torch import load_file, save_file

    import deepblur.pretrained._io as io

    monkeypatch.setattr(io, "_INT8_MIN_SIZE", 100)   # the tiny net's 4x4x3x3
    net, X = _tiny_regressor(small_setting)
    saved = save_model(tmp_path / "int8", net, small_setting, weights_dtype="int8")
    stored = load_file(saved / "model.safetensors")
    layers = io._layer_weights(net, io._module_tensors(net))
    params = dict(net.module_.named_parameters())
    big = {k for k, conv in layers.items()
           if conv and params[k[len("module."):]].numel() >= 100}
    assert big and big != set(layers)
    for name in layers:
        weight = params[name[len("module."):]].detach()
        if name in big:
            assert name not in stored and stored["int8." + name].dtype == torch.int8
            codes, scale = stored["int8." + name], stored["scale." + name]
            assert scale.shape == (weight.shape[0],) and scale.dtype == torch.float32
            peak = weight.reshape(len(weight), -1).abs().amax(1)
            torch.testing.assert_close(scale, peak / 127)
            expected = torch.round(weight / scale[:, None, None, None])
            assert torch.equal(codes.to(torch.float32), expected)
            assert codes.abs().max() == 127
        else:
            assert stored[name].dtype == torch.float16
            assert "scale." + name not in stored and "int8." + name not in stored
    assert json.loads((saved / "model.json").read_text())["weights_dtype"] == "int8"
    model = load_model(saved)
    loaded = dict(model.regressor.module_.named_parameters())
    for name in big:
        decoded = stored["int8." + name].to(torch.float32) * stored[
            "scale." + name][:, None, None, None]
        assert torch.equal(loaded[name[len("module."):]].detach(), decoded)
    np.testing.assert_allclose(model.regressor.predict(X), net.predict(X),
                               rtol=0.05, atol=0.02)
    old_style = {k[len("module."):]: v for k, v in stored.items()
                 if k.startswith("module.")}
    with pytest.raises(RuntimeError, match="Missing key"):
        copy.deepcopy(net.module_).load_state_dict(old_style)
    name = sorted(big)[0]
    save_file({k: v for k, v in stored.items() if k != "scale." + name},
              str(saved / "model.safetensors"))
    with pytest.raises(ValueError, match="is not the file model.json was "
                       "written with"):
        load_model(saved)
    meta = json.loads((saved / "model.json").read_text())
    del meta["weights_sha256"]              # as files written before the digest
    (saved / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"damaged: int8.{name} needs"):
        load_model(saved)
    # a channel of one weight and many 250 times smaller: those round to 0
    spiky = copy.deepcopy(net)
    name = max(big, key=lambda k: params[k[len("module."):]][0].numel())
    name = name[len("module."):]
    with torch.no_grad():
        weight = dict(spiky.module_.named_parameters())[name]
        assert weight[0].numel() >= 64           # a loss of >= 2.8 %
        weight.copy_(0.0035 * torch.sign(torch.randn_like(weight)))
        weight[:, 0, 0, 0] = 1.0
    with pytest.raises(ValueError, match=rf"cannot store module.{name} \(.*\) as int8"):
        save_model(tmp_path / "spiky", spiky, small_setting, weights_dtype="int8")
    assert not (tmp_path / "spiky").exists()


def test_support_tolerance_saves_and_loads(small_setting, tmp_path):
    """A network's support_tolerance is stored in its JSON and comes back on
    load (with the model's sampler, raw unless project=True); a bad stored
    value is a clear error."""
    sampler = small_setting["sampler"]
    net, X = _tiny_regressor(small_setting, sampler=sampler, project=False,
                             support_tolerance=0.07)
    # the regressor's tolerance, not a stale one in extra
    with pytest.warns(UserWarning, match="the model's values are written"):
        save_model(tmp_path, net, small_setting, extra={"support_tolerance": 9.0})
    assert json.loads((tmp_path / "model.json").read_text())[
        "support_tolerance"] == 0.07
    model = load_model(tmp_path)
    assert model.regressor.support_tolerance == 0.07
    assert model.regressor.project is False
    np.testing.assert_allclose(model.regressor.support_distance(X),
                               net.support_distance(X), rtol=1e-4, atol=1e-6)
    assert load_model(tmp_path, project=True).regressor.support_tolerance == 0.07
    save_crop_network(tmp_path, net, noise_std=0.01)
    assert load_model(tmp_path, "crop_network").regressor.support_tolerance == 0.07
    for bad in (-1, 0, True, "0.1"):
        meta = json.loads((tmp_path / "model.json").read_text())
        meta["support_tolerance"] = bad
        (tmp_path / "model.json").write_text(json.dumps(meta))
        with pytest.raises(ValueError, match="model.json: support_tolerance must "
                                             "be a positive number or absent"):
            load_model(tmp_path)


def test_calibrate_support_tolerance_is_the_quantile_of_the_distances(
        small_setting):
    from deepblur.pretrained import calibrate_support_tolerance

    net, X = _tiny_regressor(small_setting, n_images=64,
                             sampler=small_setting["sampler"], project=False)
    dist = net.support_distance(X)
    assert dist.max() > 1e-3
    assert calibrate_support_tolerance(net, X) == pytest.approx(
        max(np.quantile(dist, 0.999), 1e-3))
    assert calibrate_support_tolerance(net, X, quantile=0.5) == pytest.approx(
        max(np.median(dist), 1e-3))
    assert calibrate_support_tolerance(net, X, quantile=1) == pytest.approx(
        dist.max())
    # with it, predict flags the images above the quantile, and only them
    q = calibrate_support_tolerance(net, X, quantile=0.75)
    net.set_params(support_tolerance=q)
    n_far = int(np.sum(dist > q))
    assert 0 < n_far <= 16
    with pytest.warns(OutOfSupportWarning, match=f"{n_far} of 64 images"):
        net.predict(X)
    for bad in (0, 1.5, True, "0.9"):
        with pytest.raises(ValueError, match=r"quantile must be in \(0, 1\]"):
            calibrate_support_tolerance(net, X, quantile=bad)
    with pytest.raises(ValueError, match="at least one image"):
        calibrate_support_tolerance(net, X[:0])
    with pytest.raises(ValueError, match="support_distance needs the regressor's"):
        calibrate_support_tolerance(net.set_params(sampler=None,
                                                   support_tolerance=None), X)


def test_support_calibration_images_draw_as_the_training_images(small_setting):
    """The setting's noise and boundary unless given; point sources in the
    pool at point_fraction; seeded."""
    from deepblur.pretrained import support_calibration_images

    pool = np.random.default_rng(0).random((40, 16, 16)) + 0.5
    X = support_calibration_images(small_setting, pool, 64, noise_std=0.0,
                                   random_state=3)
    assert X.shape == (64, 16, 16) and X.dtype == np.float32
    np.testing.assert_array_equal(
        X, support_calibration_images(small_setting, pool, 64, noise_std=0.0,
                                      random_state=3))
    # point sources: sparse images, most pixels far below the mean
    with_points = support_calibration_images(small_setting, pool, 256,
                                             noise_std=0.0, point_fraction=0.5,
                                             random_state=3)

    def sparse(images):
        return np.mean(np.median(images, axis=(1, 2))
                       < 0.2 * images.mean(axis=(1, 2)))

    assert sparse(X) == 0 and 0.2 < sparse(with_points) < 0.8
    noisy = support_calibration_images(small_setting, pool, 64, random_state=3)
    assert not np.allclose(noisy, X)            # the setting's noise by default


def test_a_network_trained_on_a_noise_range_saves_and_loads(small_setting,
                                                             tmp_path):
    """A setting whose noise_std is a (low, high) range (what BlurDataset and
    `deepblur train` accept) round-trips: noise_std comes back as the range."""
    params = dict(small_setting["params"], noise_std=(0.005, 0.02))
    setting = dict(small_setting, params=params)
    net = train_regressor(setting, np.random.default_rng(0).random((6, 16, 16)),
                          n_images=64, epochs=1, batch_size=32, width=4, depth=1,
                          stem_stride=2, pool_size=6, num_workers=0, device="cpu",
                          verbose=0)
    save_model(tmp_path, net, setting)
    model = load_model(tmp_path)
    assert model.noise_std == (0.005, 0.02)
    assert model.setting["noise_std"] == (0.005, 0.02)


@pytest.mark.parametrize("norm", ["laplacian", "hessian"])
def test_a_network_with_derivative_input_trains_saves_and_loads(small_setting,
                                                                tmp_path, norm):
    pool = np.random.default_rng(0).random((6, 16, 16)) + 0.1
    kw = dict(n_images=64, epochs=1, batch_size=32, width=4, depth=1,
              stem_stride=2, pool_size=6, num_workers=0, device="cpu", verbose=0)
    net = train_regressor(small_setting, pool, input_norm=norm, **kw)
    assert net.module_.input_norm == norm
    save_model(tmp_path, net, small_setting)
    assert json.loads((tmp_path / "model.json").read_text())["module"][
        "input_norm"] == norm
    model = load_model(tmp_path)
    X = pool[:3].astype(np.float32)
    np.testing.assert_allclose(model.regressor.predict(X), net.predict(X),
                               rtol=1e-5, atol=1e-7)
    # fine-tuning needs the same input: the stems differ
    with pytest.raises(ValueError, match="does not match.*input_norm"):
        train_regressor(small_setting, pool, init_model=tmp_path,
                        input_norm=None, **kw)
    other = "hessian" if norm == "laplacian" else "laplacian"
    with pytest.raises(ValueError, match="does not match.*input_norm"):
        train_regressor(small_setting, pool, init_model=tmp_path,
                        input_norm=other, **kw)
    tuned = train_regressor(small_setting, pool, init_model=tmp_path,
                            input_norm=norm, **kw)
    assert tuned.module_.input_norm == norm


def test_train_regressor_and_feature_head_take_their_own_noise(small_setting,
                                                                monkeypatch):
    """noise_std overrides the setting's noise in the simulated stream (to
    fine-tune on a noise range without editing the setting); a bad level is
    refused before any data are made."""
    import deepblur.pretrained._train as train_module

    made = []

    class Recording(train_module.BlurDataset):
        def __init__(self, *args, **kwargs):
            made.append(kwargs["noise_std"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(train_module, "BlurDataset", Recording)
    pool = np.random.default_rng(0).random((6, 16, 16))
    kw = dict(n_images=32, epochs=1, batch_size=16, width=4, depth=1,
              stem_stride=2, pool_size=6, num_workers=0, device="cpu", verbose=0)
    net = train_regressor(small_setting, pool, noise_std=(0.0, 0.02), **kw)
    assert net.training_noise_std_ == (0.0, 0.02)     # save_model's default
    plain = train_regressor(small_setting, pool, **kw)
    assert plain.training_noise_std_ == small_setting["params"]["noise_std"]
    head = add_feature_head(small_setting, pool, net, n_images=32, batch_size=16,
                            noise_std=0.03,
                            blur_features=dict(window=8, n_radial=2, n_angular=2,
                                               border=3, n_segments=2))
    assert made == [(0.0, 0.02), small_setting["params"]["noise_std"], 0.03]
    assert head.training_noise_std_ == (0.0, 0.03)    # the trunk's and the head's
    for bad, match in (((0.02, 0.01), "low <= high"), (-0.01, ">= 0"),
                       ("0.01", "float or a")):
        with pytest.raises(ValueError, match=f"noise_std must be .*{match}"):
            train_regressor(small_setting, pool, noise_std=bad, **kw)
        with pytest.raises(ValueError, match=f"noise_std must be .*{match}"):
            add_feature_head(small_setting, pool, net, noise_std=bad)
    assert len(made) == 3                       # refused before any data


def test_a_fine_tuning_noise_range_is_what_predict_checks_after_loading(
        small_setting, tmp_path):
    """train_regressor(noise_std=...) trains on another noise than the
    setting's: save_model keeps the network's noise_level_ and its training
    noise, and load_model gives them back (else the top of the setting's
    noise); a bad value in model.json is refused."""
    pool = np.random.default_rng(0).random((6, 16, 16))
    net = train_regressor(small_setting, pool, noise_std=(0.0, 0.05), n_images=32,
                          epochs=1, batch_size=16, width=4, depth=1,
                          stem_stride=2, pool_size=6, num_workers=0,
                          device="cpu", verbose=0)
    assert net.noise_level_ == 0.05
    save_model(tmp_path, net, small_setting)
    model = load_model(tmp_path)
    assert model.regressor.noise_level_ == 0.05
    assert model.noise_std == (0.0, 0.05)   # its training noise, by default
    assert model.setting["noise_std"] == small_setting["params"]["noise_std"]
    meta = json.loads((tmp_path / "model.json").read_text())
    del meta["noise_level"], meta["noise_std"]  # a model saved before the keys
    (tmp_path / "model.json").write_text(json.dumps(meta))
    assert load_model(tmp_path).regressor.noise_level_ == pytest.approx(
        np.max(small_setting["params"]["noise_std"]))
    for bad in (-0.1, "0.05", [0.0, 0.05], True):
        (tmp_path / "model.json").write_text(json.dumps(dict(meta, noise_level=bad)))
        with pytest.raises(ValueError, match="noise_level must be a non-negative"):
            load_model(tmp_path)


def test_save_model_records_the_noise_the_network_was_trained_on(small_setting,
                                                                 tmp_path):
    """save_model(noise_std=...) stores the training noise, which load_model
    returns as the model's noise_std (the setting keeps its own, the test
    noise); by default the regressor's training_noise_std_ (kept by a loaded
    model), else the setting's. A file saved without the key falls
    back to the setting's; a bad value is refused before anything is
    written."""
    net, _ = _tiny_regressor(small_setting)
    setting_noise = small_setting["params"]["noise_std"]
    with pytest.warns(UserWarning, match=r"extra holds \['noise_std'\]"):
        saved = save_model(tmp_path / "range", net, small_setting,
                           noise_std=(0.0, 0.05), extra={"noise_std": 9.0})
    meta = json.loads((saved / "model.json").read_text())
    assert meta["noise_std"] == [0.0, 0.05]     # not the stale one in extra
    model = load_model(saved)
    assert model.noise_std == (0.0, 0.05)
    assert model.setting["noise_std"] == setting_noise
    # written again without noise_std, a loaded model keeps its training noise
    again = load_model(save_model(tmp_path / "again", model.regressor,
                                  small_setting))
    assert again.noise_std == (0.0, 0.05)
    # predict's check keeps the level the regressor knows
    assert model.regressor.noise_level_ == pytest.approx(net.noise_level_)
    default = load_model(save_model(tmp_path / "default", net, small_setting))
    assert default.noise_std == setting_noise
    del meta["noise_level"]                     # else the top of the range
    (saved / "model.json").write_text(json.dumps(meta))
    assert load_model(saved).regressor.noise_level_ == 0.05
    del meta["noise_std"]                       # a model saved before the key
    (saved / "model.json").write_text(json.dumps(meta))
    assert load_model(saved).noise_std == setting_noise
    for bad, match in ((-0.1, ">= 0"), ((0.05, 0.0), "low <= high"),
                       ("0.01", "a float or a")):
        with pytest.raises(ValueError, match=f"noise_std must be .*{match}"):
            save_model(tmp_path / "bad", net, small_setting, noise_std=bad)
        assert not (tmp_path / "bad").exists()


def test_save_load_a_network_with_its_feature_head(small_setting, tmp_path):
    feats = dict(window=8, n_radial=2, n_angular=2, border=3, n_segments=2)
    net, X = _tiny_regressor(small_setting, module__blur_features=feats,
                             module__image_shape=(16, 16), train_split=None)
    pool = np.random.default_rng(1).random((10, 16, 16))
    Xf, yf = make_blurred_images(pool, small_setting["basis"],
                                 small_setting["sampler"], 64, random_state=1)
    net.fit_feature_head(Xf, yf)
    save_model(tmp_path, net, small_setting)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert meta["module"]["blur_features"] == feats
    assert meta["module"]["image_shape"] == [16, 16]
    model = load_model(tmp_path, project=False)
    assert model.regressor.module_.blur_features == feats
    np.testing.assert_allclose(model.regressor.predict(X), net.predict(X),
                               rtol=1e-5, atol=1e-6)


def test_add_feature_head_copies_the_trunk_and_fits_the_branch(small_setting):
    feats = dict(window=8, n_radial=2, n_angular=2, border=3, n_segments=2)
    net, X = _tiny_regressor(small_setting)
    pool = np.random.default_rng(2).random((10, 16, 16))
    before = net.predict(X)
    new = add_feature_head(small_setting, pool, net, n_images=96, batch_size=32,
                           blur_features=feats)
    assert new is not net and new.module_.blur_features == feats
    assert new.feature_head_n_images_ == 96
    assert getattr(net.module_, "feature_fc", None) is None     # left as it was
    np.testing.assert_array_equal(net.predict(X), before)
    trunk = {k: v for k, v in new.module_.state_dict().items()
             if not k.startswith("feature") and k not in ("fc.weight", "fc.bias")}
    for k, v in trunk.items():
        torch.testing.assert_close(v, net.module_.state_dict()[k])
    assert float(new.module_.feature_fc.weight.detach().abs().sum()) > 0
    with pytest.raises(ValueError, match="n_images must be a positive"):
        add_feature_head(small_setting, pool, net, n_images=0)
    with pytest.raises(ValueError, match="blur_features must be None or a dict"):
        add_feature_head(small_setting, pool, net, blur_features="window=8")
    untrained = ResNetBlurRegressor(basis=small_setting["basis"], device="cpu")
    with pytest.raises(NotFittedError, match="regressor must be a trained"):
        add_feature_head(small_setting, pool, untrained)


def test_add_feature_head_leaves_the_warnings_of_other_threads_alone(
        small_setting, monkeypatch):
    """add_feature_head silenced the copy's 'no bfloat16 units' warning with
    warnings.catch_warnings, whose filters are the process's: while it
    initialised the copy, the same warning of a regressor of another thread
    was dropped, and a filter that thread set meanwhile was undone. Here the
    copy's initialisation is held while this thread initialises its own."""
    import threading
    import warnings

    feats = dict(window=8, n_radial=2, n_angular=2, border=3, n_segments=2)
    net, _ = _tiny_regressor(small_setting, mixed_precision="bf16")
    pool = np.random.default_rng(2).random((10, 16, 16))
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda: False, raising=False)
    inside, resume, heads = threading.Event(), threading.Event(), []
    initialize = ResNetBlurRegressor.initialize

    def paused(self):
        if threading.current_thread() is not threading.main_thread():
            inside.set()
            resume.wait(10)
        return initialize(self)

    monkeypatch.setattr(ResNetBlurRegressor, "initialize", paused)
    thread = threading.Thread(target=lambda: heads.append(add_feature_head(
        small_setting, pool, net, n_images=32, batch_size=16,
        blur_features=feats, num_workers=0)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        thread.start()
        try:
            assert inside.wait(10)
            clone(net).initialize()             # this thread's own regressor
            warnings.filterwarnings("error", "another thread's filter")
            filters = list(warnings.filters)
        finally:
            resume.set()
            thread.join()
        assert warnings.filters == filters
    # this thread's warning, and none of the copy's
    assert ["no bfloat16 units" in str(w.message) for w in caught] == [True]
    assert heads[0].module_.blur_features == feats


def test_save_a_compiled_regressor(small_setting, tmp_path):
    # compile=True wraps the module (its state_dict keys gain "_orig_mod."):
    # the saved file must hold the plain module's weights, which load_model
    # reads into an uncompiled regressor. The eager backend keeps it fast.
    net, X = _tiny_regressor(small_setting, 16, compile=True,
                             compile__backend="eager")
    assert hasattr(net.module_, "_orig_mod")
    save_model(tmp_path, net, small_setting)
    model = load_model(tmp_path, project=False)
    np.testing.assert_allclose(model.regressor.predict(X), net.predict(X),
                               rtol=1e-5, atol=1e-7)


def test_the_point_source_fit_takes_the_settings_image_mean(small_setting,
                                                            tmp_path):
    """load_model(estimator='points') built its PointSourceBlurEstimator with
    image_mean=0.5 whatever the setting's: in a setting of image_mean=1.0 it
    returned twice the operator of the model's own simulations (100 %
    operator error, every image)."""
    from deepblur.datasets import blur_images, make_point_sources

    setting = dict(small_setting,
                   params=dict(small_setting["params"], image_mean=1.0))
    net, _ = _tiny_regressor(small_setting, n_images=8)
    save_model(tmp_path, net, setting)
    model = load_model(tmp_path, estimator="points")
    assert model.setting["image_mean"] == 1.0
    assert model.regressor.image_mean == 1.0
    gamma = small_setting["gamma"][:2]
    u = make_point_sources(2, (16, 16), density=0.005, random_state=0)
    y = blur_images(u, gamma, model.basis, noise_std=1e-4, image_mean=1.0,
                    random_state=0)
    err = relative_errors(gamma, model.regressor.predict(y),
                          model.basis.gram_)["operator"]
    assert err.max() < 1e-3           # 1.0 (twice the operator) before


def test_load_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)


SMALL_SPECTRAL = dict(window=8, border=4, n_segments=2)


def test_train_spectral_regressor_on_fresh_windows(small_setting):
    pool = np.random.default_rng(1).random((12, 24, 24))
    spectral = train_spectral_regressor(small_setting, list(pool), n_images=300,
                                        batch_size=100, pool_size=40,
                                        random_state=0, **SMALL_SPECTRAL)
    assert spectral.n_train_images_ == 300 and spectral.window == 8
    again = train_spectral_regressor(small_setting, list(pool), n_images=300,
                                     batch_size=100, pool_size=40,
                                     random_state=0, **SMALL_SPECTRAL)
    np.testing.assert_array_equal(again.coef_, spectral.coef_)     # seeded
    # fitted on crop-boundary images with a noise range and point sources: it
    # beats the mean operator on held-out crop-boundary images
    basis, sampler = small_setting["basis"], small_setting["sampler"]
    scenes = list(np.random.default_rng(2).random((8, 24, 24)))
    X, y = make_blurred_images(scenes, basis, sampler, 200, boundary="crop",
                               random_state=3)
    base = np.tile(sampler.sample(20_000).mean(0), (len(y), 1))
    err = relative_errors(y, spectral.predict(X), basis.gram_)["operator"].mean()
    assert err < relative_errors(y, base, basis.gram_)["operator"].mean()
    for bad, match in ((dict(n_images=0), "n_images"),
                       (dict(point_fraction=1.0), "point_fraction"),
                       (dict(batch_size=2.5), "batch_size")):
        with pytest.raises(ValueError, match=match):
            train_spectral_regressor(small_setting, list(pool), **bad)
    with pytest.raises(ValueError, match="patches must have the basis's image_shape"):
        train_spectral_regressor(small_setting, pool[:, :20])


def test_spectral_regressor_saved_beside_the_network(small_setting, tmp_path):
    net, X = _tiny_regressor(small_setting)
    save_model(tmp_path, net, small_setting)
    with pytest.raises(FileNotFoundError, match="spectral.safetensors"):
        load_model(tmp_path, estimator="spectral")
    pool = np.random.default_rng(1).random((12, 16, 16))
    spectral = train_spectral_regressor(small_setting, pool, n_images=200,
                                        batch_size=100, point_fraction=0.0,
                                        **SMALL_SPECTRAL)
    save_spectral(tmp_path, spectral, noise_std=(0.005, 0.05), boundary="crop",
                  extra={"note": "test"})
    with open(tmp_path / "spectral.safetensors", "rb") as f:
        assert b"\x80\x04" not in f.read(16)          # not a pickle stream
    model = load_model(tmp_path, estimator="spectral", project=True)
    assert type(model.regressor).__name__ == "SpectralBlurRegressor"
    assert model.noise_std == (0.005, 0.05)
    assert model.setting["boundary"] == "crop"
    assert model.setting["noise_std"] == (0.005, 0.05)
    np.testing.assert_allclose(model.regressor.predict(X),
                               spectral.set_params(sampler=model.sampler).predict(X),
                               rtol=1e-6, atol=1e-7)
    assert model.regressor.sampler is model.sampler and model.regressor.project
    raw = load_model(tmp_path, estimator="spectral").regressor
    assert raw.sampler is not None and raw.project is False
    np.testing.assert_allclose(raw.predict(X),
                               spectral.set_params(sampler=None).predict(X), rtol=1e-6)
    assert model.regressor.window == 8 and model.regressor.alpha_ == spectral.alpha_
    assert model.regressor.support_tolerance is None
    # a support_tolerance is saved with the parameters; project is load_model's
    spectral.set_params(sampler=small_setting["sampler"], project=False,
                        support_tolerance=0.2)
    save_spectral(tmp_path, spectral, noise_std=(0.005, 0.05), boundary="crop")
    meta = json.loads((tmp_path / "spectral.json").read_text())
    assert meta["support_tolerance"] == 0.2      # beside params, as the networks'
    assert not {"project", "support_tolerance"} & set(meta["params"])
    reloaded = load_model(tmp_path, estimator="spectral", project=True).regressor
    assert reloaded.support_tolerance == 0.2 and reloaded.project is True
    # the statistics its coefficients were fitted on are saved, not parameters
    # changed since the fit
    expected = spectral.set_params(support_tolerance=None).predict(X)
    spectral.set_params(n_radial=spectral.n_radial + 1, window=4)
    save_spectral(tmp_path, spectral, noise_std=(0.005, 0.05), boundary="crop")
    reloaded = load_model(tmp_path, estimator="spectral").regressor
    assert reloaded.feature_spec_ == spectral.feature_spec_
    assert reloaded.window == 8
    np.testing.assert_allclose(reloaded.predict(X), expected, rtol=1e-6, atol=1e-7)
    # the network is still the default estimator of the directory
    network = load_model(tmp_path)
    assert network.setting["boundary"] == "zero"
    assert network.noise_std == small_setting["params"]["noise_std"]
    with pytest.raises(ValueError, match="estimator must be one of"):
        load_model(tmp_path, estimator="svm")


def test_save_spectral_rejects_what_does_not_fit(small_setting, tmp_path):
    net, _ = _tiny_regressor(small_setting)
    save_model(tmp_path, net, small_setting)
    pool = np.random.default_rng(1).random((12, 16, 16))
    spectral = train_spectral_regressor(small_setting, pool, n_images=100,
                                        batch_size=100, point_fraction=0.0,
                                        **SMALL_SPECTRAL)
    with pytest.raises(TypeError, match="SpectralBlurRegressor"):
        save_spectral(tmp_path, net, noise_std=0.01, boundary="crop")
    with pytest.raises(ValueError, match="boundary"):
        save_spectral(tmp_path, spectral, noise_std=0.01, boundary="reflect")
    # trained on windows (its training_boundary_): not saved as zero-boundary
    assert spectral.training_boundary_ == "crop"
    with pytest.raises(ValueError, match="trained on images blurred with "
                                         "boundary 'crop'"):
        save_spectral(tmp_path, spectral, noise_std=0.01, boundary="zero")
    for bad in (-0.1, (0.05, 0.01), (0.0, 0.1, 0.2), float("nan")):
        with pytest.raises(ValueError, match="noise_std"):
            save_spectral(tmp_path, spectral, noise_std=bad, boundary="crop")
    assert not (tmp_path / "spectral.json").exists()      # nothing written
    other = make_default_setting(n_operators=12, image_shape=(16, 16),
                                 kernel_shape=(5, 5), grid_shape=(4, 4),
                                 n_components=4, n_rays=6, random_state=1)
    foreign = train_spectral_regressor(other, pool, n_images=100, batch_size=100,
                                       point_fraction=0.0, **SMALL_SPECTRAL)
    with pytest.raises(ValueError, match="Gram matrices differ"):
        save_spectral(tmp_path, foreign, noise_std=0.01, boundary="crop")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        save_spectral(tmp_path / "empty", spectral, noise_std=0.01,
                      boundary="crop")
    # a spectral file that does not fit the basis is a clear error on load
    save_spectral(tmp_path, spectral, noise_std=0.01, boundary="crop")
    meta = json.loads((tmp_path / "spectral.json").read_text())
    meta["params"]["n_radial"] = 3
    (tmp_path / "spectral.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not fit the model's basis"):
        load_model(tmp_path, estimator="spectral")


def test_crop_network_saved_beside_the_network(small_setting, tmp_path):
    net, X = _tiny_regressor(small_setting)
    save_model(tmp_path, net, small_setting)
    assert not has_crop_network(tmp_path)
    with pytest.raises(FileNotFoundError, match="crop_network.safetensors.*"
                       "train_crop_model"):
        load_model(tmp_path, estimator="crop_network")
    crop, _ = _tiny_regressor(small_setting, n_images=48)
    crop.noise_level_ = 0.05
    save_crop_network(tmp_path, crop, noise_std=(0.0, 0.05),
                      extra={"note": "test"})
    assert has_crop_network(tmp_path)
    with open(tmp_path / "crop_network.safetensors", "rb") as f:
        assert b"\x80\x04" not in f.read(16)          # not a pickle stream
    meta = json.loads((tmp_path / "crop_network.json").read_text())
    assert meta["note"] == "test" and meta["boundary"] == "crop"
    assert meta["noise_level"] == 0.05 and meta["module"]["width"] == 4
    model = load_model(tmp_path, estimator="crop_network")
    assert isinstance(model.regressor, ResNetBlurRegressor)
    assert model.regressor.sampler is model.sampler
    assert model.regressor.project is False
    assert model.noise_std == (0.0, 0.05)
    assert model.setting["boundary"] == "crop"
    assert model.setting["noise_std"] == (0.0, 0.05)
    assert model.regressor.noise_level_ == 0.05
    assert model.regressor.device == "cpu"
    np.testing.assert_allclose(model.regressor.predict(X), crop.predict(X),
                               rtol=1e-5, atol=1e-6)
    # its own weights, not the zero-boundary network's
    assert not np.allclose(model.regressor.predict(X),
                           load_model(tmp_path).regressor.predict(X))
    projected = load_model(tmp_path, estimator="crop_network", project=True)
    assert projected.regressor.sampler is projected.sampler
    assert projected.regressor.project is True
    # the directory's network and setting are unchanged
    network = load_model(tmp_path)
    assert network.setting["boundary"] == "zero"
    np.testing.assert_allclose(network.regressor.predict(X), net.predict(X),
                               rtol=1e-5, atol=1e-6)
    # without a recorded noise_level, the top of the training range
    del meta["noise_level"]
    (tmp_path / "crop_network.json").write_text(json.dumps(meta))
    assert load_model(tmp_path, "crop_network").regressor.noise_level_ == 0.05
    for bad in (-1, "high", True):
        meta["noise_level"] = bad
        (tmp_path / "crop_network.json").write_text(json.dumps(meta))
        with pytest.raises(ValueError, match="crop_network.json: noise_level"):
            load_model(tmp_path, estimator="crop_network")


def test_the_training_boundary_is_saved_when_known(small_setting, tmp_path):
    """A network's training_boundary_ (tiling warns about zero-boundary
    networks on windows) is written when known and restored; unknown
    (trained on arrays), the setting's: the network's "zero", the crop
    network's "crop". A network trained on windows saved in a zero-boundary
    setting stays one, and the reverse."""
    net, _ = _tiny_regressor(small_setting)
    assert net.training_boundary_ is None                   # arrays
    save_model(tmp_path, net, small_setting)
    save_crop_network(tmp_path, net, noise_std=0.01)
    assert "training_boundary" not in json.loads(
        (tmp_path / "model.json").read_text())
    assert load_model(tmp_path).regressor.training_boundary_ == "zero"
    assert load_model(tmp_path, "crop_network").regressor.training_boundary_ \
        == "crop"
    net.training_boundary_ = "crop"
    save_model(tmp_path / "m", net, small_setting)
    assert load_model(tmp_path / "m").regressor.training_boundary_ == "crop"
    save_crop_network(tmp_path / "m", net, noise_std=0.01)
    crop = load_model(tmp_path / "m", "crop_network")
    assert crop.regressor.training_boundary_ == "crop"
    # a network trained with a zero boundary is no crop network
    net.training_boundary_ = "zero"
    with pytest.raises(ValueError, match="trained on images blurred with a zero"):
        save_crop_network(tmp_path / "m", net, noise_std=0.01)
    net.training_boundary_ = "reflect"
    with pytest.raises(ValueError, match="training_boundary_ must be one of"):
        save_model(tmp_path / "m2", net, small_setting)
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    meta["training_boundary"] = "periodic"
    (tmp_path / "m" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="model.json.*training_boundary must be"):
        load_model(tmp_path / "m")


def test_save_crop_network_rejects_what_does_not_fit(small_setting, tmp_path):
    net, _ = _tiny_regressor(small_setting)
    save_model(tmp_path, net, small_setting)
    with pytest.raises(TypeError, match="ResNetBlurRegressor"):
        save_crop_network(tmp_path, "net", noise_std=0.01)
    fresh = ResNetBlurRegressor(basis=small_setting["basis"])
    with pytest.raises(ValueError, match="must be trained"):
        save_crop_network(tmp_path, fresh, noise_std=0.01)
    for bad in (-0.1, (0.05, 0.01), (0.0, 0.1, 0.2), float("nan")):
        with pytest.raises(ValueError, match="noise_std"):
            save_crop_network(tmp_path, net, noise_std=bad)
    assert not has_crop_network(tmp_path)                # nothing written
    other = make_default_setting(n_operators=12, image_shape=(16, 16),
                                 kernel_shape=(5, 5), grid_shape=(4, 4),
                                 n_components=4, n_rays=6, random_state=1)
    foreign, _ = _tiny_regressor(other)
    with pytest.raises(ValueError, match="Gram matrices differ"):
        save_crop_network(tmp_path, foreign, noise_std=0.01)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        save_crop_network(tmp_path / "empty", net, noise_std=0.01)
    assert not has_crop_network(tmp_path)


def _save_with_companions(directory, net, setting):
    """Save ``net`` in ``directory`` with a spectral regressor and a crop
    network fitted in its setting beside it."""
    save_model(directory, net, setting)
    pool = np.random.default_rng(1).random((12, 16, 16))
    spectral = train_spectral_regressor(setting, pool, n_images=100,
                                        batch_size=100, point_fraction=0.0,
                                        **SMALL_SPECTRAL)
    save_spectral(directory, spectral, noise_std=0.01, boundary="crop")
    crop, _ = _tiny_regressor(setting, n_images=48)
    save_crop_network(directory, crop, noise_std=0.01)


def test_companions_of_a_replaced_model_are_refused(small_setting, tmp_path):
    """A spectral regressor and a crop network record their model's Gram
    matrix: once a model of another basis is saved over the directory's
    (same K, so shapes alone would not tell), loading them is an error, not
    coefficients read in the wrong basis. Files without the record load."""
    net, X = _tiny_regressor(small_setting)
    _save_with_companions(tmp_path, net, small_setting)
    for name in ("spectral.json", "crop_network.json"):
        gram = json.loads((tmp_path / name).read_text())["basis_gram"]
        np.testing.assert_allclose(gram, load_model(tmp_path).basis.gram_)
    load_model(tmp_path, estimator="spectral")
    load_model(tmp_path, estimator="crop_network")
    other = make_default_setting(n_operators=12, image_shape=(16, 16),
                                 kernel_shape=(5, 5), grid_shape=(4, 4),
                                 n_components=4, n_rays=6, random_state=1)
    foreign, _ = _tiny_regressor(other)
    save_model(tmp_path, foreign, other)
    for estimator, stem in (("spectral", "spectral"), ("crop_network",
                                                       "crop_network")):
        with pytest.raises(ValueError, match=f"{stem}.safetensors .*another basis"):
            load_model(tmp_path, estimator=estimator)
    load_model(tmp_path)                   # the new network itself loads
    meta = json.loads((tmp_path / "crop_network.json").read_text())
    del meta["basis_gram"], meta["model_setting"]   # as written before the records
    (tmp_path / "crop_network.json").write_text(json.dumps(meta))
    load_model(tmp_path, estimator="crop_network")


def test_companions_of_a_model_of_another_setting_are_refused(small_setting,
                                                              tmp_path):
    """The same basis, but a model saved over the directory's with another
    image mean or sampler: the crop network and the spectral regressor were
    trained for the old one (their input scale, their support check), and
    loading them with the new one gave other estimates without a word."""
    net, _ = _tiny_regressor(small_setting)
    _save_with_companions(tmp_path, net, small_setting)
    save_model(tmp_path, net, small_setting)          # the same setting: kept
    load_model(tmp_path, estimator="spectral")
    load_model(tmp_path, estimator="crop_network")
    for change in (dict(params=dict(small_setting["params"], image_mean=0.2)),
                   dict(sampler=clone(small_setting["sampler"]).set_params(
                       alpha_range=(0.5, 2.0)).fit(small_setting["cone"].rays_))):
        save_model(tmp_path, net, dict(small_setting, **change))
        for stem in ("spectral", "crop_network"):
            with pytest.raises(ValueError, match=f"{stem}.safetensors .*another "
                               "setting"):
                load_model(tmp_path, estimator=stem)


def test_training_gain_is_the_mean_of_the_training_observations(small_setting,
                                                                tmp_path):
    """Flat images of mean 0.5 blurred by draws of the sampler: their mean is
    0.5 times the training gain of the boundary they were blurred with (the
    interior gain for windows, the whole image's with its losses for zero)."""
    from deepblur.pretrained import training_gain

    net, _ = _tiny_regressor(small_setting)
    save_model(tmp_path, net, small_setting)
    model = load_model(tmp_path)
    assert model.regressor.training_boundary_ == "zero"
    flat = [np.full((32, 32), 0.5)]
    gains = {}
    for boundary in ("zero", "crop"):
        X, _ = make_blurred_images(flat, model.basis, model.sampler, 4000,
                                   noise_std=0.0, boundary=boundary,
                                   image_mean=0.5, random_state=0)
        model.regressor.training_boundary_ = boundary
        gains[boundary] = training_gain(model)
        assert X.mean() == pytest.approx(0.5 * gains[boundary], rel=0.01)
    assert gains["crop"] > 1.05 * gains["zero"]  # 16x16 images lose at the border


def test_training_gain_and_the_demo_follow_the_networks_record(small_setting,
                                                               tmp_path):
    """The network's own ``training_boundary_`` wins over the setting's
    boundary (a network saved in another setting than it learnt in); without
    a record the setting's is used."""
    from deepblur.pretrained import training_gain
    from deepblur.pretrained._apply import (
        _model_boundary,
        operator_gain,
        simulate_blind_deblurring,
    )

    net, _ = _tiny_regressor(small_setting)
    save_model(tmp_path, net, small_setting)
    model = load_model(tmp_path)
    crop_setting = dict(model.setting, boundary="crop")
    rays = model.sampler.generators_
    alpha = np.mean(model.sampler.alpha_range)
    whole = alpha * operator_gain(model.basis, rays).mean()
    interior = alpha * operator_gain(model.basis, rays, interior=True).mean()
    # trained on the zero boundary, saved in a crop setting: the zero gain
    in_crop = model._replace(setting=crop_setting)
    assert _model_boundary(in_crop) == "zero"
    assert training_gain(in_crop) == pytest.approx(whole)
    # no record: the setting's boundary
    del model.regressor.training_boundary_
    assert _model_boundary(in_crop) == "crop"
    assert training_gain(in_crop) == pytest.approx(interior)
    assert _model_boundary(model._replace(setting=None)) == "zero"
    # the demo simulates the boundary the network was trained with: with the
    # zero boundary, the blurry image's mean is the whole image's gain
    model.regressor.training_boundary_ = "zero"
    shape = tuple(model.basis.image_shape_)
    res = simulate_blind_deblurring(in_crop, np.full(shape, 0.5),
                                    max_iter=300, random_state=3)
    g = res["gamma"]
    assert res["blurry_gain"] == pytest.approx(operator_gain(model.basis, g))
    assert res["blurry_gain"] != pytest.approx(
        operator_gain(model.basis, g, interior=True))


TINY_CROP = dict(n_images=64, epochs=2, batch_size=16, width=4, depth=1,
                 stem_stride=2, pool_size=8, head_images=64, head_batch_size=32,
                 blur_features=dict(window=8, n_radial=2, n_angular=2, border=3,
                                    n_segments=2),
                 num_workers=0, device="cpu", compile=False, verbose=0)


def test_train_crop_network_trains_on_windows_with_points(small_setting,
                                                          tmp_path, monkeypatch):
    """The network and its branch see windows (crop boundary) of a pool with
    point sources, at the given noise; the result saves beside a model."""
    import deepblur.pretrained._train as T

    seen = []
    real = T.BlurDataset

    def spy(images, *args, **kwargs):
        seen.append((len(images), kwargs.get("boundary"), kwargs.get("noise_std")))
        return real(images, *args, **kwargs)

    monkeypatch.setattr(T, "BlurDataset", spy)
    scenes = list(np.random.default_rng(3).random((4, 24, 24)) + 0.1)
    net = train_crop_network(small_setting, scenes, noise_std=(0.0, 0.04),
                             point_fraction=0.2, checkpoint_dir=tmp_path / "ck",
                             **TINY_CROP)
    # 8 patches + 2 point sources, windows, the noise range; then the branch
    assert seen and all(s == (10, "crop", (0.0, 0.04)) for s in seen[:2])
    assert net.module_.blur_features == TINY_CROP["blur_features"]
    assert net.feature_head_n_images_ == 64
    assert net.noise_level_ == pytest.approx(0.04)
    assert (tmp_path / "ck" / "history.json").exists()
    again = train_crop_network(small_setting, scenes, noise_std=(0.0, 0.04),
                               point_fraction=0.2, **TINY_CROP)
    X, _ = make_blurred_images(scenes, small_setting["basis"],
                               small_setting["sampler"], 8, boundary="crop",
                               random_state=0)
    np.testing.assert_allclose(again.predict(X), net.predict(X), rtol=1e-5,
                               atol=1e-6)                    # seeded
    assert small_setting["params"]["boundary"] == "zero"     # not modified
    base, _ = _tiny_regressor(small_setting)
    save_model(tmp_path / "m", base, small_setting)
    save_crop_network(tmp_path / "m", net, noise_std=(0.0, 0.04))
    loaded = load_model(tmp_path / "m", estimator="crop_network").regressor
    np.testing.assert_allclose(loaded.predict(X), net.predict(X), rtol=1e-5,
                               atol=1e-6)


def test_train_crop_network_refuses_bad_input_before_training(small_setting,
                                                              monkeypatch):
    import deepblur.pretrained._train as T

    monkeypatch.setattr(T, "train_regressor",
                        lambda *a, **k: pytest.fail("trained on bad input"))
    scenes = list(np.random.default_rng(3).random((4, 24, 24)) + 0.1)
    for bad, match in ((dict(point_fraction=1.0), "point_fraction"),
                       (dict(noise_std=(0.05, 0.01)), "noise_std"),
                       (dict(n_images=0), "n_images"),
                       (dict(head_images=0), "head_images"),
                       (dict(head_batch_size=2.5), "head_batch_size"),
                       (dict(input_norm="log"), "input_norm"),
                       # the branch is made after the training
                       (dict(blur_features=dict(window=64)), "window must be at"),
                       (dict(blur_features=dict(wndow=8)), "unknown parameter"),
                       (dict(blur_features=dict(border=True)), "border must be"),
                       # None is the statistics' defaults: 32x32 blocks
                       (dict(blur_features=None), "window must be at most")):
        with pytest.raises(ValueError, match=match):
            train_crop_network(small_setting, scenes, **dict(TINY_CROP, **bad))
    with pytest.raises(ValueError, match="image_shape"):
        train_crop_network(small_setting, np.ones((4, 20, 20)), **TINY_CROP)
    # deepblur train's [setting] image_shape: an int is a square, and a
    # malformed one is left to the setting's own message
    from deepblur.pretrained._train import check_crop_network_params

    check_crop_network_params(image_shape=64, blur_features={"window": 16})
    check_crop_network_params(image_shape=["a", "b"], blur_features={})
    with pytest.raises(ValueError, match="window must be at most"):
        check_crop_network_params(image_shape=16, blur_features={"window": 32})
    with pytest.raises(ValueError, match="positive mean"):
        train_crop_network(small_setting, np.zeros((4, 16, 16)),
                           **dict(TINY_CROP, point_fraction=0.0))


def test_extra_metadata_cannot_replace_the_models_own(small_setting, tmp_path):
    """extra adds keys; those the savers write themselves (the operator model,
    the cone, the sampler...) keep the model's values, with a warning: a
    model saved with extra={"boundary": ...} loaded with another boundary."""
    from deepblur import ConeSampler
    from deepblur.pretrained import load_basis, save_basis

    net, X = _tiny_regressor(small_setting)
    extra = {"boundary": "periodic", "random_state": 5, "note": "kept"}
    with pytest.warns(UserWarning, match=r"\['boundary', 'random_state'\]"):
        save_model(tmp_path / "m", net, small_setting, extra=extra)
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["note"] == "kept" and meta["boundary"] == "zero"
    assert meta["random_state"] == small_setting["sampler"].random_state
    assert load_model(tmp_path / "m").basis.boundary == "zero"
    with pytest.warns(UserWarning, match=r"\['boundary'\]"):
        load_basis(save_basis(tmp_path / "b", small_setting["basis"],
                              extra={"boundary": "periodic"}))
    # nor the noise level predict checks images against, known or not
    vars(net).pop("noise_level_", None)
    with pytest.warns(UserWarning, match=r"\['noise_level'\]"):
        save_model(tmp_path / "n", net, small_setting, extra={"noise_level": -1.0})
    meta = json.loads((tmp_path / "n" / "model.json").read_text())
    assert "noise_level" not in meta
    assert load_model(tmp_path / "n").regressor.noise_level_ >= 0
    # a sampler seeded with a RandomState: saved unseeded, with a warning
    setting = dict(small_setting)
    setting["sampler"] = ConeSampler(
        random_state=np.random.RandomState(0)).fit(small_setting["cone"].rays_)
    with pytest.warns(UserWarning, match="loaded sampler is unseeded"):
        save_model(tmp_path / "rs", net, setting)
    assert load_model(tmp_path / "rs").sampler.random_state is None


def test_save_load_basis_grid_and_scattered(tmp_path):
    from deepblur import ProductConvolutionBasis
    from deepblur.datasets import make_random_operators
    from deepblur.pretrained import load_basis, save_basis

    ops = make_random_operators(6, image_shape=(24, 24), kernel_shape=(5, 5),
                                grid_shape=(3, 3), random_state=0)
    basis = ProductConvolutionBasis(3, image_shape=(24, 24)).fit(ops.psf_fields)
    again = load_basis(save_basis(tmp_path / "grid", basis, extra={"note": 1}))
    np.testing.assert_array_equal(again.kernels_, basis.kernels_)
    np.testing.assert_array_equal(again.maps_, basis.maps_)
    np.testing.assert_array_equal(again.positions_, basis.positions_)
    assert again.grid_shape_ == (3, 3) and again.boundary == "zero"
    assert again.reconstruction_error_ == basis.reconstruction_error_
    np.testing.assert_allclose(again.transform(ops.psf_fields),
                               basis.transform(ops.psf_fields))
    meta = json.loads((tmp_path / "grid" / "basis.json").read_text())
    assert meta["note"] == 1 and meta["positions"] is None
    with open(tmp_path / "grid" / "basis.safetensors", "rb") as f:
        assert b"\x80\x04" not in f.read(16)          # not a pickle stream

    positions = np.array([[2, 3], [10, 20], [20, 5], [15, 15]])
    scattered = ProductConvolutionBasis(2, image_shape=(24, 24), positions=positions,
                                        boundary="periodic").fit(
        ops.psf_fields.reshape(6, 9, 5, 5)[:, :4])
    again = load_basis(save_basis(tmp_path / "scattered", scattered))
    assert again.grid_shape_ is None and again.boundary == "periodic"
    np.testing.assert_array_equal(again.positions_, positions)
    np.testing.assert_allclose(again.gram_, scattered.gram_)


def test_load_basis_missing(tmp_path):
    from deepblur.pretrained import load_basis

    with pytest.raises(FileNotFoundError, match="basis.safetensors"):
        load_basis(tmp_path)


def test_training_functions_refuse_a_folder_or_name_for_images(small_setting,
                                                              tmp_path):
    """images = "natural" (a deepblur train config's) given to the Python
    functions failed deep inside with torch's or numpy's message about
    strings, after the checkpoint folder was made."""
    from deepblur.pretrained import (
        add_feature_head,
        train_crop_network,
        train_spectral_regressor,
    )

    net, _ = _tiny_regressor(small_setting)
    calls = (lambda im: train_regressor(small_setting, im, n_images=32, epochs=1,
                                        checkpoint_dir=tmp_path / "ck"),
             lambda im: train_crop_network(small_setting, im, n_images=32,
                                           epochs=1),
             lambda im: add_feature_head(small_setting, im, net, n_images=32),
             lambda im: train_spectral_regressor(small_setting, im, n_images=32))
    for call in calls:
        for bad in ("natural", tmp_path):
            with pytest.raises(TypeError, match="images must be images.*"
                                                "natural_image_split"):
                call(bad)
    assert not (tmp_path / "ck").exists()


def test_train_regressor_validates_and_resumes_only_from_a_checkpoint(
        small_setting, tmp_path):
    from deepblur.pretrained import finished_epochs, train_regressor

    pool = np.random.default_rng(0).random((10, 16, 16)) + 0.1
    # the default output bias draws from the (shared, stateful) sampler: fix it
    bias = small_setting["sampler"].sample(1000).mean(0)
    kw = dict(n_images=32, epochs=2, batch_size=8, width=4, depth=1,
              stem_stride=2, num_workers=0, output_bias=bias, gammas_per_image=4,
              verbose=0)
    with pytest.raises(ValueError, match="criterion must be one of"):
        train_regressor(small_setting, pool, criterion="l2", **kw)
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        train_regressor(small_setting, pool, **dict(kw, epochs=0))
    with pytest.raises(ValueError, match="pool_size must be a positive integer"):
        train_regressor(small_setting, pool, **dict(kw, pool_size=0))
    with pytest.raises(ValueError, match="num_workers must be a non-negative"):
        train_regressor(small_setting, pool, **dict(kw, num_workers=-1))
    with pytest.raises(ValueError, match="compile must be true or false"):
        train_regressor(small_setting, pool, **dict(kw, compile="yes"))
    with pytest.raises(ValueError, match="input_norm must be one of"):
        train_regressor(small_setting, pool, **dict(kw, input_norm="whiten"))
    with pytest.raises(ValueError, match="gammas_per_image must be a positive"):
        train_regressor(small_setting, pool, **dict(kw, gammas_per_image=0))
    with pytest.raises(ValueError, match="mixed_precision must be None or 'bf16'"):
        train_regressor(small_setting, pool, **dict(kw, mixed_precision="fp16"))
    # a malformed image_shape is left to the setting's own check
    from deepblur.pretrained._train import check_training_params
    for shape in ("128", (128, 128, 1), ("a", 2)):
        check_training_params(stem_stride=4, image_shape=shape)
    # an int is a square (make_default_setting's image_shape=64)
    check_training_params(stem_stride=4, image_shape=64)
    with pytest.raises(ValueError, match=r"images of at least 32 .* \(16, 16\)"):
        check_training_params(stem_stride=4, image_shape=16)
    with pytest.raises(ValueError, match=r"stem_stride=4 needs images of at least "
                                         r"32 pixels per side .* \(16, 16\)"):
        train_regressor(small_setting, pool, **dict(kw, stem_stride=4))
    for seed in (-1, 2**31, 1.5, None):
        with pytest.raises(ValueError, match="random_state .* must be an integer"):
            train_regressor(small_setting, pool, **dict(kw, random_state=seed))
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train_regressor(small_setting, pool, resume=True, **kw)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_regressor(small_setting, pool, resume=True, checkpoint_dir=tmp_path,
                        **kw)
    net = train_regressor(small_setting, pool, checkpoint_dir=tmp_path,
                          criterion="frobenius", **kw)
    assert finished_epochs(net) == 2 and len(net.history) == 2
    assert [row["event_lr"] for row in net.history] == pytest.approx(
        [2e-3, 1e-3])                                   # cosine over 2 epochs
    # the same seed gives the same network; resuming a finished run trains nothing
    again = train_regressor(small_setting, pool, criterion="frobenius", **kw)
    X = pool[:3].astype(np.float32)
    np.testing.assert_allclose(again.predict(X), net.predict(X), rtol=1e-6)
    done = train_regressor(small_setting, pool, checkpoint_dir=tmp_path,
                           resume=True, criterion="frobenius", **kw)
    assert len(done.history) == 2
    np.testing.assert_allclose(done.predict(X), net.predict(X), rtol=1e-6)
    # with the training noise of the finished run (what save_model records)
    assert done.noise_level_ == net.noise_level_
    assert done.training_noise_std_ == net.training_noise_std_
    # the precision is how, not what, the network learns: a checkpoint goes on
    # in another one (e.g. moved to a machine with bfloat16 units)
    done = train_regressor(small_setting, pool, checkpoint_dir=tmp_path,
                           resume=True, criterion="frobenius",
                           mixed_precision="bf16", **kw)
    assert len(done.history) == 2 and done.mixed_precision == "bf16"
    # other parameters than the checkpoint's (recorded in run.json) are refused,
    # e.g. defaults changed between versions: another schedule, silently
    level = small_setting["params"]["noise_std"]
    noisier = dict(small_setting, params=dict(small_setting["params"],
                                              noise_std=0.2))
    for setting, change, named in (
            (small_setting, dict(width=8), "width=4 (now 8)"),
            (small_setting, dict(epochs=4), "epochs=2 (now 4)"),
            (small_setting, dict(noise_std=(0.0, 0.02)),
             f"noise_std=[{level}, {level}] (now [0.0, 0.02])"),
            # the noise the images are drawn with, also when the setting gives it
            (noisier, {}, f"noise_std=[{level}, {level}] (now [0.2, 0.2])")):
        with pytest.raises(ValueError, match=r"other training parameters.*"
                                             + re.escape(named)):
            train_regressor(setting, pool, checkpoint_dir=tmp_path,
                            resume=True, criterion="frobenius", **dict(kw, **change))
    # another setting (here another basis with the same K): its loss's metric
    # and its operators are not those the checkpoint learnt
    other = make_default_setting(n_operators=12, image_shape=(16, 16),
                                 kernel_shape=(5, 5), grid_shape=(4, 4),
                                 n_components=4, n_rays=6, random_state=7)
    with pytest.raises(ValueError, match=r"other training parameters.*setting "
                                         r"\(basis, sampler"):
        train_regressor(other, pool, checkpoint_dir=tmp_path, resume=True,
                        criterion="frobenius", **kw)
    # other training images (e.g. another folder in the config)
    with pytest.raises(ValueError, match=r"other training parameters.*images "
                                         r"\(other training images\)"):
        train_regressor(small_setting, pool[::-1], checkpoint_dir=tmp_path,
                        resume=True, criterion="frobenius", **kw)
    # the same images as float32, a list or a tensor are the same images
    for same in (pool.astype(np.float32), list(pool), torch.from_numpy(pool)):
        assert len(train_regressor(small_setting, same, checkpoint_dir=tmp_path,
                                   resume=True, criterion="frobenius",
                                   **kw).history) == 2
    # the same noise given explicitly instead of by the setting is the same run
    assert len(train_regressor(small_setting, pool, checkpoint_dir=tmp_path,
                               resume=True, criterion="frobenius",
                               **dict(kw, noise_std=level)).history) == 2
    # records made before the noise used was written down (None: the setting's)
    record = json.loads((tmp_path / "run.json").read_text())
    (tmp_path / "run.json").write_text(json.dumps(dict(record, noise_std=None)))
    assert len(train_regressor(noisier, pool, checkpoint_dir=tmp_path,
                               resume=True, criterion="frobenius",
                               **kw).history) == 2
    (tmp_path / "run.json").write_text(json.dumps(dict(record, noise_std=level)))
    assert len(train_regressor(small_setting, pool, checkpoint_dir=tmp_path,
                               resume=True, criterion="frobenius",
                               **kw).history) == 2
    # records made before the setting and the images were written down:
    # resumed unchecked
    (tmp_path / "run.json").write_text(json.dumps(
        {k: v for k, v in record.items() if k not in ("setting", "images")}))
    assert len(train_regressor(other, pool[::-1], checkpoint_dir=tmp_path,
                               resume=True, criterion="frobenius",
                               **kw).history) == 2
    # a checkpoint without that record (an older version's) is checked by
    # loading it into the module
    (tmp_path / "run.json").unlink()
    with pytest.raises(ValueError, match="does not match this configuration"):
        train_regressor(small_setting, pool, checkpoint_dir=tmp_path, resume=True,
                        **dict(kw, width=8))


@pytest.mark.parametrize("name", ["params.pt", "optimizer.pt", "criterion.pt",
                                  "history.json"])
def test_a_fresh_training_refuses_a_directory_holding_a_checkpoint(
        small_setting, tmp_path, monkeypatch, name):
    """Without resume, a checkpoint in checkpoint_dir is refused before any
    work: the new run would rewrite run.json at once but the old run's
    weights and history only after its first epoch, and a resume of the new
    run interrupted before then went on from the old run's epochs."""
    import deepblur.pretrained._train as T

    def no_data(*args, **kwargs):
        raise AssertionError("no data before the checkpoint_dir is checked")

    monkeypatch.setattr(T, "BlurDataset", no_data)
    monkeypatch.setattr(T, "_pool_with_points", no_data)
    (tmp_path / name).write_text("an older run's")
    (tmp_path / "run.json").write_text('{"epochs": 2}')
    pool = np.random.default_rng(0).random((10, 16, 16)) + 0.1
    kw = dict(n_images=32, epochs=2, batch_size=8, width=4, depth=1,
              stem_stride=2, num_workers=0, verbose=0, checkpoint_dir=tmp_path)
    match = (rf"holds a checkpoint \({name}\): pass resume=True to continue it, "
             "or remove it")
    with pytest.raises(ValueError, match=match):
        train_regressor(small_setting, pool, **kw)
    with pytest.raises(ValueError, match=match):
        train_crop_network(small_setting, pool, checkpoint_dir=tmp_path,
                           **TINY_CROP)
    assert (tmp_path / "run.json").read_text() == '{"epochs": 2}'    # untouched
    # a directory with the record alone (a run stopped in its first epoch)
    # holds no checkpoint: a fresh training may start there
    (tmp_path / name).unlink()
    with pytest.raises(AssertionError, match="no data before"):
        train_regressor(small_setting, pool, **kw)


@pytest.mark.filterwarnings("ignore::deepblur.exceptions.NoisyImageWarning")
def test_a_checkpoint_resumes_with_either_value_of_compile(small_setting,
                                                           tmp_path, monkeypatch):
    """The checkpoint holds the uncompiled network's weights (torch.compile's
    wrapper prefixes its keys with "_orig_mod."): an interrupted training goes
    on compiled or not, as if it had not stopped, and a checkpoint written
    compiled by an earlier version (prefixed keys) loads too."""
    import functools

    from deepblur.datasets.simulate import BlurDataset

    # the eager backend: a compiled module without the compiler's minutes
    monkeypatch.setattr(torch, "compile",
                        functools.partial(torch.compile, backend="eager"))
    pool = np.random.default_rng(0).random((10, 16, 16)) + 0.1
    bias = small_setting["sampler"].sample(1000).mean(0)
    kw = dict(n_images=32, epochs=2, batch_size=8, width=4, depth=1,
              stem_stride=2, num_workers=0, output_bias=bias, device="cpu",
              verbose=0)
    X = pool[:3].astype(np.float32)
    whole = train_regressor(small_setting, pool, **kw).predict(X)
    real_iter = BlurDataset.__iter__

    def interrupted_in_epoch_2(self):     # (epochs count from 1 there)
        if self._epoch_set and self._epoch >= 2:
            raise KeyboardInterrupt
        yield from real_iter(self)

    def first_epoch(directory, compile):
        with monkeypatch.context() as m:
            m.setattr(BlurDataset, "__iter__", interrupted_in_epoch_2)
            with pytest.raises(KeyboardInterrupt, match="after 1 of 2"):
                train_regressor(small_setting, pool, checkpoint_dir=directory,
                                compile=compile, **kw)

    first_epoch(tmp_path / "compiled", True)
    for name in ("params.pt", "criterion.pt"):
        state = torch.load(tmp_path / "compiled" / name, weights_only=True)
        assert not any(k.startswith("_orig_mod.") for k in state)
    net = train_regressor(small_setting, pool, checkpoint_dir=tmp_path / "compiled",
                          resume=True, compile=False, **kw)
    assert len(net.history) == 2
    np.testing.assert_allclose(net.predict(X), whole, rtol=1e-5, atol=1e-6)
    first_epoch(tmp_path / "plain", False)
    for name in ("params.pt", "criterion.pt"):      # as written compiled before
        path = tmp_path / "plain" / name
        state = torch.load(path, weights_only=True)
        torch.save({"_orig_mod." + k: v for k, v in state.items()}, path)
    for compile in (True, False):
        directory = tmp_path / f"old-{compile}"
        directory.mkdir()
        for path in (tmp_path / "plain").iterdir():
            (directory / path.name).write_bytes(path.read_bytes())
        net = train_regressor(small_setting, pool, checkpoint_dir=directory,
                              resume=True, compile=compile, **kw)
        assert len(net.history) == 2
        np.testing.assert_allclose(net.predict(X), whole, rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:mixed_precision=.*no bfloat16 units")
def test_run_json_records_the_precision_of_the_epochs(small_setting, tmp_path,
                                                      monkeypatch):
    """run.json did not say whether the epochs were trained in bfloat16: a
    checkpoint resumed in the other precision (allowed: how, not what, the
    network learns) left no trace of it. It now holds the first run's
    mixed_precision and, for each resume that trains, its own with the epochs
    finished before it; neither is checked on resume."""
    from deepblur.datasets.simulate import BlurDataset

    pool = np.random.default_rng(0).random((10, 16, 16)) + 0.1
    bias = small_setting["sampler"].sample(1000).mean(0)
    kw = dict(n_images=32, epochs=2, batch_size=8, width=4, depth=1,
              stem_stride=2, num_workers=0, output_bias=bias, device="cpu",
              verbose=0)
    real_iter = BlurDataset.__iter__

    def interrupted_in_epoch_2(self):     # (epochs count from 1 there)
        if self._epoch_set and self._epoch >= 2:
            raise KeyboardInterrupt
        yield from real_iter(self)

    with monkeypatch.context() as m:
        m.setattr(BlurDataset, "__iter__", interrupted_in_epoch_2)
        with pytest.raises(KeyboardInterrupt, match="after 1 of 2"):
            train_regressor(small_setting, pool, checkpoint_dir=tmp_path, **kw)
    path = tmp_path / "run.json"
    first = json.loads(path.read_text())
    assert first["mixed_precision"] is None and "resumes" not in first
    net = train_regressor(small_setting, pool, checkpoint_dir=tmp_path,
                          resume=True, mixed_precision="bf16", **kw)
    assert len(net.history) == 2
    record = json.loads(path.read_text())
    assert record["resumes"] == [dict(finished_epochs=1, mixed_precision="bf16")]
    assert record == dict(first, resumes=record["resumes"])    # nothing else
    # a resume of the finished run trains nothing: nothing recorded
    train_regressor(small_setting, pool, checkpoint_dir=tmp_path, resume=True,
                    **kw)
    assert json.loads(path.read_text()) == record
    # a run in bfloat16 from the start
    train_regressor(small_setting, pool, checkpoint_dir=tmp_path / "bf16",
                    mixed_precision="bf16", **dict(kw, epochs=1))
    assert json.loads((tmp_path / "bf16" / "run.json").read_text())[
        "mixed_precision"] == "bf16"


@pytest.mark.filterwarnings("ignore::deepblur.exceptions.NoisyImageWarning")
def test_training_takes_numpy_integers(small_setting, tmp_path):
    """Hyper-parameters from a NumPy grid (np.int64) train as Python ints do:
    the same network, and a run.json of integers that a resume with Python
    ints matches."""
    pool = np.random.default_rng(0).random((10, 16, 16)) + 0.1
    bias = small_setting["sampler"].sample(1000).mean(0)
    kw = dict(n_images=32, epochs=1, batch_size=8, width=4, depth=1,
              stem_stride=2, pool_size=6, gammas_per_image=2, num_workers=0)
    as_numpy = dict({k: np.int64(v) for k, v in kw.items()}, lr=np.float64(2e-3),
                    random_state=np.int64(0))
    kw["device"] = as_numpy["device"] = "cpu"
    net = train_regressor(small_setting, pool, output_bias=bias,
                          checkpoint_dir=tmp_path, verbose=0, **as_numpy)
    record = json.loads((tmp_path / "run.json").read_text())
    assert all(type(record[k]) is int for k in kw
               if k not in ("num_workers", "device"))
    resumed = train_regressor(small_setting, pool, output_bias=bias,
                              checkpoint_dir=tmp_path, resume=True, verbose=0,
                              **kw)
    again = train_regressor(small_setting, pool, output_bias=bias, verbose=0,
                            **kw)
    X = pool[:3].astype(np.float32)
    np.testing.assert_allclose(resumed.predict(X), net.predict(X), rtol=1e-6)
    np.testing.assert_allclose(again.predict(X), net.predict(X), rtol=1e-6)
    head = add_feature_head(small_setting, pool, net, n_images=np.int64(32),
                            batch_size=np.int64(16), num_workers=np.int64(0),
                            blur_features=dict(window=8, n_radial=2, n_angular=2,
                                               border=3, n_segments=2))
    assert head.feature_head_n_images_ == 32
    with pytest.raises(ValueError, match="num_workers must be a non-negative"):
        add_feature_head(small_setting, pool, net, num_workers=np.int64(-1))


def test_default_num_workers_follows_the_start_method(monkeypatch):
    """num_workers=None: a data worker on the CPU only where workers are
    forked, or where the main module is known to be guarded; none on CUDA."""
    from deepblur.pretrained import _train, default_num_workers

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for method, expected in (("fork", 1), ("spawn", 0), ("forkserver", 0)):
        monkeypatch.setattr(_train.multiprocessing, "get_start_method",
                            lambda allow_none=False, m=method: m)
        assert default_num_workers(cpu) == expected
        assert default_num_workers(cpu, guarded_main=True) == 1
        assert default_num_workers(cuda, guarded_main=True) == 0
    # not set yet: the platform's default, the first of its methods
    monkeypatch.setattr(_train.multiprocessing, "get_start_method",
                        lambda allow_none=False: None)
    for methods, expected in ((["fork", "spawn"], 1),
                              (["spawn", "fork", "forkserver"], 0),
                              (["forkserver", "fork", "spawn"], 0)):
        monkeypatch.setattr(_train.multiprocessing, "get_all_start_methods",
                            lambda m=methods: m)
        assert default_num_workers(cpu) == expected


UNGUARDED_SCRIPT = """
import multiprocessing
import numpy as np
from deepblur.pretrained import (add_feature_head, make_default_setting,
                                 train_regressor)

print("script ran", flush=True)
multiprocessing.set_start_method("spawn")      # macOS's and Windows' default
setting = make_default_setting(n_operators=12, image_shape=(16, 16),
                               kernel_shape=(5, 5), grid_shape=(4, 4),
                               n_components=4, n_rays=6)
pool = np.random.default_rng(0).random((10, 16, 16)) + 0.1
net = train_regressor(setting, pool, n_images=16, epochs=1, batch_size=8,
                      width=4, depth=1, stem_stride=2, device="cpu", verbose=0)
net = add_feature_head(setting, pool, net, n_images=16, batch_size=8,
                       blur_features=dict(window=8, n_radial=2, n_angular=2,
                                          border=3, n_segments=2))
print("trained", net.feature_head_n_images_, flush=True)
"""


def test_default_workers_never_run_an_unguarded_script_again(tmp_path):
    """Under the spawn start method a worker imports the main script again: a
    script without an ``if __name__ == "__main__":`` guard would train again
    in it, then fail. With the defaults such a script trains once, in its
    own process."""
    import subprocess
    import sys

    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT)
    done = subprocess.run([sys.executable, str(script)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["script ran", "trained 16"]


@pytest.mark.cuda
def test_train_regressor_on_cuda_makes_the_data_there(small_setting, monkeypatch):
    from deepblur.datasets import simulate
    from deepblur.pretrained import add_feature_head, train_regressor

    devices = []
    draw = simulate.BlurDataset.draw

    def spy(self, n):
        X, y = draw(self, n)
        devices.append(X.device.type)
        return X, y

    monkeypatch.setattr(simulate.BlurDataset, "draw", spy)
    pool = np.random.default_rng(0).random((10, 16, 16)) + 0.1
    bias = small_setting["sampler"].sample(1000).mean(0)
    net = train_regressor(small_setting, pool, n_images=32, epochs=2, batch_size=8,
                          width=4, depth=1, stem_stride=2, num_workers=0,
                          output_bias=bias, device="cuda", verbose=0)
    assert set(devices) == {"cuda"}
    assert next(net.module_.parameters()).device.type == "cuda"
    assert np.isfinite(net.predict(pool[:3].astype(np.float32))).all()
    # so does the blur-statistics branch's fit
    devices.clear()
    head = add_feature_head(small_setting, pool, net, n_images=64, batch_size=32,
                            blur_features=dict(window=8, n_radial=2, n_angular=2,
                                               border=3, n_segments=2))
    assert set(devices) == {"cuda"} and len(devices) == 2
    assert head.feature_head_n_images_ == 64
    assert np.isfinite(head.predict(pool[:3].astype(np.float32))).all()


def _tiny_training(setting):
    """A pool of 10 random 16x16 patches and train_regressor's keywords for
    one CPU epoch of a tiny network on it. The output bias is drawn here: the
    default one draws from the setting's (shared, stateful) sampler."""
    pool = np.random.default_rng(0).random((10, 16, 16)) + 0.1
    bias = setting["sampler"].sample(1000).mean(0)
    return pool, dict(n_images=32, epochs=1, batch_size=8, width=4, depth=1,
                      stem_stride=2, num_workers=0, output_bias=bias,
                      device="cpu", verbose=0)


def test_train_regressor_starts_from_init_model(small_setting, tmp_path):
    from deepblur.pretrained import train_regressor
    from deepblur.pretrained._train import _load_initial_weights

    pool, kw = _tiny_training(small_setting)
    first = train_regressor(small_setting, pool, random_state=3, **kw)
    source = save_model(tmp_path / "first", first, small_setting)
    # the weights are copied as they are (an untrained net of another seed)
    fresh = ResNetBlurRegressor(basis=small_setting["basis"], module__width=4,
                                module__depth=1, module__stem_stride=2,
                                module__input_norm="laplacian",  # train_regressor's
                                device="cpu").initialize()
    _load_initial_weights(fresh, load_model(source))
    for (name, a), b in zip(first.module_.state_dict().items(),
                            fresh.module_.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # fine-tuning from them differs from the same training from scratch
    X = pool[:4].astype(np.float32)
    tuned = train_regressor(small_setting, pool, init_model=source, **kw)
    scratch = train_regressor(small_setting, pool, **kw)
    assert not np.allclose(tuned.predict(X), scratch.predict(X))
    with pytest.raises(ValueError, match="init_model's network does not match.*"
                                         "size mismatch"):
        train_regressor(small_setting, pool, init_model=source,
                        **dict(kw, width=8))
    with pytest.raises(FileNotFoundError):
        train_regressor(small_setting, pool, init_model=tmp_path / "missing", **kw)
    # a network with a feature head keeps it when fine-tuned
    headed = add_feature_head(small_setting, pool, first, n_images=64,
                              batch_size=32, blur_features=dict(
                                  window=8, n_radial=2, n_angular=2, border=3,
                                  n_segments=2))
    source = save_model(tmp_path / "headed", headed, small_setting)
    tuned = train_regressor(small_setting, pool, init_model=source, **kw)
    assert tuned.module_.blur_features == headed.module_.blur_features
    assert not torch.equal(tuned.module_.feature_fc.weight,
                           headed.module_.feature_fc.weight)     # it trained


def test_defaults_tables_are_the_functions_defaults():
    """TRAINING_DEFAULTS / SPECTRAL_DEFAULTS document what a call without
    arguments does: they must not drift from the signatures."""
    import inspect

    from deepblur.pretrained import (
        FEATURE_HEAD_DEFAULTS,
        SPECTRAL_DEFAULTS,
        TRAINING_DEFAULTS,
        add_feature_head,
        train_regressor,
        train_spectral_regressor,
    )

    for table, function in ((TRAINING_DEFAULTS, train_regressor),
                            (SPECTRAL_DEFAULTS, train_spectral_regressor),
                            (FEATURE_HEAD_DEFAULTS, add_feature_head)):
        params = inspect.signature(function).parameters
        assert {k: params[k].default for k in table} == table


def test_train_regressor_with_psf_moments(small_setting, tmp_path):
    from deepblur.nets import PSFMomentLoss
    from deepblur.pretrained import train_regressor

    pool, kw = _tiny_training(small_setting)
    for bad, match in [(dict(moment_stage=5), "moment_stage must be None or a"),
                       (dict(moment_stage=True), "moment_stage must be None or a"),
                       (dict(moment_weight=-0.1), "moment_weight must be a non-neg"),
                       (dict(moment_stage=2, criterion="frobenius"),
                        "needs criterion='mse'")]:
        with pytest.raises(ValueError, match=match):
            train_regressor(small_setting, pool, **dict(kw, **bad))
    net = train_regressor(small_setting, pool, moment_stage=2, moment_weight=0.5,
                          **kw)
    assert isinstance(net.criterion_, PSFMomentLoss)
    assert net.criterion_.weight == 0.5
    np.testing.assert_allclose(net.criterion_.fields.shape, (4, 4, 16, 16))
    # the moment term is in the training loss, not in the validation loss;
    # predictions are gamma alone, and the model saves and loads as any other
    row = net.history[-1]
    assert np.isfinite(row["train_loss"]) and np.isfinite(row["valid_loss"])
    X = pool[:3].astype(np.float32)
    assert net.predict(X).shape == (3, 4)
    saved = save_model(tmp_path / "m", net, small_setting)   # without the head
    loaded = load_model(saved)
    assert plain_module(loaded.regressor).moment_head is None
    np.testing.assert_allclose(loaded.regressor.predict(X), net.predict(X),
                               rtol=1e-5, atol=1e-7)
    # fine-tuning a plain network with the moments: the head starts afresh
    tuned = train_regressor(small_setting, pool, init_model=saved, moment_stage=1,
                            **kw)
    assert plain_module(tuned).moment_head.weight.shape == (4, 4, 1, 1)
    # without the basis the loss cannot know the moments
    reg = ResNetBlurRegressor(criterion=PSFMomentLoss, module__n_outputs=4,
                              criterion__gamma_samples=np.ones((4, 4)),
                              module__moment_stage=1, device="cpu")
    with pytest.raises(ValueError, match="basis must be given"):
        reg.initialize()
    # a network returning its moments needs the loss that reads them
    reg = ResNetBlurRegressor(basis=small_setting["basis"], module__width=4,
                              module__moment_stage=1, device="cpu")
    with pytest.raises(ValueError, match="module__moment_stage .* only "
                                         "criterion=PSFMomentLoss"):
        reg.initialize()
    # ... given as a class or as a ready instance, which is used as it is
    basis = small_setting["basis"]
    loss = PSFMomentLoss(basis.kernels_, basis.maps_,
                         small_setting["sampler"].sample(100))
    reg = ResNetBlurRegressor(basis=basis, module__width=4, module__moment_stage=1,
                              criterion=loss, device="cpu").initialize()
    assert reg.criterion_ is loss


def test_check_training_params_checks_mixed_precision_on_the_device(monkeypatch):
    """bfloat16 on a CUDA device without it is refused before any training
    (before the setting's fit in ``deepblur train``), and so is CUDA where
    there is none."""
    from deepblur.pretrained._train import check_training_params

    check_training_params(mixed_precision="bf16", device="cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        check_training_params(mixed_precision="bf16", device="cuda")
    # the device whenever it is given (deepblur train checked it before the
    # setting's fit only to choose num_workers, when not given)
    for params in (dict(mixed_precision=None), dict(num_workers=0), {}):
        with pytest.raises(ValueError, match="CUDA is not available"):
            check_training_params(device="cuda", **params)
    with pytest.raises(ValueError, match="must be a torch device"):
        check_training_params(device="gpu")
    check_training_params(device="auto", num_workers=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    check_training_params(mixed_precision=None, device="cuda")  # nothing to check
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "T4")
    for device in ("cuda", "auto", None):    # None: not given, "auto"
        params = {} if device is None else dict(device=device)
        with pytest.raises(ValueError, match=r"\(T4\) has no native bfloat16"):
            check_training_params(mixed_precision="bf16", **params)


@pytest.mark.parametrize("bad", [0.0, -0.5, float("nan"), True, "0.5"])
def test_image_mean_is_checked(bad):
    """image_mean scales the image: zero gave NaN images, not an error."""
    from deepblur.pretrained import (
        bundled_image,
        deblur_image,
        estimate_gamma,
        load_default,
    )

    model = load_default()
    image = bundled_image("camera")
    gamma = model.sampler.sample(1)[0]
    with pytest.raises(ValueError, match="image_mean must be a positive float"):
        deblur_image(model, image, gamma=gamma, image_mean=bad)
    with pytest.raises(ValueError, match="image_mean must be a positive float"):
        estimate_gamma(model, image, image_mean=bad)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_the_models_training_mean_scales_what_it_reads(tmp_path, capsys):
    """A model trained on images of mean 0.25 reads images scaled to 0.25
    (times its training gain), in Python, for large images and in the CLI;
    they were scaled to 0.5 whatever the model's setting said."""
    import shutil

    import tifffile

    from deepblur.cli import main
    from deepblur.pretrained import (
        bundled_image,
        deblur_image,
        estimate_gamma,
        load_default,
        model_image_mean,
        training_gain,
    )
    from deepblur.pretrained._io import DEFAULT_DIR
    from deepblur.tiling import deblur_large, estimate_tiles

    shipped = load_default()
    model = shipped._replace(setting=dict(shipped.setting, image_mean=0.25))
    assert model_image_mean(shipped) == 0.5 and model_image_mean(model) == 0.25
    image = 3.0 * bundled_image("camera")
    gamma, scale = estimate_gamma(model, image)
    assert scale == pytest.approx(0.25 * training_gain(model) / image.mean())
    np.testing.assert_allclose(gamma, estimate_gamma(shipped, image,
                                                     image_mean=0.25)[0])
    assert not np.allclose(gamma, estimate_gamma(shipped, image)[0], rtol=1e-3)
    restored, used = deblur_image(model, image, lam=500.0, max_iter=5)
    expected, _ = deblur_image(shipped, image, lam=500.0, max_iter=5,
                               image_mean=0.25)
    np.testing.assert_allclose(restored, expected)
    large = deblur_large(image, model, lam=500.0, max_iter=5, tol=0)
    np.testing.assert_allclose(large.restored, restored, atol=2e-4 * image.max())
    # the CLI reads the setting of model.json
    directory = tmp_path / "m25"
    shutil.copytree(DEFAULT_DIR, directory)
    meta = json.loads((directory / "model.json").read_text())
    meta["setting"]["image_mean"] = 0.25
    (directory / "model.json").write_text(json.dumps(meta))
    tifffile.imwrite(tmp_path / "y.tif", image.astype(np.float32))
    big = 3.0 * bundled_image("camera", (128, 192))
    tifffile.imwrite(tmp_path / "big.tif", big.astype(np.float32))
    for name, source in (("one", "y.tif"), ("tiles", "big.tif")):
        assert main(["estimate", str(tmp_path / source), "--model", str(directory),
                     "--estimator", "network", "-o",
                     str(tmp_path / f"{name}.json")]) == 0
    capsys.readouterr()
    np.testing.assert_allclose(
        json.loads((tmp_path / "one.json").read_text())["gamma"],
        estimate_gamma(model, image.astype(np.float32))[0], rtol=1e-5)
    tiles, _ = estimate_tiles(big.astype(np.float32), model.regressor,
                              target_mean=0.25 * training_gain(model))
    np.testing.assert_allclose(
        json.loads((tmp_path / "tiles.json").read_text())["gamma_tiles"], tiles,
        rtol=1e-5)


def test_saved_files_follow_the_umask_and_record_their_format(small_setting,
                                                              tmp_path):
    """Files are written with the user's umask (temporary files are 0600: a
    shared model was unreadable by colleagues), and record the format, the
    deepblur and torch versions and the weights' digest."""
    import os

    import deepblur

    net, _ = _tiny_regressor(small_setting)
    previous = os.umask(0o022)
    try:
        save_model(tmp_path / "m", net, small_setting)
    finally:
        os.umask(previous)
    for name in ("model.safetensors", "model.json"):
        assert (tmp_path / "m" / name).stat().st_mode & 0o777 == 0o644
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith(".")]
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["format_version"] == 1
    assert meta["deepblur_version"] == deepblur.__version__
    assert meta["torch_version"] == torch.__version__
    assert len(meta["weights_sha256"]) == 64
    with pytest.warns(UserWarning, match="format_version"):
        save_model(tmp_path / "x", net, small_setting,
                   extra=dict(format_version=7, note="kept"))
    meta = json.loads((tmp_path / "x" / "model.json").read_text())
    assert meta["format_version"] == 1 and meta["note"] == "kept"


def test_load_refuses_mixed_newer_and_damaged_files(small_setting, tmp_path):
    """Weights of one save beside the JSON of another (a save killed between
    its two renames) refuse to load; so do files of a newer format and
    damaged JSON, with errors that name the file."""
    net, _ = _tiny_regressor(small_setting)
    other, _ = _tiny_regressor(small_setting, n_images=48)
    a, b = tmp_path / "a", tmp_path / "b"
    save_model(a, net, small_setting)
    save_model(b, other, small_setting)
    (a / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="model.safetensors in .* is not the file "
                       "model.json was written with"):
        load_model(a)
    meta = json.loads((b / "model.json").read_text())
    for edit, match in (
            (dict(meta, format_version=2, deepblur_version="9.0"),
             r"model.json in .* written in format 2 \(by deepblur 9.0\); this "
             "deepblur reads up to format 1"),
            (dict(meta, format_version="1"), "format_version must be a positive"),
            ([1, 2], "must hold a JSON object; got a list"),
            ({k: v for k, v in meta.items() if k != "module"},
             "model.json in .* lacks 'module': the file is damaged"),
            (dict(meta, grid_shape=3), "model.json in .* holds a malformed entry"),
            # a JSON of another network beside these weights (files written
            # before the digest load as before): torch's raw RuntimeError
            ({k: v for k, v in dict(meta, module=dict(
                meta["module"], width=2 * meta["module"]["width"])).items()
              if k != "weights_sha256"},
             r"model.json does not describe the network of its weights file "
             r"\(size mismatch for stem")):
        (b / "model.json").write_text(json.dumps(edit))
        with pytest.raises(ValueError, match=match):
            load_model(b)
    (b / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="model.json in .* is not valid JSON"):
        load_model(b)
    (b / "model.json").write_text(json.dumps(meta))
    load_model(b)
    (b / "model.safetensors").write_bytes(b"\x00" * 10)
    del meta["weights_sha256"]
    (b / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="model.safetensors in .* cannot be read "
                       "as safetensors"):
        load_model(b)


def test_model_paths_expand_the_home_directory(small_setting, tmp_path,
                                               monkeypatch):
    net, _ = _tiny_regressor(small_setting)
    monkeypatch.setenv("HOME", str(tmp_path))
    save_model("~/models/m", net, small_setting)
    assert (tmp_path / "models" / "m" / "model.json").exists()
    load_model("~/models/m")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory"):
        save_model(tmp_path / "file", net, small_setting)


def test_save_model_keeps_scattered_positions_and_fit_diagnostics(tmp_path):
    """A basis fitted on PSFs at scattered positions came back as a 16x16
    grid from a model directory; its fit diagnostics came back as None."""
    from deepblur import ConeSampler, ConeSimplifier, ProductConvolutionBasis
    from deepblur.pretrained import DEFAULT_SETTING

    rng = np.random.default_rng(0)
    positions = np.array([[2, 3], [5, 12], [9, 4], [13, 13], [7, 8], [1, 14]])
    fields = rng.random((8, 6, 5, 5))
    basis = ProductConvolutionBasis(3, image_shape=(16, 16), positions=positions,
                                    random_state=0).fit(fields)
    gamma = basis.transform(fields)
    cone = ConeSimplifier(n_rays=4).fit(gamma)
    setting = dict(basis=basis, cone=cone, gamma=gamma,
                   sampler=ConeSampler(random_state=0).fit(cone.rays_),
                   params=dict(DEFAULT_SETTING, image_shape=(16, 16),
                               kernel_shape=(5, 5), n_components=3, n_rays=4))
    net = ResNetBlurRegressor(basis=basis, module__width=4, module__depth=1,
                              module__stem_stride=2, max_epochs=1, verbose=0,
                              device="cpu").initialize()
    save_model(tmp_path, net, setting)
    loaded = load_model(tmp_path).basis
    np.testing.assert_array_equal(loaded.positions_, basis.positions_)
    assert loaded.grid_shape_ is None
    np.testing.assert_allclose(loaded.transform(fields), gamma, rtol=1e-5,
                               atol=1e-8)
    assert loaded.reconstruction_error_ == pytest.approx(basis.reconstruction_error_)
    np.testing.assert_allclose(loaded.component_energy_ratio_,
                               basis.component_energy_ratio_)


SYMMETRIC = dict(n_operators=12, image_shape=(16, 16), kernel_shape=(5, 5),
                 grid_shape=(16, 16), n_components=6, n_rays=8,
                 symmetry="dihedral")


def test_dihedral_setting_is_closed_under_rotations_and_flips():
    """symmetry='dihedral': the basis is fitted to the operators and their 8
    transforms, and the cone's rays are Algorithm 1's n_rays / 8 and their
    transforms, so the group maps the rays (and the sampled set) onto
    themselves."""
    from deepblur.operators import CLOSURE_TOLERANCE, dihedral_maps

    setting = make_default_setting(**SYMMETRIC)
    basis, cone, sampler = setting["basis"], setting["cone"], setting["sampler"]
    assert setting["gamma"].shape == (12 * 8, 6)
    forward, _, outside = dihedral_maps(basis.kernels_, basis.maps_)
    assert outside.max() <= CLOSURE_TOLERANCE
    rays = cone.rays_
    assert rays.shape == (8, 6)
    np.testing.assert_array_equal(sampler.generators_, rays)
    scale = np.abs(rays).max()
    for t in range(8):
        moved = rays @ forward[t].T
        gaps = np.abs(moved[:, None] - rays[None]).max(-1).min(1)
        assert gaps.max() < 0.02 * scale        # each turned ray is a ray
    # transformed copies of one operator are one orbit of rays, not two: each
    # ray once, and the rays are the coefficients of the rows they name
    for change in (dict(n_rays=16), dict(image_shape=(32, 32), n_components=4,
                                          n_rays=16)):
        cone = make_default_setting(**dict(SYMMETRIC, **change))["cone"]
        n = len(cone.rays_)
        gaps = np.abs(cone.rays_[:, None] - cone.rays_[None]).max(-1)
        assert 8 <= n <= 16
        assert (gaps + np.eye(n)).min() > 1e-3 * np.abs(cone.rays_).max()
        assert len(set(cone.ray_indices_.tolist())) == n
    named = setting["gamma"][setting["cone"].ray_indices_]
    np.testing.assert_allclose(named / np.linalg.norm(named, axis=1, keepdims=True),
                               rays / np.linalg.norm(rays, axis=1, keepdims=True),
                               atol=0.02)
    plain = make_default_setting(**dict(SYMMETRIC, symmetry=None))
    assert plain["gamma"].shape == (12, 6) and plain["params"]["symmetry"] is None


@pytest.mark.parametrize("change, match", [
    (dict(symmetry="rotations"), "symmetry must be one of"),
    (dict(image_shape=(16, 20)), "square images and grids"),
    (dict(kernel_shape=(4, 4)), "odd kernel sizes"),
    # a quarter turn of 3 x 5 kernels: dihedral_transform's 'a quarter turn
    # (t=1) needs square images; got shape (3, 5)', after the operators
    (dict(kernel_shape=(3, 5)), "needs square kernels.*got \\(3, 5\\)"),
    (dict(n_rays=12), "n_rays a multiple of 8"),
    # which components the CP fit keeps depends on the BLAS's summation
    # order and library versions: K=4, not closed when this test was written,
    # is closed (1.8e-5 outside) with numpy 2.4.6 and scipy 1.17.1; K=2 is
    # 100 % outside
    (dict(n_components=2), "is not closed under them"),
])
def test_dihedral_setting_bad_input(change, match):
    with pytest.raises(ValueError, match=match):
        make_default_setting(**dict(SYMMETRIC, **change))


def test_dihedral_model_trains_saves_and_loads_with_test_time_augmentation(
        tmp_path):
    """A network trained in a setting closed under rotations and flips
    predicts (and is checked and calibrated) with the averaging over the 8
    copies; the model records it, and files without the record turn it on
    for such a setting."""
    from deepblur.pretrained import load_default, train_regressor

    setting = make_default_setting(**SYMMETRIC)
    pool = np.random.default_rng(0).random((10, 16, 16)) + 0.1
    net = train_regressor(setting, pool, n_images=16, epochs=1, batch_size=8,
                          width=4, depth=1, stem_stride=2, num_workers=0,
                          device="cpu", verbose=0)
    assert net.test_time_augmentation == "dihedral"
    save_model(tmp_path / "on", net, setting)
    model = load_model(tmp_path / "on")
    assert model.setting["symmetry"] == "dihedral"
    assert model.regressor.test_time_augmentation == "dihedral"
    np.testing.assert_array_equal(model.sampler.generators_, setting["cone"].rays_)
    np.testing.assert_array_equal(model.cone.rays_, setting["cone"].rays_)
    np.testing.assert_array_equal(model.cone.ray_indices_,
                                  setting["cone"].ray_indices_)
    X = np.random.default_rng(0).random((2, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(model.regressor.predict(X), net.predict(X),
                               rtol=1e-5, atol=1e-6)
    save_model(tmp_path / "off", net.set_params(test_time_augmentation=None),
               setting)
    assert load_model(tmp_path / "off").regressor.test_time_augmentation is None
    meta = json.loads((tmp_path / "off" / "model.json").read_text())
    del meta["test_time_augmentation"], meta["weights_sha256"]   # older files
    (tmp_path / "off" / "model.json").write_text(json.dumps(meta))
    assert (load_model(tmp_path / "off").regressor.test_time_augmentation
            == "dihedral")
    meta["test_time_augmentation"] = "rotate"
    (tmp_path / "off" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="test_time_augmentation must be null"):
        load_model(tmp_path / "off")
    shipped = load_default()
    assert shipped.setting["symmetry"] is None
    assert shipped.regressor.test_time_augmentation is None


def test_ctrl_c_during_a_save_lands_after_both_files(small_setting, tmp_path,
                                                     monkeypatch, request):
    """A Ctrl-C between the renames of a model's two files is held until both
    are in place: the directory holds the new model whole, then the
    interrupt is raised."""
    import os
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    net, _ = _tiny_regressor(small_setting)
    other, _ = _tiny_regressor(small_setting, n_images=48)
    save_model(tmp_path, net, small_setting)
    replace = os.replace
    calls = []

    def interrupted(src, dst):
        calls.append(dst)
        if len(calls) == 2:                  # the new weights are in place
            os.kill(os.getpid(), signal.SIGINT)
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_model(tmp_path, other, small_setting)
    monkeypatch.undo()
    X = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    np.testing.assert_allclose(load_model(tmp_path).regressor.predict(X),
                               other.predict(X), rtol=1e-6)


def test_a_directory_missing_one_file_of_a_pair_says_which(small_setting,
                                                           tmp_path):
    net, _ = _tiny_regressor(small_setting)
    save_model(tmp_path, net, small_setting)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="holds model.json but not "
                       "model.safetensors: the directory is incomplete"):
        load_model(tmp_path)


@pytest.mark.parametrize("boundary", ["model", "unknown"])
def test_deblur_image_brings_the_operator_to_unit_psf_mass(boundary):
    """deblur_image rescales the operator to PSFs of mass 1 with either
    boundary: a scene blurred with a zero boundary by a 3x3 box of mass 1
    (scipy's), given twice that operator (its gain is not identifiable), is
    restored as the true operator restores it, at the scene's brightness, as
    bright as deblur_large restores the same scene one row taller. With
    boundary="model" the operator was divided by its whole gain (0.918 on
    16x16, the zero boundary's losses included): the restored interior came
    out 8.2 % darker than the scene and than the larger image."""
    from scipy.ndimage import gaussian_filter, uniform_filter

    from deepblur import ProductConvolutionBasis
    from deepblur.pretrained import PretrainedModel, deblur_image
    from deepblur.solvers.tv import deblur
    from deepblur.tiling import deblur_large

    class Fixed:                        # the regressor of deblur_large
        def predict(self, X):
            return np.full((len(X), 1), 2.0)

    box = ProductConvolutionBasis.from_components(np.full((1, 3, 3), 1 / 9),
                                                  np.ones((1, 16, 16)))
    model = PretrainedModel(box, None, None, Fixed(), 0.01, {"image_mean": 0.5})
    clean = 0.3 + gaussian_filter(np.random.default_rng(2).random((17, 16)), 3.0)
    y = uniform_filter(clean[:16], 3, mode="constant")
    solve = dict(lam=1e4, tol=1e-6, max_iter=400)      # deblur_image: float32
    restored, gamma = deblur_image(model, y, gamma=[2.0], boundary=boundary,
                                   **solve)
    np.testing.assert_allclose(gamma, [1.0])
    inside = (slice(2, -2), slice(2, -2))
    assert restored[inside].mean() == pytest.approx(clean[:16][inside].mean(),
                                                    rel=1e-3)
    if boundary == "model":
        # the true operator's solve (scipy's box: its own adjoint), at mean 0.5
        scale = 0.5 / y.mean()

        def apply_box(u):
            return torch.from_numpy(uniform_filter(u.numpy(), (1, 3, 3),
                                                   mode="constant"))

        ref, _ = deblur(torch.from_numpy(y * scale)[None], apply_box, apply_box,
                        1e4, tol=1e-8, max_iter=400)
        np.testing.assert_allclose(restored, ref[0].numpy() / scale,
                                   atol=1e-3 * y.max())
    taller = deblur_large(uniform_filter(clean, 3, mode="constant"),
                          (box, Fixed()), boundary=boundary, **solve)
    assert taller.grid.n_tiles == 2
    assert taller.restored[:16][inside].mean() == pytest.approx(
        restored[inside].mean(), rel=1e-3)


def test_unit_gain_of_an_image_no_larger_than_the_kernels():
    """An image with no pixel half a kernel from its border (9x9 kernels on
    8x8): operator_gain(interior=True) is the mean mass of the PSFs
    (sum_k gamma_k sum(e_k) f_k(x), averaged over the pixels), and
    deblur_image rescales to it with either boundary. It raised 'the images
    8x8 are too small for kernels (9, 9)', which since unit gain is the PSFs'
    mass with boundary="model" too (c0bae16) refused deblur_image,
    TVDeblurrer(unit_gain=True) and deblur_large there, where the whole
    gain had been used."""
    from deepblur import ProductConvolutionBasis, TVDeblurrer
    from deepblur.pretrained import PretrainedModel, deblur_image, operator_gain

    rng = np.random.default_rng(0)
    kernels = rng.random((2, 9, 9))
    maps = np.stack([np.linspace(0.2, 1.0, 64).reshape(8, 8),
                     np.full((8, 8), 0.5)])
    basis = ProductConvolutionBasis.from_components(kernels, maps)
    gamma = np.array([1.5, 0.25])
    # the PSF at each pixel, summed (pixel by pixel, as the model defines it)
    mass = np.mean([sum(gamma[k] * basis.maps_[k][i, j] * basis.kernels_[k].sum()
                        for k in range(2)) for i in range(8) for j in range(8)])
    assert operator_gain(basis, gamma, interior=True) == pytest.approx(mass)
    np.testing.assert_allclose(operator_gain(basis, np.stack([gamma, 2 * gamma]),
                                             interior=True), [mass, 2 * mass])
    # with flat maps, the gain half a kernel from the border of a larger
    # image, where there is one: the same
    flat = [ProductConvolutionBasis.from_components(kernels, np.ones((2,) + s))
            for s in ((8, 8), (24, 24))]
    assert operator_gain(flat[0], gamma, interior=True) == pytest.approx(
        operator_gain(flat[1], gamma, interior=True))
    model = PretrainedModel(basis, None, None, None, 0.01, {"image_mean": 0.5})
    y = 0.5 + rng.random((8, 8))
    for boundary in ("model", "unknown"):
        _, used = deblur_image(model, y, gamma=gamma, boundary=boundary,
                               max_iter=2)
        np.testing.assert_allclose(used, gamma / mass)
    U = TVDeblurrer(basis, unit_gain=True, boundary="model", lam=10.0,
                    max_iter=2, device="cpu").fit().transform(y, gamma=gamma)
    assert np.isfinite(U).all()


def test_deblur_image_does_not_warn_about_counts_it_scaled_itself():
    """deblur_image scales the image to the model's mean before the solve: a
    sparse image may then peak far above 1 (here one pixel of 8 192, whole
    numbers at mean 0.5), which is not a user's counts; lam='auto''s
    warning about counts ("divide the images...") must not fire there."""
    import warnings

    from deepblur.pretrained import deblur_image, load_default

    model = load_default()
    image = np.zeros(model.basis.image_shape_)
    image[40, 70] = 0.5 * image.size               # mean 0.5: scaled by 1
    gamma = model.sampler.sample(1)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", category=Warning,
                                message=".*(max_iter|converge).*")
        restored, _ = deblur_image(model, image, gamma=gamma, boundary="model",
                                   max_iter=3)
    assert restored.shape == image.shape


def test_a_loaded_network_refuses_a_basis_of_another_image_shape(small_setting,
                                                                 tmp_path):
    """A loaded network had no image_shape_ (AttributeError, though documented
    as None), so a basis of another image shape set on it was taken without a
    word: its estimates were returned as the new maps' coefficients. It was
    trained with the basis it is saved with, whose shape it now records."""
    from deepblur import ProductConvolutionBasis

    net, X = _tiny_regressor(small_setting)
    save_model(tmp_path, net, small_setting)
    regressor = load_model(tmp_path).regressor
    assert regressor.image_shape_ == net.image_shape_ == (16, 16)
    basis = small_setting["basis"]
    rng = np.random.default_rng(0)
    larger = ProductConvolutionBasis.from_components(
        basis.kernels_, rng.random((len(basis.kernels_), 24, 24)))
    regressor.set_params(basis=larger)
    with pytest.raises(ValueError, match=r"basis has image shape \(24, 24\), "
                                         r"but this network was trained with "
                                         r"a basis of image shape \(16, 16\)"):
        regressor.predict(rng.random((2, 24, 24)))


def test_save_model_names_what_the_setting_lacks(small_setting, tmp_path):
    """A setting without the calibration gamma (the dict a script builds from
    a loaded model's basis, cone and sampler) is refused by name, before
    anything is written: it failed with a bare KeyError: 'gamma' (and a
    loaded model passed as the setting, with 'tuple indices must be
    integers')."""
    from deepblur.pretrained import load_default

    net, _ = _tiny_regressor(small_setting)
    partial = {k: v for k, v in small_setting.items() if k != "gamma"}
    with pytest.raises(ValueError, match=r"without 'gamma'.*cone\.gamma"):
        save_model(tmp_path / "m", net, partial)
    with pytest.raises(ValueError, match="got a PretrainedModel"):
        save_model(tmp_path / "m", net, load_default())
    assert not (tmp_path / "m").exists()
    save_model(tmp_path / "m", net, small_setting)
    assert (tmp_path / "m" / "model.safetensors").is_file()


def test_save_model_refuses_a_network_trained_with_a_basis_of_another_shape(
        small_setting, tmp_path):
    """A network trained on 16x16 images whose basis was set since to one of
    24x24 (which its predict refuses) was saved with a setting of that basis
    and loaded as trained on it (load_model records the saved basis's shape
    as image_shape_): its predict then took 24x24 images without a word."""
    from deepblur import ProductConvolutionBasis

    net, X = _tiny_regressor(small_setting)
    basis = small_setting["basis"]
    rng = np.random.default_rng(0)
    larger = ProductConvolutionBasis.from_components(
        basis.kernels_, rng.random((len(basis.kernels_), 24, 24)))
    net.set_params(basis=larger)
    with pytest.raises(ValueError, match=r"trained with a basis of image shape "
                                         r"\(16, 16\) \(its image_shape_\), but "
                                         r"the setting's basis has image shape "
                                         r"\(24, 24\)"):
        save_model(tmp_path, net, dict(small_setting, basis=larger))
    assert not list(tmp_path.iterdir())             # nothing written
    # in the basis it was trained with, it saves and loads as before
    net.set_params(basis=basis)
    save_model(tmp_path, net, small_setting)
    assert load_model(tmp_path).regressor.image_shape_ == (16, 16)
