"""
Blind estimation on real images: the shipped estimators on windows
==================================================================

A real image, or a tile of a large one, is a window on a larger scene: its
border is not dark. The shipped network was trained, as in the paper, on
images blurred with a zero boundary, and reads much of the blur from the dark
border this leaves; on windows it is worse than predicting the mean operator.
Two estimators shipped beside it were trained on windows (the simulator's
``boundary="crop"``): a second network
(``load_default(estimator="crop_network")``, what ``deepblur estimate`` and
``deepblur deblur`` use by default) and a
:class:`~deepblur.SpectralBlurRegressor`
(``load_default(estimator="spectral")``).

This example blurs windows of held-out natural images, of the bundled
microscopy images and of simulated point sources with operators from the
model's sampler (crop boundary, noise sigma = 0.01), estimates the operator
with each, and shows (1) one operator of each kind on a Dirac comb and
(2) the mean relative operator errors beside the mean-gamma baseline.

Set ``DEEPBLUR_FAST=1`` for a run of a few seconds (16 windows per set instead
of 128). Figures are written to ``DEEPBLUR_OUTPUT`` (default
``examples/output``).
"""

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from deepblur.datasets import (  # noqa: E402
    extract_patches,
    load_microscopy_images,
    make_blurred_images,
    make_point_sources,
    natural_image_split,
)
from deepblur.plotting import plot_operator  # noqa: E402
from deepblur.pretrained import load_default, relative_errors  # noqa: E402

FAST = os.environ.get("DEEPBLUR_FAST", "0") == "1"
OUT = Path(os.environ.get("DEEPBLUR_OUTPUT", Path(__file__).parent / "output"))
OUT.mkdir(parents=True, exist_ok=True)
N = 16 if FAST else 128
torch.set_num_threads(1)

# %%
# The three estimators of the shipped model
# -----------------------------------------
# They share the basis, the cone and the sampler; only ``regressor`` differs.
network = load_default()
crop = load_default(estimator="crop_network")
spectral = load_default(estimator="spectral")
basis, sampler = network.basis, network.sampler
shape = tuple(basis.image_shape_)
print(f"spectral regressor: trained on {spectral.regressor.n_train_images_} "
      f"windows, noise std {spectral.noise_std}, boundary "
      f"{spectral.setting['boundary']}")
print(f"crop network: noise std {crop.noise_std}, boundary "
      f"{crop.setting['boundary']}")

# %%
# Windows of larger scenes
# ------------------------
rng = np.random.RandomState(0)
sets = {
    "natural (held out)": natural_image_split()[1],
    "microscopy": extract_patches(load_microscopy_images(), N, shape,
                                  random_state=rng),
    "point sources": make_point_sources(N, shape, random_state=rng),
}
mean_gamma = sampler.sample(20_000).mean(axis=0)
errors = {}
for name, images in sets.items():
    X, y = make_blurred_images(images, basis, sampler, N, noise_std=0.01,
                               boundary="crop", random_state=rng)
    estimates = {"network": network.regressor.predict(X),
                 "crop network": crop.regressor.predict(X),
                 "spectral": spectral.regressor.predict(X),
                 "mean gamma": np.tile(mean_gamma, (N, 1))}
    errors[name] = {k: relative_errors(y, g, basis.gram_)["operator"]
                    for k, g in estimates.items()}
    print(f"{name:>20}: " + ", ".join(
        f"{k} {100 * e.mean():.1f} %" for k, e in errors[name].items()))
    # the first window of the set: true and estimated operators
    e = {k: 100 * v[0] for k, v in errors[name].items()}
    fig = plot_operator(basis, np.stack([y[0], estimates["network"][0],
                                         estimates["crop network"][0],
                                         estimates["spectral"][0]]),
                        titles=[f"{name}: true operator",
                                f"network ({e['network']:.0f} %)",
                                f"crop network ({e['crop network']:.0f} %)",
                                f"spectral ({e['spectral']:.0f} %)"])
    fig.savefig(OUT / f"real_images_{name.split()[0]}.png", dpi=80,
                bbox_inches="tight")

# %%
# Mean operator error per set
# ---------------------------
fig, ax = plt.subplots(figsize=(8, 3.5))
width = 0.2
for i, k in enumerate(("network", "crop network", "spectral", "mean gamma")):
    means = [100 * errors[name][k].mean() for name in sets]
    sems = [100 * errors[name][k].std() / np.sqrt(N) for name in sets]
    ax.bar(np.arange(len(sets)) + (i - 1.5) * width, means, width, yerr=sems,
           label=k, capsize=3)
ax.set_xticks(np.arange(len(sets)), list(sets))
ax.set_ylabel("relative operator error (%)")
ax.set_title(f"windows of larger scenes, sigma = 0.01, {N} per set")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "real_images_errors.png", dpi=80)
