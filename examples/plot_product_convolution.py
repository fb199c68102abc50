"""
Product-convolution operators on a Dirac comb
=============================================

A space-varying blur is modelled as a product-convolution expansion
``H u = sum_k e_k * (f_k u)`` (paper eq. 2). This example

1. draws one random operator with two kernel/map pairs as in paper section
   1.2.1 (anisotropic Gaussian kernels, smooth contrasted maps) and shows it on
   a Dirac comb (paper Fig. 2);
2. learns a low-dimensional basis of ``K`` pairs from many such operators with
   :class:`deepblur.ProductConvolutionBasis`, the first step of the paper's
   method, and reports how well held-out operators are represented for several
   ``K``.

Set ``DEEPBLUR_FAST=1`` for a run of a few seconds (fewer, smaller operators).
Figures are written to ``DEEPBLUR_OUTPUT`` (default ``examples/output``).
"""

# %%
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from deepblur import ProductConvolutionBasis  # noqa: E402
from deepblur.datasets import make_random_operators  # noqa: E402
from deepblur.plotting import dirac_comb, plot_components  # noqa: E402

torch.set_num_threads(1)
FAST = os.environ.get("DEEPBLUR_FAST", "0") == "1"
OUT = Path(os.environ.get("DEEPBLUR_OUTPUT", Path(__file__).parent / "output"))
OUT.mkdir(parents=True, exist_ok=True)

# %%
# One random operator with two pairs (paper Fig. 2)
# -------------------------------------------------
# 24x24 anisotropic Gaussian kernels with standard deviations in [1, 4], maps
# from a thresholded smooth Gaussian random field smoothed by a wide Gaussian.
one = make_random_operators(1, image_shape=(128, 128), kernel_shape=(24, 24),
                            grid_shape=(8, 8), random_state=3)
pair = ProductConvolutionBasis.from_components(one.kernels[0], one.maps[0])
fig, axes = plt.subplots(1, 5, figsize=(14, 3))
panels = [one.kernels[0, 0], one.kernels[0, 1], one.maps[0, 0], one.maps[0, 1]]
names = ["$e_1$", "$e_2$", "$f_1$", "$f_2$"]
for ax, img, name in zip(axes, panels, names, strict=False):
    ax.imshow(img, cmap="viridis")
    ax.set_title(name)
comb = dirac_comb((128, 128), spacing=16)
axes[4].imshow(np.sqrt(np.clip(pair.apply(comb, np.ones(2)), 0, None)), cmap="magma")
axes[4].set_title("$H$ applied to a Dirac comb")
for ax in axes:
    ax.set_axis_off()
fig.tight_layout()
fig.savefig(OUT / "product_convolution_fig2.png", dpi=100)

# %%
# Learning a basis from many random operators
# -------------------------------------------
# Each operator's PSF field is sampled on a grid; the basis is one ``fit``.
n_ops, size, kernel, grid = (40, 64, 15, (8, 8)) if FAST else (300, 128, 31, (16, 16))
ops = make_random_operators(n_ops, image_shape=(size, size),
                            kernel_shape=(kernel, kernel), grid_shape=grid,
                            random_state=0)
train, test = ops.psf_fields[: int(0.8 * n_ops)], ops.psf_fields[int(0.8 * n_ops):]
print(f"{n_ops} random operators, images {size}x{size}, kernels {kernel}x{kernel}")
print(" K   mean relative error of held-out PSF fields")
for K in (2, 5, 10, 20):
    basis = ProductConvolutionBasis(K, image_shape=(size, size)).fit(train)
    print(f"{K:2d}   {-basis.score(test):.3f}")

fig = plot_components(basis, n_max=6)
fig.savefig(OUT / "product_convolution_basis.png", dpi=100)

# %%
# A training operator and a held-out one on a Dirac comb: true (top) and
# projected on the learned basis (bottom). Random operators with independent
# random maps do not lie in one low-dimensional space, so held-out operators are
# represented less well than the training ones (the error printed above); the
# cone of the learned coefficients, not the raw random operators, is what the
# blur regressor is trained on.
n_train = len(train)
picks = {"training": 0, "held-out": n_train}
gamma = basis.transform(ops.psf_fields[list(picks.values())])
comb = dirac_comb((size, size), spacing=max(8, int(1.5 * kernel)))
fig, axes = plt.subplots(2, 2, figsize=(6.4, 6.4))
for j, (kind, p) in enumerate(picks.items()):
    true_op = ProductConvolutionBasis.from_components(ops.kernels[p], ops.maps[p])
    truth = true_op.apply(comb, np.ones(2))
    learned = basis.apply(comb, gamma[j])
    err = np.linalg.norm(learned - truth) / np.linalg.norm(truth)
    label = f"learned, K={basis.n_components} ({100 * err:.0f}% error)"
    for ax, img, title in ((axes[0, j], truth, f"true, {kind}"),
                           (axes[1, j], learned, label)):
        ax.imshow(np.sqrt(np.clip(img, 0, None)), cmap="magma")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
fig.tight_layout()
fig.savefig(OUT / "product_convolution_learned.png", dpi=100)
print(f"figures written to {OUT}")
