"""
Grid search over lambda and K
=============================

One :class:`~sklearn.model_selection.GridSearchCV` tunes the number of terms
``K`` of the product-convolution basis and the TV weight ``lambda`` of the
deblurring together. For every ``K`` the candidate rebuilds the whole method
(:class:`deepblur.BlindDeblurrer`): the basis on calibration PSF fields, the
cone of their coefficients (Algorithm 1), the sampler (Algorithm 2), and the
blur regressor trained on the clean images of the training folds; then it
deblurs the blurry images of the test fold blindly and scores the PSNR
against their clean versions. ``memory`` caches the trained regressors so
that the ``lambda`` values of one ``K`` share one network per fold.

The (blurry, clean) pairs are blurred by random operators that the
calibration never saw, so bases of different ``K`` compete on equal terms.

Environment: ``DEEPBLUR_FAST=1`` runs a tiny version in well under a minute;
figures go to ``DEEPBLUR_OUTPUT`` (default ``examples/output``).
"""

# %%
import os
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.model_selection import GridSearchCV, KFold  # noqa: E402

from deepblur import (  # noqa: E402
    BlindDeblurrer,
    ConeSimplifier,
    ProductConvolutionBasis,
    ResNetBlurRegressor,
    TVDeblurrer,
)
from deepblur.datasets import (  # noqa: E402
    make_deblurring_pairs,
    make_random_operators,
    natural_image_split,
)
from deepblur.metrics import psnr  # noqa: E402

FAST = os.environ.get("DEEPBLUR_FAST", "0") == "1"
OUT = Path(os.environ.get("DEEPBLUR_OUTPUT", Path(__file__).parent / "output"))
OUT.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(1)   # small tensors: one thread is fastest on a shared CPU

SHAPE = (32, 32) if FAST else (64, 64)
KERNEL, GRID = ((9, 9), (4, 4)) if FAST else ((15, 15), (8, 8))
K_VALUES = [2, 4] if FAST else [4, 8, 16]
LAM_VALUES = [30.0, 300.0] if FAST else [30.0, 100.0, 300.0, 1000.0]

# %%
# Calibration operators and ground-truth pairs
# --------------------------------------------
# 60 random operators (paper section 1.2.1) calibrate the basis and the cone;
# 10 others blur the pairs the search is scored on.
calibration = make_random_operators(60, image_shape=SHAPE, kernel_shape=KERNEL,
                                    grid_shape=GRID, random_state=0).psf_fields
truth = make_random_operators(10, image_shape=SHAPE, kernel_shape=KERNEL,
                              grid_shape=GRID, random_state=1)
train_images, _ = natural_image_split()
blurry, clean = make_deblurring_pairs(train_images, truth, 24 if FAST else 96,
                                      noise_std=0.01, random_state=0)

# %%
# The search
# ----------
model = BlindDeblurrer(
    basis=ProductConvolutionBasis(image_shape=SHAPE, random_state=0),
    cone=ConeSimplifier(n_rays=12),
    regressor=ResNetBlurRegressor(
        module__width=4 if FAST else 16, max_epochs=2 if FAST else 10,
        batch_size=32, lr=2e-3, criterion=torch.nn.MSELoss, device="cpu",
        verbose=0),
    deblurrer=TVDeblurrer(tol=1e-4, device="cpu"),
    n_train_images=256 if FAST else 20_000,
    memory=tempfile.mkdtemp(prefix="deepblur-cache-"), random_state=0)
grid = {"basis__n_components": K_VALUES, "deblurrer__lam": LAM_VALUES}
t0 = time.perf_counter()
search = GridSearchCV(model, grid, cv=KFold(2 if FAST else 3, shuffle=True,
                                            random_state=0))
search.fit(blurry, clean, psf_fields=calibration)
print(f"searched {len(K_VALUES) * len(LAM_VALUES)} candidates in "
      f"{time.perf_counter() - t0:.0f} s")
print("best parameters:", search.best_params_,
      f"(mean PSNR {search.best_score_:.2f} dB)")
print(f"PSNR of the blurry inputs: {np.mean(psnr(clean, blurry)):.2f} dB")

# %%
# Scores over the grid
# --------------------
scores = search.cv_results_["mean_test_score"].reshape(len(K_VALUES),
                                                         len(LAM_VALUES))
for K, row in zip(K_VALUES, scores, strict=True):
    print(f"K={K:>3}: " + "  ".join(f"lam={lam:g}: {s:.2f} dB"
                                   for lam, s in zip(LAM_VALUES, row, strict=True)))

fig, axes = plt.subplots(1, 4, figsize=(13, 3.4))
im = axes[0].imshow(scores, cmap="viridis", aspect="auto")
axes[0].set(xticks=range(len(LAM_VALUES)), xticklabels=[f"{v:g}" for v in LAM_VALUES],
            yticks=range(len(K_VALUES)), yticklabels=K_VALUES, xlabel="lambda",
            ylabel="K", title="mean PSNR (dB), held-out folds")
fig.colorbar(im, ax=axes[0])
best = search.best_estimator_
i = int(np.argsort(clean.std(axis=(1, 2)))[len(clean) // 2])   # a typical pair
sharp = best.transform(blurry[i:i + 1])[0]
for ax, img, title in zip(
        axes[1:], [clean[i], blurry[i], sharp],
        ["clean", f"blurry ({psnr(clean[i], blurry[i]):.1f} dB)",
         f"deblurred, best K and lambda ({psnr(clean[i], sharp):.1f} dB)"],
        strict=True):
    ax.imshow(img, cmap="gray")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
fig.tight_layout()
fig.savefig(OUT / "grid_search.png", dpi=80)
