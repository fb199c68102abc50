"""
Training a blur regressor on simulated data
===========================================

The paper's estimator (section 2.2): a ResNet that maps one blurry, noisy
image ``y = H[gamma] u + eta`` to the coefficients ``gamma`` of its
product-convolution operator. This example

1. fits a basis to random operators and the cone of their coefficients
   (:class:`deepblur.ProductConvolutionBasis`, :class:`deepblur.ConeSimplifier`,
   :class:`deepblur.ConeSampler`);
2. trains a :class:`deepblur.ResNetBlurRegressor` on data drawn on the fly by
   :class:`deepblur.datasets.BlurDataset`: natural-image patches, scaled to
   mean 0.5, blurred by a fresh random operator of the cone and corrupted by
   Gaussian noise for every batch;
3. shows the learning curves, the predicted and true operators of a held-out
   image, and the error on held-out images beside the mean-gamma baseline
   (always predicting the mean of the cone).

Settings are tiny with ``DEEPBLUR_FAST=1`` (3 to 15 s; 3 200 training
images, enough to start beating the baseline). Without it the run takes one to
a few minutes on a CPU: 111 s on the 2-core benchmark machine (beside
another job), for a held-out operator error of 22.8 % against 34.5 % for the
mean-gamma baseline (23.0 % with the image alone as the network's input). The
gain is mostly in the scale of ``gamma`` (9.7 % against 24.3 %); the
direction, which shapes the PSFs, is barely learnt at this budget (20.3 %
against 21.1 %). Reaching the paper's accuracy needs far longer training:
``benchmarks/README.md`` lists the measured runs and
``examples/train_default_model.py`` trains the default model. Figures are
written to ``DEEPBLUR_OUTPUT`` (default ``examples/output``).
"""

# %%
import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from skorch.callbacks import LRScheduler  # noqa: E402

from deepblur import (  # noqa: E402
    ConeSampler,
    ConeSimplifier,
    ProductConvolutionBasis,
    ResNetBlurRegressor,
)
from deepblur.datasets import (  # noqa: E402
    BlurDataset,
    make_blurred_images,
    make_random_operators,
    natural_image_split,
)
from deepblur.plotting import dirac_comb  # noqa: E402
from deepblur.pretrained import relative_errors  # noqa: E402

# One intra-op thread: on a small shared CPU, more threads thrash.
torch.set_num_threads(1)
FAST = os.environ.get("DEEPBLUR_FAST", "0") == "1"
OUT = Path(os.environ.get("DEEPBLUR_OUTPUT", "")
           or Path(__file__).resolve().parent / "output")
OUT.mkdir(parents=True, exist_ok=True)

# %%
# The operator model: basis, cone and sampler
# -------------------------------------------
# Random operators (paper section 1.2.1), a ``K``-term basis fitted to their
# PSF fields, the cone of their coefficients simplified to a few rays
# (Algorithm 1) and a sampler of that cone (Algorithm 2) whose scale range is
# that of the training coefficients.
if FAST:
    size, kernel, grid, n_ops, K, n_rays = 64, 9, (4, 4), 30, 4, 8
    batch_size, n_batches, epochs, width = 32, 25, 4, 8
else:
    size, kernel, grid, n_ops, K, n_rays = 64, 15, (8, 8), 100, 8, 20
    batch_size, n_batches, epochs, width = 64, 100, 10, 16
noise_std = 0.01
t0 = time.perf_counter()
ops = make_random_operators(n_ops, image_shape=(size, size),
                            kernel_shape=(kernel, kernel), grid_shape=grid,
                            random_state=0)
basis = ProductConvolutionBasis(K, image_shape=(size, size), random_state=0)
gamma_ops = basis.fit_transform(ops.psf_fields)
cone = ConeSimplifier(n_rays=n_rays).fit(gamma_ops)
norms = np.linalg.norm(gamma_ops, axis=1)
sampler = ConeSampler(alpha_range=tuple(np.percentile(norms, [5, 95])),
                      random_state=0).fit(cone.rays_)
print(f"{size}x{size} images, K={K}, {n_rays} rays: basis, cone and sampler "
      f"in {time.perf_counter() - t0:.1f} s")

# %%
# Training data drawn on the fly
# ------------------------------
# ``BlurDataset`` crops a pool of patches from the training source images once,
# then every batch draws patches (with flips and rotations), coefficients from
# the sampler and noise afresh. Every clean patch is scaled to mean 0.5 before
# blurring (``image_mean``): since ``H[a gamma] u = H[gamma] (a u)``, the scale
# of ``gamma`` is only identifiable from ``y`` under such a convention.
# ``boundary="crop"`` blurs each patch as a window on a larger scene, as a real
# image is, rather than with a dark zero border the network could read the
# blur from. The test source images are never seen in training.
train_images, test_images = natural_image_split()
data = BlurDataset(train_images, basis, sampler, batch_size=batch_size,
                   n_batches=n_batches, noise_std=noise_std, boundary="crop",
                   pool_size=200 if FAST else 2000, random_state=0)
mean_gamma = sampler.sample(50_000).mean(axis=0)

# %%
# The regressor is a skorch ``NeuralNetRegressor``: ``module__*`` parameters
# reach the ResNet. ``module__input_norm="laplacian"`` gives its stem the
# image's Laplacian relative to its mean beside the image itself: the fine
# band where the blur shows, which a slim network is slow to find alone
# (``benchmarks/README.md``, section "Laplacian input"). The loss is the
# relative Frobenius distance between the true and estimated operators (the
# paper's), computed exactly from the basis's Gram matrix; the last layer
# starts at the mean gamma, so training starts from the baseline. Given a
# ``BlurDataset``, ``fit`` validates on a few fixed batches drawn with another
# seed.
net = ResNetBlurRegressor(
    basis=basis, module__width=width, module__depth=1, module__stem_stride=2,
    module__n_stages=3, module__input_norm="laplacian",
    module__output_bias=mean_gamma, lr=2e-3,
    max_epochs=epochs, batch_size=batch_size, device="cpu",
    n_valid_batches=2 if FAST else 4, verbose=0,
    callbacks=[("lr", LRScheduler("CosineAnnealingLR", T_max=epochs))])
t0 = time.perf_counter()
net.fit(data, None)
n_seen = epochs * n_batches * batch_size
elapsed = time.perf_counter() - t0
print(f"trained on {n_seen} fresh images in {elapsed:.1f} s "
      f"({n_seen / elapsed:.0f} images/s)")
print("epoch  train loss  valid loss (relative operator error)")
for row in net.history:
    print(f"{row['epoch']:5d}  {row['train_loss']:10.4f}  {row['valid_loss']:10.4f}")

fig, ax = plt.subplots(figsize=(5, 3.4))
ax.plot(net.history[:, "epoch"], net.history[:, "train_loss"], "o-", label="train")
ax.plot(net.history[:, "epoch"], net.history[:, "valid_loss"], "s-",
        label="validation")
ax.set_xlabel("epoch")
ax.set_ylabel("relative operator error (loss)")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "train_regressor_curves.png", dpi=100)

# %%
# Held-out images
# ---------------
# Patches of the test source images, blurred by new draws of the cone. The
# errors are relative Frobenius distances between operators: *operator*
# ``||H[g] - H[g_hat]||_F / ||H[g]||_F``, *direction* the same after the best
# rescaling of ``g_hat``, *scale* the error on ``||H[g]||_F``.
X_test, y_test = make_blurred_images(test_images, basis, sampler,
                                     64 if FAST else 512, noise_std=noise_std,
                                     boundary="crop", random_state=1)
pred = net.predict(X_test)
err = relative_errors(y_test, pred, basis.gram_)
base = relative_errors(y_test, np.tile(mean_gamma, (len(y_test), 1)), basis.gram_)
print(f"held-out images ({len(y_test)}): mean relative error, network vs "
      "mean-gamma baseline")
for key in ("operator", "direction", "scale"):
    print(f"  {key:>9}: {100 * err[key].mean():5.1f} %  vs  "
          f"{100 * base[key].mean():5.1f} %")
print(f"score (minus the mean operator error): {net.score(X_test, y_test):.4f}")

# %%
# One held-out image: the blurry input and, on a Dirac comb, the true operator,
# the network's estimate and the baseline (paper Fig. 3, left).
i = int(np.argsort(err["operator"])[len(err["operator"]) // 2])   # median case
comb = dirac_comb((size, size), spacing=max(6, int(1.5 * kernel)))
panels = [("blurry input y", X_test[i])]
for name, g in (("true H", y_test[i]),
                (f"estimated ({100 * err['operator'][i]:.0f}% error)", pred[i]),
                (f"mean gamma ({100 * base['operator'][i]:.0f}% error)",
                 mean_gamma)):
    panels.append((name, np.sqrt(np.clip(basis.apply(comb, g), 0, None))))
vmax = max(img.max() for _, img in panels[1:])     # one scale: gains compare
fig, axes = plt.subplots(1, 4, figsize=(12, 3.3))
for j, (ax, (name, img)) in enumerate(zip(axes, panels, strict=True)):
    if j == 0:
        ax.imshow(img, cmap="gray")
    else:
        ax.imshow(img, cmap="magma", vmin=0, vmax=vmax)
    ax.set_title(name, fontsize=9)
    ax.set_axis_off()
fig.tight_layout()
fig.savefig(OUT / "train_regressor_example.png", dpi=100)

fig, ax = plt.subplots(figsize=(5, 3.4))
bins = np.linspace(0, max(err["operator"].max(), base["operator"].max()), 30)
ax.hist(err["operator"], bins=bins, alpha=0.6, label="network")
ax.hist(base["operator"], bins=bins, alpha=0.6, label="mean gamma")
ax.set_xlabel("relative operator error (held-out images)")
ax.set_ylabel("images")
ax.legend()
fig.tight_layout()
fig.savefig(OUT / "train_regressor_errors.png", dpi=100)
print(f"figures written to {OUT}")
