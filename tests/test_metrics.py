import numpy as np
import pytest
import torch

from deepblur.metrics import psnr, psnr_scorer, snr, snr_scorer


def test_psnr_closed_form_and_reference_range():
    rng = np.random.default_rng(0)
    ref = rng.random((3, 8, 8)) * 4.0
    est = ref + 0.2
    expected = 10 * np.log10(np.ptp(ref.reshape(3, -1), axis=1) ** 2 / 0.04)
    np.testing.assert_allclose(psnr(ref, est), expected)
    np.testing.assert_allclose(psnr(ref, est, data_range=1.0),
                               10 * np.log10(1 / 0.04) * np.ones(3))


def test_psnr_matches_skimage_with_same_range():
    from skimage.metrics import peak_signal_noise_ratio

    rng = np.random.default_rng(1)
    ref, est = rng.random((16, 16)), rng.random((16, 16))
    dr = ref.max() - ref.min()
    assert psnr(ref, est) == pytest.approx(
        peak_signal_noise_ratio(ref, est, data_range=dr))


def test_snr_closed_form():
    ref = np.ones((2, 4, 4))
    est = np.stack([0.9 * ref[0], ref[1]])
    out = snr(ref, est)
    assert out[0] == pytest.approx(20.0) and out[1] == np.inf


def test_torch_and_numpy_agree():
    rng = np.random.default_rng(2)
    ref, est = rng.random((2, 5, 5)), rng.random((2, 5, 5))
    np.testing.assert_allclose(psnr(torch.from_numpy(ref), torch.from_numpy(est)),
                               psnr(ref, est))
    np.testing.assert_allclose(snr(torch.from_numpy(ref), est), snr(ref, est))


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_any_magnitude(scale):
    """snr gave NaN at 1e-200 and 1e200, psnr at 1e200 (the sums of squares
    underflowed or overflowed): both are ratios, unchanged by the scale."""
    rng = np.random.default_rng(3)
    ref = rng.random((2, 5, 5))
    est = ref + 0.01 * rng.standard_normal(ref.shape)
    np.testing.assert_allclose(snr(ref * scale, est * scale), snr(ref, est),
                               rtol=1e-12)
    np.testing.assert_allclose(psnr(ref * scale, est * scale), psnr(ref, est),
                               rtol=1e-12)
    np.testing.assert_allclose(
        psnr(ref * scale, est * scale, data_range=[scale, 2 * scale]),
        psnr(ref, est, data_range=[1.0, 2.0]), rtol=1e-12)


@pytest.mark.parametrize("fn", [psnr, snr])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tensors(fn, dtype):
    """bfloat16 tensors raised numpy's "Got unsupported ScalarType BFloat16"."""
    ref = torch.linspace(0, 1, 16).reshape(4, 4)
    est = ref + 0.125
    got = fn(ref.to(dtype), est.to(dtype))
    assert got == pytest.approx(fn(ref.to(dtype).double(), est.to(dtype).double()))


@pytest.mark.parametrize("data_range", [True, "1", ["1", "2"]])
def test_psnr_data_range_must_hold_numbers(data_range):
    """numpy read True and "1" as a data range of 1 (20 dB here)."""
    with pytest.raises(ValueError, match="data_range must hold numbers"):
        psnr(np.zeros((2, 4, 4)), np.full((2, 4, 4), 0.1), data_range=data_range)


def test_psnr_data_range_of_another_length():
    with pytest.raises(ValueError,
                       match=r"one value per image \(3\); got shape \(2,\)"):
        psnr(np.ones((3, 4, 4)), np.zeros((3, 4, 4)), data_range=[1.0, 2.0])


@pytest.mark.parametrize("fn", [psnr, snr])
def test_bad_inputs(fn):
    with pytest.raises(ValueError, match="same shape"):
        fn(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="estimate must contain only finite"):
        fn(np.ones((4, 4)), np.full((4, 4), np.nan))
    with pytest.raises(ValueError, match="reference must have 2 or 3"):
        fn(np.ones(4), np.ones(4))



@pytest.mark.parametrize("fn", [psnr, snr])
def test_sparse_images_are_refused_by_name(fn):
    """A SciPy sparse image failed with NumPy's "setting an array element
    with a sequence", a torch sparse one in torch."""
    import scipy.sparse as sp

    ref = np.eye(4)
    for bad in (sp.csr_matrix(ref), torch.eye(4).to_sparse()):
        with pytest.raises(TypeError, match="estimate must be a dense array or "
                                            "tensor; sparse input is not supported"):
            fn(ref, bad)


def test_psnr_constant_reference_needs_range():
    with pytest.raises(ValueError, match="data_range"):
        psnr(np.ones((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="data_range"):
        psnr(np.ones((4, 4)), np.zeros((4, 4)), data_range=0.0)
    assert psnr(np.ones((4, 4)), np.zeros((4, 4)), data_range=1.0) == 0.0


def test_scorers_use_transform():
    class Shift:
        def transform(self, X):
            return X - 0.1

    y = np.zeros((2, 4, 4))
    y[:, 1:3, 1:3] = 1.0
    assert psnr_scorer(Shift(), y + 0.2, y) == pytest.approx(20.0)
    assert snr_scorer(Shift(), y + 0.1, y) == np.inf


def test_scorers_take_constant_clean_images():
    """A background patch (constant clean image) has no range of its own: the
    scorers and TVDeblurrer.score use the set's range for it (they used to
    fail with advice to pass a data_range that they do not take)."""
    from deepblur.metrics import clean_ranges

    class Shift:
        def transform(self, X):
            return X - 0.1

    y = np.zeros((2, 4, 4))
    y[0, 1:3, 1:3] = 2.0
    y[1] = 0.5
    np.testing.assert_array_equal(clean_ranges(y), [2.0, 2.0])
    # each image: mse 0.01, range 2 -> 10 log10(400)
    assert psnr_scorer(Shift(), y + 0.2, y) == pytest.approx(10 * np.log10(400))
    with pytest.raises(ValueError, match=r"constant reference image\(s\) \[1\]"):
        psnr(y, y + 0.1)
    with pytest.raises(ValueError, match="every clean image is the same constant"):
        psnr_scorer(Shift(), np.ones((2, 4, 4)), np.ones((2, 4, 4)))


def test_inputs_not_modified():
    ref = np.random.default_rng(3).random((2, 4, 4))
    est = ref.copy() + 0.1
    r0, e0 = ref.copy(), est.copy()
    psnr(ref, est)
    snr(ref, est)
    np.testing.assert_array_equal(ref, r0)
    np.testing.assert_array_equal(est, e0)


def test_complex_empty_and_black_references_are_refused():
    """Complex input lost its imaginary part (psnr(x, x + 1j) was inf); an
    all-black clean image gave snr -inf for every estimate (NaN for a
    perfect one), so snr_scorer ranked estimators arbitrarily."""
    x = np.eye(4)
    for fn in (psnr, snr):
        with pytest.raises(ValueError, match="real numbers"):
            fn(x, x + 1j)
        with pytest.raises(ValueError, match="at least one pixel"):
            fn(np.zeros((0, 4, 4)), np.zeros((0, 4, 4)))
    import torch

    with pytest.raises(ValueError, match="real numbers"):
        psnr(torch.as_tensor(x), torch.as_tensor(x) * (1 + 1j), data_range=1.0)
    y = np.ones((2, 4, 4))
    y[1] = 0.0
    with pytest.raises(ValueError,
                       match=r"all-zero clean image is undefined \(image 1\)"):
        snr(y, y)

    class Identity:
        def transform(self, X):
            return X

    with pytest.raises(ValueError, match="psnr_scorer"):
        snr_scorer(Identity(), y, y)
