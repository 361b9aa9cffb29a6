"""Performance bench: ``python -m xmodal.bench [--quick] [--sizes 10000 100000 1000000] [--json PATH]``.

Prints one line naming the machine (CPU model, cores, the BLAS libraries of PyTorch and numpy) and the runtimes,
then one table. Each figure stands beside the limit it is judged against, and both are measured in the
same run (the machine may be shared and noisy, so ratios count more than absolute numbers):

1. the frozen backbone on JPEGs (``features.py``): ``xmodal.image.extraction.extract_features`` (a DataLoader over
   JPEG files, the backbone in the runtime ``xmodal.image.runtime`` picks) against the bare forwards over the same
   images decoded beforehand (PyTorch eager, PyTorch channels_last, ONNX Runtime): the best of them is the
   limit; the ONNX export's cost; a photo file to its top-10 titles through ``search_image``;
2. one training step of every registered model through ``make_loader`` + ``train_one_epoch`` against a bare
   forward + loss + backward + AdamW step over the same batches, already in memory (``training.py``);
3. one caption's text encoding through ``embed_texts`` (in the runtime ``xmodal.text.runtime`` picks) against
   the tokeniser plus the bare text tower in each runtime; text-to-top-10 query latency (text
   encoding included) over galleries of synthetic unit vectors: exact
   search (naming the product kernel it chose by timing) against one pass over the gallery's memory (a plain sum
   over the same array), the same for a float16 gallery against a pass over its half-size memory, and the faiss
   index with its recall@10 against exact search; float16's top-10 against float32's for a trained run's
   held-out captions (``search.py``);
4. a UMAP map of 10k points (the dashboard's ``project``) and embedding a 10k-item gallery (``maps.py``);
5. the dashboard's cold start and a page switch in headless Chromium, when Chromium and Playwright exist
   (``dashboard.py``).

Everything runs on synthetic data or the built-in demo catalogue; nothing is downloaded. Shared helpers
(config, rows, interleaved timing, synthetic galleries, the table) live in ``common.py``; ``cli.py`` runs
the sections.
"""
from __future__ import annotations

from .cli import main, run_bench
from .common import QUICK, SECTIONS, BenchConfig, Row, compare, compare_many, format_table, product_like
from .dashboard import bench_dashboard, dashboard_skip_reason

__all__ = ["BenchConfig", "QUICK", "Row", "SECTIONS", "bench_dashboard", "compare", "compare_many",
           "dashboard_skip_reason", "format_table", "main", "product_like", "run_bench"]
