"""Cost and behaviour of the regressors' noise check (``NoisyImageWarning``).

``predict`` of :class:`~deepblur.ResNetBlurRegressor` and
:class:`~deepblur.SpectralBlurRegressor` estimates every image's noise and
warns about images over three times noisier than the regressor's
``noise_level_``. This measures, with the shipped models on held-out natural
images (zero boundary, as they were trained):

* the time of ``predict`` with the check against the same call without it
  (``noise_level_ = None``), in the same run, and the ratio;
* which share of the images it flags at each noise level, beside the
  network's operator error there and the mean-gamma baseline's.

Usage: ``python benchmarks/bench_noise_check.py [--n 1024] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from deepblur.datasets.images import extract_patches, natural_image_split
from deepblur.datasets.simulate import blur_images
from deepblur.estimators._gamma import NOISE_WARNING_FACTOR, image_noise_levels
from deepblur.pretrained import load_default, relative_errors


def best_times(reg, y, level, repeats=7):
    """Best time of ``predict`` with the check and without, interleaved."""
    times = {True: [], False: []}
    for _ in range(repeats):
        for check in (True, False):
            reg.noise_level_ = level if check else None
            t = time.perf_counter()
            reg.predict(y)
            times[check].append(time.perf_counter() - t)
    reg.noise_level_ = level
    return min(times[True]), min(times[False])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    _, test_images = natural_image_split()
    u = extract_patches(test_images, args.n, (128, 128), random_state=5)
    u = u[u.mean((1, 2)) > 1e-3].astype(np.float32)
    for estimator in ("network", "spectral"):
        model = load_default(estimator)
        reg, level = model.regressor, model.regressor.noise_level_
        gamma = model.sampler.sample(len(u))
        base = np.tile(model.sampler.sample(50_000).mean(0), (len(u), 1))
        boundary = model.setting["boundary"]
        y = blur_images(u, gamma, model.basis, noise_std=0.01, boundary=boundary,
                        random_state=1)
        reg.predict(y[:64])
        with_check, without = best_times(reg, y, level)
        print(f"--- {estimator} ({boundary} boundary, {len(u)} images, "
              f"{args.threads} thread(s)), noise_level_ {level:g}")
        print(f"predict: {len(u) / with_check:.0f} images/s with the check, "
              f"{len(u) / without:.0f} without: {with_check / without:.3f}x the "
              "time")
        print("noise std | flagged | median estimate | operator error | baseline")
        for sigma in (0.0, 0.01, 0.02, 0.03, 0.05, 0.1):
            y = blur_images(u, gamma, model.basis, noise_std=sigma,
                            boundary=boundary, random_state=2)
            est = image_noise_levels(y)
            flagged = np.mean(est > NOISE_WARNING_FACTOR * level)
            err = relative_errors(gamma, reg.predict(y), model.basis.gram_)
            b = relative_errors(gamma, base, model.basis.gram_)
            print(f"{sigma:9g} | {100 * flagged:6.1f} % | {np.median(est):15.4f} | "
                  f"{100 * err['operator'].mean():12.2f} % | "
                  f"{100 * b['operator'].mean():6.2f} %")


if __name__ == "__main__":
    main()
