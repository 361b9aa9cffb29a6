"""Training: ``python -m xmodal.train`` in named phases.

- ``cli``: ``main(argv)``, the phases in order; ``args``: ``TrainConfig``, flags and their validation
- ``plan``: the run folder (fresh, overwrite, resume), the data, the lock; ``build``: the model and device
- ``loop``: datasets of pairs, loaders, the optimiser, ``train_one_epoch``; ``distributed``: torchrun
- ``provenance``: what a run was made with, recorded in its ``config.json``; ``status``: progress per phase
- ``snapshots``: validation embeddings per epoch (the map over epochs); ``tblog``: ``--log tensorboard``
- ``errors``: one line for the user when a run stops on an error
"""
from .._moved import forwarding_getattr

__getattr__ = forwarding_getattr(__name__, "loop")  # the names of the old module xmodal.training, for one release
