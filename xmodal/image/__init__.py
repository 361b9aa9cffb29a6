"""The image tower's frozen side: backbones through one timm adapter, the fast runtime (ONNX Runtime, with its
export), feature extraction over image files, the on-disk feature cache, and distillation for backbones that
have no pretrained weights offline.

- ``backbones``: ``create_backbone``, preprocessing from the backbone's own config, weights and their labels
- ``runtime`` / ``onnx_export``: the backbone's ONNX graph in ONNX Runtime, PyTorch as the fallback
- ``extraction`` and ``batching``: image files -> pooled features, decoding ahead of the consumer
- ``feature_cache``: a backbone's features of a catalogue's photos, keyed on what made them
- ``distill``: a meaningful offline start for a backbone without pretrained weights
"""
