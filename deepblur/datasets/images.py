"""Images that work offline: bundled natural and microscopy images, user files.

Nothing here downloads. Natural images come from the sample files that
scikit-image and scikit-learn install with themselves; microscopy-like images
from scikit-image's bundled microscopy files and from simulated point sources.
Every image is returned grayscale, float64, scaled to [0, 1], except by
:func:`read_pixels`, which gives a file's pixels as stored.
"""

from __future__ import annotations

import os
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.utils import check_random_state

from deepblur._validation import check_positive_int_pair, number_pair

__all__ = [
    "MICROSCOPY_IMAGES",
    "NATURAL_IMAGES",
    "NATURAL_TEST_IMAGES",
    "extract_patches",
    "load_image",
    "load_images",
    "load_microscopy_images",
    "load_natural_images",
    "make_dead_leaves",
    "make_point_sources",
    "natural_image_split",
    "read_pixels",
]

# Natural photographs bundled with scikit-image (file names in skimage/data) and
# scikit-learn (sklearn/datasets/images). Synthetic or text images are left out.
NATURAL_IMAGES = {
    "astronaut": ("skimage", "astronaut.png"),
    "brick": ("skimage", "brick.png"),
    "camera": ("skimage", "camera.png"),
    "chelsea": ("skimage", "chelsea.png"),
    "coffee": ("skimage", "coffee.png"),
    "coins": ("skimage", "coins.png"),
    "grass": ("skimage", "grass.png"),
    "gravel": ("skimage", "gravel.png"),
    "hubble_deep_field": ("skimage", "hubble_deep_field.jpg"),
    "moon": ("skimage", "moon.png"),
    "motorcycle_left": ("skimage", "motorcycle_left.png"),
    "motorcycle_right": ("skimage", "motorcycle_right.png"),
    "rocket": ("skimage", "rocket.jpg"),
    "china": ("sklearn", "china.jpg"),
    "flower": ("sklearn", "flower.jpg"),
}
# Held out from training by default: test patches come from images never seen.
NATURAL_TEST_IMAGES = ("camera", "coffee", "flower")
MICROSCOPY_IMAGES = {
    "cell": ("skimage", "cell.png"),
    "ihc": ("skimage", "ihc.png"),
}


def _package_dir(package):
    if package == "skimage":
        import skimage.data

        return Path(skimage.data.__file__).parent
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "images"


#: Image files that :func:`load_image` reads (a folder's other files are
#: skipped by :func:`load_images`).
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".gif")
#: Those :func:`load_images` takes from a folder.
FOLDER_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")

_LUMA = np.array([0.2125, 0.7154, 0.0721])      # skimage's rgb2gray weights


def _to_gray_unit(img, name):
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        img = img[..., :3].astype(np.float64) @ _LUMA
    elif img.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D grayscale or an RGB(A) image; got an array of "
            f"shape {img.shape}."
        )
    img = np.asarray(img, dtype=np.float64)
    if img.size == 0:
        raise ValueError(f"{name} must not be empty; got shape {img.shape}.")
    if not np.isfinite(img).all():
        raise ValueError(f"{name} must contain only finite values; got NaN or Inf.")
    lo, hi = img.min(), img.max()
    if hi == lo:
        return np.zeros_like(img)
    return (img - lo) / (hi - lo)


def read_pixels(path):
    """The pixels of one image file, as stored: a 2-D grayscale array, or an
    ``(H, W, 3)`` RGB one, in the file's dtype.

    TIFF with tifffile (any bit depth, float included; samples stored planar
    or interleaved; size-1 axes dropped; ``MINISWHITE`` grayscale and CMYK
    turned into intensities and RGB), other formats with Pillow (1-bit,
    grayscale+alpha and CMYK images converted).

    A palette (indexed) image whose palette is a display LUT, its luma
    non-decreasing with the index (gray, one hue such as Fiji's "Green",
    "Fire"; to within 1 % of its range), gives its indices, in their dtype:
    they are the measurement, the LUT only displays them (Fiji saves 8-bit
    images with a colour LUT so). In a PNG or GIF the palette must have all
    256 entries (a compacted palette holds the intensities themselves). Any
    other palette (an indexed-colour picture, an inverted LUT) gives its
    colours, as RGB in the palette's dtype.

    An alpha channel is dropped: in a PNG (or other Pillow format) that of
    its mode (``LA``, ``RGBA``); in a TIFF only samples that the file marks
    as alpha (``ExtraSamples`` associated or unassociated alpha). Three
    samples are colour only in an RGB (or YCbCr, CMYK) TIFF; a TIFF's other
    samples are the channels of a multi-channel image (fluorescence channels
    stored as samples), refused like a stack of channels.

    A file whose ``Orientation`` asks for a rotation or a flip (phones save
    upright photos so) is turned as viewers show it, so that what is
    deblurred and written is the picture as seen (a note says so): the EXIF
    tag of a file read with Pillow (JPEG, PNG...), the TIFF tag (274) of a
    TIFF, whose pixel size (``resolution``, OME's ``PhysicalSizeX``/``Y``)
    then follows its axes.

    Stacks and animations are refused (one image per file), and so is a TIFF
    holding several images (OME-TIFF positions, images appended one after
    another: separate series), naming their count and shapes;
    reduced-resolution copies that the file marks as such (thumbnails,
    previews, pyramid levels) are passed over for the full-resolution image.
    Files that cannot be read are refused, naming them.
    """
    return _read_pixels(path)[0]


def _read_pixels(path):
    """:func:`read_pixels`, and what a caller may report or carry to an
    output: a dict with ``notes`` (lines on how the file was read, such as
    a palette taken as indices) and, for a TIFF, ``tiff``: its pixel size
    as :func:`tifffile.imwrite` takes it (``resolution``,
    ``resolutionunit``, ``imagej``: the ``unit`` and ``spacing`` of an
    ImageJ file, and ``ome``: the ``PhysicalSizeX``/``Y`` and units of an
    OME-TIFF), the keys it has."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist.")
    if not path.is_file():
        raise ValueError(f"{str(path)!r} is not an image file (a directory?).")
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(
            f"unsupported image format {suffix or '(none)'!r} for {path.name}: "
            "use PNG, TIFF or JPEG (or BMP, GIF)."
        )
    read = _read_tiff if suffix in (".tif", ".tiff") else _read_raster
    info = {"notes": []}
    img = read(path, info)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if not (img.ndim == 2 or (img.ndim == 3 and img.shape[-1] == 3)):
        raise ValueError(f"{path.name} must hold one grayscale or RGB image; got "
                         f"pixels of shape {img.shape}.")
    if img.dtype.kind not in "uif":
        raise ValueError(f"{path.name} must hold integer or float pixels; got "
                         f"dtype {img.dtype}.")
    return img, info


def _unreadable(path, exc):
    return ValueError(f"cannot read {path.name} as an image "
                      f"({type(exc).__name__}: {exc}).")


def _check_png_depth(path):
    """Refuse a 16-bit colour or gray+alpha PNG: Pillow reads it at 8 bits
    per channel, which would lose its precision without a word."""
    try:
        with open(path, "rb") as f:
            head = f.read(26)
    except OSError as exc:
        raise _unreadable(path, exc) from None
    # the signature, then the IHDR chunk: width, height, bit depth, colour type
    if (len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n"
            and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 4, 6)):
        kind = {2: "RGB", 4: "gray+alpha", 6: "RGBA"}[head[25]]
        raise ValueError(
            f"{path.name} is a 16-bit {kind} PNG, which can only be read at 8 "
            "bits per channel here (Pillow): its precision would be lost. Save "
            "it as a 16-bit TIFF, or as a 16-bit grayscale PNG.")


def _read_raster(path, info):
    from PIL import Image

    _check_png_depth(path)          # by the file's signature, not its name
    try:
        with Image.open(path) as im:
            frames = getattr(im, "n_frames", 1)
            # a multi-picture JPEG (MPO: cameras' previews, phones' gain maps)
            # is its first picture; animations and stacks are refused
            if frames > 1 and im.format != "MPO":
                img = None
            else:
                img = _pillow_pixels(im, path.name, info)
    except Exception as exc:            # Pillow's or a codec's refusal
        raise _unreadable(path, exc) from None
    if img is None:
        raise ValueError(f"{path.name} holds {frames} frames (an animation or a "
                         "stack); pass one image per file.")
    return img


def _palette_note(name):
    return (f"{name} is an indexed image with a display LUT (a palette whose "
            "brightness rises with the index): its pixel values are read, not "
            "the LUT's colours.")


def _is_display_ramp(rgb):
    """Whether a palette of ``(n, 3)`` RGB entries is a display LUT of
    intensities (gray, one hue, Fire...): its luma never decreases with the
    index (by more than 1 % of its range, for the rounding of interpolated
    LUTs). An indexed-colour picture's palette is no such ramp."""
    luma = np.asarray(rgb, dtype=np.float64) @ _LUMA
    if luma.size < 2:
        return True
    return bool(np.all(np.diff(luma) >= -0.01 * (luma.max() - luma.min())))


def _pillow_pixels(im, name="image", info=None):
    """An open Pillow image's pixels: grayscale or RGB, in its dtype; a
    palette image's indices where its palette is a full display ramp."""
    fmt, mode = im.format, im.mode
    orientation = im.getexif().get(0x0112, 1)      # EXIF Orientation
    if orientation in range(2, 9):
        from PIL import ImageOps

        im = ImageOps.exif_transpose(im)
        if info is not None:
            info["notes"].append(
                f"{name} is turned as its EXIF orientation ({orientation}) "
                "says, as viewers show it.")
    if mode in ("P", "PA"):
        palette = im.getpalette()           # RGB entries, as many as stored
        # a full 8-bit LUT (a GIF's compacted palette holds the intensities,
        # not a ramp over the indices)
        if palette is not None and len(palette) == 3 * 256 \
                and _is_display_ramp(np.reshape(palette, (-1, 3))):
            if info is not None:
                info["notes"].append(_palette_note(name))
            return np.array(im.getchannel(0))
    if mode in ("1", "LA", "La"):
        im = im.convert("L")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if "transparency" in im.info or mode == "PA"
                        else "RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGB")
    img = np.array(im)
    if img.ndim == 3 and img.shape[-1] in (2, 4):   # RGBA, RGBX: alpha, padding
        img = img[..., :-1]
    if fmt == "PNG" and mode == "I":
        img = img.astype(np.uint16)     # 16-bit grayscale (Pillow < 10.3)
    return img


def _is_reduced(series):
    """Whether tifffile's ``series`` is a reduced-resolution copy of another
    image of its file (a thumbnail or preview: ``NewSubfileType`` bit 0)."""
    try:
        return bool(int(series.keyframe.subfiletype) & 1)
    except (AttributeError, TypeError, ValueError, IndexError):
        return False


class _ImageCountError(ValueError):
    """A TIFF file holds no image, or several where one is read."""


def _main_tiff_series(tif, name, advice=None):
    """The one image of an open ``tifffile.TiffFile``: its only series, less
    the reduced-resolution copies (thumbnails, previews) that the file marks
    as such. The levels of a pyramid are one series, whose full resolution
    ``series.asarray()`` reads. A file holding several images (OME-TIFF
    positions, images appended one after another) is refused, with their
    count and shapes (a ``ValueError`` naming ``name``), and ``advice`` (by
    default: one image per file, and how to split it).
    """
    series = list(tif.series)
    if not series:
        raise _ImageCountError(
            f"{name} holds no image that tifffile can find: the file is damaged "
            "(truncated, or its first page's offset is wrong), or a TIFF "
            "without pages.")
    full = [s for s in series if not _is_reduced(s)] or series[:1]
    if len(full) > 1:
        shapes = ", ".join("x".join(str(n) for n in s.shape) for s in full[:8])
        more = f" and {len(full) - 8} more" if len(full) > 8 else ""
        raise _ImageCountError(
            f"{name} holds {len(full)} separate images (series of shapes "
            f"{shapes}{more}), of which only the first would be read; "
            + (advice or "pass one image per file (split it: save each image "
               "in its own TIFF, e.g. tifffile.imwrite of each "
               "TiffFile(...).series[i].asarray())."))
    return full[0]


def _colour_or_alpha(img, page, axes, name):
    """The samples (last axis) of a TIFF's pixels, less its alpha channels:
    RGB (or YCbCr) colour is 3 samples, any other photometric 1, and the
    samples after them are dropped only where the file marks them as alpha
    (``ExtraSamples`` 1 or 2). Other samples are channels of a
    multi-channel image (fluorescence channels stored as samples): refused
    like a stack of channels, not taken for alpha or mixed as RGB."""
    import tifffile

    n = img.shape[-1]
    colour = 3 if page.photometric in (tifffile.PHOTOMETRIC.RGB,
                                       tifffile.PHOTOMETRIC.YCBCR) else 1
    marks = [int(e) for e in page.extrasamples or ()][-(n - colour):] \
        if n > colour else []
    if n < colour or len(marks) < n - colour or any(m not in (1, 2)
                                                    for m in marks):
        kind = getattr(page.photometric, "name", page.photometric)
        raise ValueError(
            f"{name} holds a stack of {n} images (channels of a {kind} image, "
            f"axes {axes!r}, shape {img.shape}, neither colour nor marked "
            "as alpha); pass a single 2-D image (or split the stack).")
    return img[..., :colour] if colour > 1 else img[..., 0]


def _tiff_pixel_size(tif, page):
    """The pixel size of a TIFF's image, as tifffile.imwrite takes it."""
    meta = {}
    tags = page.tags
    if "XResolution" in tags and "YResolution" in tags:
        meta["resolution"] = (tags["XResolution"].value,
                              tags["YResolution"].value)
        if "ResolutionUnit" in tags:
            meta["resolutionunit"] = int(tags["ResolutionUnit"].value)
    if tif.is_imagej:
        ij = tif.imagej_metadata or {}
        meta["imagej"] = {k: ij[k] for k in ("unit", "spacing") if k in ij}
    if tif.is_ome:
        ome = _ome_pixel_size(tif.ome_metadata, page)
        if ome:
            meta["ome"] = ome
    return meta


def _ome_pixel_size(xml, page):
    """``PhysicalSizeX``/``Y`` and their units in an OME-TIFF's metadata,
    for the image of ``page``'s size (the first such ``Image``): microscopes
    and Bio-Formats record the pixel size there, not in the resolution tags.
    Sizes that are not positive numbers are left out (with their units); an
    empty dict if it has none or cannot be read."""
    import tifffile

    try:
        images = tifffile.xml2dict(xml)["OME"].get("Image", [])
    except Exception:                   # malformed XML: no pixel size
        return {}
    for image in images if isinstance(images, list) else [images]:
        pixels = image.get("Pixels") if isinstance(image, dict) else None
        if (isinstance(pixels, dict) and pixels.get("SizeX") == page.imagewidth
                and pixels.get("SizeY") == page.imagelength):
            size = {}
            for axis in "XY":       # a size OME allows: a positive number
                value = pixels.get(f"PhysicalSize{axis}")
                if (isinstance(value, (int, float)) and not isinstance(value, bool)
                        and np.isfinite(value) and value > 0):
                    size[f"PhysicalSize{axis}"] = value
                    unit = pixels.get(f"PhysicalSize{axis}Unit")
                    if isinstance(unit, str):
                        size[f"PhysicalSize{axis}Unit"] = unit
            return size
    return {}


#: What the TIFF (and EXIF) ``Orientation`` tag asks of the stored pixels
#: (axis 0 the rows, 1 the columns) to show them as viewers do
#: (``PIL.ImageOps.exif_transpose``'s operations): 2 mirrors left-right, 3
#: turns by 180 degrees, 4 mirrors top-bottom, 5 transposes, 6 turns 90
#: degrees clockwise, 7 transposes across the other diagonal, 8 turns 90
#: degrees anticlockwise.
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}

_SWAP_XY = str.maketrans("XY", "YX")


def _read_tiff(path, info):
    """A TIFF's pixels, turned as its ``Orientation`` tag says (with a note,
    as the EXIF orientation of other files): tifffile gives them as stored."""
    img, orientation = _stored_tiff(path, info)
    if not (isinstance(orientation, Integral) and orientation in _ORIENTATIONS):
        return img
    img = np.ascontiguousarray(_ORIENTATIONS[orientation](img))
    if orientation >= 5:                # rows and columns exchanged
        meta = info.get("tiff", {})
        if "resolution" in meta:
            meta["resolution"] = meta["resolution"][::-1]
        ome = meta.get("ome", {})
        # PhysicalSizeX (and its unit) is PhysicalSizeY now, and back
        swapped = {key.translate(_SWAP_XY): value for key, value in ome.items()}
        ome.clear()
        ome.update(swapped)
    info["notes"].append(
        f"{path.name} is turned as its TIFF orientation ({orientation}) says, "
        "as viewers show it.")
    return img


def _stored_tiff(path, info):
    """A TIFF's pixels as stored, and its ``Orientation`` (1 without one)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = _main_tiff_series(tif, path.name)
            img, axes = series.asarray(), series.axes   # full resolution
            page = series.keyframe
            photometric, bits = page.photometric, page.bitspersample
            colormap = page.colormap
            compression = page.compression
            info["tiff"] = _tiff_pixel_size(tif, page)
            orientation = getattr(page.tags.get(274), "value", 1)  # Orientation
    except _ImageCountError:
        raise
    except Exception as exc:            # tifffile's or a codec's refusal
        raise _unreadable(path, exc) from None
    if "S" in axes:                     # samples (colour channels) last
        img = np.moveaxis(img, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    stack = [(a, n) for a, n in zip(axes, img.shape, strict=True)
             if a not in "YXS" and n > 1]
    if stack:
        raise ValueError(
            f"{path.name} holds a stack of {int(np.prod([n for _, n in stack]))} "
            f"images (axes {axes!r}, shape {img.shape}); pass a single 2-D image "
            "(or split the stack).")
    img = img.reshape([n for a, n in zip(axes, img.shape, strict=True)
                       if a in "YXS"])
    if (img.ndim == 3 and img.shape[-1] > 1
            and photometric != tifffile.PHOTOMETRIC.SEPARATED):    # CMYK: below
        img = _colour_or_alpha(img, page, axes, path.name)
    if (photometric == tifffile.PHOTOMETRIC.YCBCR
            and compression != tifffile.COMPRESSION.JPEG):
        # tifffile gives the Y, Cb, Cr samples themselves (a JPEG-compressed
        # file's decoder gives RGB): converted as Pillow converts them
        img = _ycbcr_tiff(path, img, bits, orientation)
    if img.dtype == bool:       # 1-bit (a mask: True is on, as tifffile writes it)
        return img.astype(np.uint8), orientation
    if img.dtype.kind in "ui":
        top = (2 ** int(bits) - 1 if isinstance(bits, Integral) and bits
               <= 8 * img.dtype.itemsize else np.iinfo(img.dtype).max)
    else:
        top = 1.0
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE and img.ndim == 2:
        if img.dtype.kind != "u":
            # 1 - x for floats, or max - x for signed counts, is a guess
            raise ValueError(
                f"{path.name} is a {img.dtype} image whose file says that dark "
                "is high (MINISWHITE): only unsigned integer pixels can be "
                "inverted without knowing their range. Save it as an ordinary "
                "(MINISBLACK) image, inverted if it needs to be.")
        img = (top - img).astype(img.dtype)           # dark is high: invert
    elif photometric == tifffile.PHOTOMETRIC.PALETTE and colormap is not None \
            and img.ndim == 2:
        colormap = np.asarray(colormap)
        if _is_display_ramp(colormap.T):     # a display LUT: indices are data
            info["notes"].append(_palette_note(path.name))
        else:                                # an indexed-colour picture
            img = np.moveaxis(colormap[:, img], 0, -1)
    elif photometric == tifffile.PHOTOMETRIC.SEPARATED and img.ndim == 3 \
            and img.shape[-1] >= 4:
        # CMYK, as Pillow converts it: R = top - min(top, C + K), ...
        cmyk = img[..., :4].astype(np.float64)
        rgb = top - np.minimum(top, cmyk[..., :3] + cmyk[..., 3:4])
        img = rgb.astype(img.dtype)
    return img, orientation


def _ycbcr_tiff(path, img, bits, orientation=1):
    """The RGB pixels of an uncompressed (or LZW, Deflate...) YCbCr TIFF, as
    Pillow converts them, as stored (Pillow turns them as the file's
    ``orientation`` says: turned back); 8-bit only (what Pillow reads)."""
    from PIL import Image

    shape = img.shape[:2]
    try:
        if bits != 8:
            raise ValueError(f"{bits}-bit samples")
        with Image.open(path) as im:
            rgb = np.array(im.convert("RGB"))
            # Pillow drops the tag once it has turned the pixels
            turned = im.tag_v2.get(274) is None
        if turned and orientation in _ORIENTATIONS:
            # 6 and 8 undo each other; the other turns undo themselves
            rgb = np.ascontiguousarray(
                _ORIENTATIONS[{6: 8, 8: 6}.get(orientation, orientation)](rgb))
        if rgb.shape[:2] != shape:
            raise ValueError(f"Pillow read {rgb.shape[:2]}, tifffile {shape}")
    except Exception as exc:
        raise ValueError(
            f"{path.name} is a YCbCr TIFF that cannot be converted to RGB here "
            f"({exc}); save it as an RGB or grayscale TIFF.") from None
    return rgb


def load_image(path):
    """Read an image file as a grayscale float image in [0, 1].

    PNG, TIFF and JPEG (also BMP and GIF) files, as :func:`read_pixels` reads
    them (TIFF with tifffile: any bit depth, float included). Colour images
    are converted with the ITU-R 709 luma weights; the result is min-max
    scaled to [0, 1].
    """
    path = Path(path)
    return _to_gray_unit(read_pixels(path), path.name)


def load_images(source):
    """Load a user's images: a folder, a list of files, or arrays.

    Parameters
    ----------
    source : str, Path, sequence of paths, ndarray (n, H, W) or list of arrays
        A folder (its image files, hidden files skipped), files, or arrays:
        an array of shape ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3|4)`` is one
        (colour) image, one of shape ``(n, H, W)`` is ``n`` images (a last
        axis of 1, 3 or 4 is read as channels, not as a width); torch
        tensors are read as arrays.

    Returns
    -------
    list of ndarray
        Grayscale float images in [0, 1] (arrays are scaled the same way).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            # hidden files (macOS's "._name.png" companions) are not images,
            # nor GIFs (animations, previews), which load_image reads alone
            files = sorted(p for p in path.iterdir() if p.is_file()
                           and not p.name.startswith(".")
                           and p.suffix.lower() in FOLDER_SUFFIXES)
            if not files:
                raise ValueError(f"no PNG/TIFF/JPEG image found in {str(path)!r} "
                                 f"(files ending in {', '.join(FOLDER_SUFFIXES)}).")
            return [load_image(p) for p in files]
        return [load_image(path)]
    if hasattr(source, "detach") and hasattr(source, "cpu"):     # a torch tensor
        source = source.detach().cpu().numpy()
    if isinstance(source, np.ndarray):
        if source.ndim == 3 and source.shape[-1] == 1:
            source = source[..., 0]     # (H, W, 1): one image, one channel
        if source.ndim == 3 and source.shape[0] == 0:
            raise ValueError(f"no image given: source is an array of shape "
                             f"{source.shape}.")
        if source.ndim == 2:
            return [_to_gray_unit(source, "image")]
        if source.ndim == 3 and source.shape[-1] not in (3, 4):
            return [_to_gray_unit(s, f"image {i}") for i, s in enumerate(source)]
        return [_to_gray_unit(source, "image")]
    if isinstance(source, (list, tuple)) and len(source) == 0:
        raise ValueError("no image given: source is an empty "
                         f"{type(source).__name__}.")
    out = []
    for i, item in enumerate(source):
        if isinstance(item, (str, os.PathLike)):
            out.append(load_image(item))
        else:
            if hasattr(item, "detach") and hasattr(item, "cpu"):
                item = item.detach().cpu().numpy()
            out.append(_to_gray_unit(item, f"image {i}"))
    return out


def _load_bundled(table, names):
    names = (list(table) if names is None
             else [names] if isinstance(names, str) else list(names))
    unknown = [n for n in names if n not in table]
    if unknown:
        raise ValueError(
            f"names must be among {sorted(table)}; got unknown {unknown}."
        )
    import imageio.v3 as iio

    out = {}
    for name in names:
        package, fname = table[name]
        out[name] = _to_gray_unit(iio.imread(_package_dir(package) / fname), name)
    return out


def load_natural_images(names=None):
    """Natural images bundled with scikit-image and scikit-learn.

    Parameters
    ----------
    names : sequence of str, optional
        Subset of :data:`NATURAL_IMAGES`; all by default.

    Returns
    -------
    dict name -> ndarray (H, W) in [0, 1]
    """
    return _load_bundled(NATURAL_IMAGES, names)


def load_microscopy_images(names=None):
    """Microscopy images bundled with scikit-image (``cell``, ``ihc``)."""
    return _load_bundled(MICROSCOPY_IMAGES, names)


def natural_image_split(test_names=NATURAL_TEST_IMAGES):
    """Natural images split by source image: ``(train, test)`` dicts."""
    images = load_natural_images()
    if isinstance(test_names, str):
        test_names = [test_names]
    unknown = [n for n in test_names if n not in images]
    if unknown:
        raise ValueError(
            f"test_names must be among {sorted(images)}; got unknown {unknown}."
        )
    test = {n: images[n] for n in test_names}
    train = {n: v for n, v in images.items() if n not in test}
    return train, test


def extract_patches(images, n_patches, patch_shape=(128, 128), *, augment=True,
                    random_state=None, out=None):
    """Random crops of a collection of images, with flips and 90° rotations.

    Parameters
    ----------
    images : dict or sequence of 2-D arrays
    n_patches : int
    patch_shape : (h, w), default=(128, 128)
    augment : bool, default=True
        Random horizontal flip and rotation by a multiple of 90° (square
        patches only for odd rotations).
    random_state : int, RandomState instance or None
    out : ndarray of shape (n_patches, h, w), optional
        Array to fill in place (for example a float32 array, or a slice of a
        larger pool), so that no float64 copy of the patches is ever made;
        the patches drawn are the same as without it.

    Returns
    -------
    ndarray of shape (n_patches, h, w), float64 in [0, 1] (``out`` when
    given). Images are drawn with probability proportional to the number of
    crops they contain.
    """
    imgs = [np.asarray(im) for im in
            (images.values() if isinstance(images, dict) else images)]
    if not imgs:
        raise ValueError("images must not be empty.")
    h, w = check_positive_int_pair(patch_shape, "patch_shape")
    sizes = []
    names = list(images) if isinstance(images, dict) else range(len(imgs))
    for name, img in zip(names, imgs, strict=True):
        what = f"image {name!r}" if isinstance(images, dict) else f"image {name}"
        if img.ndim != 2:
            raise ValueError(f"{what} must be a 2-D grayscale image; got shape "
                             f"{img.shape}.")
        if img.shape[0] < h or img.shape[1] < w:
            raise ValueError(
                f"{what} of shape {img.shape} is smaller than patch_shape "
                f"{(h, w)}."
            )
        if not np.isfinite(img).all():
            raise ValueError(f"{what} must be finite; got NaN or Inf values.")
        sizes.append((img.shape[0] - h + 1) * (img.shape[1] - w + 1))
    if (not isinstance(n_patches, Integral) or isinstance(n_patches, bool)
            or n_patches < 1):
        raise ValueError(f"n_patches must be a positive int; got {n_patches!r}.")
    n_patches = int(n_patches)
    rng = check_random_state(random_state)
    p = np.asarray(sizes, dtype=np.float64) / np.sum(sizes)
    if out is None:
        out = np.empty((n_patches, h, w))
    elif (not isinstance(out, np.ndarray) or out.shape != (n_patches, h, w)
          or not np.issubdtype(out.dtype, np.floating)):
        raise ValueError(
            f"out must be a floating-point array of shape {(n_patches, h, w)}; got "
            f"{getattr(out, 'dtype', type(out).__name__)} of shape "
            f"{getattr(out, 'shape', None)}.")
    which = rng.choice(len(imgs), size=n_patches, p=p)
    for j, i in enumerate(which):
        img = imgs[i]
        r = rng.randint(img.shape[0] - h + 1)
        c = rng.randint(img.shape[1] - w + 1)
        patch = img[r:r + h, c:c + w]
        if augment:
            if rng.rand() < 0.5:
                patch = patch[:, ::-1]
            k = rng.randint(4) if h == w else 2 * rng.randint(2)
            patch = np.rot90(patch, k)
        out[j] = patch
    return out


def make_point_sources(n_images, image_shape=(128, 128), *, density=0.002,
                       intensity_range=(0.5, 1.0), background=0.0,
                       random_state=None):
    """Simulated single-molecule-like images: point sources on a dark field.

    Parameters
    ----------
    n_images : int
    image_shape : (H, W), default=(128, 128)
    density : float, default=0.002
        Sources per pixel: each image draws ``max(1, Poisson(density * H *
        W))`` sources (at least one) at uniformly random pixels. Two sources
        drawn on the same pixel make one (the later one's intensity): a
        fraction ``1 - exp(-density)`` of the pixels is lit, so about
        ``density / 2`` of the sources drawn are lost (0.1 % at the
        default, 37 % at 1).
    intensity_range : (low, high), default=(0.5, 1.0)
        Uniform range of the sources' intensities, above the background.
    background : float, default=0.0
        Constant level of the field; the sources add to it (clipped to 1).
    random_state : int, RandomState instance or None

    Returns
    -------
    ndarray of shape (n_images, H, W) with values in [0, 1].
    """
    if (not isinstance(n_images, Integral) or isinstance(n_images, bool)
            or n_images < 1):
        raise ValueError(f"n_images must be a positive int; got {n_images!r}.")
    H, W = check_positive_int_pair(image_shape, "image_shape")
    if not (isinstance(density, Real) and not isinstance(density, bool)
            and 0 < density <= 1):
        raise ValueError(f"density must be in (0, 1]; got {density!r}.")
    lo, hi = _check_range(intensity_range, "intensity_range", 0, 1)
    if not (isinstance(background, Real) and not isinstance(background, bool)
            and 0 <= background <= 1):
        raise ValueError(f"background must be in [0, 1]; got {background!r}.")
    if hi == 0 or background == 1:
        # the sources would be invisible: 0 above the field, or clipped to a
        # field already at 1 (images without a source, returned silently)
        raise ValueError(
            "the sources would not show: "
            + ("intensity_range is (0, 0)" if hi == 0 else "background is 1, "
               "and the sources add to it, clipped to 1")
            + f"; got intensity_range={intensity_range!r}, "
            f"background={background!r}.")
    rng = check_random_state(random_state)
    out = np.full((int(n_images), H, W), float(background))
    for i in range(n_images):
        n = max(1, rng.poisson(density * H * W))
        rows, cols = rng.randint(H, size=n), rng.randint(W, size=n)
        out[i, rows, cols] = float(background) + rng.uniform(lo, hi, size=n)
    return np.clip(out, 0, 1)


def _check_range(value, name, low, high, strict_low=False):
    # numbers only: float() read ("0", "1") and (False, True)
    pair = number_pair(value)
    if pair is None:
        raise ValueError(f"{name} must be a pair (low, high); got {value!r}.")
    lo, hi = pair
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi and hi <= high
            and (lo > low if strict_low else lo >= low)):
        bound = "<" if strict_low else "<="
        raise ValueError(f"{name} must satisfy {low} {bound} low <= high <= {high}; "
                         f"got {value!r}.")
    return lo, hi


def make_dead_leaves(n_images, image_shape=(128, 128), *, radius_range=(1.0, 1000.0),
                     exponent=3.0, value_range=(0.0, 1.0), random_state=None):
    """Synthetic images of the dead-leaves model: occluding disks of all sizes.

    Disks of random gray level fall on the image; each hides what it covers
    and the image is what the front disks show. With radii distributed as
    ``r ** -exponent`` (``exponent=3``: scale invariance) the images have the
    power spectrum (about ``1/f^2``), the sharp occluding edges and the
    absence of a characteristic scale of natural images (Lee, Mumford and
    Huang, 2001), with as much content as one asks for: training data of
    any size without a single download, and with edges everywhere to reveal
    the local blur.

    The disks are drawn front to back; a disk that falls entirely on visible
    disks is invisible and skipped. Once 99 % of the pixels are covered, the
    centres of the next disks are drawn among the pixels still uncovered
    (not uniformly), so the last holes close in a few steps: a slight
    departure from the exact model, in the smallest holes only.

    Parameters
    ----------
    n_images : int
    image_shape : (H, W), default=(128, 128)
    radius_range : (rmin, rmax), default=(1.0, 1000.0)
        Range of the radii in pixels, ``0.5 <= rmin <= rmax`` (a disk smaller
        than half a pixel rarely covers a pixel's centre: with such radii
        almost every disk would be invisible, and the image would take
        without bound to fill).
    exponent : float, default=3.0
        Radii have the density ``r ** -exponent`` on ``radius_range``.
    value_range : (low, high), default=(0.0, 1.0)
        Uniform range of the disks' gray levels, in [0, 1].
    random_state : int, RandomState instance or None

    Returns
    -------
    ndarray of shape (n_images, H, W), float64 in ``value_range``.

    Examples
    --------
    >>> from deepblur.datasets import make_dead_leaves
    >>> leaves = make_dead_leaves(2, (64, 64), random_state=0)
    >>> leaves.shape, bool(leaves.min() >= 0 and leaves.max() <= 1)
    ((2, 64, 64), True)
    """
    if (not isinstance(n_images, (int, np.integer)) or isinstance(n_images, bool)
            or n_images < 1):
        raise ValueError(f"n_images must be a positive int; got {n_images!r}.")
    H, W = check_positive_int_pair(image_shape, "image_shape")
    rmin, rmax = _check_range(radius_range, "radius_range", 0.5, np.inf)
    lo, hi = _check_range(value_range, "value_range", 0, 1)
    if not (isinstance(exponent, (int, float, np.number)) and np.isfinite(exponent)
            and exponent > 1):
        raise ValueError(f"exponent must be a number > 1; got {exponent!r}.")
    rng = check_random_state(random_state)
    a = 1.0 - float(exponent)           # inverse CDF of r^-exponent on [rmin, rmax]
    lo_a, hi_a = rmin ** a, rmax ** a
    out = np.empty((int(n_images), H, W))
    for img in out:
        covered = np.zeros((H, W), dtype=bool)
        n_left = H * W
        while n_left:
            radii = (lo_a + rng.uniform(size=256) * (hi_a - lo_a)) ** (1.0 / a)
            values = rng.uniform(lo, hi, size=256)
            if n_left > 0.01 * H * W:
                centres = rng.uniform(size=(256, 2)) * (H, W)
            else:                       # close the last holes
                holes = np.flatnonzero(~covered)
                pick = holes[rng.randint(len(holes), size=256)]
                centres = np.c_[pick // W, pick % W] + rng.uniform(size=(256, 2))
            for r, (cy, cx), v in zip(radii, centres, values, strict=True):
                y0, y1 = max(0, int(cy - r)), min(H, int(cy + r) + 1)
                x0, x1 = max(0, int(cx - r)), min(W, int(cx + r) + 1)
                # pixel (i, j) covers [i, i+1) x [j, j+1); its centre decides
                yy = np.arange(y0, y1)[:, None] + 0.5 - cy
                xx = np.arange(x0, x1)[None, :] + 0.5 - cx
                new = (yy * yy + xx * xx <= r * r) & ~covered[y0:y1, x0:x1]
                n_new = int(new.sum())
                if n_new:
                    img[y0:y1, x0:x1][new] = v
                    covered[y0:y1, x0:x1] |= new
                    n_left -= n_new
                    if not n_left:
                        break
    return out
