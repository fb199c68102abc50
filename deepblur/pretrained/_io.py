"""Save and load a trained blur regressor, or a basis, without executing code.

A model directory holds ``model.safetensors`` (the network's state dict, the
basis's kernels and maps and the coefficients ``gamma`` of the training
operators) and ``model.json`` (the hyper-parameters), and optionally
``spectral.safetensors`` + ``spectral.json``, a
:class:`~deepblur.SpectralBlurRegressor` fitted in the same setting (its
coefficients, its parameters and what it was trained on), which
``load_model(directory, estimator="spectral")`` returns in place of the
network, and ``crop_network.safetensors`` + ``crop_network.json``, a second
network trained on windows of larger scenes in the same setting
(``estimator="crop_network"``). A basis directory holds
``basis.safetensors`` (kernels and maps) and ``basis.json`` (boundary, grid or
positions, fit diagnostics). None is a pickle: loading runs no code from the
files.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import namedtuple
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from sklearn.base import clone

from deepblur._validation import user_stacklevel
from deepblur.datasets.simulate import _noise_param
from deepblur.estimators._gamma import check_support_tolerance
from deepblur.estimators._gamma import same_gram as _same_gram
from deepblur.estimators.basis import ProductConvolutionBasis
from deepblur.estimators.cone import ConeSampler, ConeSimplifier
from deepblur.estimators.points import PointSourceBlurEstimator
from deepblur.estimators.regressor import ResNetBlurRegressor, plain_module
from deepblur.estimators.spectral import SpectralBlurRegressor
from deepblur.features import n_blur_features

__all__ = ["ESTIMATORS", "PretrainedModel", "load_basis", "load_default",
           "load_model", "save_basis", "save_crop_network", "save_model",
           "save_spectral"]

#: The estimators a model directory can hold (see :func:`load_model`).
ESTIMATORS = ("network", "spectral", "points", "crop_network")

PretrainedModel = namedtuple(
    "PretrainedModel",
    ["basis", "cone", "sampler", "regressor", "noise_std", "setting"],
    defaults=[None])
PretrainedModel.__doc__ = """A trained blur regressor and the setting it was trained in.

Fields: ``basis`` (fitted ProductConvolutionBasis), ``cone`` (fitted
ConeSimplifier), ``sampler`` (fitted ConeSampler), ``regressor`` (ready
ResNetBlurRegressor on CPU, or SpectralBlurRegressor; its ``noise_level_``,
what its ``predict`` checks images against, is the network's recorded
``noise_level`` or else the top of ``noise_std``),
``noise_std``
(the noise the regressor was trained on: its standard deviation, or the
``(low, high)`` range it was drawn from, for clean images of mean
``setting["image_mean"]``; ``(0.0, 0.02)`` for the shipped network) and
``setting`` (the dict of :data:`~deepblur.pretrained.DEFAULT_SETTING` keys
it was trained with; its ``boundary`` says how the training images were
blurred, see :func:`deepblur.datasets.blur_images`; its ``noise_std`` is
the setting's test noise for the network and the point fit, 0.01 in the
paper's protocol, where the network's training may have drawn a range
around it, and the training noise, as ``noise_std``, for the spectral
regressor and the crop network, trained in settings of their own).
"""

_WEIGHTS, _META = "model.safetensors", "model.json"
_BASIS_WEIGHTS, _BASIS_META = "basis.safetensors", "basis.json"
_SPECTRAL_WEIGHTS, _SPECTRAL_META = "spectral.safetensors", "spectral.json"
_CROP_WEIGHTS, _CROP_META = "crop_network.safetensors", "crop_network.json"
DEFAULT_DIR = Path(__file__).parent / "default"
_MODULE_KEYS = ("width", "depth", "n_stages", "stem_stride", "head", "pool_size",
                "head_channels", "coord_channels", "input_norm", "channels_last",
                "blur_features", "image_shape")


#: The layout of the files this module writes (``format_version`` in their
#: JSON; files without it are version 1). A file of a later version was
#: written by a newer deepblur, which may store what this one would misread.
FORMAT_VERSION = 1


def _path(directory):
    """A directory argument as a Path, ``~`` expanded (a config's or a
    script's ``"~/models/x"`` meant the home directory, not ``./~``)."""
    return Path(directory).expanduser()


def _has_pair(directory, weights, meta):
    directory = _path(directory)
    return (directory / weights).exists() and (directory / meta).exists()


def _sha256(path):
    """The SHA-256 of a file (hex), read by blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_pair(directory, weights, meta, missing):
    """``(json metadata, CPU tensors)`` of a ``.safetensors`` + ``.json`` pair.

    ``missing`` completes the ``FileNotFoundError`` raised when either file
    is absent (what to do about it). A file that cannot be read, a JSON that
    is not an object, a ``format_version`` newer than this deepblur reads,
    or weights other than those the JSON was written with (its
    ``weights_sha256``: a save interrupted between its two files, or files
    of two models) are a ValueError naming the file.
    """
    from safetensors.torch import load

    directory = _path(directory)
    if not _has_pair(directory, weights, meta):
        absent = [name for name in (weights, meta)
                  if not (directory / name).exists()]
        if len(absent) == 1:        # one of the pair: a damaged directory
            raise FileNotFoundError(
                f"{str(directory)!r} holds {({weights, meta} - set(absent)).pop()} "
                f"but not {absent[0]}: the directory is incomplete (a file "
                f"deleted or not copied); copy or save it again.")
        raise FileNotFoundError(
            f"directory must hold {weights} and {meta}; got {str(directory)!r} "
            f"without them ({missing})."
        )
    where = f"in {str(directory)!r}"
    try:
        record = json.loads((directory / meta).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{meta} {where} is not valid JSON ({exc}): the file is "
                         "damaged, or was not written by deepblur.") from None
    if not isinstance(record, dict):
        raise ValueError(f"{meta} {where} must hold a JSON object; got a "
                         f"{type(record).__name__}: the file is damaged, or was "
                         "not written by deepblur.")
    version = record.get("format_version", 1)
    if (isinstance(version, bool) or not isinstance(version, int)
            or version < 1):
        raise ValueError(f"{meta} {where}: format_version must be a positive "
                         f"integer; got {version!r}.")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{meta} {where} was written in format {version} (by deepblur "
            f"{record.get('deepblur_version', '?')}); this deepblur reads up to "
            f"format {FORMAT_VERSION}: upgrade deepblur to load it.")
    data = (directory / weights).read_bytes()       # read once: digest, tensors
    digest = record.get("weights_sha256")
    if digest is not None and digest != hashlib.sha256(data).hexdigest():
        raise ValueError(
            f"{weights} {where} is not the file {meta} was written with (its "
            "SHA-256 differs): a save interrupted between the two files, or "
            "files of two models; save the model again.")
    try:
        tensors = load(data)                        # on the CPU
    except Exception as exc:        # safetensors' own error types
        raise ValueError(f"{weights} {where} cannot be read as safetensors "
                         f"({exc}): the file is damaged.") from None
    return record, tensors


class _Reading:
    """Turn a missing or malformed entry of a model's files (KeyError,
    TypeError, IndexError) into a ValueError that names the file."""

    def __init__(self, name, directory):
        self.name, self.directory = name, directory

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type in (KeyError, TypeError, IndexError, AttributeError):
            what = (f"lacks {exc.args[0]!r}" if exc_type is KeyError
                    else f"holds a malformed entry ({exc})")
            raise ValueError(
                f"{self.name} in {str(self.directory)!r} {what}: the file is "
                "damaged, or was not written by deepblur's savers.") from exc
        return False


# save_model's weights_dtype: how the weights of the network's convolutions and
# dense layers are stored, and how close to them each stored tensor must stay
# (relative error). "int8" stores the convolutions of at least _INT8_MIN_SIZE
# weights as int8 codes (under _INT8 + their name, so that a loader that does
# not know them fails on a missing key instead of loading codes as weights)
# with a float32 scale per output channel (under _SCALE + the name), and the
# other layer weights as float16.
_WEIGHTS_DTYPES = ("float32", "float16", "int8")
_TOLERANCE = {"float16": 1e-3, "int8": 2e-2}
_INT8_MIN_SIZE = 2 ** 16
_INT8, _SCALE = "int8.", "scale."


def _layer_weights(regressor, tensors):
    """``{name: is_convolution}`` for the names in ``tensors``
    (``module.<layer>.weight``) of the weights of the network's convolutions
    and dense layers: what ``weights_dtype`` stores."""
    layers = {f"module.{name}.weight": isinstance(layer, torch.nn.Conv2d)
              for name, layer in plain_module(regressor).named_modules()
              if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear))}
    return {name: conv for name, conv in layers.items() if name in tensors}


def _per_row(scale, value):
    return scale.reshape(-1, *([1] * (value.dim() - 1)))


def _quantized(value):
    """Symmetric int8 codes of ``value`` and a scale per output channel."""
    peak = value.reshape(len(value), -1).abs().amax(1)
    scale = torch.where(peak > 0, peak / 127, 1.0)
    codes = torch.round(value / _per_row(scale, value)).clamp(-127, 127)
    return codes.to(torch.int8), scale


def _dequantized(codes, scale):
    return codes.to(torch.float32) * _per_row(scale, codes)


def _to_weights_dtype(tensors, layers, weights_dtype):
    """``tensors`` with the ``layers`` weights (:func:`_layer_weights`) stored
    as ``weights_dtype``; a ValueError if a tensor would overflow or lose more
    than its tolerance (``_TOLERANCE``)."""
    stored = dict(tensors)
    for name in sorted(layers):
        value = tensors[name]
        if (weights_dtype == "int8" and layers[name]
                and value.numel() >= _INT8_MIN_SIZE):
            kind = "int8"
            codes, scale = _quantized(value)
            back = _dequantized(codes, scale).to(value.dtype)
            del stored[name]
            stored[_INT8 + name], stored[_SCALE + name] = codes, scale
        else:
            kind = "float16"
            stored[name] = value.to(torch.float16)
            back = stored[name].to(value.dtype)
        finite = torch.isfinite(value)
        error = torch.linalg.vector_norm(torch.where(finite, back - value, 0.0))
        norm = torch.linalg.vector_norm(torch.where(finite, value, 0.0))
        if (not torch.equal(torch.isfinite(back), finite)
                or error > _TOLERANCE[kind] * norm):
            raise ValueError(
                f"weights_dtype={weights_dtype!r} cannot store {name} (largest "
                f"magnitude {float(value.abs().max()):.3g}) as {kind}: its "
                f"values overflow or underflow it, or lose more than "
                f"{_TOLERANCE[kind]:g} of their norm (relative error "
                f"{float(error / norm) if norm > 0 else float('inf'):.2g}); "
                "save it with weights_dtype='float32'.")
    return stored


def _module_state(tensors, meta_name):
    """The network's state dict from its stored tensors: ``module.<name>`` as
    stored (``load_state_dict`` widens float16), ``int8.module.<name>``
    codes times their ``scale.module.<name>``."""
    state = {}
    for key, value in tensors.items():
        if key.startswith("module."):
            state[key[len("module."):]] = value
        elif key.startswith(_INT8 + "module."):
            name = key[len(_INT8):]
            scale = tensors.get(_SCALE + name)
            if (value.dtype != torch.int8 or scale is None
                    or scale.shape != value.shape[:1]):
                raise ValueError(
                    f"the weights beside {meta_name} are damaged: {key} needs "
                    f"int8 codes and a scale per output channel in "
                    f"{_SCALE + name}.")
            state[name[len("module."):]] = _dequantized(value, scale)
    return state


def _module_tensors(regressor):
    """The network's state dict as ``{"module.<name>": CPU tensor}``.

    Without the PSF-moment head (``ResNet(moment_stage=...)``), which serves
    training only: the saved network is the plain one, whose predictions
    are the same.
    """
    return {f"module.{k}": v.detach().cpu().contiguous()
            for k, v in plain_module(regressor).state_dict().items()
            if not k.startswith("moment_head.")}


def _module_params(regressor):
    """The ``module__`` parameters that rebuild the network (JSON-able)."""
    params = regressor.get_params_for("module")
    return {k: params[k] for k in _MODULE_KEYS if k in params}


def _check_same_basis(gram, directory, model):
    """Refuse an estimator fitted in another basis than the model's."""
    if not _same_gram(gram, model.basis.gram_):
        raise ValueError(
            f"regressor.basis must be the basis of the model in {str(directory)!r} "
            "(their Gram matrices differ): coefficients are only meaningful in "
            "the basis they were fitted in."
        )


def _model_setting(meta, rays):
    """What a spectral regressor or crop network takes from the model beside
    it besides the basis: the images' mean intensity (its input scale) and
    the sampler (its support check and projection), as a digest."""
    setting = meta.get("setting", {})
    record = json.dumps(dict(image_mean=setting.get("image_mean"),
                             alpha_range=meta.get("alpha_range"),
                             max_rays=meta.get("max_rays")), sort_keys=True)
    digest = hashlib.sha256(record.encode())
    digest.update(np.ascontiguousarray(rays, dtype=np.float64).tobytes())
    return digest.hexdigest()


def companion_mismatch(meta, model_meta, rays, basis):
    """Why a spectral regressor's or crop network's JSON (``meta``) does not
    belong with the model beside it (``model_meta``, its ``rays`` and
    ``basis``), or None: fitted in another basis, or in another setting
    (image mean, sampler) than the model's. Records written before each
    check are not checked for it."""
    gram = meta.get("basis_gram")
    if gram is not None and not _same_gram(basis.gram_, gram):
        return "fitted in another basis than the model.safetensors beside it"
    recorded = meta.get("model_setting")
    if recorded is not None and recorded != _model_setting(model_meta, rays):
        return ("trained for another setting (image mean or sampler) than the "
                "model.safetensors beside it")
    return None


def _check_companion(meta, meta_name, directory, basis, model_meta, rays):
    """Refuse a spectral regressor or crop network recorded in another basis
    or setting than the directory's model (a model saved over an older one
    that had them)."""
    why = companion_mismatch(meta, model_meta, rays, basis)
    if why is not None:
        stem = Path(meta_name).stem
        raise ValueError(
            f"{stem}.safetensors in {str(directory)!r} was {why} (the model "
            f"was saved over an older one): its estimates are meaningless "
            f"here; fit it again for this model, or delete {stem}.safetensors "
            f"and {meta_name}."
        )


#: What _write_pair adds to every JSON it writes.
_WRITTEN = ("format_version", "deepblur_version", "torch_version", "weights_sha256")


def _with_extra(meta, extra, owned=()):
    """``meta`` with the keys of ``extra`` added. The keys a saver writes
    itself (``meta``'s, and ``owned``: those it sets afterwards) are the
    model's own: ``extra``'s values for them would load a model other than
    the one saved, so they are not written, with a warning naming them."""
    extra = dict(extra or {})
    clash = sorted(k for k in extra if k in meta or k in owned or k in _WRITTEN)
    if clash:
        warnings.warn(
            f"extra holds {clash}, which are the saved model's own metadata: "
            "the model's values are written, not extra's (give them other "
            "names to keep them).", UserWarning, stacklevel=user_stacklevel())
    meta.update({k: v for k, v in extra.items() if k not in clash})
    return meta


def _sampler_seed(sampler):
    """The sampler's ``random_state`` as JSON holds it: an int or None (a
    ``RandomState`` or ``Generator`` cannot be written; None, with a
    warning)."""
    seed = sampler.random_state
    if seed is None or (isinstance(seed, (int, np.integer))
                        and not isinstance(seed, bool)):
        return None if seed is None else int(seed)
    warnings.warn(
        f"the sampler's random_state ({type(seed).__name__}) cannot be written "
        "to JSON: the loaded sampler is unseeded (random_state=None). Seed it "
        "with an int to save a reproducible one.", UserWarning,
        stacklevel=user_stacklevel())
    return None


def _json_default(value):
    """NumPy scalars and arrays as JSON writes Python numbers and lists (a
    network tuned over ``np.arange`` holds ``np.int64`` parameters)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON "
                    "serializable")


def _write_pair(directory, weights, tensors, meta_name, meta):
    """Write a ``.safetensors`` file and its JSON so that a failed save never
    leaves new weights beside old metadata: the JSON is made first (a value
    it cannot hold fails before anything is written), both files are written
    under temporary names, then renamed over the old ones, with a Ctrl-C
    held until both are in place; if the second rename fails (a file held
    open on Windows), the old weights are put back. The JSON records the
    weights' SHA-256, which :func:`_read_pair` checks: a save killed between
    the renames (SIGKILL, power loss) leaves a pair that refuses to load
    instead of new weights read with old metadata. The files get the modes
    of any file the user creates (the umask), readable by colleagues where
    that is the rule, not the owner-only mode of temporary files."""
    import secrets

    from safetensors.torch import save_file

    from deepblur import __version__
    from deepblur.pretrained._train import _SigintDeferred

    meta = dict(meta, format_version=FORMAT_VERSION, deepblur_version=__version__,
                torch_version=torch.__version__)
    json.dumps(meta, default=_json_default)     # fails before anything is written
    directory = _path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(
            f"{str(directory)!r} is a file, not a directory: save the model to "
            "a directory (it holds several files).")
    directory.mkdir(parents=True, exist_ok=True)
    final_weights, final_meta = directory / weights, directory / meta_name
    made = []

    def temporary(suffix):
        # open(..., "x") creates the file with the umask's mode (mkstemp's is
        # 0600 whatever the umask, and os.replace keeps it)
        while True:
            path = directory / f".deepblur-{secrets.token_hex(8)}{suffix}"
            try:
                open(path, "x").close()
            except FileExistsError:
                continue
            made.append(path)
            return path

    try:
        tmp_weights, tmp_meta = temporary(".safetensors"), temporary(".json")
        save_file(tensors, str(tmp_weights))
        # safetensors writes a file of its own (owner-only): the umask's mode
        os.chmod(tmp_weights, tmp_meta.stat().st_mode & 0o777)
        meta["weights_sha256"] = _sha256(tmp_weights)
        tmp_meta.write_text(json.dumps(meta, indent=1, default=_json_default))
        with _SigintDeferred():
            backup = None
            if final_weights.exists():
                backup = temporary(".old")
                os.replace(final_weights, backup)
            os.replace(tmp_weights, final_weights)
            try:
                os.replace(tmp_meta, final_meta)
            except OSError:
                if backup is not None:
                    os.replace(backup, final_weights)
                else:
                    final_weights.unlink(missing_ok=True)
                raise
    finally:
        for path in made:
            path.unlink(missing_ok=True)
    return directory


def _check_saveable_network(regressor):
    """A trained ResNetBlurRegressor whose network its ``module__``
    parameters rebuild (what the loaders do)."""
    from deepblur.nets.resnet import ResNet

    if not isinstance(regressor, ResNetBlurRegressor):
        raise TypeError("regressor must be a ResNetBlurRegressor; got "
                        f"{type(regressor).__name__}.")
    if not getattr(regressor, "initialized_", False):
        raise ValueError("regressor must be trained (initialised); got one "
                         "that was never initialised or fitted.")
    if regressor.module is not ResNet:
        raise ValueError(
            "regressor.module must be the class deepblur.nets.ResNet, set up by "
            "module__ parameters (the loaders rebuild the network from them); "
            f"got {regressor.module!r}.")


#: What :func:`save_model` reads of its ``setting``.
_SETTING_KEYS = ("basis", "cone", "sampler", "gamma", "params")


def _check_trained_shape(regressor, basis, what):
    """Refuse a network trained with a basis of another image shape than
    ``basis``, the one saved with it: :func:`load_model` records the saved
    basis's shape as the network's ``image_shape_``, which its ``predict``
    then takes images of (refused before the save, as a basis set since
    ``fit``)."""
    fitted = getattr(regressor, "image_shape_", None)
    shape = tuple(int(v) for v in basis.image_shape_)
    if fitted is not None and tuple(fitted) != shape:
        raise ValueError(
            f"regressor was trained with a basis of image shape "
            f"{tuple(fitted)} (its image_shape_), but {what} has image shape "
            f"{shape}: loaded, the network would take images of that shape and "
            "its estimates be read as that basis's coefficients; save it with "
            "the basis it was trained with, or fit it again.")


def save_model(directory, regressor, setting, *, noise_std=None, extra=None,
               weights_dtype="float32"):
    """Write a trained regressor and its setting to ``directory``.

    Parameters
    ----------
    directory : str or Path
    regressor : ResNetBlurRegressor
        Trained (initialised) regressor, in the setting's basis (one trained
        with a basis of another image shape, its ``image_shape_``, is
        refused: loaded, it would take images of the saved basis's shape).
    setting : dict
        As returned by :func:`deepblur.pretrained.make_default_setting`: its
        ``basis``, ``cone``, ``sampler``, ``gamma`` (the calibration
        coefficients, stored beside the cone's rays) and ``params`` are
        written; a ValueError names any of them it lacks.
    noise_std : float or (low, high), optional
        The noise the network was trained on (standard deviation, or the
        range it was drawn from, for clean images of mean
        ``setting["params"]["image_mean"]``); :func:`load_model` returns it
        as the model's ``noise_std``. Default: the regressor's
        ``training_noise_std_`` (the ``noise_std`` of the ``BlurDataset`` it
        was trained on, or the ``noise_std`` of the model it was loaded
        from) when known, else the setting's ``noise_std``. The shipped
        network was trained on ``(0.0, 0.02)`` for a setting whose (test)
        noise is 0.01.
    extra : dict, optional
        More JSON-serialisable metadata (e.g. measured errors).
        Keys that the function writes itself (the model's own metadata) are
        not taken from it: a warning names them.
    weights_dtype : {"float32", "float16", "int8"}, default="float32"
        How the weights of the network's convolutions and dense layers are
        stored; :func:`load_model` reads them back into the float32
        network. ``"float16"`` halves the file for a change in the estimates
        far below their error: the shipped width-32 network's held-out
        operator error moved by less than 0.001 point (benchmarks/README.md,
        "GPU round on an H200"). ``"int8"`` also stores the convolutions of
        at least 65 536 weights (the wide ones at the end of the trunk, 92 %
        of the shipped network's weights) as int8 codes with a float32 scale
        per output channel (symmetric, the channel's largest magnitude at
        127): the shipped network's file went from 7.1 to 4.6 MB and its
        error moved by +0.001 point (natural) and -0.001 (microscopy) on
        2 048 images each; quantising every convolution, or the dense
        layers, cost 0.02-0.2 point (benchmarks/README.md). A ValueError
        names any weight that its storage cannot hold (an overflow, or a
        relative error over 1e-3 in float16, 2e-2 in int8). The biases and
        the buffers (normalisation statistics, the blur-statistics branch's
        standardisation) stay in float32, whatever ``weights_dtype``.

    Notes
    -----
    The regressor's ``noise_level_`` (the noise of its noisiest training
    images, which its ``predict`` checks images against) is stored as
    ``noise_level`` when known: a network fine-tuned on a noise range other
    than the setting's keeps it. :func:`load_model` falls back to the top of
    ``noise_std`` for models without it. Likewise its ``training_boundary_``
    (how its training images were blurred at the border) is stored as
    ``training_boundary`` when known, and :func:`load_model` falls back to
    the setting's ``boundary``.

    The basis's kernels, the cone and the sampler's gammas are stored in
    float64, the basis's maps in float32 (half the bytes; a relative
    rounding of 6e-8, so a loaded basis applies its operators within about
    1e-8 of the saved one's, and its Gram matrix differs as little). For a
    basis kept bit for bit, use :func:`save_basis`.
    """
    if weights_dtype not in _WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype must be one of {list(_WEIGHTS_DTYPES)}; "
                         f"got {weights_dtype!r}.")
    missing = ([] if not isinstance(setting, Mapping) else
               [k for k in _SETTING_KEYS if k not in setting])
    if not isinstance(setting, Mapping) or missing:
        raise ValueError(
            "setting must be the dict of make_default_setting, with "
            f"{', '.join(map(repr, _SETTING_KEYS))}; got "
            + (f"a {type(setting).__name__}" if not isinstance(setting, Mapping)
               else f"one without {', '.join(map(repr, missing))}")
            + ". 'gamma' are the calibration coefficients the cone was "
            "simplified from (of a saved model: the 'cone.gamma' tensor of its "
            "model.safetensors).")
    _check_saveable_network(regressor)
    own = getattr(regressor, "basis", None)
    if own is not None and not _same_gram(own.gram_, setting["basis"].gram_):
        raise ValueError(
            "regressor.basis must be the setting's basis (their Gram matrices "
            "differ): its coefficients are only meaningful in the basis it was "
            "trained in.")
    _check_trained_shape(regressor, setting["basis"], "the setting's basis")
    if noise_std is None:
        noise_std = getattr(regressor, "training_noise_std_", None)
    noise = _noise_param(setting["params"]["noise_std"] if noise_std is None
                         else noise_std)
    basis, cone, sampler = setting["basis"], setting["cone"], setting["sampler"]
    tensors = _module_tensors(regressor)
    if weights_dtype != "float32":      # may refuse: before anything is written
        tensors = _to_weights_dtype(tensors, _layer_weights(regressor, tensors),
                                    weights_dtype)
    tensors["basis.kernels"] = torch.tensor(np.ascontiguousarray(basis.kernels_),
                                           dtype=torch.float64)
    tensors["basis.maps"] = torch.tensor(np.ascontiguousarray(basis.maps_),
                                        dtype=torch.float32)
    tensors["cone.gamma"] = torch.tensor(np.ascontiguousarray(setting["gamma"]),
                                        dtype=torch.float64)
    tensors["cone.rays"] = torch.tensor(np.ascontiguousarray(cone.rays_),
                                       dtype=torch.float64)
    indices = getattr(cone, "ray_indices_", None)
    if indices is not None:     # which rows of cone.gamma the rays are
        tensors["cone.ray_indices"] = torch.tensor(
            np.ascontiguousarray(indices, dtype=np.int64))
    meta = dict(
        module=_module_params(regressor),
        n_outputs=int(basis.kernels_.shape[0]),
        boundary=basis.boundary,
        grid_shape=None if basis.grid_shape_ is None else list(basis.grid_shape_),
        positions=(None if basis.grid_shape_ is not None
                   else np.asarray(basis.positions_).astype(int).tolist()),
        n_rays=int(cone.rays_.shape[0]),
        alpha_range=[float(a) for a in sampler.alpha_range],
        max_rays=sampler.max_rays, random_state=_sampler_seed(sampler),
        setting={k: (list(v) if isinstance(v, tuple) else v)
                 for k, v in setting["params"].items()},
    )
    energy = getattr(basis, "component_energy_ratio_", None)
    meta.update(   # the basis's fit diagnostics, when it was fitted (not built)
        basis_reconstruction_error=getattr(basis, "reconstruction_error_", None),
        basis_component_energy_ratio=(None if energy is None
                                      else [float(e) for e in energy]))
    level = getattr(regressor, "noise_level_", None)
    _with_extra(meta, extra, ("weights_dtype", "noise_std", "support_tolerance",
                              "noise_level", "test_time_augmentation",
                              "training_boundary"))
    _store_training_boundary(meta, regressor)
    meta["weights_dtype"] = weights_dtype
    meta["noise_std"] = list(noise) if isinstance(noise, tuple) else noise
    meta["test_time_augmentation"] = getattr(regressor, "test_time_augmentation",
                                             None)
    if level is not None:       # what predict checks images against (Notes)
        meta["noise_level"] = float(level)
    _store_support_tolerance(meta, regressor)
    return _write_pair(directory, _WEIGHTS, tensors, _META, meta)


def save_spectral(directory, regressor, *, noise_std, boundary, extra=None):
    """Add a fitted spectral regressor to the model in ``directory``.

    Writes ``spectral.safetensors`` (``coef_`` and ``intercept_``, float64)
    and ``spectral.json`` (its parameters, ``alpha_``, the training noise and
    boundary, and ``extra``). The directory must already hold a model
    (:func:`save_model`) of the same basis: the coefficients mean nothing in
    another one. The JSON records that basis's Gram matrix (``basis_gram``),
    so that :func:`load_model` refuses the pair if a model of another basis
    is later saved over the directory's.

    Parameters
    ----------
    directory : str or Path
    regressor : SpectralBlurRegressor
        Fitted.
    noise_std : float or (low, high)
        The noise it was trained with (clean images of mean ``image_mean``).
    boundary : {"zero", "crop"}
        How its training images were blurred
        (:func:`deepblur.datasets.blur_images`); it must be the regressor's
        ``training_boundary_`` when that is known.
    extra : dict, optional
        More JSON-serialisable metadata (e.g. measured errors).
        Keys that the function writes itself (the model's own metadata) are
        not taken from it: a warning names them.

    Returns
    -------
    directory : Path
    """
    from sklearn.utils.validation import check_is_fitted

    if not isinstance(regressor, SpectralBlurRegressor):
        raise TypeError("regressor must be a SpectralBlurRegressor; got "
                        f"{type(regressor).__name__}.")
    check_is_fitted(regressor)
    if boundary not in ("zero", "crop"):
        raise ValueError(f"boundary must be 'zero' or 'crop'; got {boundary!r}.")
    trained = getattr(regressor, "training_boundary_", None)
    if trained is not None and trained != boundary:
        raise ValueError(
            f"boundary={boundary!r}, but the regressor was trained on images "
            f"blurred with boundary {trained!r} (its training_boundary_): pass "
            f"boundary={trained!r}.")
    noise = _noise_param(noise_std)
    directory = _path(directory)
    model = load_model(directory)       # the setting it must share
    _check_same_basis(regressor.basis.gram_, directory, model)
    tensors = {"coef": torch.tensor(np.ascontiguousarray(regressor.coef_),
                                    dtype=torch.float64),
               "intercept": torch.tensor(np.ascontiguousarray(regressor.intercept_),
                                         dtype=torch.float64)}
    params = {k: v for k, v in regressor.get_params(deep=False).items()
              if k not in ("basis", "sampler", "project", "support_tolerance",
                           "alphas", "verbose")}
    params.update(regressor._fitted_spec())    # what coef_ was fitted on
    meta = dict(params=params, alpha=regressor.alpha_,
                image_shape=list(regressor.image_shape_),
                n_train_images=regressor.n_train_images_,
                noise_std=list(noise) if isinstance(noise, tuple) else noise,
                boundary=boundary)
    _with_extra(meta, extra, ("basis_gram", "model_setting", "support_tolerance"))
    _record_model(meta, model)
    _store_support_tolerance(meta, regressor)
    return _write_pair(directory, _SPECTRAL_WEIGHTS, tensors, _SPECTRAL_META, meta)


def _record_model(meta, model):
    """Record in a companion's JSON the basis and the setting of the model it
    is saved beside (:func:`companion_mismatch`)."""
    # the entries of its model.json that _model_setting reads, from the loaded
    # model (not the files again)
    model_meta = dict(setting=dict(image_mean=model.setting["image_mean"]),
                      alpha_range=[float(a) for a in model.sampler.alpha_range],
                      max_rays=model.sampler.max_rays)
    meta["basis_gram"] = np.asarray(model.basis.gram_).tolist()
    meta["model_setting"] = _model_setting(model_meta, model.sampler.generators_)


def save_crop_network(directory, regressor, *, noise_std, extra=None):
    """Add a network trained on windows of larger scenes to a model directory.

    Writes ``crop_network.safetensors`` (the network's state dict) and
    ``crop_network.json`` (its ``module__`` parameters, the training noise,
    the regressor's ``noise_level_`` and ``extra``).
    ``load_model(directory, estimator="crop_network")`` reads it back on the
    model's basis, sampler and cone. The directory must already hold a model
    (:func:`save_model`) of the same basis, and the network must have been
    trained on images blurred with ``boundary="crop"``
    (:func:`deepblur.datasets.blur_images`), as real images and tiles are:
    one whose ``training_boundary_`` says ``"zero"`` is refused. The JSON
    records its ``training_boundary_`` when known, as :func:`save_model`
    does.
    The JSON records the basis's Gram matrix (``basis_gram``), so that
    :func:`load_model` refuses the pair if a model of another basis is later
    saved over the directory's.

    Parameters
    ----------
    directory : str or Path
    regressor : ResNetBlurRegressor
        Trained (initialised), on the model's basis.
    noise_std : float or (low, high)
        The noise it was trained with (clean images of mean ``image_mean``).
    extra : dict, optional
        More JSON-serialisable metadata (e.g. how it was trained, measured
        errors).
        Keys that the function writes itself (the model's own metadata) are
        not taken from it: a warning names them.

    Returns
    -------
    directory : Path
    """
    _check_saveable_network(regressor)
    if getattr(regressor, "basis", None) is None:
        raise ValueError("regressor.basis must be the model's fitted basis; "
                         "got None.")
    if getattr(regressor, "training_boundary_", None) == "zero":
        raise ValueError(
            "the crop network must be trained on windows of larger scenes "
            "(boundary='crop'); this one was trained on images blurred with a "
            "zero boundary (its training_boundary_): save it with save_model.")
    noise = _noise_param(noise_std)
    directory = _path(directory)
    model = load_model(directory)       # the setting it must share
    _check_same_basis(regressor.basis.gram_, directory, model)
    _check_trained_shape(regressor, model.basis, "the model's basis")
    meta = dict(module=_module_params(regressor),
                noise_std=list(noise) if isinstance(noise, tuple) else noise,
                boundary="crop")
    level = getattr(regressor, "noise_level_", None)
    _with_extra(meta, extra, ("basis_gram", "model_setting", "support_tolerance",
                              "noise_level", "test_time_augmentation",
                              "training_boundary"))
    _store_training_boundary(meta, regressor)
    _record_model(meta, model)
    meta["test_time_augmentation"] = getattr(regressor, "test_time_augmentation",
                                             None)
    meta["noise_level"] = float(np.max(noise) if level is None else level)
    _store_support_tolerance(meta, regressor)
    return _write_pair(directory, _CROP_WEIGHTS, _module_tensors(regressor),
                       _CROP_META, meta)


def has_crop_network(directory):
    """Whether the model directory holds a network trained on crops."""
    return _has_pair(directory, _CROP_WEIGHTS, _CROP_META)


def has_spectral(directory):
    """Whether the model directory holds a spectral regressor."""
    return _has_pair(directory, _SPECTRAL_WEIGHTS, _SPECTRAL_META)


def _load_spectral(directory, basis, model_meta, rays):
    """The spectral regressor of a model directory and its training setting."""
    meta, tensors = _read_pair(
        directory, _SPECTRAL_WEIGHTS, _SPECTRAL_META,
        "estimator='spectral' needs them; fit a SpectralBlurRegressor and add "
        "it with save_spectral")
    with _Reading(_SPECTRAL_META, directory):
        _check_companion(meta, _SPECTRAL_META, directory, basis, model_meta, rays)
        return _spectral_from(meta, tensors, basis)


def _spectral_from(meta, tensors, basis):
    regressor = SpectralBlurRegressor(
        basis, support_tolerance=_support_tolerance(meta, _SPECTRAL_META),
        **meta["params"])
    coef, intercept = tensors["coef"].numpy(), tensors["intercept"].numpy()
    image_shape = tuple(int(s) for s in meta["image_shape"])
    K = basis.gram_.shape[0]
    n_feat = n_blur_features(image_shape, **regressor._spec())
    if (coef.shape != (n_feat, K) or intercept.shape != (K,)
            or image_shape != tuple(basis.image_shape_)):
        raise ValueError(
            f"{_SPECTRAL_WEIGHTS} does not fit the model's basis: coef of shape "
            f"{coef.shape} and intercept {intercept.shape} for {n_feat} features, "
            f"K={K} and images {tuple(basis.image_shape_)}."
        )
    regressor.coef_, regressor.intercept_ = coef, intercept
    regressor.feature_spec_ = regressor._spec()
    regressor.alpha_ = float(meta["alpha"])
    regressor.image_shape_ = image_shape
    regressor.n_features_in_ = int(np.prod(image_shape))
    regressor.n_train_images_ = int(meta["n_train_images"])
    noise_std = _noise_param(meta["noise_std"])
    regressor.noise_level_ = float(np.max(noise_std))
    return regressor, noise_std, meta["boundary"]


def _store_training_boundary(meta, regressor):
    """Record how the network's training images were blurred at their border
    (its ``training_boundary_``, when known) in its JSON: a network trained on
    windows saved in a zero-boundary setting must not load as one trained on
    dark borders, nor the reverse (tiling warns about the latter)."""
    from deepblur.datasets.simulate import BOUNDARIES

    boundary = getattr(regressor, "training_boundary_", None)
    if boundary is not None:
        if boundary not in BOUNDARIES:
            raise ValueError(f"regressor.training_boundary_ must be one of "
                             f"{BOUNDARIES} or None; got {boundary!r}.")
        meta["training_boundary"] = str(boundary)


def _training_boundary(meta, default, meta_name):
    """The stored ``training_boundary`` (``default``, the setting's, when
    absent), checked."""
    from deepblur.datasets.simulate import BOUNDARIES

    boundary = meta.get("training_boundary", default)
    if boundary not in BOUNDARIES:
        raise ValueError(f"{meta_name}: training_boundary must be one of "
                         f"{BOUNDARIES} (or absent); got {boundary!r}.")
    return boundary


def _store_support_tolerance(meta, regressor):
    """Record the network's ``support_tolerance`` (when set) in its JSON."""
    tolerance = getattr(regressor, "support_tolerance", None)
    meta.pop("support_tolerance", None)       # the regressor's, not extra's
    if tolerance is not None:
        meta["support_tolerance"] = float(tolerance)


def _support_tolerance(meta, meta_name):
    """The stored ``support_tolerance`` (None when absent), checked."""
    return check_support_tolerance(meta.get("support_tolerance"),
                                   f"{meta_name}: support_tolerance",
                                   missing="absent")


def _load_network(meta, tensors, basis, sampler, project, noise_std, meta_name):
    """A ready ResNetBlurRegressor (CPU, eval mode) from its stored state.

    ``meta["module"]`` holds the ``module__`` parameters, ``tensors`` the
    ``module.*`` weights; its ``noise_level_`` is ``meta["noise_level"]``
    when recorded (a network trained or fine-tuned on a noise range), else
    the top of ``noise_std``.
    """
    module_kwargs = {f"module__{k}": v for k, v in meta["module"].items()}
    regressor = ResNetBlurRegressor(
        basis=basis, sampler=sampler, project=project, device="cpu", verbose=0,
        support_tolerance=_support_tolerance(meta, meta_name), **module_kwargs)
    with torch.random.fork_rng(devices=[]):    # the initial weights are replaced:
        regressor.initialize()                 # leave the caller's stream alone
    state = _module_state(tensors, meta_name)
    try:
        regressor.module_.load_state_dict(state)
    except RuntimeError as exc:     # torch's size mismatch or missing keys
        first = str(exc).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise ValueError(
            f"{meta_name} does not describe the network of its weights file "
            f"({detail}): the two files come from different networks, or one "
            "was edited; save the model again with deepblur's savers."
        ) from exc
    regressor.module_.eval()
    level = meta.get("noise_level")
    if level is not None and (isinstance(level, bool)
                              or not isinstance(level, (int, float))
                              or not np.isfinite(level) or level < 0):
        raise ValueError(f"{meta_name}: noise_level must be a non-negative "
                         f"number (or absent); got {level!r}.")
    regressor.noise_level_ = float(np.max(noise_std) if level is None else level)
    # trained with the basis it is saved with: a basis of another image shape
    # set since is refused by predict, as for a network fitted here
    regressor.image_shape_ = regressor._image_shape()
    return regressor


def load_model(directory, estimator="network", *, project=False):
    """Load a model written by :func:`save_model` (on CPU).

    Parameters
    ----------
    directory : str or Path
    estimator : {"network", "spectral", "points", "crop_network"}, \
default="network"
        ``"spectral"``: the :class:`~deepblur.SpectralBlurRegressor` added by
        :func:`save_spectral` becomes the ``regressor``, and ``noise_std``
        and ``setting["boundary"]`` say what it was trained on.
        ``"crop_network"``: the network added by :func:`save_crop_network`
        (trained on windows of larger scenes), likewise with its training
        noise and ``setting["boundary"] == "crop"``.
        ``"points"``: a :class:`~deepblur.PointSourceBlurEstimator` on the
        model's basis, started from the mean operator of its cone, with the
        setting's ``image_mean`` (for images of beads or single molecules;
        nothing trained).
    project : bool, default=False
        The networks and the spectral regressor always hold the model's
        ``sampler``, for their support check (``support_tolerance``, read
        from their JSON: :class:`~deepblur.exceptions.OutOfSupportWarning`).
        ``project=True`` also makes their ``predict`` return the nearest point
        (in the operator metric) of the set of ``gamma`` it was trained on (see
        :meth:`~deepblur.ConeSampler.project`): never farther from a
        ``gamma`` of that set, so use it when the blur is known to be a draw
        of the sampler (simulations of the paper's protocol: 0.08-0.10 points
        less error on the shipped network). Operators of the random family
        the basis and the cone were fitted on lie outside that set (median
        distance 15 % of their norm), and there it moved the shipped
        network's estimates away from the truth on 97 % of the images (+1.7
        points; ``benchmarks/bench_held_out_operators.py``), hence raw
        estimates by default. The point-source fit is not projected.

    Returns
    -------
    PretrainedModel
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}; got {estimator!r}.")
    if not isinstance(project, bool):
        raise TypeError(f"project must be True or False; got {project!r}.")
    directory = _path(directory)
    meta, tensors = _read_pair(directory, _WEIGHTS, _META,
                               "train one with examples/train_default_model.py")
    with _Reading(_META, directory):
        positions = meta.get("positions")
        basis = ProductConvolutionBasis.from_components(
            tensors["basis.kernels"].numpy(),
            tensors["basis.maps"].numpy().astype(np.float64),
            boundary=meta["boundary"],
            grid_shape=tuple(meta["grid_shape"] or (16, 16)),
            positions=None if positions is None else np.asarray(positions))
        gamma = tensors["cone.gamma"].numpy()
        cone = ConeSimplifier(n_rays=meta["n_rays"]).fit(gamma)
        rays = tensors["cone.rays"].numpy()
        if cone.rays_.shape != rays.shape or not np.allclose(cone.rays_, rays,
                                                             atol=1e-8):
            # Algorithm 1 is deterministic; keep the stored rays exactly anyway
            # (and a cone closed under rotations and flips is not its output)
            cone.rays_ = rays
        if "cone.ray_indices" in tensors:         # files written before: the refit's
            cone.ray_indices_ = tensors["cone.ray_indices"].numpy()
        sampler = ConeSampler(max_rays=meta["max_rays"],
                              alpha_range=tuple(meta["alpha_range"]),
                              random_state=meta["random_state"]).fit(rays)
        basis.reconstruction_error_ = meta.get("basis_reconstruction_error")
        energy = meta.get("basis_component_energy_ratio")
        if energy is not None:
            basis.component_energy_ratio_ = np.asarray(energy, dtype=np.float64)
        setting = dict(meta["setting"])
        setting.setdefault("boundary", "zero")      # models saved before the option
        setting.setdefault("symmetry", None)
        # a float, or a (low, high) range (JSON keeps it as a list)
        noise_std = setting["noise_std"] = _noise_param(setting["noise_std"])
    if estimator == "spectral":
        regressor, noise_std, boundary = _load_spectral(directory, basis, meta,
                                                        rays)
        regressor.sampler, regressor.project = sampler, project
        setting.update(boundary=boundary, noise_std=noise_std)
    elif estimator == "points":
        # nothing learnt: the fit starts from the mean operator of the cone
        start = (clone(sampler).set_params(random_state=0).fit(rays)
                 .sample(50_000).mean(0))
        # gamma's scale: the clean image of the model's setting has its mean
        regressor = PointSourceBlurEstimator(
            basis, gamma_init=start,
            image_mean=float(setting.get("image_mean", 0.5))).fit()
    elif estimator == "crop_network":
        crop, crop_tensors = _read_pair(
            directory, _CROP_WEIGHTS, _CROP_META,
            "estimator='crop_network' needs them; train one with "
            "examples/train_crop_model.py and add it with save_crop_network")
        with _Reading(_CROP_META, directory):
            _check_companion(crop, _CROP_META, directory, basis, meta, rays)
            noise_std = _noise_param(crop["noise_std"])
            setting.update(boundary="crop", noise_std=noise_std)
            regressor = _load_network(crop, crop_tensors, basis, sampler, project,
                                      noise_std, _CROP_META)
    else:
        with _Reading(_META, directory):
            if "noise_std" in meta:  # its training noise (older: the setting's)
                noise_std = _noise_param(meta["noise_std"])
            regressor = _load_network(meta, tensors, basis, sampler, project,
                                      noise_std, _META)
    if estimator in ("network", "crop_network"):    # written again, kept
        regressor.training_noise_std_ = noise_std
        record, name = ((crop, _CROP_META) if estimator == "crop_network"
                        else (meta, _META))
        # as saved; files written before the record: on for a setting closed
        # under rotations and flips
        augment = record.get("test_time_augmentation", "dihedral" if setting[
            "symmetry"] == "dihedral" else None)
        if augment not in (None, "dihedral"):
            raise ValueError(f"{name} in "
                             f"{str(directory)!r}: test_time_augmentation must "
                             f"be null or 'dihedral'; got {augment!r}.")
        regressor.set_params(test_time_augmentation=augment)
        with _Reading(name, directory):     # how its training images were blurred
            regressor.training_boundary_ = _training_boundary(
                record, setting["boundary"], name)
    elif estimator == "spectral":
        regressor.training_boundary_ = setting["boundary"]
    return PretrainedModel(basis=basis, cone=cone, sampler=sampler,
                           regressor=regressor, noise_std=noise_std,
                           setting=setting)


def load_default(estimator="network", *, project=False):
    """The model shipped with deepblur (see ``examples/train_default_model.py``).

    Parameters
    ----------
    estimator : {"network", "spectral", "points", "crop_network"}, \
default="network"
        ``"network"``: the ResNet trained on zero-boundary simulations (the
        paper's protocol). ``"crop_network"``: a slim ResNet with a
        blur-statistics branch trained on windows of larger scenes, noise
        in [0, 0.05] and a fifth of point sources
        (``examples/train_crop_model.py``), the one for real images and
        tiles, whose borders are not dark: on held-out windows 16.6 %
        natural, 17.8 % microscopy, 8.7 % point sources (benchmarks/README.md).
        ``"spectral"``: the :class:`~deepblur.SpectralBlurRegressor` trained
        on such windows (``examples/train_spectral_model.py``; 17.1, 18.3 and
        14.2 % there). ``"points"``: the
        :class:`~deepblur.PointSourceBlurEstimator` (images of point sources
        on a dark field: beads, single molecules).
    project : bool, default=False
        Project the regressor's estimates on the support of the training
        ``gamma``: only for blur drawn from the model's sampler (see
        :func:`load_model`).

    Returns
    -------
    PretrainedModel
        Named tuple ``(basis, cone, sampler, regressor, noise_std, setting)``.
    """
    return load_model(DEFAULT_DIR, estimator=estimator, project=project)


def save_basis(directory, basis, *, extra=None):
    """Write a fitted :class:`~deepblur.ProductConvolutionBasis` to ``directory``.

    ``basis.safetensors`` holds the kernels and maps (float64), ``basis.json``
    the boundary, the grid (or the scattered positions) and the fit
    diagnostics. :func:`load_basis` reads it back without unpickling.

    Parameters
    ----------
    directory : str or Path
        Created if needed.
    basis : ProductConvolutionBasis
        Fitted (by ``fit`` or ``from_components``).
    extra : dict, optional
        More JSON-serialisable metadata (e.g. the source files).
        Keys that the function writes itself (the model's own metadata) are
        not taken from it: a warning names them.

    Returns
    -------
    directory : Path

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from deepblur import ProductConvolutionBasis
    >>> rng = np.random.default_rng(0)
    >>> basis = ProductConvolutionBasis.from_components(rng.random((2, 3, 3)),
    ...                                                 rng.random((2, 8, 8)))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     again = load_basis(save_basis(tmp, basis))
    >>> bool(np.allclose(again.gram_, basis.gram_))
    True
    """
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(basis, "kernels_",
                    msg="basis must be a fitted ProductConvolutionBasis; got an "
                        "unfitted one (call fit first).")
    tensors = {
        "kernels": torch.tensor(np.ascontiguousarray(basis.kernels_),
                                dtype=torch.float64),
        "maps": torch.tensor(np.ascontiguousarray(basis.maps_), dtype=torch.float64),
    }
    grid = basis.grid_shape_
    energy = basis.component_energy_ratio_
    meta = dict(
        n_components=int(basis.kernels_.shape[0]),
        image_shape=[int(s) for s in basis.image_shape_],
        kernel_shape=[int(s) for s in basis.kernels_.shape[1:]],
        boundary=basis.boundary,
        grid_shape=None if grid is None else [int(g) for g in grid],
        positions=(None if grid is not None
                   else np.asarray(basis.positions_).astype(int).tolist()),
        reconstruction_error=basis.reconstruction_error_,
        component_energy_ratio=(None if energy is None
                                else [float(e) for e in energy]),
    )
    _with_extra(meta, extra)
    return _write_pair(directory, _BASIS_WEIGHTS, tensors, _BASIS_META, meta)


def load_basis(directory):
    """Load a basis written by :func:`save_basis`.

    Parameters
    ----------
    directory : str or Path

    Returns
    -------
    basis : ProductConvolutionBasis
        Fitted, built with :meth:`ProductConvolutionBasis.from_components`;
        ``reconstruction_error_`` and ``component_energy_ratio_`` are restored
        when they were saved.
    """
    meta, tensors = _read_pair(directory, _BASIS_WEIGHTS, _BASIS_META,
                               "write one with save_basis or `deepblur basis`")
    with _Reading(_BASIS_META, _path(directory)):
        grid = meta.get("grid_shape")
        positions = meta.get("positions")
        basis = ProductConvolutionBasis.from_components(
            tensors["kernels"].numpy(), tensors["maps"].numpy(),
            boundary=meta["boundary"],
            grid_shape=tuple(grid) if grid is not None else (16, 16),
            positions=None if grid is not None else np.asarray(positions))
        basis.reconstruction_error_ = meta.get("reconstruction_error")
        energy = meta.get("component_energy_ratio")
        basis.component_energy_ratio_ = None if energy is None else np.asarray(energy)
    return basis
