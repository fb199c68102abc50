"""Power iteration against closed forms and numpy's SVD."""

import numpy as np
import pytest
import torch

from deepblur.operators.norms import power_iteration
from deepblur.operators.product_convolution import ProductConvolution, dense_matrix


def test_diagonal_closed_form():
    d = torch.tensor([[5.0, 1.0, 0.1], [0.3, 2.0, 0.2]], dtype=torch.float64)
    sigma = power_iteration(lambda x: d * x, lambda y: d * y,
                            torch.zeros(2, 3, dtype=torch.float64), max_iter=500,
                            tol=1e-14)
    np.testing.assert_allclose(sigma.numpy(), [5.0, 2.0], rtol=1e-8)


@pytest.mark.parametrize("boundary", ["zero", "periodic"])
def test_product_convolution_norm_matches_svd(boundary, rng, device):
    K, H, W = 3, 8, 8
    op = ProductConvolution(rng.random((K, 3, 3)), rng.random((K, H, W)), boundary)
    g = torch.from_numpy(rng.random((2, K))).to(device)
    sigma = power_iteration(lambda x: op.forward(x, g), lambda y: op.adjoint(y, g),
                            torch.zeros(2, H, W, dtype=torch.float64, device=device),
                            max_iter=1000, tol=1e-12)
    for i in range(2):
        ref = np.linalg.norm(dense_matrix(op, g[i].cpu().numpy()).numpy(), 2)
        assert float(sigma[i]) == pytest.approx(ref, rel=1e-6)
        assert float(sigma[i]) <= ref * (1 + 1e-9)   # approaches from below


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_iter=0), "max_iter must be a positive int; got 0"),
    (dict(max_iter=-5), "max_iter must be a positive int"),
    (dict(max_iter=2.5), "max_iter must be a positive int"),
    (dict(max_iter=True), "max_iter must be a positive int"),
    (dict(max_iter="10"), "max_iter must be a positive int"),
    (dict(tol=float("nan")), "tol must be a finite, non-negative float"),
    (dict(tol=float("inf")), "tol must be a finite, non-negative float"),
    (dict(tol=-1e-3), "tol must be a finite, non-negative float"),
    (dict(tol="1e-5"), "tol must be a finite, non-negative float"),
])
def test_bad_iteration_parameters(kwargs, match):
    """max_iter <= 0 returned a norm of 0 (on which a step size divides),
    2.5 a raw TypeError, a NaN tol was accepted."""
    A = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=match):
        power_iteration(lambda x: x @ A.T, lambda y: y @ A,
                        torch.zeros(1, 2, dtype=torch.float64), **kwargs)


def test_one_iteration_and_zero_tol():
    A = torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64))
    x0 = torch.zeros(1, 2, dtype=torch.float64)
    one = power_iteration(lambda x: x @ A.T, lambda y: y @ A, x0,
                          max_iter=np.int64(1))
    assert 0 < float(one[0]) <= 3.0
    exact = power_iteration(lambda x: x @ A.T, lambda y: y @ A, x0, tol=0)
    assert float(exact[0]) == pytest.approx(3.0, rel=1e-12)
