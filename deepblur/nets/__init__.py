"""Neural networks and losses (torch ``nn.Module`` only)."""

from deepblur.nets.losses import (
    PSFMomentLoss,
    RelativeFrobeniusLoss,
    psf_moment_fields,
    relative_frobenius_error,
)
from deepblur.nets.resnet import ResNet

__all__ = ["PSFMomentLoss", "RelativeFrobeniusLoss", "ResNet", "psf_moment_fields",
           "relative_frobenius_error"]
