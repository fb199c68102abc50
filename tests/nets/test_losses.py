"""The relative Frobenius loss against explicit dense operator matrices."""

import numpy as np
import pytest
import torch

from deepblur.estimators.basis import ProductConvolutionBasis
from deepblur.nets.losses import (
    PSFMomentLoss,
    RelativeFrobeniusLoss,
    psf_moment_fields,
    relative_frobenius_error,
)
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



@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_half_and_mixed_precision_coefficients(dtype):
    """The quadratic forms were computed in the predictions' dtype: in
    float16 those of a Gram matrix like a 128 x 128 basis's (diagonal about
    1e4) overflowed to inf, and the loss of the first row was 0 (finite /
    inf) instead of 0.085; targets of another dtype than the predictions
    raised torch's 'expected scalar type Float but found Double'."""
    G = torch.tensor([[2e4, 5e3], [5e3, 1e4]], dtype=torch.float64)
    g_true = torch.tensor([[2.0, 1.0], [1.5, 0.5]], dtype=torch.float64)
    g_pred = torch.tensor([[1.8, 1.2], [1.5, 0.4]], dtype=torch.float64)
    d = g_true - g_pred
    ref = torch.sqrt(torch.einsum("nk,kl,nl->n", d, G, d)
                     / torch.einsum("nk,kl,nl->n", g_true, G, g_true))
    loss = RelativeFrobeniusLoss(G, reduction="none")
    pred = g_pred.to(dtype).requires_grad_(True)
    for target in (g_true.to(dtype), g_true.float(), g_true):
        got = loss(pred, target)
        # the coefficients' own rounding (bfloat16: 8 bits) bounds the agreement
        rtol = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-6)
        np.testing.assert_allclose(got.detach().double().numpy(), ref.numpy(),
                                   rtol=rtol)
        assert got.dtype == torch.promote_types(
            torch.promote_types(dtype, target.dtype), torch.float32)
    got.sum().backward()
    assert pred.grad.dtype == dtype and torch.isfinite(pred.grad).all()


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


def test_complex_inputs_are_refused(rng):
    """A complex Gram matrix, kernels, maps or gamma samples lost their
    imaginary part with only numpy's ComplexWarning; complex coefficients
    raised torch's 'clamp is not supported for complex types'."""
    G = np.eye(2)
    with pytest.raises(ValueError, match="gram must be real"):
        RelativeFrobeniusLoss(G + 1j)
    g = torch.ones(1, 2)
    for args, name in (((g + 1j, g), "gamma_pred"), ((g, g + 1j), "gamma_true")):
        with pytest.raises(ValueError, match=f"{name} must be real"):
            RelativeFrobeniusLoss(G)(*args)
    kernels, maps = rng.random((2, 3, 3)), rng.random((2, 4, 4))
    samples = rng.random((5, 2))
    for args, name in (((kernels + 1j, maps, samples), "kernels"),
                       ((kernels, maps + 1j, samples), "maps"),
                       ((kernels, maps, samples + 1j), "gamma_samples")):
        with pytest.raises(ValueError, match=f"{name} must be real"):
            PSFMomentLoss(*args)


@pytest.mark.parametrize("kernels, maps, match", [
    (np.ones((2, 0, 3)), np.ones((2, 4, 4)), "kernels must be non-empty"),
    (np.ones((2, 3, 3)), np.ones((2, 0, 4)), "maps must be non-empty"),
    (np.full((2, 3, 3), np.nan), np.ones((2, 4, 4)),
     "kernels must contain only finite"),
])
def test_moments_of_empty_or_non_finite_families_are_refused(kernels, maps, match):
    """As the operators refuse them (f5e9f9b): kernels of no pixel gave
    moment fields of 0 without a word, maps of no pixel a PSFMomentLoss with
    NaN offsets that failed in torch's adaptive_avg_pool2d at its first
    call, NaN kernels NaN targets."""
    with pytest.raises(ValueError, match=match):
        psf_moment_fields(kernels, maps)
    with pytest.raises(ValueError, match=match):
        PSFMomentLoss(kernels, maps, np.ones((5, 2)))


@pytest.mark.parametrize("eps", [-1e-3, np.nan, np.inf, "1e-3", True, None])
def test_bad_eps_is_refused(basis, eps):
    """A negative or NaN eps made the loss of a perfect prediction NaN, a
    string was read as its number, None raised float()'s TypeError."""
    with pytest.raises(ValueError, match="eps must be a finite, non-negative"):
        RelativeFrobeniusLoss(basis.gram_, eps=eps)
    assert float(RelativeFrobeniusLoss(basis.gram_, eps=0)(
        torch.ones(1, 3), 2 * torch.ones(1, 3))) == pytest.approx(0.5)


@pytest.mark.parametrize("eps", [-1e-3, np.nan, "1e-3", True])
def test_relative_frobenius_error_refuses_bad_eps_and_complex_gram(eps):
    """The function behind the loss took what the loss refuses: a negative
    or NaN eps gave NaN for a perfect prediction, and a complex Gram matrix
    lost its imaginary part with only torch's UserWarning."""
    g = torch.tensor([[3.0, 4.0]])
    with pytest.raises(ValueError, match="eps must be a finite, non-negative"):
        relative_frobenius_error(g, g, torch.eye(2), eps=eps)
    with pytest.raises(ValueError, match="gram must be real"):
        relative_frobenius_error(g, g, torch.eye(2) * (1 + 1j))


@pytest.mark.parametrize("eps", [np.array(0.25), torch.tensor(0.25),
                                 np.float32(0.25), 1])
def test_eps_may_be_any_real_scalar(eps):
    """A 0-d array or tensor eps, read by float() before, was refused
    ('eps must be a finite, non-negative float; got tensor(0.2500)') once
    eps was checked."""
    loss = RelativeFrobeniusLoss(torch.eye(2), eps=eps)
    assert loss.eps == float(eps)
    g, p = torch.tensor([[3.0, 4.0]]), torch.tensor([[3.0, 3.0]])
    # the mean of G's diagonal is 1: eps is added under both square roots
    expected = np.sqrt((1 + float(eps)) / (25 + float(eps)))
    assert float(loss(p, g)) == pytest.approx(expected, rel=1e-6)
    assert float(relative_frobenius_error(g, p, torch.eye(2), eps=eps)[0]) \
        == pytest.approx(expected, rel=1e-6)


def _brute_force_moments(basis, gamma, row, col):
    """Raw moments of column (row, col) of the dense operator: the PSF there."""
    H, W = basis.image_shape_
    psf = dense_matrix(basis.operator_, gamma).numpy()[:, row * W + col].reshape(H, W)
    i = (np.arange(H) - row)[:, None]
    j = (np.arange(W) - col)[None, :]
    return np.array([psf.sum(), (psf * i**2).sum(), (psf * j**2).sum(),
                     (psf * i * j).sum()])


@pytest.mark.parametrize("kernel_shape", [(5, 3), (4, 6), (4, 3)])
def test_psf_moment_fields_are_the_moments_of_the_dense_operators_columns(
        rng, kernel_shape):
    """Also for even kernel sizes, whose centre (the operators' and scipy's,
    index (k - 1) // 2) the moments were taken one pixel away from (k // 2):
    the row moment of a PSF was 16 % off for 4 x 6 kernels, the cross
    moment 130 % for 4 x 3."""
    # asymmetric kernels, so that the cross moment and the centre matter
    basis = ProductConvolutionBasis.from_components(rng.random((3,) + kernel_shape),
                                                    rng.random((3, 9, 8)))
    A = psf_moment_fields(basis.kernels_, basis.maps_)
    assert A.shape == (3, 4, 9, 8)
    gamma = rng.standard_normal(3)
    for row, col in [(4, 4), (2, 2), (6, 4)]:     # kernels inside the image
        expected = _brute_force_moments(basis, gamma, row, col)
        np.testing.assert_allclose(np.einsum("k,kc->c", gamma, A[:, :, row, col]),
                                   expected, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="same K"):
        psf_moment_fields(rng.random((3, 5, 3)), rng.random((2, 9, 8)))


def test_psf_moment_loss_standardises_and_adds_the_moment_term(rng):
    kernels, maps = rng.random((3, 5, 5)), rng.random((3, 16, 12))
    samples = rng.random((4000, 3)) + 0.5
    loss = PSFMomentLoss(kernels, maps, samples, weight=0.5)
    # over the samples and the pixels, every standardised moment has mean 0
    # and variance 1 (the closed form against the empirical moments)
    t = loss.target(torch.tensor(samples, dtype=torch.float64), (16, 12)).numpy()
    np.testing.assert_allclose(t.mean((0, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(t.var((0, 2, 3)), 1, rtol=2e-3)
    # a coarser map is the cell average of the full one
    coarse = loss.target(torch.tensor(samples[:5]), (4, 3)).numpy()
    full = loss.target(torch.tensor(samples[:5]), (16, 12)).numpy()
    np.testing.assert_allclose(coarse, full.reshape(5, 4, 4, 4, 3, 4).mean((3, 5)),
                               rtol=1e-5, atol=1e-6)
    g = torch.tensor(samples[:5], dtype=torch.float32)
    g_hat = g + 0.1
    mse = float(torch.nn.functional.mse_loss(g_hat, g))
    assert float(loss(g_hat, g)) == pytest.approx(mse)       # evaluation: MSE
    exact = loss.target(g, (4, 3))
    assert float(loss((g_hat, exact), g)) == pytest.approx(mse)
    wrong = exact + 1.0
    assert float(loss((g_hat, wrong), g)) == pytest.approx(mse + 0.5)
    # the moment term reaches the moment map's gradient
    moments = exact.clone().requires_grad_(True)
    loss((g_hat, moments + 0.2), g).backward()
    assert moments.grad.abs().sum() > 0


def test_psf_moment_loss_bad_input(rng):
    kernels, maps = rng.random((3, 5, 5)), rng.random((3, 16, 12))
    with pytest.raises(ValueError, match="gamma_samples must have shape"):
        PSFMomentLoss(kernels, maps, rng.random((10, 4)))
    with pytest.raises(ValueError, match="gamma_samples must be finite"):
        PSFMomentLoss(kernels, maps, np.full((10, 3), np.nan))
    with pytest.raises(ValueError, match="weight must be a non-negative"):
        PSFMomentLoss(kernels, maps, rng.random((10, 3)), weight=-1)
    loss = PSFMomentLoss(kernels, maps, rng.random((10, 3)))
    g = torch.rand(2, 3)
    with pytest.raises(ValueError, match="moments must have shape"):
        loss((g, torch.zeros(2, 3, 4, 4)), g)
    with pytest.raises(ValueError, match="y_pred and y_true"):
        loss(torch.rand(2, 4), torch.rand(2, 4))
