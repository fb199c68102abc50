"""The relative Frobenius loss against explicit dense operator matrices."""

import numpy as np
import pytest
import torch

from deepblur.estimators.basis import ProductConvolutionBasis
from deepblur.nets.losses import RelativeFrobeniusLoss, relative_frobenius_error
from deepblur.operators.product_convolution import dense_matrix


@pytest.fixture
def basis(rng):
    return ProductConvolutionBasis.from_components(rng.random((3, 3, 3)),
                                                   rng.random((3, 6, 5)))


def _dense_relative(basis, g_true, g_pred):
    A = dense_matrix(basis.operator_, g_true).numpy()
    B = dense_matrix(basis.operator_, g_pred).numpy()
    return np.linalg.norm(A - B) / np.linalg.norm(A)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_loss_matches_dense_frobenius(basis, rng, reduction):
    g_true = rng.random((4, 3))
    g_pred = g_true + 0.3 * rng.standard_normal((4, 3))
    ref = np.array([_dense_relative(basis, a, b) for a, b in zip(g_true, g_pred,
                                                                  strict=True)])
    loss = RelativeFrobeniusLoss(basis.gram_, reduction=reduction)
    got = loss(torch.tensor(g_pred, dtype=torch.float32),
               torch.tensor(g_true, dtype=torch.float32)).numpy()
    expected = {"mean": ref.mean(), "sum": ref.sum(), "none": ref}[reduction]
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_error_function_float64_and_gradient(basis, rng):
    g_true = torch.tensor(rng.random((2, 3)))
    g_pred = torch.tensor(rng.random((2, 3)), requires_grad=True)
    err = relative_frobenius_error(g_true, g_pred, torch.tensor(basis.gram_), eps=0)
    ref = [_dense_relative(basis, a, b) for a, b in zip(
        g_true.numpy(), g_pred.detach().numpy(), strict=True)]
    np.testing.assert_allclose(err.detach().numpy(), ref, rtol=1e-10)
    err.sum().backward()
    # Gradient against central finite differences.
    G = torch.tensor(basis.gram_)
    h = 1e-6
    for i, k in [(0, 0), (1, 2)]:
        e = torch.zeros_like(g_pred)
        e[i, k] = h
        up = relative_frobenius_error(g_true, g_pred.detach() + e, G, eps=0).sum()
        dn = relative_frobenius_error(g_true, g_pred.detach() - e, G, eps=0).sum()
        np.testing.assert_allclose(g_pred.grad[i, k], (up - dn) / (2 * h),
                                   rtol=1e-5)


def test_squared_option(basis, rng):
    g = torch.tensor(rng.random((3, 3)), dtype=torch.float64)
    p = torch.tensor(rng.random((3, 3)), dtype=torch.float64)
    plain = RelativeFrobeniusLoss(basis.gram_, reduction="none").double()
    sq = RelativeFrobeniusLoss(basis.gram_, reduction="none", squared=True).double()
    torch.testing.assert_close(sq(p, g), plain(p, g) ** 2)


def test_loss_is_zero_at_truth_and_gradient_finite(basis):
    g = torch.tensor([[1.0, 2.0, 0.5]])
    pred = g.clone().requires_grad_(True)
    loss = RelativeFrobeniusLoss(basis.gram_)(pred, g)
    loss.backward()
    assert float(loss.detach()) < 1e-5
    assert torch.isfinite(pred.grad).all()


def test_loss_is_scale_invariant_in_pair(basis, rng):
    g = torch.tensor(rng.random((3, 3)), dtype=torch.float32)
    p = torch.tensor(rng.random((3, 3)), dtype=torch.float32)
    loss = RelativeFrobeniusLoss(basis.gram_)
    torch.testing.assert_close(loss(3 * p, 3 * g), loss(p, g))


def test_loss_moves_with_module(basis):
    loss = RelativeFrobeniusLoss(basis.gram_).to(torch.float64)
    assert loss.gram.dtype == torch.float64
    assert "gram" in loss.state_dict()


@pytest.mark.parametrize("gram, match", [
    (np.ones((2, 3)), "square"),
    (np.array([[1.0, 2.0], [0.0, 1.0]]), "symmetric"),
    (np.array([[np.nan, 0.0], [0.0, 1.0]]), "finite"),
])
def test_bad_gram(gram, match):
    with pytest.raises(ValueError, match=match):
        RelativeFrobeniusLoss(gram)


def test_bad_shapes_and_reduction(basis):
    loss = RelativeFrobeniusLoss(basis.gram_)
    with pytest.raises(ValueError, match=r"K=3"):
        loss(torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="shape"):
        loss(torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="reduction"):
        RelativeFrobeniusLoss(basis.gram_, reduction="max")
