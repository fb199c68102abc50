"""deepblur.features: the blur statistics against a loop-by-loop reference."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deepblur.features import blur_features, n_blur_features


def _bin(fy, fx, n_radial, n_angular):
    """Spectral bin of frequency (fy, fx); None for the DC term."""
    r = math.hypot(fy, fx)
    if r == 0:
        return None
    a = math.atan2(fy, fx) % math.pi
    rb = min(int(r / 0.5 * n_radial + 1e-9), n_radial - 1)
    ab = min(int(a / math.pi * n_angular + 1e-9), n_angular - 1)
    return rb * n_angular + ab


def _reference(img, window, n_radial, n_angular, border, n_segments):
    """The features of one image, by explicit loops in numpy (float64)."""
    img = np.asarray(img, dtype=np.float64)
    mean = img.mean()
    x = img / mean
    H, W = x.shape
    n = np.arange(window)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / (window - 1))   # symmetric Hann
    freq = np.fft.fftfreq(window)
    n_bins = n_radial * n_angular
    counts = np.zeros(n_bins)
    for fy in freq:
        for fx in freq:
            b = _bin(fy, fx, n_radial, n_angular)
            if b is not None:
                counts[b] += 1
    out = []
    for by in range(H // window):
        for bx in range(W // window):
            block = x[by * window:(by + 1) * window, bx * window:(bx + 1) * window]
            block = (block - block.mean()) * np.outer(hann, hann)
            power = np.abs(np.fft.fft2(block)) ** 2
            sums = np.zeros(n_bins)
            for i, fy in enumerate(freq):
                for j, fx in enumerate(freq):
                    b = _bin(fy, fx, n_radial, n_angular)
                    if b is not None:
                        sums[b] += power[i, j]
            used = counts > 0
            logp = np.log(sums[used] / counts[used] + 1e-8)
            out.extend(logp - logp.mean())
    if border:
        edges = [x[:border], x[::-1][:border], x.T[:border], x.T[::-1][:border]]
        for e in edges:
            seg = e.shape[1] // n_segments
            for row in e:
                out.extend(row[k * seg:(k + 1) * seg].mean()
                           for k in range(n_segments))
    out.extend([mean, math.log(mean)])
    return np.array(out)


@pytest.mark.parametrize("shape,spec", [
    ((32, 32), dict(window=16, n_radial=3, n_angular=4, border=4, n_segments=2)),
    ((40, 24), dict(window=8, n_radial=2, n_angular=3, border=3, n_segments=3)),
    ((16, 16), dict(window=16, n_radial=4, n_angular=2, border=0)),
])
def test_against_loop_reference(shape, spec):
    rng = np.random.default_rng(1)
    X = rng.random((2, *shape)) + 0.2
    F = blur_features(X, **spec)
    assert F.shape == (2, n_blur_features(shape, **spec))
    for i in range(2):
        ref = _reference(X[i], n_segments=spec.get("n_segments", 4), **{
            k: v for k, v in spec.items() if k != "n_segments"})
        np.testing.assert_allclose(F[i], ref, rtol=1e-9, atol=1e-9)


def test_a_blur_lowers_the_high_frequencies_of_its_blocks():
    rng = np.random.default_rng(0)
    u = rng.random((64, 64)) + 0.5
    # blur only the left half: its blocks lose high-frequency power
    k = np.exp(-0.5 * (np.arange(-4, 5) / 1.5) ** 2)
    k /= k.sum()
    from scipy.ndimage import convolve1d

    blurred = convolve1d(convolve1d(u, k, axis=0, mode="reflect"), k, axis=1,
                         mode="reflect")
    y = np.where(np.arange(64) < 32, blurred, u)
    F = blur_features(y, window=32, n_radial=4, n_angular=1, border=0)
    spectra = F[:-2].reshape(2, 2, 4)          # (block row, block col, radius)
    left, right = spectra[:, 0], spectra[:, 1]
    assert np.all(left[:, -1] < right[:, -1] - 2)        # highest band
    assert np.all(np.diff(left, axis=1) < 0)              # decays with radius


@settings(max_examples=20, deadline=None)
@given(scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**16))
def test_brightness_free_but_for_the_mean(scale, seed):
    X = np.random.default_rng(seed).random((2, 32, 32)) + 0.1
    F, Fs = blur_features(X, window=16), blur_features(scale * X, window=16)
    np.testing.assert_allclose(Fs[:, :-2], F[:, :-2], atol=1e-6)
    np.testing.assert_allclose(Fs[:, -2], scale * X.mean((1, 2)), rtol=1e-12)
    np.testing.assert_allclose(Fs[:, -1], np.log(scale * X.mean((1, 2))),
                               rtol=1e-12, atol=1e-12)


def test_inputs_batches_and_dtypes_agree():
    X = np.random.default_rng(2).random((5, 32, 32)).astype(np.float32) + 0.1
    F = blur_features(X, window=16)
    assert F.dtype == np.float64
    np.testing.assert_allclose(blur_features(X, window=16, batch_size=2), F)
    np.testing.assert_allclose(blur_features(torch.from_numpy(X), window=16), F)
    np.testing.assert_allclose(blur_features(X[0], window=16), F[0])
    flat = blur_features(np.full((32, 32), 0.3), window=16)    # flat: all finite
    n_spectra = n_blur_features((32, 32), window=16, border=0) - 2
    assert np.isfinite(flat).all()
    assert np.allclose(flat[:n_spectra], 0) and np.allclose(flat[n_spectra:-2], 1)


@pytest.mark.parametrize("kwargs,match", [
    (dict(window=64), "window must be at most"),
    (dict(window=2), "window must be an integer >= 4"),
    (dict(n_radial=0), "n_radial must be"),
    (dict(n_angular=1.5), "n_angular must be"),
    (dict(border=-1), "border must be"),
    (dict(border=20), "border"),
    (dict(batch_size=0), "batch_size"),
    # a raw int() error, or truncated silently
    (dict(batch_size="a"), "batch_size must be an integer >= 1; got 'a'"),
    (dict(batch_size=2.7), "batch_size must be an integer >= 1; got 2.7"),
    (dict(batch_size=True), "batch_size must be an integer >= 1"),
])
def test_bad_parameters(kwargs, match):
    X = np.ones((1, 32, 32))
    with pytest.raises(ValueError, match=match):
        blur_features(X, **kwargs)


def test_check_feature_params():
    """A branch's statistics checked before any work: their names, values
    (booleans are no integers) and, given the images' shape, its fit."""
    from deepblur.features import check_feature_params

    assert check_feature_params({}, (128, 128)) == n_blur_features((128, 128))
    assert type(check_feature_params({"window": np.int64(16)},
                                     np.array([64, 64]))) is int
    assert check_feature_params({"window": 500}) is None     # no shape given
    # None: the defaults; an int: a square
    assert check_feature_params(None, 128) == n_blur_features((128, 128))
    for bad, match in (({"window": 64}, "window must be at most"),
                       ({"border": True}, "border must be"),
                       ({"stride": True}, "stride must be"),
                       ({"n_segments": False}, "n_segments must be"),
                       ({"batch_size": 8}, "unknown parameter 'batch_size'"),
                       ([("window", 16)], "must be None or a dict")):
        with pytest.raises(ValueError, match=match):
            check_feature_params(bad, (32, 32))


def test_bad_images():
    with pytest.raises(ValueError, match="positive mean"):
        blur_features(np.stack([np.ones((32, 32)), -np.ones((32, 32))]))
    bad = np.ones((1, 32, 32))
    bad[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        blur_features(bad)
    with pytest.raises(ValueError, match=r"\(H, W\) or \(n, H, W\)"):
        blur_features(np.ones((1, 1, 32, 32)))


def test_overlapping_blocks():
    X = np.random.default_rng(3).random((2, 64, 64)) + 0.1
    F = blur_features(X, window=32, stride=16, border=0, n_radial=3, n_angular=2)
    assert F.shape == (2, n_blur_features((64, 64), window=32, stride=16,
                                          border=0, n_radial=3, n_angular=2))
    assert F.shape[1] == 9 * 6 + 2
    # the centre block (index 4 of the 3x3 grid) is the spectrum of the
    # centre crop (the spectra do not depend on the scale of the image)
    centre = blur_features(X[:, 16:48, 16:48], window=32, border=0, n_radial=3,
                           n_angular=2)
    np.testing.assert_allclose(F[:, 4 * 6:5 * 6], centre[:, :6], atol=1e-10)
    np.testing.assert_allclose(blur_features(X, window=32, stride=32),
                               blur_features(X, window=32))
    with pytest.raises(ValueError, match="stride"):
        blur_features(X, stride=0)


def test_empty_batch_gives_no_rows():
    """An empty batch: no rows of the right width (torch.cat of no pass
    raised before), in all input types."""
    for X in (np.zeros((0, 40, 52)), torch.zeros(0, 40, 52, dtype=torch.float32)):
        F = blur_features(X)
        assert F.shape == (0, n_blur_features((40, 52))) and F.dtype == np.float64
    F = blur_features(np.zeros((0, 32, 32)), window=16, border=0, stride=8)
    assert F.shape == (0, n_blur_features((32, 32), window=16, border=0, stride=8))
    with pytest.raises(ValueError, match="window must be at most"):
        blur_features(np.zeros((0, 16, 16)))


def test_complex_images_are_refused():
    """Complex images were cast to real (imaginary part dropped)."""
    X = np.random.default_rng(4).random((2, 32, 32)) + 0.1
    for bad in (X + 1j, torch.from_numpy(X + 0j)):
        with pytest.raises(ValueError, match="X must be real"):
            blur_features(bad, window=16)


@pytest.mark.parametrize("shape", [(64, 64, 3), (64,), "ab", (0, 64), (-5, 64),
                                   (64.0, 64), None])
def test_n_blur_features_refuses_a_bad_image_shape(shape):
    """(64, 64, 3) raised 'too many values to unpack', (-5, 64) a message on
    the window."""
    from deepblur.features import check_feature_params

    with pytest.raises(ValueError, match="image_shape must be a positive int "
                                         "or a pair of positive ints"):
        n_blur_features(shape)
    if shape is not None:
        with pytest.raises(ValueError, match="image_shape must be"):
            check_feature_params({}, shape)


def test_n_blur_features_shapes_and_numpy_batch_size():
    assert n_blur_features(64) == n_blur_features((64, 64)) == 290
    assert n_blur_features(np.array([64, 48])) == n_blur_features((64, 48))
    X = np.random.default_rng(5).random((3, 32, 32)) + 0.1
    np.testing.assert_array_equal(blur_features(X, window=16,
                                                batch_size=np.int64(2)),
                                  blur_features(X, window=16))
