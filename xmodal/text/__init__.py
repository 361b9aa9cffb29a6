"""The text side: the one normalisation of text (``normalise``) and the tokeniser, vocabulary and word vectors
(``vocabulary``)."""
import importlib

from .._moved import moved_warning


def __getattr__(name: str):
    # the names of the old module ``xmodal.text``, for one release
    new = importlib.import_module(f"{__name__}.vocabulary")
    if name.startswith("__") or not hasattr(new, name):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    moved_warning(f"xmodal.text.{name}", f"xmodal.text.vocabulary.{name}")
    return getattr(new, name)
