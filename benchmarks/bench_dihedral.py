"""Test-time augmentation over the 8 rotations and flips of the image.

Averaging a network's estimates over transformed copies of its input
(rotations by 90 degrees, flips) is a common way to take variance off a
regressor. For a blur operator the copies do not estimate the same gamma:
the observation of a transformed image, ``T y = (T H T^-1)(T u) + T eta``,
is blurred by ``T H T^-1``, the product-convolution with kernels and maps
transformed by ``T``. So the estimate of the copy is brought back by the
Gram projection of ``T^-1 H[gamma'] T`` on the basis's span: ``gamma =
G^-1 B_T gamma'`` with ``B_T[j, k] = <H_j, T^-1 H_k T>_F`` (the Gram matrix
of the basis and of its transformed copy, exact,
:func:`deepblur.operators.gram_matrix`). That is exact only when the span
is closed under ``T``.

This benchmark measures, for the shipped network on held-out natural
patches (zero boundary, the model's noise), beside the mean-gamma baseline
of the same images:

- how far the basis's span is from closed under each transform (the share
  of ``||T^-1 H_k T||_F^2`` outside the span, mean and max over ``k``);
- the floor of the round trip: the true operator transformed, projected on
  the span, and brought back (what a perfect estimate of each copy would
  give);
- the error of the estimate of each copy, brought back, and of the average
  of the first 1, 2, 4 and 8 of them (the first being the unmoved image).

Usage: ``python benchmarks/bench_dihedral.py [--n 1024] [--threads 2]``
(about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from bench_error_sources import simulate
from bench_regressor import summary

from deepblur.datasets.images import natural_image_split
from deepblur.operators import gram_matrix
from deepblur.pretrained import load_default

TRANSFORMS = ["identity", "rot90", "rot180", "rot270", "flip", "rot90+flip",
              "rot180+flip", "rot270+flip"]


def transform(x, t):
    """Transform ``t`` (0-7: ``t % 4`` quarter turns, then a left-right flip
    when ``t >= 4``) of the last two axes."""
    x = np.rot90(x, t % 4, axes=(-2, -1))
    return np.ascontiguousarray(x[..., ::-1] if t >= 4 else x)


def inverse_transform(x, t):
    x = x[..., ::-1] if t >= 4 else x
    return np.ascontiguousarray(np.rot90(x, -(t % 4), axes=(-2, -1)))


def cross_gram(kernels, maps, other_kernels, other_maps):
    """``<H_j, H'_k>_F`` between two product-convolution bases (zero
    boundary), with the diagonal of the second one's Gram matrix."""
    K = len(kernels)
    both = gram_matrix(np.concatenate([kernels, other_kernels]),
                       np.concatenate([maps, other_maps]))
    return both[:K, K:], np.diag(both[K:, K:])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    model = load_default()
    e = np.asarray(model.basis.kernels_, dtype=np.float64)
    f = np.asarray(model.basis.maps_, dtype=np.float64)
    G = model.basis.gram_
    print(f"basis: K = {len(e)}, kernels {e.shape[1:]}, maps {f.shape[1:]}; "
          f"torch {torch.__version__}, {args.threads} threads")
    back, forward = [], []
    print("--- closure of the span (share of ||T^-1 H_k T||^2 outside it)")
    for t, name in enumerate(TRANSFORMS):
        B, norms = cross_gram(e, f, inverse_transform(e, t), inverse_transform(f, t))
        back.append(np.linalg.solve(G, B))       # gamma' -> gamma
        outside = 1 - np.einsum("jk,jk->k", B, back[-1]) / norms
        Bf, _ = cross_gram(e, f, transform(e, t), transform(f, t))
        forward.append(np.linalg.solve(G, Bf))   # gamma -> gamma' (best in span)
        print(f"{name:>12}: mean {100 * outside.mean():5.2f} %, max "
              f"{100 * outside.max():5.2f} %")
    _, test = natural_image_split()
    u, gamma, y = simulate(model, test, args.n, args.seed)
    base = np.tile(model.sampler.sample(50_000).mean(0), (len(y), 1))
    print(f"--- {len(y)} held-out natural patches, sigma = "
          f"{model.setting['noise_std']}")
    print("--- round-trip floor (true operator transformed, projected, back)")
    for t, name in enumerate(TRANSFORMS[1:], 1):
        summary(name, gamma, gamma @ forward[t].T @ back[t].T, base, G)
    print("--- the network on each transformed copy, brought back")
    estimates, seconds = [], 0.0
    for t, name in enumerate(TRANSFORMS):
        start = time.perf_counter()
        pred = model.regressor.predict(transform(y, t).astype(np.float32))
        seconds += time.perf_counter() - start
        estimates.append(pred @ back[t].T)
        summary(name, gamma, estimates[-1], base, G)
    print(f"    ({seconds / 8 / len(y) * 1e3:.2f} ms per image and copy)")
    print("--- average of the first n copies")
    for n in (1, 2, 4, 8):
        summary(f"n = {n}", gamma, np.mean(estimates[:n], 0), base, G)


if __name__ == "__main__":
    main()
