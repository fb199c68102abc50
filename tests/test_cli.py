"""The ``deepblur`` command: every command's happy path, errors and help."""

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tifffile  # noqa: E402
import torch  # noqa: E402

from deepblur import ProductConvolutionBasis  # noqa: E402
from deepblur.cli import main, write_image  # noqa: E402
from deepblur.datasets import make_random_operators  # noqa: E402
from deepblur.datasets.simulate import make_blurred_images  # noqa: E402
from deepblur.estimators.regressor import ResNetBlurRegressor  # noqa: E402
from deepblur.metrics import snr  # noqa: E402
from deepblur.pretrained import (  # noqa: E402
    bundled_image,
    deblur_image,
    estimate_gamma,
    load_basis,
    load_model,
    make_default_setting,
    operator_gain,
    relative_errors,
    save_crop_network,
    save_model,
    simulate_blind_deblurring,
)

COMMANDS = ["demo", "estimate", "deblur", "train", "basis"]


@pytest.fixture(scope="module")
def setting():
    return make_default_setting(n_operators=30, image_shape=(64, 64),
                                kernel_shape=(15, 15), grid_shape=(8, 8),
                                n_components=6, n_rays=10)


@pytest.fixture(scope="module")
def model_dir(setting, tmp_path_factory):
    """A tiny regressor trained one epoch, written by save_model."""
    basis, sampler = setting["basis"], setting["sampler"]
    pool = np.random.default_rng(0).random((16, 64, 64)) + 0.1
    X, y = make_blurred_images(pool, basis, sampler, 64, random_state=0)
    torch.manual_seed(0)
    net = ResNetBlurRegressor(basis=basis, module__width=4, module__depth=1,
                              module__stem_stride=4, max_epochs=1, device="cpu",
                              train_split=None, verbose=0).fit(X, y)
    return save_model(tmp_path_factory.mktemp("model"), net, setting)


@pytest.fixture(scope="module")
def model(model_dir):
    return load_model(model_dir)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------ help
@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_help(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    code, out, _ = _run(capsys, *argv)
    assert code == 0
    assert out.startswith("usage: deepblur" + ("" if command is None
                                                else f" {command}"))
    if command is None:
        assert all(c in out for c in COMMANDS)
    if command in ("estimate", "deblur"):
        text = " ".join(out.split())       # independent of line wrapping
        assert "Intensity convention" in text and "brightness" in text


def test_usage_errors_exit_2(capsys):
    assert _run(capsys, )[0] == 2                           # no command
    assert _run(capsys, "frobnicate")[0] == 2
    assert _run(capsys, "deblur", "x.tif")[0] == 2          # -o is required
    code, _, err = _run(capsys, "demo", "--lam", "-3")
    assert code == 2 and "positive number or 'auto'" in err
    code, _, err = _run(capsys, "demo", "--device", "toaster")
    assert code == 2 and "torch device" in err
    code, _, err = _run(capsys, "basis", "a.npy", "--grid", "0", "4",
                        "--image-shape", "8", "8", "-K", "2", "-o", "out")
    assert code == 2 and "positive integer" in err


def test_an_absent_device_is_refused_before_any_work(capsys, monkeypatch,
                                                     model_dir, blurry, tmp_path):
    """--device mps (or meta) passed torch.device: deblur ran the blind
    estimate, then crashed in the solver with a long traceback."""
    import deepblur.pretrained._apply as apply

    def never(*args, **kwargs):
        raise AssertionError("the model ran")

    image = tmp_path / "y.tif"
    tifffile.imwrite(image, blurry[2].astype(np.float32))
    monkeypatch.setattr(apply, "estimate_gamma", never)
    monkeypatch.setattr("deepblur._validation._OTHER_ACCELERATORS",
                        {"mps": lambda: False, "xpu": lambda: False})
    for device, expected in (("mps", "has no 'mps' device"),
                             ("meta", "not a device deepblur runs on")):
        code, _, err = _run(capsys, "deblur", image, "-o", tmp_path / "u.tif",
                            "--model", model_dir, "--device", device)
        assert code == 1 and expected in _one_error_line(err)


def test_console_script_and_module():
    script = Path(sys.executable).with_name("deepblur")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: deepblur") and "deblur" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "deepblur", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("deepblur "), proc.stderr


# ------------------------------------------------------------------ demo
def _numbers(out):
    pattern = {
        "operator_error": r"relative operator error: (-?[\d.]+) %",
        "snr_blurry": r"SNR blurry: (-?[\d.]+) dB",
        "snr_deblurred": r"SNR deblurred \(estimated operator\): (-?[\d.]+) dB",
        "snr_deblurred_true": r"SNR deblurred \(true operator\): (-?[\d.]+) dB",
    }
    return {k: float(re.search(p, out).group(1)) for k, p in pattern.items()}


def test_demo_prints_numbers_and_writes_figure(model_dir, model, capsys, tmp_path):
    figure = tmp_path / "fig3.png"
    code, out, err = _run(capsys, "demo", "--model", model_dir, "-o", figure,
                          "--seed", 3, "--max-iter", 150)
    assert code == 0, err
    assert figure.stat().st_size > 5000
    got = _numbers(out)
    # the same simulation through the library gives the printed numbers
    ref = simulate_blind_deblurring(model, bundled_image("camera", (64, 64)),
                                    random_state=3, max_iter=150)
    assert got["operator_error"] == pytest.approx(100 * ref["operator_error"],
                                                  abs=0.006)
    for key in ("snr_blurry", "snr_deblurred", "snr_deblurred_true"):
        assert got[key] == pytest.approx(ref[key], abs=0.006)
    # the numbers mean what they say
    assert ref["operator_error"] == pytest.approx(float(model.basis.operator_distance(
        ref["gamma"], ref["gamma_hat"])))
    gain = operator_gain(model.basis, ref["gamma"])
    assert ref["blurry_gain"] == pytest.approx(gain)     # zero boundary: whole
    assert ref["snr_blurry"] == pytest.approx(snr(ref["original"],
                                                  ref["blurry"] / gain))
    assert got["snr_deblurred_true"] > got["snr_blurry"]
    assert ref["original"].mean() == pytest.approx(0.5)
    # another seed, another operator
    other = simulate_blind_deblurring(model, ref["original"], random_state=4,
                                      max_iter=5)
    assert not np.allclose(other["gamma"], ref["gamma"])


def test_demo_adds_the_settings_noise_not_the_training_range(model, setting, capsys,
                                                             tmp_path):
    """A network trained on a noise range (the shipped one: [0, 0.02]) is
    demonstrated at its setting's noise (the protocol's 0.01), and the demo
    prints the noise it added; a crop network, whose setting is its
    training's, at its training range."""
    saved = save_model(tmp_path / "ranged", model.regressor, setting,
                       noise_std=(0.0, 0.04))
    ranged = load_model(saved)
    assert ranged.noise_std == (0.0, 0.04) and ranged.setting["noise_std"] == 0.01
    res = simulate_blind_deblurring(ranged, bundled_image("camera", (64, 64)),
                                    random_state=5, max_iter=2)
    assert res["noise_std"] == 0.01
    noiseless = ranged.basis.apply(res["original"], res["gamma"])
    assert np.std(res["blurry"] - noiseless) == pytest.approx(0.01, rel=0.05)
    code, out, err = _run(capsys, "demo", "--model", saved, "-o",
                          tmp_path / "fig.png", "--seed", 5, "--max-iter", 2)
    assert code == 0, err
    assert "noise std 0.01," in out
    stand_in = copy.deepcopy(model.regressor)     # the network, as a crop one
    del stand_in.training_boundary_
    save_crop_network(saved, stand_in, noise_std=(0.0, 0.05))
    crop = load_model(saved, estimator="crop_network")
    res = simulate_blind_deblurring(crop, bundled_image("camera", (64, 64)),
                                    random_state=5, max_iter=2)
    assert res["noise_std"] == crop.setting["noise_std"] == (0.0, 0.05)
    # a window of a larger scene is as bright as the interior's gain makes it
    gain = operator_gain(crop.basis, res["gamma"], interior=True)
    assert gain != pytest.approx(operator_gain(crop.basis, res["gamma"]), rel=1e-3)
    assert res["blurry_gain"] == pytest.approx(gain)
    assert res["snr_blurry"] == pytest.approx(snr(res["original"],
                                                  res["blurry"] / gain))
    from deepblur.plotting import plot_blind_deblurring

    fig = plot_blind_deblurring(crop.basis, res["gamma"], res["gamma_hat"],
                                res["blurry"], res["original"], res["deblurred"],
                                blurry_gain=res["blurry_gain"])
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert f"SNR {res['snr_blurry']:.2f} dB" in titles[2]


def test_demo_with_default_model_and_without_it(model_dir, capsys, tmp_path,
                                                monkeypatch):
    import deepblur.pretrained._io as io

    monkeypatch.setattr(io, "DEFAULT_DIR", tmp_path / "absent")
    code, out, err = _run(capsys, "demo", "-o", tmp_path / "demo.png")
    assert code == 1 and out == ""
    line = _one_error_line(err)
    assert "default model is not installed" in line and "--model" in line
    monkeypatch.setattr(io, "DEFAULT_DIR", Path(model_dir))
    monkeypatch.chdir(tmp_path)
    code, out, err = _run(capsys, "demo", "--image", "coffee", "--max-iter", 20)
    assert code == 0, err
    assert (tmp_path / "deepblur_demo.png").stat().st_size > 5000   # the default
    assert "image: coffee" in out


def test_demo_errors(model_dir, capsys, tmp_path):
    code, _, err = _run(capsys, "demo", "--model", model_dir, "--image", "lena")
    assert code == 1 and "--image must be one of" in _one_error_line(err)
    code, _, err = _run(capsys, "demo", "--model", model_dir, "-o",
                        tmp_path / "fig.xyz")
    assert code == 1 and "unsupported figure format" in _one_error_line(err)
    code, _, err = _run(capsys, "demo", "--model", tmp_path / "nowhere")
    assert code == 1 and "not a directory" in _one_error_line(err)
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, "demo", "--model", tmp_path / "empty")
    line = _one_error_line(err)
    assert code == 1 and "model.safetensors" in line
    # the command's advice, not a script of the source tree (examples/)
    assert "`deepblur train CONFIG` writes one" in line and "examples/" not in line
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    (broken / "model.json").write_text("{}")
    code, _, err = _run(capsys, "demo", "--model", broken)
    line = _one_error_line(err)
    assert code == 1 and "could not load the model" in line
    assert "model.safetensors in" in line and "the file is damaged" in line
    (broken / "model.json").write_text("[]")          # the loader names the file
    code, _, err = _run(capsys, "demo", "--model", broken)
    line = _one_error_line(err)
    assert code == 1 and "model.json in" in line and "JSON object" in line
    assert "save_model?" not in line
    import shutil

    from deepblur.pretrained._io import DEFAULT_DIR

    foreign = tmp_path / "foreign"          # an error of its own, no file named
    shutil.copytree(DEFAULT_DIR, foreign)
    meta = json.loads((foreign / "model.json").read_text())
    (foreign / "model.json").write_text(json.dumps(dict(meta, setting="abc")))
    code, _, err = _run(capsys, "demo", "--model", foreign)
    line = _one_error_line(err)
    assert code == 1 and "(ValueError:" in line and "save_model?" in line
    if not torch.cuda.is_available():
        code, _, err = _run(capsys, "demo", "--model", model_dir, "--device",
                            "cuda", "-o", tmp_path / "d.png")
        assert code == 1 and "CUDA is not available" in _one_error_line(err)


def test_interrupt_and_traceback(model_dir, capsys, tmp_path, monkeypatch):
    import deepblur.pretrained._apply as apply

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(apply, "simulate_blind_deblurring", interrupted)
    code, _, err = _run(capsys, "demo", "--model", model_dir, "-o",
                        tmp_path / "d.png")
    assert code == 130 and _one_error_line(err) == "deepblur demo: interrupted"
    from deepblur.cli import CLIError

    with pytest.raises(CLIError, match="does not exist"):
        main(["--traceback", "deblur", str(tmp_path / "no.tif"), "-o",
              str(tmp_path / "o.tif"), "--model", str(model_dir)])


# ------------------------------------------------------------- estimate
@pytest.fixture(scope="module")
def blurry(setting, model):
    """A blurry image in arbitrary units (mean about 1000) and its operator."""
    u = bundled_image("coffee", (64, 64))
    gamma = setting["gamma"][3]
    y = model.basis.apply(u, gamma) * 2000 + np.random.default_rng(1).normal(
        0, 5, u.shape)
    return u, gamma, y


def test_estimate_writes_gamma_and_figure(model_dir, model, blurry, capsys,
                                          tmp_path):
    _, _, y = blurry
    image = tmp_path / "y.tif"
    tifffile.imwrite(image, y.astype(np.float32))
    code, out, err = _run(capsys, "estimate", image, "--model", model_dir, "-o",
                          tmp_path / "g.json", "--figure", tmp_path / "g.png")
    assert code == 0, err
    expected, scale = estimate_gamma(model, y.astype(np.float32))
    data = json.loads((tmp_path / "g.json").read_text())
    assert len(data["gamma"]) == data["K"] == 6
    np.testing.assert_allclose(data["gamma"], expected, rtol=1e-5)
    # the gain printed and saved is the one deblur divides gamma by (the mass
    # of the PSFs, unit gain with either boundary); it was the zero
    # boundary's whole-image gain, 2 % off here (0.2598 for 0.2548)
    # (the mean of H 1 half a 15x15 kernel and more from the border)
    gain = np.asarray(model.basis.apply(np.ones((64, 64)), expected))[7:-7, 7:-7]
    gain = float(gain.mean())
    assert data["gain"] == pytest.approx(gain)
    assert gain != pytest.approx(operator_gain(model.basis, expected), rel=0.01)
    assert f"operator gain (the mass of its PSFs, which deblur rescales to 1): " \
           f"{gain:.4f}" in out
    for boundary in ("unknown", "model"):
        _, used = deblur_image(model, y.astype(np.float32), gamma=data["gamma"],
                               boundary=boundary, max_iter=1)
        np.testing.assert_allclose(used, np.asarray(data["gamma"]) / data["gain"],
                                   rtol=1e-6)
    # the estimate's distance to the model's support (no tolerance saved here)
    proj = model.sampler.project(expected[None], gram=model.basis.gram_)[0]
    d = expected - proj
    G = model.basis.gram_
    assert data["support_distance"] == pytest.approx(
        np.sqrt(d @ G @ d / (proj @ G @ proj)), rel=1e-4)
    assert data["support_tolerance"] is None
    assert "distance to the operators the model was trained on" in out
    printed = re.search(r"gamma_hat \(K=6\): (.*)", out).group(1).split()
    np.testing.assert_allclose(np.array(printed, dtype=float), expected, rtol=1e-5)
    assert (tmp_path / "g.png").stat().st_size > 1000
    # the image is scaled to the mean of the training observations
    rays = model.sampler.generators_
    target = 0.5 * np.mean(model.sampler.alpha_range) * np.mean(
        operator_gain(model.basis, rays))
    assert (y.astype(np.float32).mean() * scale) == pytest.approx(target, rel=1e-5)
    # brightness does not change the estimate
    code, _, _ = _run(capsys, "estimate", image, "--model", model_dir, "-o",
                      tmp_path / "g.npy")
    assert code == 0
    tifffile.imwrite(image, (7 * y).astype(np.float32))
    assert _run(capsys, "estimate", image, "--model", model_dir, "-o",
                tmp_path / "g7.npy")[0] == 0
    g, g7 = np.load(tmp_path / "g.npy"), np.load(tmp_path / "g7.npy")
    assert g.shape == (6,)
    np.testing.assert_allclose(g7, g, rtol=1e-4, atol=1e-6)
    # --project: the raw estimate projected on the sampler's support
    assert _run(capsys, "estimate", image, "--model", model_dir, "--project",
                "-o", tmp_path / "gp.npy")[0] == 0
    gp = np.load(tmp_path / "gp.npy")
    assert _run(capsys, "estimate", image, "--model", model_dir, "--project",
                "-o", tmp_path / "gp.json")[0] == 0
    assert json.loads((tmp_path / "gp.json").read_text())["support_distance"] is None
    raw7, _ = estimate_gamma(model, (7 * y).astype(np.float32))
    np.testing.assert_allclose(
        gp, model.sampler.project(raw7[None], gram=model.basis.gram_)[0],
        rtol=1e-4, atol=1e-6)
    assert np.abs(gp - g7).max() > 0     # the one-epoch network is off the set


def test_estimate_rejects_bad_outputs(model_dir, blurry, capsys, tmp_path):
    image = tmp_path / "y.tif"
    tifffile.imwrite(image, blurry[2].astype(np.float32))
    code, _, err = _run(capsys, "estimate", image, "--model", model_dir, "-o",
                        tmp_path / "g.txt")
    assert code == 1 and "use .json, .npy" in _one_error_line(err)
    code, _, err = _run(capsys, "estimate", image, "--model", model_dir, "-o",
                        tmp_path / "nodir" / "g.json")
    assert code == 1 and "does not exist" in _one_error_line(err)
    (tmp_path / "g.json").mkdir()
    code, _, err = _run(capsys, "estimate", image, "--model", model_dir, "-o",
                        tmp_path / "g.json")
    assert code == 1 and "is a directory" in _one_error_line(err)
    # a figure over the input image (matplotlib writes .tif) is refused
    before = image.read_bytes()
    code, _, err = _run(capsys, "estimate", image, "--model", model_dir,
                        "--figure", tmp_path / "." / "y.tif")
    assert code == 1 and "is the input file" in _one_error_line(err)
    assert image.read_bytes() == before


# --------------------------------------------------------------- deblur
CASES = [("uint8", ".png"), ("uint16", ".png"), ("uint8", ".tif"),
         ("uint16", ".tif"), ("float32", ".tif"), ("float64", ".tiff")]


def _write(path, image):
    if path.suffix == ".png":
        iio.imwrite(path, image)
    else:
        tifffile.imwrite(path, image)


def _read(path):
    return iio.imread(path) if path.suffix == ".png" else tifffile.imread(path)


@pytest.mark.parametrize("dtype,suffix", CASES)
def test_deblur_round_trips_dtype(dtype, suffix, model_dir, blurry, capsys,
                                  tmp_path):
    _, _, y = blurry
    peak = {"uint8": 200, "uint16": 50_000}.get(dtype, 3.0)
    image = (y / y.max() * peak).astype(dtype)
    src, dst = tmp_path / f"in{suffix}", tmp_path / f"out{suffix}"
    _write(src, image)
    code, out, err = _run(capsys, "deblur", src, "-o", dst, "--model", model_dir,
                          "--max-iter", 30)
    assert code == 0, err
    assert "blind" in out
    result = _read(dst)
    assert result.dtype == np.dtype(dtype) and result.shape == (64, 64)
    assert np.isfinite(result.astype(np.float64)).all()
    # same brightness scale as the input (a blind estimate of a tiny model)
    ratio = result.astype(np.float64).mean() / image.astype(np.float64).mean()
    assert 0.5 < ratio < 2


def test_deblur_output_dtype_float32_keeps_what_integers_clip(model_dir, blurry,
                                                              capsys, tmp_path):
    """Ringing past 255 is clipped from an 8-bit output of an image that
    reaches it (the warning said to write a float .tif, which the command
    could not do); --output-dtype float32 keeps every value, in the input's
    units."""
    _, _, y = blurry
    image = np.round(y / y.max() * 255).astype(np.uint8)
    src = tmp_path / "in.tif"
    _write(src, image)
    run = ("--model", model_dir, "--max-iter", 30, "--lam", 5000)
    code, out, err = _run(capsys, "deblur", src, "-o", tmp_path / "u8.tif", *run)
    assert code == 0 and "were clipped" in err and "--output-dtype float32" in err, err
    code, out, err = _run(capsys, "deblur", src, "-o", tmp_path / "f.tif",
                          "--output-dtype", "float32", *run)
    assert code == 0 and "clipped" not in err, err
    as_float, as_u8 = tifffile.imread(tmp_path / "f.tif"), _read(tmp_path / "u8.tif")
    assert as_float.dtype == np.float32
    assert as_float.min() < -0.5 or as_float.max() > 255.5
    np.testing.assert_array_equal(np.clip(np.rint(as_float), 0, 255), as_u8)
    code, out, err = _run(capsys, "deblur", src, "-o", tmp_path / "f.png",
                          "--output-dtype", "float32", *run)
    assert code == 1 and "PNG cannot store float" in err


def _window(model, u_big, gamma, r):
    """Blur a larger scene by H[gamma] extended past the edges, keep the centre.

    The maps are extended by their edge values, so that the crop is what a
    camera with this blur would record of the scene: no dark surrounding.
    """
    basis = model.basis
    maps = np.pad(basis.maps_, ((0, 0), (r, r), (r, r)), mode="edge")
    big = ProductConvolutionBasis.from_components(basis.kernels_, maps)
    return big.apply(u_big, gamma)[r:-r, r:-r]


def test_deblur_with_true_operator_keeps_brightness(model_dir, model, capsys,
                                                    tmp_path):
    r = 16
    u_big = bundled_image("coffee", (64 + 2 * r, 64 + 2 * r)) * 2000 + 300
    u = u_big[r:-r, r:-r]
    gamma = model.sampler.sample(1)[0]
    y = _window(model, u_big, gamma, r)
    y = y + np.random.default_rng(1).normal(0, 0.005 * y.mean(), y.shape)
    src = tmp_path / "y.tif"
    tifffile.imwrite(src, y.astype(np.float32))
    np.save(tmp_path / "gamma.npy", gamma)
    results = {}
    for boundary in ("unknown", "model"):
        dst = tmp_path / f"u_{boundary}.tif"
        code, out, err = _run(capsys, "deblur", src, "-o", dst, "--model",
                              model_dir, "--gamma", tmp_path / "gamma.npy",
                              "--boundary", boundary)
        assert code == 0, err
        assert "operator from" in out
        assert "gamma.npy does not record the basis it was estimated in" in err
        results[boundary] = tifffile.imread(dst).astype(np.float64)
    restored = results["unknown"]
    inner = (slice(8, -8), slice(8, -8))
    # the operator is rescaled to unit gain and the result mapped back: the
    # brightness of the input, although the sampled operator's gain is not 1
    assert operator_gain(model.basis, gamma, interior=True) > 1.5
    assert restored[inner].mean() == pytest.approx(y[inner].mean(), rel=0.02)
    clean = u * (y[inner].mean() / u[inner].mean())
    # measured 6.3 dB (2.5 when the data term kept the interior pixels only)
    assert snr(clean, restored) > snr(clean, y) + 5
    # a dark surrounding assumed where the scene goes on: the border blows up
    assert snr(clean, restored) > snr(clean, results["model"]) + 10   # 30.6 dB
    # the same from a JSON list, and with the l1 regulariser
    (tmp_path / "gamma.json").write_text(json.dumps({"gamma": gamma.tolist()}))
    code, _, err = _run(capsys, "deblur", src, "-o", tmp_path / "l1.tif",
                        "--model", model_dir, "--gamma", tmp_path / "gamma.json",
                        "--regularization", "l1", "--positive", "--lam", "50",
                        "--max-iter", 30)
    assert code == 0, err
    assert (tifffile.imread(tmp_path / "l1.tif") >= 0).all()
    # a file of `deepblur estimate` with another model's basis is refused
    other = 2 * model.basis.gram_
    (tmp_path / "other.json").write_text(json.dumps(
        {"gamma": gamma.tolist(), "model": "m2", "basis_gram": other.tolist()}))
    code, _, err = _run(capsys, "deblur", src, "-o", tmp_path / "x.tif",
                        "--model", model_dir, "--gamma", tmp_path / "other.json")
    assert code == 1 and ("other.json was estimated with a model of another "
                          "basis (model 'm2'") in _one_error_line(err)


def test_deblur_boundary_model_restores_the_scene_at_unit_psf_mass(
        model_dir, model, capsys, tmp_path):
    """`deepblur deblur --boundary model` on an image of the model's size
    rescales the operator to PSFs of mass 1, as on a larger image: a scene
    blurred with a zero boundary by an operator of unit PSF mass, given at 3
    times its scale, is restored as that true operator restores it, at the
    scene's brightness. The operator was divided by its whole gain (0.941
    here: the zero boundary's losses included), and the restored interior
    came out 5.9 % darker than the scene."""
    from deepblur import TVDeblurrer

    gamma = np.asarray(model.sampler.generators_).mean(axis=0)   # the cone's
    gamma = gamma / operator_gain(model.basis, gamma, interior=True)
    u = bundled_image("coffee", tuple(model.basis.image_shape_))
    y = (1000 * model.basis.apply(u, gamma)).astype(np.float32)
    tifffile.imwrite(tmp_path / "y.tif", y)
    np.save(tmp_path / "gamma.npy", 3 * gamma)
    code, _, err = _run(capsys, "deblur", tmp_path / "y.tif", "-o",
                        tmp_path / "u.tif", "--model", model_dir, "--gamma",
                        tmp_path / "gamma.npy", "--boundary", "model", "--lam",
                        800, "--max-iter", 100)
    assert code == 0, err
    restored = tifffile.imread(tmp_path / "u.tif").astype(np.float64)
    scale = 0.5 / y.astype(np.float64).mean()
    ref = TVDeblurrer(model.basis, lam=800.0, max_iter=100).fit().transform(
        (y * scale).astype(np.float32), gamma=gamma) / scale
    np.testing.assert_allclose(restored, ref, rtol=1e-4, atol=1e-4 * y.max())
    inner = (slice(8, -8), slice(8, -8))
    assert restored[inner].mean() == pytest.approx(1000 * u[inner].mean(),
                                                   rel=0.01)


def test_write_image_rounds_and_clips(capsys, tmp_path):
    path = tmp_path / "x.tif"
    write_image(path, np.array([[-5.0, 3.6], [300.0, 254.4]]), np.uint8)
    np.testing.assert_array_equal(tifffile.imread(path), [[0, 4], [255, 254]])
    # the clipping is said, not silent
    assert "2 pixel(s) (50 %) of x.tif fell outside uint8's range [0, 255]" in (
        capsys.readouterr().err)
    write_image(path, np.array([[-5.0, 70000.0]]), np.uint16)
    np.testing.assert_array_equal(tifffile.imread(path), [[0, 65535]])
    assert "2 pixel(s) (100 %)" in capsys.readouterr().err
    write_image(path, np.array([[-0.4, 255.4]]), np.uint8)   # rounds inside
    assert capsys.readouterr().err == ""


def _pixel_size(path):
    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[0].tags
        return (tags["XResolution"].value, tags["YResolution"].value,
                int(tags["ResolutionUnit"].value),
                {k: v for k, v in (tif.imagej_metadata or {}).items()
                 if k in ("unit", "spacing")})


def test_deblur_keeps_the_pixel_size_of_a_tiff(model_dir, blurry, capsys,
                                               tmp_path):
    """The output TIFF was written without the input's resolution: Fiji
    showed a calibrated image (0.065 um pixels) in pixels. The resolution
    tags and an ImageJ file's unit and spacing are carried over."""
    y = blurry[2]
    data = (y / y.max() * 50_000).astype(np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True,
                     resolution=(1 / 0.065, 1 / 0.065),
                     metadata={"unit": "\\u00B5m", "spacing": 0.3})
    tifffile.imwrite(tmp_path / "dpi.tif", data.astype(np.float32),
                     resolution=((300, 1), (150, 1)), resolutionunit="INCH")
    iio.imwrite(tmp_path / "in.png", data)
    for name, expected in (
            ("ij.tif", ((200, 13), (200, 13), 1, {"unit": "\\u00B5m",
                                                  "spacing": 0.3})),
            ("dpi.tif", ((300, 1), (150, 1), 2, {})),
            ("in.png", ((1, 1), (1, 1), 1, {}))):       # no pixel size
        out = tmp_path / f"out_{name}.tif"
        code, _, err = _run(capsys, "deblur", tmp_path / name, "-o", out,
                            "--model", model_dir, "--max-iter", 5)
        assert code == 0, err
        assert _pixel_size(out) == expected, name
    with tifffile.TiffFile(tmp_path / "out_ij.tif.tif") as tif:
        assert tif.is_imagej
    # an OME-TIFF (microscopes, Bio-Formats) records it in its OME metadata
    size = {"PhysicalSizeX": 0.065, "PhysicalSizeXUnit": "\u00b5m",
            "PhysicalSizeY": 0.08, "PhysicalSizeYUnit": "\u00b5m"}
    tifffile.imwrite(tmp_path / "in.ome.tif", data, ome=True,
                     metadata=dict(size, axes="YX"))
    code, _, err = _run(capsys, "deblur", tmp_path / "in.ome.tif", "-o",
                        tmp_path / "out.ome.tif", "--model", model_dir,
                        "--max-iter", 5)
    assert code == 0, err
    with tifffile.TiffFile(tmp_path / "out.ome.tif") as tif:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]["Pixels"]
    assert {k: pixels[k] for k in size} == size
    # a PNG output from a calibrated TIFF: as before
    code, _, err = _run(capsys, "deblur", tmp_path / "ij.tif", "-o",
                        tmp_path / "o.png", "--model", model_dir, "--max-iter", 5)
    assert code == 0, err
    assert iio.imread(tmp_path / "o.png").dtype == np.uint16


def test_write_image_carries_the_pixel_size(capsys, tmp_path):
    """ImageJ's unit in its own escape for a non-ASCII character; a dtype
    that an ImageJ TIFF cannot hold keeps the resolution tags only."""
    image = np.arange(12.0).reshape(3, 4)
    meta = {"resolution": ((20, 1), (20, 1)), "resolutionunit": 3,
            "imagej": {"unit": "\u00b5m"}}
    write_image(tmp_path / "u8.tif", image, np.uint8, meta)
    assert _pixel_size(tmp_path / "u8.tif") == ((20, 1), (20, 1), 3,
                                                {"unit": "\\u00B5m"})
    write_image(tmp_path / "f64.tif", image, np.float64, meta)
    assert _pixel_size(tmp_path / "f64.tif") == ((20, 1), (20, 1), 3, {})
    # an OME-TIFF's pixel size, in an OME-TIFF, whatever the dtype
    ome = {"PhysicalSizeX": 0.1, "PhysicalSizeXUnit": "nm"}
    for dtype in (np.uint8, np.float64):
        write_image(tmp_path / "o.tif", image, dtype, {"ome": ome})
        with tifffile.TiffFile(tmp_path / "o.tif") as tif:
            pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"][
                "Pixels"]
        assert pixels["PhysicalSizeX"] == 0.1
        assert pixels["PhysicalSizeXUnit"] == "nm"
        assert "PhysicalSizeY" not in pixels
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "f64.tif"), image)
    assert capsys.readouterr().err == ""


def test_deblur_errors(model_dir, blurry, capsys, tmp_path):
    y = blurry[2].astype(np.float32)
    good = tmp_path / "y.tif"
    tifffile.imwrite(good, y)

    def error(*argv):
        code, out, err = _run(capsys, "deblur", *argv, "--model", model_dir)
        assert code == 1, (out, err)
        return _one_error_line(err)

    assert "does not exist" in error(tmp_path / "missing.tif", "-o",
                                     tmp_path / "o.tif")
    (tmp_path / "y.bmp").write_bytes(b"BM")
    assert "unsupported image format '.bmp'" in error(tmp_path / "y.bmp", "-o",
                                                      tmp_path / "o.tif")
    assert "unsupported output image format '.jpg'" in error(good, "-o",
                                                             tmp_path / "o.jpg")
    before = good.read_bytes()
    assert "is the input file" in error(good, "-o", tmp_path / "." / "y.tif")
    assert good.read_bytes() == before
    (tmp_path / "dir.tif").mkdir()        # refused before the solve, not after
    assert "is a directory" in error(good, "-o", tmp_path / "dir.tif")
    assert "PNG cannot store" in error(good, "-o", tmp_path / "o.png")
    tifffile.imwrite(tmp_path / "small.tif", np.ones((32, 64), np.uint16))
    assert "smaller than the model's input" in error(tmp_path / "small.tif", "-o",
                                                     tmp_path / "o.tif")
    tifffile.imwrite(tmp_path / "mixed.tif", np.ones((32, 96), np.uint16))
    assert "pad the image" in error(tmp_path / "mixed.tif", "-o", tmp_path / "o.tif")
    bad = y.copy()
    bad[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad)
    assert "NaN or Inf" in error(tmp_path / "nan.tif", "-o", tmp_path / "o.tif")
    tifffile.imwrite(tmp_path / "zero.tif", np.zeros((64, 64), np.float32))
    assert "mean intensity" in error(tmp_path / "zero.tif", "-o", tmp_path / "o.tif")
    tifffile.imwrite(tmp_path / "stack.tif", np.ones((3, 64, 64), np.float32),
                     photometric="minisblack")
    assert "holds a stack of 3 images" in error(tmp_path / "stack.tif", "-o",
                                              tmp_path / "o.tif")
    tifffile.imwrite(tmp_path / "c2.tif", np.stack([y, y[::-1]], axis=-1),
                     photometric="minisblack", planarconfig="contig")
    assert "c2.tif holds a stack of 2 images (channels of a MINISBLACK" in error(
        tmp_path / "c2.tif", "-o", tmp_path / "o.tif")
    with tifffile.TiffWriter(tmp_path / "two.ome.tif", ome=True) as w:
        w.write(y, metadata={"axes": "YX"})          # two positions: the
        w.write(y[::-1], metadata={"axes": "YX"})    # second was dropped
    assert "two.ome.tif holds 2 separate images (series of shapes 64x64, " \
        "64x64)" in error(tmp_path / "two.ome.tif", "-o", tmp_path / "o.tif")
    np.save(tmp_path / "g5.npy", np.ones(5))
    message = error(good, "-o", tmp_path / "o.tif", "--gamma", tmp_path / "g5.npy")
    assert "K=6" in message and "another model" in message
    (tmp_path / "g.csv").write_text("1,2")
    assert "use .json or .npy" in error(good, "-o", tmp_path / "o.tif", "--gamma",
                                        tmp_path / "g.csv")
    (tmp_path / "g.json").write_text("{\"beta\": [1]}")
    assert "could not read gamma" in error(good, "-o", tmp_path / "o.tif",
                                           "--gamma", tmp_path / "g.json")
    assert not (tmp_path / "o.tif").exists()


def test_deblur_colour_png_becomes_grayscale(model_dir, blurry, capsys, tmp_path):
    y = blurry[2]
    grey = (y / y.max() * 200).astype(np.uint8)
    iio.imwrite(tmp_path / "rgb.png", np.stack([grey] * 3, axis=-1))
    code, _, err = _run(capsys, "deblur", tmp_path / "rgb.png", "-o",
                        tmp_path / "o.png", "--model", model_dir, "--max-iter", 5)
    assert code == 0 and "converted to grayscale" in err
    assert iio.imread(tmp_path / "o.png").shape == (64, 64)


def test_deblur_palette_with_a_display_lut_keeps_its_values(model_dir, blurry,
                                                             capsys, tmp_path):
    """An 8-bit image saved by Fiji with its Green LUT (a palette TIFF) came
    back uint16, 184 times brighter (the LUT's colours); now its pixel
    values are deblurred, in uint8, with a note."""
    y = blurry[2]
    data = (y / y.max() * 200).astype(np.uint8)
    green = np.zeros((3, 256), np.uint16)
    green[1] = np.arange(256) * 257
    tifffile.imwrite(tmp_path / "gfp.tif", data, photometric="palette",
                     colormap=green)
    code, _, err = _run(capsys, "deblur", tmp_path / "gfp.tif", "-o",
                        tmp_path / "o.tif", "--model", model_dir, "--max-iter", 5)
    assert code == 0, err
    assert "note: gfp.tif is an indexed image with a display LUT" in err
    assert "colour image" not in err
    out = tifffile.imread(tmp_path / "o.tif")
    assert out.dtype == np.uint8
    assert 0.8 < out.mean() / data.mean() < 1.25


# ---------------------------------------------------------------- train
TINY = """
n_images = 64
epochs = 2
batch_size = 16
width = 4
depth = 1
stem_stride = 2
num_workers = 0
pool_size = 200
n_test_images = 8
support_images = 256
output = "{output}"

[setting]
n_operators = 12
image_shape = [32, 32]
kernel_shape = [5, 5]
grid_shape = [4, 4]
n_components = 4
n_rays = 6
"""


def _interrupt_after_first_epoch(monkeypatch, within=""):
    """A Ctrl-C after the first checkpointed epoch of the trainings whose
    checkpoint directory contains ``within`` ("crop_network": the crop
    network's only)."""
    from skorch.callbacks import Checkpoint

    original = Checkpoint.on_epoch_end

    def on_epoch_end(self, net, **kwargs):
        original(self, net, **kwargs)
        if within in str(self.dirname) and len(net.history) == 1:
            raise KeyboardInterrupt        # skorch stops quietly, as on Ctrl-C

    monkeypatch.setattr(Checkpoint, "on_epoch_end", on_epoch_end)


def test_train_keeps_its_data_worker_under_spawn(capsys, tmp_path, monkeypatch):
    """The command's entry points guard their main module, so a config
    without num_workers gets a CPU data worker under every start method
    (a library call under spawn gets none: test_pretrained.py)."""
    import deepblur.pretrained
    from deepblur.pretrained import _train

    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs)
        raise KeyboardInterrupt("stopped by the test")

    monkeypatch.setattr(deepblur.pretrained, "train_regressor", spy)
    monkeypatch.setattr(_train.multiprocessing, "get_start_method",
                        lambda allow_none=False: "spawn")
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(output="spawned").replace(
        "num_workers = 0\n", 'device = "cpu"\n'))
    code, _, err = _run(capsys, "train", config, "--no-progress")
    assert code == 130 and "stopped by the test" in err
    assert calls[0]["num_workers"] == 1
    assert _train.default_num_workers(torch.device("cpu")) == 0
    # each training resolves its own default, for its own device: a crop
    # network on CUDA makes its data there whatever the main training's device
    from deepblur import _validation
    from deepblur.cli import _command_workers, _crop_network_params

    real = _validation.resolve_device
    monkeypatch.setattr(_validation, "resolve_device",
                        lambda d: torch.device("cuda") if d == "cuda" else real(d))
    assert _command_workers({"device": "cuda"}) == 0
    assert _command_workers({"device": "cpu", "num_workers": 0}) == 0
    crop = _crop_network_params({"crop_network": {}}, {"device": "cpu"}, "c.toml")
    assert crop["num_workers"] == 1 and crop["device"] == "cpu"
    crop = _crop_network_params({"crop_network": {}},
                                {"device": "cpu", "num_workers": 0}, "c.toml")
    assert crop["num_workers"] == 0          # the main config's, inherited


def test_train_interrupt_and_resume(capsys, tmp_path, monkeypatch):
    import deepblur.pretrained

    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(output="interrupted"))
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m)
        code, _, err = _run(capsys, "train", config, "--no-progress")
    assert code == 130 and "after 1 of 2 epochs" in err and "--resume" in err
    out_dir = tmp_path / "interrupted"
    assert not (out_dir / "model.json").exists()
    history = json.loads((out_dir / "checkpoints" / "history.json").read_text())
    assert len(history) == 1
    # a new run would overwrite the checkpoint: refused
    code, _, err = _run(capsys, "train", config, "--no-progress")
    assert code == 1 and "--resume" in _one_error_line(err)
    # --overwrite starts over: interrupted before its first epoch, it leaves
    # nothing that --resume would take for its own (the old run's epoch)
    with monkeypatch.context() as m:
        m.setattr(deepblur.pretrained, "train_regressor",
                  lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        code, _, err = _run(capsys, "train", config, "--overwrite", "--no-progress")
    assert code == 130 and "deepblur train: interrupted;" in err
    assert not (out_dir / "checkpoints" / "params.pt").exists()
    code, _, err = _run(capsys, "train", config, "--resume", "--no-progress")
    assert code == 1 and "no checkpoint" in _one_error_line(err)
    # (and again with the interrupted epoch, to go on as before)
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m)
        code, _, err = _run(capsys, "train", config, "--no-progress")
    assert code == 130
    code, out, err = _run(capsys, "train", config, "--resume", "--no-progress")
    assert code == 0, err
    assert "held-out relative operator error" in out
    history = json.loads((out_dir / "checkpoints" / "history.json").read_text())
    assert len(history) == 2 and history[0]["train_loss"] > 0
    resumed = load_model(out_dir)
    meta = json.loads((out_dir / "model.json").read_text())
    assert meta["module"]["width"] == 4 and meta["n_train_images"] == 64
    assert meta["module"]["input_norm"] == "laplacian"      # the default
    # the support check is calibrated on 256 fresh images: a share 0.001 of
    # them (here: none but the farthest) would be flagged
    assert "network: support_tolerance" in out and "256 fresh" in out
    assert resumed.regressor.support_tolerance == meta["support_tolerance"] > 0
    assert resumed.regressor.sampler is resumed.sampler
    assert resumed.basis.image_shape_ == (32, 32)

    # an uninterrupted run (JSON config) gives the same network
    (tmp_path / "tiny.json").write_text(json.dumps(dict(
        n_images=64, epochs=2, batch_size=16, width=4, depth=1, stem_stride=2,
        num_workers=0, pool_size=200, n_test_images=0, output="straight",
        setting=dict(n_operators=12, image_shape=[32, 32], kernel_shape=[5, 5],
                     grid_shape=[4, 4], n_components=4, n_rays=6))))
    code, out, err = _run(capsys, "train", tmp_path / "tiny.json", "--no-progress")
    assert code == 0, err
    straight = load_model(tmp_path / "straight")
    assert "4096 fresh" in out                  # the default number of images
    X = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(resumed.regressor.predict(X),
                               straight.regressor.predict(X), rtol=1e-5, atol=1e-6)

    # fine-tuning: start from that model (path relative to the config)
    (tmp_path / "tune.toml").write_text(TINY.format(output="tuned").replace(
        "n_test_images = 8", 'n_test_images = 0\ninit_model = "straight"').replace(
        "support_images = 256", "support_images = 0"))
    code, out, err = _run(capsys, "train", tmp_path / "tune.toml", "--no-progress")
    assert code == 0, err
    meta = json.loads((tmp_path / "tuned" / "model.json").read_text())
    assert meta["config"]["init_model"] == "straight"
    assert "support_tolerance" not in meta and "support_tolerance" not in out
    assert load_model(tmp_path / "tuned").regressor.support_tolerance is None


def test_train_ctrl_c_while_a_checkpoint_is_written(capsys, tmp_path, monkeypatch,
                                                    request):
    """A Ctrl-C between the checkpoint's files (weights written, history not)
    left epoch 1's weights beside an empty history: --resume trained epoch 1
    twice, silently. The checkpoint is now written whole, then training stops,
    and the resumed network is the uninterrupted one."""
    import os
    import signal

    from skorch.callbacks import Checkpoint

    # Python's own handler, whatever the suite was started with (a shell's
    # background job ignores SIGINT), and that one back afterwards
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))

    original = Checkpoint._save_params

    def save(self, f, net, f_name, log_name):
        if f_name == "f_history" and len(net.history) == 1:
            os.kill(os.getpid(), signal.SIGINT)      # Ctrl-C mid-checkpoint
        return original(self, f, net, f_name, log_name)

    quick = TINY.replace("n_test_images = 8", "n_test_images = 0").replace(
        "support_images = 256", "support_images = 0")
    (tmp_path / "sig.toml").write_text(quick.format(output="sig"))
    (tmp_path / "ref.toml").write_text(quick.format(output="ref"))
    with monkeypatch.context() as m:
        m.setattr(Checkpoint, "_save_params", save)
        code, _, err = _run(capsys, "train", tmp_path / "sig.toml", "--no-progress")
    assert code == 130 and "after 1 of 2 epochs" in err
    history = json.loads((tmp_path / "sig" / "checkpoints" / "history.json")
                         .read_text())
    assert len(history) == 1
    code, _, err = _run(capsys, "train", tmp_path / "sig.toml", "--resume",
                        "--no-progress")
    assert code == 0, err
    code, _, err = _run(capsys, "train", tmp_path / "ref.toml", "--no-progress")
    assert code == 0, err
    X = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(load_model(tmp_path / "sig").regressor.predict(X),
                               load_model(tmp_path / "ref").regressor.predict(X),
                               rtol=1e-5, atol=1e-6)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("failure", [KeyboardInterrupt, MemoryError])
def test_train_keeps_the_network_when_the_checks_after_it_fail(
        capsys, tmp_path, monkeypatch, failure):
    """The support calibration (or the held-out error) fails after training:
    the network is already saved, and --resume redoes only the checks."""
    import deepblur.pretrained

    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(output="out"))

    def fail(*args, **kwargs):
        raise failure()

    with monkeypatch.context() as m:
        m.setattr(deepblur.pretrained, "calibrate_support_tolerance", fail)
        if failure is KeyboardInterrupt:
            code, out, err = _run(capsys, "train", config, "--no-progress")
            assert code == 130
        else:
            with pytest.raises(MemoryError):
                main(["train", str(config), "--no-progress"])
            out, err = capsys.readouterr()
    assert "held-out relative operator error" in out
    assert ("the checks after training " + ("interrupted" if failure is
            KeyboardInterrupt else "failed (MemoryError)")) in err
    assert ("without its held-out error and a support_tolerance: rerun with "
            "--resume") in err
    saved = load_model(tmp_path / "out")          # the trained network is kept
    assert saved.regressor.support_tolerance is None
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert "support_tolerance" not in meta and "test_operator_error" not in meta
    X = np.random.default_rng(0).random((4, 32, 32)).astype(np.float32)
    code, out, err = _run(capsys, "train", config, "--resume", "--no-progress")
    assert code == 0, err
    history = json.loads((tmp_path / "out" / "checkpoints" /
                          "history.json").read_text())
    assert len(history) == 2                      # not trained again
    resumed = load_model(tmp_path / "out")
    assert resumed.regressor.support_tolerance > 0
    np.testing.assert_allclose(resumed.regressor.predict(X),
                               saved.regressor.predict(X), rtol=1e-6)
    meta = json.loads((tmp_path / "out" / "model.json").read_text())
    assert meta["support_tolerance"] > 0 and meta["test_operator_error"] > 0


TINY_CROP = """
[crop_network]
n_images = 64
epochs = 2
batch_size = 16
width = 4
depth = 1
stem_stride = 2
pool_size = 8
noise_std = [0.0, 0.04]
head_images = 64
head_batch_size = 32
compile = false
seed = 5
input_norm = "none"

[crop_network.blur_features]
window = 8
n_radial = 2
n_angular = 2
border = 3
n_segments = 2
"""


def test_train_also_trains_a_crop_network_and_resumes_it(capsys, tmp_path,
                                                         monkeypatch):
    """A [crop_network] table: the network for real images, beside the
    network; an interruption of it loses neither network's epochs."""

    config = tmp_path / "crop.toml"
    # bfloat16 training steps, for both networks (the crop network takes the
    # main config's)
    config.write_text('mixed_precision = "bf16"\n' + TINY.format(
        output="with_crop") + TINY_CROP)

    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m, "crop_network")
        code, out, err = _run(capsys, "train", config, "--no-progress")
    out_dir = tmp_path / "with_crop"
    assert code == 130 and "crop network" in err and "--resume" in err
    assert (out_dir / "model.json").exists()            # the network is saved
    assert not (out_dir / "crop_network.json").exists()
    crop_history = out_dir / "checkpoints" / "crop_network" / "history.json"
    assert len(json.loads(crop_history.read_text())) == 1
    code, out, err = _run(capsys, "train", config, "--resume", "--no-progress")
    assert code == 0, err
    assert "crop network, held-out windows" in out
    assert len(json.loads(crop_history.read_text())) == 2
    model = load_model(out_dir, estimator="crop_network")
    assert model.setting["boundary"] == "crop"
    assert model.noise_std == (0.0, 0.04)
    assert model.regressor.noise_level_ == pytest.approx(0.04)
    assert model.regressor.get_params()["module__input_norm"] is None  # "none"
    meta = json.loads((out_dir / "crop_network.json").read_text())
    assert meta["training"]["script"] == "deepblur train"
    assert meta["training"]["random_state"] == 5
    assert meta["training"]["num_workers"] == 0          # the main config's
    assert meta["training"]["mixed_precision"] == "bf16"  # the main config's
    main = json.loads((out_dir / "model.json").read_text())
    assert main["config"]["mixed_precision"] == "bf16"
    assert 0 < meta["test_errors"]["natural"]["operator"] < 1
    assert "crop network: support_tolerance" in out
    assert model.regressor.support_tolerance == meta["support_tolerance"] > 0
    # estimate takes it by default
    image = tmp_path / "y.tif"
    tifffile.imwrite(image, bundled_image("coffee", (32, 32)).astype(np.float32))
    code, out, err = _run(capsys, "estimate", image, "--model", out_dir)
    assert code == 0 and "(crop_network estimator)" in out, err


def test_train_resume_starts_a_crop_network_without_a_finished_epoch_over(
        capsys, tmp_path, monkeypatch):
    """A crop network killed while writing its first checkpoint (params.pt
    written, history.json not yet) is trained from the start by --resume:
    the check for a checkpoint left behind refused it."""
    config = tmp_path / "crop.toml"
    config.write_text(TINY.format(output="out") + TINY_CROP)
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m, "crop_network")
        code, out, err = _run(capsys, "train", config, "--no-progress")
    assert code == 130
    crop = tmp_path / "out" / "checkpoints" / "crop_network"
    (crop / "history.json").unlink()
    assert (crop / "params.pt").exists()
    code, out, err = _run(capsys, "train", config, "--resume", "--no-progress")
    assert code == 0, err
    assert len(json.loads((crop / "history.json").read_text())) == 2
    assert load_model(tmp_path / "out", estimator="crop_network") is not None


def test_train_resume_skips_the_finished_stages(capsys, tmp_path, monkeypatch):
    """--resume after an interruption in the crop network goes on from there:
    the network's head, the spectral regressor and their checks, saved by the
    interrupted run, are not fitted again; a changed key or a replaced file
    makes its stage run again, and a run without --resume forgets them."""

    import deepblur.pretrained

    config = tmp_path / "stages.toml"
    text = TINY.format(output="out").replace(
        "n_test_images = 8", "n_test_images = 8\nhead_images = 64\n"
        "head_batch_size = 32\nspectral_images = 200") + TINY_CROP
    config.write_text(text)

    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m, "crop_network")
        code, out, err = _run(capsys, "train", config, "--no-progress")
    assert code == 130 and "crop network" in err
    out_dir = tmp_path / "out"
    saved = {name: (out_dir / name).read_bytes() for name in (
        "model.safetensors", "model.json", "spectral.safetensors", "spectral.json")}
    stages = json.loads((out_dir / "checkpoints" / "stages.json").read_text())
    assert sorted(stages) == ["network", "spectral"]

    def never(*args, **kwargs):
        raise AssertionError("a finished stage was done again")

    with monkeypatch.context() as m:
        m.setattr(deepblur.pretrained, "add_feature_head", never)
        m.setattr(deepblur.pretrained, "train_spectral_regressor", never)
        code, out, err = _run(capsys, "train", config, "--resume", "--no-progress")
    assert code == 0, err
    assert "network: finished and saved in" in out
    assert "held-out relative operator error" not in out     # checks not redone
    assert "\nnetwork: support_tolerance" not in out
    assert "crop network: support_tolerance" in out
    assert "spectral regressor: finished and saved in" in out
    assert "crop network, held-out windows" in out
    for name, content in saved.items():
        assert (out_dir / name).read_bytes() == content, name
    crop = (out_dir / "crop_network.safetensors").read_bytes()
    # everything finished: a second --resume fits nothing
    with monkeypatch.context() as m:
        m.setattr(deepblur.pretrained, "add_feature_head", never)
        m.setattr(deepblur.pretrained, "train_spectral_regressor", never)
        m.setattr(deepblur.pretrained, "train_crop_network", never)
        code, out, err = _run(capsys, "train", config, "--resume", "--no-progress")
    assert code == 0, err
    assert "crop network: finished and saved in" in out
    assert (out_dir / "crop_network.safetensors").read_bytes() == crop
    # a key of the heads changed: the network's stage runs again, and the crop
    # network's (its branch takes the main head_images), the spectral not
    config.write_text(text.replace("head_images = 64", "head_images = 96"))
    with monkeypatch.context() as m:
        m.setattr(deepblur.pretrained, "train_spectral_regressor", never)
        code, out, err = _run(capsys, "train", config, "--resume", "--no-progress")
    assert code == 0, err
    assert "blur-statistics head: fitted on 96 fresh images" in out
    assert json.loads((out_dir / "model.json").read_text())[
        "feature_head"]["n_images"] == 96
    assert "then its branch on 96" in out
    # a replaced file: its stage runs again
    (out_dir / "spectral.json").write_text(saved["spectral.json"].decode() + " ")
    code, out, err = _run(capsys, "train", config, "--resume", "--no-progress")
    assert code == 0, err
    assert "spectral regressor, held-out windows" in out
    assert "network: finished and saved in" in out
    # a fresh run (--overwrite) forgets the record before it starts
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m, "crop_network")
        code, out, err = _run(capsys, "train", config, "--overwrite",
                              "--no-progress")
    assert code == 130
    assert "network: finished" not in out and "blur-statistics head: fitted" in out


def test_train_keeps_the_crop_network_when_its_calibration_fails(
        capsys, tmp_path, monkeypatch):
    import deepblur.pretrained

    config = tmp_path / "crop.toml"
    config.write_text(TINY.format(output="out") + TINY_CROP)
    original = deepblur.pretrained.calibrate_support_tolerance
    calls = []

    def second_fails(*args, **kwargs):         # the network's, then the crop's
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(deepblur.pretrained, "calibrate_support_tolerance", second_fails)
        code, out, err = _run(capsys, "train", config, "--no-progress")
    assert code == 130
    assert ("the crop network is saved in" in err
            and "without its held-out error and a support_tolerance" in err)
    out_dir = tmp_path / "out"
    assert load_model(out_dir).regressor.support_tolerance > 0
    assert load_model(out_dir, "crop_network").regressor.support_tolerance is None
    code, out, err = _run(capsys, "train", config, "--resume", "--no-progress")
    assert code == 0, err
    crop_history = out_dir / "checkpoints" / "crop_network" / "history.json"
    assert len(json.loads(crop_history.read_text())) == 2   # not trained again
    assert load_model(out_dir, "crop_network").regressor.support_tolerance > 0


@pytest.mark.parametrize("table, match", [
    ('[crop_network]\nwidth = 0\n', "crop_network: width must be a positive"),
    ('[crop_network]\ninput_norm = "whiten"\n',
     "crop_network: input_norm must be one of .* or 'none'"),
    ('[crop_network]\npoint_fraction = 1.0\n', "point_fraction must be in"),
    ('[crop_network]\nnoise_std = [0.05, 0.01]\n', "noise_std must be"),
    ('[crop_network]\nhead_images = -1\n', "head_images must be a positive"),
    ('[crop_network]\nboundary = "zero"\n', "unknown key.*boundary"),
    ('[crop_network]\nmixed_precision = "fp16"\n',
     "crop_network: mixed_precision must be 'bf16' or 'none'"),
    ('crop_network = 3\n', "must be a table"),
    # the branch is made after the network's training: checked before it
    ('[crop_network]\nblur_features = {window = 500}\n',
     "crop_network: window must be at most the images' smaller side"),
    ('[crop_network]\nblur_features = {windw = 16}\n',
     "crop_network: blur_features has an unknown parameter 'windw'"),
    ('[crop_network]\nblur_features = 3\n',
     "crop_network: blur_features must be None or a dict"),
])
def test_train_refuses_a_bad_crop_network_table_before_training(
        table, match, capsys, tmp_path):
    config = tmp_path / "bad.toml"
    text = TINY.format(output="bad")
    if table.startswith("["):
        text += table
    else:
        text = table + text
    config.write_text(text)
    code, out, err = _run(capsys, "train", config, "--no-progress")
    assert code == 1 and re.search(match, _one_error_line(err)), err
    assert "training:" not in out and not (tmp_path / "bad").exists()


def test_train_on_a_noise_range_then_demo(capsys, tmp_path):
    """setting.noise_std = [low, high]: trained, saved, loaded and simulated
    with noise drawn in that range (loading used to fail on the list); the
    training supervises the PSF moments too (saved without their head)."""
    config = tmp_path / "range.toml"
    config.write_text(TINY.format(output="ranged").replace(
        "epochs = 2", 'epochs = 1\nmoment_stage = 2\ninput_norm = "none"\n'
        'mixed_precision = "none"')
        + "noise_std = [0.005, 0.02]\n")
    code, _, err = _run(capsys, "train", config, "--no-progress")
    assert code == 0, err
    ranged = load_model(tmp_path / "ranged")
    assert ranged.noise_std == (0.005, 0.02)
    # "none" (TOML has no null): the image alone, without the Laplacian
    assert ranged.regressor.get_params()["module__input_norm"] is None
    code, out, err = _run(capsys, "demo", "--model", tmp_path / "ranged", "-o",
                          tmp_path / "demo.png", "--max-iter", "5")
    assert code == 0, err
    assert "noise std 0.005-0.02" in out


def test_train_noise_apart_from_the_settings_test_noise(capsys, tmp_path,
                                                        monkeypatch):
    """A top-level noise_std is the training noise (network, head, support
    calibration, model.noise_std) and leaves the setting's noise_std, the test
    noise of the held-out check and the demo, as it is; a bad one is refused
    before the training."""
    import deepblur.pretrained._train as train_module

    streams, calibration = [], []

    class Recording(train_module.BlurDataset):
        def __init__(self, *args, **kwargs):
            streams.append(kwargs["noise_std"])
            super().__init__(*args, **kwargs)

    def recording_calibration(*args, **kwargs):
        calibration.append(kwargs.get("noise_std"))
        return original_calibration(*args, **kwargs)

    original_calibration = train_module.support_calibration_images
    monkeypatch.setattr(train_module, "BlurDataset", Recording)
    monkeypatch.setattr(train_module, "support_calibration_images",
                        recording_calibration)
    config = tmp_path / "noise.toml"
    config.write_text("noise_std = [0.0, 0.04]\n" + TINY.format(
        output="trained_noisy").replace("n_test_images = 8",
                                        "n_test_images = 8\nhead_images = 64\n"
                                        "head_batch_size = 32"))
    code, out, err = _run(capsys, "train", config, "--no-progress")
    assert code == 0, err
    # the training's stream, the head's and the support calibration's
    assert streams == [(0.0, 0.04), (0.0, 0.04)]
    assert calibration == [(0.0, 0.04)]
    model = load_model(tmp_path / "trained_noisy")
    assert model.noise_std == (0.0, 0.04)
    assert model.setting["noise_std"] == 0.01            # DEFAULT_SETTING's
    assert model.regressor.noise_level_ == pytest.approx(0.04)
    meta = json.loads((tmp_path / "trained_noisy" / "model.json").read_text())
    assert meta["noise_std"] == [0.0, 0.04] and meta["config"]["noise_std"] == [
        0.0, 0.04]
    run = json.loads((tmp_path / "trained_noisy" / "checkpoints" / "run.json")
                     .read_text())
    assert run["noise_std"] == [0.0, 0.04]               # what the steps saw
    for bad in ("noise_std = [0.05, 0.01]", 'noise_std = "high"'):
        config.write_text(bad + "\n" + TINY.format(output="bad"))
        code, out, err = _run(capsys, "train", config, "--no-progress")
        assert code == 1 and "noise_std must be" in _one_error_line(err)
        assert "training:" not in out


def test_train_fits_the_blur_statistics_head(capsys, tmp_path, monkeypatch):
    """head_images: the network's blur-statistics branch is fitted after the
    training (as the shipped network's), saved and loaded with it; an
    interrupted head keeps the trained epochs for --resume; bad counts, and
    images too small for the statistics, are refused before any training."""
    import deepblur.pretrained

    original = deepblur.pretrained.add_feature_head

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt


    config = tmp_path / "head.toml"
    config.write_text(TINY.format(output="headed").replace(
        "n_test_images = 8", "n_test_images = 8\nhead_images = 256\n"
        "head_batch_size = 64"))
    monkeypatch.setattr(deepblur.pretrained, "add_feature_head", interrupted)
    code, out, err = _run(capsys, "train", config, "--no-progress")
    assert code == 130 and "while fitting the blur-statistics head" in err
    assert "--resume` fits the head again without retraining" in err
    assert not (tmp_path / "headed" / "model.json").exists()
    monkeypatch.setattr(deepblur.pretrained, "add_feature_head", original)
    code, out, err = _run(capsys, "train", config, "--resume", "--no-progress")
    assert code == 0, err
    assert "blur-statistics head: fitted on 256 fresh images" in out
    meta = json.loads((tmp_path / "headed" / "model.json").read_text())
    assert meta["feature_head"]["n_images"] == 256
    assert meta["module"]["blur_features"] == {}
    model = load_model(tmp_path / "headed")
    assert model.regressor.module_.feature_fc is not None
    for bad, match in (("head_images = -1", "head_images must be a non-negative"),
                       ("head_images = 8\nhead_batch_size = 0",
                        "head_batch_size must be a positive"),
                       ("head_batch_size = 0", "head_batch_size must be a positive"),
                       ("head_images = 8", "head_images needs blur statistics "
                        "of the setting's images (24, 24)")):
        text = TINY.format(output="bad").replace(
            "n_test_images = 8", f"n_test_images = 8\n{bad}")
        if "(24, 24)" in match:
            text = text.replace("image_shape = [32, 32]", "image_shape = [24, 24]")
        config.write_text(text)
        code, out, err = _run(capsys, "train", config, "--no-progress")
        assert code == 1 and match in _one_error_line(err)
        assert "training:" not in out


def test_train_on_a_folder_of_images_and_the_help_example(capsys, tmp_path):
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11)
                                  else "tomli")

    from deepblur.cli import _TRAIN_KEYS, build_parser
    from deepblur.pretrained import DEFAULT_SETTING

    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        iio.imwrite(tmp_path / "imgs" / f"{i}.png",
                    (rng.random((40, 48)) * 255).astype(np.uint8))
    config = tmp_path / "cfg" / "c.toml"
    config.parent.mkdir()
    config.write_text(TINY.format(output="../model").replace(
        "n_test_images = 8", 'n_test_images = 0\nimages = "../imgs"\nepochs = 1')
        .replace("epochs = 2\n", ""))
    code, out, err = _run(capsys, "train", config, "--no-progress")
    assert code == 0, err
    assert "held-out" not in out                         # n_test_images = 0
    assert load_model(tmp_path / "model").basis.image_shape_ == (32, 32)
    assert not (tmp_path / "model" / "spectral.json").exists()
    # the example config of `deepblur train --help` uses known keys
    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    example = tomllib.loads(sub.epilog.split(":\n", 1)[1].replace("\n  ", "\n"))
    assert set(example) <= set(_TRAIN_KEYS)
    assert set(example["setting"]) <= set(DEFAULT_SETTING)


def test_train_errors(capsys, tmp_path):
    def error(text, name="c.toml", *extra):
        path = tmp_path / name
        path.write_text(text)
        code, out, err = _run(capsys, "train", path, "--no-progress", *extra)
        assert code == 1, (out, err)
        return _one_error_line(err)

    assert "unknown key(s) epoch" in error("epoch = 3")
    assert "not valid TOML" in error("epochs = ")
    assert "use .toml or .json" in error("epochs: 3", "c.yaml")
    assert "not valid JSON" in error("{", "c.json")
    # the checks run before the (slow) default setting is fitted
    assert "criterion must be one of" in error('criterion = "l2"')
    assert "epochs must be a positive integer" in error('epochs = "ten"')
    assert "head must be" in error('head = "max"')
    assert "or 'none'" in error('input_norm = "whiten"')
    assert "overrides must be among" in error("[setting]\nn_layers = 3")
    # the setting's entries too (they failed after its fit, once a folder was
    # made), checked without fitting anything
    import deepblur.pretrained

    def no_fit(**_):
        raise AssertionError("the setting was fitted")

    real_fit = deepblur.pretrained.make_default_setting
    deepblur.pretrained.make_default_setting = no_fit
    try:
        for text, message in (
                ("noise_std = -1", "[setting]: noise_std must be >= 0"),
                ("alpha_range = [1.2, 0.8]", "0 < alpha_min < alpha_max"),
                ("image_mean = 0", "image_mean must be a positive float"),
                ('boundary = "reflect"', "boundary must be one of"),
                ("n_rays = 0", "n_rays must be a positive int"),
                ("n_components = 2.5", "n_components must be a positive int"),
                ('symmetry = "x"', "symmetry must be one of")):
            assert message in error("[setting]\n" + text)
        # CUDA where there is none, also with num_workers given (the device
        # was then resolved only after the setting's fit)
        with pytest.MonkeyPatch.context() as m:
            m.setattr(torch.cuda, "is_available", lambda: False)
            for extra in ("", "num_workers = 0\n", "num_workers = 1\n"):
                assert "CUDA is not available" in error(
                    'device = "cuda"\n' + extra)
    finally:
        deepblur.pretrained.make_default_setting = real_fit
    assert not (tmp_path / "deepblur_model").exists()
    assert "no checkpoint" in error("epochs = 1", "r.toml", "--resume")
    assert "is not a folder" in error('images = "nowhere"')
    assert "is not a model directory" in error('init_model = "nowhere"')
    assert "compile must be true or false" in error('compile = "yes"')
    assert "mixed_precision must be 'bf16' or 'none' (float32)" in error(
        'mixed_precision = "fp16"')
    from deepblur.cli import _config_mixed_precision  # JSON's null: float32
    assert _config_mixed_precision(None, "") is None
    assert "pool_size must be a positive integer" in error("pool_size = 0")
    assert "gammas_per_image must be a positive integer" in error(
        "gammas_per_image = 0")
    assert "moment_stage must be None or a stage" in error("moment_stage = 7")
    assert "moment_weight must be a non-negative" in error("moment_weight = -1")
    assert "support_images must be a non-negative integer" in error(
        "support_images = -1")
    assert "support_images must be a non-negative integer" in error(
        'support_images = "many"')
    # wrong types are errors, not tracebacks
    assert "output in c.toml must be a string (a path)" in error("output = 5")
    assert "images in c.toml must be a string (a path, or 'natural')" in error(
        "images = 3")
    assert "checkpoint_dir in c.toml must be a string" in error(
        "checkpoint_dir = [1]")
    assert "init_model in c.toml must be a string" in error("init_model = 2")
    assert "device in c.toml must be a torch device" in error('device = "gpu"')
    assert "device in c.toml must be a string" in error("device = 0")
    # the network's stages must fit in the setting's images (was: after the fit)
    assert "stem_stride=64 needs images of at least 512 pixels per side" in error(
        "stem_stride = 64")
    small = "[setting]\nimage_shape = [16, 16]\nkernel_shape = [5, 5]\n"
    assert "stem_stride=4 needs images of at least 32" in error(small)
    assert "crop_network: stem_stride=16 needs images of at least 128" in error(
        "stem_stride = 2\n" + small.replace(
            "[setting]", "[crop_network]\nstem_stride = 16\n\n[setting]"))
    assert "(seed) must be an integer from 0 to 2**31 - 1; got -1" in error(
        "seed = -1")
    # checked before the training, not after it
    assert "n_test_images must be a non-negative integer" in error(
        'n_test_images = "many"')
    # a UTF-8 byte-order mark (Windows Notepad's) is not a syntax error
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbf" + b'criterion = "l2"')
    code, _, err = _run(capsys, "train", tmp_path / "bom.toml")
    assert code == 1 and "criterion must be one of" in _one_error_line(err)
    code, _, err = _run(capsys, "train", tmp_path / "absent.toml")
    assert code == 1 and "does not exist" in _one_error_line(err)


# ---------------------------------------------------------------- basis
@pytest.fixture(scope="module")
def psf_files(tmp_path_factory):
    ops = make_random_operators(4, image_shape=(32, 32), kernel_shape=(7, 7),
                                grid_shape=(4, 4), random_state=0)
    folder = tmp_path_factory.mktemp("psfs")
    files = []
    for i, field in enumerate(ops.psf_fields):         # (4, 4, 7, 7) each
        stack = field.reshape(16, 7, 7)                 # row-major grid order
        if i % 2:
            path = folder / f"beads{i}.tif"
            tifffile.imwrite(path, stack.astype(np.float32))
        else:
            path = folder / f"beads{i}.npy"
            np.save(path, stack)
        files.append(path)
    return ops, files


def test_basis_fits_saves_and_plots(psf_files, capsys, tmp_path):
    ops, files = psf_files
    out = tmp_path / "basis"
    code, stdout, err = _run(capsys, "basis", *files, "--grid", 4, 4,
                             "--image-shape", 32, 32, "-K", 3, "-o", out)
    assert code == 0, err
    fields = np.stack([np.load(f) if f.suffix == ".npy" else tifffile.imread(f)
                       for f in files]).reshape(4, 4, 4, 7, 7)
    ref = ProductConvolutionBasis(3, image_shape=(32, 32), random_state=0).fit(
        fields.astype(np.float64))
    error = float(re.search(r"reconstruction error: ([\d.]+) %", stdout).group(1))
    assert error == pytest.approx(100 * ref.reconstruction_error_, abs=0.006)
    basis = load_basis(out)
    np.testing.assert_allclose(basis.gram_, ref.gram_, rtol=1e-6)
    assert basis.grid_shape_ == (4, 4) and basis.kernels_.shape == (3, 7, 7)
    assert basis.reconstruction_error_ == pytest.approx(ref.reconstruction_error_)
    assert (out / "components.png").stat().st_size > 1000
    meta = json.loads((out / "basis.json").read_text())
    assert meta["sources"] == [str(f) for f in files]
    # the 4 fields as one stack (one series) in one file: the same basis
    tifffile.imwrite(tmp_path / "fields.tif",
                     fields.reshape(4, 16, 7, 7).astype(np.float32))
    code, stdout, err = _run(capsys, "basis", tmp_path / "fields.tif", "--grid",
                             4, 4, "--image-shape", 32, 32, "-K", 3, "-o",
                             tmp_path / "basis1")
    assert code == 0, err
    assert stdout.startswith("4 PSF field(s)")
    assert np.allclose(load_basis(tmp_path / "basis1").gram_, ref.gram_, rtol=1e-6)


def test_basis_errors(psf_files, capsys, tmp_path):
    _, files = psf_files

    def error(*argv, grid=(4, 4), K=3):
        code, out, err = _run(capsys, "basis", *argv, "--grid", *grid,
                              "--image-shape", 32, 32, "-K", K, "-o",
                              tmp_path / "b")
        assert code == 1, (out, err)
        return _one_error_line(err)

    assert "needs 12" in error(*files, grid=(3, 4))
    assert "n_components=40" in error(*files, K=40)
    assert "does not exist" in error(tmp_path / "none.npy")
    (tmp_path / "p.txt").write_text("1")
    assert "use .npy or .tif" in error(tmp_path / "p.txt")
    np.save(tmp_path / "k5.npy", np.ones((16, 5, 5)))
    assert "same shape" in error(files[0], tmp_path / "k5.npy")
    np.save(tmp_path / "nan.npy", np.full((16, 7, 7), np.nan))
    assert "NaN or Inf" in error(tmp_path / "nan.npy")
    (tmp_path / "bad.npy").write_bytes(b"garbage")      # a damaged file
    assert "could not read bad.npy (ValueError" in error(tmp_path / "bad.npy")
    np.save(tmp_path / "obj.npy", np.array([None, 1]), allow_pickle=True)
    assert "could not read obj.npy" in error(tmp_path / "obj.npy")
    # fields appended by separate writes: one was read, the rest dropped
    with tifffile.TiffWriter(tmp_path / "appended.tif") as w:
        for f in files:
            w.write((np.load(f) if f.suffix == ".npy" else tifffile.imread(f))
                    .astype(np.float32))
    message = error(tmp_path / "appended.tif")
    assert "appended.tif holds 4 separate images (series of shapes 16x7x7, " \
        "16x7x7, 16x7x7, 16x7x7)" in message and "one PSF field" in message
    psf_tif = tmp_path / "psf.tif"
    tifffile.imwrite(psf_tif, np.load(files[0]).astype(np.float32))
    before = psf_tif.read_bytes()
    assert "is the input file" in error(psf_tif, "--figure", psf_tif)
    assert psf_tif.read_bytes() == before


@pytest.fixture(scope="module")
def large(setting, model):
    """A 96x136 image (larger than the 64x64 model input) and its tile grid."""
    u = bundled_image("coffee", (96, 136))
    from deepblur.tiling import stitched_operator, tile_grid

    grid = tile_grid(u.shape, (64, 64))
    gamma = np.tile(setting["gamma"][3], (grid.n_tiles, 1))
    op = stitched_operator(model.basis, gamma, grid)
    blurred = op.forward(torch.from_numpy(u)[None], torch.ones(gamma.shape[1],
                                                               dtype=torch.float64))
    return (blurred[0].numpy() * 1000).astype(np.float32), grid


def test_deblur_and_demo_take_inner_iter_and_tol(model_dir, blurry, large,
                                                 capsys, tmp_path, monkeypatch):
    """The solver's warning when the objective stalls says to raise
    inner_iter, the one at max_iter to increase max_iter or tol, which
    `deepblur deblur` and `deepblur demo` did not take (they printed those
    warnings): --inner-iter and --tol reach every solve, of a model-sized
    image, of a large one, blind or with --gamma, and the demo's."""
    import deepblur.estimators.deblur as estimators
    import deepblur.tiling as tiling
    from deepblur.solvers.tv import deblur

    seen = []

    def spy(*args, **kwargs):
        seen.append((kwargs["inner_iter"], kwargs["tol"]))
        return deblur(*args, **kwargs)

    monkeypatch.setattr(tiling, "deblur", spy)
    monkeypatch.setattr(estimators, "deblur", spy)
    _, _, y = blurry
    tifffile.imwrite(tmp_path / "y.tif", y.astype(np.float32))
    tifffile.imwrite(tmp_path / "big.tif", large[0])
    code, _, err = _run(capsys, "estimate", tmp_path / "big.tif", "--model",
                        model_dir, "-o", tmp_path / "g.json")
    assert code == 0, err
    for image, extra in (("y.tif", ()), ("y.tif", ("--boundary", "model")),
                         ("big.tif", ()),
                         ("big.tif", ("--gamma", tmp_path / "g.json"))):
        seen.clear()
        code, _, err = _run(capsys, "deblur", tmp_path / image, "-o",
                            tmp_path / "o.tif", "--model", model_dir,
                            "--max-iter", 2, "--inner-iter", 3, "--tol", 0.5,
                            *extra)
        assert code == 0, err
        assert seen and set(seen) == {(3, 0.5)}, (image, extra)
        (tmp_path / "o.tif").unlink()
    seen.clear()
    code, _, err = _run(capsys, "demo", "--model", model_dir, "-o",
                        tmp_path / "demo.png", "--max-iter", 2, "--inner-iter", 3,
                        "--tol", 0)
    assert code == 0, err
    assert seen and set(seen) == {(3, 0.0)}
    for command in (("deblur", tmp_path / "y.tif", "-o", tmp_path / "o.tif"),
                    ("demo", "-o", tmp_path / "demo2.png")):
        code, _, err = _run(capsys, *command, "--model", model_dir,
                            "--inner-iter", 0)
        assert code == 2 and "positive integer" in err
        for tol in (-1, "nan", "x"):
            code, _, err = _run(capsys, *command, "--model", model_dir,
                                "--tol", tol)
            assert code == 2 and "--tol: must be a non-negative number" in err


def test_estimate_and_deblur_large_images_by_tiles(model_dir, model, large, capsys,
                                                   tmp_path, monkeypatch):
    import deepblur.plotting
    from deepblur.pretrained._apply import _IMAGE_MEAN, training_gain
    from deepblur.tiling import deblur_large, estimate_tiles

    y, grid = large
    tifffile.imwrite(tmp_path / "big.tif", y)
    spacings = []
    comb = deepblur.plotting.dirac_comb
    monkeypatch.setattr(deepblur.plotting, "dirac_comb",
                        lambda shape, spacing: spacings.append(spacing)
                        or comb(shape, spacing))
    code, out, err = _run(capsys, "estimate", tmp_path / "big.tif", "--model",
                          model_dir, "-o", tmp_path / "g.json", "--figure",
                          tmp_path / "op.png")
    assert code == 0, err
    # the figure's PSFs do not overlap: 1.5 kernel widths apart at least
    assert spacings[0] >= int(1.5 * max(model.basis.kernel_shape_))
    assert f"{grid.n_tiles} tiles ({grid.shape[0]}x{grid.shape[1]})" in out
    saved = json.loads((tmp_path / "g.json").read_text())
    np.testing.assert_allclose(saved["basis_gram"], model.basis.gram_)
    other = dict(saved, basis_gram=(2 * model.basis.gram_).tolist())
    (tmp_path / "other.json").write_text(json.dumps(other))
    code, _, err = _run(capsys, "deblur", tmp_path / "big.tif", "-o",
                        tmp_path / "x.tif", "--model", model_dir, "--gamma",
                        tmp_path / "other.json")
    assert code == 1 and "estimated with a model of another basis" in err
    expected, _ = estimate_tiles(y, model.regressor, (64, 64),
                                 target_mean=_IMAGE_MEAN * training_gain(model))
    np.testing.assert_allclose(saved["gamma_tiles"], expected, rtol=1e-5)
    assert saved["row_starts"] == list(grid.row_starts)
    # each tile's distance to the model's support (no tolerance saved here)
    from deepblur.estimators._gamma import support_distances

    np.testing.assert_allclose(
        saved["support_distances"],
        support_distances(model.sampler, expected, model.basis.gram_)[1],
        rtol=1e-3, atol=1e-6)
    assert saved["support_tolerance"] is None
    assert "distance of the tiles' estimates" in out
    assert (tmp_path / "op.png").stat().st_size > 0
    # blind deblurring of the whole image is deblur_large, in the input's dtype
    code, out, err = _run(capsys, "deblur", tmp_path / "big.tif", "-o",
                          tmp_path / "o.tif", "--model", model_dir, "--max-iter",
                          "30")
    assert code == 0, err
    # the command's own advice once, not the library's BoundaryWarning too
    assert err.count("zero boundary") == 1, err
    restored = tifffile.imread(tmp_path / "o.tif")
    assert restored.dtype == np.float32 and restored.shape == y.shape
    ref = deblur_large(y, model, max_iter=30).restored
    np.testing.assert_allclose(restored, ref, rtol=1e-4, atol=1e-3 * y.max())
    # with the saved per-tile operators, solved in blocks under a memory bound
    code, out, err = _run(capsys, "deblur", tmp_path / "big.tif", "-o",
                          tmp_path / "o2.tif", "--model", model_dir, "--gamma",
                          tmp_path / "g.json", "--max-iter", "30", "--max-pixels",
                          "14000")
    assert code == 0, err
    blocks = tifffile.imread(tmp_path / "o2.tif")
    assert np.mean(np.abs(blocks - restored)) < 0.05 * np.mean(np.abs(restored))
    # --boundary and --lam reach the tiled solve; --lam is the weight for the
    # image scaled to mean 0.5 (the 1000x image solves as its [0, 1] version),
    # and the given tiles are rescaled to unit interior gain (the PSFs' mass)
    # with either boundary: the tiles' borders are inside the image
    from deepblur.tiling import deblur_stitched, tile_gains

    for boundary in ("unknown", "model"):
        code, out, err = _run(capsys, "deblur", tmp_path / "big.tif", "-o",
                              tmp_path / f"{boundary}.tif", "--model", model_dir,
                              "--gamma", tmp_path / "g.json", "--max-iter", "30",
                              "--lam", "800", "--boundary", boundary)
        assert code == 0, err
        gamma = np.asarray(saved["gamma_tiles"])
        gamma = gamma / tile_gains(model.basis, gamma, interior=True)[:, None]
        scale = _IMAGE_MEAN / y.astype(np.float64).mean()
        ref, _ = deblur_stitched(y * scale, model.basis, gamma, grid, lam=800.0,
                                 boundary=boundary, max_iter=30)
        np.testing.assert_allclose(tifffile.imread(tmp_path / f"{boundary}.tif"),
                                   ref / scale, rtol=1e-4, atol=1e-4 * y.max())
    border = np.ones(y.shape, dtype=bool)
    border[8:-8, 8:-8] = False
    unknown, zero = (tifffile.imread(tmp_path / f"{b}.tif")
                     for b in ("unknown", "model"))
    assert np.abs(zero - unknown)[border].mean() > 0.05 * y.mean()
    code, out, err = _run(capsys, "deblur", tmp_path / "big.tif", "-o",
                          tmp_path / "o3.tif", "--model", model_dir, "--max-iter",
                          "30", "--boundary", "model")
    assert code == 0, err
    np.testing.assert_allclose(
        tifffile.imread(tmp_path / "o3.tif"),
        deblur_large(y, model, max_iter=30, boundary="model").restored,
        rtol=1e-4, atol=1e-3 * y.max())


def test_large_image_errors(model_dir, large, capsys, tmp_path):
    y, _ = large
    tifffile.imwrite(tmp_path / "big.tif", y)

    def error(*argv):
        code, out, err = _run(capsys, *argv, "--model", model_dir)
        assert code == 1, (out, err)
        return _one_error_line(err)

    assert "--tile-stride must be at most" in error(
        "estimate", tmp_path / "big.tif", "--tile-stride", "65")
    np.save(tmp_path / "g.npy", np.ones(6))
    assert "with its tile grid" in error("deblur", tmp_path / "big.tif", "-o",
                               tmp_path / "o.tif", "--gamma", tmp_path / "g.npy")
    (tmp_path / "other.json").write_text(json.dumps(dict(
        gamma_tiles=[[1.0] * 6], image_shape=[64, 80], tile_shape=[64, 64],
        row_starts=[0], col_starts=[0, 16])))
    assert "estimated on a 64x80 image" in error(
        "deblur", tmp_path / "big.tif", "-o", tmp_path / "o.tif", "--gamma",
        tmp_path / "other.json")
    # the one gamma of a model-size image (it said: not a per-tile file
    # ('gamma_tiles'))
    (tmp_path / "rows.json").write_text(json.dumps([[1.0] * 6] * 4))
    assert "rows.json holds rows of coefficients without the tile grid" in error(
        "deblur", tmp_path / "big.tif", "-o", tmp_path / "o.tif", "--gamma",
        tmp_path / "rows.json")
    for one in ({"gamma": [1.0] * 6}, [1.0] * 6):
        (tmp_path / "one.json").write_text(json.dumps(one))
        assert "one.json holds one gamma, for an image of the model's input " \
               "size, not one per tile" in error(
                   "deblur", tmp_path / "big.tif", "-o", tmp_path / "o.tif",
                   "--gamma", tmp_path / "one.json")
    assert "too small for one solve" in error(
        "deblur", tmp_path / "big.tif", "-o", tmp_path / "o.tif", "--max-pixels",
        "100")
    # a per-tile file fixes the tiles: another --tile-stride was ignored
    code, _, err = _run(capsys, "estimate", tmp_path / "big.tif", "--model",
                        model_dir, "-o", tmp_path / "tiles.json")
    assert code == 0, err
    saved = json.loads((tmp_path / "tiles.json").read_text())
    stride = saved["row_starts"][1] - saved["row_starts"][0]
    assert "not tiles this far apart" in error(
        "deblur", tmp_path / "big.tif", "-o", tmp_path / "o.tif", "--gamma",
        tmp_path / "tiles.json", "--tile-stride", str(stride // 2))
    # ... the same stride is the same grid
    code, _, err = _run(capsys, "deblur", tmp_path / "big.tif", "-o",
                        tmp_path / "same.tif", "--model", model_dir, "--gamma",
                        tmp_path / "tiles.json", "--tile-stride", str(stride),
                        "--max-iter", "2")
    assert code == 0, err
    # a per-tile file for an image of the model's input size
    shape = tuple(load_model(model_dir).basis.image_shape_)
    tifffile.imwrite(tmp_path / "one.tif", y[:shape[0], :shape[1]])
    message = error("deblur", tmp_path / "one.tif", "-o", tmp_path / "o.tif",
                    "--gamma", tmp_path / "tiles.json")
    assert "one gamma per tile of a larger image" in message
    assert f"{y.shape[0]}x{y.shape[1]}" in message
    assert not (tmp_path / "o.tif").exists()
    # a .npy of the tiles: said to lack the grid deblur needs
    code, out, err = _run(capsys, "estimate", tmp_path / "big.tif", "--model",
                          model_dir, "-o", tmp_path / "tiles.npy")
    assert code == 0 and "without their tile grid" in err, err
    assert "one per tile of a larger image" in error(
        "deblur", tmp_path / "one.tif", "-o", tmp_path / "o.tif", "--gamma",
        tmp_path / "tiles.npy")


def test_blind_commands_warn_that_a_zero_boundary_model_is_unreliable(
        model_dir, model, blurry, capsys, tmp_path):
    tifffile.imwrite(tmp_path / "y.tif", blurry[2].astype(np.float32))
    assert model.setting["boundary"] == "zero"
    code, _, err = _run(capsys, "estimate", tmp_path / "y.tif", "--model", model_dir)
    assert code == 0 and "zero boundary" in err and "unreliable" in err
    np.save(tmp_path / "g.npy", blurry[1])
    code, _, err = _run(capsys, "deblur", tmp_path / "y.tif", "-o",
                        tmp_path / "o.tif", "--gamma", tmp_path / "g.npy",
                        "--max-iter", "5", "--model", model_dir)
    assert code == 0 and "zero boundary" not in err      # a known operator
    # a network recorded as trained on windows, in a zero-boundary setting
    import shutil

    windows = tmp_path / "windows"
    shutil.copytree(model_dir, windows)
    meta = json.loads((windows / "model.json").read_text())
    meta["training_boundary"] = "crop"
    (windows / "model.json").write_text(json.dumps(meta))
    code, _, err = _run(capsys, "estimate", tmp_path / "y.tif", "--model", windows)
    assert code == 0 and "zero boundary" not in err, err


def test_blind_commands_warn_about_a_much_noisier_image(model_dir, model, blurry,
                                                       capsys, tmp_path):
    from deepblur.pretrained._apply import training_gain

    u, gamma, y = blurry                    # mean about 1000, noise std 5
    clean, noisy = tmp_path / "clean.tif", tmp_path / "noisy.tif"
    tifffile.imwrite(clean, y.astype(np.float32))
    # ten times the training noise (the regressor's noise_level_, measured on
    # its training images), at the training mean 0.5 * gain (the
    # observations' mean, to which the image is scaled)
    sigma = 10 * model.regressor.noise_level_ * y.mean() / (
        0.5 * training_gain(model))
    tifffile.imwrite(noisy, (y + np.random.default_rng(2).normal(
        0, sigma, y.shape)).astype(np.float32))
    code, _, err = _run(capsys, "estimate", clean, "--model", model_dir)
    assert code == 0 and "noise" not in err, err
    code, _, err = _run(capsys, "estimate", noisy, "--model", model_dir)
    assert code == 0 and "1 of 1 images are over 3 times noisier" in err
    assert "NoisyImageWarning" not in err   # one "warning:" line, no traceback
    factor = float(re.search(r"\(median\), (\d+) times that", err).group(1))
    assert 9 <= factor <= 11                # the noise level is measured
    code, _, err = _run(capsys, "deblur", noisy, "-o", tmp_path / "o.tif",
                        "--max-iter", "5", "--model", model_dir)
    assert code == 0 and "times noisier" in err
    np.save(tmp_path / "g.npy", gamma)
    code, _, err = _run(capsys, "deblur", noisy, "-o", tmp_path / "o.tif",
                        "--gamma", tmp_path / "g.npy", "--max-iter", "5",
                        "--model", model_dir)
    assert code == 0 and "times noisier" not in err   # known operator


# ------------------------------------------------------------- --estimator
@pytest.fixture(scope="module")
def spectral_dir(model_dir, setting, tmp_path_factory):
    """The tiny model plus a spectral regressor (crop boundary) beside it."""
    import shutil

    from deepblur.pretrained import save_spectral, train_spectral_regressor

    directory = tmp_path_factory.mktemp("spectral")
    for name in ("model.safetensors", "model.json"):
        shutil.copy(model_dir / name, directory / name)
    pool = np.random.default_rng(0).random((16, 64, 64)) + 0.1
    spectral = train_spectral_regressor(setting, pool, n_images=200,
                                        batch_size=100, window=16, border=8)
    return save_spectral(directory, spectral, noise_std=(0.005, 0.05),
                         boundary="crop")


def test_estimator_auto_takes_the_spectral_regressor_for_real_images(
        spectral_dir, model_dir, blurry, large, capsys, tmp_path):
    _, _, y = blurry
    image = tmp_path / "y.tif"
    tifffile.imwrite(image, y.astype(np.float32))
    spectral = load_model(spectral_dir, estimator="spectral")
    code, out, err = _run(capsys, "estimate", image, "--model", spectral_dir, "-o",
                          tmp_path / "g.json")
    assert code == 0, err
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["estimator"] == "spectral" and "(spectral estimator)" in out
    expected, _ = estimate_gamma(spectral, y.astype(np.float32))
    np.testing.assert_allclose(data["gamma"], expected, rtol=1e-5)
    assert "zero boundary" not in err           # trained on windows: no warning
    # the network on request, with the warning about real images
    code, out, err = _run(capsys, "estimate", image, "--model", spectral_dir,
                          "--estimator", "network", "-o", tmp_path / "n.json")
    assert code == 0 and "zero boundary" in err and "--estimator spectral" in err
    assert json.loads((tmp_path / "n.json").read_text())["estimator"] == "network"
    # a directory without a spectral regressor: auto is the network ...
    code, out, err = _run(capsys, "estimate", image, "--model", model_dir)
    assert code == 0 and "(network estimator)" in out
    # ... and asking for the spectral one is a clear error
    code, _, err = _run(capsys, "estimate", image, "--model", model_dir,
                        "--estimator", "spectral")
    assert code == 1 and "spectral.safetensors" in _one_error_line(err)
    # tiles of a large image and blind deblurring use it too
    big, _ = large
    tifffile.imwrite(tmp_path / "big.tif", big)
    code, out, err = _run(capsys, "estimate", tmp_path / "big.tif", "--model",
                          spectral_dir, "-o", tmp_path / "t.json")
    assert code == 0, err
    assert json.loads((tmp_path / "t.json").read_text())["estimator"] == "spectral"
    code, out, err = _run(capsys, "deblur", tmp_path / "big.tif", "-o",
                          tmp_path / "big_out.tif", "--model", spectral_dir,
                          "--max-iter", "20")
    assert code == 0 and "zero boundary" not in err, err
    assert tifffile.imread(tmp_path / "big_out.tif").shape == big.shape
    code, out, err = _run(capsys, "deblur", image, "-o", tmp_path / "d.tif",
                          "--model", spectral_dir, "--max-iter", "30")
    assert code == 0 and "zero boundary" not in err, err


def test_estimator_auto_reads_the_networks_training_boundary(spectral_dir,
                                                             tmp_path):
    """``--estimator auto`` picks the spectral regressor for a network trained
    on zero-boundary images, by its own record first, then by the setting."""
    import shutil

    from deepblur.cli import _resolve_estimator

    for path in spectral_dir.iterdir():
        shutil.copy(path, tmp_path / path.name)
    meta = json.loads((tmp_path / "model.json").read_text())
    assert "training_boundary" not in meta      # trained on arrays: no record
    assert _resolve_estimator(tmp_path, "auto", "estimate") == "spectral"
    for setting, trained, expected in (("crop", None, "network"),
                                       ("crop", "zero", "spectral"),
                                       ("zero", "crop", "network")):
        meta["setting"]["boundary"] = setting
        meta.pop("training_boundary", None)
        if trained is not None:
            meta["training_boundary"] = trained
        (tmp_path / "model.json").write_text(json.dumps(meta))
        assert _resolve_estimator(tmp_path, "auto", "estimate") == expected
    assert _resolve_estimator(tmp_path, "auto", "demo") == "network"


def test_demo_with_the_spectral_regressor(spectral_dir, capsys, tmp_path):
    code, out, err = _run(capsys, "demo", "--model", spectral_dir, "--estimator",
                          "spectral", "-o", tmp_path / "f.png", "--max-iter", 50)
    assert code == 0, err
    assert "(spectral estimator)" in out and "crop boundary" in out
    assert "noise std 0.005-0.05" in out
    assert np.isfinite(_numbers(out)["operator_error"])
    # the demo's default stays the network (the paper's protocol)
    code, out, err = _run(capsys, "demo", "--model", spectral_dir, "-o",
                          tmp_path / "g.png", "--max-iter", 50)
    assert code == 0 and "(network estimator)" in out and "zero boundary" in out


@pytest.fixture(scope="module")
def crop_dir(spectral_dir, setting, tmp_path_factory):
    """The tiny model, its spectral regressor and a network trained on crops."""
    import shutil

    from deepblur.pretrained import save_crop_network

    directory = tmp_path_factory.mktemp("crop")
    for path in spectral_dir.iterdir():
        shutil.copy(path, directory / path.name)
    basis, sampler = setting["basis"], setting["sampler"]
    pool = list(np.random.default_rng(1).random((8, 96, 96)) + 0.1)
    X, y = make_blurred_images(pool, basis, sampler, 64, noise_std=(0.0, 0.05),
                               boundary="crop", random_state=1)
    torch.manual_seed(1)
    net = ResNetBlurRegressor(basis=basis, module__width=4, module__depth=1,
                              module__stem_stride=4, max_epochs=1, device="cpu",
                              module__output_bias=y.mean(0), lr=1e-3,
                              train_split=None, verbose=0).fit(X, y)
    return save_crop_network(directory, net, noise_std=(0.0, 0.05))


def test_estimator_auto_takes_the_crop_network_for_real_images(
        crop_dir, spectral_dir, blurry, large, capsys, tmp_path):
    _, _, y = blurry
    image = tmp_path / "y.tif"
    tifffile.imwrite(image, y.astype(np.float32))
    crop = load_model(crop_dir, estimator="crop_network")
    code, out, err = _run(capsys, "estimate", image, "--model", crop_dir, "-o",
                          tmp_path / "g.json")
    assert code == 0, err
    data = json.loads((tmp_path / "g.json").read_text())
    assert data["estimator"] == "crop_network"
    assert "(crop_network estimator)" in out
    expected, _ = estimate_gamma(crop, y.astype(np.float32))
    np.testing.assert_allclose(data["gamma"], expected, rtol=1e-5)
    assert "zero boundary" not in err           # trained on windows: no warning
    # the spectral regressor and the network stay available
    code, out, err = _run(capsys, "estimate", image, "--model", crop_dir,
                          "--estimator", "spectral")
    assert code == 0 and "(spectral estimator)" in out and "zero boundary" not in err
    code, out, err = _run(capsys, "estimate", image, "--model", crop_dir,
                          "--estimator", "network")
    assert code == 0 and "zero boundary" in err and "crop_network" in err
    # a directory without one: a clear error on request, spectral for auto
    code, _, err = _run(capsys, "estimate", image, "--model", spectral_dir,
                        "--estimator", "crop_network")
    assert code == 1 and "crop_network.safetensors" in _one_error_line(err)
    code, out, _ = _run(capsys, "estimate", image, "--model", spectral_dir)
    assert code == 0 and "(spectral estimator)" in out
    # tiles of a large image and blind deblurring use it too
    big, _ = large
    tifffile.imwrite(tmp_path / "big.tif", big)
    code, out, err = _run(capsys, "estimate", tmp_path / "big.tif", "--model",
                          crop_dir, "-o", tmp_path / "t.json")
    assert code == 0, err
    data = json.loads((tmp_path / "t.json").read_text())
    assert data["estimator"] == "crop_network"
    assert len(data["gamma_tiles"]) > 1
    code, out, err = _run(capsys, "deblur", image, "-o", tmp_path / "d.tif",
                          "--model", crop_dir, "--max-iter", "30")
    assert code == 0 and "zero boundary" not in err, err
    assert tifffile.imread(tmp_path / "d.tif").shape == y.shape
    # the demo keeps the network (the paper's protocol) unless asked
    code, out, err = _run(capsys, "demo", "--model", crop_dir, "-o",
                          tmp_path / "f.png", "--max-iter", 20)
    assert code == 0 and "(network estimator)" in out and "zero boundary" in out
    code, out, err = _run(capsys, "demo", "--model", crop_dir, "--estimator",
                          "crop_network", "-o", tmp_path / "c.png",
                          "--max-iter", 20)
    assert code == 0, err
    assert "(crop_network estimator)" in out and "crop boundary" in out
    assert "noise std 0-0.05" in out


def test_train_also_fits_a_spectral_regressor(capsys, tmp_path):
    config = tmp_path / "spectral.toml"
    config.write_text(TINY.format(output="with_spectral").replace(
        "n_test_images = 8", "n_test_images = 16\nspectral_images = 300\nseed = 3"))
    code, out, err = _run(capsys, "train", config, "--no-progress")
    assert code == 0, err
    assert "spectral regressor, held-out windows" in out
    model = load_model(tmp_path / "with_spectral", estimator="spectral")
    assert model.regressor.n_train_images_ >= 300
    assert model.setting["boundary"] == "crop"
    meta = json.loads((tmp_path / "with_spectral" / "spectral.json").read_text())
    assert meta["training"]["script"] == "deepblur train"
    # the config's seed seeds its data too (it was always 0)
    assert meta["training"]["random_state"] == 3
    assert 0 < meta["test_errors"]["natural"]["operator"] < 1
    # estimate takes it by default
    image = tmp_path / "y.tif"
    tifffile.imwrite(image, bundled_image("coffee", (32, 32)).astype(np.float32))
    code, out, err = _run(capsys, "estimate", image, "--model",
                          tmp_path / "with_spectral")
    assert code == 0 and "(spectral estimator)" in out, err
    # a new network of the same setting keeps it (the same basis: still valid)
    config.write_text(TINY.format(output="with_spectral"))
    code, out, err = _run(capsys, "train", config, "--no-progress", "--overwrite")
    assert code == 0, err
    assert "removed" not in out
    load_model(tmp_path / "with_spectral", estimator="spectral")
    # one of another setting removes the spectral regressor fitted in the old
    # basis (its config fits none), after the new network is saved
    config.write_text(TINY.format(output="with_spectral") + "random_state = 1\n")
    code, out, err = _run(capsys, "train", config, "--no-progress", "--overwrite")
    assert code == 0, err
    assert "removed spectral.safetensors and spectral.json: fitted in the basis" in out
    assert not (tmp_path / "with_spectral" / "spectral.json").exists()
    config.write_text(TINY.format(output="bad").replace(
        "n_test_images = 8", "spectral_images = -5"))
    code, _, err = _run(capsys, "train", config, "--no-progress")
    assert code == 1 and "spectral_images" in _one_error_line(err)


def test_train_keeps_the_spectral_regressor_when_its_test_fails(
        capsys, tmp_path, monkeypatch):
    import deepblur.cli

    config = tmp_path / "spectral.toml"
    config.write_text(TINY.format(output="out").replace(
        "n_test_images = 8", "n_test_images = 16\nspectral_images = 300"))

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(deepblur.cli, "_window_test_errors", fail)
    code, out, err = _run(capsys, "train", config, "--no-progress")
    assert code == 130
    assert ("the spectral regressor is saved in" in err and "without its "
            "held-out error" in err and "is fitted again" in err)
    model = load_model(tmp_path / "out", estimator="spectral")
    assert model.regressor.n_train_images_ >= 300
    meta = json.loads((tmp_path / "out" / "spectral.json").read_text())
    assert "test_errors" not in meta


def test_estimator_points_fits_an_image_of_beads(model_dir, setting, capsys,
                                                 tmp_path):
    """Beads in 16-bit counts: the point-source fit, no warning, a good direction."""
    from deepblur import PointSourceBlurEstimator
    from deepblur.datasets import blur_images, make_point_sources

    model = load_model(model_dir, estimator="points")
    assert isinstance(model.regressor, PointSourceBlurEstimator)
    basis, gamma = model.basis, setting["gamma"][2]
    u = make_point_sources(1, (64, 64), density=0.004, random_state=0)
    y = blur_images(u, gamma, basis, noise_std=1e-3, random_state=0)[0]
    image = tmp_path / "beads.tif"
    tifffile.imwrite(image, np.round(np.clip(y, 0, None) * 3000).astype(np.uint16))
    code, out, err = _run(capsys, "estimate", image, "--model", model_dir,
                          "--estimator", "points", "-o", tmp_path / "g.json")
    assert code == 0, err
    assert "(points estimator)" in out and "zero boundary" not in err
    data = json.loads((tmp_path / "g.json").read_text())
    errors = relative_errors(gamma[None], np.asarray(data["gamma"])[None],
                             basis.gram_)
    assert errors["direction"][0] < 0.05


def test_the_cpu_recipe_config_is_valid():
    """benchmarks/cpu_recipe.toml (the 15-minute CPU recipe) holds only keys
    and values that `deepblur train` accepts."""
    from deepblur.cli import _read_config
    from deepblur.pretrained import TRAINING_DEFAULTS
    from deepblur.pretrained._train import check_training_params

    config = _read_config(Path(__file__).parents[1] / "benchmarks"
                          / "cpu_recipe.toml")
    assert config["head_images"] == 32768 and config["width"] == 8
    check_training_params(**{k: config[k] for k in TRAINING_DEFAULTS
                             if k in config})
    # the training noise only: the setting keeps its test noise
    assert config["noise_std"] == [0.0, 0.02] and "setting" not in config


def test_train_checks_its_output_before_training(capsys, tmp_path):
    """An output holding a model (trained with another checkpoint_dir) was
    replaced without a word, an output that is a file failed after the
    training, and '~' in a config made a './~' directory."""
    config = tmp_path / "a.toml"
    config.write_text(TINY.format(output="out"))
    code, _, err = _run(capsys, "train", config, "--no-progress")
    assert code == 0, err
    before = (tmp_path / "out" / "model.safetensors").read_bytes()
    other = tmp_path / "b.toml"
    other.write_text('checkpoint_dir = "ckpt_b"\n' + TINY.format(output="out"))
    code, out, err = _run(capsys, "train", other, "--no-progress")
    assert code == 1 and "already holds a model: pass --overwrite" in err
    assert "training:" not in out
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == before
    (tmp_path / "file").write_text("")
    code, out, err = _run(capsys, "train", config, "-o", tmp_path / "file",
                          "--no-progress")
    assert code == 1 and "is a file" in _one_error_line(err)
    assert "training:" not in out


def test_train_resume_refuses_a_damaged_checkpoint(capsys, tmp_path,
                                                   monkeypatch):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY.format(output="out"))
    _interrupt_after_first_epoch(monkeypatch)
    code, _, _ = _run(capsys, "train", config, "--no-progress")
    assert code == 130
    monkeypatch.undo()
    (tmp_path / "out" / "checkpoints" / "params.pt").write_bytes(b"\x80\x04garbage")
    code, _, err = _run(capsys, "train", config, "--resume", "--no-progress")
    line = _one_error_line(err)
    assert code == 1 and "cannot be read" in line and "damaged" in line
    assert "weights_only" not in err


def test_train_overwrite_keeps_the_checkpoint_when_the_config_is_refused(
        capsys, tmp_path, monkeypatch):
    """--overwrite deleted the old run's checkpoint before the config was
    checked: a typo (a missing images folder, a setting refused by its fit)
    cost an interrupted run's epochs and trained nothing. The checkpoint now
    goes only when the new training starts."""
    quick = TINY.replace("n_test_images = 8", "n_test_images = 0").replace(
        "support_images = 256", "support_images = 0")
    config = tmp_path / "tiny.toml"
    config.write_text(quick.format(output="out"))
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m)
        code, _, _ = _run(capsys, "train", config, "--no-progress")
    assert code == 130
    checkpoint = tmp_path / "out" / "checkpoints"
    before = {f.name: f.read_bytes() for f in checkpoint.iterdir()}
    assert "params.pt" in before and "run.json" in before
    # a folder with an image smaller than the setting's (the training failed
    # on it, after the checkpoint was gone, as 'image 1 of shape (20, 20)')
    (tmp_path / "photos").mkdir()
    rng = np.random.default_rng(0)
    for name, shape in (("a.png", (40, 48)), ("b.png", (20, 40))):
        iio.imwrite(tmp_path / "photos" / name,
                    (rng.random(shape) * 255).astype(np.uint8))
    for typo, named in (('images = "no_such_folder"\n', "is not a folder"),
                        ('images = "photos"\n',
                         "1 of the 2 images in '" + str(tmp_path / "photos")
                         + "' are smaller than the setting's image_shape 32x32,"
                         " which the training crops from them: b.png (20x40)"),
                        (quick.format(output="out").replace(
                            "grid_shape = [4, 4]", "grid_shape = [40, 40]"),
                         "must not exceed image_shape")):
        bad = tmp_path / "bad.toml"
        bad.write_text(typo + quick.format(output="out") if typo.startswith(
            "images") else typo)
        code, out, err = _run(capsys, "train", bad, "--overwrite", "--no-progress")
        assert code == 1 and named in _one_error_line(err)
        assert "training:" not in out
        assert {f.name: f.read_bytes() for f in checkpoint.iterdir()} == before
    # the checkpoint is still the interrupted run's, and goes on
    code, _, err = _run(capsys, "train", config, "--resume", "--no-progress")
    assert code == 0, err
    assert len(json.loads((checkpoint / "history.json").read_text())) == 2


def test_train_interrupted_with_an_output_option_says_how_to_resume_it(
        capsys, tmp_path, monkeypatch):
    """The advice after a Ctrl-C was `deepblur train CONFIG --resume`
    whatever -o the run was given: followed, it looked for a checkpoint in
    the config's output and failed ('no checkpoint ... to resume from'). It
    now repeats -o, quoted for a shell (a config path with a space)."""
    import shlex

    quick = TINY.replace("n_test_images = 8", "n_test_images = 0").replace(
        "support_images = 256", "support_images = 0")
    folder = tmp_path / "my configs"
    folder.mkdir()
    config = folder / "tiny run.toml"
    config.write_text(quick.format(output="from_config"))
    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m)
        code, _, err = _run(capsys, "train", config, "-o", "given",
                            "--no-progress")
    assert code == 130
    advice = re.search(r"continue with `([^`]*)`", err).group(1)
    words = shlex.split(advice)
    assert words[:2] == ["deepblur", "train"] and "--resume" in words
    assert words[words.index("-o") + 1] == "given"
    code, _, err = _run(capsys, *words[1:], "--no-progress")
    assert code == 0, err
    assert not (folder / "from_config").exists()
    history = tmp_path / "given" / "checkpoints" / "history.json"
    assert len(json.loads(history.read_text())) == 2


def test_train_says_how_many_images_it_trains_on(capsys, tmp_path, monkeypatch):
    """n_images is rounded to whole batches (at least one per epoch), but the
    command printed the number asked for: 'training: 100 images' for 96, and
    'training: 8 images' for 32 (one batch of 16 in each of 2 epochs)."""
    import deepblur.pretrained

    def stop(*args, **kwargs):
        raise KeyboardInterrupt("stopped by the test")

    monkeypatch.setattr(deepblur.pretrained, "train_regressor", stop)
    for n_images, trained in ((100, 96), (8, 32), (64, 64)):
        config = tmp_path / f"n{n_images}.toml"
        config.write_text(TINY.format(output=f"out{n_images}").replace(
            "n_images = 64", f"n_images = {n_images}"))
        code, out, _ = _run(capsys, "train", config, "--no-progress")
        assert code == 130
        line = out.splitlines()[0]
        assert line.startswith(f"training: {trained} images")
        assert (f"(n_images {n_images} made whole batches of 16" in line) == (
            n_images != trained)


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"),
                                     KeyboardInterrupt()])
def test_outputs_are_written_whole_or_not_at_all(model_dir, blurry, capsys,
                                                 tmp_path, monkeypatch, failure):
    """The deblurred image and the gamma file were written in place: a full
    disk or a Ctrl-C while writing destroyed the previous output and left a
    truncated file. They are now written beside it and renamed when whole:
    the previous output stays as it was, and nothing else is left."""
    import imageio.v3 as iio_module
    import numpy.lib.format

    _, _, y = blurry
    image = tmp_path / "y.tif"
    tifffile.imwrite(image, y.astype(np.float32))

    def half_written(target, *args, **kwargs):       # a truncated file
        if hasattr(target, "write"):                  # np.save's open file
            target.write(b"\x93NUMPY half")
        else:
            Path(target).write_bytes(b"II*\x00 half")
        raise failure

    kept = {}
    for name in ("out.tif", "out.png", "g.json", "g.npy"):
        kept[name] = f"earlier result {name}".encode()
        (tmp_path / name).write_bytes(kept[name])
    runs = (("deblur", "out.tif", tifffile, "imwrite"),
            ("deblur", "out.png", iio_module, "imwrite"),
            ("estimate", "g.json", Path, "write_text"),
            ("estimate", "g.npy", numpy.lib.format, "write_array"))
    for command, name, module, function in runs:
        with monkeypatch.context() as m:
            m.setattr(module, function, half_written)
            args = [command, image, "-o", tmp_path / name, "--model", model_dir]
            if command == "deblur":
                args += ["--max-iter", 5, "--output-dtype", "input"]
                if name.endswith(".png"):
                    tifffile.imwrite(tmp_path / "y16.tif",
                                     (y / y.max() * 50_000).astype(np.uint16))
                    args[1] = tmp_path / "y16.tif"
            code, _, err = _run(capsys, *args)
        assert code == (130 if isinstance(failure, KeyboardInterrupt) else 1), err
        assert (tmp_path / name).read_bytes() == kept[name], name
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [*kept, "y.tif"] + (["y16.tif"] if (tmp_path / "y16.tif").exists()
                                else [])), name
    # and a write that succeeds replaces the file, keeping its mode (a new
    # file gets a new file's)
    import os

    (tmp_path / "g.json").chmod(0o640)
    code, _, err = _run(capsys, "estimate", image, "-o", tmp_path / "g.json",
                        "--model", model_dir)
    assert code == 0, err
    assert json.loads((tmp_path / "g.json").read_text())["K"] == 6
    assert (tmp_path / "g.json").stat().st_mode & 0o777 == 0o640
    code, _, err = _run(capsys, "estimate", image, "-o", tmp_path / "new.json",
                        "--model", model_dir)
    assert code == 0, err
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "new.json").stat().st_mode & 0o777 == 0o666 & ~umask
    # a read-only output was refused by the write; a rename would replace it
    # (checked by access(), which is True for root whatever the mode: faked)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(
        p).name == "g.json" else real_access(p, mode, **kw))
    before = (tmp_path / "g.json").read_bytes()
    code, _, err = _run(capsys, "estimate", image, "-o", tmp_path / "g.json",
                        "--model", model_dir)
    assert code == 1 and "is read-only: it is not replaced" in err
    assert (tmp_path / "g.json").read_bytes() == before


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs a named pipe")
def test_outputs_to_a_pipe_or_a_long_name_are_written(model_dir, blurry,
                                                      capsys, tmp_path):
    """The whole-or-nothing write renamed its temporary file over any path:
    over a named pipe (or, as root, over /dev/null itself: it became a plain
    file) instead of writing to it, and it refused a name of 250 bytes
    ('File name too long': the temporary name is longer)."""
    import stat

    _, _, y = blurry
    image = tmp_path / "y.tif"
    tifffile.imwrite(image, y.astype(np.float32))
    pipe = tmp_path / "pipe.json"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)   # (the writer waits
    try:                                                    # for none then)
        code, _, err = _run(capsys, "estimate", image, "-o", pipe,
                            "--model", model_dir)
        assert code == 0, err
        chunks = []
        while chunk := os.read(reader, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(reader)
    assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert json.loads(b"".join(chunks))["K"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.json", "y.tif"]
    long = tmp_path / ("g" * 245 + ".json")
    code, _, err = _run(capsys, "estimate", image, "-o", long, "--model",
                        model_dir)
    assert code == 0, err
    assert json.loads(long.read_text())["K"] == 6


def test_an_output_in_a_folder_that_takes_no_new_file_is_written(
        model_dir, blurry, capsys, tmp_path, monkeypatch):
    """A writable output in a folder without write permission (or an
    immutable one) was written in place; the whole-or-nothing write, which
    needs a temporary file beside it, refused it ('cannot write ... (Operation
    not permitted)'). It is written in place there again; a new file that the
    folder cannot take is still refused, naming the output."""
    import tempfile

    _, _, y = blurry
    image = tmp_path / "y.tif"
    tifffile.imwrite(image, y.astype(np.float32))
    (tmp_path / "g.json").write_text("earlier")
    real = tempfile.mkstemp

    def no_new_file(*args, dir=None, **kwargs):     # as the folder's mode does
        if Path(dir) == tmp_path:
            raise PermissionError(1, "Operation not permitted")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", no_new_file)
    code, _, err = _run(capsys, "estimate", image, "-o", tmp_path / "g.json",
                        "--model", model_dir)
    assert code == 0, err
    assert json.loads((tmp_path / "g.json").read_text())["K"] == 6
    code, _, err = _run(capsys, "estimate", image, "-o", tmp_path / "new.json",
                        "--model", model_dir)
    assert code == 1 and "Traceback" not in err
    assert (f"error: cannot write {str(tmp_path / 'new.json')!r} (Operation not "
            "permitted)") in err
    assert not (tmp_path / "new.json").exists()


def test_train_resume_with_another_crop_table_says_how_to_keep_the_network(
        capsys, tmp_path, monkeypatch):
    """A resume whose [crop_network] table changed was refused with 'train
    without resuming': in the command that is --overwrite, which trains the
    saved network again too. The error now names the crop network's
    checkpoint to delete; doing so trains the crop network alone over."""
    quick = TINY.replace("n_test_images = 8", "n_test_images = 0").replace(
        "support_images = 256", "support_images = 0")
    config = tmp_path / "crop.toml"
    config.write_text(quick.format(output="out") + TINY_CROP)
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m, "crop_network")
        code, _, _ = _run(capsys, "train", config, "--no-progress")
    assert code == 130
    network = (tmp_path / "out" / "model.safetensors").read_bytes()
    crop_checkpoint = tmp_path / "out" / "checkpoints" / "crop_network"
    config.write_text(quick.format(output="out") + TINY_CROP.replace(
        "epochs = 2", "epochs = 3"))
    code, _, err = _run(capsys, "train", config, "--resume", "--no-progress")
    line = _one_error_line(err)
    assert code == 1 and "epochs=2 (now 3)" in line
    assert f"delete {crop_checkpoint} and run `deepblur train" in line
    import shutil

    shutil.rmtree(crop_checkpoint)
    code, out, err = _run(capsys, "train", config, "--resume", "--no-progress")
    assert code == 0, err
    assert "network: finished and saved" in out
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == network
    assert len(json.loads((crop_checkpoint / "history.json").read_text())) == 3
    # the network's own checkpoint with other parameters: --overwrite
    config.write_text(quick.format(output="out").replace("epochs = 2",
                                                         "epochs = 3"))
    code, _, err = _run(capsys, "train", config, "--resume", "--no-progress")
    line = _one_error_line(err)
    assert code == 1 and "epochs=2 (now 3)" in line
    assert "--overwrite starts over" in line


def test_train_interrupted_in_the_spectral_regressor_says_how_to_go_on(
        capsys, tmp_path, monkeypatch):
    """A Ctrl-C while the spectral regressor was fitted (minutes at the
    shipped size) printed only 'interrupted': nothing said that the network
    was saved nor that --resume fits the regressor alone."""
    import deepblur.pretrained

    quick = TINY.replace("n_test_images = 8", "n_test_images = 0").replace(
        "support_images = 256", "support_images = 0")
    config = tmp_path / "spectral.toml"
    config.write_text("spectral_images = 300\n" + quick.format(output="out"))
    real = deepblur.pretrained.train_spectral_regressor
    with monkeypatch.context() as m:
        m.setattr(deepblur.pretrained, "train_spectral_regressor",
                  lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        code, _, err = _run(capsys, "train", config, "-o", tmp_path / "out",
                            "--no-progress")
    assert code == 130
    assert f"the network is saved in {tmp_path / 'out'}" in err
    assert f"-o {tmp_path / 'out'} --resume` fits the spectral regressor" in err
    network = (tmp_path / "out" / "model.safetensors").read_bytes()
    assert deepblur.pretrained.train_spectral_regressor is real
    code, out, err = _run(capsys, "train", config, "-o", tmp_path / "out",
                          "--resume", "--no-progress")
    assert code == 0, err
    assert "network: finished and saved" in out
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == network
    load_model(tmp_path / "out", estimator="spectral")


def test_train_checks_the_init_model_before_anything_is_removed(
        capsys, tmp_path, monkeypatch):
    """An init_model whose network differs from the config's (another width,
    K...) was found out only when its weights were loaded into the new
    network: after the setting's fit and after --overwrite had deleted the
    old run's checkpoint, with torch's state_dict message. It is now refused
    before, naming what differs."""
    quick = TINY.replace("n_test_images = 8", "n_test_images = 0").replace(
        "support_images = 256", "support_images = 0")
    (tmp_path / "base.toml").write_text(quick.format(output="base"))
    code, _, err = _run(capsys, "train", tmp_path / "base.toml", "--no-progress")
    assert code == 0, err
    config = tmp_path / "tune.toml"
    config.write_text(quick.format(output="out"))
    with monkeypatch.context() as m:
        _interrupt_after_first_epoch(m)
        code, _, _ = _run(capsys, "train", config, "--no-progress")
    assert code == 130
    checkpoint = tmp_path / "out" / "checkpoints"
    before = {f.name: f.read_bytes() for f in checkpoint.iterdir()}
    for change, named in (
            (("width = 4", "width = 8"), "width=4 (this training: 8)"),
            (("n_components = 4", "n_components = 3"),
             "K=4 (this setting: 3)")):
        config.write_text('init_model = "base"\n'
                          + quick.format(output="out").replace(*change))
        code, out, err = _run(capsys, "train", config, "--overwrite",
                              "--no-progress")
        line = _one_error_line(err)
        assert code == 1 and "the network of init_model" in line
        assert named in line and "training:" not in out
        assert {f.name: f.read_bytes() for f in checkpoint.iterdir()} == before
    # the same architecture fine-tunes, as before
    config.write_text('init_model = "base"\n' + quick.format(output="out"))
    code, _, err = _run(capsys, "train", config, "--overwrite", "--no-progress")
    assert code == 0, err
