"""Apply a trained regressor: estimate the blur of an image, deblur it, demo.

Intensity convention
--------------------
The regressor was trained on clean images scaled to mean ``image_mean`` (0.5)
and blurred by operators drawn from the setting's sampler, whose gain (the
mean of the operator applied to a flat image, :func:`operator_gain`) is not 1
in general: the sampler draws conical combinations of unit-norm rays. The
mean of a training observation is therefore about
``image_mean * training_gain(model)``
(:func:`training_gain`). The gain of a real image's blur is not identifiable
(``H[a g] u = H[g] (a u)``, the scale ambiguity of the paper), so
:func:`estimate_gamma` scales the image to that mean, the mean the network
saw, before predicting. :func:`deblur_image` then rescales the operator to
unit gain (its PSFs have mass 1: :func:`operator_gain` with
``interior=True``, whatever the boundary), deblurs the image scaled to mean
``image_mean`` and maps the result back to the input's units, so that the
deblurred image keeps the brightness of the input.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import clone

from deepblur._validation import check_image_mean, resolve_device
from deepblur.datasets.images import (
    MICROSCOPY_IMAGES,
    NATURAL_IMAGES,
    NATURAL_TEST_IMAGES,
    load_microscopy_images,
    load_natural_images,
)
from deepblur.datasets.simulate import blur_images
from deepblur.estimators.deblur import TVDeblurrer
from deepblur.metrics import snr
from deepblur.solvers.tv import check_iterations

__all__ = [
    "BUNDLED_IMAGES",
    "bundled_image",
    "deblur_image",
    "estimate_gamma",
    "operator_gain",
    "simulate_blind_deblurring",
    "training_gain",
]

#: Names accepted by :func:`bundled_image`; the held-out natural test images
#: (never cropped for training) come first.
BUNDLED_IMAGES = tuple(NATURAL_TEST_IMAGES) + tuple(
    n for n in list(NATURAL_IMAGES) + list(MICROSCOPY_IMAGES)
    if n not in NATURAL_TEST_IMAGES)

_IMAGE_MEAN = 0.5


def bundled_image(name="camera", shape=(128, 128), *, image_mean=_IMAGE_MEAN):
    """A centred crop of a bundled image, scaled to mean ``image_mean``.

    The same scale convention as the simulator (``normalize="mean"`` of
    :func:`deepblur.datasets.blur_images`): the crop of the grayscale image in
    [0, 1] is divided by its mean and multiplied by ``image_mean``.

    Parameters
    ----------
    name : str, default="camera"
        One of :data:`BUNDLED_IMAGES`. ``camera``, ``coffee`` and ``flower``
        are held out of the training data of the shipped model.
    shape : (H, W), default=(128, 128)
        Crop shape (the model's ``image_shape``).
    image_mean : float, default=0.5

    Returns
    -------
    ndarray of shape ``shape``, float64, mean ``image_mean``.

    Examples
    --------
    >>> u = bundled_image("camera", (64, 64))
    >>> u.shape, round(float(u.mean()), 6)
    ((64, 64), 0.5)
    """
    if name in NATURAL_IMAGES:
        img = load_natural_images([name])[name]
    elif name in MICROSCOPY_IMAGES:
        img = load_microscopy_images([name])[name]
    else:
        raise ValueError(
            f"image must be one of the bundled images {list(BUNDLED_IMAGES)}; "
            f"got {name!r}."
        )
    h, w = (int(s) for s in shape)
    if img.shape[0] < h or img.shape[1] < w:
        raise ValueError(
            f"the bundled image {name!r} of shape {img.shape} is smaller than the "
            f"crop shape {(h, w)}."
        )
    r, c = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    crop = img[r:r + h, c:c + w]
    mean = crop.mean()
    if mean <= 0:
        raise ValueError(f"the crop of {name!r} is black: it cannot be scaled.")
    return crop * (image_mean / mean)


def _interior(basis):
    """Mask of the pixels at least half a kernel away from the border."""
    H, W = basis.image_shape_
    r, c = (k // 2 for k in basis.kernels_.shape[1:])
    mask = np.zeros((H, W), dtype=bool)
    mask[r:H - r, c:W - c] = True
    return mask


def operator_gain(basis, gamma, *, interior=False):
    """Mean of ``H[gamma]`` applied to a flat image of ones.

    The factor by which the operator scales the mean intensity of a flat
    image (1 for a blur that preserves the brightness).

    Parameters
    ----------
    basis : fitted ProductConvolutionBasis
    gamma : array-like of shape (K,) or (n, K)
    interior : bool, default=False
        Average over the pixels at least half a kernel away from the border
        only: the mass of the PSFs there, whatever the boundary model (the
        gain that :func:`deblur_image` rescales to 1). An image with no such
        pixel (kernels as large as the image) gets the mean mass of its
        PSFs, ``sum_k gamma_k sum(e_k) mean(f_k)``. By default the whole
        image, boundary losses included.

    Returns
    -------
    float or ndarray of shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> from deepblur import ProductConvolutionBasis
    >>> e = np.full((1, 3, 3), 1 / 9)                 # a 3x3 box blur
    >>> basis = ProductConvolutionBasis.from_components(e, np.ones((1, 8, 8)))
    >>> round(operator_gain(basis, [2.0]), 4)          # zero boundary: losses
    1.6806
    >>> operator_gain(basis, [2.0], interior=True)
    2.0
    """
    g = np.asarray(gamma, dtype=np.float64)
    ones = np.ones(tuple(basis.image_shape_))
    flat = np.asarray(basis.apply(ones, np.atleast_2d(g))).reshape(-1, ones.size)
    inside = _interior(basis).ravel() if interior else None
    if inside is not None and not inside.any():
        # no pixel half a kernel from the border: the PSFs' mean mass (the
        # PSF at x is sum_k f_k(x) e_k), what the interior measures elsewhere
        kernels = np.asarray(basis.kernels_, dtype=np.float64)
        maps = np.asarray(basis.maps_, dtype=np.float64)
        mass = kernels.sum(axis=(1, 2)) * maps.reshape(len(maps), -1).mean(axis=1)
        gains = np.atleast_2d(g) @ mass
        return gains if g.ndim == 2 else float(gains[0])
    if interior:
        flat = flat[:, inside]
    gains = flat.mean(axis=1)
    return gains if g.ndim == 2 else float(gains[0])


def _model_boundary(model):
    """How the model's training images were blurred at their border.

    The regressor's own record (``training_boundary_``, set by training on a
    :class:`~deepblur.datasets.BlurDataset` and kept by
    :func:`~deepblur.pretrained.save_model`) comes first: a network may be
    saved in a setting whose ``boundary`` is not the one it learnt from.
    Models without that record fall back to ``model.setting["boundary"]``,
    then to ``"zero"`` (the paper's).

    Parameters
    ----------
    model : PretrainedModel

    Returns
    -------
    {"zero", "crop"}
    """
    trained = getattr(model.regressor, "training_boundary_", None)
    if trained is not None:
        return trained
    return (getattr(model, "setting", None) or {}).get("boundary", "zero")


def training_gain(model):
    """Mean gain of the operators the model was trained on.

    Algorithm 2 draws ``alpha * sum_j beta_j r_j`` (``alpha`` uniform in
    ``alpha_range``, ``beta`` uniform on the simplex, rays ``r_j`` chosen
    uniformly), so the expected gain is
    ``mean(alpha_range) * mean_r operator_gain(r)`` over the sampler's rays.
    The gain is that of the boundary the training images were blurred with
    (the regressor's ``training_boundary_`` when it records one, else
    ``model.setting["boundary"]``): the whole image's, boundary losses
    included, for ``"zero"``; the interior's for ``"crop"`` (a window of a
    larger scene loses no light at its border; on the shipped basis the two
    differ by 3 %).

    Parameters
    ----------
    model : PretrainedModel

    Returns
    -------
    float
    """
    rays = np.asarray(model.sampler.generators_, dtype=np.float64)
    alpha = float(np.mean(model.sampler.alpha_range))
    crop = _model_boundary(model) == "crop"
    return alpha * float(np.mean(operator_gain(model.basis, rays, interior=crop)))


def model_image_mean(model):
    """The mean of the clean images the model was trained on.

    Images are scaled to it (times :func:`training_gain` for the estimate)
    before the model reads them.

    Parameters
    ----------
    model : PretrainedModel

    Returns
    -------
    float
        ``model.setting["image_mean"]``; 0.5, the default setting's, for
        models that do not record it.

    Examples
    --------
    >>> from deepblur.pretrained import load_default
    >>> model_image_mean(load_default())
    0.5
    """
    value = (getattr(model, "setting", None) or {}).get("image_mean", _IMAGE_MEAN)
    return check_image_mean(value)


def _resolve_image_mean(model, image_mean):
    return (model_image_mean(model) if image_mean is None
            else check_image_mean(image_mean))


def _check_image(image, image_shape):
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise ValueError(f"image must be 2-D (H, W); got shape {img.shape}.")
    if tuple(img.shape) != tuple(image_shape):
        size = "larger" if img.size > np.prod(image_shape) else "smaller"
        raise ValueError(
            f"image of shape {img.shape} is {size} than the model's input "
            f"{tuple(image_shape)}: the model estimates the blur of "
            f"{image_shape[0]}x{image_shape[1]} images only; crop or tile the "
            "image to that shape."
        )
    if not np.isfinite(img).all():
        raise ValueError("image must contain only finite values; got NaN or Inf.")
    mean = img.mean()
    if not mean > 0:
        raise ValueError(
            "image must have a positive mean intensity (it is rescaled to the "
            f"mean of the training data); got mean {mean:.4g}."
        )
    return img, mean


def estimate_gamma(model, image, *, image_mean=None):
    """Estimate the operator of a blurry image with a trained regressor.

    The image is scaled to the mean of the training observations,
    ``image_mean * training_gain(model)``, before predicting (the gain of a
    real image's blur is not identifiable; see the module notes).

    Parameters
    ----------
    model : PretrainedModel
        From :func:`~deepblur.pretrained.load_model` or
        :func:`~deepblur.pretrained.load_default`.
    image : array-like of shape (H, W)
        Blurry image at the model's ``image_shape``, any positive intensity
        scale.
    image_mean : float, optional
        Mean of the clean training images; default the model's
        (:func:`model_image_mean`: ``setting["image_mean"]``, 0.5 for the
        shipped model).

    Returns
    -------
    gamma : ndarray of shape (K,)
        Coefficients of the estimated operator.
    scale : float
        The factor applied to the image before predicting.
    """
    image_mean = _resolve_image_mean(model, image_mean)
    img, mean = _check_image(image, model.basis.image_shape_)
    scale = image_mean * training_gain(model) / mean
    gamma = model.regressor.predict((img * scale)[None].astype(np.float32))[0]
    return np.asarray(gamma, dtype=np.float64), float(scale)


def _deblurrer(basis, lam, regularization, positive, device, max_iter,
               tol=1e-5, inner_iter=10):
    deblurrer = TVDeblurrer(basis, lam=lam, regularization=regularization,
                            positive=positive, max_iter=max_iter, tol=tol,
                            inner_iter=inner_iter, device=device).fit()
    # its images are scaled here (to the model's image mean): lam="auto"'s
    # warning about images in counts does not concern them
    deblurrer._scaled_input = True
    return deblurrer


def _deblur_unknown_boundary(basis, y, gamma, lam, regularization, positive,
                             device, max_iter, tol=1e-5, inner_iter=10):
    """``min_u R(u) + lam/2 ||M H[gamma] u - y||^2`` with ``u`` the image
    extended by half a kernel on each side and ``M`` the crop to the image.

    Every pixel is fitted and nothing is assumed about the scene outside the
    image (it is estimated with the image, then dropped):
    :func:`deepblur.tiling.deblur_stitched` with ``boundary="unknown"`` on
    one tile.
    """
    from deepblur.tiling import _deblur_stitched, tile_grid

    shape = tuple(int(n) for n in basis.image_shape_)
    kh, kw = basis.kernels_.shape[1:]
    # y is scaled to the model's image mean: no warning about counts
    u, _ = _deblur_stitched(
        y, basis, np.asarray(gamma, dtype=np.float64)[None],
        tile_grid(shape, shape), lam=lam, boundary="unknown",
        regularization=regularization, positive=positive, max_iter=max_iter,
        tol=tol, inner_iter=inner_iter,
        max_pixels=(shape[0] + kh) * (shape[1] + kw), device=device)
    return u


def deblur_image(model, image, *, gamma=None, lam="auto", regularization="tv",
                 positive=False, boundary="unknown", max_iter=500, tol=1e-5,
                 inner_iter=10, device="cpu", image_mean=None):
    """Deblur a real image, blind (the model's estimate) or with a given ``gamma``.

    ``gamma`` (given, or estimated by :func:`estimate_gamma`) is rescaled to
    unit :func:`operator_gain` on the interior, PSFs of mass 1, with either
    ``boundary`` (the gain of a real image's blur is not identifiable; with
    ``boundary="model"`` the light the zero boundary loses at the border is
    restored, as on a larger image: :func:`deepblur.tiling.deblur_large`);
    the image is scaled
    to mean ``image_mean``, the problem
    ``min_u R(u) + lam/2 ||M H[gamma] u - y||^2`` is solved
    (:func:`deepblur.solvers.tv.deblur`), and the result is mapped back to the
    input's units, so that it keeps the input's brightness.

    A real image is a window on a larger scene: with ``boundary="unknown"``
    ``u`` is the image extended by half a kernel on each side (the scene
    outside, unknown, is estimated with it and dropped; the maps are
    extended by their edge values) and ``M`` crops ``H u`` to the image, so
    every pixel is fitted and nothing is assumed outside
    (:func:`deepblur.tiling.deblur_stitched`). ``boundary="model"`` fits every
    pixel with the basis's own boundary model (zero: a dark surrounding, as
    in the simulations), which makes the border pixels of a cropped scene
    blow up.

    Parameters
    ----------
    model : PretrainedModel
    image : array-like of shape (H, W)
        At the model's ``image_shape``, positive mean.
    gamma : array-like of shape (K,), optional
        Coefficients of the operator in the model's basis (e.g. from
        ``deepblur estimate``); estimated when omitted.
    lam : float or "auto", default="auto"
        Weight of the data term for the image scaled to mean ``image_mean``.
    regularization : {"tv", "l1"}, default="tv"
    positive : bool, default=False
    boundary : {"unknown", "model"}, default="unknown"
        See above.
    max_iter : int, default=500
        Cap on the solver's iterations.
    tol : float, default=1e-5
        Relative change of the objective at which the solver stops
        (:func:`deepblur.solvers.tv.deblur`).
    inner_iter : int, default=10
        Iterations of the TV proximal step per iteration (its warning when
        the objective stalls may advise raising it).
    device : str, default="cpu"
    image_mean : float, optional
        The mean the image is scaled to, for the estimate and the solve;
        default the model's training mean (:func:`model_image_mean`).

    Returns
    -------
    restored : ndarray of shape (H, W), float64, in the input's units.
    gamma : ndarray of shape (K,)
        The unit-gain operator used (PSFs of mass 1).
    """
    image_mean = _resolve_image_mean(model, image_mean)
    img, mean = _check_image(image, model.basis.image_shape_)
    check_iterations(max_iter, tol, inner_iter)     # before the estimate
    K = model.basis.kernels_.shape[0]
    if gamma is None:
        gamma, _ = estimate_gamma(model, img, image_mean=image_mean)
    gamma = np.asarray(gamma, dtype=np.float64).reshape(-1)
    if gamma.shape != (K,):
        raise ValueError(
            f"gamma must have K={K} coefficients (the model's basis); got "
            f"{gamma.size}."
        )
    if not np.isfinite(gamma).all():
        raise ValueError("gamma must be finite; got NaN or Inf values.")
    if boundary not in ("unknown", "model"):
        raise ValueError(
            f"boundary must be 'unknown' or 'model'; got {boundary!r}."
        )
    unknown = boundary == "unknown"
    # the mass of the PSFs, whatever the boundary (tiling._unit_gain_tiles)
    gain = operator_gain(model.basis, gamma, interior=True)
    if not gain > 0:
        raise ValueError(
            f"the operator must have a positive gain (it must keep a flat "
            f"image positive); got {gain:.4g}."
        )
    gamma = gamma / gain
    scale = image_mean / mean
    y = (img * scale).astype(np.float32)
    if unknown:
        restored = _deblur_unknown_boundary(model.basis, y, gamma, lam,
                                            regularization, positive, device,
                                            max_iter, tol, inner_iter)
    else:
        deblurrer = _deblurrer(model.basis, lam, regularization, positive, device,
                               max_iter, tol, inner_iter)
        restored = deblurrer.transform(y, gamma=gamma)
    return np.asarray(restored, dtype=np.float64) / scale, gamma


def simulate_blind_deblurring(model, image, *, random_state=0, lam="auto",
                              regularization="tv", max_iter=500, tol=1e-5,
                              inner_iter=10, device="cpu"):
    """Paper Fig. 3 on one image: simulate a blur, estimate it, deblur.

    Draws ``gamma`` from the model's sampler (Algorithm 2, seeded by
    ``random_state``), blurs ``image`` and adds noise at the setting's
    ``noise_std`` (``model.setting["noise_std"]``: the protocol's test noise
    for the network, the training range for the crop network and the
    spectral regressor; :func:`deepblur.datasets.blur_images`), estimates
    ``gamma_hat`` with the regressor, and deblurs with ``gamma_hat`` and, for
    reference, with the true ``gamma``.

    Parameters
    ----------
    model : PretrainedModel
    image : array-like of shape (H, W)
        Clean image at the model's ``image_shape`` (e.g. from
        :func:`bundled_image`); it is scaled to the model's training mean
        (:func:`model_image_mean`) like the training data.
    random_state : int, default=0
        Seed of the operator and of the noise.
    lam : float or "auto", default="auto"
    regularization : {"tv", "l1"}, default="tv"
    max_iter : int, default=500
        Cap on the solver's iterations.
    tol : float, default=1e-5
        Relative change of the objective at which the solver stops
        (:func:`deepblur.solvers.tv.deblur`).
    inner_iter : int, default=10
        Iterations of the TV proximal step per iteration (the solver's
        warning when the objective stalls may advise raising it).
    device : str, default="cpu"
        Where the regressor and the deblurring run.

    Returns
    -------
    dict
        ``original``, ``blurry``, ``deblurred``, ``deblurred_true`` (images),
        ``gamma``, ``gamma_hat``, ``blurry_gain``, ``noise_std`` (the noise
        added: a float, or the range each image's was drawn from),
        ``operator_error`` (relative Frobenius distance ``||H[gamma] -
        H[gamma_hat]||_F / ||H[gamma]||_F``) and the
        SNRs in dB against the original: ``snr_blurry`` (of the blurry image
        divided by the true operator's gain, ``blurry_gain``, so that it has
        the original's brightness: :func:`operator_gain`, on the interior of
        the image for a model of windows of larger scenes, whose boundary is
        ``"crop"``), ``snr_deblurred``, ``snr_deblurred_true``.
    """
    basis = model.basis
    img, mean = _check_image(image, basis.image_shape_)
    check_iterations(max_iter, tol, inner_iter)
    original = img * (model_image_mean(model) / mean)
    sampler = clone(model.sampler).set_params(random_state=random_state)
    gamma = sampler.fit(model.sampler.generators_).sample(1)[0]
    boundary = _model_boundary(model)
    noise = (model.setting or {}).get("noise_std", model.noise_std)
    blurry = blur_images(original, gamma, basis, noise_std=noise,
                         boundary=boundary,
                         random_state=random_state)[0]
    dev = resolve_device(device)
    regressor = model.regressor
    if dev.type != "cpu" and hasattr(regressor, "module_"):   # a network
        regressor.module_.to(dev)
        regressor.device = str(dev)
    gamma_hat = np.asarray(regressor.predict(blurry[None]), dtype=np.float64)[0]
    if boundary == "crop":
        # a window on a larger scene: the scene outside estimated, not assumed
        # (H[g/c] u = y/c: the same problem, started at the right brightness)
        def solve(g):
            c = operator_gain(basis, g, interior=True)
            return _deblur_unknown_boundary(basis, blurry / c, g / c, lam,
                                            regularization, False, dev, max_iter,
                                            tol, inner_iter)

        deblurred, deblurred_true = solve(gamma_hat), solve(gamma)
    else:
        deblurrer = _deblurrer(basis, lam, regularization, False, dev, max_iter,
                               tol, inner_iter)
        # one batched solve: with the estimate and with the true operator
        deblurred, deblurred_true = deblurrer.transform(
            np.stack([blurry, blurry]), gamma=np.stack([gamma_hat, gamma]))
    # the sampled operators do not keep the brightness (gain != 1): the raw
    # SNR would mostly measure the gain, so compare at equal brightness
    # (a window's blurry image has the interior's gain: the scene goes on)
    gain = operator_gain(basis, gamma, interior=boundary == "crop")
    return dict(
        original=original, blurry=np.asarray(blurry, dtype=np.float64),
        deblurred=np.asarray(deblurred, dtype=np.float64),
        deblurred_true=np.asarray(deblurred_true, dtype=np.float64),
        gamma=gamma, gamma_hat=gamma_hat, noise_std=noise,
        operator_error=float(basis.operator_distance(gamma, gamma_hat)),
        blurry_gain=gain, snr_blurry=float(snr(original, blurry / gain)),
        snr_deblurred=float(snr(original, deblurred)),
        snr_deblurred_true=float(snr(original, deblurred_true)),
    )
