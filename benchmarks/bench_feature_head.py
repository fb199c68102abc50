"""Cost of fitting the blur-statistics head, with and without a data worker.

Usage: ``python benchmarks/bench_feature_head.py [--model DIR] [--n-images
32768] [--n-test 1024] [--threads 1]``. ``add_feature_head`` simulates fresh
images, passes them through the trained network and computes their blur
statistics, then fits a ridge regression. With ``num_workers=0`` all of it
runs in this process; with ``num_workers=1`` a ``DataLoader`` worker
simulates the next batch while this process reads the previous one, as the
training does. The script refits the head of the model in ``DIR`` (default:
the shipped model) both ways on the same number of images and prints the
wall time of each, their ratio, and the error of both refitted networks on
the same held-out natural images (their images differ: a worker's stream has
its own seed, so the two heads differ by sampling only). A model that has a
head already is refitted with its blur statistics, starting from its network
with the old head folded into the last layer: the cost is that of the
recipe's fit, the errors those of a refit.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from deepblur.datasets import make_blurred_images, natural_image_split
from deepblur.pretrained import (
    FEATURE_HEAD_DEFAULTS,
    add_feature_head,
    load_model,
    relative_errors,
)

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "deepblur/pretrained/default"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL))
    p.add_argument("--n-images", type=int, default=32_768,
                   help="images of each head fit (the CPU recipe's head_images)")
    p.add_argument("--batch-size", type=int,
                   default=FEATURE_HEAD_DEFAULTS["batch_size"])
    p.add_argument("--n-test", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    setting = dict(basis=model.basis, sampler=model.sampler, params=model.setting)
    # the model's own statistics, if it has a head already
    branch = getattr(model.regressor.module_, "blur_features", None)
    noise = model.noise_std
    noise = tuple(noise) if isinstance(noise, (list, tuple)) else noise
    train, test = natural_image_split()
    X, y = make_blurred_images(test, model.basis, model.sampler, args.n_test,
                               noise_std=model.setting["noise_std"],
                               boundary=model.setting["boundary"], random_state=2026)
    print(f"torch {torch.__version__}, {args.threads} thread(s); model {args.model}; "
          f"{args.n_images} images per fit, batches of {args.batch_size}; "
          f"test: {args.n_test} held-out natural images at sigma "
          f"{model.setting['noise_std']}")
    errors, seconds = {}, {}
    for workers in (0, 1):
        t = time.perf_counter()
        net = add_feature_head(setting, train, model.regressor,
                               n_images=args.n_images, batch_size=args.batch_size,
                               blur_features=branch, noise_std=noise,
                               num_workers=workers)
        seconds[workers] = time.perf_counter() - t
        errors[workers] = relative_errors(y, net.predict(X),
                                          model.basis.gram_)["operator"]
        print(f"  num_workers={workers}: {seconds[workers]:6.1f} s, "
              f"{args.n_images / seconds[workers]:5.0f} images/s; held-out error "
              f"{100 * errors[workers].mean():.3f} %", flush=True)
    diff = 100 * (errors[1] - errors[0])
    print(f"one worker against none: {seconds[0] / seconds[1]:.2f}x faster; error "
          f"{diff.mean():+.3f} +- {diff.std(ddof=1) / np.sqrt(len(diff)):.3f} points "
          "per image (paired)")


if __name__ == "__main__":
    main()
