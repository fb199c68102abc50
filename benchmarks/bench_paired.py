"""Two saved models on the same held-out images, raw and projected, paired.

Usage: ``python benchmarks/bench_paired.py BEFORE_DIR AFTER_DIR [--n 4096]
[--seed 2026] [--noise-std 0.01] [--estimator spectral] [--after-estimator
network] [--boundary crop] [--points]``; give the same directory twice to
measure what the projection alone changes, or two estimators to compare them
(e.g. a spectral regressor against a network). Both directories are written
by ``deepblur.pretrained.save_model`` in the same setting (basis, cone); the
test images are natural-image patches of the held-out sources and patches
of the bundled microscopy images, blurred as in training (the setting's
boundary) with operators drawn from the sampler. For each set it prints the
mean relative operator error (direction, scale) with its standard error for
both models, raw and projected on the sampler's support, the mean-gamma
baseline, and the per-image changes of AFTER against BEFORE: raw against
raw, projected against projected, and AFTER projected against BEFORE raw.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from deepblur.datasets import (
    extract_patches,
    load_microscopy_images,
    make_blurred_images,
    make_point_sources,
    natural_image_split,
)
from deepblur.pretrained import load_model, relative_errors


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("before")
    p.add_argument("after")
    p.add_argument("--n", type=int, default=4096, help="test images per set")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--noise-std", type=float, default=None,
                   help="default: the setting's")
    p.add_argument("--estimator", choices=["network", "crop_network", "spectral"],
                   default="network")
    p.add_argument("--after-estimator",
                   choices=["network", "crop_network", "spectral"],
                   default=None, help="AFTER's estimator (default: --estimator)")
    p.add_argument("--boundary", choices=["zero", "crop"], default=None,
                   help="default: the one the estimator was trained with")
    p.add_argument("--points", action="store_true",
                   help="add a set of simulated point sources")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    before = load_model(args.before, args.estimator, project=False)
    after = load_model(args.after, args.after_estimator or args.estimator,
                       project=False)
    boundary = args.boundary or before.setting["boundary"]
    basis, sampler = before.basis, before.sampler
    G = basis.gram_
    if np.linalg.norm(after.basis.gram_ - G) > 1e-5 * np.linalg.norm(G):
        raise SystemExit("the two models do not share a basis: gamma means "
                         "different operators in them")
    noise = before.setting["noise_std"] if args.noise_std is None else args.noise_std
    rng = np.random.RandomState(args.seed)
    shape = tuple(before.setting["image_shape"])
    sets = {"natural": natural_image_split()[1],
            "microscopy": extract_patches(load_microscopy_images(), args.n, shape,
                                          random_state=rng)}
    if args.points:
        sets["points"] = make_point_sources(args.n, shape, random_state=rng)
    mean_gamma = sampler.sample(50_000).mean(0)
    for name, images in sets.items():
        X, g = make_blurred_images(images, basis, sampler, args.n,
                                   boundary=boundary,
                                   noise_std=noise, random_state=rng)
        rows = {}
        for label, model in (("before", before), ("after", after)):
            t = time.perf_counter()
            pred = model.regressor.predict(X).astype(np.float64)
            rate = len(X) / (time.perf_counter() - t)
            rows[label] = pred
            rows[f"{label}, projected"] = sampler.project(pred, gram=G)
            print(f"{name:>10} {label:>6}: {rate:.0f} images/s")
        rows["mean gamma"] = np.tile(mean_gamma, (len(X), 1))
        errors = {k: relative_errors(g, v, G) for k, v in rows.items()}
        for label, e in errors.items():
            op = e["operator"]
            print(f"{name:>10} {label:>17}: operator {100 * op.mean():.3f} % "
                  f"(sem {100 * op.std() / np.sqrt(len(op)):.3f}), direction "
                  f"{100 * e['direction'].mean():.3f} %, scale "
                  f"{100 * e['scale'].mean():.3f} %")
        for a, b in (("after", "before"), ("after, projected", "before, projected"),
                     ("after, projected", "before")):
            d = errors[a]["operator"] - errors[b]["operator"]
            print(f"{name:>10} {a} - {b}: {100 * d.mean():+.3f} +- "
                  f"{100 * d.std() / np.sqrt(len(d)):.3f} points per image; "
                  f"better on {100 * np.mean(d < 0):.0f} % of the images")


if __name__ == "__main__":
    main()
