import numpy as np
import pytest
import torch

from deepblur.operators.gradient import (
    GRADIENT_NORM_SQUARED_BOUND,
    gradient,
    gradient_adjoint,
)
from deepblur.operators.norms import power_iteration


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 5, 7), (3, 24, 24), (2, 1, 9)])
def test_adjoint_is_exact(shape):
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(shape, generator=gen, dtype=torch.float64)
    p = torch.randn(shape[:1] + (2,) + shape[1:], generator=gen, dtype=torch.float64)
    lhs = (gradient(u) * p).sum()
    rhs = (u * gradient_adjoint(p)).sum()
    assert abs(float(lhs - rhs)) <= 1e-12 * max(1.0, abs(float(lhs)))


def test_adjoint_matches_dense_transpose():
    h, w = 4, 5
    eye = torch.eye(h * w, dtype=torch.float64).reshape(-1, h, w)
    D = gradient(eye).reshape(h * w, -1).T  # (2hw, hw)
    eye2 = torch.eye(2 * h * w, dtype=torch.float64).reshape(-1, 2, h, w)
    DT = gradient_adjoint(eye2).reshape(2 * h * w, -1).T  # (hw, 2hw)
    np.testing.assert_array_equal(DT.numpy(), D.T.numpy())


def test_forward_differences_neumann_boundary():
    u = torch.arange(12, dtype=torch.float64).reshape(1, 3, 4) ** 2
    g = gradient(u)
    np.testing.assert_array_equal(g[0, 0, :-1], (u[0, 1:] - u[0, :-1]).numpy())
    np.testing.assert_array_equal(g[0, 1, :, :-1], (u[0, :, 1:] - u[0, :, :-1]))
    assert torch.all(g[0, 0, -1] == 0) and torch.all(g[0, 1, :, -1] == 0)


def test_constant_image_has_zero_gradient_and_leading_dims():
    u = torch.full((2, 3, 6, 5), 4.0)
    g = gradient(u)
    assert g.shape == (2, 3, 2, 6, 5)
    assert torch.all(g == 0)
    assert gradient_adjoint(g).shape == u.shape


def test_norm_below_bound():
    x0 = torch.zeros(1, 32, 32, dtype=torch.float64)
    sigma = power_iteration(gradient, gradient_adjoint, x0, max_iter=500, tol=1e-9)
    assert 7.5 < float(sigma[0]) ** 2 <= GRADIENT_NORM_SQUARED_BOUND


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_preserved_input_untouched(dtype):
    u = torch.randn(2, 6, 6, dtype=dtype)
    u0 = u.clone()
    g = gradient(u)
    assert g.dtype == dtype and gradient_adjoint(g).dtype == dtype
    assert torch.equal(u, u0)


@pytest.mark.cuda
def test_adjoint_on_cuda():
    u = torch.randn(2, 8, 9, device="cuda", dtype=torch.float64)
    p = torch.randn(2, 2, 8, 9, device="cuda", dtype=torch.float64)
    lhs = (gradient(u) * p).sum()
    rhs = (u * gradient_adjoint(p)).sum()
    assert abs(float(lhs - rhs)) <= 1e-12 * max(1.0, abs(float(lhs)))
