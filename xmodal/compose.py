"""``python -m xmodal.compose ...``: the composed-query benchmark (a photo plus words);
the code lives in ``xmodal/retrieval/compose.py``.
"""
import sys

from .retrieval.compose import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
