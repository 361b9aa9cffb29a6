"""Measuring the joint space.

- ``metrics``: the one metrics core (ranks, title groups, R@K, median rank, intervals, paired tests)
- ``scoring``: every number of a split from its embeddings, as written to ``test.json``
- ``evaluate`` (``python -m xmodal.evaluate``) and ``report`` (``python -m xmodal.report``): the CLIs
- ``project2d``: points of the joint space -> 2-D (UMAP or PCA) for maps; ``trajectory``: maps over epochs
- ``protocols``: title-deduplicated and fixed-gallery recall, the proxy for new products
- ``failures``: failure clusters named by their over-represented attributes
"""
