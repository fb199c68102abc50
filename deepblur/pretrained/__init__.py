"""The default setting of deepblur's blur regressor (basis, cone, sampler)."""

from deepblur.pretrained._default import (
    DEFAULT_SETTING,
    make_default_setting,
    relative_errors,
)

__all__ = ["DEFAULT_SETTING", "make_default_setting", "relative_errors"]
