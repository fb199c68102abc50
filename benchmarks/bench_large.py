"""Benchmark of blind estimation and deblurring of large images (issue 7).

For each size ``N`` (``--sizes``, 1024 and 2048 by default; 4096 is opt-in):

* clean image: a bundled natural image (``--image``, the held-out ``camera``
  by default) mirrored (``numpy.pad(mode="symmetric")``) up to ``N x N`` and
  scaled to mean 0.5;
* true operator: a stitched product-convolution of the shipped model's basis
  (:func:`deepblur.tiling.stitched_operator`) on a grid of 128x128 tiles with
  stride 96 (not the estimator's stride: the estimate's blending differs from
  the truth's), one ``gamma`` per tile drawn from the shipped sampler
  (Algorithm 2) and rescaled to unit gain; applied block-wise (exact: zero
  boundary, windows larger than the kernel), noise at the model's
  ``noise_std``;
* estimation (:func:`deepblur.tiling.estimate_tiles`, stride ``--stride``,
  tiles scaled to the training mean, then unit gain as in
  :func:`deepblur.tiling.deblur_large`): wall time and peak RSS;
* operator error: the PSF field of both operators at a grid of pixels
  (``--psf-spacing``), i.e. ``H delta_p = sum_k F_k(p) e_k``, relative
  ``sqrt(sum_p ||psf_true(p) - psf_hat(p)||^2 / sum_p ||psf_true(p)||^2)``;
  for reference the same error of a single spatially invariant estimate (the
  mean of the tiles' ``gamma``) and of the mean of the true tiles' ``gamma``
  (how much the true blur varies);
* deblurring with ``lam="auto"`` and ``--max-iter`` FISTA iterations
  (``tol=0``: every solve runs exactly that many): a global solve (for
  ``N <= --global-max``) and a block-wise one with ``--max-pixels`` pixels per
  solve, both with the same step (``||H||^2`` from ``--power-iter`` power
  iterations on the global operator, timed apart), so that they differ only by
  the blocks; SNR of the tiled result against the global one, largest
  difference on the seams (4 pixels either side of a core boundary) and
  elsewhere. Above ``--global-max`` only the block-wise solve runs, with
  ``||H||^2`` taken as 1.05 times the largest power-iteration estimate on four
  1024x1024 windows (one per quadrant; the norm of a blur is local).

Peak memory is the largest resident set size (``/proc/self/status`` VmRSS,
polled every 5 ms) during a phase, minus the size before it (after
``malloc_trim``, so that memory freed by the previous phase is not reused
unseen).

Run ``python benchmarks/bench_large.py [--sizes 1024 2048 4096]``; it prints a
Markdown table for ``benchmarks/README.md`` (section "Large images (issue 7)").
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import os
import platform
import threading
import time

import numpy as np
import torch
from sklearn.base import clone

from deepblur.datasets.images import load_natural_images
from deepblur.metrics import snr
from deepblur.operators.norms import power_iteration
from deepblur.pretrained import load_default
from deepblur.pretrained._apply import training_gain
from deepblur.tiling import (
    _basis_parts,
    _check_solve,
    deblur_stitched,
    estimate_tiles,
    stitched_maps,
    stitched_operator,
    tile_grid,
)

try:
    _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
except (OSError, AttributeError):  # not glibc: increments may be underestimated
    _LIBC = None


class PeakRSS:
    """Peak resident memory (MB) above the level at entry, polled in a thread."""

    def __init__(self, period=0.005):
        self.period = period
        self.peak = 0.0

    @staticmethod
    def _rss():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        return 0.0

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            self._stop.wait(self.period)

    def __enter__(self):
        gc.collect()
        if _LIBC is not None:
            _LIBC.malloc_trim(0)    # give freed heap back: the next phase starts low
        self.start = self._rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.mb = self.peak - self.start


def clean_image(name, n):
    img = load_natural_images([name])[name]
    pad = ((0, max(0, n - img.shape[0])), (0, max(0, n - img.shape[1])))
    big = np.pad(img, pad, mode="symmetric")[:n, :n]
    return big * (0.5 / big.mean())


def component_gains(basis):
    ones = np.ones(basis.image_shape_)
    return np.asarray(basis.apply(ones, np.eye(basis.kernels_.shape[0]))).mean(
        axis=(1, 2))


def true_gammas(model, grid, truth, seed):
    """One gamma per tile of the true operator's grid.

    ``"iid"``: independent draws of the sampler (the PSF changes completely
    from one tile to the next, 96 pixels). ``"smooth"``: 3x3 draws at the
    corners and middles of the image, bilinearly interpolated at the tiles'
    centres (a convex combination of points of the cone stays in the cone):
    the PSF varies over the whole image.
    """
    sampler = clone(model.sampler).set_params(random_state=seed)
    sampler.fit(model.sampler.generators_)
    if truth == "iid":
        return sampler.sample(grid.n_tiles)
    anchors = sampler.sample(9).reshape(3, 3, -1)
    (H, W), (h, w) = grid.image_shape, grid.tile_shape
    out = []
    for r, c in grid.offsets:
        y = 2 * (r + h / 2) / H            # in [0, 2]: between the anchors
        x = 2 * (c + w / 2) / W
        i, j = min(int(y), 1), min(int(x), 1)
        a, b = y - i, x - j
        out.append((1 - a) * (1 - b) * anchors[i, j] + (1 - a) * b * anchors[i, j + 1]
                   + a * (1 - b) * anchors[i + 1, j] + a * b * anchors[i + 1, j + 1])
    return np.array(out)


def apply_blockwise(basis, gamma, grid, u, block=1024):
    """``H u`` for the stitched operator, window by window (exact)."""
    n = u.shape[0]
    radius = max(basis.kernels_.shape[1:]) // 2 + 1
    out = np.empty_like(u)
    ones = torch.ones(basis.kernels_.shape[0], dtype=torch.float32)
    for r in range(0, n, block):
        for c in range(0, n, block):
            win = (max(0, r - radius), min(n, r + block + radius),
                   max(0, c - radius), min(n, c + block + radius))
            op = stitched_operator(basis, gamma, grid, window=win, dtype=np.float32)
            x = torch.from_numpy(u[win[0]:win[1], win[2]:win[3]].astype(np.float32))
            y = op.forward(x[None], ones)[0].numpy()
            out[r:r + block, c:c + block] = y[r - win[0]:r - win[0] + block,
                                              c - win[2]:c - win[2] + block]
    return out


def psf_error(basis, gamma_true, grid_true, gamma_hat, grid_hat, spacing):
    """Relative PSF-field error on a grid of pixels, via the kernels' Gram."""
    n = grid_true.image_shape[0]
    E = basis.kernels_.reshape(basis.kernels_.shape[0], -1)
    G = E @ E.T
    pts = np.arange(spacing // 2, n, spacing)
    num = den = num_const = num_var = 0.0
    const = np.tile(gamma_hat.mean(axis=0), (grid_hat.n_tiles, 1))
    mean_true = np.tile(gamma_true.mean(axis=0), (grid_true.n_tiles, 1))
    for r in pts:
        win = (int(r), int(r) + 1, 0, n)
        ft = stitched_maps(gamma_true, basis.maps_, grid_true, window=win)[:, 0, pts]
        fh = stitched_maps(gamma_hat, basis.maps_, grid_hat, window=win)[:, 0, pts]
        fc = stitched_maps(const, basis.maps_, grid_hat, window=win)[:, 0, pts]
        fm = stitched_maps(mean_true, basis.maps_, grid_true, window=win)[:, 0, pts]
        num_var += np.einsum("kp,kl,lp->", ft - fm, G, ft - fm)
        num += np.einsum("kp,kl,lp->", ft - fh, G, ft - fh)
        num_const += np.einsum("kp,kl,lp->", ft - fc, G, ft - fc)
        den += np.einsum("kp,kl,lp->", ft, G, ft)
    return (float(np.sqrt(num / den)), float(np.sqrt(num_const / den)),
            float(np.sqrt(num_var / den)))


def seam_mask(blocks, shape, width=4):
    mask = np.zeros(shape, dtype=bool)
    for b in blocks:
        a, bb, c, d = b.core
        for edge in (a, bb):
            if 0 < edge < shape[0]:
                mask[max(0, edge - width):edge + width, :] = True
        for edge in (c, d):
            if 0 < edge < shape[1]:
                mask[:, max(0, edge - width):edge + width] = True
    return mask


def check_solves(basis, args):
    """Refuse, before any work, the settings that :func:`run_size`'s
    block-wise solve would refuse (a ``--margin`` under the kernel radius,
    a ``--max-pixels`` too small for one tile with its margins) after the
    blur and the estimation of each size (minutes): the library's own
    check of :func:`deepblur.tiling.deblur_stitched`'s parameters."""
    kernels, maps, model_boundary = _basis_parts(basis)
    for n in args.sizes:
        _check_solve((n, n), kernels.shape[1:], maps.shape[1:], lam="auto",
                     boundary="model", regularization="tv", dtype="float32",
                     max_pixels=args.max_pixels, margin=args.margin,
                     model_boundary=model_boundary, max_iter=args.max_iter,
                     tol=0)


def run_size(model, n, args):
    basis = model.basis
    K = basis.kernels_.shape[0]
    tile = tuple(basis.image_shape_)
    rng = np.random.default_rng(args.seed)
    row = dict(N=n)
    u = clean_image(args.image, n)
    gains = component_gains(basis)

    grid_true = tile_grid((n, n), tile, 96)
    gamma_true = true_gammas(model, grid_true, args.truth, args.seed)
    gamma_true = gamma_true / (gamma_true @ gains)[:, None]
    with PeakRSS() as m:
        y = apply_blockwise(basis, gamma_true, grid_true, u)
        y = y + np.max(model.setting["noise_std"]) * rng.standard_normal(y.shape)
    row["blur_s"] = m.seconds

    target = 0.5 * training_gain(model)
    with PeakRSS() as m:
        # the zero-boundary network on purpose (measured against the others)
        gamma_hat, grid_hat = estimate_tiles(y, model.regressor, stride=args.stride,
                                             target_mean=target, progress=False,
                                             check_boundary=False)
        gamma_hat = gamma_hat / (gamma_hat @ gains)[:, None]
    row.update(tiles=grid_hat.n_tiles, est_s=m.seconds, est_mb=m.mb)
    row["op_err"], row["op_err_const"], row["op_var"] = psf_error(
        basis, gamma_true, grid_true, gamma_hat, grid_hat, args.psf_spacing)

    common = dict(lam="auto", max_iter=args.max_iter, tol=0, dtype="float32")
    row["snr_blurry"] = float(snr(u, y))
    if n <= args.global_max:
        with PeakRSS() as m:
            op = stitched_operator(basis, gamma_hat, grid_hat, dtype=np.float32)
            ones = torch.ones(K)
            x0 = torch.zeros((1, n, n))
            sigma = power_iteration(lambda v: op.forward(v, ones),
                                    lambda v: op.adjoint(v, ones), x0,
                                    max_iter=args.power_iter, tol=1e-4)
            lip = float(sigma[0]) ** 2
            del op
        row.update(power_s=m.seconds, lipschitz=lip)
        with PeakRSS() as m:
            glob, info_g = deblur_stitched(y, basis, gamma_hat, grid_hat,
                                           max_pixels=n * n, lipschitz=lip, **common)
        row.update(global_s=m.seconds, global_mb=m.mb)
        with PeakRSS() as m:
            tiled, info = deblur_stitched(y, basis, gamma_hat, grid_hat,
                                          max_pixels=args.max_pixels,
                                          margin=args.margin, lipschitz=lip,
                                          **common)
        row.update(tiled_s=m.seconds, tiled_mb=m.mb, blocks=len(info["blocks"]))
        diff = np.abs(tiled - glob)
        mask = seam_mask(info["blocks"], diff.shape)
        span = float(glob.max() - glob.min())
        row.update(snr_tiled_vs_global=float(snr(glob, tiled)),
                   seam_max=float(diff[mask].max()) / span if mask.any() else 0.0,
                   inner_max=float(diff[~mask].max()) / span,
                   snr_global=float(snr(u, glob)))
    else:
        # no global operator: ||H||^2 from power iterations on 4 windows of
        # 1024x1024 (one per quadrant), times 1.05; the norm of a blur is local
        with PeakRSS() as m:
            lip = 0.0
            w = min(1024, n // 2)
            ones = torch.ones(K)
            for r0 in (n // 4 - w // 2, 3 * n // 4 - w // 2):
                for c0 in (n // 4 - w // 2, 3 * n // 4 - w // 2):
                    op = stitched_operator(basis, gamma_hat, grid_hat,
                                           window=(r0, r0 + w, c0, c0 + w),
                                           dtype=np.float32)
                    sigma = power_iteration(lambda v, op=op: op.forward(v, ones),
                                            lambda v, op=op: op.adjoint(v, ones),
                                            torch.zeros((1, w, w)),
                                            max_iter=args.power_iter, tol=1e-4)
                    lip = max(lip, 1.05 * float(sigma[0]) ** 2)
                    del op
        row.update(power_s=m.seconds, lipschitz=lip)
        with PeakRSS() as m:
            tiled, info = deblur_stitched(y, basis, gamma_hat, grid_hat,
                                          max_pixels=args.max_pixels,
                                          margin=args.margin, lipschitz=lip,
                                          **common)
        row.update(tiled_s=m.seconds, tiled_mb=m.mb, blocks=len(info["blocks"]))
    row["snr_tiled"] = float(snr(u, tiled))
    return row


def boundary_cue(model, n_images=40, pad=16, seed=1):
    """Error of the regressor on 128x128 images blurred with the zero boundary
    (as in training) and on the same images cut from a larger blurred image
    (same operator and maps, the maps extended by edge values): a tile of a
    large image has no zero-boundary border."""
    from deepblur.operators.product_convolution import ProductConvolution
    from deepblur.pretrained import bundled_image, estimate_gamma

    basis = model.basis
    sampler = clone(model.sampler).set_params(random_state=seed)
    gammas = sampler.fit(model.sampler.generators_).sample(n_images)
    rng = np.random.default_rng(seed)
    maps = np.pad(basis.maps_, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    op = ProductConvolution(basis.kernels_, maps)
    names = ["camera", "coffee", "astronaut", "chelsea"]
    errors = {"zero": [], "interior": []}
    for i, g in enumerate(gammas):
        h, w = basis.image_shape_
        big = bundled_image(names[i % 4], (h + 2 * pad, w + 2 * pad))
        crop = big[pad:-pad, pad:-pad]
        y0 = basis.apply(crop, g)
        y1 = op.forward(torch.from_numpy(big)[None], torch.from_numpy(g))[0].numpy()
        y1 = y1[pad:-pad, pad:-pad]
        for key, y in (("zero", y0), ("interior", y1)):
            y = y + np.max(model.setting["noise_std"]) * rng.standard_normal(y.shape)
            g_hat, _ = estimate_gamma(model, y)
            errors[key].append(float(basis.operator_distance(g, g_hat)))
    return {k: float(np.mean(v)) for k, v in errors.items()}


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def run_header(threads, max_iter=None):
    """The machine and the run's settings, the first line of the output."""
    return (f"# {platform.processor() or platform.machine()}, {os.cpu_count()} "
            f"CPUs, torch {torch.__version__}, {threads} thread(s), load average "
            f"{os.getloadavg()[0]:.2f} at start"
            + ("" if max_iter is None else f"; max_iter={max_iter}"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--max-pixels", type=int, default=512 * 512)
    parser.add_argument("--margin", type=int, default=None)
    parser.add_argument("--global-max", type=int, default=2048)
    parser.add_argument("--power-iter", type=int, default=50)
    parser.add_argument("--psf-spacing", type=int, default=16)
    parser.add_argument("--image", default="camera")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--truth", choices=["smooth", "iid"], default="smooth")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{run_header(args.threads, args.max_iter)}, stride={args.stride}, "
          f"max_pixels={args.max_pixels}, truth={args.truth}")
    model = load_default()
    try:
        check_solves(model.basis, args)
    except ValueError as exc:
        parser.error(str(exc))
    cue = boundary_cue(model)
    print(f"# regressor error on 128x128 images, zero boundary (training): "
          f"{cue['zero']:.3f}; cut from a larger blurred image: "
          f"{cue['interior']:.3f}", flush=True)
    rows = []
    for n in args.sizes:
        t0 = time.perf_counter()
        row = run_size(model, n, args)
        row["load"] = os.getloadavg()[0]
        rows.append(row)
        print(f"# N={n} done in {time.perf_counter() - t0:.0f} s: {row}", flush=True)
    print()
    print("| N | tiles | estimation s (MB) | operator error: tiled / one gamma "
          "/ true mean gamma | power it. s | global solve s (MB) "
          "| tiled solve s (MB), blocks "
          "| tiled / global time, memory | SNR tiled vs global dB "
          "| max diff seams / elsewhere (of range) | SNR blurry -> deblurred dB "
          "| load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        g = r.get("global_s")
        mem = r["tiled_mb"] / max(r.get("global_mb") or 1.0, 1.0)
        ratio = "-" if g is None else f"{r['tiled_s'] / g:.2f}, {mem:.2f}"
        glob = ("-" if g is None else f"{g:.1f} ({r['global_mb']:.0f})")
        seams = ("-" if g is None else
                 f"{r['seam_max']:.2e} / {r['inner_max']:.2e}")
        print(f"| {r['N']} | {r['tiles']} | {r['est_s']:.1f} ({r['est_mb']:.0f}) "
              f"| {r['op_err']:.3f} / {r['op_err_const']:.3f} / {r['op_var']:.3f} "
              f"| {fmt(r.get('power_s'), '.1f')} | {glob} "
              f"| {r['tiled_s']:.1f} ({r['tiled_mb']:.0f}), {r['blocks']} "
              f"| {ratio} | {fmt(r.get('snr_tiled_vs_global'), '.1f')} | {seams} "
              f"| {r['snr_blurry']:.2f} -> {r['snr_tiled']:.2f} "
              f"| {r['load']:.1f} |")


if __name__ == "__main__":
    main()
