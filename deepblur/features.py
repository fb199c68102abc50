"""Contrast-free statistics of the blur of an image, for linear blur estimation.

:func:`blur_features` turns each image into a fixed-length vector that a
linear model maps to the coefficients ``gamma`` of its blur
(:class:`~deepblur.SpectralBlurRegressor`):

- **local spectra**: per ``window`` x ``window`` block (a grid of blocks
  ``stride`` pixels apart, by default without overlap), the power spectrum
  of the Hann-windowed, mean-removed block, averaged in ``n_radial`` x
  ``n_angular`` bins (radius up to Nyquist, angle over ``[0, pi)``), in log
  and with its mean over the bins removed. A blur
  multiplies the block's spectrum by ``|h_hat|^2`` (the local PSF's), which
  the log turns into an offset; removing the mean makes the vector
  independent of the block's contrast and brightness.
- **edge profiles** (``border > 0``): the mean intensity of the first
  ``border`` rows (columns) along each edge, in ``n_segments`` segments per
  edge, relative to the image's mean. With a zero boundary the blur spreads
  the border's darkness inward by the width of the local PSF; on windows of
  larger scenes they carry little.
- **the mean** and its log: the gain of the operator (the clean images of
  the simulator have a known mean, see :func:`~deepblur.datasets.blur_images`).

All but the last two are divided by the image's mean first, so that they do
not depend on its intensity scale.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import torch

from deepblur._validation import (
    as_tensor,
    check_finite,
    check_ndim,
    check_positive_int_pair,
)

__all__ = ["blur_features", "check_feature_params", "n_blur_features"]


def _spectral_bins(window, n_radial, n_angular):
    """Bin index of each non-DC frequency of a ``window``-point 2-D FFT."""
    freq = torch.fft.fftfreq(window, dtype=torch.float64)
    fy, fx = freq[:, None], freq[None]
    radius = torch.sqrt(fy**2 + fx**2).flatten()
    angle = (torch.atan2(fy, fx) % math.pi).flatten()
    # Frequencies on a bin edge (e.g. the diagonals) go to the upper bin
    # whatever the rounding of atan2.
    rb = torch.clamp((radius / 0.5 * n_radial + 1e-9).long(), max=n_radial - 1)
    ab = torch.clamp((angle / math.pi * n_angular + 1e-9).long(),
                     max=n_angular - 1)
    keep = radius > 0
    index = (rb * n_angular + ab)[keep]
    counts = torch.bincount(index, minlength=n_radial * n_angular)
    return keep, index, counts


def _check_spec(image_shape, window, n_radial, n_angular, border, n_segments,
                stride=None):
    H, W = (int(s) for s in image_shape)
    if stride is not None and (not isinstance(stride, (int, np.integer))
                               or isinstance(stride, bool)
                               or stride < 1):
        raise ValueError(f"stride must be None or an integer >= 1; got {stride!r}.")
    for name, value, low in (("window", window, 4), ("n_radial", n_radial, 1),
                             ("n_angular", n_angular, 1), ("border", border, 0),
                             ("n_segments", n_segments, 1)):
        if (not isinstance(value, (int, np.integer)) or isinstance(value, bool)
                or value < low):
            raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")
    if window > min(H, W):
        raise ValueError(
            f"window must be at most the images' smaller side {min(H, W)} "
            f"(images {H}x{W}); got {window}."
        )
    if border and (2 * border > min(H, W) or n_segments > min(H, W)):
        raise ValueError(
            f"border ({border}) must be at most half the images' smaller side "
            f"and n_segments ({n_segments}) at most that side ({min(H, W)})."
        )


def n_blur_features(image_shape, *, window=32, n_radial=6, n_angular=4, border=12,
                    n_segments=4, stride=None):
    """Length of the vectors :func:`blur_features` returns for ``image_shape``.

    Parameters
    ----------
    image_shape : int or (H, W)
        The images' shape (an int: square), positive.
    window, n_radial, n_angular, border, n_segments, stride
        As in :func:`blur_features`.

    Returns
    -------
    int

    Raises
    ------
    ValueError
        If ``image_shape`` is not a positive int or pair of positive ints, a
        parameter is out of its range or the blocks or edge strips do not
        fit in the images.

    Examples
    --------
    >>> n_blur_features((128, 128))
    578
    """
    image_shape = check_positive_int_pair(image_shape, "image_shape")
    _check_spec(image_shape, window, n_radial, n_angular, border, n_segments,
                stride)
    H, W = image_shape
    _, _, counts = _spectral_bins(window, n_radial, n_angular)
    step = stride or window
    n_blocks = ((H - window) // step + 1) * ((W - window) // step + 1)
    n_border = 4 * border * n_segments if border else 0
    return n_blocks * int((counts > 0).sum()) + n_border + 2


def check_feature_params(params, image_shape=None):
    """Check a dict of :func:`blur_features` parameters (a network's
    ``blur_features``) before any work, and return the number of statistics.

    Parameters
    ----------
    params : dict or None
        Keyword arguments of :func:`blur_features` (``batch_size`` aside);
        None: its defaults.
    image_shape : int or (H, W), optional
        The images' (an int: square): the blocks and edge strips must fit in
        them. Without it only the names and values of the parameters are
        checked.

    Returns
    -------
    int or None
        :func:`n_blur_features` for ``image_shape`` (None without it).

    Examples
    --------
    >>> check_feature_params({"window": 16}, (128, 128))
    1602
    >>> check_feature_params({"windo": 16})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: blur_features has an unknown parameter 'windo'; known: border, ...
    """
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError(
            "blur_features must be None or a dict of parameters of "
            f"deepblur.features.blur_features; got {params!r}."
        )
    for name in params:
        if name not in _FEATURE_DEFAULTS:
            raise ValueError(f"blur_features has an unknown parameter {name!r}; "
                             f"known: {', '.join(sorted(_FEATURE_DEFAULTS))}.")
    if image_shape is None:     # the values alone: any size fits
        _check_spec((2**31, 2**31), **dict(_FEATURE_DEFAULTS, **params))
        return None
    if isinstance(image_shape, (int, np.integer)) and not isinstance(
            image_shape, bool):
        image_shape = (int(image_shape),) * 2
    return int(n_blur_features(image_shape, **params))


# The statistics' parameters and their defaults, as :func:`n_blur_features`
# (and :func:`blur_features`, ``batch_size`` aside) declares them.
_FEATURE_DEFAULTS = {name: p.default for name, p in
                    inspect.signature(n_blur_features).parameters.items()
                    if name != "image_shape"}


def _features(x, window, n_radial, n_angular, border, n_segments, stride):
    """Features of a float64 batch ``x`` (n, H, W) of positive-mean images."""
    mean = x.mean((1, 2), keepdim=True)
    x = x / mean
    hann = torch.hann_window(window, periodic=False, dtype=x.dtype, device=x.device)
    step = stride or window
    tiles = x.unfold(1, window, step).unfold(2, window, step)
    tiles = (tiles - tiles.mean((-1, -2), keepdim=True)) * (hann[:, None] * hann)
    power = torch.fft.fft2(tiles).abs().square().flatten(-2)
    keep, index, counts = _spectral_bins(window, n_radial, n_angular)
    keep, index, counts = (keep.to(x.device), index.to(x.device),
                           counts.to(x.device))
    bins = torch.zeros(*power.shape[:-1], counts.numel(), dtype=x.dtype,
                       device=x.device).index_add_(-1, index, power[..., keep])
    used = counts > 0
    # The floor keeps flat blocks finite (their bins are all equal, hence 0
    # once the mean is removed).
    logp = torch.log(bins[..., used] / counts[used] + 1e-8)
    logp = logp - logp.mean(-1, keepdim=True)
    parts = [logp.flatten(1)]
    if border:
        d = border
        edges = [x[:, :d], x[:, -d:].flip(1),
                 x[:, :, :d].transpose(1, 2), x[:, :, -d:].flip(2).transpose(1, 2)]
        for e in edges:
            seg = e.shape[2] // n_segments
            profile = e[:, :, :seg * n_segments].unfold(2, seg, seg).mean(-1)
            parts.append(profile.flatten(1))
    mean = mean.flatten(1)
    parts += [mean, mean.log()]
    return torch.cat(parts, 1)


def blur_features(X, *, window=32, n_radial=6, n_angular=4, border=12,
                  n_segments=4, stride=None, batch_size=512):
    """Contrast-free blur statistics of images (see the module notes).

    Parameters
    ----------
    X : array-like or tensor of shape (n, H, W) or (H, W)
        Blurry images with a positive mean intensity, real (complex ones are
        refused, not cast).
    window : int, default=32
        Side of the blocks of the local spectra (a grid from the top-left
        corner; ``H // window`` x ``W // window`` blocks by default).
    n_radial, n_angular : int, default=6, 4
        Bins of the spectra in radius and angle.
    border : int, default=12
        Rows/columns of the edge profiles; 0 leaves them out.
    n_segments : int, default=4
        Segments per edge of the edge profiles.
    stride : int, default=None
        Step between blocks (``None``: ``window``, no overlap).
    batch_size : int, default=512
        Images per vectorised pass, at least 1 (bounds the memory: the
        spectra of one pass take about ``batch_size * H * W * 32`` bytes).

    Returns
    -------
    ndarray of shape (n, n_features) or (n_features,), float64
        ``n_features = n_blur_features(X.shape[-2:], ...)``; no rows for an
        empty batch (``n == 0``).

    Raises
    ------
    ValueError
        If ``X`` is not one real, finite image or a batch of them with a
        positive mean each, a parameter is out of its range (``batch_size``
        included) or the blocks or edge strips do not fit in the images.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.random((3, 64, 64)) + 0.5
    >>> F = blur_features(X)
    >>> F.shape, n_blur_features((64, 64))
    ((3, 290), 290)
    >>> # brightness-free, but for the last two columns (the mean and its log)
    >>> bool(np.allclose(blur_features(7 * X)[:, :-2], F[:, :-2]))
    True
    """
    t, _ = as_tensor(X, name="X")
    check_ndim(t, "X", (2, 3), "(H, W) or (n, H, W)")
    single = t.ndim == 2
    t = t[None] if single else t
    _check_spec(t.shape[-2:], window, n_radial, n_angular, border, n_segments,
                stride)
    if (not isinstance(batch_size, (int, np.integer))
            or isinstance(batch_size, bool) or batch_size < 1):
        raise ValueError(
            f"batch_size must be an integer >= 1; got {batch_size!r}."
        )
    batch_size = int(batch_size)
    t = t.detach().cpu().to(torch.float64)
    check_finite(t, "X")
    if len(t) == 0:     # no image, no statistics (torch.cat takes no empty list)
        return np.zeros((0, n_blur_features(
            t.shape[-2:], window=window, n_radial=n_radial, n_angular=n_angular,
            border=border, n_segments=n_segments, stride=stride)))
    means = t.mean((1, 2))
    if not bool((means > 0).all()):
        bad = int(torch.nonzero(means <= 0)[0, 0])
        raise ValueError(
            "X must hold images of positive mean intensity (the statistics are "
            f"relative to the mean); image {bad} has mean {float(means[bad]):.3g}."
        )
    out = torch.cat([_features(t[i:i + batch_size], window, n_radial,
                               n_angular, border, n_segments, stride)
                     for i in range(0, len(t), batch_size)])
    out = out.numpy()
    return out[0] if single else out
