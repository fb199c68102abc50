"""Forward/adjoint of product-convolution operators against scipy references."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import convolve2d

from deepblur.operators.product_convolution import (
    ProductConvolution,
    dense_matrix,
    fft_shape,
    product_convolution,
    product_convolution_adjoint,
)

SCIPY_BOUNDARY = {"zero": {}, "periodic": {"boundary": "wrap"}}


def scipy_reference(u, gamma, kernels, maps, boundary):
    """H[gamma] u by scipy.signal.convolve2d, one image and one k at a time."""
    out = np.zeros_like(u)
    for i in range(u.shape[0]):
        for k in range(kernels.shape[0]):
            out[i] += gamma[i, k] * convolve2d(
                maps[k] * u[i], kernels[k], mode="same", **SCIPY_BOUNDARY[boundary]
            )
    return out


@pytest.mark.parametrize("boundary", ["zero", "periodic"])
@pytest.mark.parametrize("kernel_shape", [(5, 5), (4, 4), (3, 6), (8, 7), (1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_scipy(boundary, kernel_shape, dtype, rng):
    K, n, H, W = 3, 2, 12, 10
    e = rng.random((K,) + kernel_shape)
    f = rng.random((K, H, W))
    u = rng.random((n, H, W))
    g = rng.standard_normal((n, K))
    op = ProductConvolution(e, f, boundary)
    y = op.forward(torch.from_numpy(u).to(dtype), torch.from_numpy(g))
    assert y.dtype == dtype and y.shape == (n, H, W)
    ref = scipy_reference(u, g, e, f, boundary)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(y.numpy(), ref, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("boundary", ["zero", "periodic"])
@pytest.mark.parametrize("kernel_shape", [(5, 5), (4, 6), (15, 3)])
def test_adjoint_identity(boundary, kernel_shape, device, rng):
    K, n, H, W = 4, 3, 9, 11
    op = ProductConvolution(rng.standard_normal((K,) + kernel_shape),
                            rng.standard_normal((K, H, W)), boundary)
    u = torch.from_numpy(rng.standard_normal((n, H, W))).to(device)
    v = torch.from_numpy(rng.standard_normal((n, H, W))).to(device)
    g = torch.from_numpy(rng.standard_normal((n, K))).to(device)
    lhs = (op.forward(u, g) * v).sum(dim=(1, 2))
    rhs = (u * op.adjoint(v, g)).sum(dim=(1, 2))
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("boundary", ["zero", "periodic"])
def test_adjoint_is_transpose_of_dense_matrix(boundary, rng):
    K, H, W = 2, 6, 5
    op = ProductConvolution(rng.standard_normal((K, 3, 4)),
                            rng.standard_normal((K, H, W)), boundary)
    g = rng.standard_normal(K)
    A = dense_matrix(op, g).numpy()
    eye = torch.eye(H * W, dtype=torch.float64).reshape(H * W, H, W)
    At = op.adjoint(eye, torch.from_numpy(g)).reshape(H * W, -1).numpy().T
    np.testing.assert_allclose(At, A.T, atol=1e-12)


def test_batch_broadcasting(rng):
    K, H, W = 3, 8, 8
    op = ProductConvolution(rng.random((K, 3, 3)), rng.random((K, H, W)))
    u = torch.from_numpy(rng.random((4, H, W)))
    g = torch.from_numpy(rng.random(K))
    one = op.forward(u, g)
    many = op.forward(u, g.expand(4, K))
    torch.testing.assert_close(one, many)
    # one image, several operators
    gs = torch.from_numpy(rng.random((5, K)))
    y = op.forward(u[:1], gs)
    assert y.shape == (5, H, W)
    torch.testing.assert_close(y[2], op.forward(u[:1], gs[2])[0])


@pytest.mark.parametrize("chunk", [1, 2, 3, 100])
def test_chunking_does_not_change_results(chunk, rng):
    K, H, W = 3, 10, 9
    e, f = rng.random((K, 4, 4)), rng.random((K, H, W))
    u = torch.from_numpy(rng.random((5, H, W)))
    g = torch.from_numpy(rng.random((5, K)))
    ref = ProductConvolution(e, f, batch_chunk=100)
    op = ProductConvolution(e, f, batch_chunk=chunk)
    torch.testing.assert_close(op.forward(u, g), ref.forward(u, g))
    torch.testing.assert_close(op.adjoint(u, g), ref.adjoint(u, g))


@pytest.mark.parametrize("boundary", ["zero", "periodic"])
@pytest.mark.parametrize("chunk", [1, 2, 100])
def test_forward_many_matches_scipy(boundary, chunk, rng):
    """out[i, j] = H[gammas[i, j]] u[i], against scipy one image and k at a time."""
    K, n, g, H, W = 3, 3, 4, 11, 9
    e, f = rng.random((K, 5, 4)), rng.random((K, H, W))
    u, gammas = rng.random((n, H, W)), rng.standard_normal((n, g, K))
    op = ProductConvolution(e, f, boundary, batch_chunk=chunk)
    y = op.forward_many(torch.from_numpy(u), torch.from_numpy(gammas))
    assert y.shape == (n, g, H, W) and y.dtype == torch.float64
    ref = scipy_reference(np.repeat(u, g, axis=0), gammas.reshape(n * g, K), e, f,
                          boundary).reshape(n, g, H, W)
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-12 * np.abs(ref).max())
    # float32 in, float32 out; array-like gammas
    y32 = op.forward_many(torch.from_numpy(u).float(), gammas.tolist())
    assert y32.dtype == torch.float32
    np.testing.assert_allclose(y32.numpy(), ref, atol=1e-5 * np.abs(ref).max())


def test_forward_many_bad_inputs(rng):
    op = ProductConvolution(rng.random((2, 3, 3)), rng.random((2, 6, 6)))
    u = torch.zeros(2, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"gammas must have shape \(n=2, g, K=2\)"):
        op.forward_many(u, torch.ones(3, 1, 2))
    with pytest.raises(ValueError, match=r"gammas must have shape \(n=2, g, K=2\)"):
        op.forward_many(u, torch.ones(2, 1, 3))
    with pytest.raises(ValueError, match="gammas must have 3 dimensions"):
        op.forward_many(u, torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"u must have image shape \(6, 6\)"):
        op.forward_many(torch.zeros(2, 5, 6), torch.ones(2, 1, 2))
    with pytest.raises(ValueError, match="u must have 3 dimensions"):
        op.forward_many(torch.zeros(6, 6), torch.ones(1, 1, 2))
    with pytest.raises(TypeError, match="torch.Tensor"):
        op.forward_many(np.zeros((2, 6, 6)), torch.ones(2, 1, 2))


def test_autograd_matches_adjoint(rng):
    """The gradient of <H u, v> w.r.t. u is H^T v; w.r.t. gamma is <H_k u, v>."""
    K, H, W = 3, 7, 8
    op = ProductConvolution(rng.random((K, 3, 3)), rng.random((K, H, W)))
    u = torch.from_numpy(rng.random((2, H, W))).requires_grad_(True)
    g = torch.from_numpy(rng.random((2, K))).requires_grad_(True)
    v = torch.from_numpy(rng.random((2, H, W)))
    (op.forward(u, g) * v).sum().backward()
    torch.testing.assert_close(u.grad, op.adjoint(v, g.detach()))
    eye = torch.eye(K, dtype=torch.float64)
    expected = torch.stack([
        torch.stack([(op.forward(u.detach()[i:i + 1], eye[k]) * v[i]).sum()
                     for k in range(K)]) for i in range(2)])
    torch.testing.assert_close(g.grad, expected)


def test_functional_forms_match_class(rng):
    e, f = rng.random((2, 3, 3)), rng.random((2, 6, 6))
    u = torch.from_numpy(rng.random((1, 6, 6)))
    g = torch.tensor([0.5, 2.0], dtype=torch.float64)
    op = ProductConvolution(e, f, "periodic")
    torch.testing.assert_close(product_convolution(u, g, e, f, "periodic"),
                               op.forward(u, g))
    torch.testing.assert_close(product_convolution_adjoint(u, g, e, f, "periodic"),
                               op.adjoint(u, g))


def test_fft_shape_is_minimal_and_fast():
    assert fft_shape((128, 128), (31, 31), "periodic") == (128, 128)
    m = fft_shape((128, 128), (31, 31), "zero")
    assert m[0] >= 128 + 15 and m[0] <= 160
    # kernels larger than the image still fit
    assert fft_shape((4, 4), (9, 9), "zero")[0] >= 9


def test_pickle_drops_cache_and_reproduces(rng):
    import pickle

    op = ProductConvolution(rng.random((2, 3, 3)), rng.random((2, 6, 6)))
    u = torch.from_numpy(rng.random((1, 6, 6)))
    y = op.forward(u, [1.0, 1.0])
    assert op._cache
    op2 = pickle.loads(pickle.dumps(op))
    assert not op2._cache
    torch.testing.assert_close(op2.forward(u, [1.0, 1.0]), y)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernels=np.ones((2, 3)), maps=np.ones((2, 4, 4))), "kernels"),
        (dict(kernels=np.ones((2, 3, 3)), maps=np.ones((3, 4, 4))), "same number"),
        (dict(kernels=np.ones((2, 3, 3)), maps=np.ones((2, 4, 4)),
              boundary="reflect"), "boundary"),
        (dict(kernels=np.full((1, 3, 3), np.nan), maps=np.ones((1, 4, 4))),
         "kernels"),
        (dict(kernels=np.ones((1, 3, 3)), maps=np.full((1, 4, 4), np.inf)), "maps"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ProductConvolution(**kwargs)


def test_bad_inputs_name_the_parameter(rng):
    op = ProductConvolution(rng.random((2, 3, 3)), rng.random((2, 6, 6)))
    u = torch.zeros(1, 6, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"u must have image shape \(6, 6\)"):
        op.forward(torch.zeros(1, 5, 6), [1.0, 1.0])
    with pytest.raises(ValueError, match="u must have 3 dimensions"):
        op.forward(torch.zeros(6, 6), [1.0, 1.0])
    with pytest.raises(ValueError, match="gamma must have 2 coefficients"):
        op.forward(u, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="gamma must have 1 or n=2 rows"):
        op.adjoint(torch.zeros(2, 6, 6), torch.ones(3, 2))
    with pytest.raises(TypeError, match="torch.Tensor"):
        op.forward(np.zeros((1, 6, 6)), [1.0, 1.0])


@settings(max_examples=25, deadline=None)
@given(
    H=st.integers(3, 12), W=st.integers(3, 12), kh=st.integers(1, 9),
    kw=st.integers(1, 9), boundary=st.sampled_from(["zero", "periodic"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_matches_dense_scipy(H, W, kh, kw, boundary, seed):
    """Any sizes, kernels larger than the image included (zero boundary)."""
    r = np.random.default_rng(seed)
    if boundary == "periodic" and (kh > H or kw > W):
        kh, kw = min(kh, H), min(kw, W)
    e, f = r.standard_normal((2, kh, kw)), r.standard_normal((2, H, W))
    u, g = r.standard_normal((1, H, W)), r.standard_normal((1, 2))
    y = ProductConvolution(e, f, boundary).forward(torch.from_numpy(u),
                                                   torch.from_numpy(g))
    np.testing.assert_allclose(y.numpy(), scipy_reference(u, g, e, f, boundary),
                               atol=1e-10)


@pytest.mark.cuda
def test_cuda_matches_cpu(rng):
    e, f = rng.random((3, 5, 5)), rng.random((3, 16, 16))
    op = ProductConvolution(e, f)
    u = torch.from_numpy(rng.random((4, 16, 16))).float()
    g = torch.from_numpy(rng.random((4, 3))).float()
    y_cpu = op.forward(u, g)
    y_gpu = op.forward(u.cuda(), g.cuda())
    assert y_gpu.device.type == "cuda"
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-4, atol=1e-5)
    gammas = torch.from_numpy(rng.random((4, 3, 3))).float()
    many = op.forward_many(u.cuda(), gammas.cuda())
    assert many.device.type == "cuda"
    torch.testing.assert_close(many.cpu(), op.forward_many(u, gammas), rtol=1e-4,
                               atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_images_run_in_float32(dtype):
    """The FFTs take no half precision on CPU: the operator computes in float32
    and returns the images' dtype."""
    rng = np.random.default_rng(0)
    op = ProductConvolution(rng.random((2, 3, 3)), rng.random((2, 6, 6)))
    u = torch.from_numpy(rng.random((2, 6, 6))).to(dtype)
    gamma = torch.tensor([1.0, 0.5])
    for method in (op.forward, op.adjoint):
        out = method(u, gamma)
        assert out.dtype == dtype
        ref = method(u.float(), gamma)
        torch.testing.assert_close(out.float(), ref.to(dtype).float())
    assert op.forward_many(u[:1], gamma[None, None]).dtype == dtype


def test_basis_apply_dtypes_of_tensors():
    from deepblur import ProductConvolutionBasis

    rng = np.random.default_rng(0)
    basis = ProductConvolutionBasis.from_components(rng.random((2, 3, 3)),
                                                    rng.random((2, 6, 6)))
    u = rng.random((6, 6))
    g = np.array([1.0, 0.5])
    expected = basis.apply(u, g)
    assert basis.apply(torch.from_numpy(u).half(), g).dtype == torch.float32
    assert basis.apply(torch.from_numpy(u).bfloat16(), g).dtype == torch.float32
    ints = basis.apply(torch.from_numpy((u > 0.5).astype(np.int64)), g)
    assert ints.dtype == torch.get_default_dtype()
    np.testing.assert_allclose(ints.numpy(), basis.apply((u > 0.5) * 1.0, g),
                               rtol=1e-6, atol=1e-7)
    assert basis.apply(torch.from_numpy(u > 0.5), g).dtype == torch.float32
    assert basis.apply((u > 0.5).astype(np.int64), g).dtype == np.float64
    np.testing.assert_allclose(basis.apply(torch.from_numpy(u), g).numpy(), expected)


@pytest.mark.parametrize("first", ["inference_mode", "no_grad"])
@pytest.mark.parametrize("built_inside", [False, True])
def test_cache_filled_without_grad_serves_later_calls(first, built_inside, rng):
    """The spectra and work arrays cached by a first call under
    ``torch.inference_mode()`` (or ``no_grad``) are normal tensors: later plain
    and autograd calls on the same operator work and give the same results
    (inference tensors can be neither written in place nor saved for
    backward outside inference mode)."""
    K, H, W = 2, 7, 6
    e, f = rng.random((K, 3, 3)), rng.random((K, H, W))
    u = torch.from_numpy(rng.random((2, H, W)))
    g = torch.from_numpy(rng.random((2, K)))
    gammas = g[:, None]
    ref = ProductConvolution(e, f)
    mode = torch.inference_mode if first == "inference_mode" else torch.no_grad
    with mode():
        op = ProductConvolution(e, f) if built_inside else None
    op = op or ProductConvolution(e, f)
    with mode():
        for name in ("forward", "adjoint"):
            torch.testing.assert_close(getattr(op, name)(u, g),
                                       getattr(ref, name)(u, g))
        op.forward_many(u, gammas)
    for name in ("forward", "adjoint"):
        torch.testing.assert_close(getattr(op, name)(u, g), getattr(ref, name)(u, g))
        x = u.clone().requires_grad_(True)
        getattr(op, name)(x, g).sum().backward()
        xr = u.clone().requires_grad_(True)
        getattr(ref, name)(xr, g).sum().backward()
        torch.testing.assert_close(x.grad, xr.grad)
    x = u.clone().requires_grad_(True)
    op.forward_many(x, gammas).sum().backward()
    torch.testing.assert_close(x.grad, op.adjoint(torch.ones_like(u), g))
    # and back in inference mode once more
    with torch.inference_mode():
        torch.testing.assert_close(op.forward(u, g), ref.forward(u, g))


def _held_tensors(op):
    """The tensors an operator keeps between calls, seen from this thread."""
    sets = list(op._cache.values())
    sets += list(getattr(getattr(op, "_local", None), "work", {}).values())
    return [t for s in sets for t in s]


def test_work_arrays_do_not_grow_with_batch_sizes(rng):
    """One work set per kind, device and dtype, grown to the largest chunk and
    sliced: distinct batch sizes do not each leave their own arrays behind,
    and the results are those of a fresh operator."""
    K, H, W = 2, 8, 7
    e, f = rng.random((K, 3, 3)), rng.random((K, H, W))
    op = ProductConvolution(e, f, "periodic")
    for n in (3, 1, 6, 2, 5):
        u = torch.from_numpy(rng.random((n, H, W)))
        g = torch.from_numpy(rng.random((n, K)))
        fresh = ProductConvolution(e, f, "periodic")
        torch.testing.assert_close(op.forward(u, g), fresh.forward(u, g))
        torch.testing.assert_close(op.adjoint(u, g), fresh.adjoint(u, g))
    held = _held_tensors(op)
    # spectra, maps, conjugate spectra + 4 forward + 3 adjoint work arrays
    assert len(held) == 3 + 4 + 3
    assert max(t.shape[0] for t in held[3:]) == 6
    one_set = sum(t.numel() * t.element_size() for t in held)
    for n in range(7, 0, -1):
        op.forward(torch.zeros(n, H, W, dtype=torch.float64), [1.0, 1.0])
        op.adjoint(torch.zeros(n, H, W, dtype=torch.float64), [1.0, 1.0])
    held = _held_tensors(op)
    assert len(held) == 3 + 4 + 3
    assert sum(t.numel() * t.element_size() for t in held) <= one_set * 7 / 6


def test_work_arrays_die_with_their_thread(rng):
    """Each thread's work arrays go when the thread ends; the operator itself
    keeps only the shared spectra."""
    import gc
    import threading
    import weakref

    op = ProductConvolution(rng.random((2, 3, 3)), rng.random((2, 6, 6)))
    u = torch.from_numpy(rng.random((3, 6, 6)))
    refs, errors = [], []
    barrier = threading.Barrier(4)

    def work():
        try:
            op.forward(u, [1.0, 2.0])
            op.adjoint(u, [1.0, 2.0])
            refs.extend(weakref.ref(t) for t in _held_tensors(op)[3:])
            barrier.wait()      # all alive at once: distinct thread ids
        except Exception as exc:        # pragma: no cover - reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    gc.collect()
    assert len(refs) == 4 * (4 + 3)
    assert all(r() is None for r in refs)
    assert len(_held_tensors(op)) == 3


@pytest.mark.parametrize("batch_chunk", [None, 2])
def test_concurrent_calls_on_one_operator(batch_chunk, rng):
    """Threads calling the same operator at once, with different batch sizes,
    get the results of serial calls (no shared work array)."""
    from concurrent.futures import ThreadPoolExecutor

    K, H, W = 3, 9, 8
    op = ProductConvolution(rng.random((K, 4, 3)), rng.random((K, H, W)),
                            batch_chunk=batch_chunk)
    cases = [(torch.from_numpy(rng.random((n, H, W))),
              torch.from_numpy(rng.random((n, K)))) for n in (1, 4, 2, 5, 3, 1)]
    expected = [(op.forward(u, g), op.adjoint(u, g)) for u, g in cases]
    op = ProductConvolution(op.kernels, op.maps, batch_chunk=batch_chunk)

    def run(i):
        u, g = cases[i % len(cases)]
        return i % len(cases), op.forward(u, g), op.adjoint(u, g)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(48)))
    # to float64 rounding: torch's intra-op threads may split a reduction
    # differently under concurrent calls (1.8e-15 seen with 2 threads); a
    # work array shared between threads would give errors of order 1
    for i, fwd, adj in results:
        torch.testing.assert_close(fwd, expected[i][0], rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(adj, expected[i][1], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("grad", ["none", "u", "gamma"])
def test_empty_batches_give_empty_results(grad, rng):
    """n = 0 images (or 0 operators per image): correctly shaped empty
    results on every path, in the graph when one is recorded (torch.cat of no
    chunk raised before)."""
    K, H, W = 2, 8, 7
    op = ProductConvolution(rng.random((K, 3, 3)), rng.random((K, H, W)))
    u = torch.zeros(0, H, W, dtype=torch.float64, requires_grad=grad == "u")
    g = torch.ones(K, dtype=torch.float64, requires_grad=grad == "gamma")
    one = torch.zeros(1, H, W, dtype=torch.float64, requires_grad=grad == "u")
    no_rows = torch.ones(0, K, dtype=torch.float64, requires_grad=grad == "gamma")
    outs = [op.forward(u, g), op.adjoint(u, g), op.normal(u, g),
            op.forward(one, no_rows), op.adjoint(one, no_rows)]
    for out in outs:
        assert out.shape == (0, H, W) and out.dtype == torch.float64
    gammas = torch.ones(0, 3, K, dtype=torch.float64, requires_grad=grad == "gamma")
    many = op.forward_many(u, gammas)
    assert many.shape == (0, 3, H, W) and many.dtype == torch.float64
    two = torch.zeros(2, H, W, dtype=torch.float64, requires_grad=grad == "u")
    none = torch.ones(2, 0, K, dtype=torch.float64, requires_grad=grad == "gamma")
    assert op.forward_many(two, none).shape == (2, 0, H, W)  # no operator per image
    if grad != "none":
        leaf = {"u": u, "gamma": g}[grad]
        sum(o.sum() for o in outs[:3]).backward()
        assert leaf.grad.shape == leaf.shape and not leaf.grad.any()
        many.sum().backward()
    with torch.inference_mode():
        assert op.forward(u.detach(), g.detach()).shape == (0, H, W)


def test_complex_inputs_are_refused(rng):
    """Complex images, coefficients, kernels or maps were cast to real
    silently (the imaginary part dropped): refused as basis.fit does."""
    from deepblur import ProductConvolutionBasis

    e, f = rng.random((2, 3, 3)), rng.random((2, 8, 8))
    op = ProductConvolution(e, f)
    u = torch.from_numpy(rng.random((1, 8, 8)) + 1j * rng.random((1, 8, 8)))
    real = u.real.contiguous()
    g = [1.0, 2.0]
    for method in (op.forward, op.adjoint):
        with pytest.raises(ValueError, match="must be real"):
            method(u, g)
        with pytest.raises(ValueError, match="gamma must be real"):
            method(real, torch.tensor(g) + 0j)
    with pytest.raises(ValueError, match="u must be real"):
        op.forward_many(u, torch.ones(1, 1, 2))
    with pytest.raises(ValueError, match="gammas must be real"):
        op.forward_many(real, torch.ones(1, 1, 2) + 1j)
    with pytest.raises(ValueError, match="kernels must be real"):
        ProductConvolution(e + 1j, f)
    with pytest.raises(ValueError, match="maps must be real"):
        ProductConvolution(e, torch.from_numpy(f + 0j))
    basis = ProductConvolutionBasis.from_components(e, f)
    with pytest.raises(ValueError, match="u must be real"):
        basis.apply(u.numpy()[0], g)
    with pytest.raises(ValueError, match="v must be real"):
        basis.adjoint(u, g)
    with pytest.raises(ValueError, match="gamma must be real"):
        basis.apply(real, np.array(g) + 0j)
    with pytest.raises(ValueError, match="kernels must be real"):
        ProductConvolutionBasis.from_components(e + 0j, f)


@pytest.mark.parametrize("batch_chunk", [0, -4, 2.7, "2", True, 1.0])
def test_bad_batch_chunk_is_refused_at_construction(batch_chunk, rng):
    """0, -4, 2.7, '2' and True were taken (silently as 1 or 2 images)."""
    with pytest.raises(ValueError, match="batch_chunk must be None or an int >= 1"):
        ProductConvolution(rng.random((2, 3, 3)), rng.random((2, 6, 6)),
                           batch_chunk=batch_chunk)


def test_batch_chunk_numpy_int_kept_by_to(rng):
    op = ProductConvolution(rng.random((2, 3, 3)), rng.random((2, 6, 6)),
                            batch_chunk=np.int64(2))
    assert op.batch_chunk == 2 and type(op.batch_chunk) is int
    assert op.to(dtype=torch.float32).batch_chunk == 2
