"""The model shipped in deepblur/pretrained/default: loads on CPU, and its
accuracy on small held-out sets is what benchmarks/README.md reports.

The natural-image target of the issue (3 %) is not met yet; these tests pin
the shipped model's measured level (4.5 % natural, 4.2 % microscopy on 2 048
images each, raw as load_default gives them; 3.7 % without noise and 6.7 % at
three times the protocol's noise) with a margin for the smaller sets here,
and require it to beat the mean-gamma baseline (23-24 %) by a wide margin.
"""

import json

import numpy as np
import pytest
import torch

from deepblur.datasets import (
    extract_patches,
    load_microscopy_images,
    make_blurred_images,
    make_point_sources,
    natural_image_split,
)
from deepblur.pretrained import load_default, relative_errors
from deepblur.pretrained._io import DEFAULT_DIR


@pytest.fixture(scope="module")
def model():
    return load_default()


def test_loads_on_cpu_without_pickle(model):
    assert model.regressor.device == "cpu"
    assert all(p.device == torch.device("cpu")
               for p in model.regressor.module_.parameters())
    assert model.basis.kernels_.shape[0] == model.sampler.generators_.shape[1] == 20
    # trained on noise drawn in [0, 0.02], which predict's check knows; the
    # setting's (the protocol's test noise) is 0.01
    assert model.noise_std == (0.0, 0.02)
    assert model.setting["noise_std"] == pytest.approx(0.01)
    assert model.regressor.noise_level_ == pytest.approx(0.02)
    assert sorted(p.name for p in DEFAULT_DIR.iterdir()) == [
        "crop_network.json", "crop_network.safetensors", "model.json",
        "model.safetensors", "spectral.json", "spectral.safetensors"]


def _errors(model, images, seed, noise_std=None, n=96):
    X, y = make_blurred_images(images, model.basis, model.sampler, n,
                               noise_std=model.setting["noise_std"]
                               if noise_std is None else noise_std,
                               boundary=model.setting["boundary"],
                               random_state=seed)
    mean_gamma = model.sampler.sample(20_000).mean(axis=0)
    err = relative_errors(y, model.regressor.predict(X), model.basis.gram_)
    base = relative_errors(y, np.tile(mean_gamma, (len(y), 1)), model.basis.gram_)
    return err["operator"].mean(), base["operator"].mean()


def test_accuracy_on_held_out_natural_images(model):
    _, test_images = natural_image_split()
    err, base = _errors(model, test_images, seed=2024)
    recorded = json.loads((DEFAULT_DIR / "model.json").read_text())
    assert err < recorded["test_operator_error"] + 0.02
    assert err < 0.4 * base


@pytest.mark.parametrize("noise_std", [0.0, 0.03])
def test_accuracy_holds_at_other_noise_levels(model, noise_std):
    """Trained on noise uniform in [0, 0.02]: without noise and at three
    times the protocol's noise the error stays within 0.7 points of what
    model.json records (bench_regressor.py, 1 024 images). A network trained
    at 0.01 alone fails this (one was at 5.9 and 9.3 % here where model.json
    recorded 5.0 and 8.4 %)."""
    _, test_images = natural_image_split()
    err, base = _errors(model, test_images, seed=2025, noise_std=noise_std)
    recorded = json.loads((DEFAULT_DIR / "model.json").read_text())
    assert err < recorded["test_operator_error_by_noise"][str(noise_std)] + 0.007
    assert err < 0.4 * base


def test_accuracy_on_microscopy_images(model):
    patches = extract_patches(load_microscopy_images(), 200, (128, 128),
                              random_state=0)
    err, base = _errors(model, patches, seed=7)
    assert err < 0.08
    assert err < 0.4 * base


def test_projected_estimates_are_never_worse_on_sampler_draws(model):
    """``project=True`` projects on the sampler's support: on blur drawn from
    the sampler no image is worse. Raw estimates by default."""
    raw = model.regressor
    assert raw.sampler is model.sampler and raw.project is False
    model = load_default(project=True)
    assert model.regressor.sampler is model.sampler and model.regressor.project
    _, test_images = natural_image_split()
    X, y = make_blurred_images(test_images, model.basis, model.sampler, 64,
                               noise_std=model.setting["noise_std"],
                               random_state=99)
    gram = model.basis.gram_
    before = relative_errors(y, raw.predict(X), gram)["operator"]
    after = relative_errors(y, model.regressor.predict(X), gram)["operator"]
    assert (after <= before + 1e-6).all() and after.mean() < before.mean()


# ------------------------------------------------ the spectral regressor
def test_support_check_flags_point_sources_and_windows_not_natural_images(model):
    """The shipped network's support_tolerance (0.06, model.json: deepblur
    train's rule, the 99.9th percentile of training-like images' distances,
    0.0538, rounded up): silent on held-out natural and microscopy images at
    the protocol's noise (largest distances 0.021 and 0.012 on these 64
    each); it flags some of the sparse point-source fields on a dark field
    (5 of these 64; 9 at 0.05), whose estimates are bad, and half of the
    windows of a larger scene (crop boundary; 8 of these 16), where the
    zero-boundary network is unreliable. (The network of session 34 gave
    the same counts; the one before it, at 0.05, flagged a third of the
    point fields and almost every window.)"""
    import warnings

    from deepblur.datasets import blur_images
    from deepblur.exceptions import OutOfSupportWarning

    reg = model.regressor
    tol = reg.support_tolerance
    assert tol == 0.06 and reg.sampler is model.sampler
    assert load_default("crop_network").regressor.support_tolerance == 0.1
    assert load_default("spectral").regressor.support_tolerance is None
    _, test_images = natural_image_split()
    rng = np.random.RandomState(5)
    shape = tuple(model.basis.image_shape_)
    natural = extract_patches(test_images, 64, shape, random_state=rng)
    micro = extract_patches(load_microscopy_images(), 64, shape, random_state=rng)
    gamma = model.sampler.sample(64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfSupportWarning)
        for u in (natural, micro):
            reg.predict(blur_images(u, gamma, model.basis, noise_std=0.01,
                                    random_state=rng))
    points = make_point_sources(64, shape, density=0.0005, random_state=rng)
    X = blur_images(points, gamma, model.basis, noise_std=0.01, random_state=rng)
    far = reg.support_distance(X) > tol
    assert 0.03 < far.mean() < 0.7
    with pytest.warns(OutOfSupportWarning, match=f"{far.sum()} of 64 images"):
        estimates = reg.predict(X)
    err = relative_errors(gamma, estimates, model.basis.gram_)["operator"]
    assert err[far].mean() > 0.25 and err[far].mean() > err[~far].mean()
    windows = blur_images(natural[:16], gamma[:16], model.basis, noise_std=0.01,
                          boundary="crop", random_state=rng)
    far = reg.support_distance(windows) > tol
    assert far.sum() >= 6
    with pytest.warns(OutOfSupportWarning, match=f"{far.sum()} of 16 images"):
        reg.predict(windows)


def test_estimate_gamma_warns_about_an_image_far_noisier_than_training(model):
    """At the protocol's noise nothing is said; at 0.1, five times the top
    of the training noise, a NoisyImageWarning (the error there is 15 %,
    against 4.5 % at 0.01)."""
    import warnings

    from deepblur.datasets.simulate import blur_images
    from deepblur.exceptions import NoisyImageWarning
    from deepblur.pretrained import bundled_image, estimate_gamma

    u, gamma = bundled_image("camera")[None], model.sampler.sample(1)
    for noise in (0.0, 0.01):
        y = blur_images(u, gamma, model.basis, noise_std=noise, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("error", NoisyImageWarning)
            estimate_gamma(model, 40.0 * y[0])  # any intensity scale
    y = blur_images(u, gamma, model.basis, noise_std=0.1, random_state=0)
    with pytest.warns(NoisyImageWarning, match=r"1 of 1 images .* \(median\), "
                                               r"(4|5|6) times that"):
        estimate_gamma(model, 40.0 * y[0])


@pytest.fixture(scope="module")
def spectral():
    return load_default(estimator="spectral")


def test_spectral_regressor_loads_for_real_images(spectral, model):
    assert type(spectral.regressor).__name__ == "SpectralBlurRegressor"
    assert spectral.setting["boundary"] == "crop"
    assert spectral.noise_std == (0.005, 0.05)
    assert spectral.regressor.noise_level_ == 0.05
    np.testing.assert_array_equal(spectral.basis.gram_, model.basis.gram_)
    assert spectral.regressor.coef_.shape == (578, 20)


@pytest.mark.parametrize("name", ["natural", "microscopy", "points"])
def test_spectral_regressor_beats_the_mean_operator_on_windows(spectral, name):
    """Held-out windows of larger scenes (crop boundary), sigma = 0.01.

    Recorded in spectral.json on 512 images per set (16.8-18.5 % against a
    baseline of 23.8-24.4 %; benchmarks/README.md); where the network,
    trained with a zero boundary, is worse than the baseline (42-53 %).
    """
    rng = np.random.RandomState(5)
    images = {"natural": lambda: natural_image_split()[1],
              "microscopy": lambda: extract_patches(
                  load_microscopy_images(), 200, (128, 128), random_state=rng),
              "points": lambda: make_point_sources(200, (128, 128),
                                                   random_state=rng)}[name]()
    err, base = _errors(spectral, images, seed=11, noise_std=0.01)
    recorded = json.loads((DEFAULT_DIR / "spectral.json").read_text())
    assert err < recorded["test_errors"][name]["operator"] + 0.03
    assert err < 0.85 * base


# ------------------------------------------------ the network for windows
@pytest.fixture(scope="module")
def crop():
    return load_default(estimator="crop_network")


def test_crop_network_loads_on_cpu_for_real_images(crop, model):
    assert type(crop.regressor).__name__ == "ResNetBlurRegressor"
    assert crop.regressor.device == "cpu"
    assert all(p.device == torch.device("cpu")
               for p in crop.regressor.module_.parameters())
    assert crop.setting["boundary"] == "crop"
    assert crop.noise_std == (0.0, 0.05)
    assert crop.regressor.noise_level_ == 0.05
    np.testing.assert_array_equal(crop.basis.gram_, model.basis.gram_)
    meta = json.loads((DEFAULT_DIR / "crop_network.json").read_text())
    assert meta["training"]["script"] == "examples/train_crop_model.py"
    assert (DEFAULT_DIR / "crop_network.safetensors").stat().st_size < 2_000_000


@pytest.mark.parametrize("name", ["natural", "microscopy", "points"])
def test_crop_network_beats_the_spectral_regressor_on_windows(crop, spectral,
                                                              name):
    """Held-out windows of larger scenes (crop boundary), sigma = 0.01.

    Both estimators on the same images: the crop network's error is the one
    recorded in crop_network.json on 512 images per set (with a margin for
    the smaller set here), below the mean operator's, and not above the
    spectral regressor's (benchmarks/README.md: lower on every set measured,
    by 5 points on point sources).
    """
    rng = np.random.RandomState(7)
    images = {"natural": lambda: natural_image_split()[1],
              "microscopy": lambda: extract_patches(
                  load_microscopy_images(), 200, (128, 128), random_state=rng),
              "points": lambda: make_point_sources(200, (128, 128),
                                                   random_state=rng)}[name]()
    X, y = make_blurred_images(images, crop.basis, crop.sampler, 96,
                               noise_std=0.01, boundary="crop", random_state=17)
    gram = crop.basis.gram_
    err = relative_errors(y, crop.regressor.predict(X), gram)["operator"].mean()
    other = relative_errors(y, spectral.regressor.predict(X), gram)["operator"]
    base = relative_errors(y, np.tile(crop.sampler.sample(20_000).mean(0),
                                      (len(y), 1)), gram)["operator"].mean()
    recorded = json.loads((DEFAULT_DIR / "crop_network.json").read_text())
    assert err < recorded["test_errors"][name]["operator"] + 0.03
    assert err < 0.85 * base
    assert err < other.mean() + (0.005 if name != "points" else -0.02)


# ------------------------------------------------ the point-source fit
def test_point_source_fit_meets_the_microscopy_target_on_points():
    """Simulated single-molecule images (density 0.002, sigma = 0.01, zero
    boundary): the issue's < 5 % on point sources, where the network is at
    51 % and the spectral regressor at 14 % (bench_point_sources.py,
    benchmarks/README.md). Nothing is trained: the fit starts from the mean
    operator of the cone."""
    points = load_default(estimator="points")
    assert type(points.regressor).__name__ == "PointSourceBlurEstimator"
    images = make_point_sources(16, (128, 128), random_state=3)
    err, base = _errors(points, images, seed=13, n=16)
    assert err < 0.05
    assert err < 0.2 * base
