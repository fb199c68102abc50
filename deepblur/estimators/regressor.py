"""``ResNetBlurRegressor``: blind estimation of ``gamma`` from a blurry image."""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import platform
import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNetRegressor
from skorch.dataset import Dataset

from deepblur._validation import (
    all_finite,
    check_dense,
    check_not_empty,
    native_contiguous,
    resolve_device,
    user_stacklevel,
)
from deepblur.datasets.simulate import BlurDataset
from deepblur.estimators._gamma import (
    FrozenComponentsMixin,
    SupportCheckMixin,
    check_dataset_basis,
    check_gamma_targets,
    check_no_shared_nested,
    check_sampler,
    check_support_params,
    checked_estimates,
    clone_sharing_fitted,
    estimates_score,
    image_to_gamma_tags,
    merge_noise_levels,
    merge_noise_stds,
    support_check_needed,
    support_distances,
    training_boundary,
    training_noise_level,
    training_noise_std,
    warn_if_noisy,
)
from deepblur.nets.losses import (
    PSFMomentLoss,
    RelativeFrobeniusLoss,
)
from deepblur.nets.resnet import ResNet
from deepblur.operators.symmetry import (
    CLOSURE_TOLERANCE,
    N_DIHEDRAL,
    dihedral_maps,
    dihedral_transform,
)

__all__ = ["ResNetBlurRegressor"]

_DEFAULT_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _check_images(X, image_shape=None, name="X"):
    """(n, H, W) or (n, 1, H, W), finite -> float32 tensor (n, 1, H, W)."""
    if torch.is_tensor(check_dense(X, name)):
        t = X.detach()
        # as for arrays: a cast would drop an imaginary part, take booleans
        if t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"{name} must hold real numbers; got dtype {t.dtype}.")
    else:
        arr = np.asarray(X)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"{name} must hold real numbers; got dtype {arr.dtype}.")
        t = torch.from_numpy(native_contiguous(arr))
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(
            f"{name} must have shape (n, H, W) or (n, 1, H, W) of grayscale "
            f"images; got {tuple(t.shape)}."
        )
    if image_shape is not None and tuple(t.shape[-2:]) != tuple(image_shape):
        raise ValueError(
            f"{name} must hold images of the basis's image_shape "
            f"{tuple(image_shape)}; got shape {tuple(t.shape)}."
        )
    check_not_empty(t, name)
    t = t.to(torch.float32)
    if not all_finite(t):
        raise ValueError(f"{name} must be finite; got NaN or Inf values.")
    return t


def _refuse_sample_weight(fit_params, method):
    """Refuse ``sample_weight`` among the parameters of a training call:
    skorch hands them to the split and the module's ``forward``, which failed
    on it with their own messages."""
    if "sample_weight" in fit_params:
        raise ValueError(
            f"sample_weight is not supported for training ({method}): the loss "
            "weighs every image alike; score takes sample_weight, to weigh the "
            "images' errors."
        )


# set_params prefixes that re-initialise no component (see its docstring)
_PASSIVE_PREFIXES = ("iterator_train", "iterator_valid", "dataset")

#: Values of ``ResNetBlurRegressor(mixed_precision=...)``: the dtype of the
#: training forward pass under ``torch.autocast`` (None: float32 throughout).
MIXED_PRECISIONS = {None: None, "bf16": torch.bfloat16}


def check_mixed_precision(mixed_precision, device):
    """Validate ``mixed_precision`` for ``device``; return its autocast dtype.

    bfloat16 needs no loss scaling (float32's exponent range), and needs a
    device that computes in it: CUDA devices from Ampere on (earlier ones
    emulate it, slowly) and CPUs with AVX-512 BF16 or AMX (others emulate it,
    slower than float32). On other devices (ROCm, Apple's MPS) it is refused
    unless a bfloat16 convolution runs there under autocast, forward and
    backward (checked once per device): whether that is faster than float32
    there is not known to this library.
    """
    if not (mixed_precision is None or (isinstance(mixed_precision, str)
                                        and mixed_precision in MIXED_PRECISIONS)):
        raise ValueError(f"mixed_precision must be None or 'bf16'; got "
                         f"{mixed_precision!r}.")
    dtype = MIXED_PRECISIONS[mixed_precision]
    if dtype is None or device.type == "cpu":
        return dtype
    if device.type == "cuda" and not torch.version.hip:
        if not _cuda_has_bf16(device):
            raise ValueError(
                f"mixed_precision={mixed_precision!r}: this CUDA device "
                f"({torch.cuda.get_device_name(device)}) has no native "
                "bfloat16; use mixed_precision=None.")
        return dtype
    problem = _bf16_autocast_problem(str(device))
    if problem is not None:
        raise ValueError(
            f"mixed_precision={mixed_precision!r}: bfloat16 autocast does not "
            f"run on device {str(device)!r} ({problem}); use "
            "mixed_precision=None.")
    return dtype


# True while a caller initialises a copy of a network whose training warned
# already that this CPU has no bfloat16 units (add_feature_head)
_BF16_UNITS_WARNING_SUSPENDED = contextvars.ContextVar(
    "deepblur_bf16_units_warning_suspended", default=False)


@contextlib.contextmanager
def bf16_units_warning_suspended():
    """Within it (in this thread or task), initialising a regressor with
    ``mixed_precision="bf16"`` on a CPU without bfloat16 units does not warn.

    Unlike ``warnings.catch_warnings``, it changes no process-wide state:
    the warnings of other threads are kept, and their filters are not undone.
    """
    token = _BF16_UNITS_WARNING_SUSPENDED.set(True)
    try:
        yield
    finally:
        _BF16_UNITS_WARNING_SUSPENDED.reset(token)


def _cuda_has_bf16(device):
    """Whether the (NVIDIA) CUDA ``device`` computes in bfloat16: compute
    capability 8.0 (Ampere) or later."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    return tuple(torch.cuda.get_device_capability(index)) >= (8, 0)


@functools.lru_cache(maxsize=None)
def _bf16_autocast_problem(device):
    """None when a convolution runs in bfloat16 under ``torch.autocast`` on
    ``device`` (a string), forward and backward; else what went wrong. torch
    refuses some devices outright and, on others, warns and leaves autocast
    off (MPS before macOS 14): both count as not running. It draws no random
    numbers and runs with gradients whatever the caller's mode (its answer is
    cached). Torch's warnings are shown, once per device: they say why
    autocast is off, and ``warnings.catch_warnings`` would change the
    process-wide filters under the feet of other threads (a threaded search
    fits networks at once)."""
    try:
        with torch.inference_mode(False), torch.enable_grad():
            weight = torch.ones(1, 1, 3, 3, device=device, requires_grad=True)
            x = torch.ones(1, 1, 5, 5, device=device)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                out = torch.nn.functional.conv2d(x, weight)
            if out.dtype != torch.bfloat16:
                return f"autocast computed in {out.dtype}"
            out.float().sum().backward()
    except Exception as exc:        # any backend's refusal
        lines = str(exc).strip().splitlines()
        return f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return None


def cpu_has_bf16_units():
    """Whether this x86 CPU computes in bfloat16 (AVX-512 BF16 or AMX); None
    when torch cannot tell (other architectures, older torch)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return None
    probes = [getattr(torch.cpu, name, None) for name in
              ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not any(probes):
        return None
    return any(probe() for probe in probes if probe is not None)


def plain_module(regressor):
    """The network of a fitted regressor, unwrapped from ``torch.compile``.

    A regressor fitted with ``compile=True`` holds torch.compile's wrapper,
    whose ``state_dict`` prefixes every key with ``"_orig_mod."``; weights are
    saved and loaded through the module itself.
    """
    return getattr(regressor.module_, "_orig_mod", regressor.module_)


class _Chunks(torch.utils.data.IterableDataset):
    """A ``BlurDataset``'s batches cut into pieces of at most ``size`` images,
    in order, each a copy with its own storage: a ``DataLoader`` worker shares
    a tensor's whole storage with the main process, so a slice (a view) would
    hand the whole batch over through shared memory (a container's
    ``/dev/shm`` may hold only 64 MB; a batch of 1 024 images of 128x128 is 64
    MiB), where pieces keep it to a few of them."""

    def __init__(self, dataset, size):
        super().__init__()
        self.dataset = dataset
        self.size = int(size)

    def __iter__(self):
        for X, y in self.dataset:
            for i in range(0, len(X), self.size):
                yield X[i:i + self.size].clone(), y[i:i + self.size].clone()


#: Images per piece that a head-fitting worker hands over (8 MiB at 128x128).
_WORKER_CHUNK = 128


def _regrouped(pieces, size):
    """Consecutive ``(X, y)`` pieces copied out of the workers' shared memory
    as they come and joined again into batches of ``size`` (the last one may
    be smaller)."""
    xs, ys, n = [], [], 0
    for xb, yb in pieces:
        xs.append(xb.clone())
        ys.append(yb.clone())
        n += len(xb)
        del xb, yb                      # release the shared piece now
        while n >= size:
            X, y = torch.cat(xs), torch.cat(ys)
            yield X[:size], y[:size]
            xs, ys, n = [X[size:]], [y[size:]], n - size
    if n:
        yield torch.cat(xs), torch.cat(ys)


class _NoLoneLastBatch(torch.utils.data.Sampler):
    """Batches of ``batch_size`` indices of ``sampler``, as
    ``BatchSampler(sampler, batch_size, drop_last=False)`` makes them, except
    that a last batch of one index is joined to the batch before it."""

    def __init__(self, sampler, batch_size):
        self.sampler = sampler
        self.batch_size = int(batch_size)

    def __iter__(self):
        # lazy, one batch held back: the sampler draws (its shuffle seed
        # included) when the loader asks for the first batch, as in a plain
        # DataLoader, whatever its number of workers
        held = None
        for batch in torch.utils.data.BatchSampler(self.sampler, self.batch_size,
                                                   drop_last=False):
            if held is not None and len(batch) == 1:
                held = held + batch
                continue
            if held is not None:
                yield held
            held = batch
        if held is not None:
            yield held

    def __len__(self):
        full, rest = divmod(len(self.sampler), self.batch_size)
        return full + (rest > 1 or (rest == 1 and full == 0))


def _lone_last_image(dataset, iterator, kwargs, size):
    """Whether the training batches of ``size`` images of a map-style
    ``dataset`` (batched by a ``DataLoader`` whose sampling the caller left
    to skorch) would end with a batch of one image."""
    if (isinstance(dataset, torch.utils.data.IterableDataset)
            or not hasattr(dataset, "__len__")
            or not (isinstance(iterator, type)
                    and issubclass(iterator, torch.utils.data.DataLoader))
            or {"sampler", "batch_sampler", "drop_last"} & set(kwargs)
            or not isinstance(size, Integral) or isinstance(size, bool)
            or size < 2):
        return False
    n = len(dataset)
    return n > size and n % size == 1


class ResNetBlurRegressor(SupportCheckMixin, FrozenComponentsMixin,
                          NeuralNetRegressor):
    r"""Estimate the coefficients ``gamma`` of a space-varying blur from one image.

    A skorch :class:`~skorch.NeuralNetRegressor` whose module maps a blurry,
    noisy image ``y = H[gamma] u + eta`` to ``gamma`` (paper section 2.2) and
    whose loss is the relative Frobenius distance between the true and
    estimated operators, ``sqrt((g - g_hat)^T G (g - g_hat) / g^T G g)``, with
    ``G`` the exact Gram matrix of the ``basis``.

    Parameters
    ----------
    module : torch module class or instance, default=ResNet
        ``module__*`` parameters reach it (``module__width``,
        ``module__depth``, ``module__head``, ...). ``module__n_outputs``
        defaults to the basis's ``K``.
    basis : ProductConvolutionBasis, default=None
        Fitted basis whose coefficients are regressed. Required in ``fit``
        unless the criterion gets ``criterion__gram`` explicitly; gives the
        Gram matrix of the loss and of ``score`` and checks image shapes.
        One set since ``fit`` with another K, or another image shape than
        ``image_shape_``, needs a new ``fit``.
    sampler : ConeSampler, default=None
        Fitted sampler of the training ``gamma`` (Algorithm 2). When given
        (and ``project``), :meth:`predict` returns the point of the set its
        samples fill,
        ``{w @ generators_ : w >= 0, alpha_min <= sum(w) <= alpha_max}``,
        nearest to the network's output in the operator (Frobenius) metric:
        that set is convex and holds every training ``gamma``, so the
        projection never moves an estimate away from a ``gamma`` of that set
        (measured on the shipped model: 0.07-0.10 points less error). It can
        move it away from an operator outside the set: on held-out operators
        of the random family the shipped model's basis and cone were fitted
        on (none of them in the set), it raised the error from 22.0 to 23.8 %
        (``benchmarks/bench_held_out_operators.py``). ``None`` (default)
        returns the network's output as it is.
    project : bool, default=True
        With a ``sampler``, whether :meth:`predict` projects the estimates on
        its support; False keeps the network's outputs and the sampler for
        the ``support_tolerance`` check and :meth:`support_distance` only.
    support_tolerance : float, default=None
        With a ``sampler``: :meth:`predict` issues an
        :class:`~deepblur.exceptions.OutOfSupportWarning` for estimates whose
        relative operator distance to the sampler's support
        (:meth:`support_distance`, measured before any projection) exceeds
        it; the sign of images unlike the training images. ``None`` checks
        nothing. The shipped network's is 0.06: it flags none of 512
        simulated natural or microscopy images at the protocol's noise, 61 %
        of the windows of larger scenes and 6-18 % of the point-source
        fields on a dark field, where its estimates are far off (26-39 %
        error; ``benchmarks/bench_support_check.py``): a warning marks an
        estimate to distrust, its absence proves nothing. The check costs a projection
        per image on the CPU, 2-10 % of the inference on one CPU thread; on a
        CUDA device, batches of 4 096 estimates or more that are not projected
        (``project=False``, as :func:`~deepblur.pretrained.load_model`
        leaves them) are checked with bounds computed there
        (:func:`~deepblur.solvers.cone.cone_distance_bounds`), and only the
        estimates they do not settle are projected.
    criterion : torch loss class, default=RelativeFrobeniusLoss
        ``torch.nn.MSELoss`` trains with plain MSE on ``gamma`` (for
        comparison); ``score`` is the operator error either way.
        :class:`~deepblur.nets.PSFMomentLoss` (with
        ``module__moment_stage`` and ``criterion__gamma_samples``) adds the
        supervision of the local PSF moments; it takes the basis's kernels
        and maps.
    optimizer : torch optimizer class, default=torch.optim.Adam
    lr : float, default=1e-3
    max_epochs : int, default=10
    batch_size : int, default=64
    device : str, default="cuda" if available else "cpu"
        Asking for CUDA where there is none raises a ``ValueError`` in
        ``fit``/``initialize`` (no silent fallback). A pickled model trained
        on CUDA loads on a CPU-only machine with a ``DeviceWarning`` (skorch).
    n_valid_batches : int, default=4
        With a :class:`~deepblur.datasets.simulate.BlurDataset` in ``fit``,
        the validation set is this many fixed batches drawn from the same
        distribution with another seed (``train_split=None``, 0 or None
        disable it).
    mixed_precision : {None, "bf16"}, default=None
        ``"bf16"`` runs the forward pass of the training steps under
        ``torch.autocast`` in bfloat16 (convolutions and matrix products in
        bfloat16, the weights, their gradients, the optimizer and the loss in
        float32); the validation and :meth:`predict` stay in float32, so the
        estimates of a trained network do not depend on it. It pays where
        the hardware computes in bfloat16: on a CPU with AMX (2-core Intel
        Xeon, one thread, batches of 64, compiled) the training step of
        width 8 ran 1.26x faster, width 16 1.64x and width 32 2.51x
        (``benchmarks/bench_mixed_precision.py``); CPUs without AVX-512 BF16
        or AMX emulate it and may run slower. A CUDA device without native
        bfloat16 (before Ampere) is refused in ``fit``/``initialize``.
    test_time_augmentation : {None, "dihedral"}, default=None
        ``"dihedral"``: :meth:`predict` (and :meth:`score`,
        :meth:`support_distance`) averages the network's estimates over the
        8 rotated and flipped copies of each image, each brought back to the
        image's operator by :func:`~deepblur.operators.dihedral_maps` (8
        times the inference). Only for a basis closed under the group, such
        as that of ``make_default_setting(symmetry="dihedral")``: a basis
        with more than 1 % of a transformed elementary operator outside its
        span is refused (the shipped model's has 3-21 %, and averaging made
        its estimates worse, benchmarks/README.md). On the CPU recipe's
        network the average took 0.65 point off the operator error (paired,
        6.50 % against 7.15 % from the image alone), which only made up for
        that setting's network being weaker against its mean operator than
        the default setting's (benchmarks/README.md, "A basis closed under
        rotations and flips").
        Needs square images; not for a ``Dataset`` as ``X``.
    **kwargs
        Any other :class:`skorch.NeuralNet` parameter (``callbacks``,
        ``train_split``, ``iterator_train__num_workers``, ...).

    Attributes
    ----------
    module_ : torch.nn.Module
        The initialised network.
    criterion_ : torch.nn.Module
        The initialised loss (holds the Gram matrix).
    optimizer_ : torch.optim.Optimizer
    history_ : skorch.History
        Per-epoch losses and callbacks' records.
    noise_level_ : float or None
        Noise standard deviation of the noisiest training images, in the
        scale the network sees: the top of a ``BlurDataset``'s ``noise_std``,
        or for arrays the 99th percentile of the levels estimated on them
        (:func:`~deepblur.solvers.tv.estimate_noise_level`); the largest over
        successive ``partial_fit`` calls. None when unknown (a dataset with
        ``snr`` or of another type), which turns the noise check of
        :meth:`predict` off, as 0.0 (a dataset without noise) does.
        :func:`~deepblur.pretrained.save_model` stores it and
        :func:`~deepblur.pretrained.load_model` restores it (models saved
        without it get the top of their setting's ``noise_std``).
    training_noise_std_ : float, (low, high) or None
        The noise standard deviation (or its range) the training images were
        drawn with: a ``BlurDataset``'s ``noise_std`` (0.0 without noise),
        the range covering successive ``partial_fit`` calls (its span when
        they drew at different fixed levels); None when unknown (arrays,
        ``snr``).
        :func:`~deepblur.pretrained.save_model` records it as the model's
        ``noise_std`` unless told otherwise, and
        :func:`~deepblur.pretrained.load_model` restores it, so that a loaded
        model written again keeps its training noise.
    training_boundary_ : {"zero", "crop"} or None
        How the training images were blurred at their border (a
        ``BlurDataset``'s ``boundary``; :func:`~deepblur.pretrained.load_model`
        sets the model's); None when unknown (arrays) or mixed (a continued
        training on another boundary). A network trained on
        ``"zero"`` reads the dark fringe of such images:
        :func:`deepblur.tiling.estimate_tiles` warns
        (:class:`~deepblur.exceptions.BoundaryWarning`) when it estimates
        the tiles of a larger image, which have none.
    image_shape_ : tuple of int or None
        The image shape of the basis the network was trained with: a basis
        of another shape set since (``set_params``) is refused by
        :meth:`predict` (its estimates would be read as the new maps'
        coefficients). A loaded model (:func:`deepblur.pretrained.load_model`)
        has that of the basis saved with it; None for a network trained
        without a basis, and absent on one pickled before deepblur recorded
        it (neither is checked).
    n_features_in_ : int
        Pixels of each image the network reads, ``H * W`` of the basis's
        ``image_shape`` (as the other estimators of images give it); defined
        once the network is initialised (fitted or loaded) with a basis.

    See Also
    --------
    deepblur.datasets.simulate.BlurDataset : fresh training data per batch.
    deepblur.datasets.simulate.make_blurred_images : fixed ``(X, y)`` arrays.

    Notes
    -----
    ``fit(X, y)`` takes arrays (``X`` of shape ``(n, H, W)`` or
    ``(n, 1, H, W)``, ``y`` of shape ``(n, K)``), or ``fit(dataset, None)``
    a ``BlurDataset`` that draws new images, operators and noise for every
    batch. Inputs are cast to float32; NaN/Inf, a wrong image shape or a
    wrong width of ``y`` are errors. The images must follow the scale
    convention of the simulator (clean image mean ``image_mean``), which
    makes the scale of ``gamma`` identifiable.

    In training, arrays (and other map-style datasets) are batched as skorch
    does, except that an epoch whose last batch would hold a single image
    (``n_train % batch_size == 1``, e.g. in the folds of a grid search)
    joins it to the batch before, of ``batch_size + 1`` images: batch
    normalisation cannot normalise one image whose last stage is 1x1 (images
    of the network's smallest size, 16x16 at the default ``stem_stride=2``),
    which torch refuses ("Expected more than 1 value per channel when
    training"), and one image gives it noisy statistics at any size. Every
    image is still trained on in every epoch (in the order, shuffled or not,
    that the loader draws); other sizes batch as before. Passing
    ``iterator_train__sampler``, ``iterator_train__batch_sampler`` or
    ``iterator_train__drop_last`` leaves the batching to them.

    Examples
    --------
    >>> import numpy as np
    >>> from deepblur.estimators.basis import ProductConvolutionBasis
    >>> from deepblur.estimators.cone import ConeSampler
    >>> from deepblur.estimators.regressor import ResNetBlurRegressor
    >>> from deepblur.datasets.simulate import make_blurred_images
    >>> rng = np.random.default_rng(0)
    >>> basis = ProductConvolutionBasis.from_components(
    ...     rng.random((3, 5, 5)), rng.random((3, 32, 32)))
    >>> sampler = ConeSampler(random_state=0).fit(np.eye(3))
    >>> X, y = make_blurred_images(rng.random((20, 32, 32)), basis, sampler, 32,
    ...                            random_state=0)
    >>> net = ResNetBlurRegressor(basis=basis, module__width=4, max_epochs=2,
    ...                           device="cpu", verbose=0).fit(X, y)
    >>> net.predict(X).shape
    (32, 3)
    >>> bool(net.score(X, y) <= 0)
    True
    """

    def __init__(self, module=ResNet, *args, basis=None, sampler=None,
                 criterion=RelativeFrobeniusLoss, optimizer=torch.optim.Adam,
                 lr=1e-3, max_epochs=10, batch_size=64, device=_DEFAULT_DEVICE,
                 n_valid_batches=4, project=True, support_tolerance=None,
                 mixed_precision=None, test_time_augmentation=None, **kwargs):
        super().__init__(module, *args, criterion=criterion, optimizer=optimizer,
                         lr=lr, max_epochs=max_epochs, batch_size=batch_size,
                         device=device, **kwargs)
        self.basis = basis
        self.sampler = sampler
        self.n_valid_batches = n_valid_batches
        self.project = project
        self.support_tolerance = support_tolerance
        self.mixed_precision = mixed_precision
        self.test_time_augmentation = test_time_augmentation

    def __setstate__(self, state):
        """Unpickle; a regressor saved before ``mixed_precision`` (or
        ``test_time_augmentation``) existed trained in float32 (and predicted
        from the image alone)."""
        state.setdefault("mixed_precision", None)
        state.setdefault("test_time_augmentation", None)
        super().__setstate__(state)

    def __sklearn_clone__(self):
        """Clone the hyper-parameters but keep the *fitted* basis and sampler.

        They are data of the model (the basis's maps and Gram matrix define
        what ``gamma`` means, the sampler where it may lie), not
        hyper-parameters to refit: scikit-learn's default clone would give
        unfitted copies, which would break ``GridSearchCV``. They are shared,
        as they are never modified.
        """
        return clone_sharing_fitted(self)

    # ------------------------------------------------------------ helpers
    def _basis_or_none(self):
        if self.basis is None:
            return None
        if not hasattr(self.basis, "fit") or not hasattr(self.basis, "n_components"):
            raise TypeError(
                "basis must be a ProductConvolutionBasis; got "
                f"{type(self.basis).__name__}."
            )
        check_is_fitted(self.basis, "gram_",
                        msg="basis must be a fitted ProductConvolutionBasis; "
                            "call basis.fit(psf_fields) first (got an unfitted one).")
        return self.basis

    def _n_outputs(self):
        basis = self._basis_or_none()
        if basis is not None:
            return int(basis.gram_.shape[0])
        gram = self.get_params_for("criterion").get("gram")
        return None if gram is None else int(np.shape(gram)[0])

    def _gram(self):
        basis = self._basis_or_none()
        gram = self.get_params_for("criterion").get("gram")
        if gram is not None:
            return np.asarray(gram.detach().cpu() if torch.is_tensor(gram) else gram,
                              dtype=np.float64)
        if basis is None:
            raise ValueError(
                "basis must be given (a fitted ProductConvolutionBasis) or "
                "criterion__gram set: the relative operator error needs the "
                "Gram matrix; got basis=None."
            )
        return np.asarray(basis.gram_, dtype=np.float64)

    # ------------------------------------------------------ initialisation
    def initialize_module(self):
        # clear errors for CUDA where there is none, and for mixed precision
        # skorch moves tensors to `device` as given: 'auto' is no device there
        # (None keeps them where they are made: the CPU, or an accelerator's)
        device = (torch.device("cpu") if self.device is None
                  else resolve_device(self.device, auto=False))
        if (check_mixed_precision(self.mixed_precision, device) is not None
                and device.type == "cpu" and cpu_has_bf16_units() is False
                and not _BF16_UNITS_WARNING_SUSPENDED.get()):
            warnings.warn(
                f"mixed_precision={self.mixed_precision!r}: this CPU has no "
                "bfloat16 units (AVX-512 BF16 or AMX); torch emulates them, "
                "which may train slower than mixed_precision=None.",
                UserWarning, stacklevel=user_stacklevel())
        params = self.get_params_for("module")
        K = self._n_outputs()
        if (K is None and "n_outputs" not in params
                and isinstance(self.module, type) and issubclass(self.module, ResNet)):
            raise ValueError(
                "basis must be given (a fitted ProductConvolutionBasis), or "
                "criterion__gram or module__n_outputs set: the network needs "
                "one output per coefficient; got basis=None.")
        check_sampler(self.sampler, K)  # before any training, not after
        check_support_params(self.project, self.support_tolerance, self.sampler)
        self._checked_n_valid_batches()
        # not after the training: the value, and a basis closed under the group
        if self._augmentation() is not None and self._basis_or_none() is not None:
            self._dihedral_back()
        if "n_outputs" not in params and K is not None and isinstance(self.module,
                                                                       type):
            kwargs = dict(params, n_outputs=K)
            self.module_ = self.initialized_instance(self.module, kwargs)
            return self
        return super().initialize_module()

    def initialize_criterion(self):
        params = self.get_params_for("criterion")
        moment_loss = (isinstance(self.criterion, type)
                       and issubclass(self.criterion, PSFMomentLoss))
        if (self.get_params_for("module").get("moment_stage") is not None
                and not (moment_loss
                         or isinstance(self.criterion, PSFMomentLoss))):
            raise ValueError(
                "module__moment_stage makes the network return its PSF moments "
                "in training, which only criterion=PSFMomentLoss reads; got "
                f"criterion={self.criterion!r}."
            )
        if (isinstance(self.criterion, type)
                and issubclass(self.criterion, RelativeFrobeniusLoss)
                and "gram" not in params):
            self.criterion_ = self.initialized_instance(
                self.criterion, dict(params, gram=self._gram()))
            return self
        if moment_loss and not {"kernels", "maps"} & set(params):
            basis = self._basis_or_none()
            if basis is None:
                raise ValueError(
                    "basis must be given (a fitted ProductConvolutionBasis) or "
                    "criterion__kernels and criterion__maps set: the PSF "
                    "moments are those of the basis; got basis=None."
                )
            self.criterion_ = self.initialized_instance(
                self.criterion, dict(params, kernels=basis.kernels_,
                                     maps=basis.maps_))
            return self
        return super().initialize_criterion()

    def infer(self, x, **fit_params):
        """The module's output; a training step's under ``mixed_precision``.

        In a training step (module in training mode) with
        ``mixed_precision``, the forward pass runs under ``torch.autocast``
        and its outputs are cast back to float32, so that the loss and the
        backward pass start in float32. Evaluation (validation,
        :meth:`predict`) runs in float32.
        """
        if self.mixed_precision is None or not self.module_.training:
            return super().infer(x, **fit_params)
        device = (torch.device("cpu") if self.device is None   # as initialize_module
                  else resolve_device(self.device))
        dtype = check_mixed_precision(self.mixed_precision, device)  # set_params
        with torch.autocast(device.type, dtype=dtype):
            out = super().infer(x, **fit_params)
        if isinstance(out, tuple):      # (gamma, PSF moments) with moment_stage
            return tuple(o.float() for o in out)
        return out.float()

    # ---------------------------------------------------------------- data
    def _image_shape(self):
        basis = self._basis_or_none()
        return None if basis is None else tuple(basis.image_shape_)

    @property
    def n_features_in_(self):
        """``H * W`` of the images the network reads (see Attributes)."""
        shape = (self._image_shape() if getattr(self, "initialized_", False)
                 else None)
        if shape is None:
            raise AttributeError(
                "n_features_in_ is defined once the regressor is fitted (or "
                "loaded) with a basis.")
        return int(np.prod(shape))

    def check_data(self, X, y):
        """Validate training data: images, finiteness, width of ``y``."""
        if isinstance(X, BlurDataset):
            check_dataset_basis(X, self._basis_or_none())
            return
        if isinstance(X, torch.utils.data.Dataset):
            return super().check_data(X, y)
        _check_images(X, self._image_shape())
        if y is None:
            raise ValueError("y must be given (the gamma of each image); got None.")
        y_arr = np.asarray(y.detach().cpu() if torch.is_tensor(y) else y)
        K = self._n_outputs()
        if y_arr.ndim != 2 or (K is not None and y_arr.shape[1] != K):
            raise ValueError(
                f"y must have shape (n_samples, K={K}) (one gamma per image); got "
                f"{y_arr.shape}."
            )
        if y_arr.shape[0] != len(X):
            raise ValueError(
                f"X and y must have as many samples; got {len(X)} images and "
                f"{y_arr.shape[0]} rows of y."
            )
        if not np.isfinite(y_arr.astype(np.float64)).all():
            raise ValueError("y must be finite; got NaN or Inf values.")

    def get_dataset(self, X, y=None):
        """Arrays become a float32 dataset of (n, 1, H, W) images."""
        if isinstance(X, torch.utils.data.Dataset):
            return super().get_dataset(X, y)
        Xt = _check_images(X, self._image_shape())
        if y is not None:
            y = torch.as_tensor(np.asarray(y.detach().cpu() if torch.is_tensor(y)
                                           else y, dtype=np.float32))
        return Dataset(Xt, y)

    def _checked_n_valid_batches(self):
        """``n_valid_batches`` as an int >= 0 (0 and None: no validation set).

        -1 failed in the split with Python's '__len__() should return >= 0',
        and 2.5 or "2" were taken as 2 without a word.
        """
        value = self.n_valid_batches
        if value is None:
            return 0
        if not (isinstance(value, Integral) and not isinstance(value, bool)
                and value >= 0):
            raise ValueError(
                "n_valid_batches must be a non-negative int (0 or None: no "
                f"validation set); got {value!r}.")
        return int(value)

    def get_split_datasets(self, X, y=None, **fit_params):
        """A ``BlurDataset`` is validated on fixed batches from another seed."""
        if not isinstance(X, BlurDataset):
            if isinstance(y, (list, tuple)):    # skorch reads a list as inputs
                y = np.asarray(y)
            return super().get_split_datasets(X, y, **fit_params)
        n_valid = self._checked_n_valid_batches()
        if not self.train_split or not n_valid:
            return X, None
        rs = X.random_state
        if isinstance(rs, Integral):
            seed = int(rs) + 1
        elif isinstance(rs, np.random.RandomState):
            # drawn from a copy: the same batches for the same state, and the
            # training stream is left as it is
            seed = int(copy.deepcopy(rs).randint(np.iinfo(np.int32).max)) + 1
        else:
            seed = None
        valid = BlurDataset(
            X.images, X.basis, X.sampler, batch_size=X.batch_size,
            n_batches=n_valid, noise_std=X.noise_std, snr=X.snr,
            normalize=X.normalize, image_mean=X.image_mean, augment=X.augment,
            pool_size=X.pool_size, boundary=X.boundary, device=X.device,
            random_state=seed)
        Xv, yv = zip(*valid, strict=True)
        return X, Dataset(torch.cat(Xv).cpu(), torch.cat(yv).cpu())

    def get_iterator(self, dataset, training=False):
        """``BlurDataset`` yields whole batches: no re-batching, no shuffling.
        Other data are batched as skorch does, with a batch size given as a
        NumPy integer (a grid of ``np.arange`` values) taken as an int, and
        in training without a last batch of one image (see Notes)."""
        kwargs = self.get_params_for(
            "iterator_train" if training else "iterator_valid")
        if isinstance(dataset, BlurDataset):
            kwargs.pop("batch_size", None)
            kwargs.pop("shuffle", None)
            return torch.utils.data.DataLoader(dataset, batch_size=None, **kwargs)
        size = kwargs.get("batch_size", self.batch_size)
        iterator = self.iterator_train if training else self.iterator_valid
        if isinstance(size, Integral) and not isinstance(size, bool):
            whole = len(dataset) if size == -1 else int(size)
            if training and _lone_last_image(dataset, iterator, kwargs, whole):
                # see Notes: the lone last image joins the batch before it
                # (drawn in the order, shuffled or not, the loader would use)
                kwargs.pop("batch_size", None)
                sampler = (torch.utils.data.RandomSampler(
                    dataset, generator=kwargs.get("generator"))
                    if kwargs.pop("shuffle", False)
                    else torch.utils.data.SequentialSampler(dataset))
                return iterator(dataset, batch_sampler=_NoLoneLastBatch(
                    sampler, whole), **kwargs)
            if not isinstance(size, int):
                kwargs["batch_size"] = whole
                return iterator(dataset, **kwargs)
        return super().get_iterator(dataset, training=training)

    def on_epoch_begin(self, net, dataset_train=None, dataset_valid=None,
                       **kwargs):
        """Start the epoch's data stream of a ``BlurDataset`` (new samples).

        skorch iterates one ``DataLoader`` per fit; every epoch forks new
        workers from the dataset as it is, so the stream is re-seeded from
        the epoch number (which a resumed training restores with the history).
        """
        super().on_epoch_begin(net, dataset_train=dataset_train,
                               dataset_valid=dataset_valid, **kwargs)
        if isinstance(dataset_train, BlurDataset):
            dataset_train.set_epoch(len(self.history))

    def on_train_end(self, net, X=None, y=None, **kwargs):
        """Hand a ``BlurDataset`` back to per-pass seeding (its
        :meth:`~deepblur.datasets.BlurDataset.set_epoch` ``(None)``): used
        after the training with ``DataLoader`` workers, it would otherwise
        replay the last epoch's samples at every pass."""
        super().on_train_end(net, X=X, y=y, **kwargs)
        if isinstance(X, BlurDataset):
            X.set_epoch(None)

    def set_params(self, **params):
        """Set parameters (scikit-learn / skorch conventions).

        On an initialised regressor (a trained or loaded one), skorch 1.x
        refuses parameters that re-initialise no component (those of the
        data loaders and of the dataset, e.g. ``iterator_valid__batch_size``
        for the batches of ``predict``) with a message asking for a bug
        report. They need no re-initialisation, so they are stored here and
        apply from the next ``fit`` or ``predict``; the others go to skorch.

        The parameters of ``basis`` and ``sampler`` themselves
        (``basis__tol``) are refused: they are used as fitted and shared by
        ``clone`` (as scikit-learn's ``FrozenEstimator`` does), and
        :meth:`get_params` does not list them.

        ``device`` on an initialised regressor moves the trained network
        there: its module, criterion and optimizer state (so that
        ``predict`` and ``partial_fit`` run on the new device with the same
        weights). skorch 1.x only records the name, and the next ``predict``
        failed in torch (its inputs on the new device, the weights on the
        old). A device that is not available (``"cuda"`` without CUDA,
        ``"cuda:1"`` with one GPU) or a ``mixed_precision`` it cannot run is
        refused before anything changes; ``device=None`` (skorch's "move
        nothing") moves nothing.
        """
        check_no_shared_nested(self, params)
        target = None
        if "device" in params and getattr(self, "initialized_", False):
            target = self._device_to_move_to(
                params["device"], params.get("mixed_precision",
                                             self.mixed_precision))
        self._set_params(params)
        if target is not None:
            self._move_to(target)
        return self

    def _set_params(self, params):
        passive = {k: v for k, v in params.items()
                   if k.split("__", 1)[0] in _PASSIVE_PREFIXES}
        if not passive or not getattr(self, "initialized_", False):
            return super().set_params(**params)
        fitted = sorted(k for k in passive if k.endswith("_"))
        if fitted:
            raise ValueError(f"set_params cannot set {fitted}: names ending in "
                             "'_' are fitted attributes, not parameters.")
        rest = {k: v for k, v in params.items() if k not in passive}
        if rest:
            super().set_params(**rest)
        for key, value in passive.items():
            setattr(self, key, value)
        self._params_to_validate.update(passive)
        self._validate_params()     # skorch's checks (names, a shuffled predict)
        return self

    @staticmethod
    def _device_to_move_to(device, mixed_precision):
        """The torch device that ``set_params(device=device)`` moves an
        initialised regressor to (None: skorch's "move nothing"), checked as
        :meth:`initialize_module` checks it."""
        if device is None:
            return None
        target = resolve_device(device, auto=False)
        # an index beyond the GPUs failed in torch's move, the device recorded
        count = torch.cuda.device_count() if target.type == "cuda" else 0
        if target.index is not None and target.type == "cuda" and target.index >= count:
            raise ValueError(
                f"device={device!r}: this machine has {count} CUDA device"
                f"{'s' if count != 1 else ''} (cuda:0"
                + (f" to cuda:{count - 1}" if count > 1 else "") + ").")
        check_mixed_precision(mixed_precision, target)
        return target

    def _move_to(self, device):
        """Move the modules, the criteria and the optimizers' state to
        ``device`` (torch's ``load_state_dict`` puts each optimizer's state
        where its parameters now are, Adam's step counts staying where torch
        keeps them)."""
        for name in self._modules + self._criteria:
            component = getattr(self, name + "_", None)
            if isinstance(component, torch.nn.Module):
                component.to(device)
        for name in self._optimizers:
            optimizer = getattr(self, name + "_", None)
            if isinstance(optimizer, torch.optim.Optimizer):
                optimizer.load_state_dict(optimizer.state_dict())

    def initialize(self):
        """Initialise the components (skorch) and forget the training noise."""
        super().initialize()
        vars(self).pop("noise_level_", None)
        vars(self).pop("training_noise_std_", None)
        vars(self).pop("training_boundary_", None)
        vars(self).pop("image_shape_", None)
        return self

    def fit(self, X, y=None, **fit_params):
        """Initialise the network (unless ``warm_start``) and train it (skorch).

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W), or a Dataset
            Training images, or a :class:`~deepblur.datasets.BlurDataset`.
        y : array-like of shape (n, K), default=None
            Their ``gamma`` (``None`` with a ``BlurDataset``).
        **fit_params
            Passed on by skorch (to the module's ``forward``).

        Returns
        -------
        self : ResNetBlurRegressor

        Raises
        ------
        ValueError
            For ``sample_weight``: the loss weighs every training image alike
            (:meth:`score` takes weights); refused before the network is
            initialised, so a fitted one keeps its weights.
        """
        _refuse_sample_weight(fit_params, "fit")
        return super().fit(X, y, **fit_params)

    def partial_fit(self, X, y=None, classes=None, **fit_params):
        """Train the network further (skorch), initialising it if needed.

        Parameters are those of :meth:`fit` (``classes`` is skorch's, unused
        by a regressor).

        Returns
        -------
        self : ResNetBlurRegressor

        Raises
        ------
        ValueError
            For ``sample_weight``, as :meth:`fit`.
        """
        _refuse_sample_weight(fit_params, "partial_fit")
        return super().partial_fit(X, y, classes=classes, **fit_params)

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        """skorch's training loop, recording the noise of the training images.

        See ``noise_level_``. Recorded before the first epoch, so an
        interrupted training keeps it.
        """
        # data refused by skorch's own check must not overwrite the record
        self.check_data(X, y)
        continued = hasattr(self, "noise_level_")      # widen them
        self._record_training_noise(X, widen=self if continued else None)
        return super().fit_loop(X, y, epochs=epochs, **fit_params)

    def _record_training_noise(self, X, widen=None):
        """Set ``noise_level_``, ``training_noise_std_`` and
        ``training_boundary_`` from training data (and ``image_shape_``
        from the basis it is trained with).

        ``X`` is what the network is trained on (arrays or a ``BlurDataset``);
        with ``widen``, a regressor whose training this one continues, both
        cover its training noise too. :meth:`fit` calls it before the first
        epoch; code that trains the network in other ways (a closed-form
        head, a finished training resumed) calls it to keep the two in step.
        """
        level, noise = training_noise_level(X), training_noise_std(X)
        if widen is not None:
            level = merge_noise_levels(widen.noise_level_, level)
            noise = merge_noise_stds(getattr(widen, "training_noise_std_", None),
                                     noise)
        self.noise_level_ = level
        self.training_noise_std_ = noise
        boundary = training_boundary(X)
        if widen is not None and getattr(widen, "training_boundary_",
                                         None) != boundary:
            boundary = None             # mixed, or unknown before
        self.training_boundary_ = boundary
        self.image_shape_ = self._image_shape()
        return self

    # ----------------------------------------------------------- prediction
    def predict(self, X):
        """Estimated coefficients ``gamma_hat`` of the blur of each image.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W), or a Dataset
            Blurry images of the basis's ``image_shape``, scaled as in
            training.

        Returns
        -------
        ndarray of shape (n, K), float32
            The network's outputs, projected on the sampler's support when
            ``sampler`` is given and ``project`` is True.

        Raises
        ------
        ValueError
            When some of the network's estimates are not finite (NaN or Inf):
            its weights diverged in training or are damaged (the message says
            whether they are finite). :meth:`score` and
            :meth:`support_distance` raise it too.

        Warns
        -----
        NoisyImageWarning
            When some images are over three times noisier than
            ``noise_level_`` (see :class:`~deepblur.exceptions.NoisyImageWarning`).
        OutOfSupportWarning
            When some estimates lie farther than ``support_tolerance`` from
            the sampler's support (see
            :class:`~deepblur.exceptions.OutOfSupportWarning`).
        """
        check_support_params(self.project, self.support_tolerance, self.sampler)
        gamma = self._estimates(X)
        warn_if_noisy(X, getattr(self, "noise_level_", None))
        if not support_check_needed(self.sampler, self.project,
                                    self.support_tolerance):
            return gamma            # neither projected nor checked: no Gram
        return checked_estimates(gamma, self.sampler, self._gram(),
                                 project=self.project,
                                 support_tolerance=self.support_tolerance,
                                 device=self.device)

    def support_distance(self, X):
        """Relative operator distance of each estimate to the sampler's support.

        ``||H[g] - H[p]||_F / ||H[p]||_F`` for the network's estimate ``g``
        (before any projection) and its projection ``p`` on the support of
        the sampler's ``gamma``: near 0 for images like the training images,
        large for images unlike them (what ``support_tolerance`` checks).

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W), or a Dataset

        Returns
        -------
        ndarray of shape (n,), float64
        """
        sampler = self._distance_sampler()
        return support_distances(sampler, self._estimates(X), self._gram())[1]

    def _estimates(self, X):
        """The network's estimates (averaged over the transformed copies with
        ``test_time_augmentation``), before any projection; refused when not
        finite (:meth:`_check_finite_estimates`), or when the basis was set
        since ``fit`` with another image shape (``image_shape_``) or the
        network does not give its K."""
        shape, fitted = self._image_shape(), getattr(self, "image_shape_", None)
        if None not in (shape, fitted) and tuple(shape) != tuple(fitted):
            # the estimates would be those of the trained basis's maps
            raise ValueError(
                f"basis has image shape {tuple(shape)}, but this network was "
                f"trained with a basis of image shape {tuple(fitted)}: a basis "
                "set since fit (set_params) with another image shape needs a "
                "new fit.")
        return self._check_n_outputs(
            self._check_finite_estimates(self._raw_estimates(X)))

    def _check_n_outputs(self, gamma):
        """``gamma``, refused when the network does not give the K of the
        basis (or ``criterion__gram``): one of another K set since ``fit``."""
        K = self._n_outputs()
        if K is not None and gamma.shape[1] != K:
            raise ValueError(
                f"the network gives {gamma.shape[1]} coefficients per image but "
                f"the basis (or criterion__gram) has K={K}: a basis set since "
                "fit (set_params) with another K needs a new fit.")
        return gamma

    def _check_finite_estimates(self, gamma):
        """``gamma``, or a ``ValueError`` naming the cause when some estimates
        are NaN or Inf (they would be returned, projected or scored as if
        they were estimates): weights that are not finite (a training that
        diverged, damaged weights), or else estimates that overflow."""
        bad = ~np.isfinite(gamma).all(axis=1)
        if not bad.any():
            return gamma
        state = plain_module(self).state_dict().values()
        if all(all_finite(t) for t in state):
            cause = ("its weights are finite but so large (or the images so "
                     "far from the scale of the training images) that the "
                     "estimates overflow float32")
        else:
            cause = ("its weights are not finite either: its training diverged "
                     "(e.g. a too large learning rate) or they are damaged; "
                     "train it again or load sound weights")
        raise ValueError(
            f"the network's estimates are not finite (NaN or Inf) for "
            f"{int(bad.sum())} of {len(gamma)} images: {cause}."
        )

    def _raw_estimates(self, X):
        """:meth:`_estimates`, unchecked."""
        if self._augmentation() is None:
            return super().predict(X)
        if isinstance(X, torch.utils.data.Dataset):
            raise TypeError("test_time_augmentation='dihedral' transforms the "
                            "images: pass them as an array or tensor, not a "
                            f"{type(X).__name__}.")
        back = self._dihedral_back()
        X = X if torch.is_tensor(X) else np.asarray(X)
        if X.ndim < 2 or X.shape[-1] != X.shape[-2]:
            raise ValueError(f"test_time_augmentation='dihedral' needs square "
                             f"images; got shape {tuple(X.shape)}.")
        total = None
        for t in range(N_DIHEDRAL):
            estimate = super().predict(dihedral_transform(X, t)).astype(np.float64)
            # the K of the basis before its maps are applied: numpy's matmul
            # error ('mismatch in its core dimension') said nothing of it
            estimate = self._check_n_outputs(estimate) @ back[t].T
            total = estimate if total is None else total + estimate
        return (total / N_DIHEDRAL).astype(np.float32)

    def _augmentation(self):
        """``test_time_augmentation``, checked."""
        augment = self.test_time_augmentation
        if augment not in (None, "dihedral"):
            raise ValueError(f"test_time_augmentation must be None or "
                             f"'dihedral'; got {augment!r}.")
        return augment

    def _dihedral_back(self):
        """``back`` of :func:`~deepblur.operators.dihedral_maps` for the basis
        (computed once per basis), refused for a basis not closed under the
        group."""
        basis = self._basis_or_none()
        if basis is None:
            raise ValueError("test_time_augmentation='dihedral' needs the basis "
                             "(a fitted ProductConvolutionBasis); got basis=None.")
        cached = getattr(self, "_dihedral_cache", None)
        if cached is not None and cached[0] is basis:
            return cached[1]
        _, back, outside = dihedral_maps(basis.kernels_, basis.maps_, basis.boundary)
        worst = float(outside.max())
        if worst > CLOSURE_TOLERANCE:
            raise ValueError(
                f"test_time_augmentation='dihedral' needs a basis closed under "
                f"rotations and flips; up to {100 * worst:.1f} % of a "
                f"transformed elementary operator lies outside this one's span, "
                f"and the estimates of the transformed copies could not be "
                f"brought back (fit it to a family closed under them: "
                f"make_default_setting(symmetry='dihedral')).")
        self._dihedral_cache = (basis, back)
        return back

    # ---------------------------------------------------- the feature head
    def fit_feature_head(self, X, y=None, *, alphas=None, num_workers=0):
        """Fit the module's blur-statistics branch in closed form.

        With the trunk of the trained network frozen, a ridge regression in
        the operator metric maps ``[trunk output, standardised blur
        statistics]`` to the residual ``gamma - trunk output`` (targets
        ``L^T (gamma - g_trunk)`` with ``G = L L^T`` the basis's Gram matrix,
        ``alpha`` by leave-one-out, :class:`~sklearn.linear_model.RidgeCV`).
        The fit is folded into the network: the statistics' part into
        ``module_.feature_fc`` and its standardisation buffers, the affine map
        of the trunk's output into the last layer. The network then predicts
        the ridge's estimate, and stays trainable.

        The module must have the branch: ``module__blur_features={...}`` and
        ``module__image_shape=(H, W)``, e.g. a trained network loaded into
        one built with them (the branch starts at zero).

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W), or BlurDataset
            Training images (a ``BlurDataset`` is read once, batch by batch;
            arrays by batches of the regressor's ``batch_size``, -1 for one
            batch, as skorch reads them); not the images the network was
            trained on, if possible.
        y : array-like of shape (n, K), default=None
            Their ``gamma`` (``None`` with a ``BlurDataset``).
        alphas : array-like of float, default=None
            Candidate penalties (on standardised inputs); default 13 values
            from 1e-3 to 1e3, log-spaced.
        num_workers : int, default=0
            Processes that simulate a ``BlurDataset``'s batches (a
            ``DataLoader``'s workers) while the network and the statistics
            read the previous ones; 0 simulates them in this process. On a
            2-core CPU one worker made the fit 1.43 times faster
            (benchmarks/README.md, "The blur-statistics head with a data
            worker"). Workers draw other
            images than this process would (their streams have their own
            seeds), and they cannot simulate on CUDA: a dataset on a GPU
            needs 0. Ignored for arrays.

        Returns
        -------
        self : ResNetBlurRegressor
            With ``feature_head_alpha_`` (the chosen penalty) and
            ``feature_head_n_images_`` set.
        """
        from sklearn.exceptions import NotFittedError
        from sklearn.linear_model import RidgeCV

        if not getattr(self, "initialized_", False):
            raise NotFittedError("The regressor must be initialised and trained "
                                 "before its feature head is fitted; call fit first.")
        module = plain_module(self)
        if getattr(module, "feature_fc", None) is None:
            raise ValueError(
                "module_ has no blur-statistics branch: build the regressor with "
                "module__blur_features={} (or its parameters) and "
                "module__image_shape=(H, W)."
            )
        alphas = np.logspace(-3, 3, 13) if alphas is None else np.atleast_1d(
            np.asarray(alphas, dtype=np.float64))
        if alphas.size == 0 or not (np.isfinite(alphas) & (alphas > 0)).all():
            raise ValueError(f"alphas must be positive and finite; got {alphas}.")
        gram = self._gram()
        try:
            L = np.linalg.cholesky(gram)
        except np.linalg.LinAlgError as exc:
            raise ValueError("the basis's Gram matrix must be positive definite "
                             "to fit the feature head.") from exc
        if (not isinstance(num_workers, Integral) or isinstance(num_workers, bool)
                or num_workers < 0):
            raise ValueError("num_workers must be a non-negative int; got "
                             f"{num_workers!r}.")
        if isinstance(X, BlurDataset):
            where = (resolve_device(X.device) if X.device in (None, "auto")
                     else torch.device(X.device))
            if num_workers and where.type != "cpu":
                raise ValueError(
                    f"num_workers={num_workers} needs a BlurDataset simulated on "
                    f"the CPU (DataLoader workers cannot use {X.device!r}); pass "
                    "num_workers=0 to simulate on the device in this process.")
            size = X.batch_size
            if (not isinstance(size, Integral) or isinstance(size, bool)
                    or size < 1):
                raise ValueError(f"batch_size must be a positive int; got {size!r}.")
            # a worker hands its batches over in small pieces, joined again
            # here; the loader's own generator leaves the caller's global
            # torch RNG alone
            batches = (_regrouped(torch.utils.data.DataLoader(
                _Chunks(X, _WORKER_CHUNK), batch_size=None,
                num_workers=int(num_workers), generator=torch.Generator()),
                int(size)) if num_workers else iter(X))
        else:
            self.check_data(X, y)
            Xt = _check_images(X, self._image_shape())
            targets = check_gamma_targets(y, gram.shape[0])
            step = self.batch_size
            if (not isinstance(step, Integral) or isinstance(step, bool)
                    or not (step >= 1 or step == -1)):
                raise ValueError(f"batch_size must be a positive int or -1 (one "
                                 f"batch); got {step!r}.")
            step = len(Xt) if step == -1 else int(step)     # as skorch's
            batches = [(Xt[i:i + step], targets[i:i + step])
                       for i in range(0, len(Xt), step)]
        P, F, Y = [], [], []
        was_training = module.training
        module.eval()
        with torch.no_grad():
            for xb, yb in batches:
                trunk, feats = module.forward_parts(
                    torch.as_tensor(xb).to(self.device))
                P.append(trunk.double().cpu().numpy())
                F.append(feats.double().cpu().numpy())
                Y.append(np.asarray(yb.cpu() if torch.is_tensor(yb) else yb,
                                    dtype=np.float64))
        module.train(was_training)
        P, F, Y = np.concatenate(P), np.concatenate(F), np.concatenate(Y)
        Z = np.hstack([P, F])
        mu, sd = Z.mean(0), Z.std(0)
        sd[sd < 1e-12] = 1.0
        ridge = RidgeCV(alphas=alphas).fit((Z - mu) / sd, (Y - P) @ L)
        K = P.shape[1]
        Li = np.linalg.inv(L)
        Cp, Cf = ridge.coef_[:, :K].T, ridge.coef_[:, K:].T
        M = (Cp / sd[:K, None]) @ Li                    # trunk -> its correction
        const = ridge.intercept_ @ Li - (mu[:K] / sd[:K]) @ Cp @ Li
        A = np.eye(K) + M
        with torch.no_grad():
            W = module.fc.weight.double().cpu().numpy()
            b = module.fc.bias.double().cpu().numpy()
            dev = module.fc.weight.device
            module.fc.weight.copy_(torch.as_tensor(A.T @ W, device=dev))
            module.fc.bias.copy_(torch.as_tensor(b @ A + const, device=dev))
            module.feature_mean.copy_(torch.as_tensor(mu[K:], device=dev))
            module.feature_scale.copy_(torch.as_tensor(sd[K:], device=dev))
            module.feature_fc.weight.copy_(torch.as_tensor((Cf @ Li).T, device=dev))
        self.feature_head_alpha_ = float(ridge.alpha_)
        self.feature_head_n_images_ = int(len(P))
        return self

    # -------------------------------------------------------------- scoring
    def score(self, X, y, sample_weight=None):
        """Minus the mean relative operator error (higher is better, 0 exact).

        ``-mean_i ||H[y_i] - H[yhat_i]||_F / ||H[y_i]||_F`` with the Gram
        matrix of the basis (or ``criterion__gram``). The estimates are scored
        against the truth, so no ``OutOfSupportWarning`` is issued.

        Parameters
        ----------
        X : array-like of shape (n, H, W) or (n, 1, H, W)
            Images.
        y : array-like of shape (n, K)
            Their true gamma (finite, one row per image; a row of a zero
            operator, whose relative error is undefined, is refused).
        sample_weight : array-like of shape (n,), default=None
            Weights of the images' errors in the mean (finite, non-negative).

        Returns
        -------
        score : float

        Raises
        ------
        ValueError
            When some of the network's estimates are not finite (see
            :meth:`predict`): a score of NaN would rank the network as if it
            had been measured.
        """
        if isinstance(X, torch.utils.data.Dataset):
            raise TypeError("score needs images and their gamma as arrays (X, y); "
                            f"got a {type(X).__name__} (draw arrays from it, e.g. "
                            "with make_blurred_images).")
        return estimates_score(self, self._gram(), X, y, sample_weight)

    def __sklearn_tags__(self):
        tags = image_to_gamma_tags(super().__sklearn_tags__())
        # no random_state: the weights' initialisation and the batches follow
        # torch's global generator, so two fits give two networks
        tags.non_deterministic = True
        return tags
