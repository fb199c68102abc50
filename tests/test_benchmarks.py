"""Helpers of the benchmark scripts (benchmarks/*.py) that CI does not run
whole: they must still match the library they measure."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench_identifiability():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_identifiability
    finally:
        sys.path.remove(str(BENCHMARKS))
    return bench_identifiability


def test_identifiability_probe_reads_the_networks_own_input(bench_identifiability):
    """``--probe``'s feature maps are those of the network's forward pass: the
    shipped network's stem takes the image and its Laplacian
    (``input_norm="laplacian"``), and the maps were computed from the bare
    image (a RuntimeError on the stem's 2 input channels)."""
    from deepblur.datasets import make_blurred_images, natural_image_split
    from deepblur.nets.resnet import _INPUT_CHANNELS
    from deepblur.pretrained import load_default

    model = load_default()
    X, _ = make_blurred_images(natural_image_split()[1], model.basis,
                               model.sampler, 5, noise_std=0.01, random_state=0)
    maps = bench_identifiability.feature_maps(model.regressor, X, batch_size=2)
    module = model.regressor.module_.eval()
    assert module.input_norm == "laplacian"
    x = torch.as_tensor(X, dtype=torch.float32)[:, None]
    with torch.no_grad():
        expected = module.blocks(module.stem(
            _INPUT_CHANNELS[module.input_norm][1](x))).flatten(1).numpy()
    assert maps.shape == expected.shape == (5, expected.shape[1])
    np.testing.assert_allclose(maps, expected, rtol=1e-4, atol=1e-4)


def test_data_reuse_saves_its_networks(tmp_path):
    """``bench_data_reuse.py --save-dir`` writes each trained network with
    ``save_model``, whose setting needs the calibration ``gamma``: the
    script's setting had none, and every network failed to save with
    ``KeyError: 'gamma'`` after its training (minutes to an hour)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_data_reuse
    finally:
        sys.path.remove(str(BENCHMARKS))
    from deepblur.pretrained import load_default, load_model, save_model

    model = load_default()
    save_model(tmp_path / "g1_d2", model.regressor,
               bench_data_reuse.shipped_setting(model), noise_std=(0.0, 0.02))
    again = load_model(tmp_path / "g1_d2")
    np.testing.assert_allclose(again.cone.rays_, model.cone.rays_, atol=1e-6)
    np.testing.assert_allclose(again.basis.gram_, model.basis.gram_, rtol=1e-5)


@pytest.mark.parametrize("flags, match", [
    (["--margin", "2"], "margin must be an int >= the kernel radius"),
    (["--max-pixels", "1000"], "too small for one solve"),
])
def test_large_refuses_its_solve_settings_before_any_work(monkeypatch, capsys,
                                                          flags, match):
    """``bench_large.py --margin`` under the kernel radius was refused by the
    block-wise solve only, after the blur and the estimation of the first
    size (minutes); the library's check of the solve now runs first."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_large
    finally:
        sys.path.remove(str(BENCHMARKS))

    def started(*args, **kwargs):
        raise AssertionError("the benchmark started before checking its flags")

    monkeypatch.setattr(bench_large, "boundary_cue", started)
    monkeypatch.setattr(bench_large, "run_size", started)
    with pytest.raises(SystemExit) as exc:
        bench_large.main(["--sizes", "1024", *flags])
    assert exc.value.code == 2
    assert match in capsys.readouterr().err
    with pytest.raises(AssertionError, match="started before"):
        bench_large.main(["--sizes", "1024"])       # the defaults pass
