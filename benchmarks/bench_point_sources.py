"""Blur identification from point sources: ``PointSourceBlurEstimator``.

The shipped model's setting (basis, cone and sampler of
``deepblur.pretrained.load_default()``), test images of simulated point
sources (``make_point_sources``, normalised to mean 0.5 like every test set),
zero boundary. Every row is printed beside the mean-gamma baseline (50 000
cone draws) on the same images, and beside the two learnt estimators on the
same images: the shipped network (trained on natural images only) and the
shipped spectral regressor (whose pool held point sources).

Cases: the issue's protocol (sigma = 0.01, density 0.002, sources on
pixels, as ``make_point_sources`` draws them), a denser field
(0.005: more overlapping PSFs), the protocol with a camera offset of 0.1 added
to every image (fitted by the default ``background=True``; printed beside the
fit of the same images without the offset), and a very noisy
case (noise SNR uniform in [-7, 0.64] dB), where the detection runs on a
Gaussian-filtered image; an oracle row there gives the estimator the true
positions, to separate what the detection loses from what the noise does.
(-7 and 0.64 dB are the numbers of the paper's Fig. 3f caption; they are the
SNR of its blurry and deblurred images against the clean one, not a noise
level, so this case is a stress test, not the paper's setting.) A last case
moves every source by up to half a pixel (band-limited shifts, not the
fit's splines), as real beads lie, and prints the fit with ``subpixel=False``
beside it (``--on-pixels`` does so for every case).

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


def subpixel_images(u, gamma, basis, jitter, noise_std, rng):
    """Point-source images with every source moved by up to ``jitter`` pixel.

    Each source's PSF (``sum_k gamma_k f_k(p) e_k``, the maps read at its
    pixel) is moved by band-limited (Fourier) interpolation, not by the cubic
    splines that the fit uses; zero boundary; the clean image has mean 0.5.
    """
    kernels = np.asarray(basis.kernels_, dtype=np.float64)
    maps = np.asarray(basis.maps_, dtype=np.float64)
    kh, kw = kernels.shape[1:]
    H, W = maps.shape[1:]
    fr = np.fft.fftfreq(3 * kh)[:, None]
    fc = np.fft.fftfreq(3 * kw)[None]
    X = np.empty(u.shape)
    for i in range(len(u)):
        scene = u[i] * (0.5 / u[i].mean())
        out = np.zeros((H + 2 * kh, W + 2 * kw))
        for r, c in np.argwhere(scene > 0):
            psf = np.zeros((3 * kh, 3 * kw))
            psf[kh:2 * kh, kw:2 * kw] = np.einsum("k,k,kab->ab", gamma[i],
                                                  maps[:, r, c], kernels)
            d = rng.uniform(-jitter, jitter, 2)
            ramp = np.exp(-2j * np.pi * (fr * d[0] + fc * d[1]))
            psf = np.fft.ifft2(np.fft.fft2(psf) * ramp).real[kh:2 * kh, kw:2 * kw]
            t, le = r - (kh - 1) // 2, c - (kw - 1) // 2
            out[t + kh:t + 2 * kh, le + kw:le + 2 * kw] += scene[r, c] * psf
        X[i] = out[kh:kh + H, kw:kw + W] + noise_std * rng.standard_normal((H, W))
    return X.astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=256, help="test images per case")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--on-pixels", action="store_true",
                        help="also fit every case with subpixel=False")
    parser.add_argument("--cases", type=int, nargs="+", default=None,
                        help="indices of the cases to run (default: all)")
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
        ("noise SNR -7 to 0.64 dB", dict(density=0.002),
         dict(noise_std=None, snr=(-7.0, 0.64)), dict(smoothing=1.0, threshold=5.0)),
        ("sigma 0.01, density 0.002, offset 0.1", dict(density=0.002),
         dict(noise_std=0.01, offset=0.1), {}),
        ("sigma 0.01, density 0.002, sources within +-0.5 pixel",
         dict(density=0.002), dict(noise_std=0.01, jitter=0.5), {}),
    ]
    for i, (name, scene, noise, params) in enumerate(cases):
        if args.cases and i not in args.cases:
            continue
        rng = np.random.RandomState(100 + i)
        noise = dict(noise)
        offset, jitter = noise.pop("offset", 0.0), noise.pop("jitter", 0.0)
        u = make_point_sources(args.n, basis.image_shape_, random_state=rng, **scene)
        gamma = sampler.sample(args.n)
        if jitter:
            X = subpixel_images(u, gamma, basis, jitter, noise["noise_std"], rng)
        else:
            X = blur_images(u, gamma, basis, random_state=rng, **noise) + offset
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
        if offset:
            fitted = np.mean([f.background for f in fits])
            dark = est.predict(X - offset)
            summary("no offset", gamma, dark, base, gram)
            print(f"{'':>12}  fitted offset: mean {fitted:.4f} (true {offset})")
        if jitter or args.on_pixels:
            t = time.perf_counter()
            on_pixels = est.set_params(subpixel=False).predict(X)
            summary("on pixels", gamma, on_pixels, base, gram)
            print(f"{'':>12}  subpixel=False: {len(X) / (time.perf_counter() - t):.2f}"
                  " images/s")
        del row


if __name__ == "__main__":
    main()
