"""Blind blur identification: accuracy and cost of ``ResNetBlurRegressor``.

Setting (paper section 3, :data:`deepblur.pretrained._default.DEFAULT_SETTING`):
128x128 images, K = 20 basis learned from 200 random operators (paper section
1.2.1), cone simplified to 40 rays (Algorithm 1) and sampled with Algorithm 2
(alpha uniform in [0.8, 1.2]), noise sigma = 0.01 on clean images normalised
to mean 0.5. Training data are drawn on the fly (``BlurDataset``) from the
natural images of the training sources; test sets are fixed:

* ``natural``: patches of the held-out source images (camera, coffee, flower);
* ``points``: simulated point sources (single-molecule-like);
* ``microscopy``: patches of scikit-image's ``cell`` and ``ihc`` images.

Every error is printed beside the mean-gamma baseline (the mean of 50 000
draws of the training cone, the best constant) on the same test set, split
into operator, direction (after optimal rescaling) and scale errors. Each set
is also scored after projecting the estimates on the sampler's support
(``ConeSampler.project`` in the operator metric, what ``project=True`` does),
with the per-image change against the raw estimates of the same run.

Usage: ``python benchmarks/bench_regressor.py [--quick] [--images N] ...``
(``--threads 1`` is much faster than 2 when other jobs share the CPU: the
intra-op threads then thrash).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import joblib
import numpy as np
import torch
from safetensors.torch import load_file
from skorch.callbacks import LRScheduler

from deepblur.datasets.images import (
    extract_patches,
    load_microscopy_images,
    make_dead_leaves,
    make_point_sources,
    natural_image_split,
)
from deepblur.datasets.simulate import BlurDataset, make_blurred_images
from deepblur.estimators.regressor import ResNetBlurRegressor
from deepblur.pretrained._default import make_default_setting, relative_errors
from deepblur.pretrained._io import load_model, save_model


def summary(name, y, pred, base, gram):
    e, b = relative_errors(y, pred, gram), relative_errors(y, base, gram)
    row = {f"{k}": float(v.mean()) for k, v in e.items()}
    row.update({f"baseline_{k}": float(v.mean()) for k, v in b.items()})
    print(f"{name:>12}: operator {row['operator']:.4f} (mean-gamma baseline "
          f"{row['baseline_operator']:.4f}) | direction {row['direction']:.4f} "
          f"(baseline {row['baseline_direction']:.4f}) | scale "
          f"{row['scale']:.4f} (baseline {row['baseline_scale']:.4f})")
    return row


def projected_summary(name, y, pred, base, sampler, gram):
    """``summary`` of the estimates projected on the sampler's support, with the
    per-image change of the operator error against the raw ones (same run)."""
    t = time.perf_counter()
    proj = sampler.project(pred, gram=gram)
    rate = len(pred) / (time.perf_counter() - t)
    row = summary(f"{name} proj", y, proj, base, gram)
    diff = (relative_errors(y, proj, gram)["operator"]
            - relative_errors(y, pred, gram)["operator"])
    row.update(change=float(diff.mean()),
               change_sem=float(diff.std() / np.sqrt(len(diff))),
               worse=float((diff > 1e-6).mean()), images_per_s=rate)
    print(f"{'':>12}  projection: {100 * row['change']:+.3f} +- "
          f"{100 * row['change_sem']:.3f} points (per image, paired), worse on "
          f"{100 * row['worse']:.1f} % of the images, {rate:.0f} images/s")
    return row


def train(args, setting, train_images, mean_gamma, n_batches, noise):
    """Train the regressor of the command line's configuration."""
    basis, sampler = setting["basis"], setting["sampler"]
    # On a GPU the batches are blurred on the training device, in-process.
    on_gpu = torch.device(args.device).type == "cuda"
    data = BlurDataset(train_images, basis, sampler, batch_size=args.batch_size,
                       boundary=args.boundary, device=args.device if on_gpu
                       else "cpu", pool_size=args.pool_size,
                       n_batches=n_batches, random_state=0,
                       noise_std=tuple(args.train_noise) if args.train_noise
                       else noise)
    kwargs = {} if args.criterion == "frobenius" else {
        "criterion": torch.nn.MSELoss}
    net = ResNetBlurRegressor(
        basis=basis, module__width=args.width, module__depth=args.depth,
        module__stem_stride=args.stem_stride, module__head=args.head,
        module__coord_channels=args.coord, module__input_norm=args.input_norm,
        module__output_bias=mean_gamma,
        lr=args.lr, max_epochs=args.epochs, batch_size=args.batch_size,
        device=args.device,
        iterator_train__num_workers=0 if on_gpu else args.workers,
        callbacks=[("lr", LRScheduler("CosineAnnealingLR", T_max=args.epochs))],
        **kwargs)
    t = time.perf_counter()
    net.fit(data, None)
    train_s = time.perf_counter() - t
    n_seen = n_batches * args.batch_size * args.epochs
    print(f"trained on {n_seen} images in {train_s:.0f} s on {args.device} "
          f"({n_seen / train_s:.0f} images/s incl. data generation)")
    if args.save:
        save_model(args.save, net, setting, noise_std=(
                tuple(args.train_noise) if args.train_noise else noise), extra=dict(
            training=dict(n_images=n_seen, seconds=round(train_s, 1),
                          device=args.device, boundary=args.boundary,
                          batch_size=args.batch_size, lr=args.lr,
                          epochs=args.epochs, criterion=args.criterion,
                          noise_std=args.train_noise or noise)))
        print(f"model saved to {args.save}")

    return net, n_seen, train_s


def with_dead_leaves(images, fraction, shape, side=512):
    """``images`` plus dead-leaves scenes making ``fraction`` of the crops."""
    if not 0 < fraction <= 1:
        raise ValueError(f"--dead-leaves must be in (0, 1]; got {fraction}.")
    crops = sum((im.shape[0] - shape[0] + 1) * (im.shape[1] - shape[1] + 1)
                for im in images.values())
    per_scene = (side - shape[0] + 1) * (side - shape[1] + 1)
    n = 8 if fraction == 1 else max(1, round(
        crops * fraction / (1 - fraction) / per_scene))
    scenes = make_dead_leaves(n, (side, side), random_state=2024)
    print(f"training sources: {'' if fraction == 1 else 'natural images + '}"
          f"{n} dead-leaves scenes of {side}x{side}")
    leaves = {f"dead_leaves_{i}": scene for i, scene in enumerate(scenes)}
    return leaves if fraction == 1 else {**images, **leaves}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="64x64, K=8, few images")
    p.add_argument("--images", type=int, default=64_000, help="training images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--stem-stride", type=int, default=4)
    p.add_argument("--head", default="spatial")
    p.add_argument("--coord", action="store_true")
    p.add_argument("--input-norm", default=None,
                   choices=["contrast", "laplacian", "hessian"],
                   help="what the stem sees besides the image (ResNet input_norm)")
    p.add_argument("--criterion", choices=["frobenius", "mse"], default="frobenius")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--noise-std", type=float, default=None)
    p.add_argument("--train-noise", type=float, nargs=2, default=None,
                   metavar=("LOW", "HIGH"),
                   help="train on noise sigma uniform in [LOW, HIGH] (tests keep "
                        "--noise-std / the setting's)")
    p.add_argument("--n-components", type=int, default=None,
                   help="K of the basis (default: the default setting's 20)")
    p.add_argument("--n-rays", type=int, default=None,
                   help="rays of the cone (default: the default setting's 40)")
    p.add_argument("--model", default=None,
                   help="evaluate a saved model directory (e.g. "
                        "deepblur/pretrained/default) instead of training one")
    p.add_argument("--estimator", choices=["network", "crop_network", "spectral"],
                   default="network",
                   help="with --model: which of its estimators to evaluate "
                        "(crop_network, spectral: pass --noise-std and "
                        "--boundary, else their training noise range and "
                        "boundary are used)")
    p.add_argument("--boundary", choices=["zero", "crop"], default=None,
                   help="how train and test images are blurred (default: the "
                        "setting's; crop = windows on a larger scene)")
    p.add_argument("--setting-from", default=None,
                   help="train in the setting (basis, cone, sampler, noise) of a "
                        "saved model directory instead of fitting it")
    p.add_argument("--save", default=None,
                   help="write the trained model (safetensors + JSON) here")
    p.add_argument("--device", default="cpu",
                   help="training device; on cuda the data are generated there")
    p.add_argument("--pool-size", type=int, default=2000,
                   help="clean patches kept in memory for the training batches")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--n-test", type=int, default=512)
    p.add_argument("--cache", default=os.environ.get("DEEPBLUR_CACHE"),
                   help="joblib file caching the fitted basis/cone/sampler")
    p.add_argument("--json", default=None, help="append the results here")
    p.add_argument("--dead-leaves", type=float, default=0.0, metavar="FRACTION",
                   help="share of the training crops taken from 512x512 "
                        "dead-leaves scenes added to the training sources "
                        "(1: dead leaves only)")
    args = p.parse_args()
    if args.estimator != "network" and not args.model:
        p.error("--estimator needs --model (the saved model to evaluate)")
    torch.set_num_threads(args.threads)

    overrides = {}
    if args.quick:
        overrides = dict(n_operators=40, image_shape=(64, 64), kernel_shape=(15, 15),
                         grid_shape=(8, 8), n_components=8, n_rays=16)
        args.images, args.n_test, args.epochs = min(args.images, 2048), 128, 2
    if args.n_components is not None:
        overrides["n_components"] = args.n_components
    if args.n_rays is not None:
        overrides["n_rays"] = args.n_rays
    if args.model or args.setting_from:
        source = Path(args.model or args.setting_from)
        model = load_model(source, estimator=args.estimator)  # network unless --model
        gamma = load_file(str(source / "model.safetensors"))["cone.gamma"].numpy()
        setting = dict(basis=model.basis, cone=model.cone, sampler=model.sampler,
                       gamma=gamma, params=dict(model.setting))
    elif args.cache and Path(args.cache).exists():
        setting = joblib.load(args.cache)
    else:
        t = time.perf_counter()
        setting = make_default_setting(**overrides)
        print(f"basis + cone fitted in {time.perf_counter() - t:.1f} s")
        if args.cache:
            joblib.dump(setting, args.cache)
    basis, sampler, params = setting["basis"], setting["sampler"], setting["params"]
    noise = params["noise_std"] if args.noise_std is None else args.noise_std
    if args.boundary is None:
        args.boundary = params.get("boundary", "zero")
    print(f"boundary: {args.boundary}")
    shape = tuple(params["image_shape"])
    train_images, test_images = natural_image_split()
    if args.dead_leaves:
        train_images = with_dead_leaves(train_images, args.dead_leaves, shape)
    mean_gamma = sampler.sample(50_000).mean(0)

    n_batches = max(1, args.images // (args.batch_size * args.epochs))
    if args.model:
        net, n_seen, train_s = model.regressor, 0, 0.0
        # raw outputs (the projection is reported apart), no support check
        net.set_params(project=False, support_tolerance=None)
        print(f"evaluating {args.model} (no training)")
    else:
        net, n_seen, train_s = train(args, setting, train_images,
                                     mean_gamma, n_batches, noise)
    rng = np.random.RandomState(123)
    tests = {
        "natural": test_images,
        "points": make_point_sources(args.n_test, shape, random_state=rng),
        "microscopy": extract_patches(load_microscopy_images(), args.n_test, shape,
                                      random_state=rng),
    }
    results = dict(vars(args), n_train_images=n_seen, train_s=train_s,
                   noise_std=noise)
    for name, images in tests.items():
        X, y = make_blurred_images(images, basis, sampler, args.n_test,
                                   boundary=args.boundary,
                                   noise_std=noise, random_state=rng)
        t = time.perf_counter()
        pred = net.predict(X)
        rate = len(X) / (time.perf_counter() - t)
        base = np.tile(mean_gamma, (len(y), 1))
        results[name] = summary(name, y, pred, base, basis.gram_)
        results[name]["images_per_s"] = rate
        results[f"{name}_projected"] = projected_summary(name, y, pred, base,
                                                         sampler, basis.gram_)
    print(f"inference: {results['natural']['images_per_s']:.0f} images/s on "
          f"{getattr(net, 'device', 'cpu')} ({args.threads} thread(s))")
    for sigma in (0.0, 0.01, 0.03, 0.1):
        X, y = make_blurred_images(test_images, basis, sampler, args.n_test,
                                   boundary=args.boundary,
                                   noise_std=sigma, random_state=7)
        pred, base = net.predict(X), np.tile(mean_gamma, (len(y), 1))
        results[f"natural_sigma_{sigma}"] = summary(f"sigma={sigma}", y, pred,
                                                    base, basis.gram_)
        results[f"natural_sigma_{sigma}_projected"] = projected_summary(
            f"sigma={sigma}", y, pred, base, sampler, basis.gram_)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
