"""The ``deepblur`` command: demo, estimate, deblur, train, basis.

Run ``deepblur --help`` or ``deepblur COMMAND --help``. Every command is also a
function of the library; this module only parses arguments, reads and writes
files and reports errors a user can act on as one line on stderr (exit code 1;
argparse usage errors exit with 2).

Intensity convention of real images
-----------------------------------
The gain of the blur of a real image (the scale of ``gamma``) is not
identifiable: ``H[a g] u = H[g] (a u)``. The model was trained on clean images
scaled to a mean (its ``setting["image_mean"]``, 0.5 for the shipped model)
and blurred by the operators of its sampler, so ``estimate`` and ``deblur``
scale the image to the mean intensity of those
training observations before predicting, and ``deblur`` rescales the operator
to unit gain (its PSFs have mass 1: it keeps a flat scene's brightness away
from the border), deblurs the image scaled to
that mean and maps the result back to the input's units: the deblurred image
keeps the input's brightness and dtype (see :mod:`deepblur.pretrained._apply`).
A real image is a window on a larger scene: by default ``deblur`` assumes
nothing of the scene outside it (``--boundary unknown``: that scene, half a
kernel wide, is estimated with the image and dropped), and
``estimate``/``deblur`` estimate the blur with an estimator trained on such
windows when the model has one (``--estimator auto``): its ``crop_network``,
else its spectral regressor.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["build_parser", "main"]

_IMAGE_READ = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_IMAGE_WRITE = (".tif", ".tiff", ".png")
_PSF_READ = (".npy", ".tif", ".tiff")
_CONVENTION = (
    "Intensity convention: the gain of a real image's blur is not identifiable "
    "(H[a g] u = H[g] (a u)), so the image is scaled to the mean intensity of "
    "the model's training observations (clean images of mean 0.5 blurred by "
    "the training operators) before the blur is estimated; the operator is "
    "then rescaled to unit gain (its PSFs have mass 1, with either --boundary), "
    "the image is deblurred at mean 0.5 and the result is mapped back to the "
    "input's units: the output keeps the input's brightness."
)

_ESTIMATE_CONVENTION = (
    "Intensity convention: the gain of a real image's blur is not identifiable "
    "(H[a g] u = H[g] (a u)), so the image (each tile of a larger one) is "
    "multiplied by a scale that brings it to the mean intensity of the model's "
    "training observations (clean images of the model's training mean, 0.5 for "
    "the shipped one, blurred by the training operators) before the blur is "
    "estimated: gamma is the operator of the scaled image, with the training "
    "operators' gain (for an image of the model's size, printed as 'operator "
    "gain', the mass of its PSFs, and saved with gain and scale in the JSON "
    "output). deblur divides it by that gain (unit gain, PSFs of mass 1), so "
    "that its output keeps the input's brightness."
)


class CLIError(Exception):
    """An error the user can act on: printed as one line, exit code 1."""


# --------------------------------------------------------------------- helpers
def _lam(value):
    if value == "auto":
        return value
    try:
        lam = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a positive number or 'auto'; got {value!r}") from None
    if not (math.isfinite(lam) and lam > 0):
        raise argparse.ArgumentTypeError(
            f"must be a positive number or 'auto'; got {value!r}")
    return lam


def _positive_int(value):
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer; got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {value!r}")
    return n


def _tol(value):
    try:
        tol = float(value)
    except ValueError:
        tol = math.nan
    if not (math.isfinite(tol) and tol >= 0):
        raise argparse.ArgumentTypeError(
            f"must be a non-negative number; got {value!r}")
    return tol


def _resolve_estimator(path, estimator, command):
    """``--estimator auto``: for real images (``estimate``, ``deblur``), the
    model's network trained on windows of larger scenes when it has one, else
    its spectral regressor when its network was trained on zero-boundary
    simulations, else the network; the network for the demo, which simulates
    the network's setting."""
    from deepblur.pretrained._io import _META, has_crop_network, has_spectral

    if estimator != "auto":
        return estimator
    if command == "demo":
        return "network"
    if has_crop_network(path):
        return "crop_network"
    if not has_spectral(path):
        return "network"
    try:
        meta = json.loads((Path(path) / _META).read_text())
    except (OSError, ValueError):
        return "network"        # load_model reports unreadable files
    # the network's own record of its training boundary, else the setting's
    boundary = meta.get("training_boundary",
                        meta.get("setting", {}).get("boundary", "zero"))
    return "spectral" if boundary == "zero" else "network"


def _load_model(directory, estimator="network", command=None, project=False):
    from deepblur.pretrained import load_model
    from deepblur.pretrained._io import _META, _WEIGHTS, DEFAULT_DIR

    if directory is None:
        path = DEFAULT_DIR
        if not (path / _WEIGHTS).exists():
            raise CLIError(
                f"the default model is not installed ({DEFAULT_DIR} holds no "
                "model.safetensors/model.json): update deepblur, or train a model "
                "with `deepblur train CONFIG` and pass it with --model DIR."
            )
    else:
        path = Path(directory)
        if not path.is_dir():
            raise CLIError(f"--model {directory!r} is not a directory (a model "
                           "directory holds model.safetensors and model.json).")
        if not any((path / name).exists() for name in (_WEIGHTS, _META)):
            # (the loader's advice, a script of the source tree, is not the
            # command's)
            raise CLIError(f"--model {directory!r} holds no model (no "
                           "model.safetensors nor model.json): `deepblur train "
                           "CONFIG` writes one; name the directory it wrote.")
    estimator = _resolve_estimator(path, estimator, command)
    try:
        return (load_model(path, estimator=estimator, project=project), str(path),
                estimator)
    except FileNotFoundError as exc:
        raise CLIError(f"--model: {exc}") from None
    except ValueError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        if ".json" in first or ".safetensors" in first:
            # the loader's own diagnosis, which names the file at fault
            raise CLIError(f"could not load the model in {str(path)!r}: "
                           f"{first}") from None
        raise CLIError(
            f"could not read the model in {str(path)!r} (ValueError: {first}); "
            "was it written by deepblur's save_model?") from None
    except Exception as exc:  # corrupt or foreign files: say which ones
        raise CLIError(
            f"could not read the model in {str(path)!r} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); was it written by "
            "deepblur's save_model?"
        ) from None


def _check_exists(path, what):
    path = Path(path)
    if not path.exists():
        raise CLIError(f"{what} {str(path)!r} does not exist.")
    if path.is_dir():
        raise CLIError(f"{what} {str(path)!r} is a directory, not a file.")
    return path


def _check_output(path, suffixes, what):
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise CLIError(
            f"unsupported {what} format {path.suffix or '(none)'!r} for "
            f"{str(path)!r}: use {', '.join(suffixes)}."
        )
    return _check_destination(path, what)


def _check_destination(path, what):
    """An output file whose folder exists and that is not a folder itself."""
    if not path.parent.exists():
        raise CLIError(f"the folder of {what} {str(path)!r} does not exist.")
    if path.is_dir():
        raise CLIError(f"{what} {str(path)!r} is a directory; give a file name.")
    return path


def _check_not_input(path, inputs, option):
    """Refuse an output that is one of the input files (it would be lost)."""
    resolved = Path(path).resolve()
    for name in inputs:
        if resolved == Path(name).resolve():
            raise CLIError(
                f"{option} {path} is the input file {name}: write it to another "
                "file (the input would be lost).")


def _check_figure_path(path, inputs=()):
    from matplotlib.figure import Figure

    path = Path(path)
    supported = Figure().canvas.get_supported_filetypes()
    if path.suffix.lstrip(".").lower() not in supported:
        raise CLIError(
            f"unsupported figure format {path.suffix or '(none)'!r} for "
            f"{str(path)!r}: use one of .png, .pdf, .svg."
        )
    _check_destination(path, "the figure")
    _check_not_input(path, inputs, "--figure")
    return path


def _save_figure(fig, path):
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


class _Warnings:
    """Print the library's warnings as one ``warning:`` line each."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self._caught = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        from deepblur.exceptions import BoundaryWarning

        self._ctx.__exit__(*exc)
        seen = set()
        for w in self._caught:
            if issubclass(w.category, BoundaryWarning):
                continue        # the commands give their own advice (options)
            text = " ".join(str(w.message).split())
            if text not in seen:
                seen.add(text)
                print(f"warning: {text}", file=sys.stderr)
        return False


def _use_agg():
    import matplotlib

    matplotlib.use("Agg")


def read_image(path):
    """Read a 2-D image file as is: ``(pixels float64, dtype of the file,
    metadata)``, the metadata of a TIFF that :func:`write_image` carries to
    its output (the pixel size), None for other formats.

    TIFF (tifffile) and PNG/JPEG (Pillow), 8/16-bit integers or float, as
    :func:`deepblur.datasets.read_pixels` reads them (size-1 axes dropped,
    CMYK and inverted-grayscale files converted, a palette image's indices
    where its palette is a display LUT, its colours otherwise); colour
    images are converted to grayscale (ITU-R 709 luma), with a note on
    stderr, as is a palette read as indices. Unlike
    :func:`deepblur.datasets.load_image` the intensities are not rescaled.
    """
    from deepblur.datasets.images import _read_pixels

    path = _check_exists(path, "image file")
    suffix = path.suffix.lower()
    if suffix not in _IMAGE_READ:
        raise CLIError(
            f"unsupported image format {suffix or '(none)'!r} for {path.name}: "
            "use TIFF (.tif, .tiff), PNG (.png) or JPEG (.jpg)."
        )
    try:
        img, info = _read_pixels(path)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    for note in info["notes"]:
        print(f"note: {note}", file=sys.stderr)
    dtype = img.dtype
    if img.ndim == 3:
        print(f"note: {path.name} is a colour image; it is converted to grayscale.",
              file=sys.stderr)
        img = img.astype(np.float64) @ np.array([0.2125, 0.7154, 0.0721])
    img = img.astype(np.float64)
    if not np.isfinite(img).all():
        raise CLIError(f"{path.name} has NaN or Inf pixels; replace them first.")
    return img, dtype, info.get("tiff")


# the dtypes that tifffile writes in an ImageJ TIFF
_IMAGEJ_DTYPES = (np.uint8, np.uint16, np.int16, np.float32)


def _imagej_text(value):
    """A value of an ImageJ description: non-ASCII characters escaped as
    ImageJ does (``\\u00B5m``)."""
    if isinstance(value, str):
        return "".join(c if ord(c) < 128 else f"\\u{ord(c):04X}" for c in value)
    return value


def _write_whole(path, write):
    """Write ``path`` whole or not at all: ``write`` is called with a
    temporary file beside it (its name ends with ``path``'s), which then
    replaces it. An error or a Ctrl-C while writing leaves ``path`` as it
    was (an earlier output intact) and no half-written file. The file keeps
    the permissions of the one it replaces (a read-only one is refused),
    else gets a new file's. A path that is not a plain file (a device or a
    pipe, such as /dev/null) is written to as it is, and so is a file that
    may be written in a folder that cannot hold the temporary one."""
    import os
    import tempfile

    if os.path.exists(path) and not os.path.isfile(path):
        # a device, a pipe or a folder (-o /dev/null, /dev/stdout): written
        # in place, as before; a rename would replace it (/dev/null itself by
        # a plain file, as root), or fail naming the temporary file
        write(Path(path))
        return
    path = Path(os.path.realpath(path))     # through a link, not over it
    if path.exists() and not os.access(path, os.W_OK):
        # a rename would replace it all the same
        raise CLIError(f"{str(path)!r} is read-only: it is not replaced.")
    # ending with the whole name: the writers read the format from it
    # (tifffile an OME-TIFF from '.ome.tif'); with its end only where the
    # whole would make too long a name (255 bytes on most file systems)
    tail = path.name
    while len(os.fsencode(tail)) > 200:
        tail = tail[1:]
    try:
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=f".{tail}",
                                   dir=path.parent)
    except OSError as exc:      # (its message would name the temporary file)
        if path.is_file() and os.access(path, os.W_OK):
            # a folder that takes no new file (no write permission on it) but
            # an output that may be written: written in place, as before
            write(path)
            return
        raise CLIError(f"cannot write {str(path)!r} ({exc.strerror or exc}).") \
            from None
    os.close(fd)
    try:
        if path.exists():           # the mode of the file it replaces
            mode = path.stat().st_mode & 0o7777
        else:                       # or a plain new file's
            mode = os.umask(0)
            os.umask(mode)
            mode = 0o666 & ~mode
        os.chmod(tmp, mode)
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_image(path, image, dtype, metadata=None):
    """Write ``image`` as ``dtype``: integers rounded and clipped to its range.

    ``metadata`` (from :func:`read_image` of a TIFF) carries the input's
    pixel size to a TIFF output: its resolution tags and, for an ImageJ
    input, its ``unit`` and ``spacing`` in an ImageJ TIFF (where the dtype
    allows one), so that Fiji shows the image in the input's units; for an
    OME-TIFF input, its ``PhysicalSizeX``/``Y`` and units in an OME-TIFF
    (as Bio-Formats reads them).
    """
    path = Path(path)
    image = np.asarray(image, dtype=np.float64)
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        rounded = np.rint(image)
        outside = int(np.count_nonzero((rounded < info.min) | (rounded > info.max)))
        if outside:
            print(f"warning: {outside} pixel(s) ({100 * outside / image.size:.3g} %) "
                  f"of {path.name} fell outside {dtype}'s range [{info.min}, "
                  f"{info.max}] and were clipped to it; --output-dtype float32 "
                  "(a .tif) keeps them (negative ones are ringing: --positive "
                  "prevents it).", file=sys.stderr)
        out = np.clip(rounded, info.min, info.max).astype(dtype)
    else:
        out = image.astype(dtype)
    _write_whole(path, lambda tmp: _write_pixels(tmp, path.name, out, metadata))


def _write_pixels(path, name, out, metadata):
    """Write the pixels ``out`` to ``path`` (as :func:`write_image`; ``name``:
    the output's, for the messages)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        kwargs = {}
        if metadata:
            if "resolution" in metadata:
                kwargs["resolution"] = metadata["resolution"]
                if "resolutionunit" in metadata:
                    kwargs["resolutionunit"] = metadata["resolutionunit"]
            if "imagej" in metadata and out.dtype in _IMAGEJ_DTYPES:
                kwargs["imagej"] = True
                kwargs["metadata"] = {k: _imagej_text(v)
                                      for k, v in metadata["imagej"].items()}
            elif metadata.get("ome"):   # an OME-TIFF's pixel size
                kwargs["ome"] = True
                kwargs["metadata"] = dict(metadata["ome"], axes="YX")
        try:
            tifffile.imwrite(path, out, **kwargs)
        except (ValueError, TypeError, ZeroDivisionError) as exc:
            if not kwargs:
                raise
            print(f"warning: the pixel size of the input could not be written "
                  f"to {name} ({type(exc).__name__}: {exc}); written "
                  "without it.", file=sys.stderr)
            tifffile.imwrite(path, out)
    else:
        import imageio.v3 as iio

        iio.imwrite(path, out)


def _check_gamma_basis(path, data, basis):
    """Refuse a gamma file of `deepblur estimate` written with a model of
    another basis (its ``basis_gram``); files without one pass."""
    from deepblur.estimators._gamma import same_gram

    gram = data.get("basis_gram") if isinstance(data, dict) else None
    if gram is None:
        return
    try:
        same = same_gram(basis.gram_, np.asarray(gram, dtype=np.float64))
    except (ValueError, TypeError):
        same = False
    if not same:
        raise CLIError(
            f"{path.name} was estimated with a model of another basis (model "
            f"{data.get('model', '?')!r}; its basis_gram is not this model's "
            "Gram matrix): its coefficients mean nothing in this model's "
            "basis. Estimate the gamma with this model, or deblur with the "
            "model that estimated it (--model).")


def _note_npy_unchecked(path):
    print(f"note: {path.name} does not record the basis it was estimated in, "
          "so it cannot be checked against this model's (the .json of "
          "`deepblur estimate` can).", file=sys.stderr)


def _read_gamma(path, basis):
    K = basis.kernels_.shape[0]
    path = _check_exists(path, "gamma file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            gamma = np.load(path, allow_pickle=False)
        elif suffix == ".json":
            data = json.loads(path.read_text())
            _check_gamma_basis(path, data, basis)
            if isinstance(data, dict) and "gamma_tiles" in data \
                    and "gamma" not in data:
                shape = "x".join(str(n) for n in data.get("image_shape", ()))
                raise CLIError(
                    f"{path.name} holds one gamma per tile of a larger image "
                    f"({shape or 'its'} pixels, from `deepblur estimate`), not "
                    "the one gamma of an image of the model's input size: "
                    "estimate this image's gamma, or deblur that image with it.")
            gamma = data["gamma"] if isinstance(data, dict) else data
        else:
            raise CLIError(f"unsupported gamma file format {suffix or '(none)'!r} "
                           f"for {path.name}: use .json or .npy.")
        gamma = np.asarray(gamma, dtype=np.float64)
        if gamma.ndim == 2 and gamma.shape[0] > 1:
            raise CLIError(
                f"{path.name} holds {gamma.shape[0]} rows of coefficients (one "
                "per tile of a larger image, as `deepblur estimate -o .npy` "
                "writes them), not the one gamma of an image of the model's "
                "input size.")
        gamma = gamma.reshape(-1)
    except CLIError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise CLIError(
            f"could not read gamma from {path.name} ({type(exc).__name__}: {exc}); "
            "expected a .npy array or a JSON list / {\"gamma\": [...]} of K numbers."
        ) from None
    if gamma.size != K:
        raise CLIError(
            f"{path.name} holds {gamma.size} coefficients but the model's basis has "
            f"K={K}: was gamma estimated with another model?"
        )
    if not np.isfinite(gamma).all():
        raise CLIError(f"{path.name} holds NaN or Inf coefficients.")
    if suffix == ".npy":
        _note_npy_unchecked(path)
    return gamma


def _model_image(model, path):
    """Read an image of at least the model's input shape (larger: tiled)."""
    img, dtype, meta = read_image(path)
    shape = tuple(model.basis.image_shape_)
    if img.shape[0] < shape[0] or img.shape[1] < shape[1]:
        raise CLIError(
            f"{Path(path).name} is {img.shape[0]}x{img.shape[1]}, smaller than the "
            f"model's input {shape[0]}x{shape[1]} along an axis: the blur is "
            f"estimated on {shape[0]}x{shape[1]} tiles; pad the image to at least "
            "that size."
        )
    if not img.mean() > 0:
        raise CLIError(f"{Path(path).name} has a mean intensity <= 0; the model "
                       "needs intensities (a positive mean), not a signed or "
                       "background-subtracted image.")
    return img, dtype, meta


# -------------------------------------------------------------------- commands
def cmd_demo(args):
    """Simulate a blur on a bundled image, estimate it, deblur (paper Fig. 3)."""
    from deepblur.plotting import plot_blind_deblurring
    from deepblur.pretrained._apply import (
        BUNDLED_IMAGES,
        _model_boundary,
        bundled_image,
        simulate_blind_deblurring,
    )

    if args.image not in BUNDLED_IMAGES:
        raise CLIError(f"--image must be one of {', '.join(BUNDLED_IMAGES)}; got "
                       f"{args.image!r}.")
    output = _check_figure_path(args.output)
    model, source, estimator = _load_model(args.model, args.estimator, "demo",
                                           args.project)
    shape = tuple(model.basis.image_shape_)
    image = bundled_image(args.image, shape)
    with _Warnings():
        res = simulate_blind_deblurring(model, image, random_state=args.seed,
                                        lam=args.lam, max_iter=args.max_iter,
                                        tol=args.tol, inner_iter=args.inner_iter,
                                        device=args.device)
    print(f"model: {source} ({estimator} estimator)")
    drawn = res["noise_std"]
    noise = (f"{drawn[0]:g}-{drawn[1]:g}" if isinstance(drawn, tuple)
             else f"{drawn:g}")
    print(f"image: {args.image} ({shape[0]}x{shape[1]} centre crop, mean 0.5), "
          f"seed {args.seed}, noise std {noise}, "
          f"{_model_boundary(model)} boundary")
    print(f"relative operator error: {100 * res['operator_error']:.2f} %")
    print(f"SNR blurry: {res['snr_blurry']:.2f} dB")
    print(f"SNR deblurred (estimated operator): {res['snr_deblurred']:.2f} dB")
    print(f"SNR deblurred (true operator): {res['snr_deblurred_true']:.2f} dB")
    _use_agg()
    fig = plot_blind_deblurring(model.basis, res["gamma"], res["gamma_hat"],
                                res["blurry"], res["original"], res["deblurred"],
                                deblurred_true=res["deblurred_true"],
                                blurry_gain=res["blurry_gain"])
    _save_figure(fig, output)
    print(f"figure: {output}")
    return 0


def cmd_estimate(args):
    """Estimate the blur operator of an image."""
    from deepblur.pretrained._apply import estimate_gamma, operator_gain

    if args.output is not None:
        _check_output(args.output, (".json", ".npy"), "gamma file")
    if args.figure is not None:
        _check_figure_path(args.figure, [args.image])
    model, source, estimator = _load_model(args.model, args.estimator, "estimate",
                                           args.project)
    img, _, _ = _model_image(model, args.image)
    if img.shape != tuple(model.basis.image_shape_):
        return _estimate_tiles(args, model, source, estimator, img)
    with _Warnings():
        gamma, scale = estimate_gamma(model, img)
    _warn_if_zero_boundary(model)
    # the mass of its PSFs: what deblur divides gamma by (unit gain, with
    # either --boundary), not the zero boundary's whole-image gain
    gain = operator_gain(model.basis, gamma, interior=True)
    distance, tolerance = _support_distance(model, gamma, args.project)
    print(f"model: {source} ({estimator} estimator)")
    print(f"gamma_hat (K={gamma.size}): " + " ".join(f"{g:.6g}" for g in gamma))
    print(f"operator gain (the mass of its PSFs, which deblur rescales to 1): "
          f"{gain:.4f}")
    if distance is not None:
        print(f"distance to the operators the model was trained on: {distance:.4g}"
              " (relative; " + ("it warns above its support_tolerance "
                                f"{tolerance:g})" if tolerance is not None
                                else "no support_tolerance set)"))
    if args.output is not None:
        out = Path(args.output)
        if out.suffix.lower() == ".npy":
            _write_whole(out, lambda tmp: np.save(tmp, gamma))
        else:
            text = json.dumps(dict(
                gamma=gamma.tolist(), K=int(gamma.size), gain=gain,
                image=str(args.image), model=source, estimator=estimator,
                scale=scale, support_distance=distance,
                support_tolerance=tolerance,
                basis_gram=model.basis.gram_.tolist(),
                convention="gamma is the operator of the image multiplied by "
                           "scale (to the mean intensity of the training "
                           "observations); deblur rescales it to unit gain"),
                indent=1)
            _write_whole(out, lambda tmp: tmp.write_text(text))
        print(f"gamma: {out}")
    if args.figure is not None:
        from deepblur.plotting import plot_operator

        _use_agg()
        fig = plot_operator(model.basis, gamma, titles=["estimated operator"])
        _save_figure(fig, args.figure)
        print(f"figure: {args.figure}")
    return 0


def _support_distance(model, gamma, projected):
    """The relative operator distance of raw estimates (one ``(K,)`` or rows of
    ``(n, K)``) to the support of the model's sampler, and the regressor's
    support_tolerance; (None, None) for projected estimates (on the support)
    or a regressor without sampler."""
    from deepblur.estimators._gamma import support_distances

    sampler = getattr(model.regressor, "sampler", None)
    if projected or sampler is None:
        return None, None
    gamma = np.asarray(gamma, dtype=np.float64)
    distance = support_distances(sampler, np.atleast_2d(gamma),
                                 model.basis.gram_)[1]
    distance = float(distance[0]) if gamma.ndim == 1 else distance
    return distance, getattr(model.regressor, "support_tolerance", None)


def _tile_stride(args, model):
    stride = getattr(args, "tile_stride", None)
    if stride is None:
        return None
    shape = tuple(model.basis.image_shape_)
    if stride > min(shape):
        raise CLIError(f"--tile-stride must be at most the tile size {min(shape)} "
                       f"(tiles must overlap or touch); got {stride}.")
    return stride


def _warn_if_zero_boundary(model):
    """A model trained on zero-boundary simulations is unreliable on real images
    (the point-source fit is not trained: nothing to warn about). The image's
    noise is checked by the regressor's ``predict``, whose
    ``NoisyImageWarning`` the commands print."""
    from deepblur.estimators.points import PointSourceBlurEstimator
    from deepblur.pretrained._apply import _model_boundary

    if isinstance(model.regressor, PointSourceBlurEstimator):
        return
    if _model_boundary(model) == "zero":
        print("warning: this model was trained on images blurred with a zero "
              "boundary; on windows of larger scenes (real images, tiles) the "
              "shipped one's operator error is 40 %, worse than the mean "
              "operator's 24 % (benchmarks/README.md): treat the blind estimate "
              "as unreliable, use --estimator crop_network or --estimator "
              "spectral (trained on such windows) if the model has one, or pass "
              "a known operator with --gamma.",
              file=sys.stderr)


def _estimate_tiles(args, model, source, estimator, img):
    """`deepblur estimate` on an image larger than the model's input."""
    from deepblur.pretrained._apply import model_image_mean, training_gain
    from deepblur.tiling import estimate_tiles, stitched_operator

    with _Warnings():
        gamma, grid = estimate_tiles(
            img, model.regressor, tuple(model.basis.image_shape_),
            stride=_tile_stride(args, model),
            target_mean=model_image_mean(model) * training_gain(model))
    _warn_if_zero_boundary(model)
    print(f"model: {source} ({estimator} estimator)")
    print(f"{img.shape[0]}x{img.shape[1]} image: {grid.n_tiles} tiles "
          f"({grid.shape[0]}x{grid.shape[1]}) of {grid.tile_shape[0]}x"
          f"{grid.tile_shape[1]}, one gamma_hat (K={gamma.shape[1]}) per tile, "
          "blended by a partition of unity")
    distances, tolerance = _support_distance(model, gamma, args.project)
    if distances is not None:
        over = ("" if tolerance is None else
                f", {int(np.sum(distances > tolerance))} of {grid.n_tiles} tiles "
                f"above its support_tolerance {tolerance:g}")
        print("distance of the tiles' estimates to the operators the model was "
              f"trained on: median {np.median(distances):.4g}, largest "
              f"{distances.max():.4g}{over}")
    if args.output is not None:
        out = Path(args.output)
        if out.suffix.lower() == ".npy":
            _write_whole(out, lambda tmp: np.save(tmp, gamma))
            print(f"note: {out.name} holds the ({grid.n_tiles}, K) estimates "
                  "without their tile grid, which `deepblur deblur --gamma` "
                  "needs for this image: write a .json for that.",
                  file=sys.stderr)
        else:
            text = json.dumps(dict(
                gamma_tiles=gamma.tolist(), K=int(gamma.shape[1]),
                image_shape=list(grid.image_shape),
                tile_shape=list(grid.tile_shape),
                row_starts=list(grid.row_starts), col_starts=list(grid.col_starts),
                image=str(args.image), model=source, estimator=estimator,
                support_distances=(None if distances is None
                                   else distances.tolist()),
                support_tolerance=tolerance,
                basis_gram=model.basis.gram_.tolist(),
                convention="one gamma per tile, row-major, for the tile scaled to "
                           "the mean intensity of the training observations; "
                           "deblur rescales each to unit gain"), indent=1)
            _write_whole(out, lambda tmp: tmp.write_text(text))
        print(f"gamma: {out}")
    if args.figure is not None:
        from deepblur.plotting import dirac_comb

        _use_agg()
        import matplotlib.pyplot as plt

        op = stitched_operator(model.basis, gamma, grid)
        # PSFs 1.5 kernel widths apart, as plot_operator draws them: closer,
        # neighbours overlapped on images under about 400 pixels
        spacing = max(int(1.5 * max(model.basis.kernel_shape_)),
                      min(img.shape) // 16)
        comb = dirac_comb(img.shape, spacing=spacing)
        import torch

        with torch.no_grad():
            psfs = op.forward(torch.from_numpy(comb)[None],
                              torch.ones(gamma.shape[1], dtype=torch.float64))
        psfs = psfs[0].cpu().numpy()
        fig, ax = plt.subplots(figsize=(6, 6 * img.shape[0] / img.shape[1]))
        # the square root shows the PSFs' tails as well as their cores
        ax.imshow(np.clip(psfs, 0, None) ** 0.5, cmap="magma")
        ax.set_title(f"estimated operator on a Dirac comb ({grid.n_tiles} tiles, "
                     f"PSFs {spacing} px apart; square root)")
        ax.axis("off")
        _save_figure(fig, args.figure)
        print(f"figure: {args.figure}")
    return 0


def _read_gamma_tiles(path, grid_shape, basis):
    """Per-tile gammas from `deepblur estimate` of an image of this size."""
    from deepblur.tiling import TileGrid

    K = basis.kernels_.shape[0]
    path = _check_exists(path, "gamma file")
    if path.suffix.lower() != ".json":
        raise CLIError(f"for an image larger than the model's input, --gamma must "
                       f"be the .json written by `deepblur estimate` for it (with "
                       f"its tile grid); got {path.name}.")
    try:
        data = json.loads(path.read_text())
        _check_gamma_basis(path, data, basis)
        grid_keys = ("image_shape", "tile_shape", "row_starts", "col_starts")
        rows = (data.get("gamma_tiles", data.get("gamma"))
                if isinstance(data, dict) else data)
        try:
            shape = np.shape(np.asarray(rows, dtype=np.float64))
        except (ValueError, TypeError):
            shape = None
        if shape == (K,):
            raise CLIError(
                f"{path.name} holds one gamma, for an image of the model's "
                f"input size, not one per tile of this {grid_shape[0]}x"
                f"{grid_shape[1]} image: run `deepblur estimate` on this image "
                "for its per-tile .json, or deblur blind (without --gamma).")
        if shape is not None and len(shape) == 2 and not (
                isinstance(data, dict) and all(k in data for k in grid_keys)):
            raise CLIError(
                f"{path.name} holds rows of coefficients without the tile grid "
                "that `deepblur estimate` writes beside them (its .json): run "
                "`deepblur estimate` on this image for its per-tile .json.")
        if not isinstance(data, dict):
            raise CLIError(
                f"{path.name} is not a per-tile gamma file of `deepblur "
                "estimate` (a JSON object with gamma_tiles and its tile grid).")
        gamma = np.asarray(data["gamma_tiles"], dtype=np.float64)
        grid = TileGrid(tuple(data["image_shape"]), tuple(data["tile_shape"]),
                        tuple(data["row_starts"]), tuple(data["col_starts"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise CLIError(f"{path.name} is not a per-tile gamma file of `deepblur "
                       f"estimate` ({exc}).") from None
    if tuple(grid.image_shape) != tuple(grid_shape):
        raise CLIError(f"{path.name} was estimated on a {grid.image_shape[0]}x"
                       f"{grid.image_shape[1]} image, not {grid_shape[0]}x"
                       f"{grid_shape[1]}.")
    if gamma.shape != (grid.n_tiles, K) or not np.isfinite(gamma).all():
        raise CLIError(f"{path.name} must hold {grid.n_tiles} finite rows of K={K} "
                       f"coefficients; got shape {gamma.shape}.")
    return gamma, grid


def _deblur_large(args, model, img):
    """`deepblur deblur` on an image larger than the model's input."""
    from deepblur.pretrained._apply import model_image_mean
    from deepblur.tiling import (
        DEFAULT_MAX_PIXELS,
        _deblur_scaled,
        _solve_scale,
        _unit_gain_tiles,
        deblur_large,
        tile_grid,
    )

    max_pixels = DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels
    kwargs = dict(lam=args.lam, boundary=args.boundary,
                  regularization=args.regularization, positive=args.positive,
                  max_iter=args.max_iter, tol=args.tol,
                  inner_iter=args.inner_iter, max_pixels=max_pixels,
                  device=args.device)
    with _Warnings():
        if args.gamma is None:
            result = deblur_large(img, model, tile_stride=_tile_stride(args, model),
                                  **kwargs)
            return result.restored, result.grid
        gamma, grid = _read_gamma_tiles(args.gamma, img.shape, model.basis)
        stride = _tile_stride(args, model)
        if stride is not None and tile_grid(img.shape, grid.tile_shape,
                                            stride) != grid:
            raise CLIError(
                f"--tile-stride {stride}: the tiles are those of "
                f"{Path(args.gamma).name} ({grid.n_tiles} tiles, the grid "
                "`deepblur estimate` used), not tiles this far apart; leave "
                "--tile-stride out, or estimate again with it.")
        try:
            gamma = _unit_gain_tiles(model.basis, gamma, grid)
        except ValueError as exc:
            raise CLIError(f"{Path(args.gamma).name}: {exc}") from None
        # the conventions of deblur_large: lam for the image scaled to the
        # model's training mean
        scale = _solve_scale(img, model_image_mean(model))
        restored, _ = _deblur_scaled(img, model.basis, gamma, grid, scale=scale,
                                     **kwargs)
        return restored, grid


def cmd_deblur(args):
    """Deblur a TIFF/PNG image, blind or with a given operator."""
    from deepblur.pretrained._apply import deblur_image

    _check_output(args.output, _IMAGE_WRITE, "output image")
    _check_not_input(args.output, [args.image], "-o")
    if Path(args.output).suffix.lower() == ".png" and args.output_dtype == "float32":
        raise CLIError("--output-dtype float32: PNG cannot store float pixels; "
                       "write the output as .tif.")
    model, _, _ = _load_model(args.model, args.estimator, "deblur", args.project)
    img, dtype, meta = _model_image(model, args.image)
    if args.output_dtype == "float32":
        dtype = np.dtype(np.float32)
    if Path(args.output).suffix.lower() == ".png" and dtype.kind == "f":
        raise CLIError(
            f"{Path(args.image).name} has float pixels, which PNG cannot store: "
            "write the output as .tif."
        )
    if Path(args.output).suffix.lower() == ".png" and dtype not in (np.uint8,
                                                                     np.uint16):
        raise CLIError(f"PNG stores 8- or 16-bit unsigned pixels, not {dtype}: "
                       "write the output as .tif.")
    if img.shape != tuple(model.basis.image_shape_):
        restored, grid = _deblur_large(args, model, img)
        if args.gamma is None:
            _warn_if_zero_boundary(model)
        write_image(args.output, restored, dtype, meta)
        mode = "blind" if args.gamma is None else f"operator from {args.gamma}"
        print(f"deblurred ({mode}, {grid.n_tiles} tiles, {args.regularization}, "
              f"lam={args.lam}): {args.output} ({dtype}, {img.shape[0]}x"
              f"{img.shape[1]})")
        return 0
    gamma = None if args.gamma is None else _read_gamma(args.gamma, model.basis)
    with _Warnings():
        restored, _ = deblur_image(model, img, gamma=gamma, lam=args.lam,
                                   regularization=args.regularization,
                                   positive=args.positive,
                                   boundary=args.boundary, max_iter=args.max_iter,
                                   tol=args.tol, inner_iter=args.inner_iter,
                                   device=args.device)
    if gamma is None:
        _warn_if_zero_boundary(model)
    write_image(args.output, restored, dtype, meta)
    mode = "blind" if gamma is None else f"operator from {args.gamma}"
    print(f"deblurred ({mode}, {args.regularization}, lam={args.lam}): "
          f"{args.output} ({dtype}, {img.shape[0]}x{img.shape[1]})")
    return 0


_TRAIN_KEYS = {
    "setting": "overrides of deepblur.pretrained.DEFAULT_SETTING (a table)",
    "images": "'natural' (default; the bundled natural training images) or a "
              "folder of images",
    "n_images": "training images over all epochs (rounded down to whole "
                "batches, at least one batch per epoch)",
    "epochs": "epochs",
    "batch_size": "batch size",
    "lr": "learning rate",
    "noise_std": "training noise: a standard deviation, or [low, high] drawn "
                 "per image, for images of mean 0.5 (default: the setting's "
                 "noise_std; the shipped network's is [0.0, 0.02]). The "
                 "setting's noise_std stays the test noise of the held-out "
                 "check, the demo and the benchmarks (0.01 by default)",
    "width": "ResNet width",
    "depth": "ResNet depth",
    "stem_stride": "ResNet stem stride",
    "head": "'spatial' or 'avg'",
    "input_norm": "'laplacian' (the image and its Laplacian, as the shipped "
                  "network: learns faster from scratch; the default), "
                  "'hessian' (the Laplacian and the two anisotropic second "
                  "derivatives; measured no better), 'contrast', or 'none' "
                  "(the image alone)",
    "criterion": "'mse' or 'frobenius'",
    "pool_size": "clean training patches kept in memory",
    "gammas_per_image": "operators per clean patch in a batch (8 draws "
                        "batches about 4 times faster on a CPU, for slightly "
                        "less learning per image)",
    "moment_stage": "supervise this stage's output (1-4) with the local PSF "
                    "moments of the true operator (3 sped up the start of "
                    "the 15-minute CPU recipe, 4-12 % less error after 64 000 "
                    "images, but gained nothing by its 384 000)",
    "moment_weight": "weight of the PSF-moment term beside MSE on gamma",
    "num_workers": "DataLoader workers making the data on the CPU (None: 0 on "
                   "CUDA, where the data are made on the GPU, else 1)",
    "device": "'cpu', 'cuda' or 'auto' (CUDA when available)",
    "compile": "torch.compile the network (true/false; 25 % faster steps on a "
               "CPU after about 30 s of compilation)",
    "mixed_precision": "'bf16' (the training steps' forward pass in "
                       "bfloat16: 1.26x faster steps for the width-8 recipe "
                       "on a CPU with AMX, 2.51x for width 32; may be slower on CPUs "
                       "without bfloat16) or 'none' (float32, the default)",
    "init_model": "start from this model directory's weights (fine-tuning; "
                  "e.g. the shipped deepblur/pretrained/default)",
    "seed": "seed of the weights and the training data (of the spectral "
            "regressor's data too; the crop network takes the seed of its "
            "table)",
    "n_test_images": "held-out test images for the final evaluation (default "
                     "512; 0: none)",
    "support_images": "fresh training-like images on which the networks' "
                      "support_tolerance is set to the 99.9th percentile of "
                      "their estimates' distance to the sampler's support, so "
                      "that predict warns about images unlike the training "
                      "ones (default 4096, about 25 s per network on one CPU "
                      "thread; "
                      "0: no check)",
    "head_images": "fit the network's blur-statistics head (a linear branch "
                   "on local power spectra, edge profiles and the mean, "
                   "fitted in closed form) on this many fresh images after "
                   "training, rounded up to whole batches of head_batch_size "
                   "(the shipped network: 98304; 32768 took 133 s "
                   "on one CPU thread beside a width-8 network; default 0: "
                   "none)",
    "head_batch_size": "images simulated at a time for the head (default 1024)",
    "spectral_images": "also fit a spectral regressor for real images on this "
                       "many fresh windows of larger scenes (noise 0.005-0.05, "
                       "a fifth point sources; the shipped one used 40000, about "
                       "5 minutes on a CPU) and save it beside the network "
                       "(default 0: none)",
    "crop_network": "also train a network for real images on windows of "
                    "larger scenes and save it beside the network (a table; "
                    "empty: the shipped crop network's recipe, 384000 images "
                    "with noise 0-0.05 and a fifth point sources, about 25 "
                    "minutes on a CPU; keys override it: n_images, epochs, "
                    "batch_size, lr, width, depth, stem_stride, input_norm, "
                    "pool_size, noise_std, point_fraction, head_images, "
                    "head_batch_size, blur_features, num_workers, device, "
                    "compile, mixed_precision, seed; default: none)",
    "output": "model directory (default 'deepblur_model')",
    "checkpoint_dir": "checkpoint directory (default OUTPUT/checkpoints)",
}


def _read_config(path):
    path = _check_exists(path, "config file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:   # Python 3.10: the same parser, as tomli
                import tomli as tomllib
            config = tomllib.loads(path.read_text(encoding="utf-8-sig"))
        elif suffix == ".json":
            config = json.loads(path.read_text(encoding="utf-8-sig"))
        else:
            raise CLIError(f"unsupported config format {suffix or '(none)'!r} for "
                           f"{path.name}: use .toml or .json.")
    except CLIError:
        raise
    except ValueError as exc:        # tomllib.TOMLDecodeError, JSONDecodeError
        raise CLIError(f"{path.name} is not valid {suffix[1:].upper()}: "
                       f"{exc}.") from None
    if not isinstance(config, dict):
        raise CLIError(f"{path.name} must hold a table of settings; got "
                       f"{type(config).__name__}.")
    unknown = sorted(set(config) - set(_TRAIN_KEYS))
    if unknown:
        raise CLIError(f"unknown key(s) {', '.join(unknown)} in {path.name}; known "
                       f"keys: {', '.join(_TRAIN_KEYS)}.")
    if not isinstance(config.get("setting", {}), dict):
        raise CLIError(f"'setting' in {path.name} must be a table of overrides.")
    for key in ("output", "checkpoint_dir", "images", "init_model"):
        if key in config and not isinstance(config[key], str):
            raise CLIError(f"{key} in {path.name} must be a string (a path"
                           + (", or 'natural'" if key == "images" else "")
                           + f"); got {config[key]!r}.")
    if "device" in config:
        try:
            if not isinstance(config["device"], str):
                raise argparse.ArgumentTypeError(
                    f"must be a string such as 'cpu', 'cuda' or 'auto'; got "
                    f"{config['device']!r}")
            _device(config["device"])
        except argparse.ArgumentTypeError as exc:
            raise CLIError(f"device in {path.name} {exc}.") from None
    return config


def _training_images(spec, base, image_shape=None):
    """The clean training images of a config's ``images``; those of a folder
    must be at least ``image_shape`` (the setting's): one that is not is
    named before anything is trained or removed."""
    from deepblur.datasets import load_images, natural_image_split
    from deepblur.datasets.images import FOLDER_SUFFIXES
    from deepblur.pretrained._train import _shape_pair

    if spec == "natural":
        return natural_image_split()[0]
    folder = (base / spec) if not Path(spec).is_absolute() else Path(spec)
    if not folder.is_dir():
        raise CLIError(f"images must be 'natural' or a folder of images; "
                       f"{str(folder)!r} is not a folder.")
    # the files load_images reads from a folder, in its order
    files = sorted(p for p in folder.iterdir() if p.is_file()
                   and not p.name.startswith(".")
                   and p.suffix.lower() in FOLDER_SUFFIXES)
    images = load_images(files or folder)   # (a folder without any: its error)
    dims = _shape_pair(image_shape)
    small = [(f.name, img.shape) for f, img in zip(files, images, strict=True)
             if dims and (img.shape[0] < dims[0] or img.shape[1] < dims[1])]
    if small:
        listed = ", ".join(f"{name} ({h}x{w})" for name, (h, w) in small[:3])
        more = f" and {len(small) - 3} more" if len(small) > 3 else ""
        raise CLIError(
            f"{len(small)} of the {len(files)} images in {str(folder)!r} are "
            f"smaller than the setting's image_shape {dims[0]}x{dims[1]}, which "
            f"the training crops from them: {listed}{more}; remove them or "
            "lower image_shape.")
    return images


def cmd_train(args):
    """Train a blur regressor from a TOML/JSON config."""
    from deepblur.pretrained import (
        DEFAULT_SETTING,
        FEATURE_HEAD_DEFAULTS,
        TRAINING_DEFAULTS,
        make_default_setting,
        train_regressor,
    )
    from deepblur.pretrained._default import check_setting_params
    from deepblur.pretrained._train import (
        _RunMismatch,
        check_training_params,
        checkpoint_files,
    )

    config = _read_config(args.config)
    base = Path(args.config).resolve().parent

    def resolve(p):
        p = Path(p).expanduser()
        return p if p.is_absolute() else base / p

    output = Path(args.output).expanduser() if args.output else resolve(
        config.get("output", "deepblur_model"))
    if output.exists() and not output.is_dir():
        raise CLIError(f"the output {output} is a file: the model is a directory "
                       "of files; name another output.")
    checkpoint_dir = resolve(config["checkpoint_dir"]) if "checkpoint_dir" in \
        config else output / "checkpoints"
    # any file of one (train_regressor refuses them all without resume)
    has_checkpoint = bool(checkpoint_files(checkpoint_dir))
    if has_checkpoint and not (args.resume or args.overwrite):
        raise CLIError(
            f"{checkpoint_dir} already holds a checkpoint: pass --resume to continue "
            "it, or --overwrite to start over."
        )
    if args.resume and not has_checkpoint:
        raise CLIError(f"--resume: no checkpoint in {checkpoint_dir} to resume "
                       "from; run without --resume first.")
    if ((output / "model.safetensors").exists()
            and not (args.resume or args.overwrite)):
        raise CLIError(f"{output} already holds a model: pass --overwrite to "
                       "replace it, or name another output.")
    overrides = {k: tuple(v) if isinstance(v, list) else v
                 for k, v in config.get("setting", {}).items()}
    unknown = sorted(set(overrides) - set(DEFAULT_SETTING))
    if unknown:
        raise CLIError(f"unknown setting override(s) {', '.join(unknown)}; "
                       f"overrides must be among {', '.join(DEFAULT_SETTING)}.")
    try:                # before the slow setting fit, and before any file
        check_setting_params(overrides)
    except ValueError as exc:
        raise CLIError(f"[setting]: {exc}") from None
    hyper = {k: config[k] for k in TRAINING_DEFAULTS if k in config}
    if "input_norm" in hyper:
        hyper["input_norm"] = _config_input_norm(hyper["input_norm"], "")
    if "mixed_precision" in hyper:
        hyper["mixed_precision"] = _config_mixed_precision(
            hyper["mixed_precision"], "")
    if "seed" in config:
        hyper["random_state"] = config["seed"]
    if "init_model" in config:
        init = resolve(config["init_model"])
        if not (init / "model.safetensors").is_file():
            raise CLIError(f"init_model {str(init)!r} is not a model directory "
                           "(no model.safetensors in it).")
        hyper["init_model"] = init
    # fail before the slow setting fit
    shape = overrides.get("image_shape", DEFAULT_SETTING["image_shape"])
    check_training_params(**dict(dict(stem_stride=TRAINING_DEFAULTS["stem_stride"]),
                                 **hyper), image_shape=shape)
    workers = _command_workers(hyper)
    train_noise = config.get("noise_std")
    if train_noise is not None:         # a float or a (low, high) tuple
        from deepblur.datasets.simulate import _noise_param

        train_noise = _noise_param(train_noise)
    n_test_images = _image_count(config, "n_test_images", 512)
    n_support = _image_count(config, "support_images", _SUPPORT_IMAGES)
    n_spectral = _image_count(config, "spectral_images", 0)
    n_head = _image_count(config, "head_images", 0)
    head_batch = _image_count(config, "head_batch_size",
                              FEATURE_HEAD_DEFAULTS["batch_size"])
    if head_batch < 1:          # refused even when no head is asked for
        raise CLIError(f"head_batch_size must be a positive integer; got "
                       f"{head_batch}.")
    if n_head:      # the statistics must fit the images, before the training
        from deepblur.features import n_blur_features

        shape = tuple(overrides.get("image_shape", DEFAULT_SETTING["image_shape"]))
        try:
            n_blur_features(shape)
        except (ValueError, TypeError) as exc:
            raise CLIError(f"head_images needs blur statistics of the setting's "
                           f"images {shape}: {exc}") from None
    crop_params = _crop_network_params(config, hyper, args.config, shape)
    images = _training_images(config.get("images", "natural"), base,
                              overrides.get("image_shape",
                                            DEFAULT_SETTING["image_shape"]))
    setting = make_default_setting(**overrides)
    sampler = setting["sampler"]
    mean_gamma = sampler.sample(50_000).mean(0)
    if "init_model" in hyper:       # its network must fit this training's
        hyper["init_model"] = _initial_network(
            hyper["init_model"], dict(TRAINING_DEFAULTS, **hyper),
            setting["params"]["n_components"])
    if args.overwrite and not args.resume:
        # start over: a later --resume must not pick up the old run's epochs
        # (nor train_crop_network meet a crop network's checkpoint of its
        # own). Only now, once the config is known to be good: a typo must
        # not cost the old run's checkpoint.
        from deepblur.pretrained._train import remove_checkpoint

        remove_checkpoint(checkpoint_dir)
        remove_checkpoint(checkpoint_dir / "crop_network")
    stages = _Stages(checkpoint_dir, output, resume=args.resume)
    hp = dict(TRAINING_DEFAULTS, **hyper)
    trained = _trained_images(hp)
    rounded = ("" if trained == hp["n_images"] else
               f" (n_images {hp['n_images']} made whole batches of "
               f"{hp['batch_size']}, at least one per epoch)")
    print(f"training: {trained} images{rounded}, {hp['epochs']} epochs, "
          f"image_shape {setting['params']['image_shape']}, K="
          f"{setting['params']['n_components']}; checkpoints in {checkpoint_dir}")
    try:
        net = train_regressor(setting, images, output_bias=mean_gamma,
                              noise_std=train_noise,
                              checkpoint_dir=checkpoint_dir, resume=args.resume,
                              progress_bar=not args.no_progress,
                              **dict(hyper, num_workers=workers))
    except _RunMismatch as exc:
        raise CLIError(f"{exc} (--overwrite starts over, without the finished "
                       "epochs.)") from None
    except KeyboardInterrupt as exc:
        print(f"deepblur train: {str(exc) or 'interrupted'}; the finished epochs "
              f"are in {checkpoint_dir}: continue with `{_resume_command(args)}`.",
              file=sys.stderr)
        return 130
    network_params = {k: v for k, v in config.items()
                      if k not in ("spectral_images", "crop_network", "output",
                                   "checkpoint_dir")}
    if stages.done("network", network_params):
        print(f"network: finished and saved in {output} by the interrupted run "
              "(its head, held-out error and support calibration are not "
              "redone)")
    else:
        code = _finish_network(net, setting, images, config, hp, n_head,
                               head_batch, train_noise, workers, n_test_images,
                               n_support, mean_gamma, output, checkpoint_dir, args)
        if code:
            return code
        stages.mark("network", network_params)
    if n_spectral:
        spectral_seed = config.get("seed")
        spectral_params = dict(spectral_images=n_spectral, n_test_images=n_test_images,
                               seed=spectral_seed)
        if stages.done("spectral", spectral_params):
            print(f"spectral regressor: finished and saved in {output} by the "
                  "interrupted run")
        else:
            try:
                _train_spectral(setting, images, n_spectral, n_test_images,
                                mean_gamma, output, progress=not args.no_progress,
                                seed=spectral_seed)
            except KeyboardInterrupt as exc:
                print(f"deepblur train: spectral regressor: "
                      f"{str(exc) or 'interrupted'}; the network is saved in "
                      f"{output}: `{_resume_command(args)}` fits the spectral "
                      "regressor again without training the network again.",
                      file=sys.stderr)
                return 130
            stages.mark("spectral", spectral_params)
    if crop_params is not None:
        # its resolved parameters: the table's, and those it takes from the
        # main config
        crop_record = dict(crop_params, n_test_images=n_test_images,
                           support_images=n_support)
        crop_checkpoints = checkpoint_dir / "crop_network"
        if stages.done("crop_network", crop_record):
            print(f"crop network: finished and saved in {output} by the "
                  "interrupted run")
        else:
            try:
                _train_crop_network(setting, images, crop_params, n_test_images,
                                    mean_gamma, output, crop_checkpoints, args,
                                    n_support)
            except _RunMismatch as exc:
                # --overwrite would train the saved network again as well
                raise CLIError(
                    f"crop network: {exc} To start the crop network alone over "
                    f"(the network saved in {output} is kept), delete "
                    f"{crop_checkpoints} and run `{_resume_command(args)}` "
                    "again.") from None
            except KeyboardInterrupt as exc:
                print(f"deepblur train: crop network: {str(exc) or 'interrupted'}; "
                      f"the network is saved in {output}, the finished epochs of "
                      f"the crop network are in {crop_checkpoints}: continue with "
                      f"`{_resume_command(args)}`.", file=sys.stderr)
                return 130
            stages.mark("crop_network", crop_record)
    print(f"model: {output} (use it with --model {output})")
    return 0


def _initial_network(path, hp, n_components):
    """The model of a config's ``init_model``, loaded, whose network has the
    training's architecture (checked before anything is trained or
    removed; train_regressor would find out only when it loads the
    weights)."""
    from deepblur.pretrained import load_model

    try:
        source = load_model(path)
    except (OSError, ValueError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CLIError(f"init_model {str(path)!r} cannot be loaded: {first}") \
            from None
    params = source.regressor.get_params()
    differ = [f"{name}={params.get('module__' + name)!r} (this training: "
              f"{hp[name]!r})"
              for name in ("width", "depth", "stem_stride", "head", "input_norm")
              if params.get("module__" + name, hp[name]) != hp[name]]
    K = int(source.basis.kernels_.shape[0])
    if K != n_components:
        differ.append(f"K={K} (this setting: {n_components})")
    if differ:
        raise CLIError(
            f"the network of init_model {str(path)!r} does not match this "
            f"training's: {', '.join(differ)}; give the config its values "
            "(or train from random weights without init_model).")
    return source


def _trained_images(hp):
    """The images a training of hyper-parameters ``hp`` draws: whole batches,
    at least one per epoch (train_regressor's ``n_batches``)."""
    per_epoch = max(1, int(hp["n_images"]) // (hp["batch_size"] * hp["epochs"]))
    return int(per_epoch * hp["batch_size"] * hp["epochs"])


def _resume_command(args):
    """The command line that resumes this training: its config and, when
    one was given, its ``-o`` (without it, another output and checkpoint
    directory), quoted for a shell."""
    import shlex

    words = ["deepblur", "train", str(args.config)]
    if args.output:
        words += ["-o", str(args.output)]
    return " ".join(shlex.quote(w) for w in [*words, "--resume"])


def _finish_network(net, setting, images, config, hp, n_head, head_batch,
                    train_noise, workers, n_test, n_support, mean_gamma, output,
                    checkpoint_dir, args):
    """`deepblur train`'s network after its epochs: its blur-statistics head,
    saved, then its held-out error and support calibration (None, or the exit
    code of an interruption)."""
    from deepblur.pretrained import add_feature_head, save_model

    extra = dict(n_train_images=_trained_images(hp),
        config={k: v for k, v in config.items() if k != "setting"})
    if n_head:
        start = time.perf_counter()
        redo = (f"the trained epochs are in {checkpoint_dir}: "
                f"`{_resume_command(args)}` fits the head again without "
                "retraining.")
        try:
            net = add_feature_head(setting, images, net, n_images=n_head,
                                   batch_size=head_batch, noise_std=train_noise,
                                   num_workers=workers,
                                   random_state=hp["random_state"] + 1)
        except KeyboardInterrupt as exc:
            print(f"deepblur train: {str(exc) or 'interrupted'} while fitting the "
                  f"blur-statistics head; {redo}", file=sys.stderr)
            return 130
        except Exception:
            print(f"deepblur train: fitting the blur-statistics head failed; "
                  f"{redo}", file=sys.stderr)
            raise
        seconds = time.perf_counter() - start
        print(f"blur-statistics head: fitted on {net.feature_head_n_images_} "
              f"fresh images in {seconds:.0f} s (ridge alpha "
              f"{net.feature_head_alpha_:g})")
        extra["feature_head"] = dict(n_images=int(net.feature_head_n_images_),
                                     alpha=float(net.feature_head_alpha_),
                                     seconds=round(seconds, 1))
    def checks():
        if n_test > 0:
            err, base_err = (e["operator"].mean() for e in _held_out_errors(
                net, setting, n_test, setting["params"]["boundary"], mean_gamma,
                123))
            print(f"held-out relative operator error: {100 * err:.2f} % "
                  f"(mean-gamma baseline {100 * base_err:.2f} %)")
            extra.update(test_operator_error=float(err),
                         test_baseline_error=float(base_err))
        drawn = {} if train_noise is None else dict(noise_std=train_noise)
        _calibrate_support(net, setting, images, n_support, "network", seed=126,
                           **drawn)

    def save():
        save_model(output, net, setting, noise_std=train_noise, extra=extra)
        _remove_companions(output, setting["basis"])

    _save_then_check(save, checks, "the network", output, n_test, n_support)
    return None


class _Stages:
    """What `deepblur train` finished, recorded beside its checkpoint
    (``stages.json``), so that ``--resume`` goes on from the first stage not
    finished instead of fitting again what is saved.

    A stage (the network with its head and checks, the spectral regressor, the
    crop network) counts as finished when it was recorded after its last save,
    with the config keys that shape it, and its files in the output directory
    are still those it saved (SHA-256): a changed key, another output
    directory or a file replaced since does it again. A run that does not
    resume forgets the record.
    """

    FILE = "stages.json"
    FILES = dict(network=("model.safetensors", "model.json"),
                 spectral=("spectral.safetensors", "spectral.json"),
                 crop_network=("crop_network.safetensors", "crop_network.json"))

    def __init__(self, checkpoint_dir, output, *, resume):
        self.path = Path(checkpoint_dir) / self.FILE
        self.output = Path(output)
        if not resume:
            self.path.unlink(missing_ok=True)

    def _digests(self, stage):
        from deepblur.pretrained._io import _sha256

        digests = {}
        for name in self.FILES[stage]:
            f = self.output / name
            if not f.is_file():
                return None
            digests[name] = _sha256(f)
        return digests

    def _read(self):
        try:
            record = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    @staticmethod
    def _plain(params):
        # as JSON keeps it (tuples become lists), to compare with the record
        return json.loads(json.dumps(params, default=str))

    def done(self, stage, params):
        entry = self._read().get(stage)
        return (isinstance(entry, dict)
                and entry.get("output") == str(self.output.resolve())
                and entry.get("params") == self._plain(params)
                and entry.get("files") is not None
                and entry.get("files") == self._digests(stage))

    def mark(self, stage, params):
        record = self._read()
        record[stage] = dict(output=str(self.output.resolve()),
                             params=self._plain(params),
                             files=self._digests(stage))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(self.path)


def _remove_companions(output, basis):
    """Delete the spectral regressor and crop network that a new network in
    ``output`` replaced the model of, unless they record the new network's
    basis (a retrain of the same setting): fitted in another basis, or in
    one they do not record, they would be read with the new one. This run
    fits again those its config asks for."""
    from deepblur.pretrained._io import (
        _CROP_META,
        _CROP_WEIGHTS,
        _META,
        _SPECTRAL_META,
        _SPECTRAL_WEIGHTS,
        _WEIGHTS,
        _read_pair,
        companion_mismatch,
    )

    model_meta, tensors = _read_pair(output, _WEIGHTS, _META, "")
    rays = tensors["cone.rays"].numpy()
    for weights, meta in ((_SPECTRAL_WEIGHTS, _SPECTRAL_META),
                          (_CROP_WEIGHTS, _CROP_META)):
        files = [Path(output) / name for name in (weights, meta)]
        if not any(f.exists() for f in files):
            continue
        try:
            record = json.loads(files[1].read_text())
        except (OSError, ValueError):
            record = None
        why = ("unreadable" if not isinstance(record, dict)
               or "basis_gram" not in record
               else companion_mismatch(record, model_meta, rays, basis))
        if why is None:
            continue            # fitted in this very basis and setting: valid
        for f in files:
            f.unlink(missing_ok=True)
        print(f"removed {weights} and {meta}: "
              + ("fitted in the basis or setting of the model this one replaced"
                 if why != "unreadable" else "they do not record the basis they "
                 "were fitted in") + f" in {output}")


def _image_count(config, key, default):
    """A config's number of images under ``key`` (a non-negative integer)."""
    n = config.get(key, default)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise CLIError(f"{key} must be a non-negative integer; got {n!r}.")
    return n


def _config_input_norm(value, where):
    """A config's ``input_norm``: ``"none"`` (TOML has no null) is None."""
    from deepblur.nets.resnet import INPUT_NORMS

    if value is None or value == "none":
        return None
    if value not in INPUT_NORMS:
        names = ", ".join(repr(v) for v in INPUT_NORMS if v is not None)
        raise CLIError(f"{where}input_norm must be one of {names} or 'none' (the "
                       f"image alone); got {value!r}.")
    return value


def _config_mixed_precision(value, where):
    """A config's ``mixed_precision``: ``"none"`` (TOML has no null) or a JSON
    null is None."""
    if value is None or value == "none":
        return None
    if value != "bf16":
        raise CLIError(f"{where}mixed_precision must be 'bf16' or 'none' "
                       f"(float32); got {value!r}.")
    return value


def _crop_network_params(config, hyper, name, image_shape=None):
    """The ``crop_network`` table of a config, checked, as the keyword
    arguments of train_crop_network (None without the table)."""
    from deepblur.pretrained import CROP_NETWORK_DEFAULTS
    from deepblur.pretrained._train import check_crop_network_params

    table = config.get("crop_network")
    if table is None:
        return None
    if not isinstance(table, dict):
        raise CLIError(f"'crop_network' in {Path(name).name} must be a table of "
                       f"parameters; got {table!r}.")
    known = set(CROP_NETWORK_DEFAULTS) - {"random_state"} | {"seed",
                                                             "blur_features"}
    unknown = sorted(set(table) - known)
    if unknown:
        raise CLIError(f"unknown key(s) {', '.join(unknown)} in crop_network; "
                       f"known keys: {', '.join(sorted(known))}.")
    params = {k: v for k, v in hyper.items()     # the main training's
              if k in ("device", "num_workers", "mixed_precision")}
    params.update({("random_state" if k == "seed" else k):
                   (tuple(v) if k == "noise_std" and isinstance(v, list) else v)
                   for k, v in table.items()})
    if "input_norm" in params:
        params["input_norm"] = _config_input_norm(params["input_norm"],
                                                  "crop_network: ")
    if "mixed_precision" in table:
        params["mixed_precision"] = _config_mixed_precision(
            params["mixed_precision"], "crop_network: ")
    try:
        shape = {} if image_shape is None else {"image_shape": image_shape}
        check_crop_network_params(**dict(
            dict(stem_stride=CROP_NETWORK_DEFAULTS["stem_stride"]), **params),
            **shape)
    except ValueError as exc:
        raise CLIError(f"crop_network: {exc}") from None
    params["num_workers"] = _command_workers(params)     # for its own device
    return params


def _command_workers(params):
    """The ``num_workers`` of a training of this command: the given one, or
    by default :func:`~deepblur.pretrained.default_num_workers` for the
    training's own device, with a CPU worker under every start method: the
    command's entry points (``deepblur``, ``python -m deepblur``) guard their
    main module, which a spawned worker imports again (a script calling
    :func:`main` should guard its own)."""
    from deepblur._validation import resolve_device
    from deepblur.pretrained._train import default_num_workers

    if params.get("num_workers") is not None:
        return params["num_workers"]
    return default_num_workers(resolve_device(params.get("device", "auto")),
                               guarded_main=True)


def _train_crop_network(setting, images, params, n_test, mean_gamma, output,
                        checkpoint_dir, args, n_support=0):
    """`deepblur train` with a ``crop_network`` table: the network for real
    images, saved beside the network (resumable from its checkpoints)."""
    from deepblur.pretrained import (
        CROP_NETWORK_DEFAULTS,
        save_crop_network,
        train_crop_network,
    )

    full = dict(CROP_NETWORK_DEFAULTS, **params)
    resume = bool(args.resume) and (checkpoint_dir / "history.json").exists()
    if args.resume and not resume:
        # no finished epoch (history.json is written last): what a run
        # stopped in its first epoch, or killed while writing it, leaves;
        # the crop network starts over, as train_crop_network would not
        from deepblur.pretrained._train import remove_checkpoint

        remove_checkpoint(checkpoint_dir)
    noise = full["noise_std"]
    print(f"crop network: {full['n_images']} windows of larger scenes (noise "
          + (f"{noise[0]}-{noise[1]}" if isinstance(noise, tuple) else f"{noise}")
          + f", point sources {full['point_fraction']:.0%} of the pool), then "
          f"its branch on {full['head_images']}; checkpoints in {checkpoint_dir}")
    net = train_crop_network(setting, images, checkpoint_dir=checkpoint_dir,
                             resume=resume, progress_bar=not args.no_progress,
                             **params)
    extra = dict(training=dict(
        {k: list(v) if isinstance(v, tuple) else v for k, v in full.items()},
        script="deepblur train"))

    def checks():
        if n_test > 0:
            extra["test_errors"] = _window_test_errors(
                net, "crop network", setting, n_test, mean_gamma, 125)
        _calibrate_support(net, setting, images, n_support, "crop network",
                           noise_std=noise, boundary="crop",
                           point_fraction=full["point_fraction"], seed=127)

    _save_then_check(
        lambda: save_crop_network(output, net, noise_std=noise, extra=extra),
        checks, "the crop network", output, n_test, n_support)


def _save_then_check(save, checks, name, output, n_test, n_support,
                     redo="the finished epochs are not trained again"):
    """Save a trained regressor, run its checks, and save it again with them.

    The held-out error and the support calibration take a while (drawing
    thousands of images) after training: the regressor is on disk before they
    start, so that an error or an interrupt there loses no training. The
    message then says what the saved copy lacks, and ``redo`` what
    ``--resume`` does again.
    """
    save()
    if not (n_test or n_support):
        return
    try:
        checks()
    except BaseException as exc:
        lacks = " and ".join(
            w for w, n in (("its held-out error", n_test),
                           ("a support_tolerance", n_support)) if n)
        what = ("interrupted" if isinstance(exc, KeyboardInterrupt)
                else f"failed ({type(exc).__name__})")
        print(f"deepblur train: the checks after training {what}; {name} is "
              f"saved in {output}, without {lacks}: rerun with --resume to "
              f"redo them ({redo}).", file=sys.stderr)
        raise
    save()


_SUPPORT_IMAGES = 4096


def _calibrate_support(net, setting, images, n_images, name, *, seed, **drawn):
    """Give a trained network its sampler (unprojected) and a support_tolerance
    calibrated on ``n_images`` fresh images drawn as its training images were
    (``drawn``: its noise, boundary and share of point sources when not the
    setting's; nothing when ``n_images`` is 0)."""
    from deepblur.pretrained import SUPPORT_QUANTILE, calibrate_support_tolerance
    from deepblur.pretrained._train import support_calibration_images

    if not n_images:
        return
    X = support_calibration_images(setting, images, n_images, random_state=seed,
                                   **drawn)
    net.set_params(sampler=setting["sampler"], project=False)
    tolerance = calibrate_support_tolerance(net, X)
    net.set_params(support_tolerance=tolerance)
    print(f"{name}: support_tolerance {tolerance:.3g} (the "
          f"{100 * SUPPORT_QUANTILE:g}th percentile of the distance of its "
          f"estimates to the sampler's support on {n_images} fresh training-like "
          "images)")


def _held_out_errors(regressor, setting, n_test, boundary, mean_gamma, seed):
    """Relative errors (dicts of arrays) of ``regressor`` and of the mean gamma
    on ``n_test`` held-out natural images of the setting."""
    from deepblur.datasets import make_blurred_images, natural_image_split
    from deepblur.pretrained import relative_errors

    basis = setting["basis"]
    X, y = make_blurred_images(natural_image_split()[1], basis, setting["sampler"],
                               n_test, noise_std=setting["params"]["noise_std"],
                               boundary=boundary, random_state=seed)
    return (relative_errors(y, regressor.predict(X), basis.gram_),
            relative_errors(y, np.tile(mean_gamma, (len(y), 1)), basis.gram_))


def _train_spectral(setting, images, n_images, n_test, mean_gamma, output,
                    progress, seed=None):
    """`deepblur train` with ``spectral_images``: the regressor for real images
    (seeded by the config's ``seed`` when it has one)."""
    from deepblur.pretrained import (
        SPECTRAL_DEFAULTS,
        save_spectral,
        train_spectral_regressor,
    )

    params = dict(SPECTRAL_DEFAULTS, n_images=n_images)
    if seed is not None:
        params["random_state"] = seed
    print(f"spectral regressor: {n_images} windows of larger scenes (noise "
          f"{params['noise_std'][0]}-{params['noise_std'][1]}, point sources "
          f"{params['point_fraction']:.0%} of the pool)")
    spectral = train_spectral_regressor(setting, images, verbose=int(progress),
                                        **params)
    extra = dict(training=dict(params, script="deepblur train"))

    def checks():
        if n_test > 0:
            extra["test_errors"] = _window_test_errors(
                spectral, "spectral regressor", setting, n_test, mean_gamma, 124)

    _save_then_check(
        lambda: save_spectral(output, spectral, noise_std=params["noise_std"],
                              boundary=params["boundary"], extra=extra),
        checks, "the spectral regressor", output, n_test, 0,
        redo="the spectral regressor is fitted again, the networks' finished "
             "epochs are not trained again")


def _window_test_errors(regressor, name, setting, n_test, mean_gamma, seed):
    """Print and return (as stored in the JSON) a regressor's errors on
    held-out windows of larger scenes (crop boundary)."""
    err, base = _held_out_errors(regressor, setting, n_test, "crop", mean_gamma,
                                 seed)
    print(f"{name}, held-out windows: relative operator error "
          f"{100 * err['operator'].mean():.2f} % (mean-gamma baseline "
          f"{100 * base['operator'].mean():.2f} %)")
    return {"natural": {k: float(v.mean()) for k, v in err.items()}}


def _read_psf_file(path):
    path = _check_exists(path, "PSF file")
    suffix = path.suffix.lower()
    if suffix not in _PSF_READ:
        raise CLIError(f"unsupported PSF file format {suffix or '(none)'!r} for "
                       f"{path.name}: use .npy or .tif/.tiff stacks.")
    from deepblur.datasets.images import _ImageCountError, _main_tiff_series

    try:
        if suffix == ".npy":
            stack = np.load(path, allow_pickle=False)
        else:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                # a stack of PSFs is one series; several (fields appended
                # one by one) are refused rather than all but one dropped
                stack = _main_tiff_series(
                    tif, path.name,
                    "pass one PSF field (P, kh, kw) per file, or all fields as "
                    "one (n, P, kh, kw) array (a single write).").asarray()
    except _ImageCountError as exc:
        raise CLIError(str(exc)) from None
    except Exception as exc:
        raise CLIError(f"could not read {path.name} ({type(exc).__name__}: "
                       f"{exc}).") from None
    stack = np.asarray(stack)
    if stack.dtype.kind not in "uif":
        raise CLIError(f"{path.name} must hold numbers; got dtype {stack.dtype}.")
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim == 3:
        stack = stack[None]
    if stack.ndim != 4:
        raise CLIError(
            f"{path.name} must hold a stack of PSFs (P, kh, kw) (or several fields "
            f"(n, P, kh, kw)); got shape {stack.shape}."
        )
    stack = stack.astype(np.float64)
    if not np.isfinite(stack).all():
        raise CLIError(f"{path.name} has NaN or Inf values.")
    return stack


def cmd_basis(args):
    """Fit a product-convolution basis from bead PSF fields."""
    from deepblur import ProductConvolutionBasis
    from deepblur.plotting import plot_components
    from deepblur.pretrained import save_basis

    R, C = args.grid
    H, W = args.image_shape
    out = Path(args.output)
    if not out.parent.exists():
        raise CLIError(f"the folder of the output {str(out)!r} does not exist.")
    if out.exists() and not out.is_dir():
        raise CLIError(f"the output {str(out)!r} is a file; give a directory.")
    if args.figure is not None:
        figure = _check_figure_path(args.figure, args.psf_files)
    else:
        figure = out / "components.png"
    fields = []
    for name in args.psf_files:
        stack = _read_psf_file(name)
        if stack.shape[1] != R * C:
            raise CLIError(
                f"{Path(name).name} holds {stack.shape[1]} PSFs but --grid {R} {C} "
                f"needs {R * C} (one per grid cell, row-major)."
            )
        if fields and stack.shape[2:] != fields[0].shape[2:]:
            raise CLIError(
                f"{Path(name).name} has PSFs of shape {stack.shape[2:]} but "
                f"{Path(args.psf_files[0]).name} has {fields[0].shape[2:]}: all "
                "PSFs must have the same shape."
            )
        fields.append(stack)
    fields = np.concatenate(fields).reshape((-1, R, C) + fields[0].shape[2:])
    basis = ProductConvolutionBasis(args.n_components, image_shape=(H, W),
                                    boundary=args.boundary,
                                    random_state=0).fit(fields)
    print(f"{len(fields)} PSF field(s) on a {R}x{C} grid, PSFs "
          f"{fields.shape[3]}x{fields.shape[4]}, K={args.n_components}")
    print(f"relative reconstruction error: {100 * basis.reconstruction_error_:.2f} %")
    save_basis(out, basis, extra=dict(sources=[str(p) for p in args.psf_files]))
    _use_agg()
    _save_figure(plot_components(basis), figure)
    print(f"basis: {out} (basis.safetensors, basis.json)")
    print(f"figure: {figure}")
    return 0


# ---------------------------------------------------------------------- parser
def _add_model(p):
    p.add_argument("--model", metavar="DIR", default=None,
                   help="model directory written by save_model or `deepblur train` "
                        "(default: the model shipped with deepblur)")
    p.add_argument("--project", action="store_true",
                   help="project the estimated gamma on the set the model's "
                        "sampler draws from (the network and spectral "
                        "estimators): closer to the truth only when the blur "
                        "is a draw of that sampler, as in the demo's "
                        "simulation; farther from it for operators outside "
                        "the set, hence off by default")


def _device(value):
    import torch

    if value == "auto":
        return value
    try:
        torch.device(value)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"must be a torch device such as cpu, cuda, cuda:1 or auto; got "
            f"{value!r}") from None
    return value


def _add_estimator(p, default):
    p.add_argument("--estimator",
                   choices=("auto", "network", "crop_network", "spectral",
                            "points"),
                   default=default,
                   help="which of the model's blur estimators: the network "
                        "(trained on zero-boundary simulations, the paper's "
                        "protocol), crop_network (a network trained on windows "
                        "of larger scenes: the one for real images and tiles), "
                        "spectral (a ridge on local spectra trained on such "
                        "windows), or points (PSFs fitted on detected point "
                        "sources: images of beads or single molecules on a "
                        "dark field or a constant offset); auto (default for "
                        "estimate and deblur): crop_network when the model "
                        "holds one, else spectral when it holds one and its "
                        "network was trained with a zero boundary")


def _add_tiling(p):
    p.add_argument("--tile-stride", type=_positive_int, default=None, metavar="S",
                   help="images larger than the model's input are cut into "
                        "overlapping tiles of its input size, S pixels apart "
                        "(default: half a tile); one operator per tile, blended "
                        "by a smooth partition of unity (with a per-tile --gamma "
                        "file, the file's tiles)")


def _add_max_iter(p):
    p.add_argument("--max-iter", type=_positive_int, default=500, metavar="N",
                   help="cap on the deblurring solver's iterations (default: 500)")


def _add_tol(p):
    p.add_argument("--tol", type=_tol, default=1e-5, metavar="T",
                   help="relative change of the objective at which the solver "
                        "stops (default: 1e-5); 0 runs to --max-iter or until "
                        "the objective stalls, without a warning")


def _add_inner_iter(p):
    p.add_argument("--inner-iter", type=_positive_int, default=10, metavar="N",
                   help="iterations of the total-variation proximal step per "
                        "solver iteration (default: 10); raise it when the "
                        "solver warns that the objective no longer decreased")


def _add_device(p):
    p.add_argument("--device", type=_device, default="cpu",
                   help="torch device: cpu (default), cuda or auto")


def build_parser():
    """The argument parser of the ``deepblur`` command."""
    from deepblur import __version__

    parser = argparse.ArgumentParser(
        prog="deepblur",
        description="Blind identification of space-varying blur and deblurring "
                    "(DeepBlur).",
        epilog="Run `deepblur COMMAND --help` for the options of a command.")
    parser.add_argument("--version", action="version",
                        version=f"deepblur {__version__}")
    parser.add_argument("--threads", type=_positive_int, default=1,
                        help="torch CPU threads (default: 1; the images are small, "
                             "and several threads thrash on a busy machine)")
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback of errors (for bug reports)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "demo", help="blur a bundled image, estimate the blur and deblur (Fig. 3)",
        description="Paper Fig. 3 in seconds: draw an operator from the model's "
                    "sampler, blur a bundled image and add noise at its setting's "
                    "level (the test noise of the network's protocol, the "
                    "training noise of the crop network and the spectral "
                    "regressor), estimate the operator (with the network by "
                    "default, see --estimator), deblur "
                    "with total variation (with the estimate, and with the true "
                    "operator for reference), print the relative operator error "
                    "and the SNRs, and save the figure.")
    p.add_argument("-o", "--output", default="deepblur_demo.png",
                   help="figure file (default: deepblur_demo.png)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the operator and the noise (default: 0)")
    p.add_argument("--image", default="camera",
                   help="bundled image (default: camera, held out of training); "
                        "one of camera, coffee, flower (held out) or any other "
                        "skimage/sklearn sample: astronaut, brick, chelsea, coins, "
                        "grass, gravel, hubble_deep_field, moon, motorcycle_left, "
                        "motorcycle_right, rocket, china, cell, ihc")
    p.add_argument("--lam", type=_lam, default="auto",
                   help="weight of the data term (default: auto, from the noise "
                        "level)")
    _add_max_iter(p)
    _add_tol(p)
    _add_inner_iter(p)
    _add_model(p)
    _add_estimator(p, "network")
    _add_device(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "estimate", help="estimate the blur operator (gamma) of an image",
        description="Estimate the coefficients gamma of the blur operator of a "
                    "TIFF/PNG image of at least the model's input shape "
                    "(larger images: one operator per overlapping tile, see "
                    "--tile-stride). "
                    + _ESTIMATE_CONVENTION)
    p.add_argument("image", metavar="IMAGE", help="blurry image (TIFF or PNG)")
    _add_model(p)
    p.add_argument("-o", "--output", metavar="GAMMA",
                   help="save gamma_hat (.json with metadata, or .npy; for an "
                        "image larger than the model's input, only the .json "
                        "keeps the tile grid that deblur --gamma needs)")
    p.add_argument("--figure", metavar="FIG",
                   help="save the estimated operator on a Dirac comb (.png, .pdf)")
    _add_tiling(p)
    _add_estimator(p, "auto")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser(
        "deblur", help="deblur an image (blind, or with a given operator)",
        description="Deblur a TIFF/PNG image of at least the model's input "
                    "shape (larger ones with a tiled, spatially varying "
                    "operator, solved in blocks of at most --max-pixels) by "
                    "solving min_u R(u) + lam/2 ||H u - y||^2 (with u extended "
                    "beyond the image's border, see --boundary) with H "
                    "estimated by the model (blind) or read from --gamma. "
                    "8/16-bit integer and float images; the output keeps the "
                    "input's dtype (integers rounded and clipped to the dtype's "
                    "range; --output-dtype float32 keeps every value). "
                    + _CONVENTION)
    p.add_argument("image", metavar="IMAGE", help="blurry image (TIFF or PNG)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="deblurred image (.tif or .png; float images need .tif)")
    p.add_argument("--lam", type=_lam, default="auto",
                   help="weight of the data term for the image scaled to the "
                        "model's training mean (0.5 for the shipped model; "
                        "default: auto, from the noise level)")
    p.add_argument("--regularization", choices=("tv", "l1"), default="tv",
                   help="total variation (default; natural and cell images) or "
                        "l1 (sparse point sources)")
    p.add_argument("--positive", action="store_true",
                   help="constrain the deblurred image to be non-negative")
    p.add_argument("--output-dtype", choices=("input", "float32"), default="input",
                   help="input (default): the input's dtype, integers rounded "
                        "and clipped to its range (ringing below 0 or above "
                        "the top is lost, which changes the mean); float32: "
                        "every value kept, in the input's units (.tif only)")
    p.add_argument("--boundary", choices=("unknown", "model"), default="unknown",
                   help="unknown (default): the image is a window on a larger "
                        "scene, whose unknown surrounding (half a kernel wide) is "
                        "estimated with it and dropped; model: the basis's "
                        "boundary model (zero: a dark surrounding, as in "
                        "simulations)")
    p.add_argument("--gamma", metavar="FILE",
                   help="operator coefficients (.json or .npy from `deepblur "
                        "estimate`; for a large image its per-tile .json) "
                        "instead of the blind estimate")
    _add_tiling(p)
    p.add_argument("--max-pixels", type=_positive_int, default=None,
                   metavar="N",
                   help="large images: most pixels per deblurring solve (memory "
                        "bound; with --boundary unknown the image extended by "
                        "half a kernel per side); larger images are solved in "
                        "overlapping blocks (default: "
                        "deepblur.tiling.DEFAULT_MAX_PIXELS)")
    _add_max_iter(p)
    _add_tol(p)
    _add_inner_iter(p)
    _add_model(p)
    _add_estimator(p, "auto")
    _add_device(p)
    p.set_defaults(func=cmd_deblur)

    from deepblur.pretrained._train import TRAINING_DEFAULTS

    defaults = dict(TRAINING_DEFAULTS, seed=TRAINING_DEFAULTS["random_state"])
    keys = "\n".join(
        f"  {k:<15} {v}" + (f" (default {defaults[k]!r})" if k in defaults else "")
        for k, v in _TRAIN_KEYS.items())
    p = sub.add_parser(
        "train", help="train a blur regressor from a TOML/JSON config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a ResNet blur regressor on fresh simulated data\n"
                    "(deepblur.pretrained.train_regressor) and write it with\n"
                    "save_model. The parameters, optimizer and history are\n"
                    "checkpointed after every epoch; --resume continues from the\n"
                    "last one (refused if the parameters changed). Missing\n"
                    "keys take the shipped network's recipe (TRAINING_DEFAULTS,\n"
                    "seed 0) but its noise range: set noise_std = [0.0, 0.02]\n"
                    "for that; relative paths are relative to the config file.\n\n"
                    f"config keys:\n{keys}",
        epilog="example (tiny.toml):\n"
               "  n_images = 2048\n  epochs = 2\n  output = \"tiny_model\"\n"
               "  [setting]\n  image_shape = [64, 64]\n  kernel_shape = [15, 15]\n"
               "  grid_shape = [8, 8]\n  n_components = 8\n  n_rays = 16")
    p.add_argument("config", metavar="CONFIG", help="config file (.toml or .json)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint (finished epochs kept)")
    p.add_argument("--overwrite", action="store_true",
                   help="start over even if the checkpoint directory holds a "
                        "checkpoint, and replace the model in the output "
                        "directory (refused without it)")
    p.add_argument("-o", "--output", metavar="DIR",
                   help="model directory (overrides the config's output)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "basis", help="fit a product-convolution basis from bead PSF fields",
        description="Fit a ProductConvolutionBasis from PSF fields measured on a "
                    "regular R x C grid of the field of view: each file holds one "
                    "field, a stack (P, kh, kw) with P = R*C PSFs in row-major "
                    "order (.npy or TIFF), measured at the grid cells' centres. "
                    "The PSFs are taken as given: subtract the camera's dark "
                    "level and divide each by its bead's brightness (e.g. to "
                    "unit sum) first, or their differences are fitted as "
                    "changes of the blur. "
                    "Writes basis.safetensors + basis.json (no pickle; "
                    "deepblur.pretrained.load_basis reads them) and a figure of "
                    "the kernels and maps.")
    p.add_argument("psf_files", nargs="+", metavar="PSF_FILE",
                   help="PSF field stacks (.npy, .tif)")
    p.add_argument("--grid", nargs=2, type=_positive_int, required=True,
                   metavar=("R", "C"), help="rows and columns of the PSF grid")
    p.add_argument("--image-shape", nargs=2, type=_positive_int, required=True,
                   metavar=("H", "W"), help="shape of the images")
    p.add_argument("-K", "--n-components", type=_positive_int, required=True,
                   metavar="K", help="number of kernel/map pairs")
    p.add_argument("-o", "--output", required=True, metavar="DIR",
                   help="output directory of the basis")
    p.add_argument("--boundary", choices=("zero", "periodic"), default="zero",
                   help="boundary model of the convolutions (default: zero)")
    p.add_argument("--figure", metavar="FIG",
                   help="components figure (default: DIR/components.png)")
    p.set_defaults(func=cmd_basis)
    return parser


def main(argv=None):
    """Run the ``deepblur`` command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit code: 0 on success, 1 for an error the user can act on (one line
        on stderr), 2 for a usage error, 130 for an interrupted training.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:          # --help, --version, usage errors
        return int(exc.code or 0)
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        if getattr(args, "device", None) not in (None, "auto"):
            from deepblur._validation import resolve_device

            # one absent here is refused before any work, not in the solver
            resolve_device(args.device)
        return args.func(args)
    except (CLIError, FileNotFoundError, ValueError, OSError) as exc:
        if args.traceback:
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"deepblur {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.traceback:
            raise
        print(f"deepblur {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)     # main() may be called in-process
