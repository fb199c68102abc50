"""Train a blur regressor in a setting: fresh data, checkpoints, resuming.

:func:`train_regressor` is what ``examples/train_default_model.py`` and
``deepblur train`` run; its defaults reproduce the shipped model.
:func:`train_spectral_regressor` fits the spectral regressor
(``examples/train_spectral_model.py``), :func:`train_crop_network` the network
for real images (``examples/train_crop_model.py``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import multiprocessing
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from skorch.callbacks import Checkpoint

from deepblur._validation import resolve_device
from deepblur.datasets.simulate import BlurDataset, _check_not_path, _check_range
from deepblur.estimators.regressor import (
    ResNetBlurRegressor,
    bf16_units_warning_suspended,
    check_mixed_precision,
    plain_module,
)
from deepblur.nets.losses import PSFMomentLoss, RelativeFrobeniusLoss
from deepblur.nets.resnet import INPUT_NORMS

__all__ = ["CRITERIA", "CROP_NETWORK_DEFAULTS", "FEATURE_HEAD_DEFAULTS",
           "SPECTRAL_DEFAULTS", "SUPPORT_QUANTILE", "TRAINING_DEFAULTS",
           "add_feature_head", "calibrate_support_tolerance",
           "support_calibration_images",
           "check_crop_network_params", "check_training_params",
           "default_num_workers", "finished_epochs", "train_crop_network",
           "train_regressor", "train_spectral_regressor"]

#: Training losses by name: MSE on ``gamma`` (the shipped model's) and the
#: relative Frobenius distance between operators (the paper's).
CRITERIA = {"mse": torch.nn.MSELoss, "frobenius": RelativeFrobeniusLoss}

#: Hyper-parameters of the shipped network's training (``examples/
#: train_default_model.py``, with noise drawn in [0, 0.02]), then given a
#: blur-statistics head (:func:`add_feature_head`; the calls are recorded in
#: its model.json). Measured: 211 s on an NVIDIA H200, the batches made on the
#: GPU (20 000 images/s), then 10 s for the head (the shipped network was then
#: fine-tuned on a CPU, ``init_model``: its model.json). On a 2-core CPU this width
#: trains at about 76 images/s (one thread, AMD EPYC): most of a day
#: (derived; benchmarks/README.md, "GPU round on an H200").
TRAINING_DEFAULTS = dict(
    n_images=4_229_120, epochs=10, batch_size=256, lr=2e-3, width=32, depth=2,
    stem_stride=4, head="spatial", input_norm="laplacian", criterion="mse",
    pool_size=20_000, gammas_per_image=1, moment_stage=None, moment_weight=0.01,
    num_workers=None, device="auto", compile=False, mixed_precision=None,
    random_state=0,
)

#: Share of images like the training images whose estimates pass a
#: ``support_tolerance`` set by :func:`calibrate_support_tolerance`.
SUPPORT_QUANTILE = 0.999
# distances below this are rounding (float32 estimates of points of the set)
_SUPPORT_FLOOR = 1e-3


def calibrate_support_tolerance(regressor, X, *, quantile=SUPPORT_QUANTILE):
    """The ``support_tolerance`` that a share ``quantile`` of images ``X`` pass.

    The ``quantile`` of the distances of the regressor's estimates to its
    sampler's support (:meth:`~deepblur.ResNetBlurRegressor.support_distance`)
    on ``X``: fresh images drawn as the training images were (same simulator,
    noise, boundary and kind of scene), so that ``predict`` warns
    (:class:`~deepblur.exceptions.OutOfSupportWarning`) about a share
    ``1 - quantile`` of such images and about images whose estimates stray
    farther. Set it with ``regressor.set_params(support_tolerance=...)``;
    ``deepblur train`` does so on 4 096 images (``support_images``).

    For the shipped networks, on 8 192 images each drawn as their training
    images were (:func:`support_calibration_images`, two draws): 0.046-0.048
    for the zero-boundary network (which ships 0.05; the width-16 network
    before it: 0.053-0.054, shipped 0.06) and 0.16-0.18 for the crop network
    (which ships 0.1, to flag more point-source fields;
    ``benchmarks/bench_support_check.py``).

    Parameters
    ----------
    regressor : ResNetBlurRegressor or SpectralBlurRegressor
        Trained, with its ``sampler`` (the support of its training
        ``gamma``).
    X : array-like of shape (n, H, W)
        Images like its training images. With fewer than
        ``1 / (1 - quantile)`` of them the quantile is close to their largest
        distance.
    quantile : float in (0, 1], default=0.999

    Returns
    -------
    float
        At least 1e-3 (smaller distances are rounding).
    """
    if (isinstance(quantile, bool) or not isinstance(quantile, Real)
            or not 0 < quantile <= 1):
        raise ValueError(f"quantile must be in (0, 1]; got {quantile!r}.")
    if not len(X):
        raise ValueError("X must hold at least one image; got none.")
    distances = regressor.support_distance(X)
    return max(float(np.quantile(distances, quantile)), _SUPPORT_FLOOR)


def support_calibration_images(setting, images, n_images, *, noise_std=None,
                               boundary=None, point_fraction=0.0, pool_size=2000,
                               random_state=0):
    """Fresh images drawn as a network's training images, for
    :func:`calibrate_support_tolerance`.

    Clean patches of ``images`` (``pool_size`` crops; plus simulated point
    sources making ``point_fraction`` of the pool, as
    :func:`train_crop_network` mixes them), blurred by draws of the setting's
    sampler with its noise and boundary unless given.

    Returns
    -------
    ndarray of shape (n_images, H, W), float32
    """
    from deepblur.datasets.simulate import make_blurred_images

    params = setting["params"]
    shape = tuple(int(s) for s in setting["basis"].image_shape_)
    rng = np.random.RandomState(random_state)
    pool = _pool_with_points(images, shape, pool_size, point_fraction, rng)
    X, _ = make_blurred_images(
        pool, setting["basis"], setting["sampler"], n_images,
        noise_std=params["noise_std"] if noise_std is None else noise_std,
        image_mean=params.get("image_mean", 0.5),
        boundary=params.get("boundary", "zero") if boundary is None else boundary,
        random_state=rng)
    return X


_CHECKPOINT_FILES = dict(f_params="params.pt", f_optimizer="optimizer.pt",
                         f_criterion="criterion.pt", f_history="history.json")


def remove_checkpoint(directory):
    """Delete the checkpoint files of :func:`train_regressor` (and its
    ``run.json``) in ``directory``, nothing else: a training started over
    there must not be resumed from the old run's epochs."""
    directory = Path(directory)
    for name in (*_CHECKPOINT_FILES.values(), _RUN_FILE):
        (directory / name).unlink(missing_ok=True)


def checkpoint_files(directory):
    """The checkpoint files of :func:`train_regressor` that ``directory``
    holds (their names; none if it does not exist)."""
    directory = Path(directory)
    return [name for name in _CHECKPOINT_FILES.values()
            if (directory / name).exists()]


def _check_checkpoint_dir(checkpoint_dir, resume):
    """Refuse ``resume`` without a ``checkpoint_dir``, and a training started
    (``resume=False``) over a checkpoint: its ``run.json`` would be replaced
    at once but the old run's weights, optimizer and history only at the end
    of the first epoch, and a resume after an interruption before then would
    go on from the old run's epochs under the new run's parameters, without a
    word."""
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from.")
    if resume or checkpoint_dir is None:
        return
    found = checkpoint_files(checkpoint_dir)
    if found:
        raise ValueError(
            f"checkpoint_dir {str(checkpoint_dir)!r} holds a checkpoint "
            f"({', '.join(found)}): pass resume=True to continue it, or remove "
            f"it ({', '.join((*_CHECKPOINT_FILES.values(), _RUN_FILE))}) to "
            "start over, or name another directory."
        )


def finished_epochs(net):
    """Number of epochs of ``net.history`` that ran to their end."""
    return sum(1 for row in net.history if "dur" in row)


def default_num_workers(device, *, guarded_main=False):
    """What ``num_workers=None`` means for data made for ``device``.

    0 for CUDA: the batches are simulated on the GPU, in this process.
    Otherwise (the CPU, and other devices, whose batches are simulated on the
    CPU), 1 (a ``DataLoader`` worker simulates the next batches while the
    network reads these) where worker processes are forked, the default
    start method on Linux up to Python 3.13; 0 (simulated in this process)
    where they are spawned (macOS, Windows, Python 3.14's ``forkserver``
    default on Linux) unless ``guarded_main``. A spawned worker imports the
    caller's main script again: a script without an
    ``if __name__ == "__main__":`` guard would run again in it, training
    included, before failing. Give ``num_workers``
    explicitly to have workers anyway (then guard the script).

    Parameters
    ----------
    device : torch.device
        The resolved training device.
    guarded_main : bool, default=False
        Whether the main module is known to guard its work (the ``deepblur``
        command's entry points do).

    Returns
    -------
    int

    Examples
    --------
    >>> import torch
    >>> from deepblur.pretrained import default_num_workers
    >>> default_num_workers(torch.device("cuda"))
    0
    >>> default_num_workers(torch.device("cpu"), guarded_main=True)
    1
    """
    if device.type == "cuda":
        return 0
    method = (multiprocessing.get_start_method(allow_none=True)
              or multiprocessing.get_all_start_methods()[0])
    return 1 if guarded_main or method == "fork" else 0


def _setting_shape(setting):
    """``{"image_shape": ...}`` of a setting's basis, or ``{}`` if it has none
    (checked later, with the setting)."""
    basis = setting.get("basis") if isinstance(setting, dict) else None
    shape = getattr(basis, "image_shape_", None)
    return {} if shape is None else {"image_shape": tuple(shape)}


def check_training_params(**params):
    """Validate hyper-parameters of :func:`train_regressor` (before any work).

    Parameters
    ----------
    **params
        Any of ``n_images``, ``epochs``, ``batch_size``, ``width``, ``depth``,
        ``stem_stride``, ``pool_size``, ``gammas_per_image`` (positive
        integers), ``num_workers`` (None or a non-negative integer), ``lr``
        (positive number), ``head``, ``input_norm``, ``criterion``,
        ``compile`` (bool), ``mixed_precision`` (None or ``"bf16"``),
        ``moment_stage`` (None or a stage, 1 to 4), ``moment_weight``
        (non-negative number), ``random_state`` (an integer from 0 to
        2**31 - 1: the seeds derived from it stay within NumPy's range),
        ``device`` (a torch device name or ``"auto"``; CUDA must be
        available where it is asked for) and ``image_shape`` (the setting's:
        with ``stem_stride``, the network's four stages must fit in it).

    Raises
    ------
    ValueError
        Naming the first parameter refused.
    """
    for name in ("n_images", "epochs", "batch_size", "width", "depth",
                 "stem_stride", "pool_size", "gammas_per_image", "num_workers"):
        if name not in params or (name == "num_workers"
                                  and params[name] is None):
            continue
        value, low = params[name], 0 if name == "num_workers" else 1
        if (not isinstance(value, Integral) or isinstance(value, bool)
                or value < low):
            kind = "non-negative" if low == 0 else "positive"
            raise ValueError(f"{name} must be a {kind} integer; got {value!r}.")
    # a malformed image_shape is the setting's error, later
    dims = _shape_pair(params.get("image_shape"))
    if dims and isinstance(params.get("stem_stride"), Integral):
        need = int(params["stem_stride"]) * 2 ** 3     # the ResNet's 4 stages
        if min(dims) < need:
            raise ValueError(
                f"stem_stride={params['stem_stride']} needs images of at least "
                f"{need} pixels per side (stem_stride * 8, for the network's four "
                f"stages); the setting's are {dims}: "
                "lower stem_stride."
            )
    seed = params.get("random_state", 0)
    if (not isinstance(seed, Integral) or isinstance(seed, bool)
            or not 0 <= seed < 2**31):
        raise ValueError(
            f"random_state (seed) must be an integer from 0 to 2**31 - 1; got "
            f"{seed!r}."
        )
    lr = params.get("lr", 1.0)
    if not (isinstance(lr, Real) and not isinstance(lr, bool)
            and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number; got {lr!r}.")
    if params.get("criterion", "mse") not in CRITERIA:
        raise ValueError(
            f"criterion must be one of {sorted(CRITERIA)}; got "
            f"{params['criterion']!r}."
        )
    if not isinstance(params.get("compile", False), bool):
        raise ValueError(
            f"compile must be true or false; got {params['compile']!r}."
        )
    device = None
    if "device" in params:  # a bad name, or CUDA where there is none
        device = resolve_device(params["device"])
    if "mixed_precision" in params:     # on the training device, if known
        if params["mixed_precision"] is None:
            device = torch.device("cpu")    # nothing to check
        elif device is None:    # the trainings' default device is "auto"
            device = resolve_device("auto")
        check_mixed_precision(params["mixed_precision"], device)
    if params.get("head", "spatial") not in ("spatial", "avg"):
        raise ValueError(
            f"head must be 'spatial' or 'avg'; got {params['head']!r}."
        )
    stage = params.get("moment_stage")
    if stage is not None and (not isinstance(stage, Integral)
                              or isinstance(stage, bool)
                              or not 1 <= stage <= 4):
        raise ValueError(f"moment_stage must be None or a stage from 1 to 4; got "
                         f"{stage!r}.")
    weight = params.get("moment_weight", 0.0)
    if not (isinstance(weight, Real) and not isinstance(weight, bool)
            and math.isfinite(weight) and weight >= 0):
        raise ValueError(f"moment_weight must be a non-negative number; got "
                         f"{weight!r}.")
    if stage is not None and params.get("criterion", "mse") != "mse":
        raise ValueError("moment_stage supervises the local PSF moments beside "
                         "MSE on gamma: it needs criterion='mse'; got "
                         f"{params['criterion']!r}.")
    if params.get("input_norm") not in INPUT_NORMS:
        raise ValueError(
            f"input_norm must be one of {INPUT_NORMS}; got {params['input_norm']!r}."
        )


class _SigintDeferred:
    """Hold a Ctrl-C (SIGINT) until the block is done, then raise it.

    In the main thread only (where Python handles signals); elsewhere the
    block runs as it is.
    """

    def __enter__(self):
        import signal
        import threading

        self._received, self._previous = [], None
        if threading.current_thread() is threading.main_thread():
            try:
                self._previous = signal.signal(
                    signal.SIGINT, lambda signum, frame: self._received.append(signum))
            except (ValueError, OSError):       # no signals here
                self._previous = None
        return self

    def __exit__(self, exc_type, exc, tb):
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        if self._received and exc_type is None:
            raise KeyboardInterrupt
        return False


#: What ``torch.compile``'s wrapper prefixes to every key of its state_dict.
_COMPILED_PREFIX = "_orig_mod."


class _PlainState:
    """A network's (or loss's) state as a checkpoint holds it: that of the
    module unwrapped from ``torch.compile``, whose keys carry no
    ``"_orig_mod."`` prefix, loaded from files with or without it (those
    that compiled trainings wrote before)."""

    def __init__(self, component):
        self.component = getattr(component, "_orig_mod", component)

    def state_dict(self):
        return self.component.state_dict()

    def load_state_dict(self, state_dict):
        from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

        consume_prefix_in_state_dict_if_present(state_dict, _COMPILED_PREFIX)
        return self.component.load_state_dict(state_dict)


@contextlib.contextmanager
def _uncompiled_state(net):
    """Within the block, skorch's ``save_params`` and ``load_params`` of
    ``net`` read and write the state of its module and criterion unwrapped
    from ``torch.compile`` (:class:`_PlainState`): a checkpoint then resumes
    with either value of ``compile`` (the optimizer's state is indexed by the
    parameters' order, which the wrapper keeps)."""
    held = {name + "_": getattr(net, name + "_")
            for name in (*net._modules, *net._criteria)
            if isinstance(getattr(net, name + "_", None), torch.nn.Module)}
    try:
        for attr, component in held.items():
            setattr(net, attr, _PlainState(component))
        yield net
    finally:
        for attr, component in held.items():
            setattr(net, attr, component)


class _WholeCheckpoint(Checkpoint):
    """skorch's Checkpoint, whose files (weights, optimizer, criterion, then
    history) are written whole: a Ctrl-C between them left the weights of
    epoch N beside the history of N - 1, and a resume then trained epoch N
    twice without a word. The weights are those of the uncompiled network
    (:func:`_uncompiled_state`)."""

    def save_model(self, net):
        with _SigintDeferred(), _uncompiled_state(net):
            super().save_model(net)


def _checkpoint(directory):
    # monitor=None: save after every epoch, not only on a best validation loss.
    return _WholeCheckpoint(monitor=None, dirname=str(directory), f_pickle=None,
                            load_best=False, **_CHECKPOINT_FILES)


def train_regressor(setting, images, *, n_images=4_229_120, epochs=10,
                    batch_size=256, lr=2e-3, width=32, depth=2, stem_stride=4,
                    head="spatial", input_norm="laplacian", criterion="mse",
                    pool_size=20_000, gammas_per_image=1, moment_stage=None,
                    moment_weight=0.01, output_bias=None, noise_std=None,
                    num_workers=None, device="auto", compile=False,
                    mixed_precision=None, init_model=None, random_state=0,
                    checkpoint_dir=None, resume=False, progress_bar=False,
                    verbose=1):
    """Train a :class:`~deepblur.ResNetBlurRegressor` on fresh simulated data.

    Every batch is drawn by a :class:`~deepblur.datasets.BlurDataset`: clean
    patches of ``images`` scaled to mean ``image_mean``, blurred by operators
    from the setting's sampler (Algorithm 2) and corrupted by Gaussian noise
    of the setting's ``noise_std`` (or of ``noise_std``). An epoch is
    ``max(1, n_images // (batch_size * epochs))`` batches; the learning rate
    follows a cosine schedule over ``epochs``. The defaults are those of the
    shipped model (:data:`TRAINING_DEFAULTS`).

    Parameters
    ----------
    setting : dict
        From :func:`~deepblur.pretrained.make_default_setting` (``basis``,
        ``sampler`` and ``params`` are used).
    images : dict, list of 2-D arrays or ndarray of shape (m, H, W)
        Source images to crop training patches from (e.g. the first element
        of :func:`~deepblur.datasets.natural_image_split`), or patches.
    n_images : int, default=4_229_120
        Training images over all epochs (the shipped network's: 211 s on an
        H200, where the batches are made on the GPU).
    epochs : int, default=10
    batch_size : int, default=256
    lr : float, default=2e-3
        Adam's learning rate at the start of the cosine schedule.
    width, depth, stem_stride : int, default=32, 2, 4
        Of the :class:`~deepblur.nets.resnet.ResNet` module.
    head : {"spatial", "avg"}, default="spatial"
        Output head of the module.
    input_norm : {None, "contrast", "laplacian", "hessian"}, default="laplacian"
        What the module's stem sees besides the image
        (:class:`~deepblur.nets.resnet.ResNet`). ``"laplacian"`` (the image
        and its Laplacian) takes the plateau
        out of the start of training: width 8 on a 2-core CPU reached 7.9 %
        in 706 s against 9.75 % for the image alone in 697 s, with noise
        drawn in [0, 0.02] (``noise_std=(0.0, 0.02)``; trained at 0.01
        alone it was worse above that noise; benchmarks/README.md,
        "Laplacian input"). On windows of larger scenes (the setting's
        ``params["boundary"] = "crop"``) it gained only 3 % ("Networks on
        crops, and more input channels"). ``"hessian"`` (the Laplacian and
        the two anisotropic second derivatives) was not better: worse over
        this recipe's 384 000 images (8.6 %) and over 64 000 (1.04-1.14
        times the Laplacian's error, two seeds; "Hessian input").
        The shipped network has ``"laplacian"`` (trained with noise in
        [0, 0.02]); the one before it, None.
    criterion : {"mse", "frobenius"}, default="mse"
        See :data:`CRITERIA`.
    pool_size : int, default=20_000
        Clean patches cropped from ``images`` and kept in memory (on the data
        device); every batch draws from them with flips and 90° rotations.
    gammas_per_image : int, default=1
        Operators per clean patch in a batch
        (:class:`~deepblur.datasets.BlurDataset`): the patch's spectra are
        shared by its operators. On a CPU, 8 draws batches about 4 times
        faster; a network learns slightly less per image, so it pays only
        where the data, not the training step, is the bottleneck
        (benchmarks/README.md, "Data reuse and depth").
    moment_stage : int, optional
        Supervise the output of this stage of the network with the local
        PSF moments of the true operator
        (:class:`~deepblur.nets.PSFMomentLoss`, weight ``moment_weight``,
        beside MSE on ``gamma``; needs ``criterion="mse"``): the trunk is
        told what the blur is in each region. Width 8 with the Laplacian
        input, stage 3: 4-12 % less error after 64 000 images (two seeds),
        but none after the 15-minute recipe's 384 000 images (natural
        images level, microscopy 0.2-0.4 point worse; two seeds), so the recipe
        does not use it (benchmarks/README.md, "Supervising the local PSF
        moments"). The moment head serves training only and is not saved.
    moment_weight : float, default=0.01
        Weight of the moment term (with ``moment_stage``).
    output_bias : array-like of shape (K,), optional
        Initial output bias of the module; default the mean of 50 000 draws of
        the setting's sampler, refitted (a fresh stream: with an int
        ``random_state``, what the caller drew from it before does not
        matter).
    noise_std : float or (low, high), optional
        Standard deviation of the training noise, for images of mean
        ``image_mean``; a range draws one per image, uniformly. Default: the
        setting's ``params["noise_std"]``. A range keeps a fine-tuned model
        working at every level in it: fine-tuned at 0.01 alone, the shipped
        network got better at 0.01 and worse without noise
        (benchmarks/README.md).
    num_workers : int, optional
        DataLoader workers generating the training batches on the CPU; with
        0, the batches are generated in-process, on ``device`` if it is a
        CUDA device, else on the CPU. Default
        (:func:`default_num_workers`): 0 on CUDA (the data are made on the
        GPU, 30-50x faster than on a CPU); 1 on the CPU (data generation
        overlaps the training steps) where workers are forked (Linux), 0
        where they would be spawned (macOS, Windows, Python 3.14 on Linux):
        a spawned worker runs the caller's script again unless its work is
        under ``if __name__ == "__main__":``. Guarded scripts can ask for
        workers there.
        Every epoch draws new samples either way: the regressor re-seeds the
        dataset's stream from the epoch number
        (:meth:`~deepblur.datasets.BlurDataset.set_epoch`), also in the new
        worker processes of each epoch.
    device : str, default="auto"
        ``"auto"``: CUDA when available, else the CPU.
    compile : bool, default=False
        ``torch.compile`` the network (skorch's ``compile``): on the 2-core
        CPU a training step of the width-16 network ran 25 % faster (464 to
        578 images/s, 1 thread, batches of 256) after about 30 s of
        compilation (benchmarks/README.md), so it pays off for runs longer
        than a few minutes. A resume need not repeat it: the checkpoint
        holds the uncompiled network's weights and goes on with or without
        it (so do checkpoints that earlier versions wrote compiled).
    mixed_precision : {None, "bf16"}, default=None
        Train the forward pass in bfloat16
        (:class:`~deepblur.ResNetBlurRegressor`'s ``mixed_precision``): on a
        CPU with AMX, the width-8 step ran 1.26x faster and width 32 2.51x;
        elsewhere it may be slower. Not part of what a resume must repeat:
        a checkpoint may go on with or without it. ``run.json`` (see
        ``resume``) records it: the first run's ``mixed_precision``, and
        under ``resumes`` each resume's, with the epochs finished before it.
    init_model : str, Path or PretrainedModel, optional
        Start from the weights of this model (a directory written by
        :func:`~deepblur.pretrained.save_model`, e.g.
        ``deepblur/pretrained/default``) instead of random ones: fine-tuning,
        e.g. on another noise level or on your own images. Its network must
        have the same ``width``, ``depth``, ``stem_stride``, ``head`` and
        ``input_norm`` and
        as many outputs as the setting's basis has terms; ``gamma`` keeps its
        meaning only if the setting's basis is the model's (``output_bias`` is
        then ignored: the model's own output layer is kept). A network with a
        blur-statistics branch (:func:`add_feature_head`, the shipped one)
        keeps it, and the branch trains with the rest.
    random_state : int, default=0
        Seed of the initial weights and of the training data (the validation
        batches use ``random_state + 1``).
    checkpoint_dir : str or Path, optional
        Save the parameters, optimizer, criterion and history after every
        epoch there (skorch ``Checkpoint``). Without ``resume``, a directory
        that already holds a checkpoint is refused.
    resume : bool, default=False
        Continue from the checkpoint in ``checkpoint_dir``: its finished
        epochs are kept, the learning-rate schedule and the data stream go on
        where they stopped, and only the remaining epochs run. The training's
        parameters are recorded beside the checkpoint (``run.json``): a
        resume with other ones (``epochs``, ``n_images``, ``lr``, the
        network, the noise, the seed, the setting, the images...) raises a
        ValueError that names them.
    progress_bar : bool, default=False
        Show a progress bar of the batches of each epoch (skorch
        ``ProgressBar``).
    verbose : int, default=1
        skorch's per-epoch table.

    Returns
    -------
    net : ResNetBlurRegressor
        Trained, with its ``history``.

    Raises
    ------
    KeyboardInterrupt
        When the training was interrupted (skorch stops quietly on Ctrl-C):
        the finished epochs are in the checkpoint, resume with ``resume=True``.
    ValueError
        Before any work, when ``resume=False`` and ``checkpoint_dir`` holds a
        checkpoint (its ``params.pt``, ``optimizer.pt``, ``criterion.pt`` or
        ``history.json``): the new run would replace them only at the end of
        its first epoch, and an interruption before then left the old run's
        weights and history to be resumed under the new run's parameters.
        Continue it with ``resume=True``, or remove those files (and
        ``run.json``) to start over, as ``deepblur train --overwrite`` does.
    """
    _check_not_path(images)
    from skorch.callbacks import LRScheduler, ProgressBar

    # what the training learns from (recorded beside a checkpoint, below)
    run = dict(n_images=n_images, epochs=epochs, batch_size=batch_size, lr=lr,
               width=width, depth=depth, stem_stride=stem_stride, head=head,
               input_norm=input_norm, criterion=criterion, pool_size=pool_size,
               gammas_per_image=gammas_per_image, moment_stage=moment_stage,
               moment_weight=moment_weight)
    check_training_params(**run, num_workers=num_workers, compile=compile,
                          mixed_precision=mixed_precision, device=device,
                          random_state=random_state,
                          **_setting_shape(setting))
    # NumPy integers (a grid of np.arange values) as Python ones, which
    # torch's samplers and the network's own checks take
    (n_images, epochs, batch_size, width, depth, stem_stride, pool_size,
     gammas_per_image) = (int(v) for v in (
         n_images, epochs, batch_size, width, depth, stem_stride, pool_size,
         gammas_per_image))
    if moment_stage is not None:
        moment_stage = int(moment_stage)
    lr, moment_weight = float(lr), float(moment_weight)
    if not isinstance(random_state, Integral) or isinstance(random_state, bool):
        raise ValueError(f"random_state must be an int; got {random_state!r}.")
    random_state = int(random_state)
    if noise_std is not None:
        _check_range(noise_std, "noise_std")
    _check_checkpoint_dir(checkpoint_dir, resume)
    basis, sampler = setting["basis"], setting["sampler"]
    # one set of draws serves the output bias and the moments' standardisation,
    # from a fresh stream of the sampler: the network does not depend on what
    # the caller drew from it before, nor does the call move its stream
    from sklearn.base import clone

    draws = (clone(sampler).fit(sampler.generators_).sample(50_000)
             if output_bias is None or moment_stage is not None else None)
    if output_bias is None:
        output_bias = draws.mean(0)
    criterion_params = {}
    if moment_stage is not None:
        criterion_params = dict(criterion__gamma_samples=draws,
                                criterion__weight=float(moment_weight))
    n_batches = max(1, n_images // (batch_size * epochs))
    # In-process (num_workers=0) the batches are blurred on a CUDA training
    # device: that is 30-50x faster than the CPU (benchmarks/README).
    # DataLoader workers cannot use CUDA, so with workers they are made on the
    # CPU, as they are for other devices (the simulation is tested on CPU and
    # CUDA only).
    device = resolve_device(device)
    num_workers = (default_num_workers(device) if num_workers is None
                   else int(num_workers))
    data_device = device if num_workers == 0 and device.type == "cuda" else "cpu"
    data = _setting_data(setting, images, batch_size, n_batches, random_state,
                         noise_std=noise_std, pool_size=pool_size,
                         gammas_per_image=gammas_per_image, device=data_device)
    callbacks = [("lr", LRScheduler("CosineAnnealingLR", T_max=epochs))]
    if checkpoint_dir is not None:
        callbacks.append(("checkpoint", _checkpoint(checkpoint_dir)))
    n_valid_batches = 4
    if progress_bar:
        callbacks.append(("progress", ProgressBar(
            batches_per_epoch=n_batches + n_valid_batches)))
    source, branch = None, {}
    if init_model is not None:
        source = _initial_model(init_model)
        module = plain_module(source.regressor)
        if getattr(module, "feature_fc", None) is not None:
            branch = dict(module__blur_features=dict(module.blur_features),
                          module__image_shape=module.image_shape)
    net = ResNetBlurRegressor(
        **branch,
        basis=basis, module__width=width, module__depth=depth,
        module__stem_stride=stem_stride, module__head=head,
        module__input_norm=input_norm, module__output_bias=output_bias,
        module__moment_stage=moment_stage, **criterion_params,
        criterion=PSFMomentLoss if moment_stage is not None else CRITERIA[criterion],
        lr=lr,
        max_epochs=epochs, batch_size=batch_size, device=str(device),
        compile=compile, mixed_precision=mixed_precision,
        n_valid_batches=n_valid_batches, iterator_train__num_workers=num_workers,
        callbacks=callbacks, verbose=verbose)
    # Seeded initial weights, without touching the caller's global torch RNG.
    # (torch.manual_seed would reseed the caller's CUDA generators too)
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(random_state)
        net.initialize()
    if source is not None:
        _load_initial_weights(net, source)
    if checkpoint_dir is not None:
        # the noise the images are drawn with, wherever it was given
        used = (0.0, 0.0) if data.noise_std is None else _check_range(
            data.noise_std, "noise_std")
        _check_or_record_run(checkpoint_dir, dict(run, noise_std=used,
                                                  random_state=random_state,
                                                  setting=_setting_record(setting),
                                                  images=_images_digest(images)),
                             resume, mixed_precision=mixed_precision)
    if resume:
        _resume(net, data, checkpoint_dir, epochs)
    else:
        net.partial_fit(data, None)
    done = finished_epochs(net)
    if done < epochs:
        raise KeyboardInterrupt(
            f"training interrupted after {done} of {epochs} epochs"
        )
    if setting["params"].get("symmetry") == "dihedral":
        # its basis is closed under rotations and flips: predict (and the
        # checks and calibrations made with it next) averages the 8 copies
        net.set_params(test_time_augmentation="dihedral")
    return net


#: The shipped model's feature head (:func:`add_feature_head`): the blur
#: statistics' parameters and the number of fresh images of the ridge.
FEATURE_HEAD_DEFAULTS = dict(n_images=98_304, blur_features=None, batch_size=1024,
                             random_state=1)


def add_feature_head(setting, images, regressor, *, n_images=98_304,
                     blur_features=None, batch_size=1024, alphas=None,
                     noise_std=None, num_workers=None, random_state=1):
    """A copy of a trained network with its blur-statistics branch fitted.

    The copy has the same parameters (uncompiled: ``compile=False``) plus
    ``module__blur_features`` and ``module__image_shape``
    (:class:`~deepblur.nets.ResNet`), the trained
    weights and training history, and a branch fitted in closed form by
    :meth:`~deepblur.ResNetBlurRegressor.fit_feature_head` on ``n_images``
    fresh simulated images of the setting (as in :func:`train_regressor`,
    another seed; simulated on the GPU when the network is on one, else on
    the CPU, by a ``DataLoader`` worker where workers are forked: see
    ``num_workers``). Its
    ``noise_level_`` (what ``predict`` checks images
    against) is the network's, widened to the branch's training noise. Its
    ``support_tolerance`` is None: the branch changes the estimates, so a
    tolerance calibrated on the original no longer applies (calibrate it
    again with :func:`calibrate_support_tolerance`). The original is left as
    it is.

    Parameters
    ----------
    setting : dict
        ``basis``, ``sampler`` and ``params`` (noise, image mean, boundary).
    images : dict or sequence of arrays
        Clean source images (the training sources, not the test ones).
    regressor : ResNetBlurRegressor
        Trained.
    n_images : int, default=98_304
        Fresh images of the fit, rounded up to whole batches of
        ``batch_size`` (``feature_head_n_images_`` says how many).
    blur_features : dict, default=None
        Parameters of :func:`deepblur.features.blur_features` (``None``: its
        defaults).
    batch_size : int, default=1024
        Images simulated and passed through the network at a time.
    alphas : array-like of float, default=None
        Ridge penalties to choose from (see ``fit_feature_head``).
    noise_std : float or (low, high), optional
        Noise of the simulated images (a range draws one level per image);
        default the setting's ``params["noise_std"]``. Use the noise the
        network was trained on.
    num_workers : int, optional
        Processes that simulate the images while the network reads them
        (``fit_feature_head``'s ``num_workers``); default as in
        :func:`train_regressor` (:func:`default_num_workers`): 0 on a GPU,
        where the images are simulated on the device, and on a CPU 1 where
        workers are forked, else 0.
    random_state : int, default=1
        Seed of the simulated images.

    Returns
    -------
    ResNetBlurRegressor
    """
    _check_not_path(images)
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    check_training_params(n_images=n_images, batch_size=batch_size,
                          num_workers=num_workers)
    n_images, batch_size = int(n_images), int(batch_size)
    if noise_std is not None:
        _check_range(noise_std, "noise_std")
    if not getattr(regressor, "initialized_", False):
        raise NotFittedError("regressor must be a trained ResNetBlurRegressor; "
                             "got one that was never initialised or fitted.")
    basis = setting["basis"]
    new = clone(regressor).set_params(
        module__blur_features={} if blur_features is None else blur_features,
        module__image_shape=tuple(int(v) for v in basis.image_shape_),
        compile=False, support_tolerance=None)
    # the training warned already that this CPU has no bfloat16 units (not
    # warnings.catch_warnings: its filters are the process's, and other
    # threads' warnings would be lost); the weights are replaced below
    with bf16_units_warning_suspended(), torch.random.fork_rng(devices=[]):
        new.initialize()
    missing, unexpected = plain_module(new).load_state_dict(
        plain_module(regressor).state_dict(), strict=False)
    branch = {"feature_fc.weight", "feature_mean", "feature_scale"}
    if unexpected or not set(missing) <= branch:
        raise ValueError(
            "regressor's network does not match its own parameters "
            f"(missing {sorted(set(missing) - branch)}, unexpected {unexpected})."
        )
    new.history_ = copy.deepcopy(regressor.history_)    # the trained epochs
    # on a GPU the images are simulated there, as train_regressor does
    device = resolve_device(new.device)
    num_workers = (default_num_workers(device) if num_workers is None
                   else int(num_workers))
    data = _setting_data(setting, images, batch_size, -(-n_images // batch_size),
                         random_state, noise_std=noise_std,
                         device=(device if device.type == "cuda" and not num_workers
                                 else "cpu"))
    new.fit_feature_head(data, alphas=alphas, num_workers=num_workers)
    # what predict checks images against: the trunk's training noise, widened
    # to the branch's (initialize() forgot it)
    if hasattr(regressor, "noise_level_"):
        new._record_training_noise(data, widen=regressor)
    elif hasattr(regressor, "training_boundary_"):  # e.g. an old pickle's
        new.training_boundary_ = regressor.training_boundary_
    return new


def _setting_data(setting, images, batch_size, n_batches, random_state,
                  noise_std=None, **kwargs):
    """The setting's simulated stream: its sampler, noise (unless ``noise_std``
    is given), image mean, boundary."""
    params = setting["params"]
    return BlurDataset(images, setting["basis"], setting["sampler"],
                       batch_size=batch_size, n_batches=n_batches,
                       noise_std=(params["noise_std"] if noise_std is None
                                  else noise_std),
                       image_mean=params.get("image_mean", 0.5),
                       boundary=params.get("boundary", "zero"),
                       random_state=random_state, **kwargs)


def _initial_model(init_model):
    """``init_model`` as a :class:`~deepblur.pretrained.PretrainedModel`."""
    from deepblur.pretrained._io import PretrainedModel, load_model

    return (init_model if isinstance(init_model, PretrainedModel)
            else load_model(init_model))


def _load_initial_weights(net, source):
    """Copy the network weights of the model ``source`` into ``net``'s module."""
    try:
        # a PSF-moment head (training only, never saved) starts afresh
        missing, unexpected = plain_module(net).load_state_dict(
            plain_module(source.regressor).state_dict(), strict=False)
        missing = [k for k in missing if not k.startswith("moment_head.")]
        if missing or unexpected:
            raise RuntimeError(f"Missing key(s) in state_dict: {missing}; "
                               f"unexpected key(s): {unexpected}.")
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines()]
        raise ValueError(
            "init_model's network does not match this training's (width, "
            f"depth, stem_stride, head, input_norm, K?): {' '.join(lines[:2])}"
        ) from None


_RUN_FILE = "run.json"


class _RunMismatch(ValueError):
    """A resume with other training parameters than its checkpoint's
    (``deepblur train`` says which checkpoint to start over)."""


def _setting_record(setting):
    """What of the setting a training learns from, for ``run.json``: the
    basis's Gram matrix (the loss's metric), the sampler's generators and
    alpha range (the training operators), the image mean and boundary."""
    sampler, params = setting["sampler"], setting.get("params", {})
    return dict(gram=np.asarray(setting["basis"].gram_, dtype=float).tolist(),
                generators=np.asarray(sampler.generators_, dtype=float).tolist(),
                alpha_range=[float(a) for a in sampler.alpha_range],
                max_rays=sampler.max_rays,
                image_mean=params.get("image_mean", 0.5),
                boundary=params.get("boundary", "zero"))


def _images_digest(images):
    """A digest of the training images (their order, a dict's in key order,
    their shapes and float32 pixels) for ``run.json``: a resume on other
    images is refused."""
    import hashlib

    if isinstance(images, dict):
        images = [images[k] for k in sorted(images, key=str)]
    elif torch.is_tensor(images):
        images = images.detach().cpu().numpy()
    digest = hashlib.sha256()
    for image in images:
        if torch.is_tensor(image):
            image = image.detach().cpu().numpy()
        a = np.ascontiguousarray(np.asarray(image, dtype=np.float32))
        digest.update(repr(a.shape).encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _same_setting(recorded, now):
    """Whether two ``_setting_record`` s are the same setting (arrays up to a
    relative 1e-6: a setting rebuilt on another machine may differ in the
    last bits)."""
    if recorded is None or now is None or set(recorded) != set(now):
        return recorded == now
    for key, value in now.items():
        if key in ("gram", "generators"):
            a, b = np.asarray(recorded[key]), np.asarray(value)
            if a.shape != b.shape or not np.allclose(a, b, rtol=1e-6,
                                                     atol=1e-9 * np.abs(b).max()):
                return False
        elif recorded[key] != value:
            return False
    return True


def _check_or_record_run(checkpoint_dir, run, resume, *, mixed_precision=None):
    """Write the training's parameters beside its checkpoint, or, when
    resuming, refuse parameters other than those the checkpoint was made
    with: resumed with other ``epochs`` or ``n_images`` (e.g. defaults that
    changed between versions), a run would stop early or train on another
    schedule without a word. Checkpoints written before this record are
    resumed unchecked.

    The record also says in which precision the epochs were trained
    (``mixed_precision``: how, not what, the network learns, so a resume may
    change it): the first run's, and for each resume the number of epochs
    finished before it and its own (``resumes``)."""
    path = Path(checkpoint_dir) / _RUN_FILE
    # tuples become lists, NumPy scalars Python numbers
    run = json.loads(json.dumps(run, default=_json_number))
    if not resume:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(run, mixed_precision=mixed_precision),
                                   indent=1))
        return
    if not path.exists():
        return
    text = path.read_text()
    recorded = json.loads(text)
    # how the epochs were trained (below), not what they learnt from
    resumes = recorded.pop("resumes", [])
    recorded.pop("mixed_precision", None)
    noise = recorded.get("noise_std")
    if isinstance(noise, (int, float)):     # a level, as one recorded it before
        recorded["noise_std"] = [noise, noise]
    elif "noise_std" in recorded and noise is None:
        # earlier records held None for "the setting's noise" without writing
        # it down: that key is resumed unchecked, as records without it are
        del recorded["noise_std"]
        run.pop("noise_std", None)
    for key in ("setting", "images"):    # records made before they were written
        if key not in recorded:
            run.pop(key, None)
    changed = sorted(k for k in set(run) | set(recorded)
                     if (not _same_setting(recorded.get(k), run.get(k))
                         if k == "setting" else run.get(k) != recorded.get(k)))
    if changed:
        raise _RunMismatch(
            f"the checkpoint in {str(path.parent)!r} was made with other training "
            "parameters than this call's: "
            + ", ".join("setting (basis, sampler, image mean or boundary)"
                        if k == "setting" else
                        "images (other training images)" if k == "images" else
                        f"{k}={recorded.get(k)!r} (now {run.get(k)!r})"
                        for k in changed)
            + "; resume with the same ones, or train without resuming.")
    # the epochs finished before this resume (history.json is written last)
    try:
        history = json.loads((path.parent / _CHECKPOINT_FILES["f_history"])
                             .read_text())
        done = sum(1 for row in history if isinstance(row, dict) and "dur" in row)
    except (OSError, ValueError, TypeError):
        return              # _resume reports a damaged or missing checkpoint
    if done >= run["epochs"]:
        return              # nothing left to train
    # the record as it was (older records keep what they lacked), with this
    # resume's precision
    record = dict(json.loads(text), resumes=[
        *resumes, dict(finished_epochs=done, mixed_precision=mixed_precision)])
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def _json_number(value):
    """A NumPy integer or float as JSON writes it (``json.dumps``'s default)."""
    if isinstance(value, Integral):
        return int(value)
    return float(value)


def _resume(net, data, checkpoint_dir, epochs):
    directory = Path(checkpoint_dir)
    missing = [f for f in _CHECKPOINT_FILES.values() if not (directory / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"no checkpoint to resume from in {str(directory)!r} (missing "
            f"{', '.join(missing)}); train without resuming first."
        )
    import pickle

    try:
        with _uncompiled_state(net):    # written with or without compile
            net.load_params(checkpoint=dict(net.callbacks_)["checkpoint"])
    except (pickle.UnpicklingError, EOFError, OSError) as exc:
        # (the unpickler's own message suggests weights_only=False: unsafe on
        # a file one did not write, so it is not repeated)
        raise ValueError(
            f"the checkpoint in {str(directory)!r} cannot be read "
            f"({type(exc).__name__}): its files are damaged, or were not "
            "written by deepblur; start over without resuming (deepblur train "
            "--overwrite)."
        ) from None
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(
            f"the checkpoint in {str(directory)!r} does not match this "
            f"configuration (different setting or module?): {first}"
        ) from None
    done = finished_epochs(net)
    remaining = epochs - done
    if remaining <= 0:      # nothing to train: what fit_loop would record
        net._record_training_noise(data)
        return
    # each epoch's stream is seeded by its number (the regressor calls
    # set_epoch), so the remaining epochs draw what an uninterrupted run would
    net.partial_fit(data, None, epochs=remaining)


#: How the shipped spectral regressor was fitted
#: (``examples/train_spectral_model.py``): windows of larger scenes (crop
#: boundary), a noise range, and simulated point sources as a fifth of the
#: pool beside the natural-image patches (benchmarks/README.md: on point
#: sources 14 % instead of 26 % without them, the same on natural images).
SPECTRAL_DEFAULTS = dict(
    n_images=40_000, noise_std=(0.005, 0.05), boundary="crop",
    point_fraction=0.2, batch_size=500, pool_size=20_000, random_state=0,
)


def train_spectral_regressor(setting, images, *, n_images=40_000,
                             noise_std=(0.005, 0.05), boundary="crop",
                             point_fraction=0.2, batch_size=500, pool_size=20_000,
                             random_state=0, verbose=0, **params):
    """Fit a :class:`~deepblur.SpectralBlurRegressor` on fresh simulated data.

    The clean images are ``pool_size`` patches of ``images`` plus simulated
    point sources (:func:`~deepblur.datasets.make_point_sources`) making
    ``point_fraction`` of the pool; ``n_images`` of them are drawn with
    flips and rotations, normalised to mean ``image_mean``, blurred by
    operators from the setting's sampler with the ``boundary`` model and
    corrupted by Gaussian noise of standard deviation ``noise_std``
    (a ``(low, high)`` range: uniform per image), by batches
    (:class:`~deepblur.datasets.BlurDataset`), and the ridge is fitted on
    their features in one pass.

    Parameters
    ----------
    setting : dict or PretrainedModel
        ``basis`` and ``sampler`` (keys of
        :func:`~deepblur.pretrained.make_default_setting`'s dict, or fields of
        a loaded model); the image mean is its ``params``/``setting``
        ``image_mean`` (default 0.5).
    images : dict, list of arrays or ndarray (n, H, W)
        Clean source images (patches are cropped from them) or patches.
    n_images : int, default=40000
    noise_std : float or (low, high), default=(0.005, 0.05)
    boundary : {"crop", "zero"}, default="crop"
        ``"crop"``: windows of larger scenes, as real images and tiles are.
    point_fraction : float in [0, 1), default=0.2
        Share of point-source images in the pool (0: the images only).
    batch_size : int, default=500
    pool_size : int, default=20000
        Patches cropped from ``images`` (ignored for an array of patches).
    random_state : int, default=0
        Seeds the patches, the point sources and the data stream.
    verbose : int, default=0
        1: a progress bar over the batches.
    **params
        Parameters of :class:`~deepblur.SpectralBlurRegressor` (``window``,
        ``n_radial``, ...).

    Returns
    -------
    SpectralBlurRegressor
        Fitted.
    """
    _check_not_path(images)
    import numpy as np

    from deepblur.estimators.spectral import SpectralBlurRegressor

    if isinstance(setting, dict):
        basis, sampler = setting["basis"], setting["sampler"]
        image_mean = setting.get("params", {}).get("image_mean", 0.5)
    else:
        basis, sampler = setting.basis, setting.sampler
        image_mean = (setting.setting or {}).get("image_mean", 0.5)
    for name, value in (("n_images", n_images), ("batch_size", batch_size),
                        ("pool_size", pool_size)):
        if (not isinstance(value, Integral) or isinstance(value, bool)
                or value < 1):
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    rng = np.random.RandomState(random_state)
    shape = tuple(int(s) for s in basis.image_shape_)
    pool = _pool_with_points(images, shape, pool_size, point_fraction, rng)
    n_batches = max(1, -(-n_images // batch_size))
    data = BlurDataset(pool, basis, sampler, batch_size=batch_size,
                       n_batches=n_batches, noise_std=noise_std,
                       image_mean=image_mean, boundary=boundary,
                       random_state=int(rng.randint(2**31 - 1)))
    return SpectralBlurRegressor(basis, verbose=verbose, **params).fit(data)


def _pool_with_points(images, shape, pool_size, point_fraction, rng):
    """Clean training images: patches of ``images`` plus point sources.

    ``pool_size`` patches cropped from ``images`` (or ``images`` itself when
    it is an array of patches of ``shape``), then as many simulated point
    sources as make ``point_fraction`` of the pool, in one float32 array
    (filled in place: at the spectral regressor's defaults it is 1.6 GB, and
    float64 crops or a concatenation would each add as much again); black
    patches, which cannot be scaled to the image mean, are dropped.
    """
    import numpy as np

    from deepblur.datasets.images import extract_patches, make_point_sources

    if not 0 <= point_fraction < 1:
        raise ValueError(f"point_fraction must be in [0, 1); got {point_fraction!r}.")
    patches = isinstance(images, np.ndarray) and images.ndim == 3
    if patches and images.shape[1:] != shape:
        raise ValueError(f"patches must have the basis's image_shape {shape}; got "
                         f"shape {images.shape}.")
    n_patches = len(images) if patches else pool_size
    n_points = int(round(n_patches * point_fraction / (1 - point_fraction)))
    pool = np.empty((n_patches + n_points, *shape), dtype=np.float32)
    if patches:
        pool[:n_patches] = images
    else:
        extract_patches(images, n_patches, shape, augment=False, random_state=rng,
                        out=pool[:n_patches])
    for start in range(n_patches, len(pool), 1000):
        stop = min(start + 1000, len(pool))
        pool[start:stop] = make_point_sources(stop - start, shape, random_state=rng)
    keep = pool.mean(axis=(1, 2)) > 1e-6
    if not keep.all():
        pool = pool[keep]
    if not len(pool):
        raise ValueError("images must have regions with a positive mean; all "
                         "patches are black.")
    return pool


#: How the shipped crop network was trained (``examples/train_crop_model.py``),
#: the defaults of :func:`train_crop_network`: the 15-minute CPU recipe of
#: :func:`train_regressor` with the Laplacian input, on windows of larger
#: scenes, noise uniform in [0, 0.05], a fifth of point sources in the pool;
#: then its blur-statistics branch on ``head_images`` fresh windows.
#: Measured: 1 187 + 256 s on a 2-core CPU (benchmarks/README.md).
CROP_NETWORK_DEFAULTS = dict(
    n_images=384_000, epochs=10, batch_size=64, lr=2e-3, width=8, depth=2,
    stem_stride=4, input_norm="laplacian", pool_size=2000, noise_std=(0.0, 0.05),
    point_fraction=0.2, head_images=40_960, head_batch_size=512,
    num_workers=None, device="auto", compile=True, mixed_precision=None,
    random_state=2,
)


def _shape_pair(image_shape):
    """``image_shape`` as ``(H, W)`` (an int is a square), or None if it is
    missing or malformed (the setting's own check names that)."""
    if isinstance(image_shape, Integral) and not isinstance(image_shape, bool):
        return (int(image_shape),) * 2
    try:
        dims = tuple(int(v) for v in image_shape)
    except (TypeError, ValueError):
        return None
    if isinstance(image_shape, str) or len(dims) != 2 or min(dims) < 1:
        return None
    return dims


def check_crop_network_params(**params):
    """Validate parameters of :func:`train_crop_network` (before any work).

    Those of :func:`check_training_params`, plus ``noise_std`` (a float or a
    ``(low, high)`` range), ``point_fraction`` (in [0, 1)), ``head_images``
    and ``head_batch_size`` (positive integers) and ``blur_features`` (the
    branch's statistics, which must fit ``image_shape`` when given).
    """
    for name in ("head_images", "head_batch_size"):
        value = params.pop(name, 1)
        if (not isinstance(value, Integral) or isinstance(value, bool)
                or value < 1):
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    noise_std = params.pop("noise_std", None)
    point_fraction = params.pop("point_fraction", 0.0)
    blur_features = params.pop("blur_features", None)
    params.pop("random_state", None)
    check_training_params(**params)
    # the branch (None: the statistics' defaults) is made after the training
    from deepblur.features import check_feature_params

    check_feature_params(blur_features, _shape_pair(params.get("image_shape")))
    if noise_std is not None:
        _check_range(noise_std, "noise_std")
    if not (isinstance(point_fraction, (int, float))
            and not isinstance(point_fraction, bool)
            and 0 <= point_fraction < 1):
        raise ValueError(f"point_fraction must be in [0, 1); got {point_fraction!r}.")


def train_crop_network(setting, images, *, n_images=384_000, epochs=10,
                       batch_size=64, lr=2e-3, width=8, depth=2, stem_stride=4,
                       input_norm="laplacian", pool_size=2000,
                       noise_std=(0.0, 0.05), point_fraction=0.2,
                       head_images=40_960, head_batch_size=512,
                       blur_features=None, num_workers=None, device="auto",
                       compile=True, mixed_precision=None, random_state=2,
                       checkpoint_dir=None, resume=False, progress_bar=False,
                       verbose=1):
    """Train a network for real images: windows of larger scenes, with its branch.

    Real images and tiles of large ones are windows on a larger scene: their
    border is not dark, and a network trained on the simulator's zero
    boundary (the paper's protocol) reads the blur from that border and fails
    on them. This trains :func:`train_regressor` on windows
    (``boundary="crop"``) of a pool of ``pool_size`` patches of ``images``
    plus simulated point sources making ``point_fraction`` of it, with noise
    ``noise_std``, then fits its blur-statistics branch in closed form
    (:func:`add_feature_head`) on ``head_images`` fresh windows of a second
    pool of the same kind. The defaults (:data:`CROP_NETWORK_DEFAULTS`) made
    the shipped ``load_default(estimator="crop_network")``: 16.6 % natural,
    17.8 % microscopy, 8.7 % point sources on held-out windows against 17.1,
    18.3 and 14.2 % for the spectral regressor (benchmarks/README.md).
    Add the result to a model directory of the same setting with
    :func:`~deepblur.pretrained.save_crop_network`.

    Parameters
    ----------
    setting : dict
        ``basis``, ``sampler`` and ``params`` (as
        :func:`~deepblur.pretrained.make_default_setting` returns); its
        ``boundary`` and ``noise_std`` are replaced by ``"crop"`` and
        ``noise_std``.
    images : dict, list of arrays or ndarray (n, H, W)
        Clean training source images (patches are cropped from them) or
        patches of the basis's image shape.
    n_images, epochs, batch_size, lr, width, depth, stem_stride, input_norm, \
num_workers, device, compile, mixed_precision, checkpoint_dir, resume, \
progress_bar, verbose
        As in :func:`train_regressor` (an interrupted training resumes with
        ``resume=True``; without it, a ``checkpoint_dir`` holding a
        checkpoint is refused; the branch is fitted after the last epoch, on
        images simulated in this process whatever ``num_workers``, as the
        shipped crop network's were).
    pool_size : int, default=2000
        Patches of ``images`` in each pool.
    noise_std : float or (low, high), default=(0.0, 0.05)
        Training noise (a range: uniform per image), for the network and
        its branch.
    point_fraction : float in [0, 1), default=0.2
        Share of point-source images in each pool.
    head_images : int, default=40960
        Fresh windows the branch is fitted on.
    head_batch_size : int, default=512
    blur_features : dict, default=None
        Parameters of the branch's statistics (see :func:`add_feature_head`;
        ``None``: the defaults, for 128x128 images).
    random_state : int, default=2
        Seeds the pools (``random_state`` and ``100 + random_state``), the
        weights and the data streams.

    Returns
    -------
    ResNetBlurRegressor
        Trained, with its branch, and ``noise_level_`` the top of
        ``noise_std``.
    """
    _check_not_path(images)
    import numpy as np
    from sklearn.base import clone

    check_crop_network_params(
        n_images=n_images, epochs=epochs, batch_size=batch_size, lr=lr,
        width=width, depth=depth, stem_stride=stem_stride,
        input_norm=input_norm, pool_size=pool_size, num_workers=num_workers,
        compile=compile, mixed_precision=mixed_precision, device=device,
        noise_std=noise_std, point_fraction=point_fraction,
        head_images=head_images, head_batch_size=head_batch_size,
        blur_features=blur_features, **_setting_shape(setting))
    _check_checkpoint_dir(checkpoint_dir, resume)     # before the pools
    basis, sampler = setting["basis"], setting["sampler"]
    shape = tuple(int(s) for s in basis.image_shape_)
    crop = dict(setting, params=dict(setting["params"], boundary="crop",
                                     noise_std=noise_std))
    pool = _pool_with_points(images, shape, pool_size, point_fraction,
                             np.random.RandomState(random_state))
    net = train_regressor(
        crop, pool, n_images=n_images, epochs=epochs, batch_size=batch_size,
        lr=lr, width=width, depth=depth, stem_stride=stem_stride,
        input_norm=input_norm, pool_size=pool_size, noise_std=noise_std,
        num_workers=num_workers, device=device, compile=compile,
        mixed_precision=mixed_precision, random_state=random_state,
        # the mean operator, from a fresh stream of the sampler: the result
        # does not depend on what the caller drew from it before
        output_bias=clone(sampler).fit(sampler.generators_).sample(
            50_000).mean(0),
        checkpoint_dir=checkpoint_dir, resume=resume,
        progress_bar=progress_bar, verbose=verbose)
    head_pool = _pool_with_points(images, shape, pool_size, point_fraction,
                                  np.random.RandomState(100 + random_state))
    # The shipped crop network's head simulated its images in this process
    # (a worker's stream has its own seed): its recipe stays reproducible.
    return add_feature_head(crop, head_pool, net, n_images=head_images,
                            batch_size=head_batch_size, noise_std=noise_std,
                            blur_features=blur_features, num_workers=0,
                            random_state=random_state + 1)
