"""A residual network that regresses blur coefficients from one image."""

from __future__ import annotations

from numbers import Integral

import torch
from torch import nn
from torch.nn import functional as F

from deepblur.features import _FEATURE_DEFAULTS, check_feature_params
from deepblur.features import _features as _blur_statistics

__all__ = ["ResNet"]


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity/1x1 shortcut."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu(out + skip)


def _coordinates(x):
    """Two channels of normalised (row, col) coordinates in [-1, 1]."""
    n, _, h, w = x.shape
    rows = torch.linspace(-1, 1, h, dtype=x.dtype, device=x.device)
    cols = torch.linspace(-1, 1, w, dtype=x.dtype, device=x.device)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"))
    return grid[None].expand(n, 2, h, w)


def _contrast_normalise(x):
    """Split each image into contrast, log-mean and log-contrast channels.

    ``z = (x / m - 1) / s`` with ``m`` the image's mean and ``s`` the standard
    deviation of ``x / m``: the texture whose local spectrum reveals the blur,
    free of the image's gain and contrast; ``log m`` (the operator's gain, by
    the mean-normalisation convention) and ``log s`` as constant channels.
    """
    m = x.mean(dim=(-2, -1), keepdim=True).abs().clamp_min(1e-6)
    r = x / m - 1
    s = r.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    ones = torch.ones_like(x)
    return torch.cat([r / s, torch.log(m) * ones, torch.log(s) * ones], 1)


# Gain of the "laplacian" input channel: on blurred held-out natural images of
# the default setting (sigma = 0.01) the Laplacian of ``x / m`` has a median
# standard deviation of 0.034; this gain brings it near one, so that the
# stem's initial weights (and Adam's steps) weigh it like the image.
_LAPLACIAN_GAIN = 28.0


def _laplacian_channels(x):
    """Each image channel followed by the Laplacian of its relative intensity.

    ``[x, b lap(x / m)]`` per input channel, with ``m`` the image's mean and
    ``lap`` the 5-point Laplacian (zero outside): the fine detail that blur
    removes, which in natural images is far weaker than their content and
    which a network fed the raw image alone learns to read only after tens
    of thousands of images (benchmarks/README.md, "Laplacian input").
    """
    z, p = _relative_padded(x)
    lap = (p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2]
           + p[..., 1:-1, 2:] - 4 * z)
    return torch.cat([x, _LAPLACIAN_GAIN * lap], 1)


def _relative_padded(x):
    """``z = x / m`` (``m`` the image's mean) and ``z`` padded by one zero.

    The derivative channels are then shifted slices of the padded ``z``, not
    convolutions: 10-15 times faster on a CPU (3-4.5 against 44-45 ms for 64
    images of 128x128, one thread; benchmarks/bench_input_norm.py).
    """
    z = x / x.mean(dim=(-2, -1), keepdim=True).abs().clamp_min(1e-6)
    return z, F.pad(z, (1, 1, 1, 1))


def _hessian_channels(x):
    """Each image channel, then the Laplacian and the two anisotropic parts of
    the Hessian of its relative intensity.

    ``[x, b lap(z), b (z_xx - z_yy), b 2 z_xy]`` with ``z = x / m`` (``m``
    the image's mean), 3-point second differences along each axis, the
    4-point cross difference for ``z_xy`` (zero outside) and ``b`` the gain
    of the Laplacian channel. The isotropic Laplacian holds the width of the
    local blur; the other two its orientation and elongation (the
    anisotropic Gaussians of the paper's operators), which a stride-4 stem
    could otherwise only read off the much stronger image channel.
    """
    z, p = _relative_padded(x)
    zxx = p[..., 1:-1, :-2] + p[..., 1:-1, 2:] - 2 * z
    zyy = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] - 2 * z
    zxy2 = 0.5 * (p[..., 2:, 2:] - p[..., 2:, :-2] - p[..., :-2, 2:] + p[..., :-2, :-2])
    return torch.cat([x, _LAPLACIAN_GAIN * (zxx + zyy), _LAPLACIAN_GAIN * (zxx - zyy),
                      _LAPLACIAN_GAIN * zxy2], 1)


# What each ``ResNet(input_norm=...)`` feeds the stem: the channels it adds
# per input channel, and the function that makes them (the input first).
_INPUT_CHANNELS = {
    "contrast": (2, _contrast_normalise),
    "laplacian": (1, _laplacian_channels),
    "hessian": (3, _hessian_channels),
}

#: Values of ``ResNet(input_norm=...)``.
INPUT_NORMS = (None, *_INPUT_CHANNELS)


class ResNet(nn.Module):
    """ResNet (He et al. 2016) with a regression head, for 1-channel images.

    A stem convolution (size ``2 * stem_stride + 1``, stride ``stem_stride``),
    ``n_stages`` stages of ``depth`` basic residual
    blocks (widths ``width * 2**i``; every stage after the first halves the
    resolution), then a head:

    * ``"avg"``: global average pooling and a linear layer, as in ResNet;
    * ``"spatial"``: a 1x1 convolution to ``head_channels`` channels, adaptive
      average pooling to ``pool_size x pool_size``, flattened, then a linear
      layer. It keeps *where* features are, which the
      coefficients of space-varying blur need (``gamma_k`` weighs a map
      ``f_k`` that is a fixed function of position).

    Images of any size at least ``stem_stride * 2**(n_stages - 1)`` pixels per
    side are accepted;
    input of shape ``(n, H, W)`` gets a channel axis.

    Parameters
    ----------
    n_outputs : int, default=20
        Number ``K`` of regressed coefficients.
    in_channels : int, default=1
    width : int, default=16
        Channels of the first stage (ResNet-18: 64).
    depth : int, default=2
        Residual blocks per stage (ResNet-18: 2).
    n_stages : int, default=4
    stem_stride : int, default=2
        Downsampling of the stem (4 is about 4 times cheaper at 128x128).
    head : {"spatial", "avg"}, default="spatial"
    pool_size : int, default=4
        Side of the pooled feature map of the ``"spatial"`` head.
    head_channels : int, default=8
        Channels of the ``"spatial"`` head before pooling.
    coord_channels : bool, default=False
        Append two coordinate channels to the input (CoordConv).
    input_norm : {None, "contrast", "laplacian", "hessian"}, default=None
        ``"contrast"`` feeds the stem the image divided by its mean, centred
        and divided by its standard deviation, plus two constant channels
        holding the log of the mean and of the standard deviation: blur shows
        in the texture, the gain in the mean. ``"laplacian"`` feeds it the
        image and the Laplacian of ``x / mean``, scaled to about unit size:
        the fine detail that blur removes, given directly. Training then
        leaves the mean-gamma plateau within its first 8 000 images instead
        of after 30 000 or more (benchmarks/README.md, "Laplacian input").
        Much of that is the zero boundary's dark border: on windows of
        larger scenes it took 3 % off the error, not 21-29 %
        (benchmarks/README.md, "Networks on crops, and more input
        channels"). ``"hessian"`` adds the two anisotropic second
        derivatives ``z_xx - z_yy`` and ``2 z_xy`` of ``z = x / mean`` at the
        same gain: the orientation and elongation of the local blur. It was
        not better than ``"laplacian"``: after 64 000 images its error was
        1.04-1.14 times the Laplacian's on natural images (two seeds), and
        after the 15-minute recipe's 384 000 it was worse (8.6 against
        7.9-8.1 %;
        benchmarks/README.md, "Hessian input"); the two extra channels
        made its training 6-16 % slower on a CPU.
    channels_last : bool, default=True
        Run the convolutions in channels-last memory format (faster on CPU).
    output_bias : array-like of shape (n_outputs,), optional
        Initial bias of the last layer (e.g. the mean ``gamma`` of the
        training cone, so that training starts at the mean-``gamma``
        baseline); the last layer's weights then start at zero.
    blur_features : dict, optional
        Add a linear branch on the contrast-free blur statistics of the
        input (:func:`deepblur.features.blur_features` with these
        parameters, ``{}`` for its defaults: local power spectra, edge
        profiles, mean), standardised by the buffers ``feature_mean`` and
        ``feature_scale``, to the output. The branch starts at zero (the
        network's output is unchanged) and is trained with the rest, or fitted
        in closed form on a trained network by
        :meth:`~deepblur.ResNetBlurRegressor.fit_feature_head`. The
        statistics are computed in float64 on the input's device.
    image_shape : tuple of int, optional
        ``(H, W)`` of the inputs; required with ``blur_features`` (the
        number of statistics depends on it), ignored otherwise.
    moment_stage : int, optional
        Add a 1x1 convolution to 4 channels on the output of this stage
        (1 to ``n_stages``) that, in training mode only, is returned beside
        the coefficients as ``(gamma, moments)``: the local PSF moments
        (gain and second moments) that
        :class:`~deepblur.nets.PSFMomentLoss` supervises, so that the trunk
        learns to measure the blur of each region. In eval mode the output is
        ``gamma`` alone (as torchvision's Inception returns its auxiliary
        logits only in training). On the 15-minute CPU recipe's network
        (stage 3) it took 4-12 % off the error after 64 000 images (two
        seeds) but gained nothing by the recipe's 384 000, where microscopy
        was 0.2-0.4 point worse (two seeds; benchmarks/README.md, "Supervising
        the local PSF moments").

    Notes
    -----
    In training mode, batch normalisation needs more than one value per
    channel: where the last stage is 1x1 (images of the smallest size taken,
    ``stem_stride * 2**(n_stages - 1)`` pixels a side: 16 by default), torch
    refuses a batch of one image. :class:`~deepblur.ResNetBlurRegressor`
    never trains on one: a lone last image of an epoch joins the batch before
    (see its Notes).

    Examples
    --------
    >>> import torch
    >>> from deepblur.nets import ResNet
    >>> net = ResNet(n_outputs=5, width=4, depth=1)
    >>> net(torch.rand(2, 32, 48)).shape
    torch.Size([2, 5])
    >>> net = ResNet(n_outputs=5, width=4, depth=1, blur_features={"window": 16},
    ...              image_shape=(32, 48))
    >>> net.feature_fc.weight.shape
    torch.Size([5, 326])
    """

    def __init__(self, n_outputs=20, *, in_channels=1, width=16, depth=2, n_stages=4,
                 stem_stride=2, head="spatial", pool_size=4, head_channels=8,
                 coord_channels=False, input_norm=None,
                 channels_last=True, output_bias=None, blur_features=None,
                 image_shape=None, moment_stage=None):
        super().__init__()
        for name, value in (("n_outputs", n_outputs), ("in_channels", in_channels),
                            ("width", width), ("depth", depth),
                            ("n_stages", n_stages), ("pool_size", pool_size),
                            ("stem_stride", stem_stride),
                            ("head_channels", head_channels)):
            if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int; got {value!r}.")
        if head not in ("spatial", "avg"):
            raise ValueError(f"head must be 'spatial' or 'avg'; got {head!r}.")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}; "
                             f"got {input_norm!r}.")
        self.input_norm = input_norm
        self.in_channels = int(in_channels)
        self.n_stages = int(n_stages)
        self.coord_channels = bool(coord_channels)
        self.channels_last = bool(channels_last)
        c0 = int(width)
        stem_in = in_channels + (2 if coord_channels else 0)
        if input_norm is not None:
            stem_in += _INPUT_CHANNELS[input_norm][0] * in_channels
        self.stem = nn.Sequential(
            nn.Conv2d(stem_in, c0, 2 * stem_stride + 1, stem_stride, stem_stride,
                      bias=False),
            nn.BatchNorm2d(c0),
            nn.ReLU(inplace=True),
        )
        if moment_stage is not None and (
                not isinstance(moment_stage, Integral) or isinstance(moment_stage, bool)
                or not 1 <= moment_stage <= n_stages):
            raise ValueError(f"moment_stage must be None or an int in [1, n_stages="
                             f"{n_stages}]; got {moment_stage!r}.")
        blocks, c_in = [], c0
        for i in range(n_stages):
            c_out = c0 * 2**i
            for j in range(depth):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(_BasicBlock(c_in, c_out, stride))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.moment_stage = None if moment_stage is None else int(moment_stage)
        self.moment_head = None
        if moment_stage is not None:
            self.moment_head = nn.Conv2d(c0 * 2 ** (moment_stage - 1), 4, 1)
        side = 1 if head == "avg" else int(pool_size)
        self.pool = nn.AdaptiveAvgPool2d(side)
        # The spatial head first reduces the channels (1x1 convolution): with
        # Adam, a linear layer on thousands of features moves its output by
        # about ``lr * n_features`` per step, which wrecks the first steps.
        self.reduce = None
        if head == "spatial":
            self.reduce = nn.Sequential(
                nn.Conv2d(c_in, head_channels, 1, bias=False),
                nn.BatchNorm2d(head_channels), nn.ReLU(inplace=True))
            c_in = head_channels
        self.fc = nn.Linear(c_in * side * side, n_outputs)
        self.min_size = stem_stride * 2 ** (n_stages - 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():          # zero-init the last BN of each block
            if isinstance(m, _BasicBlock):
                nn.init.zeros_(m.bn2.weight)
        if output_bias is not None:
            bias = torch.as_tensor(output_bias, dtype=torch.float32).reshape(-1)
            if bias.shape[0] != n_outputs or not torch.isfinite(bias).all():
                raise ValueError(
                    f"output_bias must hold n_outputs={n_outputs} finite values; "
                    f"got shape {tuple(bias.shape)}."
                )
            with torch.no_grad():
                self.fc.bias.copy_(bias)
                self.fc.weight.zero_()
        self._init_feature_branch(blur_features, image_shape, n_outputs)

    def _init_feature_branch(self, blur_features, image_shape, n_outputs):
        self.feature_fc = None
        self.blur_features = None
        self.image_shape = None
        if blur_features is None:
            return
        check_feature_params(blur_features)
        if self.in_channels != 1:
            raise ValueError("blur_features needs grayscale input (in_channels=1); "
                             f"got in_channels={self.in_channels}.")
        if image_shape is None or len(tuple(image_shape)) != 2:
            raise ValueError(
                "image_shape must be given as (H, W) with blur_features (the "
                f"number of statistics depends on it); got {image_shape!r}."
            )
        self.blur_features = dict(blur_features)
        self.image_shape = tuple(int(v) for v in image_shape)
        n_features = check_feature_params(self.blur_features, self.image_shape)
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_scale", torch.ones(n_features))
        self.feature_fc = nn.Linear(n_features, n_outputs, bias=False)
        nn.init.zeros_(self.feature_fc.weight)

    # The statistics are data-dependent float64 numpy-style code (a check of
    # the mean, bincount, index_add_) that torch.compile cannot trace without
    # graph breaks and warnings; they need no gradient, so they run eagerly and
    # the trunk alone is compiled.
    @torch.compiler.disable
    def image_features(self, x):
        """Blur statistics of a batch (n, 1, H, W), float32 (not standardised)."""
        if tuple(x.shape[-2:]) != self.image_shape:
            raise ValueError(
                f"images must be {self.image_shape} for the blur_features branch; "
                f"got shape {tuple(x.shape)}."
            )
        images = x.reshape(x.shape[0], *self.image_shape).detach().to(torch.float64)
        if not bool((images.mean((1, 2)) > 0).all()):
            raise ValueError("images must have a positive mean intensity for the "
                             "blur_features branch (its statistics are relative "
                             "to the mean).")
        params = dict(_FEATURE_DEFAULTS, **self.blur_features)
        return _blur_statistics(images, **params).to(torch.float32)

    def forward(self, x):
        """Coefficients of a batch ``x`` of shape (n, C, H, W) or (n, H, W).

        With ``moment_stage`` set and the module in training mode, the pair
        ``(gamma, moments)``, ``moments`` of shape (n, 4, h, w) at the
        resolution of that stage.
        """
        trunk, features, moments = self._forward(x)
        if features is not None:
            trunk = trunk + self.feature_fc((features - self.feature_mean)
                                            / self.feature_scale)
        if moments is not None and self.training:
            return trunk, moments
        return trunk

    def forward_parts(self, x):
        """``(trunk output, blur statistics or None)`` of a batch.

        The output of :meth:`forward` is ``trunk + feature_fc((statistics -
        feature_mean) / feature_scale)``.
        """
        trunk, features, _ = self._forward(x)
        return trunk, features

    def _forward(self, x):
        """``(trunk output, blur statistics or None, moment map or None)``."""
        if x.ndim == 3 and self.in_channels == 1:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"x must have shape (n, {self.in_channels}, H, W)"
                + (" or (n, H, W)" if self.in_channels == 1 else "")
                + f"; got {tuple(x.shape)}."
            )
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(
                f"images must be at least {self.min_size} pixels per side for "
                f"stem_stride={self.min_size // 2 ** (self.n_stages - 1)} and "
                f"n_stages={self.n_stages} (stem_stride * 2**(n_stages - 1)); "
                f"got shape {tuple(x.shape)}."
            )
        features = None if self.feature_fc is None else self.image_features(x)
        if self.input_norm is not None:
            x = _INPUT_CHANNELS[self.input_norm][1](x)
        if self.coord_channels:
            x = torch.cat([x, _coordinates(x)], 1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats, moments = self.stem(x), None
        if self.moment_head is None:
            feats = self.blocks(feats)
        else:
            split = self.moment_stage * len(self.blocks) // self.n_stages
            feats = self.blocks[:split](feats)
            if self.training:
                moments = self.moment_head(feats)
            feats = self.blocks[split:](feats)
        if self.reduce is not None:
            feats = self.reduce(feats)
        feats = self.pool(feats)
        return self.fc(torch.flatten(feats, 1)), features, moments
