"""The text tower's ONNX export: ``encode_text`` on token ids, batch and length both free.

``xmodal.text.runtime`` caches, loads and checks the graphs; this module only makes them, and holds the probe
batches that both the export and every load check against PyTorch.

The TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``) turns a text tower into a graph in a
fraction of a second, where the torch.export-based one takes seconds (docs/performance.md); both give the same
operators (one fused ``LSTM`` per direction). The torch.export-based exporter is used where the TorchScript one
is missing (removed from a later PyTorch) or fails; the load's probe check holds either to ``TOLERANCE``.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings

import torch
from torch import nn

from ..image.onnx_export import _eval, _quiet
from .vocabulary import PAD

log = logging.getLogger(__name__)

OPSET = 20  # ONNX opset of the exported text graphs
PROBE_SEED = 20240612  # the probe batches' token ids
EXAMPLE_SHAPE = (2, 5)  # the example input's batch and length: neither is 1, so neither axis is fixed by tracing


def probe_tokens(vocab_size: int) -> list[torch.Tensor]:
    """Token ids to compare a graph with PyTorch on: one query ``[1, 4]``, and captions ``[3, 9]`` of lengths
    9, 3 and 1 (padding, unknown words and a length the example did not have)."""
    g = torch.Generator().manual_seed(PROBE_SEED)
    one = torch.randint(1, vocab_size, (1, 4), generator=g)  # [1, 4]
    batch = torch.randint(1, vocab_size, (3, 9), generator=g)  # [3, 9]
    batch[1, 3:] = PAD
    batch[2, 1:] = PAD
    return [one, batch]


class _TextTower(nn.Module):
    """``model.encode_text`` as a module: what is exported."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)  # [B, D]


def export_graph(model: nn.Module, key: dict) -> bytes:
    """The ONNX graph (serialised ``ModelProto``) of ``model.encode_text``: ``tokens`` ``[B, L]`` int64 in,
    ``embeds`` ``[B, D]`` float32 out, ``key`` in its metadata (``xmodal_key``) so that a file under another key
    is caught. The TorchScript exporter first, the torch.export-based one if that fails (see the module docstring).
    """
    import onnx  # lazy: onnx, only when a graph is exported
    module = _TextTower(model).eval()
    g = torch.Generator().manual_seed(PROBE_SEED)
    example = torch.randint(1, model.word_embed.num_embeddings, EXAMPLE_SHAPE, generator=g)  # [2, 5]
    with _eval(model), torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
            _quiet("onnxscript", "onnx_ir"):
        warnings.simplefilter("ignore")  # the exporters' notes (deprecation, LSTM batch sizes); failures still raise
        try:
            data = _torchscript(module, example)
        except Exception as err:  # noqa: BLE001 - the torch.export-based exporter below is the general way
            log.debug("the TorchScript exporter cannot take the text tower (%s); using torch.export", err)
            data = _dynamo(module, example)
    proto = onnx.load_from_string(data)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "xmodal_key", json.dumps(key, sort_keys=True)
    return proto.SerializeToString()


def _torchscript(module: nn.Module, example: torch.Tensor) -> bytes:
    """The TorchScript-based export of ``module`` on ``example``, both axes dynamic."""
    out = io.BytesIO()
    torch.onnx.export(module, (example,), out, dynamo=False, input_names=["tokens"], output_names=["embeds"],
                      opset_version=OPSET, dynamic_axes={"tokens": {0: "batch", 1: "length"}, "embeds": {0: "batch"}})
    return out.getvalue()


def _dynamo(module: nn.Module, example: torch.Tensor) -> bytes:
    """The torch.export-based export of ``module`` on ``example``, both axes dynamic."""
    shapes = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("length")},)
    program = torch.onnx.export(module, (example,), dynamo=True, input_names=["tokens"], output_names=["embeds"],
                                opset_version=OPSET, verbose=False, dynamic_shapes=shapes)
    return program.model_proto.SerializeToString()
