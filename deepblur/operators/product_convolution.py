r"""Product-convolution operators: forward and adjoint, batched, in torch.

A product-convolution operator (paper eq. 2-3) is

.. math:: H[\gamma] u = \sum_{k=1}^K \gamma_k\, e_k * (f_k \odot u)

with kernels :math:`e_k` of shape ``(kh, kw)`` and coefficient maps
:math:`f_k` of the image's shape ``(H, W)``. Its adjoint is

.. math:: H[\gamma]^T v = \sum_{k=1}^K \gamma_k\, f_k \odot (\tilde e_k * v)

where :math:`\tilde e_k` is the flipped kernel (a correlation).

Boundary models
---------------
``"zero"``
    Linear convolution of the zero-extended image, cropped to the image:
    ``scipy.signal.convolve2d(f_k * u, e_k, mode="same")``.
``"periodic"``
    Circular convolution on the image's torus:
    ``convolve2d(f_k * u, e_k, mode="same", boundary="wrap")``.

Both use scipy's kernel centre: kernel index ``(kh - 1) // 2`` (and likewise
for the width) sits on the output pixel, for odd and even sizes.

Cost
----
The kernel spectra are computed once per device and dtype and cached. The sum
over ``k`` is done in the Fourier domain, so a forward costs ``K`` real FFTs of
the weighted images and one inverse FFT; the adjoint costs one FFT and ``K``
inverse FFTs. :meth:`ProductConvolution.forward_many` blurs an image by ``g``
operators for ``K + g`` FFTs (its ``K`` spectra are shared). The zero
boundary pads only to the smallest fast FFT size that avoids wrap-around,
``>= N + k // 2`` per axis. On CPU the batch is processed a few images at a
time (``batch_chunk``) because whole-batch FFTs fall out of cache.
"""

from __future__ import annotations

import functools
import numbers
import threading

import numpy as np
import scipy.fft
import torch

from deepblur._validation import (
    as_tensor,
    check_boundary,
    check_families,
    check_ndim,
    check_real,
)

__all__ = [
    "ProductConvolution",
    "fft_shape",
    "place_kernels",
    "product_convolution",
    "product_convolution_adjoint",
]

# Elements (batch x K x padded pixels) processed per chunk on CPU. Measured in
# benchmarks/bench_operators.py on a 2-core CPU: see benchmarks/README.md.
_CPU_CHUNK_ELEMENTS = 2**19


def fft_shape(image_shape, kernel_shape, boundary):
    """Padded FFT size per axis for the given boundary model.

    ``"periodic"`` works on the image's own torus. ``"zero"`` needs
    ``M >= N + k // 2`` to keep the wrapped tail out of the cropped output (and
    ``M >= k`` so that the kernel fits); the smallest real-FFT-friendly size is
    taken.
    """
    check_boundary(boundary)
    if boundary == "periodic":
        return tuple(int(n) for n in image_shape)
    return tuple(
        int(scipy.fft.next_fast_len(max(int(n) + int(k) // 2, int(k)), real=True))
        for n, k in zip(image_shape, kernel_shape, strict=True)
    )


def place_kernels(kernels, shape):
    """Put kernels on a torus of ``shape`` with their centre at index 0.

    Kernel index ``j`` goes to ``(j - (k - 1) // 2) mod M`` on each axis, which
    reproduces scipy's ``mode="same"`` centring. Entries that land on the same
    place (kernels larger than the torus) are summed, as a circular convolution
    requires.

    Parameters
    ----------
    kernels : torch.Tensor of shape (K, kh, kw)
    shape : tuple of int (M1, M2)

    Returns
    -------
    torch.Tensor of shape (K, M1, M2)
    """
    K, kh, kw = kernels.shape
    M1, M2 = shape
    rows = (torch.arange(kh, device=kernels.device) - (kh - 1) // 2) % M1
    cols = (torch.arange(kw, device=kernels.device) - (kw - 1) // 2) % M2
    flat = (rows[:, None] * M2 + cols[None, :]).reshape(-1)
    out = torch.zeros(K, M1 * M2, dtype=kernels.dtype, device=kernels.device)
    out.index_add_(1, flat, kernels.reshape(K, -1))
    return out.reshape(K, M1, M2)


def _half_in_float32(method):
    """Run an operator method on half-precision images (float16, bfloat16) in
    float32 and return the result in their dtype: the FFTs take neither on
    CPU (and float16 only at powers of two on CUDA)."""
    @functools.wraps(method)
    def run(self, x, *args, **kwargs):
        if isinstance(x, torch.Tensor) and x.dtype in (torch.float16, torch.bfloat16):
            return method(self, x.float(), *args, **kwargs).to(x.dtype)
        return method(self, x, *args, **kwargs)
    return run


class ProductConvolution:
    """A family of product-convolution operators ``H[gamma]``.

    A plain, picklable object holding ``K`` kernels and ``K`` coefficient maps;
    nothing is computed at construction. ``forward`` and ``adjoint`` take a
    batch of images and one coefficient vector per image (or one for all).

    Parameters
    ----------
    kernels : array-like or torch.Tensor of shape (K, kh, kw)
        Kernels ``e_k``, real.
    maps : array-like or torch.Tensor of shape (K, H, W)
        Coefficient maps ``f_k``, real.
    boundary : {"zero", "periodic"}, default="zero"
        Boundary model (see the module's documentation).
    batch_chunk : int or None, default=None
        Images processed per FFT batch, at least 1. ``None`` picks a
        cache-friendly size on CPU and the whole batch on CUDA.

    Attributes
    ----------
    kernels, maps : torch.Tensor
        The families as given (converted to tensors, on their original
        device). float32 and float64 tensors and C-contiguous arrays are
        not copied, so do not modify them in place afterwards (e.g. reuse
        one array for the maps of several operators): the kernels' spectra
        are cached at the first call, and so are the maps when the images'
        dtype or device differs from theirs (else the maps are read at each
        call), and the results would belong to neither family (float64
        kernels scaled by 3 and maps by 2 in place after a first call:
        results of float64 images scaled by 2, not 6; of float32 images,
        unchanged).
    image_shape : tuple of int
    kernel_shape : tuple of int
    n_components : int
    fft_shape : tuple of int
        FFT size per axis.

    Raises
    ------
    ValueError
        If ``kernels`` and ``maps`` are not a real, finite family of ``K``
        non-empty kernels and ``K`` maps, ``boundary`` is unknown or
        ``batch_chunk`` is neither None nor an int >= 1.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from scipy.signal import convolve2d
    >>> rng = np.random.default_rng(0)
    >>> e, f, u = rng.random((2, 5, 5)), rng.random((2, 16, 16)), rng.random((16, 16))
    >>> op = ProductConvolution(e, f, boundary="zero")
    >>> y = op.forward(torch.from_numpy(u)[None], torch.tensor([1.0, 2.0]))
    >>> ref = sum(g * convolve2d(fk * u, ek, mode="same")
    ...           for g, ek, fk in zip([1.0, 2.0], e, f))
    >>> bool(np.allclose(y[0].numpy(), ref))
    True
    """

    def __init__(self, kernels, maps, boundary="zero", *, batch_chunk=None):
        kernels, _ = as_tensor(kernels, name="kernels")
        maps, _ = as_tensor(maps, name="maps")
        check_families(kernels, maps)
        self.boundary = check_boundary(boundary)
        if batch_chunk is not None and not (
                isinstance(batch_chunk, numbers.Integral)
                and not isinstance(batch_chunk, bool) and batch_chunk >= 1):
            raise ValueError(
                f"batch_chunk must be None or an int >= 1 (images per FFT "
                f"batch); got {batch_chunk!r}."
            )
        self.kernels = kernels
        self.maps = maps
        self.batch_chunk = None if batch_chunk is None else int(batch_chunk)
        self._cache = {}
        self._local = threading.local()

    # -- geometry -----------------------------------------------------------
    @property
    def image_shape(self):
        return tuple(self.maps.shape[1:])

    @property
    def kernel_shape(self):
        return tuple(self.kernels.shape[1:])

    @property
    def n_components(self):
        return int(self.kernels.shape[0])

    @property
    def fft_shape(self):
        return fft_shape(self.image_shape, self.kernel_shape, self.boundary)

    # -- pickling: the spectra cache is rebuilt where the object is loaded ---
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = {}
        state.pop("_local", None)       # per-thread work arrays (unpicklable)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def __repr__(self):
        return (
            f"ProductConvolution(K={self.n_components}, image_shape="
            f"{self.image_shape}, kernel_shape={self.kernel_shape}, "
            f"boundary={self.boundary!r})"
        )

    def to(self, device=None, dtype=None):
        """A copy with kernels and maps moved to ``device`` / ``dtype``."""
        return ProductConvolution(
            self.kernels.to(device=device, dtype=dtype),
            self.maps.to(device=device, dtype=dtype),
            self.boundary,
            batch_chunk=self.batch_chunk,
        )

    # -- cached device/dtype copies ----------------------------------------
    def _buffers(self, device, dtype):
        """Kernel spectra, maps and conjugate spectra on ``device`` in ``dtype``.

        Built as normal tensors even when the first call runs under
        ``torch.inference_mode()``: inference tensors cached here could be
        neither written in place nor saved for backward by later calls.
        """
        key = (str(device), dtype)
        buf = self._cache.get(key)
        if buf is None:
            with torch.inference_mode(False):
                kernels = self.kernels.to(device=device, dtype=dtype)
                placed = place_kernels(kernels, self.fft_shape)
                spectra = torch.fft.rfft2(placed)
                maps = self.maps.to(device=device, dtype=dtype).contiguous()
                if maps.is_inference():
                    # an operator built in inference mode: ``.to`` returned
                    # its own maps, which autograd could not save
                    maps = maps.clone()
                # materialised conjugate: multiplying by a lazy conj view is slower
                buf = (spectra, maps, spectra.conj().resolve_conj())
            self._cache[key] = buf
        return buf

    def _work(self, kind, c, device, dtype, make):
        """Work arrays of ``kind`` for a chunk of ``c`` images.

        One set per thread, device and dtype, so concurrent calls never share
        one. It lives in a ``threading.local`` (it goes with its thread) and
        is grown to the largest chunk seen, smaller chunks using its leading
        rows: memory stays at one chunk's worth per thread whatever the
        batch sizes, with no allocation per call. Only used when no gradient
        is recorded (in-place writes would break autograd).
        """
        sets = getattr(self._local, "work", None)
        if sets is None:
            sets = self._local.work = {}
        key = (kind, str(device), dtype)
        work = sets.get(key)
        if work is None or work[0].shape[0] < c:
            with torch.inference_mode(False):   # normal tensors (see _buffers)
                work = make(c)
            sets[key] = work
        if work[0].shape[0] == c:
            return work
        return tuple(w[:c] for w in work)

    def _forward_work(self, c, device, dtype):
        """Work arrays of the forward (see :meth:`_work`); the padding of the
        first is never written, so it stays zero."""
        def make(c):
            K, (M1, M2) = self.n_components, self.fft_shape
            cdtype = (torch.ones((), dtype=dtype) * 1j).dtype
            return (
                torch.zeros((c, K, M1, M2), dtype=dtype, device=device),
                torch.empty((c, K, M1, M2 // 2 + 1), dtype=cdtype, device=device),
                torch.empty((c, M1, M2 // 2 + 1), dtype=cdtype, device=device),
                torch.empty((c, M1, M2), dtype=dtype, device=device))
        return self._work("forward", c, device, dtype, make)

    def _chunk(self, n, device):
        if self.batch_chunk is not None:
            return self.batch_chunk
        if device.type != "cpu":
            return max(n, 1)
        M1, M2 = self.fft_shape
        per_image = self.n_components * M1 * M2
        return max(1, _CPU_CHUNK_ELEMENTS // per_image)

    # -- input handling -----------------------------------------------------
    def _check_images(self, x, name):
        """``x`` as a real floating-point (n, H, W) tensor of the operator's
        shape."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor; got {type(x).__name__} (use "
                "ProductConvolutionBasis.apply for numpy arrays)."
            )
        check_real(x, name)
        check_ndim(x, name, 3, "(n, H, W)")
        if tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{name} must have image shape {self.image_shape}; got an array "
                f"of shape {tuple(x.shape)}."
            )
        return x if x.is_floating_point() else x.to(torch.get_default_dtype())

    def _prepare(self, x, gamma, name):
        x = self._check_images(x, name)
        gamma = torch.as_tensor(check_real(gamma, "gamma"), dtype=x.dtype,
                                device=x.device)
        check_ndim(gamma, "gamma", (1, 2), "(K,) or (n, K)")
        if gamma.shape[-1] != self.n_components:
            raise ValueError(
                f"gamma must have {self.n_components} coefficients (one per "
                f"component K); got shape {tuple(gamma.shape)}."
            )
        if gamma.ndim == 1:
            gamma = gamma[None]
        n = x.shape[0]
        if gamma.shape[0] not in (1, n):
            if n != 1:
                raise ValueError(
                    f"gamma must have 1 or n={n} rows (one per image); got shape "
                    f"{tuple(gamma.shape)}."
                )
            x = x.expand(gamma.shape[0], *x.shape[1:])
        elif gamma.shape[0] == 1 and n > 1:
            gamma = gamma.expand(n, -1)
        return x, gamma

    @staticmethod
    def _empty(x, gamma, shape):
        """The result of an empty batch, of ``shape``: the FFTs take no empty
        batch. When a graph is recorded it depends on ``x`` and ``gamma`` (zero
        gradients), as a non-empty result would."""
        out = torch.zeros(shape, dtype=x.dtype, device=x.device)
        if torch.is_grad_enabled() and (x.requires_grad or gamma.requires_grad):
            out = out + 0 * (x.sum() + gamma.sum())
        return out

    # -- the operators ------------------------------------------------------
    @_half_in_float32
    def forward(self, u, gamma):
        """Apply ``H[gamma]`` to a batch of images.

        Parameters
        ----------
        u : torch.Tensor of shape (n, H, W)
            Real images (complex ones are refused, not cast).
        gamma : torch.Tensor or array-like of shape (K,), (1, K) or (n, K)
            One coefficient vector for all images or one per image, real. With
            ``n == 1`` and ``m`` rows of ``gamma``, the image is blurred by each
            of the ``m`` operators.

        Returns
        -------
        torch.Tensor of shape (max(n, m), H, W), dtype and device of ``u``.
            Empty for an empty batch (``n == 0`` or ``m == 0``).
        """
        u, gamma = self._prepare(u, gamma, "u")
        H, W = self.image_shape
        if u.shape[0] == 0:
            return self._empty(u, gamma, (0, H, W))
        spectra, maps, _ = self._buffers(u.device, u.dtype)
        M = self.fft_shape
        step = self._chunk(u.shape[0], u.device)
        reuse = not (torch.is_grad_enabled()
                     and (u.requires_grad or gamma.requires_grad))
        n = u.shape[0]
        if reuse:
            # No graph: every stage writes into per-thread work arrays (the
            # padding of ``pad`` is never written, so it stays zero) and the
            # result goes in place (no allocation per stage, no final cat).
            out = torch.empty((n, H, W), dtype=u.dtype, device=u.device)
            for start in range(0, n, step):
                uc, gc = u[start:start + step], gamma[start:start + step]
                c = uc.shape[0]
                pad, spec, summed, full = self._forward_work(c, u.device, u.dtype)
                block = pad[..., :H, :W]
                # gamma is folded into the real weighted images (linearity of
                # the FFT), so the sum over k is a plain sum of spectra.
                torch.mul(maps, uc[:, None], out=block)
                block.mul_(gc[:, :, None, None])
                torch.fft.rfft2(pad, out=spec)
                torch.sum(spec.mul_(spectra), dim=1, out=summed)
                torch.fft.irfft2(summed, s=M, out=full)
                out[start:start + c] = full[:, :H, :W]
            return out
        outs = []
        for start in range(0, n, step):
            uc, gc = u[start:start + step], gamma[start:start + step]
            weighted = maps * (gc[:, :, None, None] * uc[:, None])
            spec = torch.fft.rfft2(weighted, s=M)
            summed = spec.mul_(spectra).sum(1)  # (c, M1, M2r)
            outs.append(torch.fft.irfft2(summed, s=M)[:, :H, :W])
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    @_half_in_float32
    def forward_many(self, u, gammas):
        """Blur each image by several operators: ``out[i, j] = H[gammas[i, j]] u[i]``.

        The ``K`` spectra of an image's weighted copies ``f_k . u[i]`` do not
        depend on ``gamma``: they are computed once and shared by the image's
        ``g`` operators, so an image costs ``K + g`` FFTs instead of the
        ``g (K + 1)`` of :meth:`forward` on ``g`` copies of it.

        Parameters
        ----------
        u : torch.Tensor of shape (n, H, W)
        gammas : torch.Tensor or array-like of shape (n, g, K)
            ``g`` coefficient vectors per image.

        Returns
        -------
        torch.Tensor of shape (n, g, H, W), dtype and device of ``u``.
            Empty for an empty batch (``n == 0``) or no operators
            (``g == 0``).
        """
        u = self._check_images(u, "u")
        gammas = torch.as_tensor(check_real(gammas, "gammas"), dtype=u.dtype,
                                 device=u.device)
        check_ndim(gammas, "gammas", 3, "(n, g, K)")
        n, K = u.shape[0], self.n_components
        if gammas.shape[0] != n or gammas.shape[2] != K:
            raise ValueError(
                f"gammas must have shape (n={n}, g, K={K}): one set of "
                f"coefficient vectors per image; got {tuple(gammas.shape)}."
            )
        (H, W), (M1, M2), g = self.image_shape, self.fft_shape, gammas.shape[1]
        if n == 0 or g == 0:
            return self._empty(u, gammas, (n, g, H, W))
        spectra, maps, _ = self._buffers(u.device, u.dtype)
        step = self._chunk(n, u.device)
        outs = []
        for start in range(0, n, step):
            uc = u[start:start + step]
            c = uc.shape[0]
            spec = torch.fft.rfft2(maps * uc[:, None], s=(M1, M2)) * spectra
            # (c, g, K) @ (c, K, pixels): the g sums over k at once
            summed = torch.bmm(gammas[start:start + c].to(spec.dtype),
                               spec.reshape(c, K, -1)).reshape(c, g, M1, -1)
            outs.append(torch.fft.irfft2(summed, s=(M1, M2))[..., :H, :W])
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    @_half_in_float32
    def adjoint(self, v, gamma):
        """Apply the adjoint ``H[gamma]^T`` to a batch of images.

        Same shapes and broadcasting as :meth:`forward`; ``<H u, v> = <u, H^T v>``
        holds to floating-point precision for both boundary models.
        """
        v, gamma = self._prepare(v, gamma, "v")
        H, W = self.image_shape
        if v.shape[0] == 0:
            return self._empty(v, gamma, (0, H, W))
        _, maps, conj = self._buffers(v.device, v.dtype)
        M = self.fft_shape
        K = self.n_components
        n = v.shape[0]
        step = self._chunk(n, v.device)
        reuse = not (torch.is_grad_enabled()
                     and (v.requires_grad or gamma.requires_grad))
        if reuse:
            # No graph: write every stage into per-thread work arrays and the
            # result in place (saves an allocation per stage and the final cat).
            out = torch.empty((n, H, W), dtype=v.dtype, device=v.device)
            for start in range(0, n, step):
                vc, gc = v[start:start + step], gamma[start:start + step]
                c = vc.shape[0]
                prod, corr, weighted = self._adjoint_work(c, v.device, v.dtype)
                torch.mul(torch.fft.rfft2(vc, s=M)[:, None], conj, out=prod)
                torch.fft.irfft2(prod, s=M, out=corr)
                torch.mul(corr[..., :H, :W], maps, out=weighted)
                torch.bmm(gc[:, None, :], weighted.reshape(c, K, H * W),
                          out=out[start:start + c].view(c, 1, H * W))
            return out
        outs = []
        for start in range(0, n, step):
            vc, gc = v[start:start + step], gamma[start:start + step]
            c = vc.shape[0]
            spec = torch.fft.rfft2(vc, s=M)  # (c, M1, M2r)
            corr = torch.fft.irfft2(spec[:, None] * conj, s=M)[..., :H, :W]
            weighted = (corr * maps).reshape(c, K, H * W)
            outs.append(torch.bmm(gc[:, None, :], weighted).reshape(c, H, W))
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _adjoint_work(self, c, device, dtype):
        """Work arrays of the adjoint (see :meth:`_work`)."""
        def make(c):
            K, (H, W) = self.n_components, self.image_shape
            M1, M2 = self.fft_shape
            cdtype = (torch.ones((), dtype=dtype) * 1j).dtype
            return (
                torch.empty((c, K, M1, M2 // 2 + 1), dtype=cdtype, device=device),
                torch.empty((c, K, M1, M2), dtype=dtype, device=device),
                torch.empty((c, K, H, W), dtype=dtype, device=device))
        return self._work("adjoint", c, device, dtype, make)

    def normal(self, u, gamma):
        """``H^T H u`` (the gradient of ``||H u - y||^2 / 2`` without ``y``)."""
        return self.adjoint(self.forward(u, gamma), gamma)


def product_convolution(u, gamma, kernels, maps, boundary="zero"):
    """Functional form of :meth:`ProductConvolution.forward`.

    Builds the operator on every call (no spectra cache across calls): use
    :class:`ProductConvolution` when applying the same family repeatedly.
    """
    return ProductConvolution(kernels, maps, boundary).forward(u, gamma)


def product_convolution_adjoint(v, gamma, kernels, maps, boundary="zero"):
    """Functional form of :meth:`ProductConvolution.adjoint`."""
    return ProductConvolution(kernels, maps, boundary).adjoint(v, gamma)


def dense_matrix(op, gamma, dtype=torch.float64):
    """The operator as an explicit ``(H*W, H*W)`` matrix (small sizes only).

    Column ``j`` is ``H[gamma]`` applied to the ``j``-th canonical image. Used
    by the tests and by solvers' references (cvxpy).
    """
    H, W = op.image_shape
    eye = torch.eye(H * W, dtype=dtype).reshape(H * W, H, W)
    g = torch.as_tensor(np.asarray(gamma), dtype=dtype)
    cols = op.forward(eye, g.reshape(1, -1)).reshape(H * W, H * W)
    return cols.T.contiguous()
