"""Blurring each clean patch by several operators (``gammas_per_image``):
what it saves in data generation and what it costs in learning.

Part 1 times ``BlurDataset.draw`` of a batch of 64 in the shipped model's
setting for several ``gammas_per_image`` (one thread; the ratio is against 1,
in the same run). Part 2 (``--images N``) trains networks with
``train_regressor`` as the 15-minute CPU recipe does (width 8, Laplacian
input, noise drawn in [0, 0.02], ``torch.compile``, one data worker, 10
epochs, batch 64) for each ``--configs GAMMAS:DEPTH``, with the same seed, and
prints their wall time and their relative operator error on held-out natural
and microscopy images (noise 0.01) beside the mean-gamma baseline, with the
error ratio against the first configuration.

Example (the numbers of benchmarks/README.md, "Data reuse and depth")::

    python benchmarks/bench_data_reuse.py --images 64000 --configs 1:2 8:2 8:1
"""
import argparse
import json
import time

import numpy as np
import torch
from safetensors.torch import load_file

from deepblur.datasets import BlurDataset, make_blurred_images
from deepblur.datasets.images import load_microscopy_images, natural_image_split
from deepblur.pretrained import load_default, relative_errors
from deepblur.pretrained._io import DEFAULT_DIR
from deepblur.pretrained._train import train_regressor


def time_draws(model, train, gammas, batch_size=64, repeats=20):
    """Images per second drawn by ``BlurDataset`` for each ``gammas_per_image``."""
    rates = {}
    for g in gammas:
        data = BlurDataset(train, model.basis, model.sampler, batch_size=batch_size,
                           pool_size=2000, noise_std=(0.0, 0.02),
                           gammas_per_image=g, random_state=0)
        data.draw(batch_size)
        t = time.perf_counter()
        for _ in range(repeats):
            data.draw(batch_size)
        rates[g] = repeats * batch_size / (time.perf_counter() - t)
    return rates


def shipped_setting(model):
    """The setting dict of the shipped ``model`` (``load_default()``), as
    :func:`~deepblur.pretrained.save_model` takes it: with the calibration
    ``gamma``, which it writes beside the cone's rays."""
    gamma = load_file(str(DEFAULT_DIR / "model.safetensors"))["cone.gamma"].numpy()
    return dict(basis=model.basis, cone=model.cone, sampler=model.sampler,
                gamma=gamma, params=dict(model.setting))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gammas", type=int, nargs="+", default=[1, 2, 4, 8, 16],
                   help="gammas_per_image values timed in part 1")
    p.add_argument("--images", type=int, default=0,
                   help="training images per network in part 2 (0: no training)")
    p.add_argument("--configs", nargs="+", default=["1:2", "8:2", "8:1"],
                   help="GAMMAS_PER_IMAGE:DEPTH of the networks of part 2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--n-test", type=int, default=1024)
    p.add_argument("--save-dir", default=None,
                   help="save each network there (save_model), one folder each")
    p.add_argument("--json", default=None, help="append the results here")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_default()
    train, test = natural_image_split()
    rates = time_draws(model, train, args.gammas)
    for g, rate in rates.items():
        print(f"gammas_per_image={g:2d}: {rate:6.0f} images/s drawn "
              f"({rate / rates[args.gammas[0]]:.2f}x)", flush=True)
    if not args.images:
        return
    setting = shipped_setting(model)
    mean_gamma = model.sampler.sample(50_000).mean(0)
    sets = {}
    for name, images in (("natural", test), ("microscopy", load_microscopy_images())):
        X, y = make_blurred_images(images, model.basis, model.sampler, args.n_test,
                                   noise_std=model.setting["noise_std"],
                                   random_state=123)
        base = relative_errors(y, np.tile(mean_gamma, (len(y), 1)), model.basis.gram_)
        sets[name] = (X, y)
        print(f"{name}: mean-gamma baseline {100 * base['operator'].mean():.2f} % "
              f"({args.n_test} held-out images, noise {model.setting['noise_std']})")
    first = None
    for config in args.configs:
        g, depth = (int(v) for v in config.split(":"))
        t = time.perf_counter()
        net = train_regressor(setting, train, n_images=args.images, epochs=10,
                              batch_size=64, lr=args.lr, width=8, depth=depth,
                              input_norm="laplacian", pool_size=2000,
                              gammas_per_image=g, noise_std=(0.0, 0.02),
                              num_workers=1, device="cpu", compile=True,
                              output_bias=mean_gamma, random_state=args.seed,
                              verbose=0)
        seconds = time.perf_counter() - t
        row = dict(gammas_per_image=g, depth=depth, images=args.images,
                   seed=args.seed, seconds=seconds)
        for name, (X, y) in sets.items():
            err = relative_errors(y, net.predict(X), model.basis.gram_)
            row[name] = float(err["operator"].mean())
        first = first or row
        print(f"gammas_per_image={g} depth={depth}: natural "
              f"{100 * row['natural']:.2f} % ({row['natural'] / first['natural']:.3f}"
              f"x), microscopy {100 * row['microscopy']:.2f} % "
              f"({row['microscopy'] / first['microscopy']:.3f}x); {args.images} "
              f"images in {seconds:.0f} s ({args.images / seconds:.0f} images/s)",
              flush=True)
        if args.save_dir:
            from deepblur.pretrained import save_model

            save_model(f"{args.save_dir}/g{g}_d{depth}", net, setting,
                       noise_std=(0.0, 0.02))
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
