"""
When to distrust a blind estimate: the distance to the trained operators
========================================================================

A network regresses the blur of images like those it was trained on. Given
something else (sparse point sources on a dark field, or, for the shipped
zero-boundary network, a window of a larger scene), it still returns an
operator, often far from the true one. Such estimates tend to stray from the
set of operators the network was trained on (the support of its
:class:`~deepblur.ConeSampler`): ``regressor.support_distance(X)`` measures,
per image, the relative operator distance of the estimate to that set, and
``predict`` issues an :class:`~deepblur.exceptions.OutOfSupportWarning` for
the images beyond the regressor's ``support_tolerance`` (0.06 for the shipped
network, 0.1 for its crop network).

This example blurs natural images of held-out sources, the bundled
microscopy images, point sources at two densities and windows of larger
scenes with operators drawn from the model's sampler (noise sigma = 0.01),
and plots, image by image, the distance of each estimate against its
operator error. It shows what the warning is worth: it flags most windows
given to the zero-boundary network (61 %) and some of the sparse point
fields, where the estimates are bad, and almost no natural image, but an
estimate that passes is not guaranteed to be good (most point fields).
``benchmarks/bench_support_check.py`` measures it on 512 images per set.

Set ``DEEPBLUR_FAST=1`` for a run of a few seconds (24 images per set instead
of 256). Figures are written to ``DEEPBLUR_OUTPUT`` (default
``examples/output``).
"""

# %%
import os
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from deepblur.datasets import (  # noqa: E402
    blur_images,
    extract_patches,
    load_microscopy_images,
    make_point_sources,
    natural_image_split,
)
from deepblur.exceptions import OutOfSupportWarning  # noqa: E402
from deepblur.pretrained import load_default, relative_errors  # noqa: E402

FAST = os.environ.get("DEEPBLUR_FAST", "0") == "1"
OUT = Path(os.environ.get("DEEPBLUR_OUTPUT", Path(__file__).parent / "output"))
OUT.mkdir(parents=True, exist_ok=True)
N = 24 if FAST else 256
torch.set_num_threads(1)

# %%
# Test images, and each network's estimates
# -----------------------------------------
# Each network sees images made with the boundary it was trained with (zero
# for the shipped network, crop for the crop network); the zero-boundary
# network also gets windows of larger scenes, as real images are.
rng = np.random.RandomState(0)
model = load_default()
basis, sampler = model.basis, model.sampler
shape = tuple(basis.image_shape_)
clean = {
    "natural (held out)": extract_patches(natural_image_split()[1], N, shape,
                                          random_state=rng),
    "microscopy": extract_patches(load_microscopy_images(), N, shape,
                                  random_state=rng),
    "points, density 0.0005": make_point_sources(N, shape, density=0.0005,
                                                 random_state=rng),
    "points, density 0.02": make_point_sources(N, shape, density=0.02,
                                               random_state=rng),
}
gamma = sampler.sample(N)
results = {}
for name, estimator, boundary in (("network", "network", "zero"),
                                  ("crop network", "crop_network", "crop")):
    regressor = load_default(estimator).regressor
    cases = dict(clean)
    if boundary == "zero":
        cases["windows of larger scenes"] = clean["natural (held out)"]
    rows = {}
    for case, u in cases.items():
        bound = "crop" if case.startswith("windows") else boundary
        X = blur_images(u, gamma, basis, noise_std=0.01, boundary=bound,
                        random_state=rng)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            estimate = regressor.predict(X)
        caught = [w for w in caught if w.category is OutOfSupportWarning]
        error = relative_errors(gamma, estimate, basis.gram_)["operator"]
        distance = regressor.support_distance(X)
        rows[case] = (distance, error)
        flagged = distance > regressor.support_tolerance
        print(f"{name:>12}, {case:>24}: error {100 * error.mean():5.1f} %, "
              f"flagged {flagged.sum():3d} of {N} "
              f"({len(caught)} OutOfSupportWarning)")
    results[name] = (rows, regressor.support_tolerance)

# %%
# Distance against error, image by image
# --------------------------------------
# Right of the dashed line, ``predict`` warns. The dotted line is the error
# of the mean operator of the sampler (predicting nothing).
mean_error = relative_errors(
    gamma, np.tile(sampler.sample(20_000).mean(0), (N, 1)),
    basis.gram_)["operator"].mean()
fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
for ax, (name, (rows, tolerance)) in zip(axes, results.items(), strict=True):
    for case, (distance, error) in rows.items():
        ax.scatter(np.maximum(distance, 1e-4), 100 * error, s=12, alpha=0.7,
                   label=case)
    ax.axvline(tolerance, color="k", ls="--", lw=1,
               label=f"support_tolerance {tolerance:g}")
    ax.axhline(100 * mean_error, color="gray", ls=":", lw=1,
               label="mean operator")
    ax.set_xscale("log")
    ax.set_xlabel("distance of the estimate to the trained operators "
                  "(0 shown at 1e-4)")
    ax.set_title(f"{name}")
axes[0].set_ylabel("relative operator error (%)")
axes[1].legend(fontsize=8, loc="upper left")
axes[0].legend(fontsize=8, loc="upper left")
fig.tight_layout()
fig.savefig(OUT / "support_check.png", dpi=100)
