"""``python -m xmodal.evaluate ...``: retrieval metrics of a run's best weights;
the code lives in ``xmodal/evaluation/evaluate.py``.
"""
import sys

from .evaluation.evaluate import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
