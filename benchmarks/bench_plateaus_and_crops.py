"""Two costs this project's audit found, each against its reference in the
same run.

1. **Saturated beads** (:func:`deepblur.solvers.point_sources.detect_point_sources`):
   point sources blurred by the shipped model's operators, clipped at a
   level (a saturated camera), give flat tops. The reference is the rule
   the detector had before: every pixel equal to its window's maximum
   above the threshold (one detection per pixel of a flat top). Printed:
   detections of both, and the time of ``fit_point_sources`` from each set
   of positions (the fit's cost grows with them), with their ratio.
2. **Large PSF crops** (:func:`deepblur.solvers.psf_decomposition.cp_als`):
   the leading PSF-pixel directions of a few fields of large crops, from the
   thin SVD of the unfolding (``_leading_right_vectors``) against the
   eigendecomposition of its ``(kh kw)^2`` Gram matrix (the route before),
   with their ratio and the largest difference of the two subspaces'
   projectors over the directions the fields hold (singular values above
   1e-8 of the largest; past them both routes complete the basis
   arbitrarily).

Usage: ``python benchmarks/bench_plateaus_and_crops.py [--threads 1]``
(about two minutes on one CPU thread, most of it the 95x95 Gram route).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from bench_large import run_header
from scipy.ndimage import maximum_filter

from deepblur.datasets import blur_images, make_point_sources, make_random_operators
from deepblur.pretrained import load_default
from deepblur.solvers.point_sources import detect_point_sources, fit_point_sources
from deepblur.solvers.psf_decomposition import (
    _leading_right_vectors,
    _leading_vectors,
)


def per_pixel_maxima(y, threshold, min_distance=2):
    """The detector's rule before: every window maximum above the threshold."""
    size = 2 * min_distance + 1
    peaks = (y == maximum_filter(y, size=size, mode="constant", cval=-np.inf))
    rows, cols = np.nonzero(peaks & (y > threshold))
    return np.stack([rows, cols], axis=1)


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, float(np.median(times))


def saturated_beads(args):
    model = load_default()
    basis = model.basis
    u = make_point_sources(1, tuple(basis.image_shape_), density=args.density,
                           random_state=args.seed)
    gamma = model.sampler.sample(1)
    y = blur_images(u, gamma, basis, noise_std=0.0, random_state=args.seed)[0]
    y = np.minimum(y, args.clip * y.max())           # a saturated camera
    kernels = np.asarray(basis.kernels_, dtype=np.float64)
    maps = np.asarray(basis.maps_, dtype=np.float64)
    start = model.sampler.sample(2000).mean(0)
    threshold = 0.1 * y.max()
    new = detect_point_sources(y, threshold)
    old = per_pixel_maxima(y, threshold)
    print(f"--- saturated beads: {int((u[0] > 0).sum())} sources, clipped at "
          f"{args.clip} of the maximum; detections {len(new)} (one per flat top) "
          f"against {len(old)} (one per pixel of a flat top, the rule before)")
    times = {}
    for name, positions in (("plateau-aware", new), ("per pixel (before)", old)):
        _, times[name] = timed(lambda p=positions: fit_point_sources(
            y, kernels, maps, start, positions=p), args.repeats)
        print(f"{name:>20}: fit_point_sources {times[name]:.2f} s "
              f"(median of {args.repeats})")
    print(f"{'ratio':>20}: {times['per pixel (before)'] / times['plateau-aware']:.1f}x")


def large_crops(args):
    print(f"--- {args.fields} fields of 16 PSFs, K = 3 (the leading 11 "
          "directions of the PSF pixels)")
    for k in args.crops:
        ops = make_random_operators(args.fields, image_shape=(64, 64),
                                    kernel_shape=(k, k), grid_shape=(4, 4),
                                    random_state=0)
        T3 = ops.psf_fields.reshape(-1, k * k).astype(np.float64)
        r3 = min(k * k, 2 * 3 + 5)
        rng = np.random.default_rng(0)
        thin, t_thin = timed(
            lambda T3=T3, r3=r3, rng=rng: _leading_right_vectors(T3, r3, rng),
            args.crop_repeats)
        gram, t_gram = timed(
            lambda T3=T3, r3=r3, rng=rng: _leading_vectors(T3.T @ T3, r3, rng),
            args.crop_repeats)
        s = np.linalg.svd(T3, compute_uv=False)
        m = min(r3, int((s > 1e-8 * s[0]).sum()))
        diff = np.abs(thin[:, :m] @ thin[:, :m].T - gram[:, :m] @ gram[:, :m].T).max()
        print(f"{k:>3}x{k:<3} crops: thin SVD {t_thin * 1e3:8.1f} ms, Gram "
              f"eigendecomposition (before) {t_gram * 1e3:9.1f} ms, ratio "
              f"{t_gram / t_thin:7.1f}x; projectors of the {m} directions the "
              f"fields hold differ by {diff:.1e}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--density", type=float, default=0.002)
    parser.add_argument("--clip", type=float, default=0.3)
    parser.add_argument("--fields", type=int, default=4)
    parser.add_argument("--crops", type=int, nargs="+", default=[25, 63, 95])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crop-repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{run_header(args.threads)}; clip={args.clip}")
    saturated_beads(args)
    large_crops(args)


if __name__ == "__main__":
    main()
