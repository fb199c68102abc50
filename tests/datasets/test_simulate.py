"""Simulator of blurry-noisy observations: maths, noise, seeds, bad input."""

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d

from deepblur.datasets.images import extract_patches
from deepblur.datasets.simulate import (
    BlurDataset,
    _patch_pool,
    blur_images,
    make_blurred_images,
    make_deblurring_pairs,
)
from deepblur.estimators.basis import ProductConvolutionBasis
from deepblur.estimators.cone import ConeSampler


@pytest.fixture
def basis(rng):
    return ProductConvolutionBasis.from_components(rng.random((2, 3, 3)),
                                                   rng.random((2, 12, 12)))


@pytest.fixture
def sampler():
    return ConeSampler(alpha_range=(0.8, 1.2), random_state=0).fit(np.eye(2))


def _reference(u, gamma, basis):
    """sum_k gamma_k e_k * (f_k u), zero boundary, with scipy."""
    out = np.zeros_like(u)
    for g, e, f in zip(gamma, basis.kernels_, basis.maps_, strict=True):
        out += g * convolve2d(f * u, e, mode="same")
    return out


def test_blur_matches_scipy_reference_and_mean_normalisation(basis, rng):
    u = rng.random((3, 12, 12))
    gamma = rng.random((3, 2))
    y = blur_images(u, gamma, basis, noise_std=0.0)
    assert y.dtype == np.float32 and y.shape == (3, 12, 12)
    for i in range(3):
        ref = _reference(u[i] * 0.5 / u[i].mean(), gamma[i], basis)
        np.testing.assert_allclose(y[i], ref, rtol=1e-4, atol=1e-5)
    y_raw = blur_images(u, gamma, basis, noise_std=0.0, normalize=None)
    np.testing.assert_allclose(y_raw[0], _reference(u[0], gamma[0], basis),
                               rtol=1e-4, atol=1e-5)


def test_scale_is_identifiable_after_normalisation(basis, rng):
    # H[a g](c u) = a H[g] u after normalisation: the gain shows in y.
    u = rng.random((1, 12, 12))
    g = rng.random(2)
    y1 = blur_images(u, g, basis, noise_std=0.0)
    y2 = blur_images(7 * u, 2 * g, basis, noise_std=0.0)
    np.testing.assert_allclose(y2, 2 * y1, rtol=1e-5)


def test_noise_std_and_snr(basis, rng):
    u = np.tile(rng.random((1, 12, 12)), (400, 1, 1))
    g = rng.random(2)
    clean = blur_images(u[:1], g, basis, noise_std=0.0)
    y = blur_images(u, g, basis, noise_std=0.05, random_state=0)
    np.testing.assert_allclose((y - clean).std(), 0.05, rtol=0.02)
    y = blur_images(u, g, basis, noise_std=None, snr=10.0, random_state=0)
    sigma = np.sqrt(np.mean(clean.astype(float) ** 2) / 10)
    np.testing.assert_allclose((y - clean).std(), sigma, rtol=0.02)
    y = blur_images(u, g, basis, noise_std=(0.0, 0.1), random_state=0)
    per_image = (y - clean).std(axis=(1, 2))
    assert per_image.min() < 0.02 and per_image.max() > 0.08


def test_seeded_and_tensor_in_tensor_out(basis, rng):
    u = rng.random((2, 12, 12))
    g = rng.random((2, 2))
    a = blur_images(u, g, basis, random_state=3)
    np.testing.assert_array_equal(a, blur_images(u, g, basis, random_state=3))
    assert not np.array_equal(a, blur_images(u, g, basis, random_state=4))
    t = blur_images(torch.tensor(u), torch.tensor(g), basis, random_state=3)
    assert torch.is_tensor(t) and t.dtype == torch.float64


def test_make_blurred_images_consistent_with_blur(basis, sampler, rng):
    pool = rng.random((5, 12, 12))
    X, y = make_blurred_images(pool, basis, sampler, 20, noise_std=0.0,
                               augment=False, random_state=0)
    assert X.shape == (20, 12, 12) and y.shape == (20, 2)
    assert X.dtype == np.float32 and y.dtype == np.float32
    # Every image is the blur of one pool image under its gamma.
    cands = blur_images(np.repeat(pool, 20, 0), np.tile(y, (5, 1)), basis,
                        noise_std=0.0).reshape(5, 20, 12, 12)
    best = np.abs(cands - X[None]).max(axis=(2, 3)).min(axis=0)
    assert best.max() < 1e-4
    # gamma lies in the cone of the sampler with alpha in range (sum = alpha).
    assert (y >= 0).all() and (y.sum(1) >= 0.8 - 1e-6).all()
    assert (y.sum(1) <= 1.2 + 1e-6).all()
    X2, y2 = make_blurred_images(pool, basis, sampler, 20, random_state=0)
    X3, y3 = make_blurred_images(pool, basis, sampler, 20, random_state=0)
    np.testing.assert_array_equal(X2, X3)


def test_crops_from_larger_images(basis, sampler, rng):
    images = {"a": rng.random((30, 40)), "b": rng.random((20, 25))}
    X, y = make_blurred_images(images, basis, sampler, 6, random_state=0)
    assert X.shape == (6, 12, 12)


def test_dataset_fresh_batches_and_epochs(basis, sampler, rng):
    data = BlurDataset(rng.random((8, 12, 12)), basis, sampler, batch_size=4,
                       n_batches=3, random_state=0)
    assert len(data) == 3
    first = [b for b in data]
    second = [b for b in data]
    assert len(first) == 3 and first[0][0].shape == (4, 1, 12, 12)
    assert not torch.equal(first[0][1], second[0][1])     # new epoch, new data
    again = BlurDataset(rng.random((8, 12, 12)), basis, sampler, batch_size=4,
                        n_batches=3, random_state=0)
    np.testing.assert_array_equal(next(iter(again))[1], first[0][1])
    import pickle
    clone = pickle.loads(pickle.dumps(data))
    assert next(iter(clone))[0].shape == (4, 1, 12, 12)


def test_dataset_workers_draw_different_streams(basis, sampler, rng):
    data = BlurDataset(rng.random((8, 12, 12)), basis, sampler, batch_size=4,
                       n_batches=4, random_state=0)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
    gammas = [y for _, y in loader]
    assert len(gammas) == 4
    assert not torch.equal(gammas[0], gammas[1])


def test_workers_without_set_epoch_never_replay_a_pass(basis, sampler, rng):
    """A DataLoader copies the dataset into new workers at every pass: without
    set_epoch a seeded dataset replayed the first pass's samples at every
    pass. The loader's seed for the pass keeps them apart, reproducibly under
    the loader's generator."""
    data = BlurDataset(rng.random((8, 12, 12)), basis, sampler, batch_size=4,
                       n_batches=2, random_state=0)

    def one_pass(seed=None):
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=1,
                                             generator=generator)
        return torch.cat([y for _, y in loader])

    assert not torch.equal(one_pass(), one_pass())
    assert torch.equal(one_pass(3), one_pass(3))
    assert not torch.equal(one_pass(3), one_pass(4))


def test_set_epoch_gives_new_samples_in_new_workers(basis, sampler, rng):
    """A DataLoader copies the dataset into new workers at every epoch: without
    set_epoch each epoch replayed the samples of the first."""
    data = BlurDataset(rng.random((8, 12, 12)), basis, sampler, batch_size=4,
                       n_batches=2, random_state=0)

    def epoch(e):
        data.set_epoch(e)
        loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=1)
        return torch.cat([y for _, y in loader])

    first, second, first_again = epoch(0), epoch(1), epoch(0)
    assert not torch.equal(first, second)
    assert torch.equal(first, first_again)          # reproducible per epoch
    with pytest.raises(ValueError, match="epoch"):
        data.set_epoch(-1)
    # set_epoch(None) hands the dataset back to the loader's seed per pass
    data.set_epoch(None)

    def plain_pass():
        loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=1)
        return torch.cat([y for _, y in loader])

    assert not torch.equal(plain_pass(), plain_pass())


@pytest.mark.parametrize("boundary", ["zero", "crop"])
def test_dataset_blurs_each_patch_by_several_operators(basis, sampler, rng, boundary):
    """gammas_per_image=3: consecutive samples share a clean patch, each with
    its own gamma, and each is exactly that patch blurred by its gamma."""
    pool = rng.random((6, 12, 12)) + 0.1
    data = BlurDataset(pool, basis, sampler, batch_size=7, n_batches=2,
                       noise_std=0.0, augment=False, boundary=boundary,
                       gammas_per_image=3, random_state=0)
    X, y = next(iter(data))
    assert X.shape == (7, 1, 12, 12) and y.shape == (7, 2)
    assert len({tuple(row) for row in y.tolist()}) == 7       # fresh gamma each
    source = []
    for i in range(7):
        blurred = [blur_images(pool[p:p + 1], y[i:i + 1].numpy(), basis,
                               noise_std=0.0, boundary=boundary)[0]
                   for p in range(len(pool))]
        match = [p for p in range(len(pool))
                 if np.allclose(X[i, 0].numpy(), blurred[p], rtol=1e-4, atol=1e-5)]
        assert len(match) == 1
        source.append(match[0])
    assert source[0] == source[1] == source[2] and source[3] == source[4] == source[5]
    # per-sample noise: the samples of a patch get independent noise levels
    noisy = BlurDataset(pool, basis, sampler, batch_size=6, noise_std=(0.0, 0.1),
                        augment=False, gammas_per_image=3, random_state=0)
    clean = BlurDataset(pool, basis, sampler, batch_size=6, noise_std=0.0,
                        augment=False, gammas_per_image=3, random_state=0)
    residual = (noisy.draw(6)[0] - clean.draw(6)[0]).std(dim=(1, 2, 3))
    assert len(set(np.round(residual.numpy(), 6))) == 6


def test_dataset_with_one_gamma_per_image_keeps_its_stream(basis, sampler, rng):
    pool = rng.random((6, 12, 12)) + 0.1
    default = BlurDataset(pool, basis, sampler, batch_size=5, random_state=0)
    one = BlurDataset(pool, basis, sampler, batch_size=5, gammas_per_image=1,
                      random_state=0)
    for (a, ga), (b, gb) in zip(default, one, strict=True):
        assert torch.equal(a, b) and torch.equal(ga, gb)


@pytest.mark.parametrize("kwargs, match", [
    ({"noise_std": -0.1}, "noise_std"),
    ({"noise_std": (0.2, 0.1)}, "noise_std"),
    # strings and booleans are no numbers: float() read them as (0.01, 0.02)
    # and (0, 1)
    ({"noise_std": ("0.01", "0.02")}, "noise_std must be a float or a"),
    ({"noise_std": (False, True)}, "noise_std must be a float or a"),
    ({"noise_std": 0.1, "snr": 10.0}, "either"),
    ({"normalize": "max"}, "normalize"),
    ({"image_mean": 0.0}, "image_mean"),
    ({"image_mean": np.inf}, "image_mean"),
    ({"snr": 10.0}, "pass noise_std=None with snr"),
])
def test_bad_noise_and_normalisation(basis, rng, kwargs, match):
    with pytest.raises(ValueError, match=match):
        blur_images(rng.random((1, 12, 12)), [1.0, 1.0], basis, **kwargs)


def test_bad_images_and_gamma(basis, rng):
    with pytest.raises(ValueError, match=r"image_shape \(12, 12\)"):
        blur_images(rng.random((1, 10, 12)), [1.0, 1.0], basis)
    bad = rng.random((1, 12, 12))
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        blur_images(bad, [1.0, 1.0], basis)
    with pytest.raises(ValueError, match=r"K=2"):
        blur_images(rng.random((1, 12, 12)), [1.0, 1.0, 1.0], basis)
    with pytest.raises(ValueError, match="positive mean"):
        blur_images(np.zeros((1, 12, 12)), [1.0, 1.0], basis)
    with pytest.raises(ValueError, match="basis"):
        blur_images(rng.random((1, 12, 12)), [1.0, 1.0], None)
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        blur_images(rng.random((1, 12, 12)), [1.0, 1.0],
                    ProductConvolutionBasis(2))


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">u2"])
def test_big_endian_images_are_read_as_native(basis, sampler, rng, dtype):
    """Big-endian arrays (FITS files, some TIFFs) gave torch's raw byte-order
    error in every simulation function; the rest of the library took them."""
    from deepblur.datasets import make_random_operators

    pool = (rng.random((4, 12, 12)) * 200 + 10).astype(dtype)
    native = pool.astype(pool.dtype.newbyteorder("="))
    gamma = sampler.sample(4)
    np.testing.assert_array_equal(
        blur_images(pool, gamma, basis, random_state=0),
        blur_images(native, gamma, basis, random_state=0))
    for args in ((4,), ()):
        X, y = make_blurred_images(pool, basis, sampler, *args, random_state=0)
        X0, y0 = make_blurred_images(native, basis, sampler, *args, random_state=0)
        np.testing.assert_array_equal(X, X0)
    batch = next(iter(BlurDataset(pool, basis, sampler, batch_size=2,
                                  random_state=0)))
    again = next(iter(BlurDataset(native, basis, sampler, batch_size=2,
                                  random_state=0)))
    torch.testing.assert_close(batch[0], again[0])
    ops = make_random_operators(2, image_shape=(12, 12), kernel_shape=(5, 5),
                                grid_shape=(4, 4), random_state=0)
    np.testing.assert_array_equal(
        make_deblurring_pairs(pool, ops, 2, random_state=0)[0],
        make_deblurring_pairs(native, ops, 2, random_state=0)[0])


@pytest.mark.parametrize("bad", ["natural", b"natural", "images/"])
def test_a_folder_or_name_is_not_images(basis, sampler, bad):
    """A path or a name where images are expected (as a deepblur train config
    takes them) failed in torch or numpy with a message about strings."""
    import pathlib

    for value in (bad, pathlib.Path("images")):
        with pytest.raises(TypeError, match="must be images.*load_images.*"
                                            "natural_image_split"):
            blur_images(value, [1.0, 1.0], basis)
        with pytest.raises(TypeError, match="must be images"):
            next(iter(BlurDataset(value, basis, sampler)))
    for listed in (["a.tif", "b.tif"], {"a": pathlib.Path("a.tif")}):
        with pytest.raises(TypeError, match="must be images"):
            next(iter(BlurDataset(listed, basis, sampler)))
    with pytest.raises(TypeError, match="must hold real numbers"):
        blur_images(np.array([["a"] * 12] * 12), [1.0, 1.0], basis)
    with pytest.raises(TypeError, match="must hold real numbers"):
        blur_images(np.ones((12, 12), dtype=complex), [1.0, 1.0], basis)


def test_flipped_views_are_taken(basis, sampler, rng):
    """A flipped array (negative strides) gave torch's raw error."""
    pool = rng.random((3, 12, 12)) + 0.1
    flipped = pool[:, ::-1]
    gamma = sampler.sample(3)
    np.testing.assert_array_equal(
        blur_images(flipped, gamma, basis, random_state=0),
        blur_images(flipped.copy(), gamma, basis, random_state=0))
    X, _ = make_blurred_images(flipped, basis, sampler, 2, random_state=0)
    np.testing.assert_array_equal(
        X, make_blurred_images(flipped.copy(), basis, sampler, 2,
                               random_state=0)[0])


def test_dataset_bad_parameters(basis, sampler, rng):
    with pytest.raises(ValueError, match="batch_size"):
        next(iter(BlurDataset(rng.random((2, 12, 12)), basis, sampler,
                              batch_size=0)))
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="gammas_per_image must be a positive"):
            next(iter(BlurDataset(rng.random((2, 12, 12)), basis, sampler,
                                  gammas_per_image=bad)))
    wrong_k = ConeSampler().fit(np.eye(3))
    with pytest.raises(ValueError, match="K=2"):
        next(iter(BlurDataset(rng.random((2, 12, 12)), basis, wrong_k)))
    data = BlurDataset(rng.random((2, 12, 12)), basis, sampler, device="auto")
    assert next(iter(data))[0].device.type == ("cuda" if torch.cuda.is_available()
                                               else "cpu")
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n must be a positive int"):
            data.draw(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            next(iter(BlurDataset(rng.random((2, 12, 12)), basis, sampler,
                                  device="cuda")))


def test_crop_boundary_is_a_window_on_a_reflected_scene(rng):
    """boundary='crop' blurs the scene around the image (here its mirror
    image), not a dark surrounding: scipy's mirror-mode convolution."""
    from scipy import ndimage

    kernel = rng.random((1, 5, 7))
    basis = ProductConvolutionBasis.from_components(kernel, np.ones((1, 16, 20)))
    u = rng.random((2, 16, 20)) + 0.1
    y = blur_images(u, [1.0], basis, noise_std=0.0, normalize=None,
                    boundary="crop")
    for i in range(2):
        expected = ndimage.convolve(u[i], kernel[0], mode="mirror")
        np.testing.assert_allclose(y[i], expected, rtol=1e-5, atol=1e-6)
    flat = blur_images(np.ones((1, 16, 20)), [1.0], basis, noise_std=0.0,
                       normalize=None, boundary="crop")
    np.testing.assert_allclose(flat, kernel.sum(), rtol=1e-5)   # no dark border
    zero = blur_images(np.ones((1, 16, 20)), [1.0], basis, noise_std=0.0,
                       normalize=None)
    assert zero[0, 0, 0] < 0.5 * kernel.sum()                    # the zero boundary


def test_crop_boundary_space_varying_matches_padded_dense_operator(basis, sampler,
                                                                   rng):
    """Space-varying maps: the maps are extended by their edge values."""
    from deepblur.operators.product_convolution import ProductConvolution

    u = rng.random((1, 12, 12)) + 0.1
    gamma = sampler.sample(1)
    y = blur_images(u, gamma, basis, noise_std=0.0, normalize=None,
                    boundary="crop")
    k = basis.kernels_.shape[1] // 2
    big = ProductConvolution(basis.kernels_, np.pad(basis.maps_, ((0, 0), (k, k),
                                                                  (k, k)),
                                                    mode="edge"))
    padded = np.pad(u[0], k, mode="reflect")
    ref = big.forward(torch.from_numpy(padded)[None], torch.as_tensor(gamma))
    np.testing.assert_allclose(y[0], ref[0, k:-k, k:-k].numpy(), rtol=1e-5,
                               atol=1e-6)
    data = BlurDataset(rng.random((4, 12, 12)) + 0.1, basis, sampler, batch_size=3,
                       n_batches=1, boundary="crop", random_state=0)
    X, _ = next(iter(data))
    assert X.shape == (3, 1, 12, 12)
    with pytest.raises(ValueError, match="boundary must be one of"):
        blur_images(u, gamma, basis, boundary="periodic")


@pytest.mark.cuda
@pytest.mark.parametrize("boundary", ["zero", "crop"])
def test_dataset_on_cuda_blurs_like_the_cpu(basis, sampler, rng, boundary):
    # Batches made on the GPU: same shapes, and the same blur of the same
    # clean patch and gamma as on the CPU (the random streams differ).
    pool = rng.random((8, 12, 12)) + 0.1
    cpu = BlurDataset(pool, basis, sampler, batch_size=4, n_batches=2,
                      noise_std=0.0, augment=False, boundary=boundary,
                      random_state=0)
    gpu = BlurDataset(pool, basis, sampler, batch_size=4, n_batches=2,
                      noise_std=0.0, augment=False, boundary=boundary,
                      device="cuda", random_state=0)
    X, y = next(iter(gpu))
    assert X.device.type == y.device.type == "cuda"
    assert X.shape == (4, 1, 12, 12) and y.shape == (4, 2)
    assert torch.isfinite(X).all()
    Xc, yc = next(iter(cpu))
    assert Xc.device.type == "cpu"
    u = torch.as_tensor(pool[:3], dtype=torch.float32)
    g = torch.as_tensor(sampler.sample(3), dtype=torch.float32)
    kw = dict(noise_std=0.0, boundary=boundary)
    np.testing.assert_allclose(blur_images(u.cuda(), g.cuda(), basis, **kw).cpu(),
                               blur_images(u, g, basis, **kw), rtol=1e-4, atol=1e-5)


def test_patch_pool_draws_chunks_of_1000_in_place(rng):
    # The pool is filled in place in float32, with the draws of the chunked
    # float64 extraction that trained the shipped network.
    scenes = {"a": rng.random((30, 40)), "b": rng.random((20, 20))}
    state = np.random.RandomState(7)
    ref = np.concatenate([extract_patches(scenes, n, (12, 12), augment=False,
                                          random_state=state)
                          for n in (1000, 1000, 500)]).astype(np.float32)
    pool = _patch_pool(scenes, (12, 12), 2500, np.random.RandomState(7))
    assert pool.dtype == np.float32
    np.testing.assert_array_equal(pool, ref)
    patches = rng.random((4, 12, 12))
    assert _patch_pool(patches, (12, 12), 2500, state) is patches


def test_black_crops_are_left_out_of_the_pool(basis, sampler, rng):
    # A source image with a black half: its black crops cannot be scaled to
    # the mean brightness, so they are dropped instead of failing a batch.
    scene = rng.random((48, 48)) + 0.1
    scene[:, :30] = 0.0
    data = BlurDataset([scene], basis, sampler, batch_size=64, n_batches=1,
                       pool_size=300, random_state=0)
    X, _ = next(iter(data))
    assert torch.isfinite(X).all()
    pool = data._state["pool"]
    assert 0 < len(pool) < 300 and (pool.mean(dim=(1, 2)) > 0).all()
    black = BlurDataset([np.zeros((48, 48))], basis, sampler, pool_size=10)
    with pytest.raises(ValueError, match="all 10 cropped patches are black"):
        next(iter(black))
    # without the normalisation nothing needs a positive mean: all are kept
    centred = BlurDataset([scene - 0.3], basis, sampler, batch_size=8,
                          n_batches=1, pool_size=300, normalize=None,
                          random_state=0)
    next(iter(centred))
    assert len(centred._state["pool"]) == 300


def test_dark_patches_given_as_an_array_are_refused_before_any_batch(
        basis, sampler, rng):
    """A pool of patches with a black one failed at the first batch that drew
    it (batch 15 of a training, say): refused when the stream starts, naming
    the patches; make_blurred_images names its own parameters."""
    pool = np.concatenate([rng.random((5, 12, 12)), np.zeros((1, 12, 12)),
                           -rng.random((1, 12, 12))])
    data = BlurDataset(pool, basis, sampler, batch_size=2, n_batches=50,
                       random_state=0)
    with pytest.raises(ValueError, match=r"2 of the 7 given .*indices \[5, 6\]"):
        next(iter(data))
    assert len(list(BlurDataset(pool, basis, sampler, batch_size=2, n_batches=3,
                                normalize=None, random_state=0))) == 3
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="n_samples must be a positive int"):
            make_blurred_images(pool[:5], basis, sampler, bad)


def test_deblurring_pairs_check_their_parameters(rng):
    from deepblur.datasets import make_random_operators

    ops = make_random_operators(2, image_shape=(12, 12), kernel_shape=(5, 5),
                                grid_shape=(4, 4), random_state=0)
    pool = rng.random((4, 12, 12)) + 0.1
    for bad in (-1.0, 0.0, np.inf, np.nan, True):
        with pytest.raises(ValueError, match="image_mean must be a positive"):
            make_deblurring_pairs(pool, ops, 2, image_mean=bad)
    with pytest.raises(ValueError, match="n_samples must be a positive int"):
        make_deblurring_pairs(pool, ops, True)
    blurry, clean = make_deblurring_pairs(pool, ops, np.int64(2), noise_std=None,
                                          random_state=0)
    again, _ = make_deblurring_pairs(pool, ops, 2, noise_std=0.0, random_state=0)
    np.testing.assert_array_equal(blurry, again)          # None is no noise

