"""Figures: operators on a Dirac comb (paper Fig. 2c), kernels and maps, and
blind deblurring (paper Fig. 3).

matplotlib is imported when a figure is made, not when deepblur is imported.
Every function returns the matplotlib ``Figure`` so that callers can save it.
"""

from __future__ import annotations

import numbers
from contextlib import contextmanager

import numpy as np

from deepblur._validation import check_positive_int_pair

__all__ = ["dirac_comb", "plot_blind_deblurring", "plot_components",
           "plot_operator"]


def dirac_comb(image_shape, spacing=16, offset=None):
    """An image of Diracs on a regular grid (the operator's PSFs made visible).

    Parameters
    ----------
    image_shape : (H, W)
    spacing : int or (int, int), default=16
        Distance between two Diracs, in pixels.
    offset : int or (int, int), optional
        Position of the first Dirac (0: the first row or column); default
        half a spacing.

    Returns
    -------
    ndarray of shape (H, W), ones at the Diracs and zeros elsewhere.

    Examples
    --------
    >>> dirac_comb((8, 8), spacing=4).sum()
    np.float64(4.0)
    """
    H, W = check_positive_int_pair(image_shape, "image_shape")
    sy, sx = check_positive_int_pair(spacing, "spacing")
    oy, ox = (sy // 2, sx // 2) if offset is None else check_positive_int_pair(
        offset, "offset", allow_zero=True)
    if oy >= H or ox >= W:
        raise ValueError(f"offset {(oy, ox)} must lie inside the {(H, W)} image "
                         "(the comb would be empty).")
    comb = np.zeros((H, W))
    comb[oy::sy, ox::sx] = 1.0
    return comb


def _check_basis(basis):
    """``basis``, checked fitted: an unfitted one failed with an
    ``AttributeError`` on ``image_shape_``, ``kernels_`` or ``gram_``."""
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(basis, "gram_", msg=(
        "basis must be a fitted ProductConvolutionBasis (fit it, or build it "
        "with ProductConvolutionBasis.from_components); got an unfitted "
        "%(name)s."))
    return basis


def _as_float64(x):
    """``x`` as a float64 array; a tensor on any device, recording a graph or
    in bfloat16 too (numpy's conversion refuses all three)."""
    import torch

    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.to(torch.float64) if x.is_floating_point() else x
        x = x.numpy()
    return np.asarray(x, dtype=np.float64)


def _check_panel(img, name, shape):
    """One image of a figure, of shape (H, W) (``shape`` when given)."""
    img = _as_float64(img)
    if img.ndim != 2 or (shape is not None and img.shape != shape):
        want = f"the shape of original {shape}" if shape is not None else "(H, W)"
        raise ValueError(f"{name} must be one image of {want}; got an array "
                         f"of shape {img.shape}.")
    return img


def _one_gamma(gamma, name, K):
    """One operator's coefficients, of shape (K,) (or (1, K))."""
    g = _as_float64(gamma)
    if g.size != K or g.ndim > 2 or (g.ndim == 2 and g.shape[0] != 1):
        raise ValueError(f"{name} must have shape (K,) = ({K},), one operator's "
                         f"coefficients; got shape {g.shape}.")
    return g.reshape(-1)


@contextmanager
def _closed_on_error(fig):
    """Close ``fig`` when drawing it fails: a caller that catches the error
    is not left with an open figure (pyplot keeps every one alive)."""
    try:
        yield fig
    except BaseException:
        import matplotlib.pyplot as plt

        plt.close(fig)
        raise


def _axes_grid(n, ncols, size=2.4):
    import matplotlib.pyplot as plt

    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows),
                             squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig, axes.ravel()


def plot_operator(basis, gamma, *, spacing=None, titles=None, cmap="magma"):
    """Show one or several operators ``H[gamma]`` applied to a Dirac comb.

    Parameters
    ----------
    basis : fitted :class:`deepblur.ProductConvolutionBasis`
    gamma : array-like or torch.Tensor of shape (K,) or (n, K)
        One panel per row of ``gamma`` (e.g. the true and the estimated
        operator side by side, as in paper Fig. 3).
    spacing : int, optional
        Dirac spacing; default about 1.5 kernel widths.
    titles : list of str, optional
    cmap : str, default="magma"

    Returns
    -------
    matplotlib.figure.Figure
    """
    _check_basis(basis)
    gamma = np.atleast_2d(_as_float64(gamma))
    if len(gamma) == 0:
        raise ValueError(f"gamma must hold at least one operator's coefficients; "
                         f"got shape {gamma.shape}.")
    if titles is not None and len(titles) != len(gamma):
        raise ValueError(f"titles must have one entry per operator ({len(gamma)}); "
                         f"got {len(titles)}.")
    H, W = basis.image_shape_
    if spacing is None:
        spacing = max(4, int(1.5 * max(basis.kernel_shape_)))
    comb = dirac_comb((H, W), spacing)
    responses = basis.apply(comb, gamma)
    if responses.ndim == 2:
        responses = responses[None]
    fig, axes = _axes_grid(len(gamma), len(gamma), size=3.2)
    with _closed_on_error(fig):
        vmax = float(np.max(responses))
        for i, (ax, img) in enumerate(zip(axes, responses, strict=False)):
            # a power scale shows the tails of the PSFs as well as their cores
            ax.imshow(np.clip(img, 0, None) ** 0.5, cmap=cmap, vmin=0,
                      vmax=vmax**0.5)
            if titles is not None:
                ax.set_title(titles[i], fontsize=9)
        fig.tight_layout()
    return fig


def plot_components(basis, *, n_max=8, cmap="viridis"):
    """Kernels ``e_k`` (top row) and maps ``f_k`` (bottom row) of a basis.

    Parameters
    ----------
    basis : fitted :class:`deepblur.ProductConvolutionBasis`
    n_max : int, default=8
        Show the first ``n_max`` components (sorted by explained energy).
    cmap : str, default="viridis"

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    if (not isinstance(n_max, numbers.Integral) or isinstance(n_max, bool)
            or n_max < 1):
        raise ValueError(f"n_max must be a positive int; got {n_max!r}.")
    _check_basis(basis)
    n = min(n_max, basis.kernels_.shape[0])
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.6), squeeze=False)
    with _closed_on_error(fig):
        for k in range(n):
            axes[0, k].imshow(basis.kernels_[k], cmap=cmap)
            axes[0, k].set_title(f"$e_{{{k + 1}}}$", fontsize=10)
            axes[1, k].imshow(basis.maps_[k], cmap=cmap)
            axes[1, k].set_title(f"$f_{{{k + 1}}}$", fontsize=10)
            for ax in axes[:, k]:
                ax.set_axis_off()
        fig.tight_layout()
    return fig


def plot_blind_deblurring(basis, gamma, gamma_hat, blurry, original, deblurred, *,
                          deblurred_true=None, spacing=None, cmap="gray",
                          operator_cmap="magma", blurry_gain=None):
    """Paper Fig. 3: true and estimated operators, blurry, original, deblurred.

    The operators ``H[gamma]`` and ``H[gamma_hat]`` are shown on a Dirac comb
    (as in :func:`plot_operator`); the titles give the relative operator error
    ``||H[gamma] - H[gamma_hat]||_F / ||H[gamma]||_F`` and the SNR (dB,
    :func:`deepblur.metrics.snr` against ``original``) of the blurry and
    deblurred images. The blurry image's is taken at the original's
    brightness: divided by the gain of ``H[gamma]`` (by default its mean on
    a flat image, or ``blurry_gain``; given in the title; the raw image's
    SNR when the gain is not positive), as
    :func:`deepblur.pretrained.simulate_blind_deblurring` reports it (given
    its ``blurry_gain``) and ``deepblur demo`` prints it; undivided, it
    would mostly measure the gain.

    Parameters
    ----------
    basis : fitted :class:`deepblur.ProductConvolutionBasis`
    gamma, gamma_hat : array-like or torch.Tensor of shape (K,)
        True and estimated coefficients.
    blurry, original, deblurred : array-like or torch.Tensor of shape (H, W)
        Observation, clean image and image deblurred with ``gamma_hat``.
    deblurred_true : array-like or torch.Tensor of shape (H, W), optional
        Image deblurred with the true ``gamma`` (an extra panel, the best the
        deblurring can do with a perfect estimate).
    spacing : int, optional
        Dirac spacing; default about 1.5 kernel widths.
    cmap : str, default="gray"
        Colour map of the images, each shown on its own intensity range (the
        blurry image is brighter or darker than the original by the gain of
        the operator, which its SNR divides out).
    operator_cmap : str, default="magma"
    blurry_gain : float, optional
        The gain the blurry image is divided by for its SNR; default the
        gain of ``H[gamma]`` on a flat image (:func:`operator_gain
        <deepblur.pretrained.operator_gain>`). A window of a larger scene
        (``boundary="crop"``) has the interior's gain: pass the
        ``blurry_gain`` of
        :func:`~deepblur.pretrained.simulate_blind_deblurring`.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    from deepblur.metrics import snr
    from deepblur.pretrained import operator_gain

    K = int(np.asarray(_check_basis(basis).gram_).shape[0])
    gamma, gamma_hat = (_one_gamma(g, name, K) for g, name in
                        ((gamma, "gamma"), (gamma_hat, "gamma_hat")))
    original = _check_panel(original, "original", None)
    H, W = basis.image_shape_
    if spacing is None:
        spacing = max(4, int(1.5 * max(basis.kernel_shape_)))
    responses = basis.apply(dirac_comb((H, W), spacing), np.stack([gamma, gamma_hat]))
    error = float(basis.operator_distance(gamma, gamma_hat))
    gain = (operator_gain(basis, gamma) if blurry_gain is None
            else float(blurry_gain))
    if not np.isfinite(gain):
        raise ValueError(
            f"blurry_gain must be finite; got {blurry_gain!r}" + (
                f" (computed: the gain of H[gamma] on a flat image is {gain})"
                if blurry_gain is None else "") + ".")
    panels = [(_check_panel(blurry, "blurry", original.shape), "blurry-noisy"),
              (original, "original"),
              (_check_panel(deblurred, "deblurred", original.shape),
               "deblurred (estimate)")]
    if deblurred_true is not None:
        panels.append((_check_panel(deblurred_true, "deblurred_true",
                                    original.shape),
                       "deblurred (true operator)"))
    # the SNRs first: images that cannot be scored fail before a figure exists
    titled = []
    for img, title in panels:
        if title == "blurry-noisy" and gain > 0:
            title = (f"{title} (gain {gain:.2f})\nSNR "
                     f"{snr(original, img / gain):.2f} dB")
        elif title == "blurry-noisy":        # no brightness to divide out
            title = (f"{title} (gain {gain:.2f})\nSNR "
                     f"{snr(original, img):.2f} dB, raw")
        elif title != "original":
            title = f"{title}\nSNR {snr(original, img):.2f} dB"
        titled.append((img, title))
    n = 2 + len(panels)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.3), squeeze=False)
    with _closed_on_error(fig):
        axes = axes[0]
        vmax = float(np.max(responses)) ** 0.5
        op_titles = ["true operator",
                     f"estimated operator\nrelative error {100 * error:.1f} %"]
        for ax, img, title in zip(axes[:2], responses, op_titles, strict=True):
            ax.imshow(np.clip(img, 0, None) ** 0.5, cmap=operator_cmap, vmin=0,
                      vmax=vmax)
            ax.set_title(title, fontsize=9)
        for ax, (img, title) in zip(axes[2:], titled, strict=True):
            ax.imshow(img, cmap=cmap)
            ax.set_title(title, fontsize=9)
        for ax in axes:
            ax.set_axis_off()
        fig.tight_layout()
    return fig
