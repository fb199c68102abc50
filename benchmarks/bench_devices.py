"""CPU against GPU in the same run: training, inference and TV deblurring.

For each device present (``cpu`` always, ``cuda`` when available), in the
shipped model's setting (128x128 images, K = 20, noise 0.01):

* **data**: images/s of ``BlurDataset`` batches (fresh patches, gamma from
  Algorithm 2, blur, noise) generated on the device;
* **step**: images/s of training steps on a fixed batch (the network alone:
  the floor of the training rate);
* **compiled step** (``--compile``): the same with ``torch.compile``, after
  its compilation (printed: its ratio to the eager step);
* **train**: images/s of the whole training loop (data + step), as
  ``benchmarks/bench_regressor.py --device`` trains;
* **predict**: inference images/s of the trained network;
* **tv**: seconds of a 200-iteration TV deblurring of a batch of 64 images.

Every GPU row prints its ratio to the CPU row measured in the same run; the
training rows also print their ratio to the ``step`` floor.

Usage: ``python benchmarks/bench_devices.py [--threads N] [--configs ...]``
with configs ``width:depth:stem_stride:batch`` (default: the shipped model's
and two finer stems).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from deepblur.datasets.images import natural_image_split
from deepblur.datasets.simulate import BlurDataset
from deepblur.estimators.deblur import TVDeblurrer
from deepblur.nets.resnet import ResNet
from deepblur.pretrained._io import DEFAULT_DIR, load_model


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(fn, n_images, device, seconds=4.0, warmup=3):
    """Images/s of ``fn`` (processing ``n_images`` per call), median of runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return n_images / float(np.median(times))


def bench_config(model, images, device, width, depth, stem, batch, boundary,
                 compile=False):
    data = BlurDataset(images, model.basis, model.sampler, batch_size=batch,
                       n_batches=10**9, noise_std=model.setting["noise_std"],
                       boundary=boundary, device=device, random_state=0)
    it = iter(data)
    row = {"data": _rate(lambda: next(it), batch, device)}
    net = ResNet(model.basis.kernels_.shape[0], width=width, depth=depth,
                 stem_stride=stem, channels_last=True).to(device)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    X, y = next(it)

    def step(X=X, y=y):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(X), y)
        loss.backward()
        opt.step()

    row["step"] = _rate(step, batch, device)
    if compile:
        fwd = torch.compile(net)

        def compiled_step(X=X, y=y):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.mse_loss(fwd(X), y).backward()
            opt.step()

        t = time.perf_counter()
        compiled_step()
        _sync(device)
        row["compile_s"] = time.perf_counter() - t
        row["compiled step"] = _rate(compiled_step, batch, device)

    def train():
        Xb, yb = next(it)
        step(Xb, yb)

    row["train"] = _rate(train, batch, device)
    net.eval()
    with torch.no_grad():
        Xp = torch.cat([next(it)[0] for _ in range(max(1, 512 // batch))])
        row["predict"] = _rate(lambda: net(Xp), len(Xp), device)
    return row


def bench_tv(model, images, device, n=64, max_iter=200):
    data = BlurDataset(images, model.basis, model.sampler, batch_size=n,
                       n_batches=1, noise_std=model.setting["noise_std"],
                       random_state=1)
    X, gamma = next(iter(data))
    est = TVDeblurrer(model.basis, lam=0.005, max_iter=max_iter, tol=0.0,
                      device=device.type).fit(X[:, 0].numpy())
    est.transform(X[:2, 0].numpy(), gamma[:2].numpy())      # warm-up
    _sync(device)
    t = time.perf_counter()
    est.transform(X[:, 0].numpy(), gamma.numpy())
    _sync(device)
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None,
                   help="CPU intra-op threads (default: torch's)")
    p.add_argument("--configs", nargs="+",
                   default=["16:2:4:64", "16:2:4:256", "16:2:2:256", "32:2:1:256"])
    p.add_argument("--boundary", choices=["zero", "crop"], default="crop")
    p.add_argument("--compile", action="store_true",
                   help="also time torch.compile'd training steps")
    p.add_argument("--no-tv", action="store_true", help="skip the TV timings")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(DEFAULT_DIR)
    images, _ = natural_image_split()
    devices = [torch.device("cpu")] + (
        [torch.device("cuda")] if torch.cuda.is_available() else [])
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"GPU: {gpu}, boundary {args.boundary}")
    results = {}
    for cfg in args.configs:
        width, depth, stem, batch = (int(v) for v in cfg.split(":"))
        for dev in devices:
            torch.manual_seed(0)
            row = bench_config(model, images, dev, width, depth, stem, batch,
                               args.boundary, compile=args.compile)
            results[f"{cfg}@{dev.type}"] = row
            cpu = results[f"{cfg}@cpu"]
            ratio = ("" if dev.type == "cpu" else " | x CPU: " + ", ".join(
                f"{k} {row[k] / cpu[k]:.1f}" for k in row if k != "compile_s"))
            compiled = ("" if "compile_s" not in row else
                        f" (compiled/eager step "
                        f"{row['compiled step'] / row['step']:.2f}, compiled in "
                        f"{row['compile_s']:.0f} s)")
            print(f"w{width} d{depth} stem{stem} batch{batch} {dev.type:>4}: "
                  + ", ".join(f"{k} {v:,.0f} img/s" for k, v in row.items()
                              if k != "compile_s")
                  + f" (train/step {row['train'] / row['step']:.2f})" + compiled
                  + ratio, flush=True)
    for dev in [] if args.no_tv else devices:
        results[f"tv@{dev.type}"] = bench_tv(model, images, dev)
        extra = ("" if dev.type == "cpu" else
                 f" ({results['tv@cpu'] / results['tv@cuda']:.1f}x faster than CPU)")
        print(f"TV deblurring, 64 images of 128x128, 200 iterations, {dev.type}: "
              f"{results[f'tv@{dev.type}']:.2f} s{extra}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(results, gpu=gpu,
                                                   torch=torch.__version__)))


if __name__ == "__main__":
    main()
