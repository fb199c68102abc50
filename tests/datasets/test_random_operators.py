"""Random operators of paper section 1.2.1."""

import numpy as np
import pytest
import torch

from deepblur.datasets import gaussian_kernel, make_random_operators
from deepblur.datasets.random_operators import random_maps


def test_gaussian_kernel_moments():
    k = gaussian_kernel((41, 41), (2.0, 4.0), np.pi / 6)
    assert k.sum() == pytest.approx(1.0)
    y, x = np.mgrid[-20:21, -20:21]
    cov = np.array([[np.sum(k * x * x), np.sum(k * x * y)],
                    [np.sum(k * x * y), np.sum(k * y * y)]])
    c, s = np.cos(np.pi / 6), np.sin(np.pi / 6)
    R = np.array([[c, -s], [s, c]])
    expected = R @ np.diag([4.0, 16.0]) @ R.T
    np.testing.assert_allclose(cov, expected, rtol=1e-3, atol=1e-3)


def test_generator_shapes_partition_and_seed():
    a = make_random_operators(4, image_shape=(32, 40), kernel_shape=(9, 7),
                              grid_shape=(4, 5), n_pairs=3, random_state=7)
    b = make_random_operators(4, image_shape=(32, 40), kernel_shape=(9, 7),
                              grid_shape=(4, 5), n_pairs=3, random_state=7)
    assert a.kernels.shape == (4, 3, 9, 7) and a.maps.shape == (4, 3, 32, 40)
    assert a.psf_fields.shape == (4, 4, 5, 9, 7)
    np.testing.assert_array_equal(a.psf_fields, b.psf_fields)
    np.testing.assert_allclose(a.maps.sum(axis=1), 1.0)
    assert (a.maps >= 0).all()
    # the PSF at a grid position is the map-weighted mix of the kernels
    r, c = a.positions[6]
    expected = np.einsum("i,ihw->hw", a.maps[1, :, r, c], a.kernels[1])
    np.testing.assert_allclose(a.psf_fields[1].reshape(20, 9, 7)[6], expected)


def test_maps_are_contrasted_and_smooth():
    ops = make_random_operators(3, image_shape=(64, 64), random_state=0,
                                kernel_shape=(5, 5), grid_shape=(4, 4))
    f = ops.maps[:, 0]
    assert f.max() > 0.8 and f.min() < 0.2           # contrasted
    assert np.abs(np.diff(f, axis=-1)).max() < 0.1     # smooth


@pytest.mark.parametrize(
    "kwargs, match",
    [({"n_operators": 0}, "n_operators"), ({"sigma_range": (0, 1)}, "sigma_range"),
     ({"kernel_shape": (0, 3)}, "kernel_shape"),
     ({"grid_shape": (64, 64), "image_shape": (32, 32)}, "grid_shape"),
     ({"n_pairs": 0}, "n_pairs"),
     ({"sigma_range": 2.0}, "sigma_range"),
     ({"sigma_range": (1, np.inf)}, "sigma_range"),
     ({"sigma_range": (2, 1)}, "sigma_range"),
     ({"field_scale": -1.0}, "field_scale"),
     ({"smoothing": np.nan}, "smoothing"),
     # booleans are no counts or scales (True was taken as 1 operator, and
     # n_pairs=True raised a raw TypeError)
     ({"n_operators": True}, "n_operators must be a positive int; got True"),
     ({"n_pairs": True}, "n_pairs must be a positive int; got True"),
     ({"n_pairs": 2.0}, "n_pairs must be a positive int"),
     ({"field_scale": True}, "field_scale")],
)
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_random_operators(**dict(dict(image_shape=(16, 16), kernel_shape=(5, 5),
                                          grid_shape=(4, 4)), **kwargs))


def test_unsmoothed_maps_are_allowed():
    ops = make_random_operators(2, image_shape=(16, 16), kernel_shape=(5, 5),
                                grid_shape=(4, 4), smoothing=0, random_state=0)
    assert np.isfinite(ops.maps).all()


@pytest.mark.parametrize("sigmas, angle, match", [
    ((0, 1), 0.0, "sigmas"), ((1, np.nan), 0.0, "sigmas"), (1.0, 0.0, "sigmas"),
    ((1, 1), np.inf, "angle"), ((1, 1), "a", "angle must be a finite number"),
    ((1, 1), None, "angle must be a finite number"),
    ((1, 1), np.array([0.3]), "angle must be a finite number")])
def test_gaussian_kernel_bad_parameters(sigmas, angle, match):
    with pytest.raises(ValueError, match=match):
        gaussian_kernel((5, 5), sigmas, angle)


@pytest.mark.parametrize("args, kwargs, match", [
    (((8, 8), 0), {}, "n_pairs must be a positive int; got 0"),
    (((8, 8), -1), {}, "n_pairs must be a positive int"),
    (((8, 8), True), {}, "n_pairs must be a positive int"),
    (((0, 8), 2), {}, "image_shape must be a positive int or a pair"),
    (((8, 8), 2), {"smoothing": -1}, "smoothing must be a non-negative number"),
    (((8, 8), 2), {"smoothing": np.nan}, "smoothing must be a non-negative number"),
    (((8, 8), 2), {"field_scale": np.inf}, "field_scale must be a non-negative"),
])
def test_random_maps_bad_parameters(args, kwargs, match):
    """random_maps checks what make_random_operators checks: n_pairs=0 gave
    numpy's 'need at least one array to stack', smoothing=-1 or NaN maps of
    zeros or unsmoothed indicators."""
    with pytest.raises(ValueError, match=match):
        random_maps(*args, np.random.default_rng(0), **kwargs)


def test_random_maps_valid_calls_unchanged():
    a = random_maps((12, 10), 3, np.random.default_rng(1), smoothing=1.5)
    b = random_maps(np.array([12, 10]), np.int64(3), np.random.default_rng(1),
                    smoothing=np.float64(1.5))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, 12, 10)
    np.testing.assert_allclose(a.sum(0), 1.0)


def test_random_maps_takes_a_seed_and_refuses_other_rngs():
    """An int rng raised 'int' object has no attribute 'standard_normal'."""
    np.testing.assert_array_equal(
        random_maps((12, 10), 2, 5), random_maps((12, 10), 2, np.random.default_rng(5)))
    np.testing.assert_array_equal(                     # a RandomState, as before
        random_maps((12, 10), 2, np.random.RandomState(3)),
        random_maps((12, 10), 2, np.random.RandomState(3)))
    for bad in (1.5, True, "0"):
        with pytest.raises(ValueError, match="rng must be a numpy Generator"):
            random_maps((12, 10), 2, bad)


def test_gaussian_kernel_takes_a_0d_angle():
    ref = gaussian_kernel((5, 5), (1.0, 2.0), 0.3)
    for angle in (np.float32(0.3), np.array(0.3),
                  torch.tensor(0.3, dtype=torch.float64)):
        np.testing.assert_allclose(gaussian_kernel((5, 5), (1.0, 2.0), angle), ref,
                                   rtol=1e-6)
