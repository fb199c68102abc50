"""
Blind deblurring with the default model (paper Fig. 3)
======================================================

For each image: draw a space-varying blur operator from the model's sampler
(Algorithm 2), blur the image and add noise at the model's test level (its
setting's ``noise_std``, 0.01), estimate the operator from the blurry image
alone with the trained network, and deblur with total variation (``l1`` for
point sources) using the estimate and, for reference, the true operator. The
figures show the true and the estimated operators on a Dirac comb, the
blurry, original and deblurred images, the relative operator error and the
SNRs, as in paper Fig. 3.

The natural images ``camera``, ``coffee`` and ``flower`` are held out of the
model's training data; ``cell`` is a microscopy image and the point sources
mimic single-molecule microscopy, both unlike the training images. This is
what ``deepblur demo`` runs (same library functions), for several images.

Set ``DEEPBLUR_FAST=1`` for a run of a few seconds (two images, fewer solver
iterations; without the shipped model it trains a tiny one in seconds).
Figures are written to ``DEEPBLUR_OUTPUT`` (default ``examples/output``).
"""

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import torch  # noqa: E402

from deepblur.datasets import make_point_sources, natural_image_split  # noqa: E402
from deepblur.plotting import plot_blind_deblurring  # noqa: E402
from deepblur.pretrained import (  # noqa: E402
    PretrainedModel,
    bundled_image,
    load_default,
    make_default_setting,
    simulate_blind_deblurring,
    train_regressor,
)

FAST = os.environ.get("DEEPBLUR_FAST", "0") == "1"
OUT = Path(os.environ.get("DEEPBLUR_OUTPUT", Path(__file__).parent / "output"))
OUT.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)

# %%
# The model
# ---------
# :func:`deepblur.pretrained.load_default` reads the shipped model
# (``examples/train_default_model.py`` reproduces it). Only in fast mode, and
# only when it is absent, a tiny stand-in is trained so that the example still
# runs (its estimates are poor).
try:
    model = load_default()
    print("the shipped default model")
except FileNotFoundError:
    if not FAST:
        raise
    setting = make_default_setting(n_operators=30, image_shape=(64, 64),
                                   kernel_shape=(15, 15), grid_shape=(8, 8),
                                   n_components=6, n_rays=10)
    net = train_regressor(setting, natural_image_split()[0], n_images=1024,
                          epochs=2, batch_size=32, width=8, depth=1,
                          num_workers=0, verbose=0)
    model = PretrainedModel(setting["basis"], setting["cone"], setting["sampler"],
                            net, setting["params"]["noise_std"])
    print("no shipped model: a tiny stand-in trained in fast mode")
shape = tuple(model.basis.image_shape_)

# %%
# Natural, microscopy and point-source images
# -------------------------------------------
# Each image is a centred crop scaled to mean 0.5, the training convention.
images = {name: (bundled_image(name, shape), "tv")
          for name in (("camera",) if FAST else ("camera", "coffee", "flower",
                                                  "cell"))}
images["point sources"] = (make_point_sources(1, shape, density=0.003,
                                              random_state=0)[0], "l1")
max_iter = 150 if FAST else 500

for seed, (name, (image, regularization)) in enumerate(images.items()):
    res = simulate_blind_deblurring(model, image, random_state=seed,
                                    regularization=regularization,
                                    max_iter=max_iter)
    print(f"{name:>13}: operator error {100 * res['operator_error']:5.1f} %, SNR "
          f"{res['snr_blurry']:6.2f} dB blurry -> {res['snr_deblurred']:6.2f} dB "
          f"deblurred ({res['snr_deblurred_true']:6.2f} dB with the true "
          "operator)")
    fig = plot_blind_deblurring(model.basis, res["gamma"], res["gamma_hat"],
                                res["blurry"], res["original"], res["deblurred"],
                                deblurred_true=res["deblurred_true"],
                                blurry_gain=res["blurry_gain"])
    fig.savefig(OUT / f"blind_deblurring_{name.replace(' ', '_')}.png", dpi=80,
                bbox_inches="tight")
