"""Blurry-noisy observations ``y = H[gamma] u + eta`` for training and testing.

Scale convention
----------------
``H[alpha gamma] u = H[gamma] (alpha u)``: the scale of ``gamma`` can only be
read from an observation if the intensity of the clean image is known. The
simulator therefore normalises every clean image before blurring
(``normalize="mean"``: each image is divided by its mean and multiplied by
``image_mean``, default 0.5), so that the mean of ``y`` carries the gain of
the operator. Apply the same convention to real data: the estimated ``gamma``
is the operator that maps an image of mean ``image_mean`` to ``y``.
``normalize=None`` keeps the images as given (then the scale of ``gamma`` is
not identifiable beyond what the image statistics reveal).

Noise is white Gaussian, given either as a standard deviation or as a target
signal-to-noise ratio ``SNR = 10 log10(mean(H u ** 2) / sigma ** 2)`` in dB
(fixed, or a ``(low, high)`` range drawn uniformly per image).
"""

from __future__ import annotations

import math
import os
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch.utils.data import IterableDataset, get_worker_info

from deepblur._validation import (
    all_finite,
    native_contiguous,
    number_pair,
    resolve_device,
)
from deepblur.datasets.images import extract_patches

__all__ = ["BlurDataset", "blur_images", "make_blurred_images", "make_deblurring_pairs"]


def _check_basis(basis):
    if basis is None:
        raise ValueError("basis must be a fitted ProductConvolutionBasis; got None.")
    if not hasattr(basis, "operator_") and not hasattr(basis, "fit"):
        raise TypeError(
            "basis must be a ProductConvolutionBasis; got "
            f"{type(basis).__name__}."
        )
    check_is_fitted(basis, "operator_")
    return basis


def _check_range(value, name, low=0.0, allow_negative=False):
    """A float or a (low, high) pair; returns (lo, hi)."""
    if isinstance(value, Real) and not isinstance(value, bool):
        lo = hi = float(value)
    else:
        # numbers only: float() read ("0.01", "0.02") and (False, True)
        pair = number_pair(value)
        if pair is None:
            raise ValueError(
                f"{name} must be a float or a (low, high) pair; got {value!r}."
            )
        lo, hi = pair
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        raise ValueError(
            f"{name} must be finite with low <= high; got {value!r}."
        )
    if not allow_negative and lo < low:
        raise ValueError(f"{name} must be >= {low}; got {value!r}.")
    return lo, hi


def _noise_param(value, name="noise_std"):
    """A noise level as a user gives it, validated: a float or a (low, high) tuple."""
    lo, hi = _check_range(value, name)
    return lo if isinstance(value, Real) and not isinstance(value, bool) else (lo, hi)


def _check_noise(noise_std, snr):
    if snr is not None:
        if noise_std is not None:
            raise ValueError(
                "give the noise either as noise_std or as snr, not both; got "
                f"noise_std={noise_std!r} and snr={snr!r} (pass noise_std=None "
                "with snr)."
            )
        return None, _check_range(snr, "snr", allow_negative=True)
    if noise_std is None:
        return (0.0, 0.0), None
    return _check_range(noise_std, "noise_std"), None


def _check_normalize(normalize, image_mean):
    if normalize not in ("mean", None):
        raise ValueError(f"normalize must be 'mean' or None; got {normalize!r}.")
    if not (isinstance(image_mean, Real) and not isinstance(image_mean, bool)
            and math.isfinite(image_mean) and image_mean > 0):
        raise ValueError(f"image_mean must be a positive, finite float; got "
                         f"{image_mean!r}.")


def _check_not_path(images, name="images"):
    """Refuse a folder or a name where images are expected (``deepblur
    train``'s config takes both; the Python functions take the images)."""
    paths = (str, bytes, os.PathLike)
    listed = (images.values() if isinstance(images, dict) else images
              if isinstance(images, (list, tuple)) else ())
    if isinstance(images, paths) or any(isinstance(im, paths) for im in listed):
        raise TypeError(
            f"{name} must be images (arrays, a list or a dict of them); got "
            f"{images!r}: read a folder with deepblur.datasets.load_images, and "
            "the bundled natural training images (images = 'natural' in a "
            "deepblur train config) are deepblur.datasets.natural_image_split()[0].")


def _check_images(images, image_shape, name="images"):
    _check_not_path(images, name)
    if torch.is_tensor(images):
        t = images
    else:
        arr = np.asarray(images)
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers; got an array of "
                            f"dtype {arr.dtype}.")
        t = torch.as_tensor(native_contiguous(arr))
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3:
        raise ValueError(
            f"{name} must have shape (n, H, W) or (H, W); got {tuple(t.shape)}."
        )
    if tuple(t.shape[1:]) != tuple(image_shape):
        raise ValueError(
            f"{name} must have the basis's image_shape {tuple(image_shape)}; got "
            f"shape {tuple(t.shape)}."
        )
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if not all_finite(t):
        raise ValueError(f"{name} must be finite; got NaN or Inf values.")
    if len(t) == 0:
        raise ValueError(f"{name} must not be empty.")
    return t


def _uniform(lo, hi, n, generator, like):
    u = torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)
    return lo + (hi - lo) * u


BOUNDARIES = ("zero", "crop")


def _check_boundary(boundary):
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}; got {boundary!r}.")
    return boundary


def _crop_operator(basis):
    """The basis's operator on the image padded by a kernel radius, and the margin.

    ``boundary="crop"``: the observed image is a window on a larger scene, as
    every real image (and every tile of a large one) is. The scene is the
    clean image extended by reflection, the maps are extended by their edge
    values (the PSF just outside the field is the PSF at its edge); the blur is
    computed on the padded scene and the window is cropped: no dark border
    that a network could read the blur from.
    """
    from deepblur.operators.product_convolution import ProductConvolution

    kh, kw = basis.kernels_.shape[1:]
    margin = (kh // 2, kw // 2)
    maps = np.pad(np.asarray(basis.maps_), ((0, 0), (margin[0],) * 2,
                                            (margin[1],) * 2), mode="edge")
    return ProductConvolution(basis.kernels_, maps, boundary="zero"), margin


def _blur(operator, u, gamma):
    return (operator.forward(u, gamma) if gamma.ndim == 2
            else operator.forward_many(u, gamma))


def _simulate(u, gamma, operator, noise_std, snr, normalize, image_mean, generator,
              margin=None):
    """Core: normalise, blur, add noise; all torch, batched, on u's device.

    With ``margin`` (crop boundary), ``operator`` acts on images padded by
    ``margin``: ``u`` is padded by reflection before the blur and the result
    cropped back. With ``gamma`` of shape (n, g, K), each image is blurred by
    its ``g`` operators (:meth:`ProductConvolution.forward_many`) and the
    ``n * g`` results come image by image.
    """
    if normalize == "mean":
        mean = u.mean(dim=(1, 2), keepdim=True)
        if (mean <= 0).any():
            raise ValueError(
                "normalize='mean' needs images with a positive mean; got an "
                "image whose mean is <= 0."
            )
        u = u * (image_mean / mean)
    if margin is not None:
        (my, mx), (H, W) = margin, u.shape[-2:]
        if my >= H or mx >= W:
            raise ValueError(
                f"boundary='crop' pads the images by the kernel radius {margin} "
                f"by reflection; the images ({H}x{W}) must be larger than that."
            )
        padded = torch.nn.functional.pad(u[:, None], (mx, mx, my, my),
                                         mode="reflect")[:, 0]
        clean = _blur(operator, padded, gamma)[..., my:my + H, mx:mx + W]
    else:
        clean = _blur(operator, u, gamma)
    clean = clean.reshape(-1, *u.shape[1:])
    n = clean.shape[0]
    if snr is not None:
        snr_db = _uniform(snr[0], snr[1], n, generator, clean)
        power = clean.square().mean(dim=(1, 2))
        sigma = torch.sqrt(power / 10 ** (snr_db / 10))
    else:
        sigma = _uniform(noise_std[0], noise_std[1], n, generator, clean)
    noise = torch.randn(clean.shape, generator=generator, device=clean.device,
                        dtype=clean.dtype)
    return clean + sigma[:, None, None] * noise


def _torch_generator(random_state, device):
    rng = check_random_state(random_state)
    seed = int(rng.randint(np.iinfo(np.int32).max))
    return torch.Generator(device=device).manual_seed(seed)


def blur_images(images, gamma, basis, *, noise_std=0.01, snr=None, normalize="mean",
                image_mean=0.5, boundary="zero", random_state=None):
    r"""Blur images by ``H[gamma]`` and add white Gaussian noise.

    Parameters
    ----------
    images : array-like or torch.Tensor of shape (n, H, W) or (H, W)
        Clean images at the basis's ``image_shape``.
    gamma : array-like or torch.Tensor of shape (n, K) or (K,)
        Coefficients of the operators, one row per image (or one for all).
    basis : ProductConvolutionBasis
        Fitted basis.
    noise_std : float or (low, high), default=0.01
        Noise standard deviation (per image, uniform in the range); None:
        no noise. To give the noise by ``snr`` instead, pass
        ``noise_std=None`` with it (both given is an error).
    snr : float or (low, high), optional
        Target SNR in dB, ``10 log10(mean((H u)^2) / sigma^2)``.
    normalize : {"mean", None}, default="mean"
        Scale each clean image to mean ``image_mean`` first (see the module
        notes on the scale of ``gamma``).
    image_mean : float, default=0.5
    boundary : {"zero", "crop"}, default="zero"
        ``"zero"``: the basis's operator, a dark scene around the image (its
        border darkens with the blur). ``"crop"``: the image is a window on a
        larger scene (extended by reflection, the maps by their edge values),
        blurred and cropped: what a real image or a tile of a large one is.
    random_state : int, RandomState instance or None

    Returns
    -------
    Array of shape (n, H, W), float32 (numpy in, numpy out; a tensor stays a
    tensor on its device, in its floating dtype).

    Examples
    --------
    >>> import numpy as np
    >>> from deepblur.datasets.simulate import blur_images
    >>> from deepblur.estimators.basis import ProductConvolutionBasis
    >>> e = np.zeros((1, 3, 3)); e[0, 1, 1] = 1.0    # identity operator
    >>> basis = ProductConvolutionBasis.from_components(e, np.ones((1, 8, 8)))
    >>> y = blur_images(np.full((2, 8, 8), 0.2), [[2.0], [1.0]], basis,
    ...                 noise_std=0.0)
    >>> y.shape, round(float(y[0].mean()), 4), round(float(y[1].mean()), 4)
    ((2, 8, 8), 1.0, 0.5)
    """
    basis = _check_basis(basis)
    noise_std, snr = _check_noise(noise_std, snr)
    _check_normalize(normalize, image_mean)
    _check_boundary(boundary)
    is_numpy = not torch.is_tensor(images)
    u = _check_images(images, basis.image_shape_)
    if is_numpy:
        u = u.to(torch.float32)
    K = basis.kernels_.shape[0]
    g = gamma if torch.is_tensor(gamma) else torch.as_tensor(np.asarray(gamma,
                                                                        float))
    g = g.to(dtype=u.dtype, device=u.device)
    if g.ndim == 1:
        g = g[None]
    if g.ndim != 2 or g.shape[1] != K or g.shape[0] not in (1, u.shape[0]):
        raise ValueError(
            f"gamma must have shape (n={u.shape[0]}, K={K}) or (K,); got "
            f"{tuple(np.shape(gamma))}."
        )
    if not torch.isfinite(g).all():
        raise ValueError("gamma must be finite; got NaN or Inf values.")
    gen = _torch_generator(random_state, u.device)
    operator, margin = ((basis.operator_, None) if boundary == "zero"
                        else _crop_operator(basis))
    with torch.no_grad():
        y = _simulate(u, g, operator, noise_std, snr, normalize, image_mean, gen,
                      margin)
    return y.cpu().numpy() if is_numpy else y


def _patch_pool(images, image_shape, n_patches, random_state, normalize="mean"):
    """Patches at ``image_shape``: given as an array, or cropped from images
    (without black crops when ``normalize="mean"``)."""
    _check_not_path(images)
    if isinstance(images, dict) or (isinstance(images, (list, tuple)) and any(
            np.shape(im) != tuple(image_shape) for im in images)):
        # Filled in place, with no float64 copy (a pool of 20 000 patches of
        # 128x128 is 1.3 GB in float32, three times that at the peak of a
        # float64 extraction), by chunks of 1 000 as the shipped network's
        # recipe has always drawn them.
        pool = np.empty((n_patches, *image_shape), dtype=np.float32)
        for start in range(0, n_patches, 1000):
            stop = min(start + 1000, n_patches)
            extract_patches(images, stop - start, image_shape, augment=False,
                            random_state=random_state, out=pool[start:stop])
        if normalize != "mean":
            return pool
        # Crops of a black background cannot be scaled to a mean brightness:
        # leave them out of the pool rather than fail in the middle of training.
        keep = pool.mean(axis=(1, 2)) > 1e-6
        if not keep.any():
            raise ValueError("images must have regions with a positive mean; "
                             f"all {len(pool)} cropped patches are black.")
        if keep.all():
            return pool
        return pool[keep]
    return images


def _dihedral(u, generator):
    """Random flips and 90-degree rotations, per image (square images)."""
    n = u.shape[0]
    flip = torch.rand(n, generator=generator, device=u.device) < 0.5
    u = torch.where(flip[:, None, None], u.flip(-1), u)
    if u.shape[-1] == u.shape[-2]:
        k = torch.randint(4, (n,), generator=generator, device=u.device)
        rots = torch.stack([torch.rot90(u, r, dims=(-2, -1)) for r in range(4)])
        u = rots[k, torch.arange(n, device=u.device)]
    else:
        flipv = torch.rand(n, generator=generator, device=u.device) < 0.5
        u = torch.where(flipv[:, None, None], u.flip(-2), u)
    return u


def make_blurred_images(images, basis, sampler, n_samples=1000, *, noise_std=0.01,
                        snr=None, normalize="mean", image_mean=0.5, augment=True,
                        pool_size=2000, boundary="zero", random_state=None):
    r"""Fixed training/test arrays ``(X, y)``: blurry images and their ``gamma``.

    Each sample draws a clean patch ``u`` (with replacement, random flips and
    90° rotations when ``augment``), ``gamma`` from ``sampler`` (Algorithm 2),
    and returns ``y = H[gamma] u + eta`` (see :func:`blur_images`).

    Parameters
    ----------
    images : ndarray of shape (m, H, W), or dict / list of larger images
        Clean patches at the basis's image shape, or source images from which
        ``pool_size`` random patches are cropped first.
    basis : ProductConvolutionBasis
        Fitted basis.
    sampler : ConeSampler
        Fitted sampler of ``gamma`` (e.g. on ``ConeSimplifier().rays_``).
    n_samples : int, default=1000
    noise_std, snr, normalize, image_mean
        See :func:`blur_images`.
    augment : bool, default=True
    pool_size : int, default=2000
        Patches cropped from source images (ignored for an array of patches).
    boundary : {"zero", "crop"}, default="zero"
        See :func:`blur_images`.
    random_state : int, RandomState instance or None

    Returns
    -------
    X : ndarray of shape (n_samples, H, W), float32
        Blurry-noisy images.
    y : ndarray of shape (n_samples, K), float32
        Their coefficients ``gamma``.

    Examples
    --------
    >>> import numpy as np
    >>> from deepblur.datasets.simulate import make_blurred_images
    >>> from deepblur.estimators.basis import ProductConvolutionBasis
    >>> from deepblur.estimators.cone import ConeSampler
    >>> rng = np.random.default_rng(0)
    >>> basis = ProductConvolutionBasis.from_components(
    ...     rng.random((3, 5, 5)), rng.random((3, 16, 16)))
    >>> sampler = ConeSampler(alpha_range=(0.8, 1.2), random_state=0).fit(np.eye(3))
    >>> X, y = make_blurred_images(rng.random((10, 16, 16)), basis, sampler, 4,
    ...                            random_state=0)
    >>> X.shape, y.shape
    ((4, 16, 16), (4, 3))
    """
    if (not isinstance(n_samples, Integral) or isinstance(n_samples, bool)
            or n_samples < 1):
        raise ValueError(f"n_samples must be a positive int; got {n_samples!r}.")
    dataset = BlurDataset(images, basis, sampler, batch_size=n_samples, n_batches=1,
                          noise_std=noise_std, snr=snr, normalize=normalize,
                          image_mean=image_mean, augment=augment,
                          pool_size=pool_size, boundary=boundary,
                          random_state=random_state)
    X, y = next(iter(dataset))
    return X[:, 0].numpy(), y.numpy()


class BlurDataset(IterableDataset):
    r"""Endless stream of fresh batches ``(y, gamma)`` drawn on the fly.

    Every batch draws new clean patches from a pool kept in memory (random
    flips and 90° rotations), new ``gamma`` from the sampler and new noise,
    and blurs the batch in one call on ``device``: effectively infinite
    training data. An "epoch" is ``n_batches`` batches; iterating again
    continues the random stream (new data). ``DataLoader`` workers get copies
    of the dataset at every pass, each with its own stream: seeded by
    ``(random_state, worker, epoch)`` once :meth:`set_epoch` has been called
    (as :class:`ResNetBlurRegressor` does before each epoch; reproducible
    epoch by epoch), else by the loader's seed for the pass, new at every
    pass (reproducible under ``torch.manual_seed`` or the loader's
    ``generator``). Successive passes never repeat a sample as long as each
    either sets its own epoch or none is set (``set_epoch(None)`` clears it).

    Parameters
    ----------
    images : ndarray of shape (m, H, W), or dict / list of larger images
        Patch pool, or source images to crop ``pool_size`` patches from.
    basis : ProductConvolutionBasis
        Fitted basis.
    sampler : ConeSampler
        Fitted sampler of ``gamma``.
    batch_size : int, default=64
    n_batches : int, default=100
        Batches per pass over the dataset (``len(dataset)``).
    noise_std, snr, normalize, image_mean
        See :func:`blur_images`.
    augment : bool, default=True
    pool_size : int, default=2000
        Patches cropped from ``images`` and kept on ``device``
        (``pool_size * H * W * 4`` bytes).
    boundary : {"zero", "crop"}, default="zero"
        See :func:`blur_images`; ``"crop"`` trains a regressor for real images
        and tiles of large images (no dark border to read the blur from).
    gammas_per_image : int, default=1
        Each clean patch of a batch is blurred by this many operators (fresh
        ``gamma`` and noise for each), so a batch holds
        ``ceil(batch_size / gammas_per_image)`` patches. The ``K`` spectra of
        a patch are then shared by its operators
        (:meth:`~deepblur.operators.ProductConvolution.forward_many`): on a
        CPU, 8 draws the batches about 4 times faster. Measured: a network
        learnt slightly less per image (13.0 against 12.7 % after 64 000
        images, one seed), and the width-8 15-minute CPU recipe, bound by its
        training step, gained nothing (benchmarks/README.md, "Data reuse and
        depth"); it pays where drawing the data is the bottleneck.
    device : str or torch.device, default="cpu"
        Where the batches are generated (``"auto"``: CUDA when available);
        CUDA where there is none is an error.
    random_state : int, RandomState instance or None

    Notes
    -----
    Batches are ``(X, y)`` with ``X`` of shape ``(batch_size, 1, H, W)`` and
    ``y`` of shape ``(batch_size, K)``, float32. Use it with
    ``DataLoader(dataset, batch_size=None)``; :class:`ResNetBlurRegressor`
    does this when given a ``BlurDataset`` in ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from deepblur.datasets.simulate import BlurDataset
    >>> from deepblur.estimators.basis import ProductConvolutionBasis
    >>> from deepblur.estimators.cone import ConeSampler
    >>> rng = np.random.default_rng(0)
    >>> basis = ProductConvolutionBasis.from_components(
    ...     rng.random((3, 5, 5)), rng.random((3, 16, 16)))
    >>> sampler = ConeSampler(random_state=0).fit(np.eye(3))
    >>> data = BlurDataset(rng.random((10, 16, 16)), basis, sampler,
    ...                    batch_size=8, n_batches=2, random_state=0)
    >>> [tuple(X.shape) for X, y in data]
    [(8, 1, 16, 16), (8, 1, 16, 16)]
    """

    def __init__(self, images, basis, sampler, *, batch_size=64, n_batches=100,
                 noise_std=0.01, snr=None, normalize="mean", image_mean=0.5,
                 augment=True, pool_size=2000, boundary="zero",
                 gammas_per_image=1, device="cpu", random_state=None):
        super().__init__()
        self.images = images
        self.basis = basis
        self.sampler = sampler
        self.batch_size = batch_size
        self.n_batches = n_batches
        self.noise_std = noise_std
        self.snr = snr
        self.normalize = normalize
        self.image_mean = image_mean
        self.augment = augment
        self.pool_size = pool_size
        self.boundary = boundary
        self.gammas_per_image = gammas_per_image
        self.device = device
        self.random_state = random_state
        self._state = None
        self._epoch = 0
        self._epoch_set = False

    def set_epoch(self, epoch):
        """Start the random stream of epoch ``epoch`` (as torch's samplers do).

        A ``DataLoader`` with workers copies the dataset into new worker
        processes at every epoch, so a stream kept in the dataset would restart
        from its seed and every epoch would replay the same samples. The
        stream is therefore seeded by ``(random_state, worker, epoch)``:
        :class:`ResNetBlurRegressor` calls ``set_epoch`` with skorch's epoch
        number before each training epoch, which also makes a resumed training
        draw exactly the data of an uninterrupted one.

        Parameters
        ----------
        epoch : int or None
            None returns to the seeding of a dataset whose epoch was never
            set: in workers, by the loader's seed for each pass (what
            :class:`ResNetBlurRegressor` does after its training).
        """
        if epoch is None:
            self._epoch, self._epoch_set = 0, False
            if self._state is not None:
                self._state["generator"] = None
            return
        if not isinstance(epoch, Integral) or isinstance(epoch, bool) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int; got {epoch!r}.")
        self._epoch = int(epoch)
        self._epoch_set = True
        if self._state is not None:
            self._state["generator"] = None

    def _setup(self):
        basis = _check_basis(self.basis)
        check_is_fitted(self.sampler, "generators_")
        for name in ("batch_size", "n_batches", "pool_size", "gammas_per_image"):
            value = getattr(self, name)
            if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}.")
        K = basis.kernels_.shape[0]
        if self.sampler.generators_.shape[1] != K:
            raise ValueError(
                f"sampler must draw gamma with K={K} coefficients (the basis's "
                f"n_components); got generators of shape "
                f"{self.sampler.generators_.shape}."
            )
        noise_std, snr = _check_noise(self.noise_std, self.snr)
        _check_normalize(self.normalize, self.image_mean)
        _check_boundary(self.boundary)
        device = resolve_device(self.device)    # "auto"; CUDA where there is none
        rng = check_random_state(self.random_state)
        pool = _patch_pool(self.images, basis.image_shape_, self.pool_size, rng,
                           self.normalize)
        pool = _check_images(pool, basis.image_shape_).to(device, torch.float32)
        if self.normalize == "mean":
            # refused now rather than when a batch first draws one, mid-training
            dark = torch.nonzero(pool.mean(dim=(1, 2)) <= 0).flatten().tolist()
            if dark:
                raise ValueError(
                    f"normalize='mean' needs patches with a positive mean; "
                    f"{len(dark)} of the {len(pool)} given have a mean <= 0 "
                    f"(indices {dark[:10]}{', ...' if len(dark) > 10 else ''}).")
        seed = int(rng.randint(np.iinfo(np.int32).max))
        operator, margin = ((basis.operator_, None) if self.boundary == "zero"
                            else _crop_operator(basis))
        generators = torch.as_tensor(self.sampler.generators_, dtype=torch.float32,
                                     device=device)
        self._state = dict(pool=pool, operator=operator, generators=generators,
                           noise_std=noise_std, snr=snr, seed=seed, device=device,
                           generator=None, worker=None, margin=margin)

    def __len__(self):
        return int(self.n_batches)

    def _generator(self):
        st = self._state
        info = get_worker_info()
        worker = None if info is None else info.id
        if st["generator"] is None or st["worker"] != worker:
            if worker is not None and not getattr(self, "_epoch_set", False):
                # a worker's copy cannot tell one pass from the next: the
                # loader's seed for this pass (base seed + worker) can
                seed = (st["seed"] + 1_000_003 * (info.seed % 1_000_000_007)
                        ) % (2**63 - 1)
            else:
                seed = (st["seed"] + (0 if worker is None else 7919 * (worker + 1))
                        + 1_000_003 * self._epoch) % (2**63 - 1)
            st["generator"] = torch.Generator(device=st["device"]).manual_seed(seed)
            st["worker"] = worker
        return st["generator"]

    def draw(self, n):
        """One batch of ``n`` fresh samples ``(X (n, 1, H, W), y (n, K))``."""
        from deepblur.solvers.cone import sample_cone_torch

        if not isinstance(n, Integral) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive int; got {n!r}.")
        n = int(n)

        if self._state is None:
            self._setup()
        st = self._state
        gen = self._generator()
        per_image = int(self.gammas_per_image)
        m = -(-n // per_image)                  # patches, each blurred per_image times
        idx = torch.randint(len(st["pool"]), (m,), generator=gen, device=st["device"])
        u = st["pool"][idx]
        if self.augment:
            u = _dihedral(u, gen)
        alpha_range = tuple(float(a) for a in self.sampler.alpha_range)
        gamma = sample_cone_torch(st["generators"], m * per_image,
                                  max_rays=self.sampler.max_rays_,
                                  alpha_range=alpha_range, generator=gen)
        per_patch = gamma if per_image == 1 else gamma.reshape(m, per_image, -1)
        with torch.no_grad():
            X = _simulate(u, per_patch, st["operator"], st["noise_std"], st["snr"],
                          self.normalize, self.image_mean, gen, st["margin"])
        return X[:n, None].contiguous(), gamma[:n]

    def __iter__(self):
        if self._state is None:
            self._setup()
        info = get_worker_info()
        n_batches = int(self.n_batches)
        if info is not None:     # split the epoch's batches between workers
            n_batches = len(range(info.id, n_batches, info.num_workers))
        for _ in range(n_batches):
            yield self.draw(int(self.batch_size))

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_state"] = None     # rebuilt lazily (torch.Generator is not picklable)
        return state


def make_deblurring_pairs(images, operators, n_samples=100, *, noise_std=0.01,
                          image_mean=0.5, augment=True, random_state=None):
    r"""(blurry, clean) image pairs blurred by given space-varying operators.

    Unlike :func:`make_blurred_images`, the blur does not come from a fitted
    basis: each sample is blurred by one of ``operators`` (drawn uniformly),
    with its own kernels and maps, ``y = sum_i e_i * (f_i . u) + eta``. The
    pairs are therefore independent of any basis or cone one may want to
    select (the ground truth of a joint search over ``K`` and ``lam``).

    Parameters
    ----------
    images : ndarray of shape (m, H, W), or dict / list of larger images
        Clean patches at the operators' image shape, or source images from
        which random patches are cropped (flips and 90° rotations when
        ``augment``).
    operators : Bunch
        As returned by :func:`deepblur.datasets.make_random_operators`:
        ``kernels`` of shape (P, n_pairs, kh, kw) and ``maps`` of shape
        (P, n_pairs, H, W).
    n_samples : int, default=100
    noise_std : float or (low, high), default=0.01
        Standard deviation of the white Gaussian noise (uniform in the
        range); None: no noise.
    image_mean : float, default=0.5
        Each clean patch is scaled to this mean before blurring (the scale
        convention of :func:`blur_images`); ``clean`` is returned scaled.
    augment : bool, default=True
    random_state : int, RandomState instance or None

    Returns
    -------
    blurry : ndarray of shape (n_samples, H, W), float32
    clean : ndarray of shape (n_samples, H, W), float32
        The scaled clean patches.

    Examples
    --------
    >>> import numpy as np
    >>> from deepblur.datasets import make_random_operators
    >>> from deepblur.datasets.simulate import make_deblurring_pairs
    >>> ops = make_random_operators(2, image_shape=(16, 16), kernel_shape=(5, 5),
    ...                             grid_shape=(4, 4), random_state=0)
    >>> rng = np.random.default_rng(0)
    >>> blurry, clean = make_deblurring_pairs(rng.random((5, 16, 16)) + 0.1, ops,
    ...                                       3, random_state=0)
    >>> blurry.shape, float(clean.mean().round(3))
    ((3, 16, 16), 0.5)
    """
    from deepblur.operators.product_convolution import ProductConvolution

    for key in ("kernels", "maps"):
        if not hasattr(operators, key) and not (isinstance(operators, dict)
                                                and key in operators):
            raise ValueError(
                "operators must be the result of make_random_operators (with "
                f"'kernels' and 'maps'); got {type(operators).__name__} without "
                f"{key!r}."
            )
    kernels = np.asarray(operators["kernels"], dtype=np.float64)
    maps = np.asarray(operators["maps"], dtype=np.float64)
    if kernels.ndim != 4 or maps.ndim != 4 or kernels.shape[:2] != maps.shape[:2]:
        raise ValueError(
            "operators must hold kernels (P, n_pairs, kh, kw) and maps (P, n_pairs, "
            f"H, W); got {kernels.shape} and {maps.shape}."
        )
    if (not isinstance(n_samples, Integral) or isinstance(n_samples, bool)
            or n_samples < 1):
        raise ValueError(f"n_samples must be a positive int; got {n_samples!r}.")
    noise_std, _ = _check_noise(noise_std, None)       # None: no noise
    _check_normalize("mean", image_mean)
    image_shape = maps.shape[-2:]
    rng = check_random_state(random_state)
    _check_not_path(images)
    if isinstance(images, dict) or (isinstance(images, (list, tuple)) and any(
            np.shape(im) != tuple(image_shape) for im in images)):
        u = extract_patches(images, n_samples, image_shape, augment=augment,
                            random_state=rng)
    else:
        pool = _check_images(images, image_shape)
        pool = pool.detach().cpu().numpy() if torch.is_tensor(pool) else pool
        u = np.asarray(pool, dtype=np.float64)[rng.randint(len(pool),
                                                           size=n_samples)]
        if augment:
            gen = torch.Generator().manual_seed(int(rng.randint(2**31 - 1)))
            u = _dihedral(torch.from_numpy(np.ascontiguousarray(u)), gen).numpy()
    u = np.asarray(u, dtype=np.float64)
    means = u.mean(axis=(1, 2), keepdims=True)
    if (means <= 0).any():
        raise ValueError("images must have a positive mean; got a patch whose "
                         "mean is <= 0.")
    clean = u * (float(image_mean) / means)
    which = rng.randint(len(kernels), size=n_samples)
    blurry = np.empty_like(clean)
    for p in np.unique(which):
        idx = np.flatnonzero(which == p)
        op = ProductConvolution(kernels[p], maps[p])
        with torch.no_grad():
            out = op.forward(torch.from_numpy(clean[idx]),
                             torch.ones(kernels.shape[1], dtype=torch.float64))
        blurry[idx] = out.numpy()
    sigma = rng.uniform(noise_std[0], noise_std[1], size=n_samples)
    blurry += sigma[:, None, None] * rng.standard_normal(blurry.shape)
    return blurry.astype(np.float32), clean.astype(np.float32)
