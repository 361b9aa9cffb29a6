"""xmodal: cross-modal fashion retrieval (product photos <-> product titles) in one embedding space."""
from .models import ModelConfig, create_model, list_models, register_model
from .search import Run, load_run

__all__ = ["ModelConfig", "create_model", "list_models", "register_model", "Run", "load_run"]
__version__ = "0.1.0"
