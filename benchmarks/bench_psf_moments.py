"""What supervising the local PSF moments does to training
(``ResNet(moment_stage=...)`` with :class:`deepblur.nets.PSFMomentLoss`).

For each seed, two networks of the 15-minute CPU recipe's shape (width 8,
depth 2, stem stride 4, the image and its Laplacian, noise drawn in [0,
0.02]) start from the same initial weights (the moment head apart) and see
the same data stream in the shipped model's setting: one trained with MSE on
gamma, one with MSE on gamma plus ``--weight`` times the error of its map of
the local PSF moments at stage ``--stage``. Printed: the relative operator
error on 1 024 held-out natural and microscopy images (protocol noise 0.01)
beside the mean-gamma baseline, the ratio of the two networks' errors in the
same run, and a paired difference on the same images.

Example (the numbers of benchmarks/README.md, "Supervising the local PSF
moments"; about 7 minutes per network with one thread, one process per
seed)::

    python benchmarks/bench_psf_moments.py --images 64000 --seeds 0
"""
import argparse
import json
import time

import numpy as np
import torch

from deepblur.datasets import BlurDataset, load_microscopy_images, make_blurred_images
from deepblur.datasets.images import natural_image_split
from deepblur.nets import PSFMomentLoss, ResNet
from deepblur.pretrained import load_default, relative_errors


def train_one(stage, seed, args, model, train, draws):
    """One network (``stage`` None: MSE alone); ``(seconds, network)``."""
    torch.manual_seed(seed)
    net = ResNet(model.basis.kernels_.shape[0], width=args.width, depth=2,
                 stem_stride=4, head="spatial", input_norm="laplacian",
                 output_bias=draws.mean(0))
    if stage is not None:             # the same trunk and head, plus the moment head
        state = net.state_dict()
        net = ResNet(model.basis.kernels_.shape[0], width=args.width, depth=2,
                     stem_stride=4, head="spatial", input_norm="laplacian",
                     output_bias=draws.mean(0), moment_stage=stage)
        net.load_state_dict(state, strict=False)
    loss_fn = PSFMomentLoss(model.basis.kernels_, model.basis.maps_, draws,
                            weight=args.weight if stage is not None else 0.0)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr)
    n_batches = args.images // args.batch_size
    data = BlurDataset(train, model.basis, model.sampler,
                       batch_size=args.batch_size, n_batches=n_batches,
                       pool_size=2000, random_state=seed, noise_std=(0.0, 0.02))
    net.train()
    t = time.perf_counter()
    for i, (X, y) in zip(range(n_batches), data, strict=False):
        for group in opt.param_groups:      # cosine schedule over the batches
            group["lr"] = args.lr * 0.5 * (1 + np.cos(np.pi * i / n_batches))
        loss = loss_fn(net(X), y.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t, net.eval()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=64_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--stage", type=int, default=3)
    p.add_argument("--weight", type=float, default=0.01)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--n-test", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="append the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = load_default()
    train, test = natural_image_split()
    draws = model.sampler.sample(50_000)
    sets = {}
    for name, images in (("natural", test), ("microscopy", load_microscopy_images())):
        X, y = make_blurred_images(images, model.basis, model.sampler, args.n_test,
                                   noise_std=model.setting["noise_std"],
                                   random_state=123)
        sets[name] = torch.as_tensor(X, dtype=torch.float32), y
        base = relative_errors(y, np.tile(draws.mean(0), (len(y), 1)),
                               model.basis.gram_)["operator"]
        print(f"mean-gamma baseline: {100 * base.mean():.2f} % ({args.n_test} "
              f"{name} images)")
    for seed in args.seeds:
        per_image = {}
        for label, stage in (("mse", None), ("moments", args.stage)):
            seconds, net = train_one(stage, seed, args, model, train, draws)
            row = dict(seed=seed, label=label, stage=stage, weight=args.weight,
                       images=args.images, seconds=seconds)
            for name, (X, y) in sets.items():
                with torch.no_grad():
                    pred = torch.cat([net(X[i:i + 256]) for i in range(0, len(X), 256)])
                err = relative_errors(y, pred.double().numpy(), model.basis.gram_)
                per_image[label, name] = err["operator"]
                row[name] = {k: float(v.mean()) for k, v in err.items()}
            nat = {k: 100 * v for k, v in row["natural"].items()}
            print(f"seed {seed} {label:8s}: natural {nat['operator']:.2f} % "
                  f"(direction {nat['direction']:.2f}, scale "
                  f"{nat['scale']:.2f}), microscopy "
                  f"{100 * row['microscopy']['operator']:.2f} % after {args.images} "
                  f"images in {seconds:.0f} s ({args.images / seconds:.0f} images/s)",
                  flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")
        for name in sets:
            a, b = per_image["mse", name], per_image["moments", name]
            d = 100 * (b - a)
            print(f"seed {seed} {name}: moments / mse error ratio "
                  f"{b.mean() / a.mean():.3f}; "
                  f"paired difference {d.mean():+.2f} +- "
                  f"{d.std(ddof=1) / np.sqrt(len(d)):.2f} points")


if __name__ == "__main__":
    main()
