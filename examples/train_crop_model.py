"""
Train the network for real images (windows of larger scenes)
============================================================

Reproduces the second network shipped with deepblur,
``load_default(estimator="crop_network")``, the one ``deepblur estimate`` and
``deepblur deblur`` use for real images (``--estimator auto``):

1. the seeded default setting, rebuilt from scratch
   (:func:`~deepblur.pretrained.make_default_setting`: the basis, cone and
   sampler of the shipped network);
2. a pool of 2 000 patches of the training source images and 500 simulated
   point sources (a fifth), normalised to mean 0.5 and blurred as **windows
   of larger scenes** (``boundary="crop"``: no dark border to read the blur
   from, as in real images and tiles), with Gaussian noise of standard
   deviation uniform in [0, 0.05] (the shipped spectral regressor's range);
3. the CPU recipe of :func:`~deepblur.pretrained.train_regressor`: a slim
   ResNet (width 8, depth 2) whose stem sees the image and its relative
   Laplacian (``input_norm="laplacian"``), 384 000 images drawn on the fly in
   10 epochs, ``torch.compile``, one thread and one data worker (none on
   macOS and Windows);
4. its blur-statistics branch fitted in closed form
   (:func:`~deepblur.pretrained.add_feature_head`) on 40 960 fresh images of a
   second pool of the same kind;
5. evaluation on held-out sets (natural images of held-out sources, the
   bundled microscopy images, new point sources; crop boundary) beside the
   shipped spectral regressor and the mean-gamma baseline, and against the
   noise level;
6. the network is written as ``crop_network.safetensors`` +
   ``crop_network.json`` (:func:`~deepblur.pretrained.save_crop_network`)
   next to a copy of the shipped model's files in ``DEEPBLUR_OUTPUT``
   (default ``examples/output/crop_model``); copying those two files into
   ``deepblur/pretrained/default`` ships it.

About 25 minutes on a 2-core CPU. An interrupted run resumes from the
checkpoint in ``DEEPBLUR_OUTPUT/checkpoint`` (finished epochs are kept).
``DEEPBLUR_TRAIN_IMAGES`` sets the number of training images of the network,
``DEEPBLUR_HEAD_IMAGES`` those of its branch, ``DEEPBLUR_TEST_IMAGES`` the
size of each test set (default 512).
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
    make_blurred_images,
    make_point_sources,
    natural_image_split,
)
from deepblur.pretrained import (
    CROP_NETWORK_DEFAULTS,
    compare_estimators,
    default_num_workers,
    load_default,
    load_model,
    make_default_setting,
    save_crop_network,
    train_crop_network,
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
                          Path(__file__).parent / "output" / "crop_model"))
N_TEST = int(os.environ.get("DEEPBLUR_TEST_IMAGES", 512))
# One data worker, as for the shipped network, where workers are forked
# (Linux); where they would be spawned (macOS, Windows) this unguarded script
# would run again in the worker, so the data are made in-process there (other
# random images than the shipped run's: a worker's stream has its own seed).
recipe = dict(CROP_NETWORK_DEFAULTS, device="cpu",
              num_workers=default_num_workers(torch.device("cpu")))
recipe["n_images"] = int(os.environ.get("DEEPBLUR_TRAIN_IMAGES",
                                        recipe["n_images"]))
recipe["head_images"] = int(os.environ.get("DEEPBLUR_HEAD_IMAGES",
                                           recipe["head_images"]))
torch.set_num_threads(1)

# %%
# The default setting, from scratch
# ---------------------------------
t0 = time.perf_counter()
setting = make_default_setting()
basis, sampler = setting["basis"], setting["sampler"]
shipped = load_default()
assert (np.linalg.norm(basis.gram_ - shipped.basis.gram_)
        < 1e-5 * np.linalg.norm(shipped.basis.gram_)), \
    "make_default_setting no longer reproduces the shipped basis"
print(f"setting rebuilt in {time.perf_counter() - t0:.0f} s")
train_images, test_images = natural_image_split()
shape = tuple(basis.image_shape_)

# %%
# The network on fresh simulated windows, then its branch
# -------------------------------------------------------
# :func:`~deepblur.pretrained.train_crop_network` builds the two pools
# (patches of the training sources and a fifth of point sources), trains the
# network on windows (``boundary="crop"``) and fits its branch.
checkpoint = OUT / "checkpoint"
resume = (checkpoint / "history.json").exists()
if not resume:          # no finished epoch (history.json is written last)
    shutil.rmtree(checkpoint, ignore_errors=True)
t0 = time.perf_counter()
regressor = train_crop_network(setting, train_images, checkpoint_dir=checkpoint,
                               resume=resume, verbose=1, **recipe)
seconds = time.perf_counter() - t0
train_seconds = float(sum(regressor.history[:, "dur"]))
print(f"network: {recipe['n_images']} images in {train_seconds:.0f} s of "
      f"epochs; with the branch ({recipe['head_images']} images, ridge alpha "
      f"{regressor.feature_head_alpha_:g}) {seconds:.0f} s"
      + (" (resumed)" if resume else ""))

# %%
# Held-out evaluation (crop boundary), beside the spectral regressor
# ------------------------------------------------------------------
spectral = load_default(estimator="spectral").regressor
rng = np.random.RandomState(123)
sources = {
    "natural": test_images,
    "microscopy": extract_patches(load_microscopy_images(), N_TEST, shape,
                                  random_state=rng),
    "points": make_point_sources(N_TEST, shape, random_state=rng),
}
mean_gamma = sampler.sample(50_000).mean(0)


estimators = {"crop_network": regressor, "spectral": spectral}
results, rates = {}, []
for name, images in sources.items():
    results[name], rate = compare_estimators(
        estimators, basis, sampler, images, N_TEST, noise_std=0.01,
        mean_gamma=mean_gamma, random_state=rng)
    rates.append(rate["crop_network"])
for noise in (0.0, 0.03, 0.05, 0.1):
    results[f"natural, sigma {noise:g}"], _ = compare_estimators(
        estimators, basis, sampler, test_images, N_TEST, noise_std=noise,
        mean_gamma=mean_gamma, random_state=rng)
print(f"inference: {np.mean(rates):.0f} images/s (1 thread)")
print(f"{'test set (crop boundary)':<26} {'crop network':>22} {'spectral':>9} "
      f"{'baseline':>9}")
for name, r in results.items():
    c = r["crop_network"]
    print(f"{name:<26} {100 * c['operator']:6.2f} % ({100 * c['direction']:.1f}/"
          f"{100 * c['scale']:.1f}) {100 * r['spectral']['operator']:7.2f} % "
          f"{100 * r['baseline']['operator']:7.2f} %")

# %%
# Write it beside a copy of the shipped model
# -------------------------------------------
OUT.mkdir(parents=True, exist_ok=True)
for name in ("model.safetensors", "model.json", "spectral.safetensors",
             "spectral.json"):
    if OUT.resolve() != DEFAULT_DIR.resolve():
        shutil.copy(DEFAULT_DIR / name, OUT / name)
save_crop_network(OUT, regressor, noise_std=recipe["noise_std"], extra=dict(
    training=dict({k: list(v) if isinstance(v, tuple) else v
                   for k, v in recipe.items()},
                  epoch_seconds=round(train_seconds, 1),
                  seconds_with_branch=round(seconds, 1), resumed=resume,
                  images="patches of the natural training sources + a fifth "
                         "point sources, boundary crop",
                  script="examples/train_crop_model.py"),
    test_errors={k: r["crop_network"] for k, r in results.items()},
    test_spectral_errors={k: r["spectral"]["operator"] for k, r in results.items()},
    test_baseline_errors={k: r["baseline"]["operator"] for k, r in results.items()},
    n_test_images=N_TEST))
again = load_model(OUT, estimator="crop_network")
X = make_blurred_images(test_images, basis, sampler, 8, noise_std=0.01,
                        boundary="crop", random_state=0)[0]
assert np.allclose(again.regressor.predict(X), regressor.predict(X), atol=1e-5)
print(f"written to {OUT}: "
      + json.dumps(sorted(p.name for p in OUT.iterdir())))
