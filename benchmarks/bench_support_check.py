"""How far the shipped regressors' estimates lie from their sampler's support.

``predict`` of a regressor with a ``sampler`` and a ``support_tolerance``
warns (:class:`deepblur.exceptions.OutOfSupportWarning`) about estimates
whose relative operator distance to the support of the training ``gamma``
(:meth:`deepblur.ResNetBlurRegressor.support_distance`) exceeds the
tolerance. This benchmark measures, for the shipped zero-boundary network,
the crop network and the spectral regressor, on test sets like and unlike
their training data:

- the mean relative operator error, beside the mean-gamma baseline (50 000
  draws of the sampler) on the same images;
- the quantiles of the distance to the support;
- the share of images each candidate tolerance flags, and the mean error of
  the flagged and of the other images at the model's tolerance (what the
  warning is worth: the flagged estimates should be the bad ones);
- the cost of the check: the projection per image, as a ratio to the
  regressor's inference on the same images (one CPU thread); and the cost of
  the check ``predict`` runs on unprojected estimates
  (:func:`deepblur.estimators._gamma.support_distances_settled`: batched
  bounds on ``--device``, exact projections only for the estimates they do
  not settle), as a ratio to the exact projection of every estimate, with
  the check that both flag the same images, and the share of the estimates
  that the bounds settle;
- what the calibration rule of ``deepblur train`` gives for the two
  networks (:func:`deepblur.pretrained.calibrate_support_tolerance`, the
  99.9th percentile of the distances on fresh images drawn as their training
  images were, :func:`deepblur.pretrained.support_calibration_images`: the
  network's noise and zero boundary; the crop network's noise, crop boundary
  and a fifth of point sources), on ``--n-calibration`` images, two draws.

Test sets (every clean image scaled to mean 0.5 before the blur, the blur a
draw of the model's sampler unless said otherwise, the estimator's own
boundary): natural patches of held-out source images and of training source
images, the bundled microscopy images, natural patches at twice the top of
the training noise; point sources on a dark field at four densities
(``make_point_sources``) and at density 0.002 on a background of 0.1; natural
patches blurred by held-out operators of the random family the basis and the
cone were fitted on (outside the support: see
``bench_held_out_operators.py``); for the zero-boundary network, windows of
larger scenes (crop boundary), on which it is known to fail, and the
held-out natural set's observations moved by one pixel (zero fill; the
error is against the unmoved operator, whose PSFs are given 8 pixels
apart).

Usage: ``python benchmarks/bench_support_check.py [--n 512] [--threads 1]
[--n-calibration 8192] [--calibration-only] [--device cuda]`` (about 6 minutes on 2 CPU
cores, 5 of them the calibration; 13 with ``--n 2048``).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from bench_held_out_operators import family_operators

from deepblur.datasets import (
    blur_images,
    extract_patches,
    load_microscopy_images,
    make_point_sources,
    natural_image_split,
)
from deepblur.estimators._gamma import support_distances, support_distances_settled
from deepblur.pretrained import (
    SUPPORT_QUANTILE,
    calibrate_support_tolerance,
    load_default,
    relative_errors,
    support_calibration_images,
)
from deepblur.solvers.cone import cone_distance_bounds

TOLERANCES = (0.04, 0.06, 0.08, 0.10, 0.15)


def test_sets(model, boundary, n, seed):
    """``{name: (images, gamma)}`` of the benchmark (see the module doc)."""
    rng = np.random.RandomState(seed)
    shape = tuple(model.basis.image_shape_)
    noise = model.setting["noise_std"]
    top = float(np.max(noise))
    train, test = natural_image_split()
    nat = extract_patches(test, n, shape, random_state=rng)
    draws = model.sampler.sample(n)
    sets = {}

    def add(name, u, g=None, noise_std=noise, bound=boundary):
        g = draws[:len(u)] if g is None else g
        y = blur_images(u, g, model.basis, noise_std=noise_std, boundary=bound,
                        random_state=rng)
        sets[name] = (y, g)

    add("natural, held-out sources", nat)
    add("natural, training sources", extract_patches(train, n, shape,
                                                     random_state=rng))
    add("microscopy", extract_patches(load_microscopy_images(), n, shape,
                                      random_state=rng))
    add(f"natural, noise {2 * top:g}", nat, noise_std=2 * top)
    n_pts = max(n // 2, 1)
    for density in (0.0005, 0.002, 0.02, 0.1):
        u = make_point_sources(n_pts, shape, density=density, random_state=rng)
        add(f"points {density:g}, dark field", u)
    u = make_point_sources(n_pts, shape, density=0.002, random_state=rng) + 0.1
    add("points 0.002, background 0.1", u)
    add("natural, held-out operators", nat,
        g=family_operators(model, n, int(model.setting["random_state"]) + 12345))
    if boundary == "zero":
        add("natural, windows (crop boundary)", nat, bound="crop")
        y, g = sets["natural, held-out sources"]
        sets["natural, shifted 1 pixel"] = (_shift_one_pixel(y, rng), g)
    return sets


def _shift_one_pixel(y, rng):
    """Each image moved by one pixel up, down, left or right (at random),
    the row or column uncovered set to 0: the blur field moves by one pixel
    against the frame (its PSFs are given 8 pixels apart), the scene with it."""
    out = np.zeros_like(y)
    for i, k in enumerate(rng.randint(4, size=len(y))):
        if k == 0:
            out[i, 1:] = y[i, :-1]
        elif k == 1:
            out[i, :-1] = y[i, 1:]
        elif k == 2:
            out[i, :, 1:] = y[i, :, :-1]
        else:
            out[i, :, :-1] = y[i, :, 1:]
    return out


def run(name, model, boundary, n, seed, tolerance, device="cpu"):
    G = model.basis.gram_
    regressor, sampler = model.regressor, model.sampler
    if device != "cpu":         # the network's inference and the bounds there
        regressor.module_.to(device)
        regressor.device = device
    mean_gamma = sampler.sample(50_000).mean(0)
    print(f"\n{name} ({boundary} boundary), support_tolerance "
          f"{tolerance if tolerance is None else f'{tolerance:g}'}; error: mean "
          "relative operator error (mean-gamma baseline); distance to the "
          "support: quantiles 50/90/99/100 %; flagged: share of images over "
          f"each tolerance {TOLERANCES}")
    t_net = t_proj = 0.0
    n_total = 0
    settled_times, settled_shares = {}, {}
    for set_name, (X, g) in test_sets(model, boundary, n, seed).items():
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = _raw(regressor, X)
        t_net += time.perf_counter() - t
        t = time.perf_counter()
        _, dist = support_distances(sampler, raw, G)
        t_exact = time.perf_counter() - t
        t_proj += t_exact
        n_total += len(X)
        if tolerance is not None:
            support_distances_settled(sampler, raw[:8], G, tolerance, device)
            t = time.perf_counter()
            settled = support_distances_settled(sampler, raw, G, tolerance,
                                                device)
            settled_times[set_name] = (time.perf_counter() - t, t_exact, len(X))
            _, upper = cone_distance_bounds(
                raw, np.asarray(sampler.generators_, dtype=np.float64),
                alpha_range=sampler.alpha_range, gram=G, tol=tolerance,
                device=device)
            settled_shares[set_name] = np.mean(upper <= tolerance)
            if not np.array_equal(settled > tolerance, dist > tolerance):
                raise SystemExit(f"{set_name}: the settled check flags other "
                                 "images than the exact distances")
        err = relative_errors(g, raw.astype(np.float64), G)["operator"]
        base = relative_errors(g, np.tile(mean_gamma, (len(g), 1)), G)["operator"]
        q = "/".join(f"{v:.3f}" for v in np.quantile(dist, [0.5, 0.9, 0.99, 1]))
        flags = " ".join(f"{100 * np.mean(dist > t):5.1f}" for t in TOLERANCES)
        line = (f"{set_name:>34}: error {100 * err.mean():5.1f} % "
                f"({100 * base.mean():4.1f} %), distance {q}, flagged % {flags}")
        if tolerance is not None:
            far = dist > tolerance
            parts = []
            for label, sel in (("flagged", far), ("others", ~far)):
                parts.append(f"{label} {100 * err[sel].mean():5.1f} %" if sel.any()
                             else f"{label}   -")
            line += (f" | at {tolerance:g}: {100 * far.mean():5.1f} % flagged; "
                     "error " + ", ".join(parts))
        print(line, flush=True)
    print(f"cost: inference {1e3 * t_net / n_total:.2f} ms/image, projection "
          f"{1e3 * t_proj / n_total:.2f} ms/image ({t_proj / t_net:.3f} x the "
          f"inference; {n_total} images, {torch.get_num_threads()} thread(s), "
          f"{device})")
    if settled_times:
        t_set = sum(t for t, _, _ in settled_times.values())
        print(f"predict's check (settled on {device}): {1e3 * t_set / n_total:.3f}"
              f" ms/image, {t_set / t_proj:.2f} x the exact projection, "
              f"{t_set / t_net:.3f} x the inference; the same images flagged. "
              "Per set, ms/image (x exact): " + "; ".join(
                  f"{k} {1e3 * t / m:.3f} ({t / te:.2f})"
                  for k, (t, te, m) in settled_times.items()))
        print("share of the estimates the bounds settle within the tolerance "
              "(200 steps; the rest are projected exactly): " + "; ".join(
                  f"{k} {100 * v:.1f} %" for k, v in settled_shares.items()))


def calibration(n, seeds=(1, 2)):
    """The tolerance ``deepblur train``'s rule gives each shipped network."""
    train = natural_image_split()[0]
    print(f"\ncalibration rule: the {100 * SUPPORT_QUANTILE:g}th percentile of "
          f"the distances on {n} fresh training-like images")
    for name, estimator, boundary, points in (("network", "network", "zero", 0.0),
                                              ("crop network", "crop_network",
                                               "crop", 0.2)):
        model = load_default(estimator)
        setting = dict(basis=model.basis, sampler=model.sampler,
                       params=model.setting)
        values = []
        for seed in seeds:
            X = support_calibration_images(setting, train, n,
                                           noise_std=model.setting["noise_std"],
                                           boundary=boundary,
                                           point_fraction=points,
                                           random_state=seed)
            values.append(calibrate_support_tolerance(model.regressor, X))
        print(f"{name:>12} (noise {model.setting['noise_std']}, {boundary} "
              f"boundary, point sources {points:.0%}): "
              + ", ".join(f"{v:.4f}" for v in values)
              + f" (shipped: {model.regressor.support_tolerance})", flush=True)


def _raw(regressor, X):
    """The regressor's estimates before any projection or check."""
    saved = regressor.project, regressor.support_tolerance
    regressor.project, regressor.support_tolerance = False, None
    try:
        return np.asarray(regressor.predict(X), dtype=np.float64)
    finally:
        regressor.project, regressor.support_tolerance = saved


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=512,
                        help="images per natural set (half per point set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-calibration", type=int, default=8192,
                        help="images per draw of the calibration rule (0: skip)")
    parser.add_argument("--calibration-only", action="store_true")
    parser.add_argument("--device", default="cpu",
                        help="where the networks infer and the check's bounds "
                             "are computed (e.g. cuda)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    for name, estimator, boundary in (("network", "network", "zero"),
                                      ("crop network", "crop_network", "crop"),
                                      ("spectral", "spectral", "crop")):
        model = load_default(estimator)
        if not args.calibration_only:
            run(name, model, boundary, args.n, args.seed,
                model.regressor.support_tolerance,
                device=args.device if estimator != "spectral" else "cpu")
    if args.n_calibration:
        calibration(args.n_calibration)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
