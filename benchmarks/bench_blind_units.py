"""Blind ``TVDeblurrer`` on real images in their own units: brightness and PSNR.

8-bit crops of scikit-image's ``coins`` divided by 255 (mean about 0.4) and a
300x450 window of ``camera`` scaled to mean 0.25, blurred by a Gaussian of
1.5 pixels (a blur the basis does not hold exactly) with noise 0.01,
deblurred blind with the shipped crop network three ways: ``TVDeblurrer`` on
the images as given (``target_mean=None, unit_gain=False``), ``TVDeblurrer``
with ``target_mean`` (the model's training mean times its training gain)
and ``unit_gain=True``, and the reference measured in the same run,
:func:`deepblur.pretrained.deblur_image` / :func:`deepblur.tiling.deblur_large`
(which scale the image themselves). Prints the restored mean over the
blurry mean per image and the PSNR against the clean image.

Usage: ``python benchmarks/bench_blind_units.py [--max-iter 200] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import skimage.data
import torch
from scipy.ndimage import gaussian_filter

from deepblur import TVDeblurrer
from deepblur.metrics import clean_ranges, psnr
from deepblur.pretrained import (
    deblur_image,
    load_default,
    model_image_mean,
    training_gain,
)
from deepblur.tiling import deblur_large


def blurred(clean, rng):
    y = np.stack([gaussian_filter(c, 1.5, mode="reflect") for c in clean])
    return y + 0.01 * rng.standard_normal(y.shape)


def report(name, clean, blurry, restored, seconds):
    ratio = restored.mean((-2, -1)) / blurry.mean((-2, -1))
    score = np.mean(psnr(clean, restored, data_range=clean_ranges(clean)))
    print(f"  {name:<36} mean ratio {np.round(np.atleast_1d(ratio), 2)}  "
          f"PSNR {score:.2f} dB  ({seconds:.1f} s)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    model = load_default(estimator="crop_network")
    target = model_image_mean(model) * training_gain(model)
    solve = dict(boundary="unknown", max_iter=args.max_iter, device="cpu")
    coins = skimage.data.coins()
    clean = np.stack([coins[i:i + 128, j:j + 128] for i in (0, 170)
                      for j in (0, 120, 250)]) / 255.0
    camera = skimage.data.camera()[:300, :450] / 255.0
    scenes = [("coins / 255, 6 crops of 128x128", clean),
              ("camera 300x450 at mean 0.25", (camera * 0.25 / camera.mean())[None])]
    print(f"shipped crop network, target_mean {target:.3f}, "
          f"max_iter {args.max_iter}, {args.threads} threads")
    for title, x in scenes:
        y = blurred(x, rng)
        blurry = np.mean(psnr(x, y, data_range=clean_ranges(x)))
        print(title, f"(blurry PSNR {blurry:.2f} dB)")
        for name, params in (("TVDeblurrer, images as given", {}),
                             ("TVDeblurrer, target_mean, unit_gain",
                              dict(target_mean=target, unit_gain=True))):
            start = time.perf_counter()
            u = TVDeblurrer(model.basis, blur_estimator=model.regressor,
                            **solve, **params).fit(y).transform(y)
            report(name, x, y, u, time.perf_counter() - start)
        start = time.perf_counter()
        if x.shape[1:] == model.basis.image_shape_:
            ref = np.stack([deblur_image(model, yi, max_iter=args.max_iter)[0]
                            for yi in y])
            name = "deblur_image (reference)"
        else:
            ref = np.stack([deblur_large(yi, model, max_iter=args.max_iter).restored
                            for yi in y])
            name = "deblur_large (reference)"
        report(name, x, y, ref, time.perf_counter() - start)


if __name__ == "__main__":
    main()
