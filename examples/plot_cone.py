"""
Simplifying and sampling the cone of admissible operators
=========================================================

The blur regressor is trained on operators drawn from the cone
``C = cone(gamma_p)`` of the coefficients of known operators (paper
Assumption 1.2). This example

1. learns a basis from random operators (paper section 1.2.1) and takes the
   coefficients ``gamma_p`` of the training operators;
2. simplifies their cone to a few extreme rays with
   :class:`deepblur.ConeSimplifier` (Algorithm 1) and shows how the angular
   coverage and the distance of held-out operators to the cone fall with the
   number of rays;
3. draws random operators in the cone with :class:`deepblur.ConeSampler`
   (Algorithm 2), shows the gammas, the cone and the samples in a 2-D
   projection, and a few sampled operators on a Dirac comb.

Set ``DEEPBLUR_FAST=1`` for a run of a few seconds (fewer, smaller operators).
Figures are written to ``DEEPBLUR_OUTPUT`` (default ``examples/output``).
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
from scipy.spatial import ConvexHull  # noqa: E402

from deepblur import ConeSampler, ConeSimplifier, ProductConvolutionBasis  # noqa: E402
from deepblur.datasets import make_random_operators  # noqa: E402
from deepblur.plotting import plot_operator  # noqa: E402
from deepblur.solvers.cone import cone_nnls  # noqa: E402

torch.set_num_threads(1)
FAST = os.environ.get("DEEPBLUR_FAST", "0") == "1"
OUT = Path(os.environ.get("DEEPBLUR_OUTPUT", "")
           or Path(__file__).resolve().parent / "output")
OUT.mkdir(parents=True, exist_ok=True)

# %%
# Coefficients of known operators
# -------------------------------
# Random operators with two Gaussian kernel/map pairs each, a ``K``-term basis
# fitted on the first ones, and the coefficients ``gamma_p`` of all of them in
# that basis (``transform``). The last fifth is held out to measure how well
# the simplified cone covers operators it was not built from.
if FAST:
    n_ops, size, kernel, grid, K = 120, 48, 11, (6, 6), 8
else:
    n_ops, size, kernel, grid, K = 400, 128, 25, (16, 16), 20
ops = make_random_operators(n_ops, image_shape=(size, size),
                            kernel_shape=(kernel, kernel), grid_shape=grid,
                            random_state=0)
n_train = int(0.8 * n_ops)
basis = ProductConvolutionBasis(K, image_shape=(size, size), random_state=0)
basis.fit(ops.psf_fields[:n_train])
gamma = basis.transform(ops.psf_fields)
gamma_train, gamma_test = gamma[:n_train], gamma[n_train:]
norms = np.linalg.norm(gamma_train, axis=1)
print(f"{n_ops} operators, K={K}: basis error on the training fields "
      f"{basis.reconstruction_error_:.3f}; ||gamma|| in "
      f"[{norms.min():.2f}, {norms.max():.2f}]")

# %%
# Algorithm 1: keep a few extreme rays
# ------------------------------------
# ``fit`` computes the circumcenter of the cone (the axis of the narrowest
# revolution cone containing every ``gamma_p``) and then greedily adds the
# ``gamma_p`` farthest in angle from the rays kept so far. The greedy choice
# does not depend on how many rays are asked for, so one fit with the largest
# number gives every smaller simplification as a prefix of ``rays_``.
n_max = 40 if FAST else 100
t0 = time.perf_counter()
simplifier = ConeSimplifier(n_rays=n_max).fit(gamma_train)
print(f"Algorithm 1 on {n_train} rows, {n_max} rays: "
      f"{time.perf_counter() - t0:.2f} s; circumradius "
      f"{np.degrees(simplifier.circumradius_):.1f} degrees")

unit_train = gamma_train / norms[:, None]
cosines = unit_train @ simplifier.rays_.T       # (P, n_max)
n_grid = [n for n in (1, 2, 3, 5, 8, 10, 15, 20, 30, 40, 60, 80, 100)
          if n <= n_max]
worst_angle, mean_angle, test_dist = [], [], []
for n in n_grid:
    # angle of each training gamma to its nearest kept ray
    nearest = np.degrees(np.arccos(np.clip(cosines[:, :n].max(axis=1), -1, 1)))
    worst_angle.append(nearest.max())
    mean_angle.append(nearest.mean())
    # relative distance of held-out gammas to cone(rays): ConeSimplifier.score
    _, residuals = cone_nnls(gamma_test, simplifier.rays_[:n])
    test_dist.append(np.mean(residuals / np.linalg.norm(gamma_test, axis=1)))
print(" rays  largest angle to a kept ray  mean angle  held-out distance to cone")
for n, w, m, d in zip(n_grid, worst_angle, mean_angle, test_dist, strict=True):
    print(f"{n:5d}  {w:27.1f}  {m:10.1f}  {d:25.3f}")

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
ax1.plot(n_grid, worst_angle, "o-", label="largest (worst-covered gamma)")
ax1.plot(n_grid, mean_angle, "s-", label="mean")
ax1.axhline(np.degrees(simplifier.circumradius_), color="gray", ls="--",
            label="circumradius")
ax1.set_xlabel("number of kept rays N")
ax1.set_ylabel("angle to the nearest kept ray (degrees)")
ax1.legend(fontsize=8)
ax2.plot(n_grid, test_dist, "o-", color="C3")
ax2.set_xlabel("number of kept rays N")
ax2.set_ylabel("held-out relative distance to cone(rays)")
ax2.set_ylim(bottom=0)
fig.tight_layout()
fig.savefig(OUT / "cone_simplification.png", dpi=100)

# %%
# Algorithm 2: sampling the simplified cone
# -----------------------------------------
# The kept rays have unit norm; the sampler's ``alpha_range`` restores the
# scale of the operators (here the 5 to 95 % range of ``||gamma_p||``). Each
# sample combines ``J`` rays, ``J`` uniform in ``{1, ..., K}``, so sparse
# combinations near the extreme rays are drawn as often as dense ones.
n_rays = 20 if FAST else 40
cone = ConeSimplifier(n_rays=n_rays).fit(gamma_train)
alpha_range = tuple(np.percentile(norms, [5, 95]))
sampler = ConeSampler(alpha_range=alpha_range, random_state=0).fit(cone.rays_)
t0 = time.perf_counter()
samples = sampler.sample(100_000)
rate = len(samples) / (time.perf_counter() - t0)
print(f"sampled {len(samples)} gammas from {n_rays} rays "
      f"({rate / 1e6:.1f} M samples/s); alpha in "
      f"[{alpha_range[0]:.2f}, {alpha_range[1]:.2f}]")
print(f"held-out gammas: relative distance to the cone of the {n_rays} rays "
      f"{-cone.score(gamma_test):.3f}")

# %%
# A 2-D view. Dividing every vector by its component along the circumcenter
# (a gnomonic projection) maps rays to points and the cone to a convex
# polytope; its linear projection on the two main directions of the training
# points is the convex hull of the projected rays. Rays inside the polygon are
# extreme in directions this 2-D view does not show.
center = simplifier.circumcenter_


def gnomonic(x):
    x = np.atleast_2d(x)
    return x / (x @ center)[:, None] - center


plane = gnomonic(gamma_train)
_, _, vt = np.linalg.svd(plane - plane.mean(axis=0), full_matrices=False)
axes2d = vt[:2].T


def project(x):
    return gnomonic(x) @ axes2d


p_train, p_test = project(gamma_train), project(gamma_test)
p_rays, p_samples = project(cone.rays_), project(samples[:3000])
hull = ConvexHull(p_rays)
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
ax1.scatter(*p_samples.T, s=2, color="C0", alpha=0.3, label="samples (Alg. 2)")
ax1.scatter(*p_train.T, s=8, color="k", label=r"training $\gamma_p$")
ax1.scatter(*p_test.T, s=12, color="C2", marker="^", label=r"held-out $\gamma$")
ax1.scatter(*p_rays.T, s=40, facecolor="none", edgecolor="C3", lw=1.5,
            label=f"{n_rays} kept rays (Alg. 1)")
for simplex in hull.simplices:
    ax1.plot(*p_rays[simplex].T, color="C3", lw=1)
ax1.scatter(0, 0, marker="+", s=120, color="C1", label="circumcenter")
ax1.set_title("gnomonic projection of the cone", fontsize=10)
ax1.legend(fontsize=7, loc="best")
bins = np.linspace(0, max(norms.max(), np.linalg.norm(samples, axis=1).max()), 40)
ax2.hist(norms, bins=bins, density=True, alpha=0.6, color="k",
         label=r"$\|\gamma_p\|$ (training)")
ax2.hist(np.linalg.norm(samples, axis=1), bins=bins, density=True, alpha=0.5,
         color="C0", label=r"$\|\gamma\|$ (samples)")
ax2.set_xlabel("norm of the coefficients")
ax2.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "cone_projection.png", dpi=100)

# %%
# Sampled operators on a Dirac comb
# ---------------------------------
# Each panel is the operator of one sample, ``H[gamma] u`` with ``u`` a Dirac
# comb: the PSF at every Dirac, varying in width, orientation and gain across
# the image.
fig = plot_operator(basis, samples[:4],
                    titles=[f"sample {i + 1}" for i in range(4)])
fig.savefig(OUT / "cone_samples_operators.png", dpi=100)
print(f"figures written to {OUT}")
