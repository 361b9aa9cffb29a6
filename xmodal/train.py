"""``python -m xmodal.train ...``: train a model on a catalogue;
the code lives in ``xmodal/training/cli.py``.
"""
import sys

from .training.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
