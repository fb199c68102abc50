"""
Train the spectral blur regressor for real images
=================================================

Reproduces the :class:`~deepblur.SpectralBlurRegressor` shipped beside the
default network (``load_default(estimator="spectral")``, ``deepblur estimate``
and ``deepblur deblur`` with ``--estimator auto``):

1. the seeded default setting, rebuilt from scratch
   (:func:`~deepblur.pretrained.make_default_setting`: the same basis and
   cone as the shipped network's);
2. 40 000 training images drawn on the fly
   (:func:`~deepblur.pretrained.train_spectral_regressor`): patches of the
   training source images plus simulated point sources (a fifth of the
   pool), normalised to mean 0.5, blurred as **windows of larger scenes**
   (``boundary="crop"``: no dark border to read the blur from, as in real
   images and tiles) and corrupted by noise of standard deviation uniform in
   [0.005, 0.05];
3. the local-spectrum features and a ridge in the operator metric, fitted in
   one pass;
4. evaluation on held-out sets (natural images of held-out sources, the
   bundled microscopy images, new point sources; crop boundary) beside the
   mean-gamma baseline and the shipped network, and against the noise level;
5. the regressor is written as ``spectral.safetensors`` + ``spectral.json``
   next to a copy of the network's files in ``DEEPBLUR_OUTPUT`` (default
   ``examples/output/spectral_model``); copying those two files into
   ``deepblur/pretrained/default`` ships it.

About 8 minutes on a 2-core CPU (one thread). ``DEEPBLUR_TRAIN_IMAGES`` sets
the number of training images, ``DEEPBLUR_TEST_IMAGES`` the size of each test
set (default 512).
"""

# %%
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deepblur.datasets import (
    extract_patches,
    load_microscopy_images,
    make_point_sources,
    natural_image_split,
)
from deepblur.pretrained import (
    SPECTRAL_DEFAULTS,
    compare_estimators,
    load_default,
    load_model,
    make_default_setting,
    save_spectral,
    train_spectral_regressor,
)
from deepblur.pretrained._io import DEFAULT_DIR

# The settings are the environment variables of the docstring: an argument
# (even --help) would be ignored by a run of minutes to hours.
if sys.argv[1:] in (["-h"], ["--help"]):
    print(__doc__)
    sys.exit(0)
if sys.argv[1:]:
    sys.exit(f"{Path(__file__).name} takes no arguments (got "
             f"{' '.join(sys.argv[1:])!r}): its settings are the DEEPBLUR_* "
             "environment variables of its docstring (--help prints it).")

OUT = Path(os.environ.get("DEEPBLUR_OUTPUT",
                          Path(__file__).parent / "output" / "spectral_model"))
N_IMAGES = int(os.environ.get("DEEPBLUR_TRAIN_IMAGES",
                              SPECTRAL_DEFAULTS["n_images"]))
N_TEST = int(os.environ.get("DEEPBLUR_TEST_IMAGES", 512))
torch.set_num_threads(1)

# %%
# The default setting, from scratch
# ---------------------------------
t0 = time.perf_counter()
setting = make_default_setting()
basis, sampler = setting["basis"], setting["sampler"]
network = load_default()
assert (np.linalg.norm(basis.gram_ - network.basis.gram_)
        < 1e-5 * np.linalg.norm(network.basis.gram_)), \
    "make_default_setting no longer reproduces the shipped basis"
print(f"setting rebuilt in {time.perf_counter() - t0:.0f} s")

# %%
# Fit on fresh windows of larger scenes
# -------------------------------------
train_images, test_images = natural_image_split()
params = dict(SPECTRAL_DEFAULTS, n_images=N_IMAGES)
t0 = time.perf_counter()
spectral = train_spectral_regressor(setting, train_images, verbose=1, **params)
fit_seconds = time.perf_counter() - t0
print(f"{N_IMAGES} images, {spectral.coef_.shape[0]} features, alpha "
      f"{spectral.alpha_:g}: {fit_seconds:.0f} s")

# %%
# Held-out evaluation (crop boundary), beside the baseline and the network
# ------------------------------------------------------------------------
rng = np.random.RandomState(123)
shape = tuple(basis.image_shape_)
sources = {
    "natural": test_images,
    "microscopy": extract_patches(load_microscopy_images(), N_TEST, shape,
                                  random_state=rng),
    "points": make_point_sources(N_TEST, shape, random_state=rng),
}
mean_gamma = sampler.sample(50_000).mean(0)


estimators = {"spectral": spectral, "network": network.regressor}
results, rates = {}, []
for name, images in sources.items():
    results[name], rate = compare_estimators(
        estimators, basis, sampler, images, N_TEST, noise_std=0.01,
        mean_gamma=mean_gamma, random_state=rng)
    rates.append(rate["spectral"])
for noise in (0.0, 0.03, 0.05, 0.1):
    results[f"natural, sigma {noise:g}"], _ = compare_estimators(
        estimators, basis, sampler, test_images, N_TEST, noise_std=noise,
        mean_gamma=mean_gamma, random_state=rng)
print(f"inference: {np.mean(rates):.0f} images/s (features + ridge, 1 thread)")
print(f"{'test set (crop boundary)':<26} {'spectral':>22} {'network':>9} "
      f"{'baseline':>9}")
for name, r in results.items():
    s = r["spectral"]
    print(f"{name:<26} {100 * s['operator']:6.2f} % ({100 * s['direction']:.1f}/"
          f"{100 * s['scale']:.1f}) {100 * r['network']['operator']:7.2f} % "
          f"{100 * r['baseline']['operator']:7.2f} %")

# %%
# Write it beside a copy of the network
# -------------------------------------
OUT.mkdir(parents=True, exist_ok=True)
for name in ("model.safetensors", "model.json"):
    if OUT.resolve() != DEFAULT_DIR.resolve():
        shutil.copy(DEFAULT_DIR / name, OUT / name)
save_spectral(OUT, spectral, noise_std=params["noise_std"],
              boundary=params["boundary"], extra=dict(
                  training=dict({k: v for k, v in params.items()},
                                seconds=round(fit_seconds, 1),
                                images="natural training sources + point sources",
                                script="examples/train_spectral_model.py"),
                  test_errors={k: r["spectral"] for k, r in results.items()},
                  test_baseline_errors={k: r["baseline"]["operator"]
                                        for k, r in results.items()},
                  n_test_images=N_TEST))
again = load_model(OUT, estimator="spectral")
assert np.allclose(again.regressor.coef_, spectral.coef_)
print(f"written to {OUT}: "
      + json.dumps(sorted(p.name for p in OUT.iterdir())))
