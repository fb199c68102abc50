"""``lam="auto"`` on 8-bit images: the noise estimate of quantised data.

Crops of scikit-image's pictures (``camera``, ``coins``, ``moon``,
``astronaut`` in gray, ``page``... as [0, 1] images), blurred by operators drawn
from the default setting's sampler, with Gaussian noise of ``s`` grey levels
(``s / 255``), rounded to 8 bits and divided by 255, as an 8-bit file read
and scaled is. For each noise level the script prints:

- the noise estimate of :func:`deepblur.solvers.tv.estimate_noise_level`
  (which reads the quantised Haar coefficients as grouped data) and the
  plain median rule of the same coefficients (the reference: what the
  estimate was before), against the level that the data term sees,
  ``sqrt(s^2 + 1/12)`` grey levels (noise plus rounding);
- the PSNR of ``TVDeblurrer`` with the true operator and ``lam`` from each
  estimate (``C_TV / sigma^2`` with :func:`~deepblur.solvers.tv.default_lam`'s
  floor), and with the best ``lam`` of a grid per image (the ceiling).

Usage: ``python benchmarks/bench_quantised_noise.py [--n 16] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import skimage.color
import skimage.data
import torch

from deepblur import TVDeblurrer
from deepblur.metrics import clean_ranges, psnr
from deepblur.pretrained import load_default
from deepblur.solvers.tv import C_TV, estimate_noise_level
from deepblur.tiling import tile_gains

PICTURES = ("camera", "coins", "moon", "page", "text", "brick", "grass",
            "gravel", "astronaut", "coffee", "chelsea", "rocket")


def crops(n, size, rng):
    """``n`` random crops of ``size`` from the bundled pictures, in [0, 1]."""
    out = []
    for i in range(n):
        img = getattr(skimage.data, PICTURES[i % len(PICTURES)])()
        if img.ndim == 3:
            img = skimage.color.rgb2gray(img[..., :3])
        else:
            img = img / 255.0
        a = rng.integers(0, img.shape[0] - size[0] + 1)
        b = rng.integers(0, img.shape[1] - size[1] + 1)
        out.append(img[a:a + size[0], b:b + size[1]])
    return np.stack(out).astype(np.float64)


def median_rule(y):
    """The plain median rule on the same coefficients (no grouping)."""
    h, w = (y.shape[-2] // 2) * 2, (y.shape[-1] // 2) * 2
    y = y[:, :h, :w]
    d = (y[:, 0::2, 0::2] - y[:, 1::2, 0::2] - y[:, 0::2, 1::2]
         + y[:, 1::2, 1::2]) / 2.0
    return np.median(np.abs(d).reshape(len(y), -1), axis=1) / 0.6745


def lam_from(sigma, y):
    ptp = np.ptp(y.reshape(len(y), -1), axis=1)
    return C_TV / np.maximum(sigma, 1e-3 * ptp) ** 2


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--levels", type=float, nargs="+",
                   default=[0.25, 0.5, 1.0, 2.0, 4.0])
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    model = load_default()
    size = tuple(model.basis.operator_.image_shape)
    clean = crops(args.n, size, rng)
    # operators of the sampler, at unit gain (so that an 8-bit image stays
    # in range: no clipping at 255)
    gamma = np.asarray(model.sampler.sample(args.n))
    gamma = gamma / tile_gains(model.basis, gamma)[:, None]
    blurred = model.basis.apply(clean, gamma)
    est = TVDeblurrer(model.basis, device="cpu", max_iter=args.max_iter)
    est.fit()
    grid = np.geomspace(0.25, 4.0, 9)
    print(f"{args.n} crops of {size}, default basis (K={gamma.shape[1]}), "
          f"max_iter {args.max_iter}, {args.threads} threads")
    print("levels in grey levels of 255; PSNR in dB, mean over the crops")
    print(f"{'s':>5} {'seen':>6} {'estimate':>9} {'median':>7} | "
          f"{'PSNR est.':>9} {'median':>7} {'best lam':>8} {'diff':>6}")
    for s in args.levels:
        start = time.perf_counter()
        noisy = blurred + s / 255.0 * rng.standard_normal(blurred.shape)
        y = np.clip(np.round(noisy * 255.0), 0, 255) / 255.0
        sig_new = np.atleast_1d(estimate_noise_level(y))
        sig_old = median_rule(y)
        ranges = clean_ranges(clean)
        scores = {}
        for name, sig in (("new", sig_new), ("old", sig_old)):
            scores[name] = np.array([
                psnr(clean[i], est.set_params(lam=float(lam))
                     .transform(y[i], gamma=gamma[i]), data_range=ranges[i])
                for i, lam in enumerate(lam_from(sig, y))])
        seen = np.sqrt(s ** 2 + 1 / 12) / 255.0
        best = np.array([max(
            psnr(clean[i], est.set_params(lam=float(C_TV / seen ** 2 * f))
                 .transform(y[i], gamma=gamma[i]), data_range=ranges[i])
            for f in grid) for i in range(args.n)])
        diff = scores["new"] - scores["old"]
        print(f"{s:5.2f} {seen * 255:6.3f} {np.median(sig_new) * 255:9.3f} "
              f"{np.median(sig_old) * 255:7.3f} | {scores['new'].mean():9.2f} "
              f"{scores['old'].mean():7.2f} {best.mean():8.2f} "
              f"{diff.mean():+6.2f} (+-{diff.std(ddof=1) / np.sqrt(args.n):.2f}; "
              f"{time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
