"""Peak memory of the training data's patch pools, against a naive pool.

Each case runs in a fresh process and reports the growth of its peak resident
memory (``ru_maxrss``) over the process after imports and image loading, in GB
and as a multiple of the pool's own float32 bytes (the floor):

* **naive**: what the pools used to do, measured in the same run for scale:
  one float64 ``extract_patches`` call, a float32 copy, ``torch.isfinite``
  on the whole tensor;
* **BlurDataset**: the setup and first batch of a ``BlurDataset`` that crops
  its pool from the natural training sources (what ``train_regressor`` and
  ``deepblur train`` do);
* **spectral**: ``train_spectral_regressor`` with its default pool (patches
  plus a fifth of point sources) on 1 000 images.

Usage: ``python benchmarks/bench_memory.py [--pool-size 20000]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def _case(name, pool_size):
    import numpy as np
    import torch

    from deepblur.datasets.images import extract_patches, natural_image_split
    from deepblur.datasets.simulate import BlurDataset
    from deepblur.pretrained import load_default
    from deepblur.pretrained._train import train_spectral_regressor

    torch.set_num_threads(1)
    model = load_default()
    train, _ = natural_image_split()
    shape = tuple(model.basis.image_shape_)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    n_pool = pool_size
    if name == "naive":
        pool = extract_patches(train, pool_size, shape, augment=False,
                               random_state=0).astype(np.float32)
        assert torch.isfinite(torch.as_tensor(pool)).all()
    elif name == "BlurDataset":
        data = BlurDataset(train, model.basis, model.sampler, batch_size=64,
                           n_batches=1, pool_size=pool_size, random_state=0)
        next(iter(data))
    else:
        train_spectral_regressor(model, train, n_images=1000, batch_size=500,
                                 pool_size=pool_size)
        n_pool = pool_size + round(pool_size * 0.2 / 0.8)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start) * 1024
    floor = n_pool * shape[0] * shape[1] * 4
    print(json.dumps(dict(case=name, peak_gb=grown / 1e9, pool_gb=floor / 1e9)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool-size", type=int, default=20_000)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        return _case(args.case, args.pool_size)
    rows = {}
    for case in ("naive", "BlurDataset", "spectral"):
        out = subprocess.run([sys.executable, __file__, "--case", case,
                              "--pool-size", str(args.pool_size)],
                             check=True, capture_output=True, text=True).stdout
        rows[case] = json.loads(out.strip().splitlines()[-1])
    naive = rows["naive"]["peak_gb"]
    for case, row in rows.items():
        print(f"{case:>12}: peak +{row['peak_gb']:.2f} GB = "
              f"{row['peak_gb'] / row['pool_gb']:.2f}x its float32 pool "
              f"({row['pool_gb']:.2f} GB); {row['peak_gb'] / naive:.2f}x naive")


if __name__ == "__main__":
    main()
