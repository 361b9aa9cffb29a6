"""Querying a trained run.

- ``run``: ``load_run(dir)`` -> ``Run`` with ``search_text``, ``search_image``, ``search`` and ``refine``
- ``gallery``: top-k over unit vectors, exact or a faiss IVF index; ``kernels``: exact search's product,
  chosen by measuring, and the stored precision
- ``hubness``: CSLS hubness reduction and k-occurrence; ``filters``: ``where=`` filtered search;
  ``arguments``: the checks on what callers pass
- ``query_vectors`` and ``compose``: a photo plus words, relevance feedback, and their benchmark
- ``explain``: word and region importance of a (caption, photo) score
- ``export``: a run's embeddings as parquet or for TensorBoard's projector
"""
