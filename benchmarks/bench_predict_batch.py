"""Inference rate of the shipped network's ``predict`` against its batch size.

``ResNetBlurRegressor.predict`` runs in batches of ``batch_size`` (64) unless
``iterator_valid__batch_size`` says otherwise (settable on a loaded model with
``set_params``). For each device present (``cpu``, and ``cuda`` when
available) and each batch size, this times ``predict`` on the same held-out
natural images (128x128, the setting's noise, zero boundary) and prints the
rate in images/s and its ratio to batch 64 measured in the same run (the
median of calls over ``--seconds``, after a warm-up: ``bench_devices.py``'s
timing), and the largest difference of the estimates to those of the first
batch size.

Usage: ``python benchmarks/bench_predict_batch.py [--n 1024] [--batches 16 32
64 256 1024] [--threads 1] [--seconds 4] [--devices cpu cuda]``
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from bench_devices import _rate

from deepblur.datasets import extract_patches, make_blurred_images, natural_image_split
from deepblur.pretrained import load_default


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1024, help="images per timing")
    p.add_argument("--batches", type=int, nargs="+",
                   default=[16, 32, 64, 128, 256, 1024])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=4.0,
                   help="time each batch size at least this long")
    p.add_argument("--devices", nargs="+", default=None,
                   help="default: cpu, and cuda when available")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")     # the support and noise checks' warnings
    devices = list(dict.fromkeys(args.devices or (
        ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))))
    model = load_default()
    u = extract_patches(natural_image_split()[1], args.n, (128, 128),
                        random_state=0)
    X, _ = make_blurred_images(u, model.basis, model.sampler, args.n,
                               noise_std=model.setting["noise_std"],
                               random_state=0)
    X = X.astype(np.float32)
    net = model.regressor
    cpu = {}
    print(f"torch {torch.__version__}, {args.threads} CPU thread(s), {args.n} "
          f"images of 128x128, median over {args.seconds:g} s or 5 calls")
    for device in devices:
        net.module_.to(device)
        net.device = device
        rates, preds = {}, {}
        for bs in args.batches:
            net.set_params(iterator_valid__batch_size=bs)

            def run(bs=bs, preds=preds):
                preds[bs] = net.predict(X)

            rates[bs] = _rate(run, len(X), torch.device(device),
                              seconds=args.seconds, warmup=1)
        ref = rates.get(64)
        for bs in args.batches:
            gap = float(np.abs(preds[bs] - preds[args.batches[0]]).max())
            line = f"{device:>5} batch {bs:>5}: {rates[bs]:8.0f} images/s"
            if ref is not None:
                line += f", {rates[bs] / ref:.2f}x batch 64"
            if device != "cpu" and bs in cpu:
                line += f", {rates[bs] / cpu[bs]:.1f}x the CPU"
            print(line + f" (max |difference| to batch {args.batches[0]}: "
                  f"{gap:.1e})", flush=True)
        if device == "cpu":
            cpu = rates
    net.module_.to("cpu")
    net.device = "cpu"


if __name__ == "__main__":
    main()
