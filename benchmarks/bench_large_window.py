"""Deblurring a large image that is a window on a larger scene: boundary and units.

A user's large image is a crop of a scene that continues beyond its border,
stored in whatever units the camera gives (8 or 16 bits, any brightness).
This benchmark measures the two conventions of
:func:`deepblur.tiling.deblur_large` (and ``deepblur deblur`` on large
images) against their alternatives, on the same data in the same run:

* ``boundary="unknown"`` (the image extended by half a kernel per side, the
  unknown scene there estimated with it and dropped, every pixel fitted)
  against ``boundary="model"`` (every pixel fitted with the basis's zero
  boundary, i.e. a dark surrounding) and against the data term restricted to
  the pixels whose PSF lies inside the image, ``u`` on the image only (what
  ``boundary="unknown"`` meant for one tile before session 30);
* the image scaled to mean 0.5 for the solve (``lam`` for that scale) against
  the solve in the input's units (``image_mean=None``), on a 16-bit version of
  the same image (pixels ``* 65535 / max``).

Data, for each size ``N`` (``--sizes``): the bundled ``camera`` image (held
out of training) mirrored to ``(N + 2 p) x (N + 2 p)`` (``p = --pad``), mean
0.5. The true operator is known: a stitched product-convolution of the
shipped model's basis on the window's own tile grid (stride 64, as
``deblur_large``), one ``gamma`` per tile bilinearly interpolated from 3x3
draws of the shipped sampler and rescaled to unit gain; its maps are
extended beyond the window by their edge values, the whole scene is blurred
with them, and the ``N x N`` window in the middle is kept, plus noise of
std ``--noise``. Inside the window (half a kernel away from its border) the
blur is then exactly that of the window's operator, which
:func:`~deepblur.tiling.deblur_stitched` is given; the border pixels also
hold light from outside the window, as in a real crop.

Deblurring: TV, ``lam="auto"``, ``--max-iter`` FISTA iterations
(``tol=1e-5``), float32. Reported: PSNR (peak 1 on the [0, 1] scale) of the
whole window, of its border band (the ``--band`` outer pixels) and of the
rest; the blurry image is the reference, in the same run. Last, the blind
path (``deblur_large`` on the 16-bit image with the estimates of the shipped
crop network, which ``deepblur deblur`` uses on real images, and of the
zero-boundary network), both boundaries, to show where the end-to-end result
stands.

First, the cost of the unknown boundary on one tile of the model's shape,
against the zero boundary's in the same run (same iterations), and the
ratio of the two operators' ``||H||^2`` (the step size).

Run ``python benchmarks/bench_large_window.py [--sizes 256 512]``; it prints
a Markdown table for ``benchmarks/README.md`` (section "Large images:
windows of a larger scene").
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np
import torch
from bench_large import (  # the same construction of the truth
    run_header,
    true_gammas,
)
from sklearn.exceptions import ConvergenceWarning

from deepblur.datasets.images import load_natural_images
from deepblur.operators.product_convolution import ProductConvolution
from deepblur.pretrained import load_default
from deepblur.solvers.tv import deblur, default_lam
from deepblur.tiling import (
    deblur_large,
    deblur_stitched,
    stitched_maps,
    stitched_operator,
    tile_gains,
    tile_grid,
)


def scene_image(name, n):
    img = load_natural_images([name])[name]
    reps = (-(-n // img.shape[0]) + 1, -(-n // img.shape[1]) + 1)
    big = np.pad(img, ((0, img.shape[0] * reps[0]), (0, img.shape[1] * reps[1])),
                 mode="symmetric")[:n, :n]
    return big * (0.5 / big.mean())


def make_window(model, n, pad, noise, seed):
    basis = model.basis
    K = basis.kernels_.shape[0]
    grid = tile_grid((n, n), tuple(basis.image_shape_), 64)
    gamma = true_gammas(model, grid, "smooth", seed)
    gamma = gamma / tile_gains(basis, gamma, interior=True)[:, None]
    F = stitched_maps(gamma, basis.maps_, grid)
    F_scene = np.pad(F, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    scene = scene_image("camera", n + 2 * pad)
    op = ProductConvolution(torch.from_numpy(basis.kernels_), torch.from_numpy(F_scene))
    blurred = op.forward(torch.from_numpy(scene)[None],
                         torch.ones(K, dtype=torch.float64))[0].numpy()
    rng = np.random.default_rng(seed)
    y = blurred[pad:pad + n, pad:pad + n] + noise * rng.standard_normal((n, n))
    return scene[pad:pad + n, pad:pad + n], y, gamma, grid


def interior_only(basis, gamma, grid, y, max_iter):
    """TV with the data term on the pixels half a kernel from the border and
    ``u`` on the image only."""
    op = stitched_operator(basis, gamma, grid, dtype=np.float32)
    ones = torch.ones(basis.kernels_.shape[0])
    r = basis.kernels_.shape[1] // 2
    mask = torch.zeros(y.shape)
    mask[r:-r, r:-r] = 1.0
    yt = torch.as_tensor(y, dtype=torch.float32)[None]
    u, _ = deblur(yt * mask, lambda v: op.forward(v, ones) * mask,
                  lambda v: op.adjoint(v * mask, ones), default_lam(y),
                  max_iter=max_iter, x0=yt)
    return u[0].double().numpy()


def tile_cost(model, n_iter, repeats):
    """Cost and step size of the unknown-boundary solve of one tile (the
    model's shape) against the zero boundary's, the same iterations: the
    median time of ``repeats`` solves of ``n_iter`` FISTA iterations
    (``tol=0``) plus their power iterations, and ``||M H||^2 / ||H||^2``
    from those power iterations, on 5 operators of the sampler."""
    basis = model.basis
    shape = tuple(basis.image_shape_)
    grid = tile_grid(shape, shape)
    image = scene_image("camera", shape[0])[:, :shape[1]]
    gammas = model.sampler.sample(5)
    seconds = {"model": [], "unknown": []}
    norms = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(repeats):
            for boundary in seconds:
                t0 = time.perf_counter()
                deblur_stitched(image, basis, gammas[:1], grid, lam=500.0,
                                boundary=boundary, max_iter=n_iter, tol=0)
                seconds[boundary].append(time.perf_counter() - t0)
        for g in gammas:
            lips = [deblur_stitched(image, basis, g[None], grid, lam=500.0,
                                    boundary=b, max_iter=1, tol=0)[1]["lipschitz"][0]
                    for b in ("model", "unknown")]
            norms.append(lips[1] / lips[0])
    return ({k: float(np.median(v)) for k, v in seconds.items()},
            np.array(norms))


def psnr(u, clean, mask=None):
    d = (u - clean) if mask is None else (u - clean)[mask]
    return float(10 * np.log10(1.0 / np.mean(d ** 2)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--pad", type=int, default=64)
    parser.add_argument("--band", type=int, default=16)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--max-iter", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tile-iter", type=int, default=200)
    parser.add_argument("--tile-repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{run_header(args.threads, args.max_iter)}, noise={args.noise}, "
          f"pad={args.pad}, band={args.band}")
    model = load_default()
    crop = load_default("crop_network")       # what `deepblur deblur` uses
    basis = model.basis
    cost, norms = tile_cost(model, args.tile_iter, args.tile_repeats)
    print(f"# one {basis.image_shape_[0]}x{basis.image_shape_[1]} tile, "
          f"{args.tile_iter} iterations and the power iteration, median of "
          f"{args.tile_repeats}: unknown boundary {cost['unknown']:.2f} s, zero "
          f"boundary {cost['model']:.2f} s, ratio "
          f"{cost['unknown'] / cost['model']:.2f}; ||M H||^2 / ||H||^2 on 5 "
          f"operators: {norms.min():.5f} to {norms.max():.5f}", flush=True)
    rows = []
    for n in args.sizes:
        clean, y, gamma, grid = make_window(model, n, args.pad, args.noise, args.seed)
        band = np.ones((n, n), dtype=bool)
        band[args.band:-args.band, args.band:-args.band] = False

        def scores(u, clean=clean, band=band):
            return psnr(u, clean), psnr(u, clean, band), psnr(u, clean, ~band)

        common = dict(max_iter=args.max_iter, lam="auto")
        warnings.simplefilter("ignore", ConvergenceWarning)
        results = {"blurry": (scores(y), 0.0)}
        for boundary in ("model", "unknown"):
            t0 = time.perf_counter()
            u, _ = deblur_stitched(y, basis, gamma, grid, boundary=boundary,
                                   **common)
            results[f"known operator, boundary={boundary}"] = (
                scores(u), time.perf_counter() - t0)
        # a 16-bit version of the same image: solved in its own units, or
        # scaled to mean 0.5 as deblur_large does (and the [0, 1] result above)
        # the data term on the interior pixels only, u on the image only
        t0 = time.perf_counter()
        u = interior_only(basis, gamma, grid, y, args.max_iter)
        results["known operator, interior pixels fitted, u on the image only"] = (
            scores(u), time.perf_counter() - t0)
        s16 = 65535.0 / y.max()
        t0 = time.perf_counter()
        u, _ = deblur_stitched(y * s16, basis, gamma, grid, boundary="unknown",
                               **common)
        results["known operator, unknown, 16-bit in its own units"] = (
            scores(u / s16), time.perf_counter() - t0)
        scale = 0.5 / (y * s16).mean()
        t0 = time.perf_counter()
        u, _ = deblur_stitched(y * s16 * scale, basis, gamma, grid,
                               boundary="unknown", **common)
        results["known operator, unknown, 16-bit scaled to mean 0.5"] = (
            scores(u / (s16 * scale)), time.perf_counter() - t0)
        for name, net in (("crop network", crop), ("zero-boundary network", model)):
            for boundary in ("model", "unknown"):
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = deblur_large(y * s16, net, boundary=boundary,
                                     progress=False, **common)
                results[f"blind, {name}, boundary={boundary}, 16-bit"] = (
                    scores(r.restored / s16), time.perf_counter() - t0)
            # deblur_large before the conventions: zero boundary, lam for the
            # input's units
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = deblur_large(y * s16, net, boundary="model", image_mean=None,
                                 progress=False, **common)
            results[f"blind, {name}, model boundary in own units (the old "
                    "deblur_large), 16-bit"] = (scores(r.restored / s16),
                                               time.perf_counter() - t0)
        load = os.getloadavg()[0]
        for name, ((whole, edge, inner), seconds) in results.items():
            rows.append((n, name, whole, edge, inner, seconds, load))
            print(f"# N={n} {name}: {whole:.2f} / {edge:.2f} / {inner:.2f} dB, "
                  f"{seconds:.1f} s", flush=True)
    print()
    print(f"| N | deblurring | PSNR whole / border band ({args.band} px) / rest dB "
          "| gain over blurry, whole / band dB | s | load |")
    print("|---|---|---|---|---|---|")
    ref = {}
    for n, name, whole, edge, inner, seconds, load in rows:
        if name == "blurry":
            ref[n] = (whole, edge)
        print(f"| {n} | {name} | {whole:.2f} / {edge:.2f} / {inner:.2f} | "
              f"{whole - ref[n][0]:+.2f} / {edge - ref[n][1]:+.2f} | "
              f"{seconds:.1f} | {load:.1f} |")


if __name__ == "__main__":
    main()
