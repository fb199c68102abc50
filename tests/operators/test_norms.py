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
