"""Unit gain of the tiles of a large image with ``boundary="model"``: brightness.

A scene blurred with the basis's zero boundary by a stitched operator whose
PSFs have mass 1 (each tile's ``gamma``, a mix of 3 rays of the shipped
sampler, divided by its interior gain), noise 0.01 at mean 0.5, 256x384
(3x5 tiles of 128x128 at stride 64). Deblurred with ``boundary="model"``,
TV, ``lam=800`` (for the image at mean 0.5), ``--max-iter`` iterations
(``tol=0``), five ways: :func:`deepblur.tiling.deblur_large` given each
tile's true ``gamma`` times 2 (an oracle regressor: the gain is not
identifiable, ``unit_gain=True`` takes it out), the true operator in one
piece (:func:`deepblur.tiling.deblur_stitched`), ``TVDeblurrer(unit_gain=True)``
given twice the tiles' mean ``gamma``, the same with that ``gamma`` at unit
PSF mass and ``unit_gain=False``, and ``deblur_large`` blind with the
shipped crop network. Prints, per image, the interior gain of the operator
``deblur_large`` used (the mean of ``H 1`` a kernel away from the image's
border) and, per result, its interior mean over the clean image's (pixels
24 and more from the border) and its PSNR against the clean image (peak:
the clean image's maximum), whole / interior.

Then (``--one-tile``, on by default; ``--no-one-tile`` skips it) the same on
an image of ONE tile, 128x128 (the basis's shape), blurred with the zero
boundary by the basis's operator of a mix of 3 rays at unit PSF mass, noise
0.01: :func:`deepblur.pretrained.deblur_image` (what ``deepblur deblur
--boundary model`` runs on one image), ``deblur_large`` and
``TVDeblurrer(unit_gain=True)``, each given twice the true ``gamma``, the
true operator's solve, and, for continuity, ``deblur_large`` (oracle) on a
129x128 image (2 tiles) of the same scene blurred by its stitched operator of
the same ``gamma``; interior: pixels 16 and more from the border.

Usage: ``python benchmarks/bench_unit_gain_tiles.py [--images camera coffee cell]
[--max-iter 200] [--threads 1] [--no-one-tile] [--no-large]``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch

from deepblur import TVDeblurrer
from deepblur.pretrained import bundled_image, deblur_image, load_default
from deepblur.tiling import (
    deblur_large,
    deblur_stitched,
    stitched_operator,
    tile_gains,
    tile_grid,
)

SHAPE = (256, 384)
LAM = 800.0
BAND = 24


def psnr(a, ref):
    return 10 * np.log10(ref.max() ** 2 / np.mean((a - ref) ** 2))


class Oracle:
    """``predict``: twice the true ``gamma`` of the tile it is given."""

    def __init__(self, y, gamma, grid):
        self.tiles = np.stack([y[grid.tile_slices(t)] for t in range(grid.n_tiles)])
        self.gamma = gamma

    def predict(self, X):
        X = np.asarray(X, dtype=np.float64)
        d = ((X[:, None] - self.tiles[None]) ** 2).sum((2, 3))
        return 2.0 * self.gamma[d.argmin(1)]


def report(label, out, u, inside):
    out = np.asarray(out, dtype=np.float64)
    print(f"  {label:<38} interior mean / clean "
          f"{out[inside].mean() / u[inside].mean():.4f}  PSNR "
          f"{psnr(out, u):.2f} / {psnr(out[inside], u[inside]):.2f} dB",
          flush=True)


def one_tile(model, names, max_iter):
    """The image of one tile (the basis's shape), and one a row larger."""
    basis = model.basis
    shape = tuple(basis.image_shape_)
    K = basis.kernels_.shape[0]
    rays = np.asarray(model.sampler.generators_)
    ones = torch.ones(K, dtype=torch.float64)
    band = 16
    inside = (slice(band, -band), slice(band, -band))
    solve = dict(boundary="model", lam=LAM, max_iter=max_iter, tol=0)
    print(f"one tile ({shape[0]}x{shape[1]}), boundary='model'; interior: "
          f"pixels {band} and more from the border")
    for name in names:
        rng = np.random.default_rng(sum(map(ord, name)) + 1)
        g = rng.dirichlet(np.ones(3)) @ rays[rng.integers(len(rays), size=3)]
        g = g / tile_gains(basis, g[None], interior=True)[0]   # PSFs of mass 1
        u = bundled_image(name, shape)
        y = basis.apply(u, g) + 0.01 * rng.standard_normal(shape)
        scale = 0.5 / y.mean()
        print(f"{name}: whole gain of the true operator "
              f"{tile_gains(basis, g[None])[0]:.4f} (PSF mass 1); blurry "
              f"interior mean / clean {y[inside].mean() / u[inside].mean():.4f}",
              flush=True)
        report("blurry", y, u, inside)
        report("deblur_image, gamma x 2", deblur_image(
            model, y, gamma=2 * g, **solve)[0], u, inside)
        report("deblur_large, oracle gamma x 2", deblur_large(
            y, (basis, Oracle(y, g[None], tile_grid(shape, shape))),
            check_boundary=False, **solve).restored, u, inside)
        report("TVDeblurrer unit_gain, gamma x 2", TVDeblurrer(
            basis, unit_gain=True, **solve).fit(y[None]).transform(
                y, gamma=2 * g), u, inside)
        ref = TVDeblurrer(basis, **solve).fit(y[None]).transform(
            y * scale, gamma=g) / scale
        report("true operator", ref, u, inside)
        # one row more: 2 tiles, the same gamma, the scene one row taller
        big = (shape[0] + 1, shape[1])
        grid = tile_grid(big, shape)
        gt = np.tile(g, (grid.n_tiles, 1))
        u1 = bundled_image(name, big)
        y1 = stitched_operator(basis, gt, grid).forward(
            torch.from_numpy(u1)[None], ones).numpy()[0]
        y1 = y1 + 0.01 * rng.standard_normal(big)
        report(f"{big[0]}x{big[1]}: deblur_large, oracle x 2", deblur_large(
            y1, (basis, Oracle(y1, gt, grid)), check_boundary=False,
            **solve).restored, u1, inside)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", nargs="+", default=["camera", "coffee", "cell"])
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--one-tile", action=argparse.BooleanOptionalAction,
                   default=True)
    p.add_argument("--large", action=argparse.BooleanOptionalAction,
                   default=True, help="the 256x384 images (3x5 tiles)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    model = load_default(estimator="crop_network")
    if args.one_tile:
        one_tile(model, args.images, args.max_iter)
    if not args.large:
        return
    basis = model.basis
    K = basis.kernels_.shape[0]
    grid = tile_grid(SHAPE, basis.image_shape_)
    rays = np.asarray(model.sampler.generators_)
    ones = torch.ones(K, dtype=torch.float64)
    inside = (slice(BAND, -BAND), slice(BAND, -BAND))
    solve = dict(boundary="model", lam=LAM, max_iter=args.max_iter, tol=0)
    for name in args.images:
        rng = np.random.default_rng(sum(map(ord, name)))
        u = bundled_image(name, SHAPE)                        # mean 0.5
        idx = rng.integers(len(rays), size=(grid.n_tiles, 3))
        w = rng.dirichlet(np.ones(3), size=grid.n_tiles)
        g = np.einsum("tj,tjk->tk", w, rays[idx])
        g = g / tile_gains(basis, g, interior=True)[:, None]  # PSFs of mass 1
        y = stitched_operator(basis, g, grid).forward(
            torch.from_numpy(u)[None], ones).numpy()[0]
        y = y + 0.01 * rng.standard_normal(SHAPE)
        scale = 0.5 / y.mean()
        results = {}
        t0 = time.perf_counter()
        oracle = deblur_large(y, (basis, Oracle(y, g, grid)), check_boundary=False,
                              **solve)
        results["deblur_large, oracle gamma x 2"] = oracle.restored
        flat = oracle.operator().forward(torch.ones((1,) + SHAPE,
                                                    dtype=torch.float64), ones)
        r = basis.kernels_.shape[1] // 2
        gain = flat[0, r:-r, r:-r].mean().item()
        ref, _ = deblur_stitched(y * scale, basis, g, grid, **solve)
        results["true operator, one piece"] = ref / scale
        mean_gamma = g.mean(0)
        results["TVDeblurrer unit_gain, gamma x 2"] = TVDeblurrer(
            basis, unit_gain=True, **solve).fit(y[None]).transform(
                y, gamma=2.0 * mean_gamma)
        unit = mean_gamma / tile_gains(basis, mean_gamma[None], interior=True)[0]
        results["TVDeblurrer, gamma at unit PSF mass"] = TVDeblurrer(
            basis, **solve).fit(y[None]).transform(y, gamma=unit)
        results["deblur_large, blind crop network"] = deblur_large(
            y, model, **solve).restored
        print(f"{name}: operator of deblur_large (oracle), interior gain "
              f"{gain:.4f}; blurry interior mean / clean "
              f"{y[inside].mean() / u[inside].mean():.4f}, PSNR {psnr(y, u):.2f} / "
              f"{psnr(y[inside], u[inside]):.2f} dB "
              f"({time.perf_counter() - t0:.0f} s)")
        for label, out in results.items():
            report(label, out, u, inside)


if __name__ == "__main__":
    main()
