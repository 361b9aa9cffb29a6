"""Models: one registry from name to constructor."""
from . import siamese, corrnet, dual  # noqa: F401,I001  (registers the models, in this order)
from .config import ModelConfig
from .registry import create_model, list_models, model_config, rebuild_model, register_model

__all__ = ["ModelConfig", "create_model", "list_models", "model_config", "rebuild_model", "register_model"]
