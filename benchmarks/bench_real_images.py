"""Blind deblurring of windows of larger scenes with the shipped estimators.

What a user's image is: a window on a larger scene (``boundary="crop"`` of the
simulator, no dark border). For held-out natural images, the bundled
microscopy images and simulated point sources (``--n`` windows each, operators
from the shipped sampler, noise sigma = ``--noise``), the operator is
estimated by the shipped estimators (the zero-boundary network, the network
trained on windows and the spectral regressor), and the
window is deblurred the way ``deepblur deblur`` does it
(:func:`deepblur.pretrained.deblur_image`: operator rescaled to unit gain,
the scene outside the window estimated with it, ``lam="auto"``; TV,
and l1 with ``positive`` for point sources) with:

* the true operator (the reference),
* the estimate of the network trained on windows (``crop_network``),
* the spectral regressor's estimate,
* the network's estimate,
* the mean operator of the cone (the best constant guess).

Printed per set: the mean relative operator error of each estimate (as
``deepblur estimate`` gives it: the window is scaled to the training mean
first, so the gain is not estimated) and its direction error (after the best
rescaling, what matters to the deblurring, which rescales the operator to
unit gain), and the mean SNR (dB) of the deblurred window against the clean
one, on the whole window and on its interior (half a kernel from the
border), beside the SNR of the blurry window itself.

Usage: ``python benchmarks/bench_real_images.py [--n 32] [--max-iter 300]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from deepblur.datasets import (
    extract_patches,
    load_microscopy_images,
    make_point_sources,
    natural_image_split,
)
from deepblur.datasets.simulate import blur_images
from deepblur.metrics import snr
from deepblur.pretrained import (
    deblur_image,
    estimate_gamma,
    load_default,
    relative_errors,
)
from deepblur.pretrained._apply import _interior


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32, help="windows per set")
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--max-iter", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # the same iteration cap for every operator: the comparison is fair
    warnings.filterwarnings("ignore", message="deblur reached max_iter")
    network, spectral = load_default(), load_default(estimator="spectral")
    crop = load_default(estimator="crop_network")
    basis, sampler = network.basis, network.sampler
    shape = tuple(basis.image_shape_)
    rows, cols = np.nonzero(_interior(basis))
    inside = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    mean_gamma = sampler.sample(50_000).mean(axis=0)
    rng = np.random.RandomState(2026)
    sets = {
        "natural": (extract_patches(natural_image_split()[1], args.n, shape,
                                    random_state=rng), "tv", False),
        "microscopy": (extract_patches(load_microscopy_images(), args.n, shape,
                                       random_state=rng), "tv", False),
        "points": (make_point_sources(args.n, shape, random_state=rng), "l1", True),
    }
    print(f"{args.n} windows per set, crop boundary, noise {args.noise}, "
          f"lam auto, max_iter {args.max_iter}")
    print("| Set | Operator | Operator error | Direction error | SNR whole (dB) "
          "| SNR interior (dB) |")
    print("|---|---|---|---|---|---|")
    t0 = time.perf_counter()
    for name, (clean, regularization, positive) in sets.items():
        clean = clean[clean.mean(axis=(1, 2)) > 1e-6]
        clean = clean * (0.5 / clean.mean(axis=(1, 2), keepdims=True))
        gamma = sampler.sample(len(clean))
        blurry = blur_images(clean, gamma, basis, noise_std=args.noise,
                             boundary="crop", random_state=rng)
        operators = {
            "true": gamma,
            "crop network": np.stack([estimate_gamma(crop, y)[0] for y in blurry]),
            "spectral": np.stack([estimate_gamma(spectral, y)[0] for y in blurry]),
            "network": np.stack([estimate_gamma(network, y)[0] for y in blurry]),
            "mean gamma": np.tile(mean_gamma, (len(clean), 1)),
        }
        scale = 0.5 / blurry.mean(axis=(1, 2))
        whole = [snr(u, y * s) for u, y, s in zip(clean, blurry, scale, strict=True)]
        part = [snr(u[inside], (y * s)[inside])
                for u, y, s in zip(clean, blurry, scale, strict=True)]
        print(f"| {name} | (blurry window) | | | {np.mean(whole):.2f} | "
              f"{np.mean(part):.2f} |")
        for label, g in operators.items():
            err = relative_errors(gamma, g, basis.gram_)
            whole, part = [], []
            for u, y, gi, s in zip(clean, blurry, g, scale, strict=True):
                out, _ = deblur_image(network, y, gamma=gi, lam="auto",
                                      regularization=regularization,
                                      positive=positive, max_iter=args.max_iter)
                whole.append(snr(u, out * s))
                part.append(snr(u[inside], (out * s)[inside]))
            shown = " | " if label == "true" else (
                f"{100 * err['operator'].mean():.1f} % | "
                f"{100 * err['direction'].mean():.1f} %")
            print(f"| {name} | {label} | {shown} | {np.mean(whole):.2f} | "
                  f"{np.mean(part):.2f} |", flush=True)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
