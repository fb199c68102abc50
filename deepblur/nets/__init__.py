"""Neural networks and losses (torch ``nn.Module`` only)."""

from deepblur.nets.losses import RelativeFrobeniusLoss, relative_frobenius_error
from deepblur.nets.resnet import ResNet

__all__ = ["RelativeFrobeniusLoss", "ResNet", "relative_frobenius_error"]
