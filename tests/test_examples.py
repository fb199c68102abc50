"""Every gallery example runs in fast mode and writes its figures."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("plot_*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_in_fast_mode(script, tmp_path):
    env = dict(os.environ, DEEPBLUR_FAST="1", DEEPBLUR_OUTPUT=str(tmp_path),
               MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = list(tmp_path.glob("*.png"))
    assert figures, "the example saved no figure"
    assert all(f.stat().st_size > 1000 for f in figures)


@pytest.mark.parametrize("gamma_pool", [None, "0"])
def test_the_training_script_runs_in_fast_mode(tmp_path, gamma_pool):
    """examples/train_default_model.py (the shipped model's recipe: a pool of
    sampler draws, noise in [0, 0.02], the blur-statistics head; or fresh
    draws with DEEPBLUR_GAMMA_POOL=0) on the reduced setting: it trains,
    saves, reloads and records its training noise and pool."""
    from deepblur.pretrained import load_model

    env = dict(os.environ, DEEPBLUR_FAST="1", DEEPBLUR_OUTPUT=str(tmp_path),
               MPLBACKEND="Agg")
    if gamma_pool is not None:
        env["DEEPBLUR_GAMMA_POOL"] = gamma_pool
    proc = subprocess.run([sys.executable,
                           str(ROOT / "examples" / "train_default_model.py")],
                          env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "train_default_model.png").stat().st_size > 1000
    meta = json.loads((tmp_path / "default_model" / "model.json").read_text())
    assert meta["noise_std"] == [0.0, 0.02] and meta["module"]["width"] == 32
    assert meta["gamma_pool"] == (16_000 if gamma_pool is None else 0)
    model = load_model(tmp_path / "default_model")
    assert model.noise_std == (0.0, 0.02) and model.setting["noise_std"] == 0.01
    error = float(proc.stdout.split(" operator error: ")[1].split()[0])
    baseline = float(proc.stdout.split("mean-gamma baseline ")[1].split(")")[0])
    assert error < baseline


@pytest.mark.parametrize("script, estimator, env", [
    ("train_crop_model", "crop_network",
     {"DEEPBLUR_TRAIN_IMAGES": "640", "DEEPBLUR_HEAD_IMAGES": "256"}),
    ("train_spectral_model", "spectral", {"DEEPBLUR_TRAIN_IMAGES": "1024"}),
])
def test_the_real_image_training_scripts_run_small(script, estimator, env,
                                                   tmp_path):
    """The scripts that made the shipped crop network and spectral regressor
    (full setting, few images: 40-50 s each here) train, write a model
    directory beside copies of the shipped network's files, and load."""
    from deepblur.pretrained import load_model

    env = dict(os.environ, DEEPBLUR_TEST_IMAGES="16", MPLBACKEND="Agg",
               DEEPBLUR_OUTPUT=str(tmp_path / "out"), **env)
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / f"{script}.py")],
                          env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = load_model(tmp_path / "out", estimator=estimator)
    assert model.setting["boundary"] == "crop"
    meta = json.loads((tmp_path / "out" / f"{estimator}.json").read_text())
    n_images = int(env["DEEPBLUR_TRAIN_IMAGES"])
    if estimator == "crop_network":
        assert meta["training"]["n_images"] == n_images
        assert meta["training"]["head_images"] == 256
    else:
        assert n_images <= meta["n_train_images"] < 2 * n_images
    assert meta["n_test_images"] == 16 and meta["test_errors"]


def test_readme_python_blocks_run():
    """The Python blocks of README.md run in order in one namespace; the
    blind-deblurring block gets the blurry images ``y`` it says it takes
    (held-out patches following the training convention)."""
    import re

    import numpy as np

    from deepblur.datasets import make_blurred_images, natural_image_split
    from deepblur.pretrained import load_default

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(),
                        re.S)
    assert len(blocks) >= 3
    model = load_default()
    y, _ = make_blurred_images(natural_image_split()[1], model.basis,
                               model.sampler, 2, noise_std=0.01, random_state=0)
    namespace = {}
    for block in blocks:
        if "load_default()" in block:       # it takes the user's images
            namespace["y"] = y
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["gamma"].shape == (200, 20)
    assert namespace["sharp"].shape == y.shape
    assert np.isfinite(namespace["sharp"]).all()


def test_readme_test_command_is_what_ci_runs():
    """.ci/run must run exactly the test command README.md gives."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    marker = "<!-- test-command -->"
    block = readme.split(marker)[1]
    command = block.split("```bash")[1].split("```")[0].strip()
    assert command and command in ci


TRAINING_SCRIPTS = ["train_default_model", "train_crop_model",
                    "train_spectral_model"]


@pytest.mark.parametrize("script", TRAINING_SCRIPTS)
def test_the_training_scripts_take_no_arguments(script, tmp_path):
    """Their settings are environment variables: ``--help`` prints the
    docstring that lists them, and any other argument is refused before
    any work. Both used to be ignored, so ``--help`` started the training
    (a day on a CPU for the default model) and wrote to examples/output."""
    env = dict(os.environ, DEEPBLUR_OUTPUT=str(tmp_path / "out"),
               MPLBACKEND="Agg")
    path = str(ROOT / "examples" / f"{script}.py")
    proc = subprocess.run([sys.executable, path, "--help"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DEEPBLUR_TRAIN_IMAGES" in proc.stdout
    if script != "train_default_model":     # the same lines in the three
        return
    proc = subprocess.run([sys.executable, path, "--n-images", "10"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "takes no arguments (got '--n-images 10')" in proc.stderr
    assert "DEEPBLUR_*" in proc.stderr
    assert not (tmp_path / "out").exists()
