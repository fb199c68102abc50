"""Closed-form Gram matrices against dense operator matrices."""

import numpy as np
import pytest
import torch

from deepblur.operators.gram import gram_matrix, operator_distance
from deepblur.operators.product_convolution import ProductConvolution, dense_matrix


def dense_gram(e, f, boundary):
    op = ProductConvolution(e, f, boundary)
    K = e.shape[0]
    mats = [dense_matrix(op, np.eye(K)[k]).numpy() for k in range(K)]
    return np.array([[np.sum(a * b) for b in mats] for a in mats]), op


@pytest.mark.parametrize("boundary", ["zero", "periodic"])
@pytest.mark.parametrize("kernel_shape", [(3, 3), (4, 5), (7, 2), (11, 11)])
def test_gram_matches_dense(boundary, kernel_shape, rng):
    H, W, K = 7, 9, 3
    if boundary == "periodic":
        kernel_shape = (min(kernel_shape[0], H), min(kernel_shape[1], W))
    e = rng.standard_normal((K,) + kernel_shape)
    f = rng.standard_normal((K, H, W))
    G_dense, _ = dense_gram(e, f, boundary)
    G = gram_matrix(e, f, boundary)
    np.testing.assert_allclose(G, G_dense, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(G, G.T)


@pytest.mark.parametrize("boundary", ["zero", "periodic"])
def test_operator_distance_is_frobenius_distance(boundary, rng):
    H, W, K = 6, 6, 3
    e, f = rng.standard_normal((K, 3, 3)), rng.standard_normal((K, H, W))
    G, op = dense_gram(e, f, boundary)
    a, b = rng.standard_normal(K), rng.standard_normal(K)
    A, B = dense_matrix(op, a).numpy(), dense_matrix(op, b).numpy()
    expected = np.linalg.norm(A - B) / np.linalg.norm(A)
    assert operator_distance(a, b, G) == pytest.approx(expected, rel=1e-10)
    assert operator_distance(a, b, G, relative=False) == pytest.approx(
        np.linalg.norm(A - B), rel=1e-10)
    # torch path: same value, differentiable
    ta = torch.tensor(a, requires_grad=True)
    d = operator_distance(ta, torch.tensor(b), torch.tensor(G))
    assert float(d.detach()) == pytest.approx(expected, rel=1e-10)
    d.backward()
    assert torch.isfinite(ta.grad).all()


def test_operator_distance_batched(rng):
    G = np.diag([1.0, 4.0])
    a = rng.standard_normal((5, 2))
    d = operator_distance(a, np.zeros((5, 2)), G)
    np.testing.assert_allclose(d, np.ones(5))


@pytest.mark.parametrize("tensors", [False, True])
def test_operator_distance_refuses_complex_inputs(tensors):
    """Complex coefficients or Gram matrices lost their imaginary part with
    only numpy's ComplexWarning (torch's UserWarning), as the operators and
    gram_matrix refuse them."""
    a, b, G = np.array([1.0, 0.0]), np.zeros(2), np.eye(2)
    if tensors:
        a, b = torch.tensor(a), torch.tensor(b)
    for args, name in (((a + 1j, b, G), "gamma_a"), ((a, b + 1j, G), "gamma_b"),
                       ((a, b, G + 1j), "gram")):
        with pytest.raises(ValueError, match=f"{name} must be real"):
            operator_distance(*args)


def test_gram_rejects_unknown_boundary():
    with pytest.raises(ValueError, match="boundary"):
        gram_matrix(np.ones((1, 3, 3)), np.ones((1, 4, 4)), "mirror")


def test_operator_distance_tensors_keep_the_widest_float_dtype():
    """Integer gamma (tensor, list or array beside a tensor) is not truncated
    (nor the Gram matrix to gamma_a's integer dtype), nor a float64 gamma
    rounded to a float32 gamma's dtype; the tensors decide the dtype."""
    G = np.array([[0.4, 0.1], [0.1, 0.3]])        # entries below 1
    expected = operator_distance(np.array([1.0, 0.0]), np.array([0.5, 0.5]), G)
    for a, b in ((torch.tensor([1, 0]), torch.tensor([0.5, 0.5])),
                 ([1, 0], torch.tensor([0.5, 0.5])),
                 (np.array([1, 0]), torch.tensor([0.5, 0.5])),
                 (torch.tensor([True, False]), torch.tensor([0.5, 0.5])),
                 (torch.tensor([1, 0]), torch.tensor([0, 1]))):
        d = operator_distance(a, b, G)
        assert d.dtype == torch.float32
        if b.is_floating_point():
            assert float(d) == pytest.approx(expected, rel=1e-6)
    assert float(operator_distance(torch.tensor([1, 0]), torch.tensor([0, 1]), G)
                 ) == pytest.approx(operator_distance([1.0, 0], [0, 1.0], G),
                                    rel=1e-6)
    d = operator_distance(torch.tensor([1, 0]), torch.tensor([0.5, 0.5],
                                                             dtype=torch.float64), G)
    assert d.dtype == torch.float64 and float(d) == pytest.approx(expected,
                                                                  rel=1e-12)
    a = torch.tensor([1.0, 1.0], dtype=torch.float32)
    b = torch.tensor([1.0, 1.0 + 1e-9], dtype=torch.float64)
    d = operator_distance(a, b, G, relative=False)
    assert d.dtype == torch.float64 and float(d) == pytest.approx(
        np.sqrt(0.3) * 1e-9, rel=1e-6)
    # float32 everywhere stays float32 (the training losses' dtype)
    a32 = torch.tensor([1.0, 0.0], requires_grad=True)
    d32 = operator_distance(a32, torch.tensor([0.5, 0.5]),
                            torch.tensor(G, dtype=torch.float32))
    assert d32.dtype == torch.float32
    d32.backward()
    assert a32.grad is not None and torch.isfinite(a32.grad).all()


@pytest.mark.parametrize("boundary", ["zero", "periodic"])
@pytest.mark.parametrize(
    "kernels, maps, match",
    [
        (np.ones((2, 3, 3)), np.ones((3, 8, 8)), "same number of components"),
        (np.ones((3, 3, 3)), np.ones((2, 8, 8)), "same number of components"),
        (np.full((1, 3, 3), np.nan), np.ones((1, 8, 8)), "kernels must contain only"),
        (np.ones((1, 3, 3)), np.full((1, 8, 8), np.inf), "maps must contain only"),
        (np.ones((3, 3)), np.ones((1, 8, 8)), "kernels must have 3 dimensions"),
        (np.ones((1, 3, 3)), np.ones((8, 8)), "maps must have 3 dimensions"),
        (np.zeros((0, 3, 3)), np.zeros((0, 8, 8)), "kernels must be non-empty"),
        # maps of no pixel: a Gram matrix of 0 (zero boundary) or a
        # 'RuntimeError: ZeroDivisionError' (periodic)
        (np.ones((1, 3, 3)), np.ones((1, 0, 8)), "maps must be non-empty"),
        (np.ones((1, 3, 3)), np.ones((1, 8, 0)), "maps must be non-empty"),
    ],
)
def test_gram_checks_the_family_as_the_operator_does(boundary, kernels, maps,
                                                     match):
    """Not a family, no Gram matrix: 2 kernels with 3 maps gave a wrong 2x2
    matrix silently (periodic), NaN kernels a NaN matrix."""
    with pytest.raises(ValueError, match=match):
        ProductConvolution(kernels, maps, boundary)
    with pytest.raises(ValueError, match=match):
        gram_matrix(kernels, maps, boundary)
    with pytest.raises(ValueError, match=match):
        gram_matrix(torch.from_numpy(kernels), torch.from_numpy(maps), boundary)


def test_gram_refuses_complex_families():
    with pytest.raises(ValueError, match="kernels must be real"):
        gram_matrix(np.ones((1, 3, 3)) + 1j, np.ones((1, 4, 4)))
    with pytest.raises(ValueError, match="maps must be real"):
        gram_matrix(np.ones((1, 3, 3)), torch.ones(1, 4, 4, dtype=torch.complex64))
