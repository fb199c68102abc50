"""Blur identification from point sources: ``PointSourceBlurEstimator``.

The shipped model's setting (basis, cone and sampler of
``deepblur.pretrained.load_default()``), test images of simulated point
sources (``make_point_sources``, normalised to mean 0.5 like every test set),
zero boundary. Every row is printed beside the mean-gamma baseline (50 000
cone draws) on the same images, and beside the two learnt estimators on the
same images: the shipped network (trained on natural images only) and the
shipped spectral regressor (whose pool held point sources).

Cases: the issue's protocol (sigma = 0.01, density 0.002), a denser field
(0.005: more overlapping PSFs), and the paper's Fig. 3f noise (SNR uniform
in [-7, 0.64] dB), where the detection runs on a Gaussian-filtered image; an
oracle row there gives the estimator the true positions, to separate what
the detection loses from what the noise does.

Usage: ``python benchmarks/bench_point_sources.py [--n 256] [--jobs 2]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_regressor import summary

from deepblur import PointSourceBlurEstimator
from deepblur.datasets import blur_images, make_point_sources
from deepblur.pretrained import load_default
from deepblur.solvers.point_sources import fit_point_sources


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=256, help="test images per case")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_default()
    spectral = load_default("spectral").regressor
    basis, sampler, net = model.basis, model.sampler, model.regressor
    gram = basis.gram_
    mean_gamma = sampler.sample(50_000).mean(0)
    cases = [
        ("sigma 0.01, density 0.002", dict(density=0.002), dict(noise_std=0.01), {}),
        ("sigma 0.01, density 0.005", dict(density=0.005), dict(noise_std=0.01), {}),
        ("SNR -7 to 0.64 dB (Fig. 3f)", dict(density=0.002),
         dict(noise_std=None, snr=(-7.0, 0.64)), dict(smoothing=1.0, threshold=5.0)),
    ]
    for i, (name, scene, noise, params) in enumerate(cases):
        rng = np.random.RandomState(100 + i)
        u = make_point_sources(args.n, basis.image_shape_, random_state=rng, **scene)
        gamma = sampler.sample(args.n)
        X = blur_images(u, gamma, basis, random_state=rng, **noise)
        base = np.tile(mean_gamma, (args.n, 1))
        print(f"--- {name} ({args.n} images, "
              f"{(u > 0).sum((1, 2)).mean():.1f} sources per image)")
        summary("network", gamma, net.predict(X), base, gram)
        summary("spectral", gamma, spectral.predict(X), base, gram)
        est = PointSourceBlurEstimator(basis, gamma_init=mean_gamma, n_jobs=args.jobs,
                                       **params).fit()
        t = time.perf_counter()
        fits = est.predict_sources(X)
        dt = time.perf_counter() - t
        pred = np.stack([f.gamma for f in fits])
        row = summary("point fit", gamma, pred, base, gram)
        err = np.sort(np.sqrt(np.einsum("nk,kl,nl->n", pred - gamma, gram, pred - gamma)
                              / np.einsum("nk,kl,nl->n", gamma, gram, gamma)))
        print(f"{'':>12}  median {100 * err[len(err) // 2]:.2f} %, 90th percentile "
              f"{100 * err[int(0.9 * len(err))]:.2f} %, max {100 * err[-1]:.2f} %; "
              f"{len(X) / dt:.2f} images/s with {args.jobs} jobs; "
              f"{np.mean([len(f.positions) for f in fits]):.1f} sources fitted, "
              f"{np.mean([f.n_iter for f in fits]):.0f} iterations per image")
        if noise.get("snr"):
            oracle = np.stack([
                fit_point_sources(X[j].astype(np.float64), basis.kernels_, basis.maps_,
                                  mean_gamma, positions=np.argwhere(u[j] > 0)).gamma
                for j in range(args.n)])
            summary("true pos.", gamma, oracle, base, gram)
        del row


if __name__ == "__main__":
    main()
