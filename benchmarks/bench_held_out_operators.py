"""Blur estimators on operators that are not draws of their sampler.

The paper's protocol (``bench_regressor.py``, ``bench_paired.py``) tests on
``gamma`` drawn by the same sampler (Algorithm 2) as the training ones. Real
blur is not such a draw. This benchmark draws **held-out operators of the
random family the basis and the cone were fitted on**
(:func:`deepblur.datasets.make_random_operators` with the setting's
parameters and another seed), takes their coefficients in the model's basis
(so the basis's approximation error is left out: every test image is
``H[gamma] u + eta`` with ``gamma`` exactly representable), rescales each to
the mean gain of the training operators (what
:func:`deepblur.pretrained.estimate_gamma` does to a real image's intensity)
and prints, beside draws of the sampler on the same clean patches:

- how far these ``gamma`` lie from the set the sampler fills (relative
  distance in the operator metric), and the same for the calibration
  operators themselves;
- the mean relative operator error (and its direction part) of the shipped
  network (zero boundary) and spectral regressor (crop boundary), raw and
  projected on the sampler's set (``project=True``), the paired change per
  image, and the mean-gamma baseline on the same images.

``--blind`` runs the same comparison for a :class:`deepblur.BlindDeblurrer`
fitted in a small setting (64x64 images, K=6, 12 rays, a spectral regressor
on 20 000 images, its sampler's alpha range from the calibration norms).

Usage: ``python benchmarks/bench_held_out_operators.py [--n 512] [--model DIR]
[--blind]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from deepblur.datasets import (
    extract_patches,
    load_microscopy_images,
    make_random_operators,
    natural_image_split,
)
from deepblur.datasets.simulate import blur_images
from deepblur.pretrained import load_model, relative_errors, training_gain
from deepblur.pretrained._apply import operator_gain
from deepblur.pretrained._io import DEFAULT_DIR, has_spectral


def family_operators(model, n, random_state):
    """Coefficients of ``n`` fresh operators of the model's random family.

    :func:`~deepblur.datasets.make_random_operators` with the model's setting
    (image, kernel and grid shapes), in the model's basis, each rescaled to
    the mean gain of the training operators (:func:`training_gain`).
    """
    params = model.setting
    fields = make_random_operators(
        n, image_shape=params["image_shape"], kernel_shape=params["kernel_shape"],
        grid_shape=params["grid_shape"], random_state=random_state).psf_fields
    g = model.basis.transform(fields)
    return g * (training_gain(model) / operator_gain(model.basis, g))[:, None]


def _distance_to_set(sampler, g, G):
    """Relative distance (operator metric) of each row of ``g`` to the set."""
    return relative_errors(g, sampler.project(g, gram=G), G)["operator"]


def _compare(label, g, y, regressor, sampler, G, mean_gamma):
    raw = regressor.predict(y).astype(np.float64)
    rows = {"raw": raw, "projected": sampler.project(raw, gram=G),
            "mean gamma": np.tile(mean_gamma, (len(g), 1))}
    err = {k: relative_errors(g, v, G) for k, v in rows.items()}
    base = err["mean gamma"]["operator"].mean()
    for k in ("raw", "projected"):
        e = err[k]
        print(f"{label} {k:>9}: operator {100 * e['operator'].mean():6.2f} % "
              f"(direction {100 * e['direction'].mean():5.2f} %), "
              f"{e['operator'].mean() / base:.3f} x the mean-gamma baseline "
              f"({100 * base:.2f} %)")
    d = err["projected"]["operator"] - err["raw"]["operator"]
    print(f"{label} projected - raw: {100 * d.mean():+.3f} +- "
          f"{100 * d.std() / np.sqrt(len(d)):.3f} points per image, worse on "
          f"{100 * np.mean(d > 1e-9):.0f} % of the images", flush=True)


def shipped(n, seed, directory=DEFAULT_DIR):
    network = load_model(directory)
    estimators = [("network", network, "zero")]
    if has_spectral(directory):
        estimators.append(("spectral", load_model(directory, "spectral"), "crop"))
    basis, sampler, params = network.basis, network.sampler, network.setting
    G = basis.gram_
    calibration = family_operators(network, params["n_operators"],
                                   params["random_state"])
    held_out = family_operators(network, n, params["random_state"] + 12345)
    draws = sampler.sample(n)
    mean_gamma = sampler.sample(50_000).mean(0)
    for name, g in (("calibration operators", calibration),
                    ("held-out operators", held_out), ("sampler draws", draws)):
        dist = _distance_to_set(sampler, g, G)
        print(f"{name:>22}: distance to the sampled set / norm: median "
              f"{100 * np.median(dist):.2f} %, 90th percentile "
              f"{100 * np.percentile(dist, 90):.2f} %; inside "
              f"{100 * np.mean(dist < 1e-6):.0f} %")
    rng = np.random.RandomState(seed)
    sets = {"natural": natural_image_split()[1],
            "microscopy": load_microscopy_images()}
    shape = tuple(params["image_shape"])
    for set_name, source in sets.items():
        u = extract_patches(source, n, shape, random_state=rng)
        for g_name, g in (("held-out", held_out), ("draws", draws)):
            for est_name, model, boundary in estimators:
                y = blur_images(u, g, basis, noise_std=network.setting["noise_std"],
                                boundary=boundary, random_state=rng)
                _compare(f"{set_name:>10} {g_name:>8} {est_name:>8}", g, y,
                         model.regressor, sampler, G, mean_gamma)


def blind(n, seed):
    from deepblur import (
        BlindDeblurrer,
        ConeSimplifier,
        ProductConvolutionBasis,
        SpectralBlurRegressor,
    )

    shape, K = (64, 64), 6
    family = dict(image_shape=shape, kernel_shape=(15, 15), grid_shape=(8, 8))
    calibration = make_random_operators(200, random_state=0, **family)
    held = make_random_operators(n, random_state=1, **family)
    train, test = natural_image_split()
    clean = extract_patches(train, 2000, shape, random_state=0)
    model = BlindDeblurrer(basis=ProductConvolutionBasis(K, image_shape=shape),
                           cone=ConeSimplifier(n_rays=2 * K),
                           regressor=SpectralBlurRegressor(window=16),
                           n_train_images=20_000, random_state=0)
    t = time.perf_counter()
    model.fit(clean, clean, psf_fields=calibration.psf_fields)   # X: shape only
    print(f"BlindDeblurrer fitted in {time.perf_counter() - t:.0f} s; sampler "
          f"alpha range {np.round(model.sampler_.alpha_range, 3)}")
    basis, sampler = model.basis_, model.sampler_
    G = basis.gram_
    mean_gamma = sampler.sample(20_000).mean(0)
    rng = np.random.RandomState(seed)
    u = extract_patches(test, n, shape, random_state=rng)
    for name, g in (("held-out", basis.transform(held.psf_fields)),
                    ("draws", sampler.sample(n))):
        dist = _distance_to_set(sampler, g, G)
        print(f"{name:>8}: distance to the sampled set / norm: median "
              f"{100 * np.median(dist):.2f} %; inside "
              f"{100 * np.mean(dist < 1e-6):.0f} %")
        y = blur_images(u, g, basis, noise_std=0.01, random_state=rng)
        _compare(f"blind {name:>8}", g, y, model.regressor_, sampler, G, mean_gamma)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=512, help="operators and images per set")
    p.add_argument("--seed", type=int, default=5)
    p.add_argument("--blind", action="store_true",
                   help="a BlindDeblurrer in a small setting instead of the "
                        "shipped model")
    p.add_argument("--model", default=str(DEFAULT_DIR),
                   help="model directory (default: the shipped one); its "
                        "spectral regressor too when it holds one")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.blind:
        blind(args.n, args.seed)
    else:
        shipped(args.n, args.seed, args.model)


if __name__ == "__main__":
    main()
