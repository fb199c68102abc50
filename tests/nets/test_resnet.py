"""ResNet: shapes, heads, parameters, and what the spatial head can see."""

import numpy as np
import pytest
import torch

from deepblur.nets.resnet import ResNet


@pytest.mark.parametrize("head", ["spatial", "avg"])
@pytest.mark.parametrize("shape", [(2, 32, 32), (3, 1, 40, 56)])
def test_output_shape_any_size(head, shape):
    net = ResNet(n_outputs=7, width=4, depth=1, head=head)
    assert net(torch.rand(shape)).shape == (shape[0], 7)


def test_width_depth_change_parameter_count():
    counts = {(w, d): sum(p.numel() for p in ResNet(width=w, depth=d).parameters())
              for w in (4, 8) for d in (1, 2)}
    assert counts[(4, 1)] < counts[(4, 2)] < counts[(8, 2)]
    assert counts[(4, 1)] < counts[(8, 1)]


def test_channels_last_and_coord_channels_same_shape():
    x = torch.rand(2, 1, 32, 32)
    torch.manual_seed(0)
    a = ResNet(n_outputs=3, width=4, depth=1, channels_last=True).eval()
    torch.manual_seed(0)
    b = ResNet(n_outputs=3, width=4, depth=1, channels_last=False).eval()
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a(x), b(x), rtol=1e-4, atol=1e-5)
    assert ResNet(n_outputs=3, width=4, coord_channels=True)(x).shape == (2, 3)


def test_output_bias_is_initial_prediction():
    bias = np.arange(5.0)
    net = ResNet(n_outputs=5, width=4, depth=1, output_bias=bias).eval()
    np.testing.assert_allclose(net(torch.rand(3, 32, 32)).detach().numpy(),
                               np.tile(bias, (3, 1)))


def test_spatial_head_sees_position_avg_head_does_not():
    # The same blob at two places: global pooling over a translation-
    # equivariant trunk (periodic shift) gives nearly the same output.
    x = torch.zeros(2, 1, 64, 64)
    x[0, 0, 8:16, 8:16] = 1
    x[1] = torch.roll(x[0], shifts=(32, 32), dims=(-2, -1))
    torch.manual_seed(0)
    avg = ResNet(n_outputs=4, width=4, depth=1, head="avg").eval()
    sp = ResNet(n_outputs=4, width=4, depth=1, head="spatial").eval()
    out_avg, out_sp = avg(x), sp(x)
    d_avg = (out_avg[0] - out_avg[1]).abs().max()
    d_sp = (out_sp[0] - out_sp[1]).abs().max()
    assert d_sp > 10 * d_avg


@pytest.mark.parametrize("kwargs, match", [
    ({"width": 0}, "width"), ({"depth": 1.5}, "depth"), ({"head": "max"}, "head"),
    ({"output_bias": [1.0, 2.0]}, "output_bias"), ({"stem_stride": True},
                                                   "stem_stride"),
])
def test_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNet(n_outputs=3, **kwargs)


def test_bad_input_shapes():
    net = ResNet(n_outputs=3, width=4, depth=1)
    with pytest.raises(ValueError, match=r"\(n, 1, H, W\)"):
        net(torch.rand(2, 3, 32, 32))
    with pytest.raises(ValueError, match="at least 16 pixels"):
        net(torch.rand(2, 8, 8))


def test_contrast_normalisation_channels():
    from deepblur.nets.resnet import _contrast_normalise

    x = torch.rand(3, 1, 16, 16) + 0.5
    z = _contrast_normalise(x)
    z3 = _contrast_normalise(3 * x)
    assert z.shape == (3, 3, 16, 16)
    torch.testing.assert_close(z3[:, 0], z[:, 0])           # gain-free texture
    torch.testing.assert_close(z3[:, 1] - z[:, 1],
                               torch.full_like(z[:, 1], np.log(3.0)))
    torch.testing.assert_close(z[:, 0].mean(dim=(-2, -1)), torch.zeros(3),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(z[:, 0].std(dim=(-2, -1)), torch.ones(3))
    net = ResNet(n_outputs=2, width=4, depth=1, input_norm="contrast")
    assert net(x).shape == (3, 2)
    with pytest.raises(ValueError, match="input_norm"):
        ResNet(input_norm="max")


def test_laplacian_input_channels_against_scipy():
    """[x, 28 lap(x/m)] per channel, the Laplacian with zeros outside
    (scipy's 5-point stencil as the reference), free of the image's gain."""
    from scipy import ndimage

    from deepblur.nets.resnet import _laplacian_channels

    rng = np.random.default_rng(0)
    x = rng.random((2, 2, 16, 18)) + 0.5
    out = _laplacian_channels(torch.as_tensor(x, dtype=torch.float64)).numpy()
    assert out.shape == (2, 4, 16, 18)
    stencil = np.array([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]])
    for i in range(2):
        for c in range(2):
            z = x[i, c] / x[i, c].mean()
            np.testing.assert_allclose(out[i, c], x[i, c])
            lap = ndimage.convolve(z, stencil, mode="constant", cval=0.0)
            np.testing.assert_allclose(out[i, 2 + c], 28.0 * lap, atol=1e-12)
    scaled = _laplacian_channels(torch.as_tensor(5 * x)).numpy()
    np.testing.assert_allclose(scaled[:, 2:], out[:, 2:], atol=1e-12)
    net = ResNet(n_outputs=2, width=4, depth=1, input_norm="laplacian")
    assert net.stem[0].in_channels == 2
    assert net(torch.as_tensor(x[:, :1], dtype=torch.float32)).shape == (2, 2)
    assert ResNet(n_outputs=2, in_channels=2, width=4, depth=1,
                  input_norm="laplacian").stem[0].in_channels == 4


def test_hessian_input_channels_against_scipy():
    """[x, b lap(z), b (z_xx - z_yy), b 2 z_xy] per channel with z = x / m,
    zeros outside (scipy's stencils as the reference); the first two are the
    Laplacian input's channels; rotating the image by 90 degrees flips the
    sign of the anisotropic ones."""
    from scipy import ndimage

    from deepblur.nets.resnet import _hessian_channels, _laplacian_channels

    rng = np.random.default_rng(1)
    x = rng.random((2, 2, 16, 18)) + 0.5
    xt = torch.as_tensor(x, dtype=torch.float64)
    out = _hessian_channels(xt).numpy()
    assert out.shape == (2, 8, 16, 18)
    np.testing.assert_allclose(out[:, :4], _laplacian_channels(xt).numpy(),
                               atol=1e-12)
    d2 = np.array([[1.0, -2, 1]])               # second difference along x
    cross = np.array([[1.0, 0, -1], [0, 0, 0], [-1, 0, 1]]) / 2
    for i in range(2):
        for c in range(2):
            z = x[i, c] / x[i, c].mean()
            zxx = ndimage.convolve(z, d2, mode="constant")
            zyy = ndimage.convolve(z, d2.T, mode="constant")
            zxy2 = ndimage.convolve(z, cross, mode="constant")
            np.testing.assert_allclose(out[i, 4 + c], 28.0 * (zxx - zyy), atol=1e-12)
            np.testing.assert_allclose(out[i, 6 + c], 28.0 * zxy2, atol=1e-12)
    # a 90-degree rotation swaps x and y: z_xx - z_yy and z_xy change sign
    rot = _hessian_channels(torch.rot90(xt, 1, (-2, -1))).numpy()
    back = np.rot90(rot, -1, (-2, -1))
    np.testing.assert_allclose(back[:, :4], out[:, :4], atol=1e-12)
    np.testing.assert_allclose(back[:, 4:], -out[:, 4:], atol=1e-12)
    np.testing.assert_allclose(_hessian_channels(5 * xt).numpy()[:, 2:],
                               out[:, 2:], atol=1e-12)
    net = ResNet(n_outputs=2, width=4, depth=1, input_norm="hessian")
    assert net.stem[0].in_channels == 4
    assert net(torch.as_tensor(x[:, :1], dtype=torch.float32)).shape == (2, 2)
    assert ResNet(n_outputs=2, in_channels=2, width=4, depth=1,
                  input_norm="hessian").stem[0].in_channels == 8


def test_blur_features_branch():
    """Output = trunk + linear map of the standardised statistics; starts at 0."""
    from deepblur.features import blur_features

    torch.manual_seed(0)
    plain = ResNet(n_outputs=3, width=4, depth=1).eval()
    torch.manual_seed(0)
    net = ResNet(n_outputs=3, width=4, depth=1, blur_features={"window": 16},
                 image_shape=[32, 32]).eval()
    x = torch.rand(4, 1, 32, 32) + 0.1
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x))      # the branch starts at 0
        trunk, feats = net.forward_parts(x)
        np.testing.assert_allclose(feats.numpy(),
                                   blur_features(x[:, 0].numpy(), window=16),
                                   rtol=1e-5, atol=1e-5)
        net.feature_mean.fill_(0.5)
        net.feature_scale.fill_(2.0)
        net.feature_fc.weight.normal_()
        f = (torch.as_tensor(blur_features(x[:, 0].numpy(), window=16),
                             dtype=torch.float32) - 0.5) / 2.0
        torch.testing.assert_close(net(x), trunk + f @ net.feature_fc.weight.T,
                                   rtol=1e-4, atol=1e-4)
    assert "feature_fc.weight" in net.state_dict()
    assert "feature_mean" in net.state_dict() and "feature_scale" in net.state_dict()
    with pytest.raises(ValueError, match=r"images must be \(32, 32\)"):
        net(torch.rand(2, 1, 32, 48))
    with pytest.raises(ValueError, match="blur_features must be None or a dict"):
        ResNet(blur_features=16, image_shape=(32, 32))
    with pytest.raises(ValueError, match="needs grayscale input"):
        ResNet(in_channels=3, blur_features={}, image_shape=(32, 32))
    with pytest.raises(ValueError, match="window must be at most"):
        ResNet(blur_features={"window": 64}, image_shape=(32, 32))


def test_blur_features_branch_compiles_without_warnings():
    """torch.compile runs the statistics eagerly: same output and gradients,
    no dynamo warning (they used to break the graph on .item(), bincount and
    index_add_ with a screenful of warnings), and the checks still raise."""
    import logging

    import torch._dynamo

    torch.manual_seed(0)
    net = ResNet(n_outputs=3, width=4, depth=1, blur_features={"window": 16},
                 image_shape=(32, 32))
    with torch.no_grad():
        net.feature_fc.weight.normal_()
    x = torch.rand(4, 1, 32, 32) + 0.1
    ref = net(x)
    ref.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="eager")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("torch._dynamo")
    logger.addHandler(handler)
    try:
        out = compiled(x)
        out.square().sum().backward()
        with pytest.raises(ValueError, match="positive mean intensity"):
            compiled(x - 1.0)
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if r.levelno >= logging.WARNING]
    torch.testing.assert_close(out, ref)
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], msg=name)


@pytest.mark.parametrize("stage, side", [(1, 16), (2, 8), (3, 4)])
def test_moment_head_in_training_only(stage, side):
    torch.manual_seed(0)
    net = ResNet(n_outputs=5, width=4, depth=2, n_stages=3, stem_stride=2,
                 moment_stage=stage)
    x = torch.rand(3, 32, 32)
    gamma, moments = net.train()(x)
    assert gamma.shape == (3, 5) and moments.shape == (3, 4, side, side)
    net.eval()
    out = net(x)
    assert torch.is_tensor(out) and out.shape == (3, 5)
    # the head reads the trunk without changing it: same gamma as a network
    # without the head that has the same weights
    plain = ResNet(n_outputs=5, width=4, depth=2, n_stages=3, stem_stride=2).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items()
                           if not k.startswith("moment_head")})
    torch.testing.assert_close(plain(x), out)


@pytest.mark.parametrize("stage", [0, 4, 1.5, True, "2"])
def test_moment_stage_bad(stage):
    with pytest.raises(ValueError, match="moment_stage must be None or an int"):
        ResNet(n_stages=3, moment_stage=stage)


@pytest.mark.parametrize("options", [
    dict(input_norm=None), dict(input_norm="laplacian"),
    dict(input_norm="hessian"), dict(input_norm="contrast"),
    dict(coord_channels=True, channels_last=True),
    dict(blur_features={"window": 16}, image_shape=(32, 32)),
    dict(moment_stage=2, n_stages=3)])
def test_forward_and_backward_under_bf16_autocast(options):
    """Every input and branch runs under bfloat16 autocast (what
    ``ResNetBlurRegressor(mixed_precision="bf16")`` trains with), close to
    float32, with float32 gradients."""
    torch.manual_seed(0)
    net = ResNet(n_outputs=3, width=4, depth=1, **options).train()
    x = torch.rand(4, 1, 32, 32) + 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    gamma = out[0] if isinstance(out, tuple) else out
    assert gamma.dtype == torch.bfloat16 and gamma.shape == (4, 3)
    gamma.float().sum().backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32
               for p in net.parameters())
    net.eval()          # close to float32 (no batch statistics of 4 images)
    with torch.no_grad():
        ref = net(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = net(x).float()
    # bfloat16 keeps 8 bits of mantissa: a few per mille per operation, 0.3-2 %
    # at the output of these untrained networks (seeds 0-2)
    assert torch.linalg.norm(low - ref) < 0.05 * torch.linalg.norm(ref)
