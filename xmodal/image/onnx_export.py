"""The frozen backbone's ONNX export: ``torch.onnx.export`` at a fixed batch, the batch axis freed afterwards.

``xmodal.image.runtime`` caches, loads and checks the graphs; this module only makes them, and holds what both
need: the opset, the tolerance against PyTorch (``relative_error``) and the module that runs (``_runnable``).
The graph takes raw pixels (0-255) and normalises them inside itself (``_FromRaw``), so extraction hands it
the loader's uint8 pixels as they are.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings

import numpy as np
import torch
from torch import nn

from .backbones import stem_forward

log = logging.getLogger(__name__)

OPSET = 20  # ONNX opset of the exported graphs
TOLERANCE = 1e-4  # max |ONNX Runtime - PyTorch| on the probe, relative to max |PyTorch| (measured: ~1e-6)


class _Cut(nn.Module):
    """``stem_forward`` as a module: pixels -> the map before the last ``tail_blocks`` stages."""

    def __init__(self, model: nn.Module, tail_blocks: int):
        super().__init__()
        self.model, self.tail_blocks = model, tail_blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return stem_forward(self.model, x, self.tail_blocks)  # [B, C, h, w]


def _runnable(model: nn.Module, tail_blocks: int) -> nn.Module:
    """The module whose output ``extract_features`` returns (the whole backbone, or ``stem_forward``)."""
    return _Cut(model, tail_blocks) if tail_blocks else model


@contextlib.contextmanager
def _eval(model: nn.Module):
    """``model`` in eval mode for the block, then back in the mode it was in."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """max |out - ref| / max |ref|: the error relative to the outputs' scale (inf if shapes or values are off)."""
    if out.shape != ref.shape:
        return float("inf")
    err = np.abs(out.astype(np.float64) - ref.astype(np.float64))
    if not np.isfinite(err).all():
        return float("inf")
    return float(err.max(initial=0.0)) / max(float(np.abs(ref).max(initial=0.0)), 1e-12)


class _FromRaw(nn.Module):
    """Raw pixels (0-255) -> ``ToTensor`` + ``Normalize``'s arithmetic -> ``inner``: what is exported, so that
    extraction feeds the graph the loader's uint8 pixels as they are."""

    def __init__(self, inner: nn.Module, mean_std: tuple):
        super().__init__()
        self.inner = inner
        self.register_buffer("mean", torch.tensor(mean_std[0]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(mean_std[1]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.div(255).sub(self.mean).div(self.std))


EXPORT_BATCH = 7  # the example batch of the fixed-batch export: no layer of these backbones is 7 wide


def export_graph(model: nn.Module, size: tuple[int, int], tail_blocks: int, key: dict) -> bytes:
    """The ONNX graph (serialised ``ModelProto``) of the frozen ``model`` on raw ``[B, 3, *size]`` pixels.

    The graph's input is raw pixels (0-255, float32), normalised inside the graph (``_FromRaw``).
    The batch axis is dynamic; the output is ``features`` ``[B, F]``, or ``[B, C, h, w]`` with a cut. The
    key is stored in the graph's metadata (``xmodal_key``) so that a file under another key is caught.

    The exporter traces a dynamic batch axis symbolically, which doubles its time, so the graph is first
    exported at a fixed batch of ``EXPORT_BATCH`` and its batch axis freed afterwards (``_free_batch``), then
    run at two other batch sizes against PyTorch; a graph that cannot be freed or does not match is exported
    again with the dynamic axis.
    """
    module = _FromRaw(_runnable(model, tail_blocks), (tuple(key["input"]["mean"]), tuple(key["input"]["std"])))
    with _eval(model):
        proto = None
        try:
            proto = _free_batch(_export(module, size, dynamic=False))
            if not _matches(proto, module, size):
                proto = None
        except Exception as err:  # noqa: BLE001 - the dynamic export below is the general way
            log.debug("fixed-batch export of %s not usable (%s); exporting with a dynamic batch", key["backbone"], err)
        if proto is None:
            proto = _export(module, size, dynamic=True)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "xmodal_key", json.dumps(key, sort_keys=True)
    return proto.SerializeToString()


def _export(module: nn.Module, size: tuple[int, int], dynamic: bool):
    """``torch.onnx.export`` of ``module`` on ``[B, 3, *size]``: B dynamic, or fixed at ``EXPORT_BATCH``."""
    example = torch.zeros(2 if dynamic else EXPORT_BATCH, 3, *size)  # a batch of one would fix the axis at 1
    shapes = {"dynamic_shapes": ({0: torch.export.Dim("batch")},)} if dynamic else {}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet("onnxscript", "onnx_ir"), \
            torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on its passes; failures still raise
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=["pixels"],
                                    output_names=["features"], opset_version=OPSET, verbose=False, **shapes)
    return program.model_proto


def _free_batch(proto):
    """``proto`` exported at batch ``EXPORT_BATCH`` with its batch axis made dynamic, in place; raises
    ``ValueError`` where the batch is baked in anywhere but the input, the output and a ``Reshape``'s first
    entry (the flatten before pooled features, which becomes -1)."""
    from onnx import numpy_helper  # lazy: onnx, only when a graph is exported
    graph = proto.graph
    for value in (*graph.input, *graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        if dim.dim_value != EXPORT_BATCH:
            raise ValueError(f"{value.name}'s first axis is not the batch")
        dim.ClearField("dim_value")
        dim.dim_param = "batch"
    del graph.value_info[:]  # intermediate shapes recorded at the fixed batch: ONNX Runtime infers them again
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    for node in graph.node:
        for name in node.input[1:]:
            tensor = inits.get(name) if name in inits else (consts[name].attribute[0].t if name in consts else None)
            if tensor is None or tensor.data_type not in (6, 7):  # int32, int64: shapes
                continue
            values = numpy_helper.to_array(tensor)
            if EXPORT_BATCH not in values.reshape(-1).tolist():
                continue
            if node.op_type != "Reshape" or values.ndim != 1 or values[0] != EXPORT_BATCH or -1 in values.tolist() \
                    or EXPORT_BATCH in values[1:].tolist():
                raise ValueError(f"the batch is fixed in {node.op_type} {node.name}")
            freed = values.copy()
            freed[0] = -1
            new = numpy_helper.from_array(freed, f"{name}_batch_free_{len(graph.initializer)}")
            graph.initializer.append(new)
            node.input[1] = new.name
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]  # the fixed shapes no node reads any more
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return proto


def _matches(proto, module: nn.Module, size: tuple[int, int]) -> bool:
    """Whether ONNX Runtime on ``proto`` computes ``module`` (raw pixels in) at batches 1 and 3."""
    import onnxruntime as ort  # lazy: ONNX Runtime, only when a graph is exported
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randint(0, 256, (batch, 3, *size), generator=torch.Generator().manual_seed(batch)).float()
        with torch.no_grad():
            ref = module(x).float().numpy()
        if not relative_error(session.run(None, {"pixels": x.numpy()})[0], ref) <= TOLERANCE:
            return False
    return True


@contextlib.contextmanager
def _quiet(*loggers: str):
    """Silence the INFO chatter of the exporter's graph passes (warnings and errors still show)."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)
