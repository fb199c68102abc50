"""What the network's input does to the start of training: the image alone
against the image and its Laplacian (``ResNet(input_norm="laplacian")``).

Both networks start from the same seeded weights (the stem apart) and see the
same data stream (``BlurDataset(random_state=seed)``) in the shipped model's
setting; the loss (MSE on gamma) is printed every 4 096 images, then the
relative operator error on held-out natural images beside the mean-gamma
baseline, and the ratio of the two inputs' errors in the same run.

Example (the numbers of benchmarks/README.md, "Laplacian input"; about 4
minutes per run and seed with one thread)::

    python benchmarks/bench_input_norm.py --images 64000 --seeds 0 1

``--boundary crop`` trains and tests on windows of larger scenes (real
images, no dark border) instead of the protocol's zero boundary;
``--noise-std 0 0.02`` trains on a noise range (the test images keep the
protocol's 0.01). The bundled microscopy images (never seen in training) are
a second test set. The Hessian input (numbers of the section "Hessian
input")::

    python benchmarks/bench_input_norm.py --images 64000 --seeds S \
        --norms laplacian hessian --noise-std 0 0.02
"""
import argparse
import json
import time

import numpy as np
import torch
from torch.nn import functional as F

from deepblur.datasets import (
    BlurDataset,
    load_microscopy_images,
    make_blurred_images,
)
from deepblur.datasets.images import natural_image_split
from deepblur.nets import ResNet
from deepblur.nets.resnet import _laplacian_channels
from deepblur.pretrained import load_default, relative_errors


def time_laplacian(X, repeats=20):
    """Milliseconds per batch ``X`` of the library's Laplacian channels
    (shifted slices) and of the same channels by a 3x3 convolution."""
    stencil = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])[None, None]

    def by_convolution(x):
        m = x.mean(dim=(-2, -1), keepdim=True).abs().clamp_min(1e-6)
        return torch.cat([x, 28.0 * F.conv2d(x / m, stencil, padding=1)], 1)

    assert torch.allclose(by_convolution(X), _laplacian_channels(X), atol=1e-4)
    times = []
    for f in (_laplacian_channels, by_convolution):
        for _ in range(3):
            f(X)
        t = time.perf_counter()
        for _ in range(repeats):
            f(X)
        times.append(1e3 * (time.perf_counter() - t) / repeats)
    return times


def train_one(norm, seed, args, model, train, mean_gamma):
    """Train one network; ``(curve, seconds, network)``."""
    torch.manual_seed(seed)
    net = ResNet(model.basis.kernels_.shape[0], width=args.width, depth=2,
                 stem_stride=4, head="spatial", input_norm=norm,
                 output_bias=mean_gamma)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    n_batches = args.images // args.batch_size
    data = BlurDataset(train, model.basis, model.sampler,
                       batch_size=args.batch_size, n_batches=n_batches,
                       pool_size=args.pool_size, random_state=seed,
                       boundary=args.boundary,
                       noise_std=args.noise_std)
    curve, losses, seen = [], [], 0
    net.train()
    t = time.perf_counter()
    for i, (X, y) in zip(range(n_batches), data, strict=False):
        for group in opt.param_groups:      # cosine schedule over the batches
            group["lr"] = args.lr * 0.5 * (1 + np.cos(np.pi * i / n_batches))
        loss = F.mse_loss(net(X), y.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(X)
        losses.append(loss.item())
        if seen % 4096 < args.batch_size:
            curve.append((seen, float(np.mean(losses))))
            losses = []
    return curve, time.perf_counter() - t, net.eval()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=64_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--norms", nargs="+", default=["none", "laplacian"],
                   choices=["none", "contrast", "laplacian", "hessian"])
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--pool-size", type=int, default=2000)
    p.add_argument("--n-test", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--boundary", choices=["zero", "crop"], default="zero",
                   help="blur model of training and test images (crop: windows "
                        "of larger scenes)")
    p.add_argument("--noise-std", type=float, nargs="+", default=None,
                   help="training noise: one level or a range LO HI (default: "
                        "the protocol's)")
    p.add_argument("--json", default=None, help="append the results here")
    args = p.parse_args()
    if args.noise_std is not None and len(args.noise_std) not in (1, 2):
        p.error("--noise-std takes one level or a range LO HI")
    torch.set_num_threads(args.threads)
    model = load_default()
    train, test = natural_image_split()
    mean_gamma = model.sampler.sample(50_000).mean(0)
    if args.noise_std is None:
        args.noise_std = model.setting["noise_std"]
    elif len(args.noise_std) == 1:
        args.noise_std = args.noise_std[0]
    else:
        args.noise_std = tuple(args.noise_std)
    sets = {}
    for set_name, images in (("natural", test),
                             ("microscopy", load_microscopy_images())):
        Xs, ys = make_blurred_images(images, model.basis, model.sampler,
                                     args.n_test,
                                     noise_std=model.setting["noise_std"],
                                     boundary=args.boundary, random_state=123)
        sets[set_name] = torch.as_tensor(Xs, dtype=torch.float32), ys
    X, y = sets["natural"]
    batch = X[:args.batch_size, None]
    slices, conv = time_laplacian(batch)
    print(f"Laplacian channels of {len(batch)} images: {slices:.1f} ms (shifted "
          f"slices, the library's) against {conv:.1f} ms (3x3 convolution), "
          f"{conv / slices:.1f}x")
    for set_name, (_, ys) in sets.items():
        base = relative_errors(ys, np.tile(mean_gamma, (len(ys), 1)),
                               model.basis.gram_)
        print(f"mean-gamma baseline: {100 * base['operator'].mean():.2f} % "
              f"({args.n_test} {set_name} images, {args.boundary} boundary)")
    errors = {}
    for seed in args.seeds:
        for name in args.norms:
            curve, seconds, net = train_one(None if name == "none" else name,
                                            seed, args, model, train, mean_gamma)
            found = {}
            for set_name, (Xs, ys) in sets.items():
                with torch.no_grad():
                    pred = torch.cat([net(Xs[i:i + 256])
                                      for i in range(0, len(Xs), 256)])
                found[set_name] = relative_errors(ys, pred.double().numpy(),
                                                  model.basis.gram_)
            err = found["natural"]
            errors[name, seed] = float(err["operator"].mean())
            micro = float(found["microscopy"]["operator"].mean())
            errors[name, seed, "microscopy"] = micro
            print(f"input {name:9s} seed {seed}: {100 * errors[name, seed]:.2f} % "
                  f"(direction {100 * err['direction'].mean():.2f}, scale "
                  f"{100 * err['scale'].mean():.2f}), microscopy {100 * micro:.2f} "
                  f"% after {args.images} images in "
                  f"{seconds:.0f} s ({args.images / seconds:.0f} images/s)")
            print("  loss x 1e3 every 4096 images: "
                  + " ".join(f"{1e3 * v:.1f}" for _, v in curve), flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(dict(input=name, seed=seed,
                                            boundary=args.boundary,
                                            error=errors[name, seed],
                                            microscopy=micro,
                                            noise_std=args.noise_std,
                                            lr=args.lr, batch_size=args.batch_size,
                                            images=args.images, width=args.width,
                                            seconds=seconds, curve=curve)) + "\n")
    for name in args.norms[1:]:
        ratios = [errors[name, s] / errors[args.norms[0], s] for s in args.seeds]
        micro = [errors[name, s, "microscopy"] / errors[args.norms[0], s,
                                                        "microscopy"]
                 for s in args.seeds]
        print(f"{name} / {args.norms[0]}: error ratio "
              + ", ".join(f"{r:.3f}" for r in ratios) + " natural, "
              + ", ".join(f"{r:.3f}" for r in micro) + " microscopy (per seed)")


if __name__ == "__main__":
    main()
