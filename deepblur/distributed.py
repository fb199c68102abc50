"""Scale-out on existing engines: dask for many images, accelerate for training.

deepblur has no scheduler of its own; it hands the work to established ones:

* :func:`deblur_images` deblurs a stack of images of the model's size as a
  dask computation, one (or a few) image(s) per task, with any fitted
  estimator that has ``transform`` (:class:`~deepblur.TVDeblurrer`,
  :class:`~deepblur.BlindDeblurrer`, a pipeline, ...);
  :func:`deblur_large_images` does the same for images larger than the model
  through :func:`deepblur.tiling.deblur_large`. They run on the active
  ``dask.distributed`` client when there is one, else on dask's local
  scheduler.
* a ``GridSearchCV`` over ``K`` and ``lam`` runs on a dask cluster through
  joblib's dask backend (``with joblib.parallel_backend("dask"):``), see
  ``docs/user_guide/scale_out.rst``. :func:`register_joblib_dask_backend`
  registers the same backend with one fix: a task that dask gives up on
  (``KilledWorker``) raises in ``fit`` instead of hanging it.
* :class:`AcceleratedResNetBlurRegressor` trains the regressor with Hugging
  Face ``accelerate`` (multi-GPU data parallelism, mixed precision) through
  skorch's :class:`skorch.hf.AccelerateMixin`.

dask and accelerate are optional (``pip install "deepblur[distributed]"``):
this module imports without them and says what to install when a function
needs one.
"""

from __future__ import annotations

import uuid

import numpy as np
import torch
from sklearn.base import BaseEstimator, clone
from sklearn.utils.validation import check_is_fitted
from skorch.hf import AccelerateMixin

from deepblur._validation import all_finite, check_positive_int
from deepblur.datasets.simulate import BlurDataset
from deepblur.estimators._gamma import SHARED_PARAMS
from deepblur.estimators.regressor import ResNetBlurRegressor
from deepblur.nets.resnet import ResNet

__all__ = [
    "JOBLIB_DASK_BACKEND",
    "AcceleratedResNetBlurRegressor",
    "deblur_images",
    "deblur_large_images",
    "register_joblib_dask_backend",
]

#: Name under which :func:`register_joblib_dask_backend` registers the backend.
JOBLIB_DASK_BACKEND = "deepblur-dask"

_INSTALL = 'pip install "deepblur[distributed]"'


def _import_dask():
    """``(dask, dask.array)``, or an ImportError that says what to install."""
    try:
        import dask
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - exercised without dask
        raise ImportError(
            "deblur_images and deblur_large_images need dask (with dask.array): "
            f"{_INSTALL} or pip install 'dask[array]'; importing it failed: {exc}"
        ) from exc
    return dask, da


def _shared(dask, obj, prefix):
    """One graph key holding ``obj`` (shipped once per worker, not per task).

    The name is random rather than a hash of ``obj``: hashing a trained model
    would serialise it once more for nothing.
    """
    return dask.delayed(obj, name=f"{prefix}-{uuid.uuid4().hex}", traverse=False)


def _raise_named(exc, where):
    """Raise ``exc`` naming the images it is about (a task's error reaches
    the caller alone): a plain ValueError anew with them in its message
    (chained to it), any other error itself with a note (a new one would
    lose its type; chaining it to itself would make its cause a loop, which
    dask.distributed follows forever)."""
    if type(exc) is ValueError:
        raise ValueError(f"{where}: {exc}") from exc
    note = f"(while deblurring {where})"
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:                   # Python 3.10: the attribute that 3.11 prints
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]
    raise exc


def _transform_block(estimator, block, gamma, dtype, start=0):
    """Run ``estimator.transform`` on one block of images (a dask task)."""
    block = np.asarray(block)
    where = (f"images[{start}]" if len(block) == 1
             else f"images[{start}:{start + len(block)}]")
    try:
        if gamma is None:
            U = estimator.transform(block)
        else:
            U = estimator.transform(block, gamma=gamma)
    except Exception as exc:
        _raise_named(exc, where)
    if torch.is_tensor(U):
        U = U.detach().cpu().numpy()
    U = np.asarray(U)
    if U.shape != block.shape:
        raise ValueError(
            f"{where}: estimator.transform must return images of the input's "
            f"shape {block.shape}; {type(estimator).__name__}.transform "
            f"returned shape {U.shape}."
        )
    with np.errstate(over="ignore"):            # refused below
        out = U.astype(dtype, copy=False)
    if not all_finite(out) and all_finite(U):
        raise ValueError(
            f"{where}: the deblurred images exceed the range of dtype {dtype} "
            f"(largest magnitude {float(np.abs(U).max()):.4g}): pass "
            "dtype='float32'.")
    return out


def _check_out_dtype(dtype):
    """``dtype`` as a floating numpy dtype: deblurred images ring below 0 and
    above the input's range, which an integer dtype would wrap around."""
    try:
        out = np.dtype(dtype)
    except TypeError:
        out = None
    if out is None or out.kind != "f":
        raise ValueError(
            f"dtype must be a floating dtype ('float32' or 'float64'); got "
            f"{dtype!r}. Deblurred images ring below 0 and above the input's "
            "range, which an integer dtype wraps around (-1 becomes 65535 in "
            "uint16): clip and round the float result yourself, e.g. "
            "np.clip(U, 0, 65535).round().astype(np.uint16).")
    return out


def _check_image_stack(images, da):
    """``(images, is_dask)``: a dask array or a numpy stack of shape (n, H, W)."""
    if isinstance(images, da.Array):
        arr = images
    elif isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("images must hold at least one image; got an empty "
                             f"{type(images).__name__}.")
        shapes = {np.shape(im) for im in images}
        if len(shapes) != 1 or len(next(iter(shapes))) != 2:
            raise ValueError(
                "images given as a list must all be 2-D arrays of one shape (the "
                "model's image_shape); got shapes "
                f"{sorted(shapes, key=str)[:5]}. Use deblur_large_images for "
                "images of other (larger) shapes."
            )
        arr = np.stack([np.asarray(im) for im in images])
    else:
        arr = images.detach().cpu().numpy() if torch.is_tensor(images) else (
            np.asarray(images))
    if arr.ndim != 3:
        raise ValueError(
            f"images must have shape (n, H, W) (a stack of grayscale images) or be "
            f"a list of (H, W) arrays; got shape {tuple(arr.shape)}."
        )
    if arr.shape[0] == 0:
        raise ValueError("images must hold at least one image; got shape "
                         f"{tuple(arr.shape)}.")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"images must hold real numbers; got dtype {arr.dtype}.")
    if not isinstance(arr, da.Array) and not all_finite(arr):
        # here, not in a task after others have run (a dask array's values
        # are only known by computing it: its tasks refuse theirs)
        bad = [i for i in range(len(arr)) if not all_finite(arr[i])]
        if bad:
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise ValueError(
                f"images[{int(bad[0])}]{more}: images must contain only "
                "finite values; got NaN or Inf.")
    return arr, isinstance(arr, da.Array)


def deblur_images(images, estimator, *, gamma=None, images_per_task=1,
                  dtype="float32", compute=True, scheduler=None):
    """Deblur many images as dask tasks, ``images_per_task`` images per task.

    Builds a dask array whose chunks are ``images_per_task`` whole images,
    each computed by ``estimator.transform`` on those images only. The
    estimator is one node of the graph, so a distributed scheduler sends it
    once to each worker that needs it, not once per task.

    Parameters
    ----------
    images : array-like of shape (n, H, W), list of (H, W) arrays or dask array
        Blurry images of the estimator's image shape (for a
        :class:`~deepblur.TVDeblurrer`, its basis's ``image_shape``). A dask
        array (read lazily, e.g. from zarr or a TIFF stack) is rechunked to
        whole images; numpy input is embedded in the graph.
    estimator : fitted estimator with ``transform(X)``
        E.g. :class:`~deepblur.TVDeblurrer` (with a ``blur_estimator`` for
        blind deblurring, or with ``gamma``), :class:`~deepblur.BlindDeblurrer`
        or a :class:`~sklearn.pipeline.Pipeline` ending with one (checked to
        be fitted), or any object whose ``transform`` maps an ``(m, H, W)``
        array to deblurred images of the same shape. It must pickle (for a
        distributed cluster). It is not
        modified on workers of a distributed cluster (they hold copies); with
        the local threaded scheduler, the diagnostics that ``transform``
        records (``n_iter_``, ``converged_``, ...) are those of whichever task
        ran last.
    gamma : array-like of shape (n, K) or (K,), optional
        Non-blind deblurring: operator coefficients, one row per image (sliced
        per task) or one for all, passed to ``transform(X, gamma=...)``.
    images_per_task : int, default=1
        Images per task (per chunk). The solver iterates a batch until its
        slowest image converges, so the result of an image depends (within
        the solver's ``tol``) on the images it is batched with:
        ``images_per_task=1`` gives exactly ``estimator.transform(X[i:i+1])``
        for every ``i``, ``images_per_task=n`` exactly ``transform(X)``.
    dtype : str or numpy dtype, default="float32"
        Dtype of the returned images (``TVDeblurrer``'s default precision):
        a floating dtype. The deblurred images ring below 0 and above the
        input's range, so integer images come back as floats (clip and round
        them yourself to store them as integers).
    compute : bool, default=True
        Compute and return a numpy array; ``False`` returns the lazy dask
        array (to store with ``to_zarr``, or to compute with other results).
        A store written by ``to_zarr`` keeps the images done before a task
        failed, and reads the others back as zarr's fill value (0): write it
        under a temporary name, renamed once ``to_zarr`` returns.
    scheduler : str or None, default=None
        Passed to ``dask.compute``; ``None`` uses the active
        ``dask.distributed`` client if there is one, else dask's default
        (threads). ``"sync"`` runs in this thread (debugging).

    Returns
    -------
    U : numpy.ndarray or dask.array.Array of shape (n, H, W)
        The deblurred images, in the order of ``images``.

    Raises
    ------
    ImportError
        If dask is not installed.
    ValueError
        For images that are not a stack of 2-D images, or not finite, a
        ``gamma`` with a number of rows other than 1 or ``n``, or not finite
        (both before any task runs), an unfitted estimator, a
        ``dtype`` that is not a floating one; from a task, naming its images,
        deblurred values beyond the range of ``dtype`` (e.g. counts above
        65504 in float16).

    See Also
    --------
    deblur_large_images : images larger than the model, one task per image.
    deepblur.TVDeblurrer.transform : the in-process, batched computation.

    Examples
    --------
    >>> import numpy as np
    >>> from deepblur import ProductConvolutionBasis, TVDeblurrer
    >>> from deepblur.distributed import deblur_images
    >>> basis = ProductConvolutionBasis.from_components(
    ...     np.full((1, 3, 3), 1 / 9), np.ones((1, 32, 32)))
    >>> rng = np.random.default_rng(0)
    >>> clean = np.zeros((4, 32, 32)); clean[:, 8:24, 8:24] = 1.0
    >>> X = basis.apply(clean, np.ones(1)) + 0.02 * rng.standard_normal(clean.shape)
    >>> tv = TVDeblurrer(basis, lam=200.0, device="cpu").fit(X)
    >>> U = deblur_images(X, tv, gamma=np.ones(1))      # 4 tasks
    >>> U.shape, U.dtype
    ((4, 32, 32), dtype('float32'))
    >>> bool(np.allclose(U[2], tv.transform(X[2:3], gamma=np.ones(1))[0]))
    True

    On a cluster, create a client first; the same call then runs there:

    >>> from distributed import Client                      # doctest: +SKIP
    >>> client = Client("tcp://scheduler:8786")             # doctest: +SKIP
    >>> U = deblur_images(X, tv, gamma=np.ones(1))          # doctest: +SKIP
    """
    dask, da = _import_dask()
    if not hasattr(estimator, "transform"):
        raise TypeError(
            "estimator must have a transform(X) method (e.g. a fitted TVDeblurrer "
            f"or BlindDeblurrer); got {type(estimator).__name__}."
        )
    if isinstance(estimator, BaseEstimator) or hasattr(estimator,
                                                       "__sklearn_is_fitted__"):
        check_is_fitted(estimator)     # a plain object with transform is trusted
    per_task = check_positive_int(images_per_task, "images_per_task")
    out_dtype = _check_out_dtype(dtype)
    arr, is_dask = _check_image_stack(images, da)
    n, H, W = (int(s) for s in arr.shape)
    g = None
    if gamma is not None:
        g = gamma.detach().cpu().numpy() if torch.is_tensor(gamma) else np.asarray(
            gamma)
        if g.ndim == 2 and g.shape[0] == 1:
            g = g[0]
        if g.ndim not in (1, 2) or (g.ndim == 2 and g.shape[0] != n):
            raise ValueError(
                f"gamma must have shape (K,) or (n, K) with n={n} (one row per "
                f"image); got shape {g.shape}."
            )
        if not all_finite(g):
            # here, not in the task of its image after others have run
            rows = (np.flatnonzero(~np.isfinite(g).all(axis=1)).tolist()
                    if g.ndim == 2 else [])
            where = f"gamma[{rows[0]}] (for images[{rows[0]}])" if rows else "gamma"
            more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
            raise ValueError(f"{where}{more} must contain only finite values; "
                             "got NaN or Inf.")
    est = _shared(dask, estimator, "deblur-estimator")
    g_all = None if g is None or g.ndim == 2 else _shared(dask, g, "deblur-gamma")
    transform = dask.delayed(_transform_block, pure=True)
    if is_dask:
        blocks = arr.rechunk((per_task, H, W)).to_delayed().ravel()
    else:
        blocks = [arr[i:i + per_task] for i in range(0, n, per_task)]
    parts = []
    for b, start in zip(blocks, range(0, n, per_task), strict=True):
        stop = min(start + per_task, n)
        g_block = g[start:stop] if g is not None and g.ndim == 2 else g_all
        task = transform(est, b, g_block, out_dtype, start,
                         dask_key_name=f"deblur-images-{uuid.uuid4().hex}")
        parts.append(da.from_delayed(task, shape=(stop - start, H, W),
                                     dtype=out_dtype))
    result = da.concatenate(parts, axis=0)
    if not compute:
        return result
    (U,) = dask.compute(result, scheduler=scheduler)
    return U


def _deblur_large_one(model, image, kwargs, index=0):
    from deepblur.tiling import deblur_large

    try:
        return deblur_large(image, model, **kwargs).restored
    except Exception as exc:
        _raise_named(exc, f"images[{index}]")


def _check_keywords(kwargs):
    """Refuse what :func:`~deepblur.tiling.deblur_large` does not take (a
    TypeError from every task, with a note naming an image it is not about)."""
    import inspect

    from deepblur.tiling import deblur_large

    accepted = [name for name, p in inspect.signature(deblur_large).parameters.items()
                if p.kind is p.KEYWORD_ONLY]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(
            f"deblur_large_images got keyword argument(s) {unknown} that "
            f"deblur_large does not take; it takes {accepted}.")


def deblur_large_images(images, model, *, compute=True, scheduler=None,
                        **kwargs):
    """Deblur images larger than the model, one dask task per image.

    Each task runs :func:`deepblur.tiling.deblur_large` (tiled blur
    estimation, stitched operator, block-wise TV solve) on one image. The
    images may have different shapes.

    Parameters
    ----------
    images : array-like of shape (n, H, W) or list of 2-D arrays
        Blurry images, each at least the model's ``image_shape`` along both
        axes.
    model : PretrainedModel or tuple (basis, regressor)
        As for :func:`~deepblur.tiling.deblur_large`
        (:func:`deepblur.pretrained.load_default`, or a fitted basis and a
        fitted regressor). One node of the graph: sent once per worker.
    compute : bool, default=True
        Return the computed images; ``False`` returns one ``dask.delayed``
        object per image (compute them with ``dask.compute(*tasks)``).
    scheduler : str or None, default=None
        Passed to ``dask.compute`` (``None``: the active distributed client,
        else dask's default).
    **kwargs
        Passed to :func:`~deepblur.tiling.deblur_large` (``lam``,
        ``max_pixels``, ``max_iter``, ``tol``, ``device``, ...); ``progress``
        defaults to ``False`` (no progress bars in workers). A keyword that
        ``deblur_large`` does not take is a TypeError before any task runs.

    Returns
    -------
    restored : list of numpy.ndarray, or list of dask.delayed.Delayed
        The deblurred images (``LargeDeblurResult.restored``), in order.

    Warns
    -----
    BoundaryWarning
        Once, before any task runs, when some image has more than one tile
        and the model's regressor was trained on zero-boundary images (see
        :func:`~deepblur.tiling.deblur_large`).

    Raises
    ------
    ValueError
        Before any task runs: a model whose basis is not fitted, a bad
        ``image_mean`` or ``target_mean``, and, naming ``images[i]``, an
        image that is not 2-D, smaller than the model's ``image_shape``, not
        finite, of a non-positive mean (unless ``image_mean=None`` and
        ``target_mean=None``), or that ``max_pixels``, ``margin`` or
        ``boundary`` cannot cut into solve blocks. An error inside a
        task names its image too: in the message of a plain ``ValueError``,
        in a note (``__notes__``) of other errors, which keep their type.

    See Also
    --------
    deblur_images : images of the model's size, batched per task.

    Examples
    --------
    >>> from deepblur.distributed import deblur_large_images
    >>> from deepblur.pretrained import bundled_image, load_default
    >>> model = load_default(estimator="crop_network")    # made for windows
    >>> images = [bundled_image("camera", (160, 192)),
    ...           bundled_image("camera", (192, 160))]
    >>> out = deblur_large_images(images, model, max_iter=5, tol=0)
    >>> [u.shape for u in out]
    [(160, 192), (192, 160)]
    """
    dask, _ = _import_dask()
    if torch.is_tensor(images):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        if images.ndim != 3:
            raise ValueError(
                "images must be a list of 2-D arrays or an array of shape (n, H, "
                f"W); got an array of shape {images.shape}."
            )
        images = list(images)
    if not isinstance(images, (list, tuple)) or len(images) == 0:
        raise ValueError(
            "images must be a non-empty list of 2-D arrays or an array of shape "
            f"(n, H, W); got {type(images).__name__} of length "
            f"{len(images) if hasattr(images, '__len__') else '?'}."
        )
    from deepblur.tiling import (
        DEFAULT_MAX_PIXELS,
        _basis_parts,
        _check_boundary_flag,
        _check_solve,
        _large_image_mean,
        _large_input,
        _large_target_mean,
        _model_parts,
        _tile_factor,
        _warn_if_windows,
        tile_grid,
    )

    # what fails without the model's estimates fails here, before any task:
    # a task's error would drop the images already deblurred. The keywords,
    # the model and image_mean first (their errors are about no image), then
    # each image
    _check_keywords(kwargs)
    basis, regressor = _model_parts(model)
    kernels, maps, model_boundary = _basis_parts(basis)
    image_mean = _large_image_mean(model, kwargs.get("image_mean", "auto"))
    target_mean = _large_target_mean(model, kwargs.get("target_mean", "auto"))
    images = [np.asarray(im.detach().cpu().numpy() if torch.is_tensor(im) else im)
              for im in images]
    for i, im in enumerate(images):
        try:
            _, _, img, _ = _large_input(im, model, image_mean)
            _tile_factor(img, target_mean)      # the tiles' scaling
            # the solve: its blocks (max_pixels, margin, boundary), lam,
            # regularization, dtype, lipschitz
            _check_solve(img.shape, kernels.shape[1:], maps.shape[1:],
                         lam=kwargs.get("lam", "auto"),
                         boundary=kwargs.get("boundary", "unknown"),
                         regularization=kwargs.get("regularization", "tv"),
                         dtype=kwargs.get("dtype", "float32"),
                         max_pixels=kwargs.get("max_pixels", DEFAULT_MAX_PIXELS),
                         margin=kwargs.get("margin"),
                         model_boundary=model_boundary,
                         lipschitz=kwargs.get("lipschitz"),
                         max_iter=kwargs.get("max_iter", 500),
                         tol=kwargs.get("tol", 1e-5),
                         inner_iter=kwargs.get("inner_iter", 10))
        except ValueError as exc:
            raise ValueError(f"images[{i}]: {exc}") from None
    kwargs.setdefault("progress", False)
    shape = tuple(int(s) for s in basis.image_shape_)      # a bad tile_stride
    n_tiles = max(tile_grid(im.shape, shape, kwargs.get("tile_stride")).n_tiles
                  for im in images)
    if _check_boundary_flag(kwargs.get("check_boundary", True)):
        # once, here: a worker's warnings stay in its logs
        _warn_if_windows(regressor, n_tiles)
    kwargs["check_boundary"] = False
    shared_model = _shared(dask, model, "deblur-model")
    run = dask.delayed(_deblur_large_one, pure=True)
    tasks = [run(shared_model, im, kwargs, i,
                 dask_key_name=f"deblur-large-{uuid.uuid4().hex}")
             for i, im in enumerate(images)]
    if not compute:
        return tasks
    return list(dask.compute(*tasks, scheduler=scheduler))


# ------------------------------------------------------------ joblib backend
_FAIL_FAST_BACKEND = None


def _fail_fast_backend_class():
    """joblib's ``DaskDistributedBackend`` that reports tasks dask gave up on.

    joblib (1.6.0) collects the dask futures of its batches in
    ``_collect``: for a future in error (dask's ``KilledWorker`` after
    ``distributed.scheduler.allowed-failures`` worker deaths, a lost
    client, ...) it sets the exception on its own future but never calls
    the batch's completion callback, and ``Parallel``, which waits for that
    callback, then waits forever. The override below calls the callback with
    the exception, which joblib registers as a failed batch: ``Parallel``
    (and ``GridSearchCV.fit``) raise it. Everything else is joblib's.
    """
    global _FAIL_FAST_BACKEND
    if _FAIL_FAST_BACKEND is not None:
        return _FAIL_FAST_BACKEND
    import asyncio

    try:
        import distributed  # noqa: F401  (joblib._dask imports without it)
        from joblib._dask import DaskDistributedBackend
    except ImportError as exc:  # pragma: no cover - exercised without dask
        raise ImportError(
            f"the joblib dask backend needs dask.distributed: {_INSTALL}; "
            f"importing it failed: {exc}"
        ) from exc
    if not hasattr(DaskDistributedBackend, "_collect"):  # pragma: no cover
        raise ImportError(
            "this joblib's DaskDistributedBackend has no _collect coroutine (the "
            "code this fix replaces): use joblib's own 'dask' backend."
        )

    class FailFastDaskBackend(DaskDistributedBackend):
        async def _collect(self):
            while self._continue:
                async for future, result in self.waiting_futures:
                    cf_future = self._results.pop(future)
                    callback = self._callbacks.pop(future)
                    if future.status == "error":
                        _, exc, _ = result
                        cf_future.set_exception(exc)
                        callback(exc)      # joblib registers a failed batch
                    elif future.status == "cancelled":
                        exc = RuntimeError(
                            f"dask cancelled the task {future.key!r} of a joblib "
                            "batch (was the client closed or the cluster lost?)."
                        )
                        cf_future.set_exception(exc)
                        callback(exc)
                    else:
                        cf_future.set_result(result)
                        callback(result)
                await asyncio.sleep(0.01)

        def __reduce__(self):
            return (_make_fail_fast_backend, ())

    FailFastDaskBackend.__qualname__ = "FailFastDaskBackend"
    _FAIL_FAST_BACKEND = FailFastDaskBackend
    return FailFastDaskBackend


def _make_fail_fast_backend(*args, **kwargs):
    return _fail_fast_backend_class()(*args, **kwargs)


def register_joblib_dask_backend(name=JOBLIB_DASK_BACKEND):
    """Register joblib's dask backend that raises when dask gives up on a task.

    ``with joblib.parallel_backend("deepblur-dask"):`` then runs
    ``GridSearchCV`` (or any joblib ``Parallel``) on the active
    ``dask.distributed`` client exactly as joblib's ``"dask"`` backend does,
    with one difference: when dask gives up on a task (``KilledWorker``: the
    workers running it died ``allowed-failures + 1`` times; or a cancelled
    task), ``fit`` raises that error. With joblib's own backend (joblib
    1.6.0) it waits forever instead.

    Parameters
    ----------
    name : str, default="deepblur-dask"
        Name to register the backend under.

    Returns
    -------
    name : str
        For ``joblib.parallel_backend(name)``.

    Raises
    ------
    ImportError
        If dask.distributed is not installed.

    Notes
    -----
    Worker deaths below dask's ``allowed-failures`` (3 by default) are not
    errors: dask reruns the lost tasks on other workers and the search's
    results are those of an undisturbed run. See
    ``docs/user_guide/scale_out.rst``.

    Examples
    --------
    >>> import joblib
    >>> from deepblur.distributed import register_joblib_dask_backend
    >>> register_joblib_dask_backend()
    'deepblur-dask'
    >>> from distributed import Client                      # doctest: +SKIP
    >>> client = Client("tcp://scheduler:8786")             # doctest: +SKIP
    >>> with joblib.parallel_backend("deepblur-dask"):      # doctest: +SKIP
    ...     search.fit(blurry, clean, psf_fields=fields)
    """
    from joblib import register_parallel_backend

    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty str; got {name!r}.")
    _fail_fast_backend_class()
    register_parallel_backend(name, _make_fail_fast_backend)
    return name


class _DatasetEpochLoader:
    """Iterate ``loader`` from the epoch of ``dataset`` (a ``BlurDataset``)."""

    def __init__(self, loader, dataset):
        self.loader = loader
        self.dataset = dataset

    def __iter__(self):
        self.loader.set_epoch(self.dataset._epoch)
        return iter(self.loader)

    def __len__(self):
        return len(self.loader)


def _no_print(*args, **kwargs):
    """The print-log sink of the processes other than the main one."""


class AcceleratedResNetBlurRegressor(AccelerateMixin, ResNetBlurRegressor):
    """:class:`~deepblur.ResNetBlurRegressor` trained through Hugging Face accelerate.

    skorch's :class:`skorch.hf.AccelerateMixin` hands the module, the
    criterion, the optimizer and the data loaders to an
    ``accelerate.Accelerator``: launched with ``accelerate launch
    --multi_gpu --num_processes N train.py``, every process trains a
    replica on its share of the batches and gradients are averaged
    (distributed data parallelism); ``Accelerator(mixed_precision="bf16")``
    trains in mixed precision. Run as a plain ``python`` script it trains in
    one process, exactly like :class:`~deepblur.ResNetBlurRegressor` on
    ``accelerator.device``.

    Parameters
    ----------
    module : torch module class or instance, default=ResNet
    *args
        As for :class:`~deepblur.ResNetBlurRegressor`.
    accelerator : accelerate.Accelerator
        Required: e.g. ``Accelerator()`` (the device and the processes of
        ``accelerate launch``), ``Accelerator(cpu=True)``,
        ``Accelerator(mixed_precision="bf16")``. Shared, not copied, by
        ``clone`` (there is one accelerator state per process).
    device : None, default=None
        The accelerator places the module and the batches; a device here is
        an error when the accelerator does device placement (skorch), from
        ``set_params`` as well (where a trained regressor would be moved off
        the accelerator's device).
    mixed_precision : None, default=None
        The accelerator's ``mixed_precision`` applies; setting the
        regressor's is an error.
    unwrap_after_train : bool, default=True
        Unwrap the module from accelerate's wrappers (e.g.
        ``DistributedDataParallel``) after ``fit``, so that the net can be
        pickled and predicts with the plain module.
    **kwargs
        Any :class:`~deepblur.ResNetBlurRegressor` parameter (``basis``,
        ``module__width``, ``max_epochs``, ``batch_size``, ``lr``, ...).

    Notes
    -----
    With a :class:`~deepblur.datasets.BlurDataset` (an iterable dataset) and
    several processes, accelerate's default for iterable datasets applies:
    process 0 draws the batches and dispatches one to each process, so an
    epoch of ``n_batches`` batches is ``n_batches / N`` optimizer steps of
    ``N`` batches each. With arrays, each process gets its share of every
    epoch through a distributed sampler. ``predict`` gathers the outputs of
    all processes (``accelerator.gather_for_metrics``). Save the trained net
    from the main process only (``if accelerator.is_main_process:``), or use
    ``save_params``, which does so.

    Examples
    --------
    >>> import numpy as np
    >>> from accelerate import Accelerator
    >>> from deepblur import ConeSampler, ProductConvolutionBasis
    >>> from deepblur.datasets.simulate import make_blurred_images
    >>> from deepblur.distributed import AcceleratedResNetBlurRegressor
    >>> rng = np.random.default_rng(0)
    >>> basis = ProductConvolutionBasis.from_components(
    ...     rng.random((3, 5, 5)), rng.random((3, 32, 32)))
    >>> sampler = ConeSampler(random_state=0).fit(np.eye(3))
    >>> X, y = make_blurred_images(rng.random((20, 32, 32)), basis, sampler, 32,
    ...                            random_state=0)
    >>> net = AcceleratedResNetBlurRegressor(
    ...     accelerator=Accelerator(cpu=True), basis=basis, module__width=4,
    ...     max_epochs=2, verbose=0).fit(X, y)
    >>> net.predict(X).shape
    (32, 3)
    """

    def __init__(self, module=ResNet, *args, accelerator=None, device=None,
                 unwrap_after_train=True, **kwargs):
        super().__init__(module, *args, accelerator=accelerator, device=device,
                         unwrap_after_train=unwrap_after_train, **kwargs)

    def _check_accelerator(self):
        acc = self.accelerator
        if acc is None or not all(hasattr(acc, name) for name in
                                  ("prepare", "device_placement", "backward")):
            raise TypeError(
                "accelerator must be an accelerate.Accelerator (e.g. "
                "Accelerator() under `accelerate launch`, or "
                f"Accelerator(cpu=True)); got {type(acc).__name__}."
            )

    def _check_no_mixed_precision(self):
        if self.mixed_precision is not None:
            raise ValueError(
                "mixed_precision is the accelerator's here: use "
                f"Accelerator(mixed_precision={self.mixed_precision!r}) and "
                "leave the regressor's mixed_precision=None.")

    def set_params(self, **params):
        """Set parameters; a ``device`` other than None is refused while the
        accelerator places the module (skorch refuses it at initialisation
        only, so a trained regressor took it and was moved off the
        accelerator's device)."""
        accelerator = params.get("accelerator", self.accelerator)
        if (params.get("device") is not None
                and getattr(accelerator, "device_placement", False)):
            raise ValueError(
                f"device={params['device']!r}: the accelerator places the "
                "module and the batches (device_placement=True); leave "
                "device=None and choose the device with the Accelerator "
                "(e.g. Accelerator(cpu=True)).")
        return super().set_params(**params)

    def initialize(self):
        """Check the accelerator, then initialise and prepare the components."""
        self._check_accelerator()
        self._check_no_mixed_precision()
        return super().initialize()

    def infer(self, x, **fit_params):
        """The module's output (the accelerator's autocast applies; a
        ``mixed_precision`` set after initialisation is refused)."""
        self._check_no_mixed_precision()
        return super().infer(x, **fit_params)

    def _initialize_callbacks(self):
        """``print_log`` prints on the main process only, and honours ``verbose``.

        skorch's default sink (``accelerator.print``) is not ``print``, and
        :class:`skorch.callbacks.PrintLog` writes to any sink other than
        ``print`` whatever ``verbose`` is: ``verbose=0`` would still print the
        epoch table. The parameter keeps its value (``"auto"``).
        """
        if not (isinstance(self.callbacks__print_log__sink, str)
                and self.callbacks__print_log__sink == "auto"):
            return super()._initialize_callbacks()
        main = getattr(self.accelerator, "is_main_process", True)
        self.callbacks__print_log__sink = print if main else _no_print
        try:
            return super()._initialize_callbacks()
        finally:
            self.callbacks__print_log__sink = "auto"

    def get_iterator(self, dataset, training=False):
        """The accelerator's loader; a ``BlurDataset`` keeps its epoch's stream.

        A loader prepared by accelerate calls ``dataset.set_epoch(i)`` with
        its own count ``i`` of passes (0 at the first), which would override
        the epoch that :meth:`on_epoch_begin` gave the dataset (skorch's
        epoch number, from 1): off by one, and a resumed training would draw
        the batches of the first epochs again. Each pass of the returned
        loader starts at the dataset's epoch, so training draws exactly the
        batches of :class:`~deepblur.ResNetBlurRegressor`.
        """
        iterator = super().get_iterator(dataset, training=training)
        if training and isinstance(dataset, BlurDataset) and hasattr(iterator,
                                                                     "set_epoch"):
            return _DatasetEpochLoader(iterator, dataset)
        return iterator

    def __setstate__(self, state):
        """Unpickle with ``device=None`` kept (skorch would set ``"cpu"``).

        skorch maps the tensors of a net pickled with ``device=None`` to the
        CPU, warns, and sets ``device="cpu"``, which the accelerator's device
        placement then refuses at the next ``fit``. The modules are moved to
        the accelerator's device instead and ``device`` stays ``None``.
        skorch is handed ``device="cpu"`` (where it maps ``None``), so that it
        does not warn: filtering its warning with ``warnings.catch_warnings``
        changed the process's filters under the feet of other threads
        (unpickling in threads: dask's, a threaded search).
        """
        if state.get("device") is not None:
            return super().__setstate__(state)
        super().__setstate__(dict(state, device="cpu"))
        self.device = None
        acc = self.__dict__.get("accelerator")
        if acc is not None and getattr(acc, "device_placement", False):
            for name in (list(getattr(self, "_modules", []))
                         + list(getattr(self, "_criteria", []))):
                module = getattr(self, name + "_", None)
                if isinstance(module, torch.nn.Module):
                    module.to(acc.device)

    def __sklearn_clone__(self):
        """Clone the hyper-parameters; share the accelerator, the basis and
        the sampler (fitted: as :class:`~deepblur.ResNetBlurRegressor`'s
        clone does).

        An ``Accelerator`` holds the process's distributed state: a deep copy
        (what :func:`sklearn.clone` does with a non-estimator parameter)
        would be a second handle on it at best. The print sink that skorch
        takes from the accelerator is reset to ``"auto"`` for the same reason.
        """
        params = self.get_params(deep=False)
        accelerator = params.pop("accelerator")
        shared = {name: params.pop(name) for name in SHARED_PARAMS
                  if name in params}
        sink = params.get("callbacks__print_log__sink")
        if getattr(sink, "__self__", None) is accelerator:
            params["callbacks__print_log__sink"] = "auto"
        params = {k: clone(v, safe=False) for k, v in params.items()}
        return type(self)(accelerator=accelerator, **shared, **params)
