"""Warnings and errors specific to deepblur (as :mod:`sklearn.exceptions`)."""

from __future__ import annotations

__all__ = ["BoundaryWarning", "NoPointSourceError", "NoisyImageWarning",
           "OutOfSupportWarning", "PoorPointSourceFitWarning"]


class BoundaryWarning(UserWarning):
    """A model trained on zero-boundary images is applied to windows of a scene.

    The paper's protocol, and the shipped network
    (:func:`deepblur.pretrained.load_default`), simulate blur with a zero
    boundary: a dark surrounding, whose blurred fringe the network reads.
    The tiles of a large image are windows of a larger scene with no such
    fringe, and there the shipped network's operator error is 40 %, worse
    than the mean operator's 24 % (benchmarks/README.md).
    :func:`deepblur.tiling.estimate_tiles` (and so
    :func:`~deepblur.tiling.deblur_large`, :class:`~deepblur.TVDeblurrer` on
    larger images and :func:`deepblur.distributed.deblur_large_images`,
    once per call) issues this warning when an image of more than one tile
    meets a regressor whose ``training_boundary_`` is ``"zero"`` (recorded
    from its training ``BlurDataset``, or set by
    :func:`~deepblur.pretrained.load_model`). The functions take
    ``check_boundary=False`` to turn it off; for the estimators, filter it
    (``warnings.filterwarnings("ignore", category=BoundaryWarning)``). A
    regressor wrapped in a Pipeline or a search has no
    ``training_boundary_`` and is not checked. Use a model trained on windows,
    ``load_default(estimator="crop_network")`` or ``estimator="spectral"``,
    or a known operator (:func:`deepblur.tiling.deblur_stitched`). The
    ``deepblur`` commands print the same advice.
    """


class NoPointSourceError(ValueError):
    """Images given to a point-source fit hold no source to fit.

    Raised by :func:`deepblur.solvers.point_sources.fit_point_sources` when
    nothing rises above the detection threshold (or no source keeps a
    positive amplitude), and by :class:`~deepblur.PointSourceBlurEstimator`'s
    ``predict`` when some images of the batch have none: the other images are
    fitted all the same, and the error carries them, so that a caller (e.g.
    :func:`deepblur.tiling.estimate_tiles` on the tiles of a bead slide with
    empty regions) loses no work.

    Attributes
    ----------
    images : list of int
        Indices, in the batch, of the images without a source.
    estimates : ndarray of shape (n, K) or None
        ``predict``'s estimates of the whole batch, NaN in the rows of
        ``images``; None when raised by ``fit_point_sources`` (one image) or
        by ``predict_sources`` (whose fits are not gamma alone).
    """

    def __init__(self, message, images=(), estimates=None):
        super().__init__(message)
        self.images = [int(i) for i in images]
        self.estimates = estimates


class NoisyImageWarning(UserWarning):
    """Images given to a blur regressor are much noisier than its training images.

    A regressor of ``gamma`` learns the blur at the noise levels it was
    trained on, and its error grows fast beyond them: the shipped network,
    trained on noise drawn in [0, 0.02], goes from 4.5 % operator error at
    noise 0.01 to 6.7 % at 0.03 and 15 % at 0.1, where predicting the mean
    operator gives 24 % (the network before it, trained at 0.01: 5.5, 8.4 and
    27 %). ``predict`` of :class:`~deepblur.ResNetBlurRegressor` and
    :class:`~deepblur.SpectralBlurRegressor` estimates the noise of the images
    (:func:`deepblur.solvers.tv.estimate_noise_level`; at most 64 evenly
    spaced ones per call, so that the cost does not grow with the batch) and
    issues this warning when some are over three times noisier than the
    noisiest training images (the regressor's fitted ``noise_level_``).
    :func:`deepblur.tiling.estimate_tiles` issues one for all the tiles of an
    image.

    Silence it as any warning::

        import warnings
        from deepblur.exceptions import NoisyImageWarning
        warnings.filterwarnings("ignore", category=NoisyImageWarning)
    """


class OutOfSupportWarning(UserWarning):
    """A blur regressor's estimates lie far from every operator it was trained on.

    A regressor of ``gamma`` is trained on operators drawn from a
    :class:`~deepblur.ConeSampler`; on images unlike its training images
    (point sources on a dark field for a network trained on natural images,
    windows of larger scenes for one trained with a zero boundary) its
    estimates drift away from that set, and are then often far from the true
    blur. ``predict`` of :class:`~deepblur.ResNetBlurRegressor` and
    :class:`~deepblur.SpectralBlurRegressor` measures the relative operator
    distance of each estimate to the sampler's support (its
    ``support_distance``) and issues this warning when some exceed the
    regressor's ``support_tolerance`` (set on the networks that
    :func:`deepblur.pretrained.load_default` returns and on those
    ``deepblur train`` trains, by
    :func:`~deepblur.pretrained.calibrate_support_tolerance`; None turns the
    check off). It marks an estimate to distrust; an estimate that passes is
    not guaranteed to be good. See ``benchmarks/bench_support_check.py`` and
    ``examples/plot_support_check.py`` for the distances on natural,
    microscopy and point-source images and what the warning flags.

    Silence it as any warning::

        import warnings
        from deepblur.exceptions import OutOfSupportWarning
        warnings.filterwarnings("ignore", category=OutOfSupportWarning)
    """


class PoorPointSourceFitWarning(UserWarning):
    """A point-source fit leaves a residual far above the image's noise.

    :class:`~deepblur.PointSourceBlurEstimator` fits each image as isolated
    point sources blurred by the basis's operator, on a constant background.
    It issues this warning when the fitted model leaves a residual whose root
    mean square is more than 5 times ``max(sigma, 1e-3 * (max - min))``, with
    ``sigma`` the image's noise (estimated, or the estimator's ``noise_std``)
    and the floor a thousandth of the image's range (for noise-free images;
    on bright sparse fields it is the larger term). Something in the image is
    then not that model: saturated sources (clipped at the camera's full
    well), hot pixels, extended objects, a background that varies, or PSFs
    outside the basis, and ``gamma`` can be off. Measured (session 35): with
    a small 3-kernel basis, clipping two pixels of the brightest bead gave
    33 % operator error and one hot pixel 290 %, both flagged; with the
    shipped basis, a hot pixel as bright as the brightest source was flagged
    on 32 of 32 images, clipping at 70 % of the peak on 8 of 32 (errors up
    to 4.3 %), and well-specified fields on 0 of 128 images at density 0.002
    and 5 of 160 at 0.005 (errors 1.8-5.9 %; benchmarks/README.md,
    "Checks of session 35's fixes"). ``predict`` and
    ``predict_sources`` issue it once per call, naming the images; each
    fit's ``residual`` is in
    :meth:`~deepblur.PointSourceBlurEstimator.predict_sources`. Leave
    saturated beads and hot pixels out of the field (or the image), or
    subtract the background first.
    """
