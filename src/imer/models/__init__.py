"""Methods: one file per method, registered by name (see ``base.py`` for the contract)."""

from imer.models.base import DataSpec, IMERModel, ModelConfig, ModelOutput
from imer.models.registry import build_config, create_model, get_model_class, list_models, register_model

__all__ = [
    "DataSpec",
    "IMERModel",
    "ModelConfig",
    "ModelOutput",
    "build_config",
    "create_model",
    "get_model_class",
    "list_models",
    "register_model",
]
