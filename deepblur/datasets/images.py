"""Images that work offline: bundled natural and microscopy images, user files.

Nothing here downloads. Natural images come from the sample files that
scikit-image and scikit-learn install with themselves; microscopy-like images
from scikit-image's bundled microscopy files and from simulated point sources.
Every image is returned grayscale, float64, scaled to [0, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.utils import check_random_state

from deepblur._validation import check_positive_int_pair

__all__ = [
    "MICROSCOPY_IMAGES",
    "NATURAL_IMAGES",
    "NATURAL_TEST_IMAGES",
    "extract_patches",
    "load_image",
    "load_images",
    "load_microscopy_images",
    "load_natural_images",
    "make_point_sources",
    "natural_image_split",
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


def _to_gray_unit(img, name):
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] in (3, 4):
        rgb = img[..., :3].astype(np.float64)
        img = rgb @ np.array([0.2125, 0.7154, 0.0721])   # skimage's rgb2gray weights
    elif img.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D grayscale or an RGB(A) image; got an array of "
            f"shape {img.shape}."
        )
    img = np.asarray(img, dtype=np.float64)
    if not np.isfinite(img).all():
        raise ValueError(f"{name} must contain only finite values; got NaN or Inf.")
    lo, hi = img.min(), img.max()
    if hi == lo:
        return np.zeros_like(img)
    return (img - lo) / (hi - lo)


def load_image(path):
    """Read a PNG/TIFF/JPEG file as a grayscale float image in [0, 1].

    TIFF files are read with tifffile (any bit depth, float included), others
    with imageio. Colour images are converted with the ITU-R 709 luma weights;
    the result is min-max scaled to [0, 1].
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist.")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        img = tifffile.imread(path)
        if img.ndim == 3 and img.shape[-1] not in (3, 4):
            raise ValueError(
                f"{path.name} holds a stack of {img.shape[0]} images; pass a "
                "single 2-D image (or split the stack)."
            )
    elif suffix in (".png", ".jpg", ".jpeg", ".bmp", ".gif"):
        import imageio.v3 as iio

        img = iio.imread(path)
    else:
        raise ValueError(
            f"unsupported image format {suffix!r} for {path.name}: use PNG, TIFF "
            "or JPEG."
        )
    return _to_gray_unit(img, path.name)


def load_images(source):
    """Load a user's images: a folder, a list of files, or arrays.

    Parameters
    ----------
    source : str, Path, sequence of paths, ndarray (n, H, W) or list of arrays

    Returns
    -------
    list of ndarray
        Grayscale float images in [0, 1] (arrays are scaled the same way).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in
                           (".png", ".tif", ".tiff", ".jpg", ".jpeg"))
            if not files:
                raise ValueError(f"no PNG/TIFF/JPEG image found in {str(path)!r}.")
            return [load_image(p) for p in files]
        return [load_image(path)]
    if isinstance(source, np.ndarray):
        if source.ndim == 2:
            return [_to_gray_unit(source, "image")]
        if source.ndim == 3 and source.shape[-1] not in (3, 4):
            return [_to_gray_unit(s, f"image {i}") for i, s in enumerate(source)]
        return [_to_gray_unit(source, "image")]
    out = []
    for i, item in enumerate(source):
        if isinstance(item, (str, os.PathLike)):
            out.append(load_image(item))
        else:
            out.append(_to_gray_unit(item, f"image {i}"))
    return out


def _load_bundled(table, names):
    names = list(table) if names is None else list(names)
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
    imgs = list(images.values()) if isinstance(images, dict) else list(images)
    if not imgs:
        raise ValueError("images must not be empty.")
    h, w = check_positive_int_pair(patch_shape, "patch_shape")
    sizes = []
    for i, img in enumerate(imgs):
        if img.ndim != 2 or img.shape[0] < h or img.shape[1] < w:
            raise ValueError(
                f"image {i} of shape {img.shape} is smaller than patch_shape "
                f"{(h, w)}."
            )
        sizes.append((img.shape[0] - h + 1) * (img.shape[1] - w + 1))
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
        Expected number of sources per pixel (Poisson).
    intensity_range : (low, high), default=(0.5, 1.0)
        Uniform range of the sources' intensities.
    background : float, default=0.0
    random_state : int, RandomState instance or None

    Returns
    -------
    ndarray of shape (n_images, H, W) with values in [0, 1].
    """
    H, W = check_positive_int_pair(image_shape, "image_shape")
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1]; got {density!r}.")
    lo, hi = intensity_range
    if not 0 <= lo <= hi <= 1:
        raise ValueError(
            f"intensity_range must satisfy 0 <= low <= high <= 1; got "
            f"{intensity_range!r}."
        )
    rng = check_random_state(random_state)
    out = np.full((n_images, H, W), float(background))
    for i in range(n_images):
        n = max(1, rng.poisson(density * H * W))
        rows, cols = rng.randint(H, size=n), rng.randint(W, size=n)
        out[i, rows, cols] = rng.uniform(lo, hi, size=n)
    return np.clip(out, 0, 1)
