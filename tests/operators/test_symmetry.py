import numpy as np
import pytest
import torch

from deepblur.operators.product_convolution import ProductConvolution, dense_matrix
from deepblur.operators.symmetry import N_DIHEDRAL, dihedral_maps, dihedral_transform


def _permutation(t, n):
    """The pixel permutation of element t on n x n images, as a matrix."""
    eye = np.eye(n * n).reshape(n * n, n, n)
    return dihedral_transform(eye, t).reshape(n * n, n * n).T


@pytest.mark.parametrize("t", range(N_DIHEDRAL))
def test_transform_and_inverse(t, rng):
    x = rng.random((2, 5, 5))
    y = dihedral_transform(x, t)
    np.testing.assert_array_equal(dihedral_transform(y, t, inverse=True), x)
    tensor = dihedral_transform(torch.from_numpy(x), t)
    np.testing.assert_array_equal(tensor.numpy(), y)
    np.testing.assert_array_equal(
        dihedral_transform(tensor, t, inverse=True).numpy(), x)
    P = _permutation(t, 5)
    np.testing.assert_array_equal(P @ x[0].ravel(), y[0].ravel())


def test_the_group_law():
    """Eight distinct elements; composing two is an element again."""
    x = np.arange(16.0).reshape(4, 4)
    images = [dihedral_transform(x, t) for t in range(N_DIHEDRAL)]
    assert len({im.tobytes() for im in images}) == N_DIHEDRAL
    for a in range(N_DIHEDRAL):
        for b in range(N_DIHEDRAL):
            both = dihedral_transform(dihedral_transform(x, b), a)
            assert any(np.array_equal(both, im) for im in images)


@pytest.mark.parametrize("boundary", ["zero", "periodic"])
@pytest.mark.parametrize("t", range(N_DIHEDRAL))
def test_conjugated_operator_is_the_transformed_components(t, boundary, rng):
    """T H[gamma] T^-1, as dense matrices, is the product-convolution with
    the transformed kernels and maps (odd kernels)."""
    n = 6
    e, f, gamma = rng.random((2, 3, 3)), rng.random((2, n, n)), rng.random(2)
    H = dense_matrix(ProductConvolution(e, f, boundary), gamma).numpy()
    P = _permutation(t, n)
    moved = ProductConvolution(dihedral_transform(e, t), dihedral_transform(f, t),
                               boundary)
    np.testing.assert_allclose(P @ H @ P.T, dense_matrix(moved, gamma).numpy(),
                               atol=1e-12)


@pytest.mark.parametrize("boundary", ["zero", "periodic"])
def test_maps_of_a_closed_basis_are_exact(boundary, rng):
    """A basis made of the orbits of two components under the group is
    closed: nothing lies outside its span, back inverts forward, and forward
    gives the dense T H T^-1 exactly."""
    n = 6
    e0, f0 = rng.random((2, 3, 3)), rng.random((2, n, n))
    e = np.concatenate([dihedral_transform(e0, t) for t in range(N_DIHEDRAL)])
    f = np.concatenate([dihedral_transform(f0, t) for t in range(N_DIHEDRAL)])
    forward, back, outside = dihedral_maps(e, f, boundary)
    assert outside.max() < 1e-10
    op = ProductConvolution(e, f, boundary)
    gamma = rng.random(len(e))
    H = dense_matrix(op, gamma).numpy()
    for t in range(N_DIHEDRAL):
        np.testing.assert_allclose(back[t] @ forward[t], np.eye(len(e)), atol=1e-8)
        P = _permutation(t, n)
        np.testing.assert_allclose(dense_matrix(op, forward[t] @ gamma).numpy(),
                                   P @ H @ P.T, atol=1e-9)


def test_maps_measure_what_lies_outside_an_open_span(rng):
    """One anisotropic component: its turned copy is partly outside the span,
    and the projection is the least-squares one (dense reference)."""
    n = 5
    e = np.zeros((1, 3, 3))
    e[0, 1] = [0.2, 0.5, 0.3]
    f = rng.random((1, n, n))
    _, back, outside = dihedral_maps(e, f)
    assert outside[0, 0] < 1e-12 and outside[1, 0] > 0.1
    H = dense_matrix(ProductConvolution(e, f), [1.0]).numpy().ravel()
    P = _permutation(1, n)
    moved = (P.T @ H.reshape(n * n, n * n) @ P).ravel()
    best = H @ moved / (H @ H)                   # least squares on the span
    assert back[1][0, 0] == pytest.approx(best, rel=1e-10)
    assert outside[1, 0] == pytest.approx(1 - best ** 2 * (H @ H) / (moved @ moved),
                                          rel=1e-10)



@pytest.mark.parametrize("boundary", ["zero", "periodic"])
@pytest.mark.parametrize("kernel_shape", [(3, 5), (7, 1)])
def test_maps_of_kernels_that_are_not_square(kernel_shape, boundary, rng):
    """Odd kernels that are not square were refused by dihedral_transform's
    'a quarter turn (t=1) needs square images; got shape (3, 5)': the maps
    are the least-squares projections of the dense T H T^-1 and T^-1 H T
    on the span, and outside their residual shares."""
    n = 6
    e, f = rng.random((3,) + kernel_shape), rng.random((3, n, n))
    forward, back, outside = dihedral_maps(e, f, boundary)
    op = ProductConvolution(e, f, boundary)
    A = np.stack([dense_matrix(op, row).numpy().ravel() for row in np.eye(3)], 1)
    gamma = rng.standard_normal(3)
    H = (A @ gamma).reshape(n * n, n * n)
    for t in range(N_DIHEDRAL):
        P = _permutation(t, n)
        for maps, M in ((forward, P @ H @ P.T), (back, P.T @ H @ P)):
            best = np.linalg.lstsq(A, M.ravel(), rcond=None)[0]
            np.testing.assert_allclose(maps[t] @ gamma, best, atol=1e-9)
        moved = np.stack([(P.T @ A[:, k].reshape(n * n, n * n) @ P).ravel()
                          for k in range(3)], 1)
        resid = moved - A @ np.linalg.lstsq(A, moved, rcond=None)[0]
        np.testing.assert_allclose(outside[t], (resid ** 2).sum(0)
                                   / (moved ** 2).sum(0), atol=1e-9)


def test_bad_input():
    with pytest.raises(ValueError, match="int from 0 to 7"):
        dihedral_transform(np.zeros((3, 3)), 8)
    with pytest.raises(ValueError, match="int from 0 to 7"):
        dihedral_transform(np.zeros((3, 3)), True)
    with pytest.raises(ValueError, match="needs square images"):
        dihedral_transform(np.zeros((3, 4)), 1)
    assert dihedral_transform(np.zeros((3, 4)), 2).shape == (3, 4)
    # a list was refused with 'list' object has no attribute 'shape', a 1-D
    # array with an IndexError
    np.testing.assert_array_equal(dihedral_transform([[1.0, 2.0], [3.0, 4.0]], 1),
                                  [[2.0, 4.0], [1.0, 3.0]])
    for x in (np.arange(3.0), torch.zeros(3)):
        with pytest.raises(ValueError, match="at least 2 dimensions"):
            dihedral_transform(x, 1)
    with pytest.raises(ValueError, match="odd sizes"):
        dihedral_maps(np.zeros((1, 2, 3)), np.ones((1, 4, 4)))
    with pytest.raises(ValueError, match="square maps"):
        dihedral_maps(np.zeros((1, 3, 3)), np.ones((1, 4, 5)))
    with pytest.raises(ValueError, match="same K"):
        dihedral_maps(np.zeros((2, 3, 3)), np.ones((1, 4, 4)))
