"""Point-source fits on small fields where sources often lie closer than the
PSF's width (``PointSourceBlurEstimator``'s docstring setting and larger).

A 2-component basis (Gaussians of 1 and 2 pixels in 7x7 windows, maps that
ramp from 1 to 0.25 across the field), gamma drawn from a 3-ray cone, noise
sigma = 1e-3 (given), sources from ``make_point_sources`` at two densities.
Two sources closer than about the wide PSF's width make one maximum. Every
row is printed beside the fit given the true positions (what the detection
costs) and the mean-gamma baseline on the same images.

Usage: ``python benchmarks/bench_close_sources.py [--n 64]``.
"""

from __future__ import annotations

import argparse
import re
import time
import warnings

import numpy as np
import torch

from deepblur import ConeSampler, PointSourceBlurEstimator, ProductConvolutionBasis
from deepblur.datasets import blur_images, make_point_sources
from deepblur.solvers.point_sources import fit_point_sources


def errors(gamma, pred, gram):
    d = pred - gamma
    return np.sqrt(np.einsum("nk,kl,nl->n", d, gram, d)
                   / np.einsum("nk,kl,nl->n", gamma, gram, gamma))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="images per case")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x = np.arange(-3, 4)
    kernels = np.stack([np.exp(-(x[:, None] ** 2 + x[None] ** 2) / (2 * s**2))
                        for s in (1.0, 2.0)])
    kernels /= kernels.sum(axis=(1, 2), keepdims=True)
    for shape, density in [((32, 32), 0.01), ((32, 32), 0.005), ((48, 48), 0.01),
                           ((64, 64), 0.004)]:
        ramp = np.linspace(1, 0.25, shape[1])[None].repeat(shape[0], 0)
        basis = ProductConvolutionBasis.from_components(
            kernels, np.stack([ramp, ramp[:, ::-1]]))
        sampler = ConeSampler(random_state=1).fit(np.array([[1, 0], [0, 1], [1, 1]]))
        gamma = sampler.sample(args.n)
        u = make_point_sources(args.n, shape, density=density, random_state=1)
        X = blur_images(u, gamma, basis, noise_std=1e-3, random_state=1)
        est = PointSourceBlurEstimator(basis, noise_std=1e-3).fit(None, gamma)
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fits = est.predict_sources(X)
        dt = time.perf_counter() - t
        flagged = sum(int(re.search(r"on (\d+) of", str(w.message)).group(1))
                      for w in caught
                      if w.category.__name__ == "PoorPointSourceFitWarning")
        err = errors(gamma, np.stack([f.gamma for f in fits]), basis.gram_)
        oracle = errors(gamma, np.stack([
            fit_point_sources(X[i].astype(np.float64), basis.kernels_, basis.maps_,
                              est.gamma_init_, positions=np.argwhere(u[i] > 0)).gamma
            for i in range(args.n)]), basis.gram_)
        base = errors(gamma, np.tile(gamma.mean(0), (args.n, 1)), basis.gram_)
        print(f"{shape[0]}x{shape[1]}, density {density} "
              f"({(u > 0).sum((1, 2)).mean():.1f} sources, "
              f"{np.mean([len(f.positions) for f in fits]):.1f} fitted): "
              f"mean {100 * err.mean():.2f} %, median {100 * np.median(err):.3f} %, "
              f"90th pct. {100 * np.quantile(err, 0.9):.2f} %, "
              f"max {100 * err.max():.1f} %; "
              f"true positions {100 * oracle.mean():.3f} %; mean gamma "
              f"{100 * base.mean():.1f} %; {args.n / dt:.1f} images/s; "
              f"PoorPointSourceFitWarning on {flagged} images", flush=True)


if __name__ == "__main__":
    main()
