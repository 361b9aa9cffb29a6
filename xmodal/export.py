"""``python -m xmodal.export ...``: a run's embeddings as parquet or for TensorBoard;
the code lives in ``xmodal/retrieval/export.py``.
"""
import sys

from .retrieval.export import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
