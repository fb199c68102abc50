"""Trained blur regressors: the default setting, training, saving, applying.

Models are stored as ``model.safetensors`` + ``model.json`` (plus, optionally,
a spectral regressor in ``spectral.safetensors`` + ``spectral.json`` and a
network trained on windows of larger scenes in ``crop_network.safetensors`` +
``crop_network.json``), bases as
``basis.safetensors`` + ``basis.json`` (no pickle).
:func:`load_default` reads the model shipped in ``deepblur/pretrained/default``
(produced by ``examples/train_default_model.py``) and raises
``FileNotFoundError`` when that folder holds no model.
"""

from deepblur.pretrained._apply import (
    BUNDLED_IMAGES,
    bundled_image,
    deblur_image,
    estimate_gamma,
    model_image_mean,
    operator_gain,
    simulate_blind_deblurring,
    training_gain,
)
from deepblur.pretrained._default import (
    DEFAULT_SETTING,
    compare_estimators,
    make_default_setting,
    relative_errors,
)
from deepblur.pretrained._io import (
    ESTIMATORS,
    PretrainedModel,
    load_basis,
    load_default,
    load_model,
    save_basis,
    save_crop_network,
    save_model,
    save_spectral,
)
from deepblur.pretrained._train import (
    CRITERIA,
    CROP_NETWORK_DEFAULTS,
    FEATURE_HEAD_DEFAULTS,
    SPECTRAL_DEFAULTS,
    SUPPORT_QUANTILE,
    TRAINING_DEFAULTS,
    add_feature_head,
    calibrate_support_tolerance,
    default_num_workers,
    finished_epochs,
    support_calibration_images,
    train_crop_network,
    train_regressor,
    train_spectral_regressor,
)

__all__ = [
    "BUNDLED_IMAGES",
    "CRITERIA",
    "CROP_NETWORK_DEFAULTS",
    "DEFAULT_SETTING",
    "ESTIMATORS",
    "FEATURE_HEAD_DEFAULTS",
    "PretrainedModel",
    "SPECTRAL_DEFAULTS",
    "SUPPORT_QUANTILE",
    "TRAINING_DEFAULTS",
    "add_feature_head",
    "bundled_image",
    "calibrate_support_tolerance",
    "compare_estimators",
    "deblur_image",
    "default_num_workers",
    "estimate_gamma",
    "finished_epochs",
    "load_basis",
    "load_default",
    "load_model",
    "make_default_setting",
    "model_image_mean",
    "operator_gain",
    "relative_errors",
    "save_basis",
    "save_crop_network",
    "save_model",
    "save_spectral",
    "simulate_blind_deblurring",
    "support_calibration_images",
    "train_crop_network",
    "train_regressor",
    "train_spectral_regressor",
    "training_gain",
]
