"""One registry from model name to constructor (after timm's ``_registry``)."""
from __future__ import annotations

from typing import Callable

from torch import nn

from .config import ModelConfig

_MODELS: dict[str, tuple[Callable[[ModelConfig], nn.Module], dict]] = {}


def register_model(name: str, **defaults):
    """Decorator: register ``fn(cfg) -> model`` under ``name`` with config ``defaults``."""
    def wrap(fn: Callable[[ModelConfig], nn.Module]):
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = (fn, defaults)
        return fn
    return wrap


def list_models() -> list[str]:
    """Registered model names, in registration order."""
    return list(_MODELS)


def _lookup(name: str):
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {list_models()}")
    return _MODELS[name]


def model_config(name: str, **overrides) -> ModelConfig:
    """The config ``name`` would be built with: its registered defaults, then ``overrides``."""
    _, defaults = _lookup(name)
    return ModelConfig.from_dict({**defaults, **{k: v for k, v in overrides.items() if v is not None}})


def create_model(name: str, cfg: ModelConfig | None = None, **overrides) -> nn.Module:
    """Build model ``name`` from ``cfg`` (or its defaults plus ``overrides``)."""
    fn, _ = _lookup(name)
    return fn(cfg if cfg is not None else model_config(name, **overrides))


def rebuild_model(name: str, saved: dict) -> nn.Module:
    """Model ``name`` from a saved ``model_config`` dict, as it was trained (no pretrained download:
    its weights, backbone included, come from the checkpoint)."""
    cfg = model_config(name, **{**saved, "pretrained": False})
    cfg.weights_source = saved.get("weights_source")  # None is dropped above; keep the record exact
    cfg.finetune = bool(saved.get("finetune", False))
    return create_model(name, cfg)
