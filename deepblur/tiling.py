r"""Blind estimation and deblurring of images larger than the model's input.

The regressor estimates the blur of images of one shape, the basis'
``image_shape`` ``(h, w)`` (128x128 for the shipped model). A larger image is
handled in three steps:

1. :func:`tile_grid` cuts it into overlapping tiles of shape ``(h, w)``
   (``stride`` apart, the last row and column of tiles flush with the border)
   and :func:`estimate_tiles` predicts one coefficient vector
   :math:`\hat\gamma_t` per tile.
2. :func:`partition_of_unity` gives smooth weights :math:`w_t(x)`, each
   supported on its tile, with :math:`\sum_t w_t(x) = 1` at every pixel.
   :func:`stitched_maps` blends the tiles' operators into one
   product-convolution expansion of the whole image with the *same* ``K``
   kernels and the maps

   .. math:: F_k(x) = \sum_t \hat\gamma_{t,k}\, w_t(x)\, f_k(x - o_t)

   (the basis map :math:`f_k` placed at the tile's offset :math:`o_t`), so
   that :math:`H u = \sum_k e_k * (F_k \odot u)`:
   :func:`stitched_operator` is ``ProductConvolution(kernels, F)`` applied
   with ``gamma = ones(K)``. At a pixel covered by one tile only, and farther
   than the kernel radius from every other tile, it is exactly the tile's
   operator :math:`H[\hat\gamma_t]`.
3. :func:`deblur_stitched` solves the TV problem with that operator, in one
   piece when the image has at most ``max_pixels`` pixels, else block by
   block: each block's core is solved inside a window enlarged by ``margin``
   pixels per side (never fewer than the kernel radius) and only the core is
   kept. With ``boundary="unknown"`` the image is extended by half a kernel
   on each side, the unknown scene there is estimated with the image and
   dropped, so the border of a window on a larger scene does not blow up.
   :func:`deblur_large` chains the three steps for a trained model, with the
   intensity and boundary conventions of
   :func:`deepblur.pretrained.deblur_image`.

The windows are squared sines, :math:`\sin^2(\pi (i + 1/2) / h)` at offset
``i`` in the tile, normalised per axis by their sum; the weights are separable,
``w_t(r, c) = a_i(r) b_j(c)``, hence sum to one exactly in 2-D as well. Where
one tile only covers a pixel (the image's borders) its weight is 1.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from tqdm.auto import tqdm

from deepblur._validation import (
    check_image_mean,
    check_positive_int_pair,
    native_contiguous,
    resolve_device,
    scalar_value,
    user_stacklevel,
)
from deepblur.estimators._gamma import (
    gathered_support_message,
    image_noise_levels,
    noise_check_sample,
    noise_check_suspended,
    noisy_images_message,
    support_distances_gathered,
)
from deepblur.exceptions import (
    NoisyImageWarning,
    NoPointSourceError,
    OutOfSupportWarning,
)
from deepblur.operators.product_convolution import ProductConvolution
from deepblur.solvers.tv import (
    LIPSCHITZ_SAFETY,
    REGULARIZATIONS,
    check_iterations,
    convergence_warnings_suspended,
    deblur,
    default_lam,
    stall_message,
    warn_if_counts,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "LargeDeblurResult",
    "SolveBlock",
    "TileGrid",
    "deblur_large",
    "deblur_stitched",
    "estimate_tiles",
    "extended_problem",
    "partition_of_unity",
    "solve_blocks",
    "stitched_maps",
    "stitched_operator",
    "tile_gains",
    "tile_grid",
]

#: Default cap on the pixels of one deblurring solve (window with margins):
#: 1024x1024. The solver's memory grows with the window's pixels (the maps,
#: the kernel spectra, the FFT work arrays of the forward and of the adjoint):
#: measured peak 1.2 GB for a 1024x1024 window and 0.36 GB for 512x512, K = 20,
#: float32 (``benchmarks/README.md``, "Large images").
DEFAULT_MAX_PIXELS = 1024 * 1024

# Below this many tiles (or blocks) no progress bar is shown by default.
_PROGRESS_MIN = 64

# Held while deblur_large has moved a network to another device.
_NETWORK_MOVES = threading.RLock()


# --------------------------------------------------------------------- grid
@dataclass(frozen=True)
class TileGrid:
    """Overlapping tiles of an image: where each tile starts.

    Built by :func:`tile_grid`. Tiles are numbered row-major: tile
    ``t = i * n_cols + j`` starts at ``(row_starts[i], col_starts[j])``.

    Attributes
    ----------
    image_shape : tuple of int (H, W)
    tile_shape : tuple of int (h, w)
    row_starts, col_starts : tuple of int
        Offsets of the rows and columns of tiles, increasing; the first is 0
        and the last is ``H - h`` (resp. ``W - w``).
    """

    image_shape: tuple
    tile_shape: tuple
    row_starts: tuple
    col_starts: tuple

    @property
    def shape(self):
        """Number of tiles per axis, ``(n_rows, n_cols)``."""
        return (len(self.row_starts), len(self.col_starts))

    @property
    def n_tiles(self):
        """Total number of tiles."""
        return len(self.row_starts) * len(self.col_starts)

    @property
    def offsets(self):
        """ndarray of shape (n_tiles, 2): ``(row, col)`` of each tile's corner."""
        r, c = np.meshgrid(self.row_starts, self.col_starts, indexing="ij")
        return np.stack([r.ravel(), c.ravel()], axis=1).astype(np.int64)

    def tile_slices(self, t):
        """``(rows, cols)`` slices of tile ``t`` in the image."""
        i, j = divmod(int(t), len(self.col_starts))
        r, c = self.row_starts[i], self.col_starts[j]
        h, w = self.tile_shape
        return slice(r, r + h), slice(c, c + w)


def _axis_starts(n, t, s):
    starts = list(range(0, n - t + 1, s))
    if starts[-1] != n - t:
        starts.append(n - t)
    return tuple(int(v) for v in starts)


def _check_image_shape(image_shape, tile_shape, name="image"):
    if image_shape[0] < tile_shape[0] or image_shape[1] < tile_shape[1]:
        raise ValueError(
            f"{name} of shape {tuple(image_shape)} is smaller than one tile "
            f"{tuple(tile_shape)} (the model's input shape) along "
            f"{'rows' if image_shape[0] < tile_shape[0] else 'columns'}: the "
            "tiled estimation needs at least one full tile; pad the image or "
            "use a model of a smaller input shape."
        )


def tile_grid(image_shape, tile_shape, stride=None):
    """Overlapping tiles of ``tile_shape`` covering an image of ``image_shape``.

    Along each axis the tiles start at ``0, stride, 2 stride, ...`` and one
    more tile is added flush with the far border when the last regular one
    does not reach it, so every pixel is covered and no tile sticks out.

    Parameters
    ----------
    image_shape : int or tuple of int (H, W)
        At least ``tile_shape`` along both axes.
    tile_shape : int or tuple of int (h, w)
        The model's input shape (``basis.image_shape_``).
    stride : int or tuple of int, optional
        Offset between neighbouring tiles, at most the tile's size (no gaps).
        Default: half a tile (``h // 2``, ``w // 2``, at least 1).

    Returns
    -------
    grid : TileGrid

    Raises
    ------
    ValueError
        If the image is smaller than one tile, or ``stride`` is not in
        ``[1, tile size]``.

    Examples
    --------
    >>> grid = tile_grid((100, 128), (64, 64))
    >>> grid.row_starts, grid.col_starts, grid.n_tiles
    ((0, 32, 36), (0, 32, 64), 9)
    >>> tile_grid((64, 64), 64).n_tiles
    1
    """
    image_shape = check_positive_int_pair(image_shape, "image_shape")
    tile_shape = check_positive_int_pair(tile_shape, "tile_shape")
    if stride is None:
        stride = (max(1, tile_shape[0] // 2), max(1, tile_shape[1] // 2))
    stride = check_positive_int_pair(stride, "stride")
    if stride[0] > tile_shape[0] or stride[1] > tile_shape[1]:
        raise ValueError(
            f"stride {stride} must not exceed the tile shape {tile_shape}: "
            "larger strides leave pixels that no tile covers."
        )
    _check_image_shape(image_shape, tile_shape)
    return TileGrid(
        image_shape=image_shape, tile_shape=tile_shape,
        row_starts=_axis_starts(image_shape[0], tile_shape[0], stride[0]),
        col_starts=_axis_starts(image_shape[1], tile_shape[1], stride[1]),
    )


def _axis_weights(n, t, starts):
    x = np.arange(t, dtype=np.float64)
    profile = np.sin(np.pi * (x + 0.5) / t) ** 2      # > 0 on every pixel
    total = np.zeros(n)
    for s in starts:
        total[s:s + t] += profile
    return np.stack([profile / total[s:s + t] for s in starts])


def partition_of_unity(grid):
    """Separable smooth weights of the tiles, summing to one at every pixel.

    Tile ``t = i * n_cols + j`` has the weight
    ``w_t(r, c) = row_weights[i, r - row_starts[i]] *
    col_weights[j, c - col_starts[j]]`` on its pixels and 0 elsewhere. Each
    axis profile is a squared sine window divided by the sum of the windows
    covering the pixel, so ``sum_i a_i(r) = 1`` and ``sum_j b_j(c) = 1``
    exactly (to rounding) and therefore ``sum_t w_t = 1`` in 2-D, borders
    included (a pixel covered by one tile gets weight 1).

    Parameters
    ----------
    grid : TileGrid

    Returns
    -------
    row_weights : ndarray of shape (n_rows, h)
    col_weights : ndarray of shape (n_cols, w)

    Examples
    --------
    >>> import numpy as np
    >>> grid = tile_grid((10, 8), (4, 8), stride=(3, 8))
    >>> a, b = partition_of_unity(grid)
    >>> a.shape, b.shape
    ((3, 4), (1, 8))
    >>> total = np.zeros(10)
    >>> for s, w in zip(grid.row_starts, a):
    ...     total[s:s + 4] += w
    >>> bool(np.allclose(total, 1)), float(b.min())
    (True, 1.0)
    """
    (H, W), (h, w) = grid.image_shape, grid.tile_shape
    return (_axis_weights(H, h, grid.row_starts),
            _axis_weights(W, w, grid.col_starts))


# ----------------------------------------------------------------- estimate
def _check_large_image(image, tile_shape):
    if torch.is_tensor(image):
        image = image.detach().cpu().numpy()
    img = np.asarray(image)
    if img.dtype.kind not in "fiu":
        raise ValueError(f"image must hold real numbers; got dtype {img.dtype}.")
    if img.ndim != 2:
        raise ValueError(
            f"image must be 2-D (H, W) (one grayscale image); got shape {img.shape}."
        )
    _check_image_shape(img.shape, tile_shape)
    if not np.isfinite(img).all():
        raise ValueError("image must contain only finite values; got NaN or Inf.")
    return native_contiguous(img)


def _tile_shape_of(regressor, tile_shape):
    if tile_shape is not None:
        return check_positive_int_pair(tile_shape, "tile_shape")
    basis = getattr(regressor, "basis", None)
    shape = getattr(basis, "image_shape_", None)
    if shape is None:
        raise ValueError(
            "tile_shape must be given when the regressor has no fitted basis "
            "(regressor.basis.image_shape_ gives the model's input shape)."
        )
    return tuple(int(s) for s in shape)


def _progress(progress, n):
    if progress is None:
        return n < _PROGRESS_MIN
    return not bool(progress)


def estimate_tiles(image, regressor, tile_shape=None, *, stride=None,
                   target_mean=None, batch_size=64, progress=None,
                   check_boundary=True):
    """Predict the operator coefficients of every tile of a large image.

    Parameters
    ----------
    image : array-like or torch.Tensor of shape (H, W)
        Blurry image, at least ``tile_shape``, finite.
    regressor : object with ``predict(X) -> gamma``
        Typically a fitted :class:`~deepblur.ResNetBlurRegressor`; called on
        float32 batches of shape ``(n, h, w)`` and returning ``(n, K)``.
    tile_shape : tuple of int (h, w), optional
        The regressor's input shape; default ``regressor.basis.image_shape_``.
    stride : int or tuple of int, optional
        Offset between tiles (:func:`tile_grid`); default half a tile.
    target_mean : float, optional
        When given, every tile is multiplied by ``target_mean / mean(tile)``
        before predicting (the intensity convention of the shipped model,
        trained on crops of a fixed mean: see :mod:`deepblur.pretrained`).
        Tiles of non-positive mean (black, or signed) carry no blur that a
        regressor trained on intensities can read: they are not predicted
        and take the mean of the other tiles' estimates, with a warning; an
        image of non-positive mean is an error. ``None`` predicts on the
        tiles as they are. Likewise, tiles in which a point-source fit
        (:class:`~deepblur.PointSourceBlurEstimator`) finds no source take
        the mean of the others' estimates, with a warning; when no tile has
        one, :class:`~deepblur.exceptions.NoPointSourceError` is raised.
    batch_size : int, default=64
        Tiles per call to ``predict``.
    progress : bool, optional
        Show a progress bar over the batches; default: when there are at
        least 64 tiles.
    check_boundary : bool, default=True
        Warn when a regressor trained on zero-boundary images (its
        ``training_boundary_``) estimates the tiles of a larger image
        (see Warns); False when you know the scene is dark around each
        tile.

    Returns
    -------
    gamma_tiles : ndarray of shape (n_tiles, K), float64
        One coefficient vector per tile, in the grid's row-major order.
    grid : TileGrid

    Warns
    -----
    NoisyImageWarning
        Once for the image, when some of (at most 64 evenly spaced) tiles
        are far noisier than the regressor's ``noise_level_`` (for a wrapper
        without one, such as a pipeline, the level its regressor's
        ``predict`` checks against).
    OutOfSupportWarning
        Once for the image, when the estimates of some tiles lie farther
        than the regressor's ``support_tolerance`` from its sampler's
        support.
    BoundaryWarning
        When the image has more than one tile and the regressor was trained
        on zero-boundary images (``training_boundary_ == "zero"``, as the
        default network of :func:`~deepblur.pretrained.load_default`): the
        tiles are windows of a larger scene, without the dark fringe it
        reads the blur from.

    Examples
    --------
    >>> import numpy as np
    >>> class MeanRegressor:            # any object with predict works
    ...     def predict(self, X):
    ...         return np.asarray(X).mean(axis=(1, 2))[:, None]
    >>> image = np.tile(np.arange(96.0), (64, 1))
    >>> gamma, grid = estimate_tiles(image, MeanRegressor(), (64, 64))
    >>> grid.shape, gamma.ravel().tolist()
    ((1, 2), [31.5, 63.5])
    """
    tile_shape = _tile_shape_of(regressor, tile_shape)
    img = _check_large_image(image, tile_shape)
    if not (isinstance(batch_size, numbers.Integral) and batch_size >= 1):
        raise ValueError(f"batch_size must be a positive int; got {batch_size!r}.")
    grid = tile_grid(img.shape, tile_shape, stride)
    if _check_boundary_flag(check_boundary):
        _warn_if_windows(regressor, grid.n_tiles)
    image_factor = _tile_factor(img, target_mean)
    offsets = grid.offsets
    h, w = tile_shape
    out, levels, level_means, distances, blank, sourceless = [], [], [], [], [], []
    noise_level = getattr(regressor, "noise_level_", None)
    if noise_level is not None and not noise_level > 0:
        noise_level = None          # trained without noise: nothing to check
    # a wrapper (a pipeline, a search) has no noise_level_ of its own: the
    # level its regressor's predict would check against is heard below
    measure = noise_level is not None or not hasattr(regressor, "noise_level_")
    heard = []
    checked = np.zeros(grid.n_tiles, dtype=bool)       # tiles whose noise is checked
    checked[noise_check_sample(grid.n_tiles)] = True
    starts = range(0, grid.n_tiles, batch_size)
    for start in tqdm(starts, desc="estimating tiles", unit="batch",
                      disable=_progress(progress, grid.n_tiles)):
        batch = np.stack([img[r:r + h, c:c + w]
                          for r, c in offsets[start:start + batch_size]])
        batch = batch.astype(np.float64)
        ok = np.ones(len(batch), dtype=bool)
        if image_factor is not None:
            means = batch.mean(axis=(1, 2))
            ok = means > 0
            blank.extend(start + np.flatnonzero(~ok))
            batch = batch[ok] * (target_mean / means[ok])[:, None, None]
        batch = batch.astype(np.float32)
        if len(batch):
            # the noise and the support are checked once for the image, below
            with noise_check_suspended() as levels_of_predict, \
                    support_distances_gathered() as far:
                try:
                    pred = regressor.predict(batch)
                except NoPointSourceError as exc:
                    if exc.estimates is None:
                        raise
                    # a point-source fit: tiles without a bead are empty
                    pred = exc.estimates
                    kept = start + np.flatnonzero(ok)
                    sourceless.extend(kept[exc.images])
            distances.extend(far)
            heard.extend(levels_of_predict)
            if torch.is_tensor(pred):
                pred = pred.detach().cpu().numpy()
            pred = np.asarray(pred, dtype=np.float64)
            if pred.ndim != 2 or pred.shape[0] != batch.shape[0]:
                raise ValueError(
                    "regressor.predict must return one row of coefficients per "
                    f"tile, shape ({batch.shape[0]}, K); got shape {pred.shape}."
                )
            out.append(pred)
        sample = checked[start:start + batch_size][ok]
        if measure and sample.any():
            levels.append(image_noise_levels(batch[sample]))
            # (the message says when they look unscaled rather than noisy)
            level_means.append(batch[sample].mean(axis=(1, 2), dtype=np.float64))
    if noise_level is None and heard:
        noise_level = max(heard)
    message = (noisy_images_message(np.concatenate(levels), noise_level, "tiles",
                                    n_total=grid.n_tiles,
                                    means=np.concatenate(level_means))
               if levels else None)
    if message is not None:
        warnings.warn(message, NoisyImageWarning, stacklevel=user_stacklevel())
    message = gathered_support_message(distances, "tiles")
    if message is not None:
        warnings.warn(message, OutOfSupportWarning, stacklevel=user_stacklevel())
    if not out:
        raise ValueError(
            "every tile has a non-positive mean intensity: no tile's blur can "
            "be read (the image's positive mean comes from tiles' overlaps)."
        )
    predicted = np.concatenate(out)
    gamma = np.empty((grid.n_tiles, predicted.shape[1]))
    done = np.ones(grid.n_tiles, dtype=bool)
    done[np.asarray(blank, dtype=int)] = False
    gamma[done] = predicted
    read = done.copy()
    read[np.asarray(sourceless, dtype=int)] = False
    if not read.any():
        raise NoPointSourceError(
            f"no tile holds a point source above the threshold ({len(sourceless)} "
            f"tile(s) without one, {len(blank)} of non-positive mean): lower the "
            "threshold, or use an estimator for extended images.")
    if not np.isfinite(gamma[read]).all():
        raise ValueError("regressor.predict returned NaN or Inf coefficients.")
    if sourceless:
        gamma[~read & done] = gamma[read].mean(axis=0)
        shown = ", ".join(str(tuple(int(v) for v in offsets[t]))
                          for t in sourceless[:5])
        more = f" and {len(sourceless) - 5} more" if len(sourceless) > 5 else ""
        warnings.warn(
            f"{len(sourceless)} of {grid.n_tiles} tiles hold no point source "
            f"above the threshold (offsets {shown}{more}): they take the mean of "
            "the other tiles' estimates.", UserWarning, stacklevel=user_stacklevel())
    if blank:
        gamma[~done] = gamma[read].mean(axis=0)
        shown = ", ".join(str(tuple(int(v) for v in offsets[t])) for t in blank[:5])
        more = f" and {len(blank) - 5} more" if len(blank) > 5 else ""
        warnings.warn(
            f"{len(blank)} of {grid.n_tiles} tiles have a non-positive mean "
            f"intensity (black or signed; offsets {shown}{more}): their blur "
            "cannot be read, they take the mean of the other tiles' estimates.",
            UserWarning, stacklevel=user_stacklevel())
    return gamma, grid


# ------------------------------------------------------------------ stitch
def _check_window(window, image_shape):
    if window is None:
        return (0, image_shape[0], 0, image_shape[1])
    try:
        r0, r1, c0, c1 = (int(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(
            "window must be (row_start, row_stop, col_start, col_stop); got "
            f"{window!r}."
        ) from None
    if not (0 <= r0 < r1 <= image_shape[0] and 0 <= c0 < c1 <= image_shape[1]):
        raise ValueError(
            f"window {window!r} must be a non-empty part of the image of shape "
            f"{tuple(image_shape)}."
        )
    return r0, r1, c0, c1


def stitched_maps(gamma_tiles, maps, grid, *, window=None, dtype=np.float64):
    r"""Maps ``F_k`` of the blended operator of the whole image (or a window).

    .. math:: F_k(x) = \sum_t \gamma_{t,k}\, w_t(x)\, f_k(x - o_t)

    with ``w_t`` the weights of :func:`partition_of_unity` and ``o_t`` the
    tiles' offsets; ``H u = sum_k e_k * (F_k . u)`` is then the image's
    operator (:func:`stitched_operator`).

    Parameters
    ----------
    gamma_tiles : array-like of shape (n_tiles, K)
        Coefficients per tile (:func:`estimate_tiles`).
    maps : array-like of shape (K, h, w)
        The basis' maps ``f_k`` (``basis.maps_``), of the grid's tile shape.
    grid : TileGrid
    window : tuple of int (row_start, row_stop, col_start, col_stop), optional
        Compute ``F`` on that part of the image only (the memory of a
        block-wise solve); default the whole image.
    dtype : numpy dtype, default=float64

    Returns
    -------
    F : ndarray of shape (K, row_stop - row_start, col_stop - col_start)

    Examples
    --------
    >>> import numpy as np
    >>> grid = tile_grid((8, 12), (8, 8), stride=4)
    >>> F = stitched_maps([[2.0], [2.0]], np.ones((1, 8, 8)), grid)
    >>> bool(np.allclose(F, 2.0))     # same gamma everywhere, constant maps
    True
    """
    gamma = np.asarray(gamma_tiles, dtype=np.float64)
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3 or tuple(maps.shape[1:]) != tuple(grid.tile_shape):
        raise ValueError(
            f"maps must have shape (K, {grid.tile_shape[0]}, {grid.tile_shape[1]}) "
            f"(the grid's tile shape); got shape {maps.shape}."
        )
    K = maps.shape[0]
    if gamma.shape != (grid.n_tiles, K):
        raise ValueError(
            f"gamma_tiles must have shape (n_tiles, K) = ({grid.n_tiles}, {K}) "
            f"(one row per tile of the grid); got shape {gamma.shape}."
        )
    if not np.isfinite(gamma).all():
        raise ValueError("gamma_tiles must contain only finite values.")
    r0, r1, c0, c1 = _check_window(window, grid.image_shape)
    row_w, col_w = partition_of_unity(grid)
    h, w = grid.tile_shape
    n_cols = len(grid.col_starts)
    F = np.zeros((K, r1 - r0, c1 - c0), dtype=dtype)
    for i, rs in enumerate(grid.row_starts):
        a, b = max(rs, r0), min(rs + h, r1)       # rows of the tile in the window
        if a >= b:
            continue
        for j, cs in enumerate(grid.col_starts):
            c, d = max(cs, c0), min(cs + w, c1)
            if c >= d:
                continue
            weight = np.outer(row_w[i, a - rs:b - rs], col_w[j, c - cs:d - cs])
            g = gamma[i * n_cols + j]
            F[:, a - r0:b - r0, c - c0:d - c0] += (
                g[:, None, None] * maps[:, a - rs:b - rs, c - cs:d - cs] * weight)
    return F


def _basis_parts(basis):
    kernels = getattr(basis, "kernels_", None)
    maps = getattr(basis, "maps_", None)
    if kernels is None or maps is None:
        raise ValueError(
            "basis must be a fitted ProductConvolutionBasis (kernels_ and maps_); "
            f"got {type(basis).__name__} without them."
        )
    return (np.asarray(kernels, dtype=np.float64), np.asarray(maps, dtype=np.float64),
            getattr(basis, "boundary", "zero"))


def stitched_operator(basis, gamma_tiles, grid, *, window=None, dtype=np.float64):
    """The blended product-convolution operator of a large image.

    ``ProductConvolution(basis.kernels_, F, basis.boundary)`` with ``F`` from
    :func:`stitched_maps`; apply it with ``gamma = ones(K)``:
    ``op.forward(u, np.ones(K))``. Its memory is ``K`` maps of the image
    (or of ``window``), e.g. 1.3 GB in float32 for K = 20 at 4096x4096.

    Parameters
    ----------
    basis : fitted ProductConvolutionBasis
        Its ``image_shape_`` must be the grid's tile shape.
    gamma_tiles : array-like of shape (n_tiles, K)
    grid : TileGrid
    window : tuple of int, optional
        As in :func:`stitched_maps`: the operator of that part of the image
        (zero outside it).
    dtype : numpy dtype, default=float64

    Returns
    -------
    ProductConvolution

    Examples
    --------
    A single-tile image gives back the basis operator with that tile's
    coefficients:

    >>> import numpy as np, torch
    >>> from deepblur import ProductConvolutionBasis
    >>> rng = np.random.default_rng(0)
    >>> basis = ProductConvolutionBasis.from_components(
    ...     rng.random((2, 5, 5)), rng.random((2, 16, 16)))
    >>> gamma = np.array([[1.0, -0.5]])
    >>> op = stitched_operator(basis, gamma, tile_grid((16, 16), (16, 16)))
    >>> u = torch.from_numpy(rng.random((1, 16, 16)))
    >>> a = op.forward(u, torch.ones(2))
    >>> b = basis.operator_.forward(u, torch.from_numpy(gamma[0]))
    >>> bool(torch.allclose(a, b))
    True
    """
    kernels, maps, boundary = _basis_parts(basis)
    F = stitched_maps(gamma_tiles, maps, grid, window=window, dtype=dtype)
    return ProductConvolution(kernels.astype(dtype), F, boundary)


# ------------------------------------------------------------------ deblur
@dataclass(frozen=True)
class SolveBlock:
    """One block of a block-wise solve: the part kept and the part solved.

    Attributes
    ----------
    core : tuple of int (row_start, row_stop, col_start, col_stop)
        Pixels of the result taken from this solve; the cores partition the
        image.
    window : tuple of int (row_start, row_stop, col_start, col_stop)
        Pixels solved: the core enlarged by the margin, clipped to the image.
    """

    core: tuple
    window: tuple

    @property
    def n_pixels(self):
        """Pixels of the window (the memory of the solve)."""
        r0, r1, c0, c1 = self.window
        return (r1 - r0) * (c1 - c0)


def _split(n, parts):
    edges = np.linspace(0, n, parts + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=True))


def _max_window(n, parts, margin):
    """Longest solve window along an axis split into ``parts`` cores."""
    if parts == 1:
        return n
    return max(min(n, e + margin) - max(0, s - margin)
               for s, e in _split(n, parts))


def _least_window(n, m, margin):
    """The least longest window over the cuts of an axis of ``n`` pixels into
    cores of at least ``m`` (from 1 to ``n // m`` of them)."""
    most = n // m
    best = n                                    # one core: the whole axis
    for parts in range(most, 1, -1):
        if parts >= 3 and n / parts >= margin + 1 and \
                min(n, n // parts + 2 * margin) >= best:
            # a middle core, unclipped, sets a window of its length (at
            # least n // parts, which only grows as parts falls) plus two
            # margins: no fewer parts can do better. (The window does not
            # shrink with every part added: 49 px, margin 19: 15 parts give
            # 41, 16 give 42.)
            break
        edges = np.linspace(0, n, parts + 1).round().astype(int)
        windows = (np.minimum(n, edges[1:] + margin)
                   - np.maximum(0, edges[:-1] - margin))
        best = min(best, int(windows.max()))
    return best


def _least_max_pixels(H, W, mh, mw, margin):
    """The smallest ``max_pixels`` for which :func:`solve_blocks` can cut an
    ``H x W`` image into cores of at least ``mh x mw``: the smallest largest
    window over the cuts (the windows of one cut into a single core per
    axis are the whole axis)."""
    # the two axes are independent: the least product is the product of the
    # least windows along each
    return _least_window(H, mh, margin) * _least_window(W, mw, margin)


def _best_cut(H, W, mh, mw, margin, max_pixels):
    """``((n_blocks, n_r), n_r, n_c)`` of the cut into the fewest blocks
    (then the fewest rows) whose windows fit ``max_pixels``; None if none."""
    best = None
    for n_r in range(1, H // mh + 1):
        if best is not None and n_r >= best[0][0]:
            break                           # n_c >= 1: no better count left
        allowed_w = max_pixels // _max_window(H, n_r, margin)
        n_c = max(1, math.ceil(W / max(allowed_w, 1)))
        while n_c <= W // mw and _max_window(W, n_c, margin) > allowed_w:
            n_c += 1
        if n_c > W // mw:
            continue
        key = (n_r * n_c, n_r)
        if best is None or key < best[0]:
            best = (key, n_r, n_c)
    return best


def solve_blocks(image_shape, max_pixels, margin, *, min_core=(1, 1)):
    """Cut an image into the fewest blocks whose solve windows fit ``max_pixels``.

    The image is split into ``n_r x n_c`` near-equal cores; each core is
    solved in a window enlarged by ``margin`` pixels on every side (clipped
    to the image). One block (a global solve) when ``H * W <= max_pixels``.

    Parameters
    ----------
    image_shape : tuple of int (H, W)
    max_pixels : int
        Cap on the pixels of one window.
    margin : int
        Pixels added on each side of a core, >= 0.
    min_core : tuple of int, default=(1, 1)
        Smallest core allowed (e.g. one model tile).

    Returns
    -------
    blocks : list of SolveBlock
        Row-major.

    Raises
    ------
    ValueError
        If not even a ``min_core`` core with its margins fits ``max_pixels``.

    Examples
    --------
    >>> blocks = solve_blocks((100, 100), max_pixels=60 * 60, margin=8)
    >>> len(blocks), blocks[0].core, blocks[0].window
    (4, (0, 50, 0, 50), (0, 58, 0, 58))
    """
    H, W = check_positive_int_pair(image_shape, "image_shape")
    if not (isinstance(max_pixels, numbers.Integral) and max_pixels >= 1):
        raise ValueError(f"max_pixels must be a positive int; got {max_pixels!r}.")
    if not (isinstance(margin, numbers.Integral) and margin >= 0):
        raise ValueError(f"margin must be a non-negative int; got {margin!r}.")
    mh, mw = check_positive_int_pair(min_core, "min_core")
    mh, mw = min(H, mh), min(W, mw)
    if H * W <= max_pixels:
        return [SolveBlock((0, H, 0, W), (0, H, 0, W))]
    least = _least_max_pixels(H, W, mh, mw, margin)
    best = None if least > max_pixels else _best_cut(H, W, mh, mw, margin,
                                                      max_pixels)
    if best is None:
        # (a bound from one core with margins on both sides refused cuts in
        # two, whose cores have a margin on one side only, and was too low
        # for others: this is the least over every cut)
        raise ValueError(
            f"max_pixels={max_pixels} is too small for one solve: cutting an "
            f"image of shape {(H, W)} into cores of at least {mh}x{mw} pixels "
            f"(one model tile) with a margin of {margin} pixels needs windows "
            f"of {least} pixels at least; "
            "raise max_pixels (--max-pixels on the command line) to that, or "
            "lower margin (Python only)."
        )
    _, n_r, n_c = best
    blocks = []
    for a, b in _split(H, n_r):
        for c, d in _split(W, n_c):
            window = ((0, H) if n_r == 1 else (max(0, a - margin), min(H, b + margin)))
            window += ((0, W) if n_c == 1 else (max(0, c - margin), min(W, d + margin)))
            blocks.append(SolveBlock((a, b, c, d), window))
    return blocks


def _check_solve(image_shape, kernel_shape, tile_shape, *, lam, boundary,
                 regularization, dtype, max_pixels, margin, model_boundary,
                 lipschitz=None, max_iter=1, tol=0.0, inner_iter=1):
    """Everything :func:`deblur_stitched` refuses of its solve's parameters,
    checked without solving: what a large-image path calls before its
    network estimates the tiles. Returns :func:`_solve_plan`'s plan."""
    check_iterations(max_iter, tol, inner_iter)
    if regularization not in REGULARIZATIONS:
        raise ValueError(
            f"regularization must be one of {tuple(REGULARIZATIONS)}; got "
            f"{regularization!r}."
        )
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64'; got {dtype!r}.")
    if isinstance(lam, str):
        if lam != "auto":
            raise ValueError(f"lam must be a positive float or 'auto'; got {lam!r}.")
    else:
        try:
            value = float(lam)
        except (TypeError, ValueError):
            value = None
        if value is None or np.ndim(lam) != 0 or isinstance(lam, (bool, np.bool_)):
            raise ValueError(f"lam must be a positive scalar (or 'auto'), one "
                             f"for the whole image; got {lam!r}.")
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"lam must be positive and finite; got {lam!r}.")
    if lipschitz is not None:
        try:
            value = float(lipschitz)
        except (TypeError, ValueError):
            value = np.nan
        if not (np.isfinite(value) and value > 0):
            raise ValueError(
                f"lipschitz must be positive and finite; got {lipschitz!r}.")
    # the boundary, margin and max_pixels are checked there
    return _solve_plan(image_shape, kernel_shape, tile_shape, boundary,
                       max_pixels, margin, model_boundary)


def _solve_plan(image_shape, kernel_shape, tile_shape, boundary, max_pixels,
                margin, model_boundary="zero"):
    """The blocks :func:`deblur_stitched` solves an image of ``image_shape``
    in, checked: ``(blocks, pr, pc, margin)``, with ``pr, pc`` the rows and
    columns the solve adds on each side (half a kernel with
    ``boundary="unknown"``, whose unknown scene there is estimated with the
    rest and dropped, so that every pixel of the image is fitted)."""
    if boundary not in ("model", "unknown"):
        raise ValueError(
            f"boundary must be 'model' or 'unknown'; got {boundary!r}."
        )
    unknown = boundary == "unknown"
    radius = _kernel_radius(kernel_shape)
    if margin is None:
        margin = _default_margin(kernel_shape)
    if not (isinstance(margin, numbers.Integral) and margin >= radius):
        raise ValueError(
            f"margin must be an int >= the kernel radius {radius} (else the "
            f"blocks miss the blur from their neighbours); got {margin!r}."
        )
    H, W = image_shape
    pr, pc = (int(k) // 2 for k in kernel_shape) if unknown else (0, 0)
    try:
        blocks = solve_blocks((H + 2 * pr, W + 2 * pc), max_pixels, margin,
                              min_core=tile_shape)
    except ValueError as exc:
        if not unknown:
            raise
        raise ValueError(
            f"{exc} With boundary='unknown' the solve covers the image extended "
            f"by half a kernel ({pr} rows and {pc} columns) on each side: a "
            f"{H}x{W} image in one piece needs max_pixels >= "
            f"{(H + 2 * pr) * (W + 2 * pc)}."
        ) from None
    if len(blocks) > 1 and not unknown and model_boundary != "zero":
        raise ValueError(
            f"a block-wise solve with boundary='model' needs the 'zero' boundary "
            f"model; the basis has {model_boundary!r}: pass boundary='unknown' or "
            f"raise max_pixels to {H * W} for a global solve."
        )
    return blocks, pr, pc, margin


def _default_margin(kernel_shape):
    return 2 * _kernel_radius(kernel_shape) + 16


def _kernel_radius(kernel_shape):
    """Largest extent of a kernel on either side of its centre pixel."""
    return max(int(k) // 2 for k in kernel_shape)


def extended_problem(kernels, maps, y, gamma, pads, *, positive=False):
    r"""The data term of a window on a larger scene, for
    :func:`deepblur.solvers.tv.deblur`.

    ``u`` lives on ``y``'s domain extended by ``pads`` (the scene beyond the
    border, unknown). It is blurred by the product-convolution operator with
    ``maps`` extended by their edge values; the data term keeps the pixels
    of ``y`` whose kernel lies inside ``y``'s domain extended by ``pads``,
    ``||M H[gamma] u - M y_ext||^2``. With ``pads`` of half a kernel on each
    side, ``M`` keeps every pixel of ``y``: nothing is assumed outside. A
    side padded by 0 (a cut inside a larger image, with a margin) leaves its
    half-kernel band unfitted.

    The operator is periodic on the extended domain, zero-padded at the
    bottom and right up to a fast FFT length inside ``forward`` and
    ``adjoint`` (so that ``u``, and the regularisation on it, stop at the
    extended domain): its wrap-around only reaches pixels within half a
    kernel of the domain's edges, which are not fitted, so it is the
    zero-boundary operator on the fitted pixels.

    Parameters
    ----------
    kernels : torch.Tensor of shape (K, kh, kw)
    maps : torch.Tensor of shape (K, h, w)
        On ``y``'s domain.
    y : torch.Tensor of shape (n, h, w)
    gamma : torch.Tensor of shape (K,) or (n, K)
    pads : ((top, bottom), (left, right))
        Pixels added on each side.
    positive : bool, default=False
        Project the starting point on ``u >= 0``.

    Returns
    -------
    data : torch.Tensor of shape (n, top + h + bottom, left + w + right)
        ``M y_ext``; ``y`` is at rows ``top:top + h`` and columns
        ``left:left + w``.
    forward, adjoint : callables
        ``u -> M H[gamma] u`` and its adjoint.
    x0 : torch.Tensor of shape (n, H, W)
        ``y`` extended by its edge values: the starting point.

    Examples
    --------
    >>> import torch
    >>> kernels = torch.full((1, 3, 3), 1 / 9, dtype=torch.float64)
    >>> maps = torch.ones((1, 16, 16), dtype=torch.float64)
    >>> scene = torch.rand((1, 20, 20), dtype=torch.float64)
    >>> y = torch.nn.functional.conv2d(scene[None], kernels[None])[0, :, 1:-1, 1:-1]
    >>> data, fwd, adj, x0 = extended_problem(kernels, maps, y, torch.ones(1),
    ...                                       ((1, 1), (1, 1)))
    >>> data.shape, bool(torch.allclose(fwd(scene[:, 1:-1, 1:-1])[:, 1:-1, 1:-1], y))
    (torch.Size([1, 18, 18]), True)
    """
    import scipy.fft
    import torch.nn.functional as tnf

    (top, bottom), (left, right) = (tuple(int(p) for p in side) for side in pads)
    if min(top, bottom, left, right) < 0:
        raise ValueError(f"pads must be >= 0; got {pads!r}.")
    h, w = (int(v) for v in y.shape[-2:])
    r, c = (int(k) // 2 for k in kernels.shape[1:])
    He, We = top + h + bottom, left + w + right          # u's domain
    H = int(scipy.fft.next_fast_len(He, real=True))      # the FFTs'
    W = int(scipy.fft.next_fast_len(We, real=True))
    width = (left, W - left - w, top, H - top - h)
    if any(width):
        maps = tnf.pad(maps[None], width, mode="replicate")[0]
    if any(pads[0]) or any(pads[1]):
        y = tnf.pad(y[:, None], (left, right, top, bottom),
                    mode="replicate")[:, 0]
    # fitted: the pixels of y whose kernel lies within y and pads
    rows = (max(top, r), top + h - max(0, r - bottom))
    cols = (max(left, c), left + w - max(0, c - right))
    if rows[0] >= rows[1] or cols[0] >= cols[1]:
        raise ValueError(
            f"a {h}x{w} window is too small for kernels "
            f"{tuple(kernels.shape[1:])}: no pixel is half a kernel away from "
            "its border."
        )
    mask = torch.zeros((He, We), dtype=y.dtype, device=y.device)
    mask[rows[0]:rows[1], cols[0]:cols[1]] = 1.0
    op = ProductConvolution(kernels, maps, "periodic")
    fast = (0, W - We, 0, H - He)

    def forward(v):
        if any(fast):
            v = tnf.pad(v, fast)
        return op.forward(v, gamma)[..., :He, :We] * mask

    def adjoint(v):
        v = v * mask
        if any(fast):
            v = tnf.pad(v, fast)
        return op.adjoint(v, gamma)[..., :He, :We]

    return y * mask, forward, adjoint, (y.clamp(min=0) if positive else y)


def deblur_stitched(image, basis, gamma_tiles, grid, *, lam="auto",
                    boundary="model", regularization="tv", positive=False,
                    max_iter=500, tol=1e-5,
                    inner_iter=10, max_pixels=DEFAULT_MAX_PIXELS, margin=None,
                    lipschitz=None, device="cpu", dtype="float32", progress=None):
    """Deblur a large image with its stitched operator, globally or by blocks.

    Solves ``min_u R(u) + lam/2 ||H u - y||^2`` with ``H`` the operator of
    :func:`stitched_operator`, its border fitted with the basis's boundary
    model (``boundary="model"``), or, for an image that is a window on a
    larger scene (``boundary="unknown"``, as
    :func:`deepblur.pretrained.deblur_image` has it), with no assumption on
    the scene outside: ``u`` is then the image extended by half a kernel on
    each side, ``H``
    blurs it with the maps extended by their edge values, every pixel of
    ``y`` is fitted (``min_u R(u) + lam/2 ||M H u - y||^2``, ``M`` the crop
    to the image), and the extension is dropped
    (:func:`extended_problem`). When the
    image has at most
    ``max_pixels`` pixels this is one solve of
    :func:`deepblur.solvers.tv.deblur`. Otherwise the image is cut by
    :func:`solve_blocks`: each block's window (its core plus ``margin``
    pixels per side) is solved with the operator's maps restricted to the
    window, and only the core is kept. ``lam="auto"`` is computed once from
    the whole image, so every block solves the same problem. The blocks'
    seams differ from a global solve by an amount that decays with
    ``margin`` (measured in ``benchmarks/README.md``, section "Large images").

    Parameters
    ----------
    image : array-like of shape (H, W)
        Blurry image of the grid's ``image_shape``, finite.
    basis : fitted ProductConvolutionBasis
        Kernels and maps of the tiles (``image_shape_`` = the tile shape).
    gamma_tiles : array-like of shape (n_tiles, K)
    grid : TileGrid
    lam : float or "auto", default="auto"
        Data-term weight, in the image's units; ``"auto"``:
        :func:`deepblur.solvers.tv.default_lam` of the whole image, calibrated
        for images in [0, 1] (counts get a ``UserWarning``).
    boundary : {"model", "unknown"}, default="model"
        ``"model"``: the basis's boundary model (zero: a dark surrounding; a
        block-wise solve needs it); the border of a cropped scene then blows
        up. ``"unknown"``: the scene outside the image is estimated with the
        image (see above), and a block fits only the pixels whose kernels lie
        inside its window; any boundary model, and blocks with any of them.
        ``max_pixels``, ``margin`` and ``info["blocks"]`` then refer to the
        extended image (coordinates shifted by half a kernel).
    regularization : {"tv", "l1"}, default="tv"
    positive : bool, default=False
    max_iter : int, default=500
    tol : float, default=1e-5
    inner_iter : int, default=10
        As in :func:`deepblur.solvers.tv.deblur`, per block.
    max_pixels : int, default=DEFAULT_MAX_PIXELS
        Cap on the pixels of one solve (memory: about 1.2 kB per pixel for
        K = 20 in float32, measured). Must hold at least one tile with its
        margins.
    margin : int, optional
        Pixels added on each side of a block's core; at least the kernel
        radius. Default ``2 * kernel radius + 16`` (40 for 25x25 kernels).
    lipschitz : float, optional
        ``||H||_2^2`` of the stitched operator if known (e.g.
        ``info["lipschitz"].max()`` of an earlier solve): every solve uses it,
        which is safe for the blocks since a block's operator is a restriction
        of ``H`` (with ``boundary="unknown"``, of ``H`` on the extended image,
        whose power-iteration norm was 0.994-0.998 times that of ``H`` on the
        shipped basis: ``benchmarks/bench_large_window.py``).
        Default: estimated per solve by power iteration (up to 100
        forward/adjoint pairs, often more than the solve itself).
    device : str or torch.device, default="cpu"
        ``"auto"``: CUDA when available.
    dtype : {"float32", "float64"}, default="float32"
    progress : bool, optional
        Progress bar over the blocks; default when there are 64 or more.

    Returns
    -------
    restored : ndarray of shape (H, W), float64
    info : dict
        ``lam`` (float), ``blocks`` (list of :class:`SolveBlock`),
        ``n_iter`` (solver iterations per block), ``converged`` (per block)
        and ``lipschitz`` (the ``||H_block||_2^2`` used per block).

    Examples
    --------
    >>> import numpy as np
    >>> from deepblur import ProductConvolutionBasis
    >>> basis = ProductConvolutionBasis.from_components(
    ...     np.full((1, 3, 3), 1 / 9), np.ones((1, 32, 32)))
    >>> grid = tile_grid((64, 96), (32, 32))
    >>> clean = np.zeros((64, 96)); clean[16:48, 24:72] = 1.0
    >>> op = stitched_operator(basis, np.ones((grid.n_tiles, 1)), grid)
    >>> import torch
    >>> y = op.forward(torch.from_numpy(clean)[None], torch.ones(1))[0].numpy()
    >>> u, info = deblur_stitched(y, basis, np.ones((grid.n_tiles, 1)), grid,
    ...                           lam=500.0, max_iter=300, tol=1e-7,
    ...                           max_pixels=64 * 70)
    >>> len(info["blocks"]), bool(abs(u - clean).mean() < abs(y - clean).mean())
    (2, True)
    """
    if isinstance(lam, str):        # solved in the image's units
        warn_if_counts(image if torch.is_tensor(image) else np.asarray(image))
    return _deblur_stitched(
        image, basis, gamma_tiles, grid, lam=lam, boundary=boundary,
        regularization=regularization, positive=positive, max_iter=max_iter,
        tol=tol, inner_iter=inner_iter, max_pixels=max_pixels, margin=margin,
        lipschitz=lipschitz, device=device, dtype=dtype, progress=progress)


def _deblur_stitched(image, basis, gamma_tiles, grid, *, lam="auto",
                     boundary="model", regularization="tv", positive=False,
                     max_iter=500, tol=1e-5, inner_iter=10,
                     max_pixels=DEFAULT_MAX_PIXELS, margin=None, lipschitz=None,
                     device="cpu", dtype="float32", progress=None):
    """:func:`deblur_stitched` without its warning about counts (for the
    callers that scaled the image, or warned, themselves)."""
    kernels, maps, model_boundary = _basis_parts(basis)
    if tuple(maps.shape[1:]) != tuple(grid.tile_shape):
        raise ValueError(
            f"basis.image_shape_ {tuple(maps.shape[1:])} must be the grid's tile "
            f"shape {tuple(grid.tile_shape)}."
        )
    img = _check_large_image(image, grid.tile_shape)
    if tuple(img.shape) != tuple(grid.image_shape):
        raise ValueError(
            f"image must have the grid's image_shape {tuple(grid.image_shape)}; got "
            f"shape {img.shape}."
        )
    blocks, pr, pc, margin = _check_solve(
        img.shape, kernels.shape[1:], grid.tile_shape, lam=lam,
        boundary=boundary, regularization=regularization, dtype=dtype,
        max_pixels=max_pixels, margin=margin, model_boundary=model_boundary,
        lipschitz=lipschitz, max_iter=max_iter, tol=tol, inner_iter=inner_iter)
    unknown = boundary == "unknown"
    dev = resolve_device(device)
    tdtype = torch.float32 if dtype == "float32" else torch.float64
    if isinstance(lam, str):
        lam = float(default_lam(img, regularization))
    else:
        lam = float(lam)
    if lipschitz is not None:
        lipschitz = float(lipschitz)
    H, W = img.shape
    restored = np.empty((H + 2 * pr, W + 2 * pc), dtype=np.float64)
    n_iter, converged, stalled, norms = [], [], [], []
    K = kernels.shape[0]
    ones = torch.ones(K, dtype=tdtype, device=dev)
    kern = torch.as_tensor(kernels, dtype=tdtype, device=dev)
    for block in tqdm(blocks, desc="deblurring blocks", unit="block",
                      disable=_progress(progress, len(blocks))):
        r0, r1, c0, c1 = block.window
        # the window's part in the image, and its rows / columns beyond it
        inside = (max(r0 - pr, 0), min(r1 - pr, H), max(c0 - pc, 0),
                  min(c1 - pc, W))
        pads = ((max(pr - r0, 0), max(r1 - pr - H, 0)),
                (max(pc - c0, 0), max(c1 - pc - W, 0)))
        F = stitched_maps(gamma_tiles, maps, grid, window=inside,
                          dtype=np.float32 if dtype == "float32" else np.float64)
        F = torch.from_numpy(F).to(dev)
        y = torch.as_tensor(img[inside[0]:inside[1], inside[2]:inside[3]],
                            dtype=tdtype, device=dev)[None]
        if unknown:
            # at the image's border, u extends beyond it; at a cut inside the
            # image, the margin's pixels within half a kernel are not fitted
            data, forward, adjoint, x0 = extended_problem(
                kern, F, y, ones, pads, positive=positive)
        else:
            op = ProductConvolution(kern, F, model_boundary)

            def forward(v, op=op):
                return op.forward(v, ones)

            def adjoint(v, op=op):
                return op.adjoint(v, ones)

            data, x0 = y, None
        del F
        # one warning for all the blocks, below (not catch_warnings: its
        # process-wide filters race between threads)
        with convergence_warnings_suspended():
            u, res = deblur(
                data, forward, adjoint, lam,
                regularization=regularization, positive=positive,
                max_iter=max_iter, tol=tol, inner_iter=inner_iter,
                lipschitz=lipschitz, x0=x0)
        a, b, c, d = block.core
        restored[a:b, c:d] = u[0, a - r0:b - r0, c - c0:d - c0].double().cpu().numpy()
        n_iter.append(int(res.n_iter))
        converged.append(bool(res.converged[0]))
        stalled.append(bool(res.stalled[0]))
        norms.append(float(res.lipschitz[0]) / (LIPSCHITZ_SAFETY * lam))
        del forward, adjoint, u
    capped = [not (ok or stop) for ok, stop in zip(converged, stalled,
                                                   strict=True)]
    if tol > 0 and any(stalled):
        warnings.warn(stall_message(f"{sum(stalled)} of {len(blocks)} block(s)",
                                    tol, regularization),
                      ConvergenceWarning, stacklevel=user_stacklevel())
    if tol > 0 and any(capped):
        warnings.warn(
            f"deblur reached max_iter={max_iter} before tol={tol} in "
            f"{sum(capped)} of {len(blocks)} block(s); increase "
            "max_iter or tol.", ConvergenceWarning, stacklevel=user_stacklevel())
    restored = restored[pr:pr + H, pc:pc + W]
    return restored, dict(lam=lam, blocks=blocks, n_iter=np.array(n_iter),
                          converged=np.array(converged), lipschitz=np.array(norms))


# ------------------------------------------------------------------ blind
@dataclass
class LargeDeblurResult:
    """What :func:`deblur_large` returns.

    Attributes
    ----------
    restored : ndarray of shape (H, W)
        The deblurred image, in the input's units.
    gamma_tiles : ndarray of shape (n_tiles, K)
        Coefficients of each tile's operator, as used for deblurring
        (rescaled to unit PSF mass when ``unit_gain``).
    grid : TileGrid
    basis : ProductConvolutionBasis
        The model's basis (kernels and tile maps).
    lam : float
    blocks : list of SolveBlock
        The solves of :func:`deblur_stitched` (one: global).
    n_iter : ndarray of shape (n_blocks,)
    """

    restored: np.ndarray
    gamma_tiles: np.ndarray
    grid: TileGrid
    basis: object = field(repr=False)
    lam: float = 0.0
    blocks: list = field(default_factory=list, repr=False)
    n_iter: np.ndarray = field(default=None, repr=False)

    def operator(self, *, window=None, dtype=np.float64):
        """The stitched operator (:func:`stitched_operator`); apply it with
        ``gamma = ones(K)``. Builds ``K`` maps of the image (or ``window``)."""
        return stitched_operator(self.basis, self.gamma_tiles, self.grid,
                                 window=window, dtype=dtype)


def _model_parts(model):
    if isinstance(model, tuple) and not hasattr(model, "basis"):
        if len(model) != 2:
            raise ValueError(
                "model must be a PretrainedModel (from deepblur.pretrained) or a "
                f"(basis, regressor) pair; got a tuple of length {len(model)}."
            )
        return model[0], model[1]
    basis = getattr(model, "basis", None)
    regressor = getattr(model, "regressor", None)
    if basis is None or regressor is None:
        raise ValueError(
            "model must be a PretrainedModel (from deepblur.pretrained) or a "
            f"(basis, regressor) pair; got {type(model).__name__}."
        )
    return basis, regressor


def _check_boundary_flag(check_boundary):
    """``check_boundary``, checked: True or False."""
    if not isinstance(check_boundary, (bool, np.bool_)):
        raise ValueError(f"check_boundary must be True or False; got "
                         f"{check_boundary!r}.")
    return bool(check_boundary)


def _warn_if_windows(regressor, n_tiles):
    """:class:`~deepblur.exceptions.BoundaryWarning` when a regressor trained
    on zero-boundary images (``training_boundary_``) estimates the
    ``n_tiles`` > 1 tiles of a larger image: windows of a larger scene.
    Shown at the user's line (:func:`deepblur._validation.user_stacklevel`)."""
    from deepblur.exceptions import BoundaryWarning

    if n_tiles > 1 and getattr(regressor, "training_boundary_", None) == "zero":
        warnings.warn(
            "this regressor was trained on images blurred with a zero boundary "
            "(a dark surrounding); the tiles of a larger image are windows of a "
            "scene, on which the shipped network's operator error is 40 %, "
            "worse than the mean operator's 24 %: use a regressor trained on "
            "such windows (load_default(estimator='crop_network') or "
            "'spectral', a model of your own with one, one trained on a "
            "BlurDataset with boundary='crop', or "
            "BlindDeblurrer(train_boundary='crop')), or a known operator.",
            BoundaryWarning, stacklevel=user_stacklevel())


def _component_gains(basis, interior=False):
    """:func:`deepblur.pretrained.operator_gain` of each elementary operator
    (the gain is linear in gamma: ``gain(gamma) = gamma @ gains``)."""
    from deepblur.pretrained._apply import operator_gain

    K = _basis_parts(basis)[0].shape[0]
    return operator_gain(basis, np.eye(K), interior=interior)


def tile_gains(basis, gamma_tiles, *, interior=False):
    """Gain of each tile's operator: the mean of ``H[gamma_t]`` on a flat tile.

    The factor by which the tile's operator scales a flat image (as
    :func:`deepblur.pretrained.operator_gain`); it is linear in ``gamma``, so
    it is computed from the ``K`` elementary operators once. Dividing each
    row of ``gamma_tiles`` by its ``interior=True`` gain gives unit-gain
    operators, whose PSFs have mass 1 (what :func:`deblur_large`,
    :func:`~deepblur.pretrained.deblur_image` and
    ``TVDeblurrer(unit_gain=True)`` do, with either boundary).

    Parameters
    ----------
    basis : fitted ProductConvolutionBasis
    gamma_tiles : array-like of shape (n_tiles, K)
    interior : bool, default=False
        Average over the pixels at least half a kernel away from the tile's
        border only: the mass of the PSFs there, what a flat scene around the
        tile sees, whatever the boundary model: the unit gain of
        ``unit_gain=True``. By default the whole tile, boundary losses
        included (the mean of an image of one tile blurred with a zero
        boundary, for a flat scene).

    Returns
    -------
    gains : ndarray of shape (n_tiles,)

    Examples
    --------
    >>> import numpy as np
    >>> from deepblur import ProductConvolutionBasis
    >>> e = np.zeros((2, 3, 3)); e[:, 1, 1] = 1.0       # two identities
    >>> basis = ProductConvolutionBasis.from_components(e, np.ones((2, 8, 8)))
    >>> tile_gains(basis, [[1.0, 0.5], [2.0, 0.0]])
    array([1.5, 2. ])
    >>> box = ProductConvolutionBasis.from_components(
    ...     np.full((1, 3, 3), 1 / 9), np.ones((1, 8, 8)))
    >>> tile_gains(box, [[1.0]]).round(4), tile_gains(box, [[1.0]], interior=True)
    (array([0.8403]), array([1.]))
    """
    kernels, _, _ = _basis_parts(basis)         # a fitted basis, or a clear error
    gamma = np.asarray(gamma_tiles, dtype=np.float64)
    K = kernels.shape[0]
    if gamma.ndim != 2 or gamma.shape[1] != K:
        raise ValueError(
            f"gamma_tiles must have shape (n_tiles, K={K}); got shape {gamma.shape}."
        )
    return gamma @ _component_gains(basis, interior)


def _unit_gain_tiles(basis, gamma_tiles, grid=None, hint=None):
    """``gamma_tiles`` with each row divided by its interior :func:`tile_gains`
    (the mass of its PSFs), whatever the boundary and the number of tiles:
    the rows are the tiles of ``grid``, or images where it is None; ``hint``
    ends the message of a non-positive gain.

    A blur that keeps the light has PSFs of mass 1; the whole tile's gain
    also counts the light the zero boundary loses at the tile's border, which
    inside a larger image is no border at all, and at the image's border is
    light the data term models as lost, not a darker scene. (Divided by their
    whole gain, the shipped basis's tiles made an operator of interior gain
    1.03 and a restored interior 2.9 % darker than the scene, and an image of
    one tile 3 % darker than the same scene one row taller:
    ``benchmarks/bench_unit_gain_tiles.py``.)
    """
    gains = tile_gains(basis, gamma_tiles, interior=True)
    if not np.all(gains > 0):
        bad = int(np.argmin(gains))
        where = (f"tile {bad} (offset {tuple(grid.offsets[bad])})"
                 if grid is not None else f"image {bad}")
        raise ValueError(
            f"the operator of {where} has a non-positive gain {gains[bad]:.4g}: "
            "it cannot be rescaled to unit gain"
            + (f"; {hint}." if hint else ".")
        )
    return np.asarray(gamma_tiles, dtype=np.float64) / gains[:, None]


def _solve_scale(image, image_mean):
    """Factor that brings ``image`` to mean ``image_mean`` (1 for ``None``)."""
    if image_mean is None:
        return 1.0
    image_mean = check_image_mean(image_mean)
    mean = float(np.mean(image))
    if not mean > 0:
        raise ValueError(
            f"the image has a mean intensity {mean:.4g} <= 0: it cannot be scaled "
            "to image_mean (the model needs intensities, not a signed or "
            "background-subtracted image); pass image_mean=None to solve it in "
            "its own units (and target_mean=None to read its tiles as they "
            "are)."
        )
    return float(image_mean) / mean


def _large_image_mean(model, image_mean="auto"):
    """``deblur_large``'s ``image_mean`` resolved and checked: None, or the
    positive mean the image is scaled to ("auto": the model's training
    mean, 0.5 for a ``(basis, regressor)`` pair)."""
    if image_mean is None:
        return None
    if isinstance(image_mean, str):
        if image_mean != "auto":
            raise ValueError(
                f"image_mean must be a positive float, 'auto' or None; got "
                f"{image_mean!r}."
            )
        if hasattr(model, "sampler") and hasattr(model, "basis"):
            from deepblur.pretrained._apply import model_image_mean

            return model_image_mean(model)
        return 0.5
    return check_image_mean(image_mean)


def _tile_factor(img, target_mean):
    """The factor that brings ``img`` to ``target_mean`` (None: none),
    checked as :func:`estimate_tiles` needs it."""
    target_mean = _check_target_mean(target_mean)
    if target_mean is None:
        return None
    mean = float(img.mean())
    if not mean > 0:
        raise ValueError(
            "image must have a positive mean intensity for its tiles to be "
            f"scaled to target_mean={target_mean:.4g} (for a pretrained "
            "model, 'auto' is its training mean times its training gain); "
            f"got mean {mean:.4g}: pass target_mean=None to read the tiles "
            "as they are (and image_mean=None to deblur_large)."
        )
    return target_mean / mean


def _check_target_mean(target_mean):
    """None, or a positive finite float (NumPy scalars and 0-d arrays too)."""
    if target_mean is None:
        return None
    value = scalar_value(target_mean)
    if value is None or not (np.isfinite(value) and value > 0):
        raise ValueError(
            f"target_mean must be positive and finite; got {target_mean!r}."
        )
    return value


def _large_target_mean(model, target_mean="auto"):
    """``deblur_large``'s ``target_mean`` resolved: "auto" is a pretrained
    model's training mean times its training gain, None for a ``(basis,
    regressor)`` pair."""
    if isinstance(target_mean, str):
        if target_mean != "auto":
            raise ValueError(
                f"target_mean must be a float, 'auto' or None; got {target_mean!r}."
            )
        if not (hasattr(model, "sampler") and hasattr(model, "basis")):
            return None
        from deepblur.pretrained._apply import model_image_mean, training_gain

        return model_image_mean(model) * training_gain(model)
    return _check_target_mean(target_mean)


def _large_input(image, model, image_mean="auto"):
    """What :func:`deblur_large` checks before any estimate: ``(basis,
    regressor, image, scale)`` with the image checked against the model's
    tile (2-D, at least one tile, finite) and the factor that brings it to
    ``image_mean`` (a positive mean needed unless ``image_mean`` is None)."""
    basis, regressor = _model_parts(model)
    _, maps, _ = _basis_parts(basis)
    image_mean = _large_image_mean(model, image_mean)
    img = _check_large_image(image, tuple(int(s) for s in maps.shape[1:]))
    return basis, regressor, img, _solve_scale(img, image_mean)


def _deblur_scaled(image, basis, gamma_tiles, grid, *, scale, **solve):
    """:func:`deblur_stitched` of ``image * scale``, mapped back to the
    input's units."""
    restored, info = _deblur_stitched(image * scale, basis, gamma_tiles, grid,
                                      **solve)
    return restored / scale, info


def deblur_large(image, model, *, lam="auto", boundary="unknown",
                 image_mean="auto", tile_stride=None,
                 max_pixels=DEFAULT_MAX_PIXELS, margin=None, target_mean="auto",
                 unit_gain=True, regularization="tv", positive=False,
                 max_iter=500, tol=1e-5, inner_iter=10, lipschitz=None,
                 batch_size=64, device="cpu", dtype="float32", progress=None,
                 check_boundary=True):
    """Blind deblurring of an image of any size >= the model's input.

    Estimates one operator per tile (:func:`estimate_tiles`), blends them into
    one spatially varying operator of the whole image
    (:func:`stitched_maps`) and deblurs the image with it
    (:func:`deblur_stitched`), with the conventions of
    :func:`deepblur.pretrained.deblur_image` for one tile: the image is scaled
    to mean ``image_mean`` for the solve (``lam`` is the weight for that
    scale) and mapped back to the input's units, and by default nothing is
    assumed of the scene outside the image.

    Parameters
    ----------
    image : array-like of shape (H, W)
        Blurry image, at least the model's ``image_shape`` along each axis,
        finite, with a positive mean (unless ``image_mean=None`` and, for
        a PretrainedModel, ``target_mean=None``).
    model : PretrainedModel or tuple (basis, regressor)
        A model from :func:`deepblur.pretrained.load_default` /
        :func:`~deepblur.pretrained.load_model`, or a fitted basis and a
        regressor with ``predict`` (whose input shape is
        ``basis.image_shape_``).
    lam : float or "auto", default="auto"
        Data-term weight for the image scaled to mean ``image_mean``
        (``"auto"``: from the noise level of the whole image).
    boundary : {"unknown", "model"}, default="unknown"
        ``"unknown"``: the image is a window on a larger scene, whose
        unknown surrounding (half a kernel) is estimated with it.
        ``"model"``: the border is fitted with the basis's boundary model
        (zero: a dark surrounding, as in simulations), which makes the border
        of a cropped scene blow up. See :func:`deblur_stitched`.
    image_mean : float, "auto" or None, default="auto"
        Mean the image is scaled to for the solve. ``"auto"``: the training
        mean of a PretrainedModel
        (:func:`deepblur.pretrained.model_image_mean`, 0.5 for the shipped
        model, for which ``lam="auto"`` is calibrated), 0.5 for a
        ``(basis, regressor)`` pair; ``None``: solve in the input's units
        (with ``lam="auto"``, counts get a ``UserWarning``: its calibration
        is for images in [0, 1]).
    tile_stride : int or tuple of int, optional
        Offset between tiles; default half a tile.
    max_pixels : int, default=DEFAULT_MAX_PIXELS
        Cap on the pixels of one deblurring solve (see
        :func:`deblur_stitched`); the image is solved in one piece below it
        (with ``boundary="unknown"``: the image extended by half a kernel on
        each side).
    margin : int, optional
        Overlap of the block-wise solves (:func:`deblur_stitched`).
    target_mean : float, "auto" or None, default="auto"
        Scale each tile to this mean before predicting
        (:func:`estimate_tiles`). ``"auto"``: the training convention of a
        PretrainedModel (its training mean times ``training_gain``, as
        :func:`deepblur.pretrained.estimate_gamma` does for one image), and no
        scaling for a ``(basis, regressor)`` pair.
    unit_gain : bool, default=True
        Divide each tile's coefficients by the operator's gain
        (:func:`tile_gains` with ``interior=True``: the mean of ``H[gamma]``
        on a flat tile half a kernel and more from its border, the mass of
        its PSFs), with either ``boundary`` and any number of tiles, as
        :func:`~deepblur.pretrained.deblur_image`, so that the restored image
        keeps the input's brightness; the gain of a real blur is not
        identifiable.
    regularization : {"tv", "l1"}, default="tv"
    positive : bool, default=False
    max_iter : int, default=500
    tol : float, default=1e-5
    inner_iter : int, default=10
        Iterations of the TV proximal step per iteration (the solver's
        warning when the objective stalls may advise raising it).
    lipschitz : float, optional
        ``||H||_2^2`` if known (:func:`deblur_stitched`); estimated per solve
        by default.
    batch_size : int, default=64
        Tiles per call to the regressor.
    device : str or torch.device, default="cpu"
        Where the regressor and the solver run (``"auto"``: CUDA when present).
    dtype : {"float32", "float64"}, default="float32"
        Precision of the solver.
    progress : bool, optional
        Progress bars (default: for 64 tiles or blocks and more).
    check_boundary : bool, default=True
        Warn about a regressor trained on zero-boundary images (see Warns,
        and :func:`estimate_tiles`).

    Returns
    -------
    LargeDeblurResult
        ``restored`` (in the input's units), ``gamma_tiles``, ``grid``,
        ``lam`` (for the scaled image), ``blocks`` and ``operator()`` for the
        stitched operator.

    Warns
    -----
    BoundaryWarning
        Before the estimation, for an image of more than one tile and a regressor
        trained on zero-boundary images (the default network of
        :func:`~deepblur.pretrained.load_default`): its estimates on tiles,
        windows of a larger scene, are unreliable.

    Examples
    --------
    With the shipped network for real images (128x128 tiles) on a 192x256
    crop (the default network, trained with a zero boundary, is not made
    for tiles: :class:`~deepblur.exceptions.BoundaryWarning`):

    >>> from deepblur.pretrained import bundled_image, load_default
    >>> model = load_default(estimator="crop_network")
    >>> image = bundled_image("camera", (192, 256))
    >>> result = deblur_large(image, model, max_iter=20, tol=0)
    >>> result.restored.shape, result.grid.shape, result.gamma_tiles.shape
    ((192, 256), (2, 3), (6, 20))

    The result does not depend on the image's units (a 16-bit image is
    deblurred as its 8-bit version):

    >>> import numpy as np
    >>> bright = deblur_large(1000 * image, model, max_iter=20, tol=0)
    >>> bool(np.allclose(bright.restored, 1000 * result.restored, rtol=1e-3,
    ...                  atol=0.5))
    True
    """
    basis, regressor, img, scale = _large_input(image, model, image_mean)
    if isinstance(lam, str) and image_mean is None:
        warn_if_counts(img)             # solved in the image's units
    kernels, maps, model_boundary = _basis_parts(basis)
    tile_shape = tuple(int(s) for s in maps.shape[1:])
    # the solve's parameters before the network's minutes on the tiles
    _check_solve(img.shape, kernels.shape[1:], tile_shape, lam=lam,
                 boundary=boundary, regularization=regularization, dtype=dtype,
                 max_pixels=max_pixels, margin=margin,
                 model_boundary=model_boundary, lipschitz=lipschitz,
                 max_iter=max_iter, tol=tol, inner_iter=inner_iter)
    target_mean = _large_target_mean(model, target_mean)
    dev = resolve_device(device)
    module = getattr(regressor, "module_", None)
    moved = module is not None and dev.type != "cpu"
    # The network goes to the device for the estimates and back to where it
    # was (a CUDA network stays there; before, it was left on the CPU with
    # its device still saying CUDA). One call at a time moves a network:
    # tasks of a threaded scheduler share the model.
    with _NETWORK_MOVES if moved else contextlib.nullcontext():
        if moved:
            old_device = getattr(regressor, "device", None)
            home = next(module.parameters(), torch.empty(0)).device
            module.to(dev)
            regressor.device = str(dev)
        try:
            gamma, grid = estimate_tiles(img, regressor, tile_shape,
                                         stride=tile_stride,
                                         target_mean=target_mean,
                                         batch_size=batch_size,
                                         progress=progress,
                                         check_boundary=check_boundary)
        finally:
            if moved:
                module.to(home)
                regressor.device = old_device
    if unit_gain:
        try:
            gamma = _unit_gain_tiles(basis, gamma, grid)
        except ValueError as exc:
            raise ValueError(f"{exc} Pass unit_gain=False.") from None
    restored, info = _deblur_scaled(
        img, basis, gamma, grid, scale=scale, lam=lam,
        boundary=boundary, regularization=regularization, positive=positive,
        max_iter=max_iter, tol=tol, inner_iter=inner_iter,
        max_pixels=max_pixels, margin=margin, lipschitz=lipschitz, device=dev,
        dtype=dtype, progress=progress)
    return LargeDeblurResult(restored=restored, gamma_tiles=gamma, grid=grid,
                             basis=basis, lam=info["lam"], blocks=info["blocks"],
                             n_iter=info["n_iter"])
