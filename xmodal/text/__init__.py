"""The text side: the one normalisation of text (``normalise``) and the tokeniser, vocabulary and word vectors
(``vocabulary``)."""
from .._moved import forwarding_getattr

__getattr__ = forwarding_getattr(__name__, "vocabulary")  # the names of the old module xmodal.text, for one release
