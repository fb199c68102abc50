"""Shared input checks."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from deepblur._validation import (
    all_finite,
    as_tensor,
    check_dense,
    check_finite,
    check_real,
    check_sample_weight,
    scalar_value,
    weighted_mean,
)

_floats = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=60, deadline=None)
@given(x=arrays(np.float32, st.tuples(st.integers(0, 9), st.integers(1, 5),
                                       st.integers(1, 5)), elements=_floats),
       chunk=st.integers(1, 40))
def test_all_finite_by_slices_agrees_with_isfinite(x, chunk):
    expected = bool(np.isfinite(x).all())
    assert all_finite(x, chunk_size=chunk) is expected
    assert all_finite(torch.from_numpy(x), chunk_size=chunk) is expected


def test_all_finite_other_kinds():
    assert all_finite(np.arange(6).reshape(2, 3))                # integers
    assert all_finite(torch.arange(6))
    assert not all_finite(np.float64(np.nan))                    # 0-d
    assert not all_finite(torch.tensor(np.inf))
    assert all_finite(np.empty((0, 3)))
    assert not all_finite(np.array([1 + 0j, complex(0, np.inf)]))
    assert not all_finite(torch.tensor([1.0, 2.0, np.nan]), chunk_size=1)
    assert all_finite([[1.0, 2.0], [3.0, 4.0]])                  # a list
    with pytest.raises(ValueError, match="x must contain only finite values"):
        check_finite(np.array([[0.0], [np.nan]]), "x")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", 3.5])
def test_resolve_device_names_a_bad_device(bad):
    """torch's own error listed every backend it knows; ours says what to pass."""
    from deepblur._validation import resolve_device

    with pytest.raises(ValueError, match="device must be a torch device such as"):
        resolve_device(bad)


@pytest.mark.parametrize("device, match", [
    ("mps", "has no 'mps' device"), ("xpu:0", "has no 'xpu' device"),
    ("meta", "is not a device deepblur runs on"), ("hip", "is not a device")])
def test_resolve_device_refuses_absent_or_foreign_accelerators(device, match,
                                                               monkeypatch):
    """'mps' or 'xpu' where there is none, and 'meta', passed torch.device and
    crashed deep in a solver (the CLI printed a 25-77 line traceback)."""
    from deepblur import _validation

    monkeypatch.setitem(_validation._OTHER_ACCELERATORS, "mps", lambda: False)
    monkeypatch.setitem(_validation._OTHER_ACCELERATORS, "xpu", lambda: False)
    with pytest.raises(ValueError, match=match):
        _validation.resolve_device(device)
    monkeypatch.setitem(_validation._OTHER_ACCELERATORS, "mps", lambda: True)
    assert _validation.resolve_device("mps").type == "mps"
    assert _validation.resolve_device("cpu:0").type == "cpu"


def test_as_tensor_refuses_complex_input():
    """Complex arrays and tensors were cast to real, the imaginary part
    dropped (with at most a ComplexWarning); real input is unchanged."""
    import warnings

    from deepblur._validation import as_tensor

    z = np.ones((2, 3)) + 1j
    for x in (z, torch.from_numpy(z), z.astype(np.complex64), z.tolist()):
        with pytest.raises(ValueError, match="^y must be real. Complex data not "
                                             "supported.$"):
            as_tensor(x, name="y")
        with pytest.raises(ValueError, match="must be real"):
            as_tensor(x, dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t, is_numpy = as_tensor(z.real)
    assert is_numpy and t.dtype == torch.float64
    assert as_tensor(torch.ones(2, dtype=torch.int64))[0].is_floating_point()


def test_check_real_takes_a_list_of_tensors_recording_a_graph():
    """np.iscomplexobj on such a list raised numpy's "Can't call numpy() on
    Tensor that requires grad"; a complex one is refused as any other."""
    from deepblur._validation import check_real

    g = [torch.tensor(0.5, requires_grad=True), torch.tensor(1.0)]
    assert check_real(g, "gamma") is g                      # returned as given
    with pytest.raises(ValueError, match="gamma must be real"):
        check_real([torch.tensor(1 + 1j), torch.tensor(0j)], "gamma")
    assert check_real(["a", "b"], "x") == ["a", "b"]       # left to the caller
    import warnings

    with warnings.catch_warnings():         # torch warns on lists of arrays
        warnings.simplefilter("error")
        check_real([np.ones(2), np.zeros(2)], "kernels")


def test_check_sample_weight():
    np.testing.assert_array_equal(check_sample_weight([1, 2, 0], 3), [1.0, 2.0, 0.0])
    assert check_sample_weight(None, 3) is None
    np.testing.assert_array_equal(check_sample_weight(2.0, 3), [2.0, 2.0, 2.0])
    out = check_sample_weight(torch.tensor([0.5, 1.0], requires_grad=True), 2)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_array_equal(out, [0.5, 1.0])
    # a bfloat16 tensor was a TypeError from torch ("Got unsupported
    # ScalarType BFloat16"): numpy has no bfloat16
    np.testing.assert_array_equal(
        check_sample_weight(torch.tensor([0.5, 2.0], dtype=torch.bfloat16), 2),
        [0.5, 2.0])
    for bad, detail in (([1.0, 2.0], r"shape == \(2,\), expected \(3,\)"),
                        ([1.0, -2.0, 1.0], "Negative"),
                        ([1.0, np.nan, 1.0], "NaN"),
                        ([0.0, 0.0, 0.0], "non-zero"),
                        (np.ones(3) * 1j, "Complex"),
                        (["a", "b", "c"], "could not convert")):
        with pytest.raises(ValueError, match=r"^sample_weight must hold one "
                           r"real, finite, non-negative weight per sample \(3\), "
                           rf"not all zero: .*{detail}"):
            check_sample_weight(bad, 3)


def test_weighted_mean_leaves_out_samples_of_weight_zero():
    """0 * inf (a perfect image's PSNR) or 0 * NaN made the mean NaN."""
    values = np.array([np.inf, 30.0, 20.0, np.nan])
    w = np.array([0.0, 1.0, 3.0, 0.0])
    assert weighted_mean(values, w) == pytest.approx((30.0 + 3 * 20.0) / 4)
    assert weighted_mean([1.0, 2.0, 6.0]) == pytest.approx(3.0)
    assert weighted_mean([np.inf, 1.0]) == np.inf


def test_weighted_mean_of_huge_or_tiny_weights():
    """Weights of 1e307 overflowed their sum to inf: the mean was 0 (NaN
    for weights of 1e308), with only a RuntimeWarning. Only their ratios
    count."""
    import warnings

    values = np.array([1.0, 2.0, 6.0])
    for scale in (1e307, 1e308, np.finfo(np.float64).max, 1e-310):
        w = check_sample_weight(scale * np.array([0.5, 0.5, 1.0]), 3)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert weighted_mean(values, w) == pytest.approx(15.0 / 4, rel=1e-12)


@pytest.mark.parametrize("make", [sp.csr_matrix, sp.coo_array])
def test_sparse_input_is_refused_by_name(make):
    """NumPy made a sparse matrix a 0-d object array: as_tensor failed with
    "setting an array element with a sequence" (TVDeblurrer, BlindDeblurrer)."""
    x = make(np.eye(3))
    for check in (check_dense, check_real,
                  lambda x, name: as_tensor(x, name=name)):
        with pytest.raises(TypeError, match=r"^X must be a dense array or tensor; "
                           r"sparse input is not supported \(got a "
                           rf"{type(x).__name__}\): convert it with X.toarray\(\)"):
            check(x, "X")
    assert check_dense(np.eye(3), "X") is not None


@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_tensors_are_refused_by_name(layout):
    """A torch sparse tensor passed the sparse check: TVDeblurrer.transform
    then failed in torch ("Could not run 'aten::as_strided' with arguments
    from the 'SparseCPU' backend")."""
    x = torch.eye(3)
    x = x.to_sparse() if layout == "coo" else x.to_sparse_csr()
    for check in (check_dense, check_real,
                  lambda x, name: as_tensor(x, name=name)):
        with pytest.raises(TypeError, match=r"^X must be a dense array or tensor; "
                           r"sparse input is not supported \(got a tensor of "
                           r"layout torch.sparse_.*\): convert it with "
                           r"X.to_dense\(\)"):
            check(x, "X")


@pytest.mark.parametrize("value", [np.complex128(0.5 + 1j), np.complex64(0.5),
                                   torch.tensor(0.5 + 1j), np.array(0.5 + 1j)])
def test_scalar_value_is_none_for_complex_numbers(value):
    """A complex NumPy scalar was read as its real part (with only a
    ComplexWarning), so alpha_range=(np.complex128(0.5 + 1j), 1.5) and such
    a noise_std or eps were taken; a complex tensor raised torch's
    RuntimeError ('value cannot be converted to type double')."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert scalar_value(value) is None
    assert scalar_value(np.float32(0.5)) == scalar_value(torch.tensor(0.5)) == 0.5

