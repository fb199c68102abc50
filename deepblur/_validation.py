"""Input checks shared by the numerics and the estimators.

Every check raises a ``ValueError`` whose message names the parameter, what was
expected and what was given. None of them modifies its input.
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils.validation import _check_sample_weight

__all__ = [
    "all_finite",
    "as_tensor",
    "check_finite",
    "check_ndim",
    "check_shape_tail",
    "check_positive_int",
    "scalar_value",
    "check_positive_int_pair",
    "check_real",
    "check_sample_weight",
    "check_boundary",
    "check_dense",
    "check_families",
    "check_images",
    "resolve_device",
    "to_like",
    "weighted_mean",
]

BOUNDARIES = ("zero", "periodic")


def _is_tensor(x):
    return isinstance(x, torch.Tensor)


def all_finite(x, chunk_size=1 << 22):
    """Whether ``x`` (array or tensor) holds no NaN or Inf.

    Checked by slices of the first axis of about ``chunk_size`` elements:
    ``torch.isfinite`` makes temporaries of nearly twice the input's size (2.8
    GB for a pool of 25 000 float32 images of 128x128), the slices keep them
    to a few MB.
    """
    if _is_tensor(x):
        if not (x.is_floating_point() or x.is_complex()):
            return True
        isfinite = torch.isfinite
    else:
        x = np.asarray(x)
        if x.dtype.kind not in "fc":
            return True
        isfinite = np.isfinite
    if x.ndim == 0 or x.shape[0] == 0:
        return bool(isfinite(x).all())
    step = max(1, chunk_size // max(1, x[0].numel() if _is_tensor(x) else x[0].size))
    return all(bool(isfinite(x[i:i + step]).all()) for i in range(0, x.shape[0], step))


def check_finite(x, name):
    """Raise if ``x`` (array or tensor) holds NaN or Inf."""
    if not all_finite(x):
        raise ValueError(
            f"{name} must contain only finite values; got NaN or Inf entries."
        )
    return x


def check_dense(x, name):
    """Raise a ``TypeError`` naming ``name`` if ``x`` is a SciPy sparse
    matrix or array (NumPy made it a 0-d object array, refused later with a
    message about its dtype or a sequence) or a torch sparse tensor (which
    failed in torch)."""
    if sp.issparse(x):
        raise TypeError(
            f"{name} must be a dense array or tensor; sparse input is not "
            f"supported (got a {type(x).__name__}): convert it with "
            f"{name}.toarray().")
    if _is_tensor(x) and x.layout != torch.strided:
        raise TypeError(
            f"{name} must be a dense array or tensor; sparse input is not "
            f"supported (got a tensor of layout {x.layout}): convert it with "
            f"{name}.to_dense().")
    return x


def check_real(x, name):
    """Raise if ``x`` (array, tensor or array-like) is complex: casting it
    to a real dtype would drop its imaginary part silently; or sparse
    (:func:`check_dense`)."""
    check_dense(x, name)
    if _is_tensor(x):
        complex_ = x.is_complex()
    else:
        try:
            complex_ = np.iscomplexobj(x)
        except (TypeError, ValueError, RuntimeError):
            # a list of tensors numpy cannot take (recording a graph, on a GPU)
            try:
                complex_ = torch.as_tensor(x).is_complex()
            except (TypeError, ValueError, RuntimeError):
                complex_ = False    # not numbers: the caller's conversion says so
    if complex_:
        raise ValueError(f"{name} must be real. Complex data not supported.")
    return x


def check_ndim(x, name, ndims, what=None):
    """Raise unless ``x.ndim`` is one of ``ndims`` (an int or a tuple of ints)."""
    ndims = (ndims,) if isinstance(ndims, numbers.Integral) else tuple(ndims)
    if x.ndim not in ndims:
        expected = " or ".join(str(d) for d in ndims)
        shape = f" {what}" if what else ""
        raise ValueError(
            f"{name} must have {expected} dimensions{shape}; got an array of "
            f"shape {tuple(x.shape)} ({x.ndim} dimensions)."
        )
    return x


def check_shape_tail(x, name, tail, what="image_shape"):
    """Raise unless the last dimensions of ``x`` equal ``tail``."""
    tail = tuple(int(t) for t in tail)
    got = tuple(x.shape[-len(tail):]) if x.ndim >= len(tail) else tuple(x.shape)
    if got != tail:
        raise ValueError(
            f"{name} must end with dimensions {tail} (the {what}); got an array "
            f"of shape {tuple(x.shape)}."
        )
    return x


def scalar_value(value):
    """``value`` as a float when it is one real number (a Python or NumPy
    number, a 0-d array or tensor), else None: booleans and strings are no
    numbers, and arrays of other shapes no scalars."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or np.ndim(value) != 0:
        return None
    # a complex NumPy scalar's float() dropped its imaginary part with only a
    # ComplexWarning, and a complex tensor's raised torch's RuntimeError
    if value.is_complex() if _is_tensor(value) else np.iscomplexobj(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def number_pair(value):
    """``value`` as ``(low, high)`` floats when it holds two numbers in the
    sense of :func:`scalar_value`, else None (numpy's ``float()`` would read
    ``("0.5", "1.5")`` and ``(False, True)`` as pairs of floats)."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        pair = [scalar_value(v) for v in value]
    except TypeError:
        return None
    if len(pair) != 2 or None in pair:
        return None
    return pair[0], pair[1]


def check_sample_weight(sample_weight, n_samples):
    """The ``sample_weight`` of a ``score`` as float64 ``(n_samples,)``, or None.

    scikit-learn's rules (``_check_sample_weight``): one real, finite,
    non-negative weight per sample, not all zero (a scalar weighs every
    sample alike); otherwise a ``ValueError`` that says so, followed by
    scikit-learn's own message. A tensor is read on the CPU.
    """
    if sample_weight is None:
        return None
    if _is_tensor(sample_weight):
        sample_weight = sample_weight.detach().cpu()
        if sample_weight.is_floating_point():   # numpy has no bfloat16
            sample_weight = sample_weight.to(torch.float64)
        sample_weight = sample_weight.numpy()
    n_samples = int(n_samples)
    try:
        return _check_sample_weight(sample_weight, np.empty(n_samples),
                                    dtype=np.float64, ensure_non_negative=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"sample_weight must hold one real, finite, non-negative weight per "
            f"sample ({n_samples}), not all zero: {exc}") from None


def weighted_mean(values, sample_weight=None):
    """The mean of per-sample ``values``, weighted by a checked
    ``sample_weight`` (:func:`check_sample_weight`) when it is given.

    A sample of weight 0 is left out, so that its value, even ``inf`` (a
    perfect PSNR) or NaN, does not make the mean NaN (``0 * inf``). The
    weights are divided by the largest first: only their ratios count, and
    the sum of huge weights (``1e307``) does not overflow to ``inf``.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    if sample_weight is None:
        return float(values.mean())
    kept = sample_weight > 0
    weights = sample_weight[kept]
    return float(np.average(values[kept], weights=weights / weights.max()))


def check_positive_int(value, name):
    """``value`` as an int, or a ``ValueError`` naming ``name`` unless it is an
    integer >= 1 (booleans are no integers)."""
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool)
            and value >= 1):
        raise ValueError(f"{name} must be a positive int; got {value!r}.")
    return int(value)


def check_positive_int_pair(value, name, *, allow_zero=False):
    """Turn an int or a pair of ints into a pair of positive ints (of
    non-negative ones with ``allow_zero``)."""
    if isinstance(value, numbers.Integral):
        value = (value, value)
    kind = "non-negative" if allow_zero else "positive"
    message = f"{name} must be a {kind} int or a pair of {kind} ints; got {value!r}."
    try:
        pair = tuple(value)
    except TypeError:
        raise ValueError(message) from None
    low = 0 if allow_zero else 1
    if len(pair) != 2 or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low
        for v in pair
    ):
        raise ValueError(message)
    return (int(pair[0]), int(pair[1]))


def check_basis_geometry(shape, K, fitted_shape, fitted_K, owner):
    """Refuse a basis set (``set_params``) since ``fit`` whose image shape
    ``shape`` or number of components ``K`` is not the fitted one's: the
    estimator's fitted state (its estimates, its solve) belongs to the basis
    it was fitted with."""
    shape, fitted_shape = tuple(shape), tuple(fitted_shape)
    if (shape, int(K)) != (fitted_shape, int(fitted_K)):
        raise ValueError(
            f"basis has image shape {shape} and K={K}, but this {owner} was "
            f"fitted with a basis of image shape {fitted_shape} and "
            f"K={fitted_K}: call fit again after set_params(basis=...).")


def check_families(kernels, maps):
    """Check a product-convolution family: (K, kh, kw) kernels, (K, H, W) maps.

    Works on numpy arrays and tensors; raises on shapes, empty kernels or
    maps and non-finite values.
    """
    check_ndim(kernels, "kernels", 3, "(K, kh, kw)")
    check_ndim(maps, "maps", 3, "(K, H, W)")
    if kernels.shape[0] != maps.shape[0]:
        raise ValueError(
            "kernels and maps must hold the same number of components K; got "
            f"{kernels.shape[0]} kernels and {maps.shape[0]} maps."
        )
    if kernels.shape[0] == 0 or min(kernels.shape[1:]) == 0:
        raise ValueError(
            f"kernels must be non-empty; got shape {tuple(kernels.shape)}."
        )
    if min(maps.shape[1:]) == 0:
        raise ValueError(
            f"maps must be non-empty (images of at least one pixel); got shape "
            f"{tuple(maps.shape)}."
        )
    check_finite(kernels, "kernels")
    check_finite(maps, "maps")


def check_images(x, name, image_shape, source=""):
    """Check one image (H, W) or a batch (n, H, W) of ``image_shape``, finite.

    ``source`` says where the expected shape comes from (for the message).
    """
    check_ndim(x, name, (2, 3), "(H, W) or (n, H, W)")
    if tuple(x.shape[-2:]) != tuple(image_shape):
        raise ValueError(
            f"{name} must have image_shape {tuple(image_shape)}{source}; got an "
            f"array of shape {tuple(x.shape)}."
        )
    check_finite(x, name)
    return x


def check_not_empty(x, name):
    """A batch of at least one image (as scikit-learn asks for one sample)."""
    if x.ndim >= 3 and x.shape[0] == 0:
        raise ValueError(
            f"{name} must hold at least one image; got an array of shape "
            f"{tuple(x.shape)}."
        )
    return x


def check_boundary(boundary, name="boundary"):
    if boundary not in BOUNDARIES:
        raise ValueError(
            f"{name} must be one of {BOUNDARIES}; got {boundary!r}."
        )
    return boundary


def check_image_mean(image_mean):
    """A positive, finite ``image_mean`` (the mean the images are scaled to)
    as a float."""
    if isinstance(image_mean, bool) or not (
            isinstance(image_mean, numbers.Real) and np.isfinite(image_mean)
            and image_mean > 0):
        raise ValueError(
            f"image_mean must be a positive float (the mean intensity images "
            f"are scaled to); got {image_mean!r}."
        )
    return float(image_mean)


def resolve_device(device, *, auto=True):
    """Turn ``None``/``"auto"`` into CUDA when present, else CPU.

    An explicit CUDA device where CUDA is absent is an error (never a silent
    fallback that would hide a misconfiguration), as are ``"mps"`` and
    ``"xpu"`` where torch has none, and other device types (``"meta"``...).
    With ``auto=False`` (a skorch estimator, which moves its tensors to
    ``device`` as given), ``None`` and ``"auto"`` are errors too.
    """
    if device is None or device == "auto":
        if not auto:
            raise ValueError(
                f"device must name a device ('cpu', 'cuda', 'cuda:1', ...); got "
                f"{device!r} (this estimator's default is already 'cuda' when "
                "CUDA is available, else 'cpu').")
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            "device must be a torch device such as 'cpu', 'cuda', 'cuda:1'"
            + (" or 'auto'" if auto else "") + f"; got {device!r}."
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was asked for but CUDA is not available on this "
            "machine; use device='cpu'" + (" or device='auto'." if auto else ".")
        )
    if dev.type in _OTHER_ACCELERATORS:
        if not _OTHER_ACCELERATORS[dev.type]():
            raise ValueError(
                f"device={device!r} was asked for but this torch build or machine "
                f"has no {dev.type!r} device; use device='cpu'"
                + (" or device='auto'." if auto else ".")
            )
    elif dev.type not in ("cpu", "cuda"):
        raise ValueError(
            f"device={device!r} is not a device deepblur runs on: use 'cpu' or "
            "'cuda' (or 'mps' / 'xpu' where torch has them)"
            + (", or 'auto'." if auto else ".")
        )
    return dev


def _backend_available(name):
    backend = getattr(torch.backends, name, None) or getattr(torch, name, None)
    return bool(backend is not None and backend.is_available())


#: Accelerators other than CUDA that torch may have, with their availability
#: (untested by deepblur's suite, which runs on CPU and CUDA; allowed where
#: present rather than crashing deep in a solver where absent)
_OTHER_ACCELERATORS = {
    "mps": lambda: _backend_available("mps"),
    "xpu": lambda: _backend_available("xpu"),
}


def native_contiguous(arr):
    """``arr`` in native byte order and C-contiguous, copied only when it is
    not: torch takes neither big-endian data (FITS files, some TIFFs) nor
    the negative strides of flipped or rotated views."""
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def as_tensor(x, *, device=None, dtype=None, name="input"):
    """Return ``(tensor, is_numpy)``; numpy input is copied to a tensor.

    Tensors keep their device unless ``device`` is given. Without ``dtype``,
    float32 and float64 are kept; tensors in half precision (float16,
    bfloat16, which the FFTs of the operators do not take on CPU) become
    float32 and other tensors (integers, booleans) torch's default dtype
    (float32 unless set: float64 is slow on GPUs and absent on some); arrays
    of other dtypes become float64. Complex input is refused (a
    ``ValueError`` naming ``name``), not cast to real, and sparse input (a
    ``TypeError``, :func:`check_dense`).
    """
    if _is_tensor(x):
        check_real(x, name)
        t = x
        if dtype is not None and t.dtype != dtype:
            t = t.to(dtype)
        elif dtype is None and t.dtype in (torch.float16, torch.bfloat16):
            t = t.to(torch.float32)
        elif dtype is None and not t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        if device is not None:
            t = t.to(device)
        return t, False
    arr = check_real(np.asarray(check_dense(x, name)), name)
    if dtype is None:
        if arr.dtype in (np.float32, np.float64):
            t = torch.from_numpy(np.ascontiguousarray(arr))
        else:
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    else:
        t = torch.as_tensor(np.ascontiguousarray(arr)).to(dtype)
    if device is not None:
        t = t.to(device)
    return t, True


def to_like(t, is_numpy):
    """Back to numpy when the input was numpy (detached, on CPU)."""
    if is_numpy:
        return t.detach().cpu().numpy()
    return t


def _package_dirs():
    """Directories whose frames are library code for :func:`user_stacklevel`:
    this deepblur's (found from this file, whichever copy is imported),
    scikit-learn's (whose wrappers, such as set_output's, sit between a
    user's call and deepblur's methods), joblib's (through which
    scikit-learn's searches and cross-validation call them), skorch's (whose
    ``fit`` and ``predict`` call the regressor's methods) and dask's (whose
    tasks run deepblur.distributed's work), those of them imported."""
    import os
    import sys

    dirs = [os.path.dirname(os.path.abspath(__file__))]       # deepblur/
    for name in ("sklearn", "joblib", "skorch", "dask", "distributed"):
        module = sys.modules.get(name)
        if getattr(module, "__file__", None):
            dirs.append(os.path.dirname(os.path.abspath(module.__file__)))
    return tuple(os.path.normcase(d) + os.sep for d in dirs)


def user_stacklevel():
    """The ``stacklevel`` that makes a ``warnings.warn`` in the calling
    function point at the first frame outside deepblur and the libraries
    that call into it (scikit-learn, joblib, skorch, dask): the user's line,
    whether it called a function directly, through a Pipeline,
    ``fit_transform``, ``score``, a search or a dask computation run in this
    thread (a fixed stacklevel is right for one of these paths only). In a
    worker thread or process the stack starts there, not at the user's line;
    a stack of library frames only (the ``deepblur`` command) gives its
    outermost frame."""
    import os
    import sys

    internal = _package_dirs()
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None:
        name = frame.f_code.co_filename
        if name.startswith("<") or not os.path.normcase(
                os.path.abspath(name)).startswith(internal):
            break
        frame, level = frame.f_back, level + 1
    return level
