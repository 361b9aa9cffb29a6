"""The import paths from before the packages by concept, kept working for one release with a DeprecationWarning.

``import xmodal.search`` gives ``xmodal.retrieval.run`` itself (the same module object, so patches and
``isinstance`` agree); ``xmodal.pipeline``, split in two, gives a module holding the names of both halves.
The CLI paths (``python -m xmodal.train``, ``evaluate``, ``report``, ``export``, ``compose``) are entry
points, not deprecated; ``xmodal.text`` and ``xmodal.training`` became packages and forward their old names.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

MOVED: dict[str, tuple[str, ...]] = {
    "xmodal.backbones": ("xmodal.image.backbones",), "xmodal.runtime": ("xmodal.image.runtime",),
    "xmodal.onnx_export": ("xmodal.image.onnx_export",), "xmodal.feature_cache": ("xmodal.image.feature_cache",),
    "xmodal.distill": ("xmodal.image.distill",), "xmodal.extraction": ("xmodal.image.extraction",),
    "xmodal.batching": ("xmodal.image.batching",), "xmodal.normalise": ("xmodal.text.normalise",),
    "xmodal.train_args": ("xmodal.training.args",), "xmodal.train_plan": ("xmodal.training.plan",),
    "xmodal.train_model": ("xmodal.training.build",), "xmodal.distributed": ("xmodal.training.distributed",),
    "xmodal.provenance": ("xmodal.training.provenance",), "xmodal.metrics": ("xmodal.evaluation.metrics",),
    "xmodal.project2d": ("xmodal.evaluation.project2d",), "xmodal.search": ("xmodal.retrieval.run",),
    "xmodal.gallery": ("xmodal.retrieval.gallery",), "xmodal.query_vectors": ("xmodal.retrieval.query_vectors",),
    "xmodal.explain": ("xmodal.retrieval.explain",),
    "xmodal.pipeline": ("xmodal.models.embed", "xmodal.evaluation.scoring"),
}


def moved_warning(old: str, new: str) -> None:
    """Warn, pointing at the caller's import line, that ``old`` is now ``new``."""
    warnings.warn(f"{old} moved to {new}; import it from there (the old path goes in the next release)",
                  DeprecationWarning, stacklevel=3)


def forwarding_getattr(package: str, module: str):
    """A package's ``__getattr__`` that serves the names of the module it replaced (now ``package.module``),
    each with a DeprecationWarning."""
    def __getattr__(name: str):
        new = importlib.import_module(f"{package}.{module}")
        if name.startswith("__") or not hasattr(new, name):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        moved_warning(f"{package}.{name}", f"{package}.{module}.{name}")
        return getattr(new, name)
    return __getattr__


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        targets = MOVED[spec.name]
        warnings.warn(f"{spec.name} moved to {' and '.join(targets)}; import it from there "
                      "(the old path goes in the next release)", DeprecationWarning, stacklevel=2)
        modules = [importlib.import_module(t) for t in targets]
        if len(modules) == 1:
            return modules[0]
        merged = types.ModuleType(spec.name, f"Deprecated: the names of {', '.join(targets)}.")
        for module in modules:
            merged.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
        return merged

    def exec_module(self, module):
        pass  # the target modules ran when create_module imported them


def install() -> None:
    """Put the finder first on ``sys.meta_path``, once (first, so that stale files of an older install lose)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
