"""``python -m xmodal.warmup``: compile, once per installation, what would otherwise compile on first use.

UMAP's kernels are numba code compiled on first call; ``xmodal.evaluation.project2d.import_umap`` keeps the
compiled code in numba's on-disk cache (beside umap-learn's and pynndescent's files, or numba's user-wide
cache), so this costs about 30 s of one core once after ``pip install`` and 3 s after that. The set-up
command in the README runs it, so a newcomer's first map does not wait for the compiler.
"""
from __future__ import annotations

import sys
import time

from .evaluation.project2d import warm_umap


def main(argv: list[str] | None = None) -> int:
    start = time.perf_counter()
    warm_umap()
    print(f"xmodal: UMAP's kernels are compiled and cached ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
