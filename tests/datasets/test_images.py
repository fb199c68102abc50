"""Offline images: bundled files, user files, patches, point sources."""

import numpy as np
import pytest

from deepblur.datasets.images import (
    MICROSCOPY_IMAGES,
    NATURAL_TEST_IMAGES,
    extract_patches,
    load_image,
    load_images,
    load_microscopy_images,
    load_natural_images,
    make_dead_leaves,
    make_point_sources,
    natural_image_split,
    read_pixels,
)


def test_bundled_images_load_gray_unit_range():
    imgs = load_natural_images(["camera", "china"])
    for img in imgs.values():
        assert img.ndim == 2 and img.min() == 0 and img.max() == 1
    micro = load_microscopy_images()
    assert set(micro) == set(MICROSCOPY_IMAGES)


def test_split_is_by_source_image():
    train, test = natural_image_split()
    assert set(test) == set(NATURAL_TEST_IMAGES)
    assert not set(train) & set(test) and len(train) >= 10
    with pytest.raises(ValueError, match="test_names"):
        natural_image_split(("nope",))


def test_patches_shapes_seed_and_augmentation():
    imgs = {"a": np.arange(64.0 * 80).reshape(64, 80) / (64 * 80)}
    p1 = extract_patches(imgs, 20, (32, 32), random_state=0)
    p2 = extract_patches(imgs, 20, (32, 32), random_state=0)
    np.testing.assert_array_equal(p1, p2)
    assert p1.shape == (20, 32, 32)
    # every patch is a (possibly flipped/rotated) crop of the source
    src = imgs["a"]
    for patch in p1[:5]:
        found = False
        for k in range(4):
            for q in (patch, patch[:, ::-1]):
                cand = np.rot90(q, -k)
                r, c = np.argwhere(np.isclose(src, cand[0, 0]))[0]
                if r + 32 <= 64 and c + 32 <= 80 and np.allclose(
                        src[r:r + 32, c:c + 32], cand):
                    found = True
        assert found
    with pytest.raises(ValueError, match="smaller than patch_shape"):
        extract_patches(imgs, 2, (100, 100))
    with pytest.raises(ValueError, match="image 'a' of shape"):
        extract_patches(imgs, 2, (100, 100))
    with pytest.raises(ValueError, match="image 0 must be a 2-D grayscale"):
        extract_patches([np.ones((40, 40, 3))], 2, (32, 32))
    nan = dict(imgs, b=np.where(np.eye(64, 80) > 0, np.nan, 0.5))
    with pytest.raises(ValueError, match="image 'b' must be finite"):
        extract_patches(nan, 2, (32, 32))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_patches must be a positive int"):
            extract_patches(imgs, bad, (32, 32))
    assert extract_patches(imgs, np.int64(3), (32, 32)).shape == (3, 32, 32)


def test_patches_filled_in_place_are_the_same_draws():
    imgs = {"a": np.random.default_rng(0).random((40, 50)),
            "b": np.random.default_rng(1).random((36, 36))}
    ref = extract_patches(imgs, 30, (16, 16), random_state=3)
    pool = np.full((40, 16, 16), -1.0, dtype=np.float32)
    got = extract_patches(imgs, 30, (16, 16), random_state=3, out=pool[5:35])
    assert np.shares_memory(got, pool)
    np.testing.assert_array_equal(pool[5:35], ref.astype(np.float32))
    assert (pool[:5] == -1).all() and (pool[35:] == -1).all()
    for bad in (np.empty((30, 16, 15)), np.empty((29, 16, 16)),
                np.empty((30, 16, 16), dtype=int), [[0.0]]):
        with pytest.raises(ValueError, match="out must be a floating-point array"):
            extract_patches(imgs, 30, (16, 16), out=bad)


def test_user_files_png_tiff_and_arrays(tmp_path):
    import imageio.v3 as iio
    import tifffile

    img8 = (np.arange(100, dtype=np.uint8).reshape(10, 10))
    iio.imwrite(tmp_path / "a.png", img8)
    tifffile.imwrite(tmp_path / "b.tif", img8.astype(np.uint16) * 300)
    tifffile.imwrite(tmp_path / "c.tiff", img8.astype(np.float32) / 7)
    loaded = load_images(tmp_path)
    assert len(loaded) == 3
    for img in loaded:
        np.testing.assert_allclose(img, img8 / 99.0, atol=1e-6)
    arr = load_images(np.stack([img8, img8]))
    assert len(arr) == 2
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "x.bmpx").write_bytes(b"0")
    with pytest.raises(ValueError, match="unsupported image format"):
        load_image(tmp_path / "x.bmpx")
    with pytest.raises(ValueError, match="finite"):
        load_images([np.full((4, 4), np.nan)])
    with pytest.raises(ValueError, match="must not be empty"):
        load_images(np.zeros((0, 0)))
    import torch

    as_tensor = load_images(torch.as_tensor(np.stack([img8, img8])))
    assert len(as_tensor) == 2 and as_tensor[0].shape == (10, 10)
    np.testing.assert_allclose(load_images([torch.as_tensor(img8)])[0],
                               img8 / 99.0)


def test_image_files_of_every_common_kind_read_right(tmp_path):
    """Each kind of file gives the intensities of the same dark-to-bright
    ramp: CMYK (which read as inverted RGBA), grayscale+alpha, palette, GIF,
    BMP, planar RGB and MINISWHITE TIFFs, all through the folder loader,
    which skips hidden files (macOS's ``._name.png``) and sub-folders."""
    import tifffile
    from PIL import Image

    ramp = np.tile(np.linspace(0, 255, 32).astype(np.uint8), (16, 1))
    expected = ramp / 255.0
    gray = Image.fromarray(ramp)
    gray.convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    gray.convert("CMYK").save(tmp_path / "cmyk.tif")
    Image.merge("LA", [gray, gray]).save(tmp_path / "la.png")
    gray.convert("P").save(tmp_path / "palette.png")
    gray.save(tmp_path / "still.gif")
    gray.save(tmp_path / "b.bmp")
    tifffile.imwrite(tmp_path / "planar.tif", np.stack([ramp] * 3),
                     photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "white.tif", 255 - ramp, photometric="miniswhite")
    (tmp_path / "._cmyk.jpg").write_bytes(b"\x00\x05\x16\x07")   # AppleDouble
    (tmp_path / "sub.png").mkdir()
    # a multi-picture JPEG (a camera's preview inside) is its first picture
    gray.save(tmp_path / "camera.jpg", format="MPO", save_all=True, quality=100,
              append_images=[Image.fromarray(ramp[:8, :16])])
    palette = np.zeros((3, 256), dtype=np.uint16)
    palette[:, :] = np.arange(256) * 257                   # a gray colormap
    tifffile.imwrite(tmp_path / "palette.tif", ramp, photometric="palette",
                     colormap=palette)
    tifffile.imwrite(tmp_path / "bits.tif", ramp > 127)     # 1-bit
    loaded = load_images(tmp_path)          # GIFs are left to load_image
    assert len(loaded) == 10
    for img in loaded + [load_image(tmp_path / "still.gif")]:
        if len(np.unique(img)) == 2:        # the 1-bit one
            np.testing.assert_array_equal(img, expected > 0.5)
        else:
            np.testing.assert_allclose(img, expected, atol=0.02)
    # one image per file; unreadable files are named
    frames = [Image.fromarray(ramp), Image.fromarray(ramp[:, ::-1])]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(ValueError, match="anim.gif holds 2 frames"):
        load_image(tmp_path / "anim.gif")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read broken.png as an image"):
        load_image(tmp_path / "broken.png")
    good = (tmp_path / "white.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(good[:len(good) // 2])
    with pytest.raises(ValueError, match="cannot read cut.tif as an image"):
        load_image(tmp_path / "cut.tif")
    with pytest.raises(ValueError, match="not an image file"):
        load_image(tmp_path / "sub.png")
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([ramp] * 3),
                     photometric="minisblack")
    with pytest.raises(ValueError, match="holds a stack of 3 images"):
        load_image(tmp_path / "stack.tif")
    # read_pixels keeps the file's values and dtype
    raw = read_pixels(tmp_path / "white.tif")
    assert raw.dtype == np.uint8 and np.array_equal(raw, ramp)
    assert read_pixels(tmp_path / "planar.tif").shape == (16, 32, 3)


def _png16(path, pixels, colour_type):
    """A 16-bit PNG written by hand (Pillow writes none in colour)."""
    import struct
    import zlib

    pixels = np.asarray(pixels, dtype=">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    h, w = pixels.shape[:2]
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16,
                                                  colour_type, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16_bit_colour_png_is_refused_not_read_at_8_bits(tmp_path):
    """Pillow reads 16-bit RGB(A) and gray+alpha PNGs at 8 bits per channel
    (the high byte): refused with the way out, where 16-bit gray reads."""
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (16, 1))
    _png16(tmp_path / "gray.png", ramp, 0)
    gray = read_pixels(tmp_path / "gray.png")
    assert gray.dtype == np.uint16 and np.array_equal(gray, ramp)
    for name, channels, colour_type in (("rgb", 3, 2), ("la", 2, 4),
                                        ("rgba", 4, 6)):
        path = tmp_path / f"{name}.png"
        _png16(path, np.stack([ramp] * channels, axis=-1), colour_type)
        with pytest.raises(ValueError, match=f"{name}.png is a 16-bit .*PNG.*TIFF"):
            read_pixels(path)
        with pytest.raises(ValueError, match="16-bit"):
            load_images(tmp_path)
        path.unlink()


def test_ordinary_files_read_as_stored(tmp_path):
    """Gray TIFFs of each dtype, RGB TIFFs, gray and RGB(A) PNGs: the
    file's values and dtype, an alpha channel dropped."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(0)
    gray8 = rng.integers(0, 256, (12, 20)).astype(np.uint8)
    rgb8 = rng.integers(0, 256, (12, 20, 3)).astype(np.uint8)
    alpha = rng.integers(0, 256, (12, 20, 1)).astype(np.uint8)
    cases = {"u8.tif": gray8, "u16.tif": gray8.astype(np.uint16) * 257,
             "f32.tif": gray8.astype(np.float32) / 7,
             "f64.tif": gray8 / 7.0, "rgb.tif": rgb8,
             "rgb16.tif": rgb8.astype(np.uint16) * 257}
    for name, pixels in cases.items():
        tifffile.imwrite(tmp_path / name, pixels,
                         photometric="rgb" if pixels.ndim == 3 else None)
    tifffile.imwrite(tmp_path / "rgba.tif", np.concatenate([rgb8, alpha], -1),
                     photometric="rgb", extrasamples=["unassalpha"])
    tifffile.imwrite(tmp_path / "gray_alpha.tif",
                     np.concatenate([gray8[..., None], alpha], -1),
                     photometric="minisblack", extrasamples=["assocalpha"])
    Image.fromarray(gray8).save(tmp_path / "gray.png")
    Image.fromarray(np.concatenate([rgb8, alpha], -1), "RGBA").save(
        tmp_path / "rgba.png")
    Image.merge("LA", [Image.fromarray(gray8), Image.fromarray(alpha[..., 0])]
                ).save(tmp_path / "la.png")
    Image.fromarray(np.concatenate([rgb8, alpha], -1), "RGBA").save(
        tmp_path / "pillow_rgba.tif")
    cases.update({"rgba.tif": rgb8, "gray_alpha.tif": gray8, "gray.png": gray8,
                  "rgba.png": rgb8, "la.png": gray8, "pillow_rgba.tif": rgb8})
    for name, pixels in cases.items():
        img = read_pixels(tmp_path / name)
        assert img.dtype == pixels.dtype and np.array_equal(img, pixels), name


def test_tiff_channels_are_not_taken_for_alpha_or_colour(tmp_path):
    """A 2-channel fluorescence TIFF (samples, MINISBLACK, ExtraSamples
    unspecified) lost its second channel as if it were alpha; 3 channels
    were mixed as RGB, 4 lost one and mixed the rest. Samples that are
    neither colour (photometric RGB) nor marked as alpha are refused as a
    multi-channel image, like an ImageJ stack of channels."""
    import tifffile

    rng = np.random.default_rng(0)
    channels = rng.integers(100, 4000, (4, 16, 24)).astype(np.uint16)
    for n in (2, 3, 4):
        path = tmp_path / f"c{n}.tif"
        tifffile.imwrite(path, np.moveaxis(channels[:n], 0, -1),
                         photometric="minisblack", planarconfig="contig")
        with pytest.raises(ValueError, match=fr"c{n}.tif holds a stack of {n} "
                           r"images \(channels of a MINISBLACK image, axes "
                           fr"'YXS', shape \(16, 24, {n}\)"):
            read_pixels(path)
    tifffile.imwrite(tmp_path / "planar.tif", channels[:3],
                     photometric="minisblack", planarconfig="separate")
    with pytest.raises(ValueError, match="planar.tif holds a stack of 3 images"):
        load_image(tmp_path / "planar.tif")
    # RGB plus a channel not marked as alpha
    with tifffile.TiffWriter(tmp_path / "rgb_extra.tif") as w:
        w.write(np.moveaxis(channels, 0, -1), photometric="rgb",
                extrasamples=["unspecified"])
    with pytest.raises(ValueError, match="rgb_extra.tif holds a stack of 4"):
        read_pixels(tmp_path / "rgb_extra.tif")
    # the message an ImageJ stack of channels gets
    tifffile.imwrite(tmp_path / "ij.tif", channels[:2], imagej=True,
                     metadata={"axes": "CYX"})
    with pytest.raises(ValueError, match="ij.tif holds a stack of 2 images "
                       r"\(axes 'CYX'.*pass a single 2-D image \(or split"):
        read_pixels(tmp_path / "ij.tif")


def _fire_lut():
    """ImageJ's "Fire" LUT (LutLoader.fire, interpolated to 256 entries):
    its luma dips by a fraction of a level in places."""
    r = [0, 0, 1, 25, 49, 73, 98, 122, 146, 162, 173, 184, 195, 207, 217, 229,
         240, 252] + [255] * 14
    g = [0] * 13 + [14, 35, 57, 79, 101, 117, 133, 147, 161, 175, 190, 205, 219,
                    234, 248, 255, 255, 255, 255]
    b = [0, 61, 96, 130, 165, 192, 220, 227, 210, 181, 151, 122, 93, 64, 35, 5,
         0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 35, 98, 160, 223, 255]
    x = np.arange(256) * 32 / 256
    lut = np.stack([np.interp(x, np.arange(32), c) for c in (r, g, b)])
    return lut.astype(np.uint16) * 257


def test_palette_of_a_display_lut_gives_the_indices(tmp_path):
    """Fiji saves an 8-bit image with a colour LUT (Green for GFP) as a
    palette TIFF: the indices are the measurement. They were mapped through
    the LUT to RGB luma (uint16, 184 times brighter; a PNG 0.72 times).
    A palette whose luma rises with the index gives the indices, in their
    dtype, with a note; an indexed-colour picture its colours."""
    import tifffile
    from PIL import Image

    from deepblur.datasets import images

    rng = np.random.default_rng(0)
    data = rng.integers(10, 250, (16, 24)).astype(np.uint8)
    ramp = np.arange(256, dtype=np.uint16) * 257
    zero = np.zeros(256, np.uint16)
    luts = {"green": np.stack([zero, ramp, zero]),
            "blue": np.stack([zero, zero, ramp]),
            "gray": np.stack([ramp] * 3), "fire": _fire_lut()}
    for name, lut in luts.items():
        tifffile.imwrite(tmp_path / f"{name}.tif", data, photometric="palette",
                         colormap=lut)
    green = Image.fromarray(data, mode="P")
    green.putpalette([v for i in range(256) for v in (0, i, 0)])
    green.save(tmp_path / "green.png")
    for name in [f"{n}.tif" for n in luts] + ["green.png"]:
        img = read_pixels(tmp_path / name)
        assert img.dtype == np.uint8 and np.array_equal(img, data), name
        img, info = images._read_pixels(tmp_path / name)     # and the notes
        assert info["notes"] == [
            f"{name} is an indexed image with a display LUT (a palette whose "
            "brightness rises with the index): its pixel values are read, not "
            "the LUT's colours."]
        np.testing.assert_allclose(load_image(tmp_path / name),
                                   (data - 10.0) / (data.max() - 10.0))
    # an indexed-colour picture: its colours, as RGB
    colours = rng.integers(0, 256, (256, 3))
    tifffile.imwrite(tmp_path / "picture.tif", data, photometric="palette",
                     colormap=(colours.T * 257).astype(np.uint16))
    picture = Image.fromarray(data, mode="P")
    picture.putpalette(colours.astype(np.uint8).ravel().tolist())
    picture.save(tmp_path / "picture.png")
    img, info = images._read_pixels(tmp_path / "picture.tif")
    assert img.dtype == np.uint16 and info["notes"] == []
    np.testing.assert_array_equal(img, colours[data] * 257)
    img, info = images._read_pixels(tmp_path / "picture.png")
    assert img.dtype == np.uint8 and info["notes"] == []
    np.testing.assert_array_equal(img, colours[data])
    # a GIF's compacted gray palette holds the intensities, not a ramp of them
    Image.fromarray(data).save(tmp_path / "gray.gif")
    np.testing.assert_array_equal(read_pixels(tmp_path / "gray.gif")[..., 0],
                                  data)


def test_tiff_of_several_images_is_refused_unless_the_others_are_previews(
        tmp_path):
    """Only the first series was read: the second position of an OME-TIFF
    was dropped, and a preview page before the image was read instead of
    it. Several images are refused, with their count and shapes; a
    reduced-resolution copy marked as such (NewSubfileType), before or
    after the image or as a pyramid level, is passed over."""
    import tifffile

    rng = np.random.default_rng(0)
    pos1, pos2 = (rng.integers(0, 4000, (2, 64, 64))).astype(np.uint16)
    with tifffile.TiffWriter(tmp_path / "positions.ome.tif", ome=True) as w:
        w.write(pos1, metadata={"axes": "YX"})
        w.write(pos2, metadata={"axes": "YX"})
    with pytest.raises(ValueError, match=r"positions.ome.tif holds 2 separate "
                       r"images \(series of shapes 64x64, 64x64\).*one image "
                       r"per file \(split it"):
        read_pixels(tmp_path / "positions.ome.tif")
    with tifffile.TiffWriter(tmp_path / "preview.tif") as w:     # not marked
        w.write(pos1[::4, ::4])
        w.write(pos1)
    with pytest.raises(ValueError, match="holds 2 separate images .*16x16, 64x64"):
        load_image(tmp_path / "preview.tif")
    # marked thumbnails before and after the image, and a pyramid
    with tifffile.TiffWriter(tmp_path / "thumb_first.tif") as w:
        w.write(pos1[::4, ::4], subfiletype=1)
        w.write(pos1)
    with tifffile.TiffWriter(tmp_path / "thumb_last.tif") as w:
        w.write(pos1)
        w.write(np.zeros((16, 16, 3), np.uint8), subfiletype=1,
                photometric="rgb")
    with tifffile.TiffWriter(tmp_path / "pyramid.ome.tif", ome=True) as w:
        w.write(pos1, subifds=1, metadata={"axes": "YX"})
        w.write(pos1[::2, ::2], subfiletype=1)
    for name in ("thumb_first.tif", "thumb_last.tif", "pyramid.ome.tif"):
        img = read_pixels(tmp_path / name)
        assert img.dtype == np.uint16 and np.array_equal(img, pos1), name


def test_point_sources():
    pts = make_point_sources(3, (64, 64), density=0.01, random_state=0)
    assert pts.shape == (3, 64, 64)
    n = (pts > 0).sum(axis=(1, 2))
    assert (n > 10).all() and (n < 80).all()
    assert pts.max() <= 1 and pts[pts > 0].min() >= 0.5
    with pytest.raises(ValueError, match="density"):
        make_point_sources(1, density=0)


@pytest.mark.parametrize("bad, match", [
    (dict(n_images=0), "n_images"),
    (dict(n_images=2.5), "n_images"),
    (dict(density="0.1"), "density"),
    (dict(density=0.0), "density"),
    (dict(intensity_range=0.5), "intensity_range"),
    (dict(intensity_range=(0.8, 0.2)), "intensity_range"),
    (dict(background=np.nan), "background"),
    (dict(background=2.0), "background"),
])
def test_point_sources_bad_input(bad, match):
    kwargs = dict(n_images=1, image_shape=(8, 8)) | bad
    with pytest.raises(ValueError, match=match):
        make_point_sources(**kwargs)


def test_dead_leaves_cover_the_image_with_flat_disks():
    leaves = make_dead_leaves(3, (48, 40), value_range=(0.2, 0.6), random_state=0)
    assert leaves.shape == (3, 48, 40) and leaves.dtype == np.float64
    # every pixel is painted (np.empty left nothing behind), in value_range
    assert (leaves >= 0.2).all() and (leaves <= 0.6).all()
    np.testing.assert_array_equal(
        leaves, make_dead_leaves(3, (48, 40), value_range=(0.2, 0.6),
                                 random_state=0))
    assert not np.array_equal(leaves[0], leaves[1])
    # piecewise constant: most pixels equal their right neighbour, and each
    # image holds far fewer gray levels than pixels
    assert (leaves[:, :, 1:] == leaves[:, :, :-1]).mean() > 0.5
    assert all(len(np.unique(im)) < im.size / 4 for im in leaves)
    # one disk larger than the image hides everything behind it
    flat = make_dead_leaves(2, (20, 30), radius_range=(100, 100), random_state=1)
    assert all(len(np.unique(im)) == 1 for im in flat)


def test_dead_leaves_have_a_natural_power_spectrum():
    # r^-3 radii give scale invariance: a power spectrum close to 1/f^2
    img = make_dead_leaves(1, (256, 256), random_state=3)[0]
    power = np.abs(np.fft.fft2(img - img.mean())) ** 2
    f = np.fft.fftfreq(256)
    radius = np.hypot(*np.meshgrid(f, f))
    edges = np.logspace(np.log10(4 / 256), np.log10(0.4), 9)
    which = np.digitize(radius, edges)
    centres = np.sqrt(edges[1:] * edges[:-1])
    mean_power = [power[which == i].mean() for i in range(1, len(edges))]
    slope = np.polyfit(np.log(centres), np.log(mean_power), 1)[0]
    assert -2.5 < slope < -1.5
    # small disks only: the spectrum is much flatter
    fine = make_dead_leaves(1, (256, 256), radius_range=(1, 2), random_state=3)[0]
    power = np.abs(np.fft.fft2(fine - fine.mean())) ** 2
    flat = np.polyfit(np.log(centres), np.log(
        [power[which == i].mean() for i in range(1, len(edges))]), 1)[0]
    assert flat > slope + 0.8


@pytest.mark.parametrize("bad, match", [
    (dict(n_images=0), "n_images"),
    (dict(n_images=2.0), "n_images"),
    (dict(image_shape=(0, 5)), "image_shape"),
    (dict(radius_range=(0, 5)), "radius_range"),
    (dict(radius_range=(0.02, 1000)), r"0.5 <= low"),
    (dict(radius_range=(5, 2)), "radius_range"),
    (dict(radius_range="ab"), "radius_range"),
    (dict(radius_range=(1, np.inf)), "radius_range"),
    (dict(exponent=1.0), "exponent"),
    (dict(exponent=np.nan), "exponent"),
    (dict(value_range=(-0.1, 1)), "value_range"),
    (dict(value_range=(0.6, 0.2)), "value_range"),
    # strings and booleans are no numbers: float() read them as (0, 1), (1, 5)
    # and (1, 2)
    (dict(value_range=("0", "1")), "value_range must be a pair"),
    (dict(radius_range=(True, 5)), "radius_range must be a pair"),
    (dict(radius_range="12"), "radius_range must be a pair"),
])
def test_dead_leaves_bad_input(bad, match):
    kwargs = dict(n_images=1, image_shape=(8, 8)) | bad
    with pytest.raises(ValueError, match=match):
        make_dead_leaves(**kwargs)


def test_the_pixel_size_of_an_ome_tiff(tmp_path):
    """OME-TIFFs (microscopes, Bio-Formats) hold the pixel size in their OME
    metadata, for the Image of the page's size; none when the XML cannot be
    read or describes another image."""
    import tifffile

    from deepblur.datasets import images

    size = {"PhysicalSizeX": 0.2, "PhysicalSizeXUnit": "\u00b5m",
            "PhysicalSizeY": 0.25, "PhysicalSizeYUnit": "\u00b5m"}
    data = np.arange(24 * 16, dtype=np.uint16).reshape(24, 16)
    tifffile.imwrite(tmp_path / "a.ome.tif", data, ome=True,
                     metadata=dict(size, axes="YX"))
    img, info = images._read_pixels(tmp_path / "a.ome.tif")
    np.testing.assert_array_equal(img, data)
    assert info["tiff"]["ome"] == size
    with tifffile.TiffFile(tmp_path / "a.ome.tif") as tif:
        page, xml = tif.pages[0], tif.ome_metadata
    assert images._ome_pixel_size(xml, page) == size
    assert images._ome_pixel_size("<OME><Image", page) == {}
    for xml_ in ("<OME><Image><Pixels/></Image></OME>",
                 "<OME><Image><Pixels/><Pixels/></Image></OME>"):
        assert images._ome_pixel_size(xml_, page) == {}
    other = xml.replace('SizeX="16"', 'SizeX="17"')
    assert images._ome_pixel_size(other, page) == {}
    # a size OME does not allow is not carried to an output
    bad = xml.replace('PhysicalSizeX="0.2"', 'PhysicalSizeX="abc"')
    assert bad != xml
    assert images._ome_pixel_size(bad, page) == {
        k: v for k, v in size.items() if "Y" in k}
    bad = xml.replace('PhysicalSizeY="0.25"', 'PhysicalSizeY="-1"')
    assert images._ome_pixel_size(bad, page) == {
        k: v for k, v in size.items() if "X" in k}
    tifffile.imwrite(tmp_path / "plain.tif", data)
    assert "ome" not in images._read_pixels(tmp_path / "plain.tif")[1]["tiff"]


def test_ycbcr_tiff_is_converted_to_rgb(tmp_path):
    """An uncompressed YCbCr TIFF (Pillow's) gave its Y, Cb, Cr samples as
    R, G, B: gray values off by up to 0.54."""
    from PIL import Image
    from skimage import data

    rgb = data.astronaut()[:64, :64]
    Image.fromarray(rgb).convert("YCbCr").save(tmp_path / "ycbcr.tif")
    px = read_pixels(tmp_path / "ycbcr.tif")
    assert px.shape == rgb.shape and np.abs(px.astype(int) - rgb).max() <= 3
    np.testing.assert_allclose(load_image(tmp_path / "ycbcr.tif"),
                               load_images(rgb)[0], atol=0.02)


def test_miniswhite_tiff_other_than_unsigned_is_refused(tmp_path):
    """1 - x made counts of 0-2540 into -2539..1; signed counts overflowed."""
    import tifffile

    x = np.random.default_rng(0).random((16, 16)) * 2540
    tifffile.imwrite(tmp_path / "f.tif", x.astype(np.float32), photometric="miniswhite")
    tifffile.imwrite(tmp_path / "i.tif", x.astype(np.int16), photometric="miniswhite")
    for name in ("f.tif", "i.tif"):
        with pytest.raises(ValueError, match="MINISWHITE"):
            read_pixels(tmp_path / name)


def test_point_sources_add_to_the_background():
    pts = make_point_sources(2, (32, 32), density=0.02, background=0.3,
                             intensity_range=(0.2, 0.4), random_state=0)
    lit = pts > 0.3
    assert lit.sum() > 10 and np.all(pts[~lit] == 0.3)
    assert pts[lit].min() >= 0.5 - 1e-12 and pts.max() <= 0.7 + 1e-12
    # the default dark field: the same draws as before
    np.testing.assert_array_equal(
        make_point_sources(2, (32, 32), density=0.02, random_state=0) > 0,
        make_point_sources(2, (32, 32), density=0.02, background=0.3,
                           random_state=0) > 0.3)


def test_empty_input_single_names_and_one_channel_arrays():
    for empty in ([], np.zeros((0, 8, 8))):
        with pytest.raises(ValueError, match="no image given"):
            load_images(empty)
    for shape in ((20, 24, 1), (1, 9, 1)):
        one = np.random.default_rng(0).random(shape)
        (img,) = load_images(one)
        np.testing.assert_array_equal(img, load_images(one[..., 0])[0])
    train, test = natural_image_split("camera")
    assert set(test) == {"camera"} and "camera" not in train
    assert set(load_natural_images("camera")) == {"camera"}


def test_exif_orientation_is_applied_as_viewers_show_it(tmp_path):
    """A phone's upright photo (stored sideways, EXIF Orientation 6) was read
    sideways, and deblurred and written so."""
    from PIL import Image, ImageOps

    pixels = (np.random.default_rng(0).random((40, 60)) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "phone.png", exif=exif.tobytes())
    shown = np.array(ImageOps.exif_transpose(Image.open(tmp_path / "phone.png")))
    px = read_pixels(tmp_path / "phone.png")
    assert px.shape == (60, 40)
    np.testing.assert_array_equal(px, shown)
    np.testing.assert_array_equal(px, np.rot90(pixels, -1))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_tiff_orientation_is_applied_as_viewers_show_it(tmp_path, orientation):
    """A TIFF's Orientation tag (274) was ignored (tifffile gives the pixels
    as stored) while a JPEG's or PNG's EXIF orientation was applied: a
    sideways or mirrored TIFF was deblurred and written so. Each tag value
    against the numpy turn that the TIFF specification gives (the position
    of the stored first row and column in the picture)."""
    import tifffile

    from deepblur.datasets import images

    def turn(a):
        return {1: a, 2: np.fliplr(a), 3: np.rot90(a, 2), 4: np.flipud(a),
                5: a.T, 6: np.rot90(a, -1), 7: np.rot90(a, 2).T,
                8: np.rot90(a, 1)}[orientation]

    a = (np.random.default_rng(0).random((6, 10)) * 255).astype(np.uint8)
    shown = turn(a)
    tag = [(274, "H", 1, orientation, True)]
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, a, extratags=tag, resolution=(2.0, 4.0))
    img, info = images._read_pixels(path)
    np.testing.assert_array_equal(img, shown)
    assert img.flags.c_contiguous
    np.testing.assert_array_equal(load_images(path)[0], shown / shown.max())
    turned = [n for n in info["notes"] if "TIFF orientation" in n]
    assert len(turned) == (orientation != 1)
    # the pixel size follows the axes; colour samples stay last
    (x, y) = ((2, 1), (4, 1)) if orientation < 5 else ((4, 1), (2, 1))
    assert info["tiff"]["resolution"] == (x, y)
    rgb = np.stack([a, a // 2, a // 3], axis=-1)
    tifffile.imwrite(path, rgb, extratags=tag, photometric="rgb")
    expected = np.stack([turn(c) for c in np.moveaxis(rgb, -1, 0)], axis=-1)
    np.testing.assert_array_equal(read_pixels(path), expected)
    # a YCbCr TIFF (read by Pillow, which turns it itself): turned once
    from PIL import Image
    from skimage import data

    rgb = data.astronaut()[:40, :64]
    Image.fromarray(rgb).convert("YCbCr").save(path, tiffinfo={274: 1})
    upright = read_pixels(path)
    Image.fromarray(rgb).convert("YCbCr").save(path, tiffinfo={274: orientation})
    np.testing.assert_array_equal(
        read_pixels(path),
        np.stack([turn(c) for c in np.moveaxis(upright, -1, 0)], axis=-1))


def test_a_turned_ome_tiff_keeps_its_pixel_size_on_the_right_axes(tmp_path):
    """An OME-TIFF turned by 90 degrees (Orientation 6): its width is its
    stored height, and so are their pixel sizes."""
    import tifffile

    from deepblur.datasets import images

    size = {"PhysicalSizeX": 0.2, "PhysicalSizeXUnit": "\u00b5m",
            "PhysicalSizeY": 0.25, "PhysicalSizeYUnit": "nm"}
    data = np.arange(24 * 16, dtype=np.uint16).reshape(24, 16)
    tifffile.imwrite(tmp_path / "a.ome.tif", data, ome=True,
                     metadata=dict(size, axes="YX"),
                     extratags=[(274, "H", 1, 6, True)])
    img, info = images._read_pixels(tmp_path / "a.ome.tif")
    np.testing.assert_array_equal(img, np.rot90(data, -1))
    assert info["tiff"]["ome"] == {
        "PhysicalSizeX": 0.25, "PhysicalSizeXUnit": "nm",
        "PhysicalSizeY": 0.2, "PhysicalSizeYUnit": "\u00b5m"}


def test_a_tiff_whose_first_page_cannot_be_found_is_called_damaged(tmp_path):
    """A TIFF header followed by garbage said only 'holds no image'."""
    path = tmp_path / "garbage.tif"
    path.write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match="garbage.tif holds no image .* damaged"):
        load_images(path)


@pytest.mark.parametrize("kwargs, match", [
    (dict(intensity_range=(0, 0)), r"intensity_range is \(0, 0\)"),
    (dict(background=1.0), "background is 1"),
])
def test_point_sources_that_would_not_show_are_refused(kwargs, match):
    """intensity_range=(0, 0), or a background of 1 (the sources add to it,
    clipped to 1), returned images without a visible source silently."""
    with pytest.raises(ValueError, match=match):
        make_point_sources(2, (16, 16), density=0.05, **kwargs)
    # a source brighter than the field, even clipped, still shows
    pts = make_point_sources(1, (16, 16), density=0.05, background=0.9,
                             random_state=0)
    assert (pts > 0.9).any()
