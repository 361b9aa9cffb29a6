"""``python -m xmodal.report ...``: a results table over run folders;
the code lives in ``xmodal/evaluation/report.py``.
"""
import sys

from .evaluation.report import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
