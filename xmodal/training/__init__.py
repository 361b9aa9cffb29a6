"""Training: ``python -m xmodal.train`` in named phases.

- ``cli``: ``main(argv)``, the phases in order; ``args``: ``TrainConfig``, flags and their validation
- ``plan``: the run folder (fresh, overwrite, resume), the data, the lock; ``build``: the model and device
- ``loop``: datasets of pairs, loaders, the optimiser, ``train_one_epoch``; ``distributed``: torchrun
- ``provenance``: what a run was made with, recorded in its ``config.json``
"""


def __getattr__(name: str):
    # the names of the old module ``xmodal.training``, for one release
    from .._moved import moved_warning
    import importlib
    new = importlib.import_module(f"{__name__}.loop")
    if name.startswith("__") or not hasattr(new, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    moved_warning(f"xmodal.training.{name}", f"xmodal.training.loop.{name}")
    return getattr(new, name)
