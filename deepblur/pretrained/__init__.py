"""Trained blur regressors: the default setting, saving and loading.

Models are stored as ``model.safetensors`` + ``model.json`` (no pickle).
:func:`load_default` reads the model shipped in ``deepblur/pretrained/default``
(produced by ``examples/train_default_model.py``) and raises
``FileNotFoundError`` when that folder holds no model.
"""

from deepblur.pretrained._default import (
    DEFAULT_SETTING,
    make_default_setting,
    relative_errors,
)
from deepblur.pretrained._io import (
    PretrainedModel,
    load_default,
    load_model,
    save_model,
)

__all__ = [
    "DEFAULT_SETTING",
    "PretrainedModel",
    "load_default",
    "load_model",
    "make_default_setting",
    "relative_errors",
    "save_model",
]
