"""Exporting the frozen backbone's ONNX graph (xmodal.image.runtime, xmodal.image.onnx_export): a graph exported
at a fixed batch has its batch axis freed, or is exported again with a dynamic one where the batch is baked in;
light backbones need bigger jobs before an export repays itself; a failed export falls back to PyTorch, tried
once per process."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import runtime_kit
from runtime_kit import backbone, extract, needs_ort, notices
from xmodal.image import onnx_export, runtime

# the kit's fixtures, for this module's tests (shared_cache is autouse: every test gets the module's graph cache)
graphs, photos, shared_cache = runtime_kit.graphs, runtime_kit.photos, runtime_kit.shared_cache


@needs_ort
def test_export_failure_falls_back(photos, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path))
    model = backbone("mobilenet")
    monkeypatch.setenv(runtime.ENV, "torch")
    ref = extract(model, photos, "mobilenet")
    monkeypatch.setenv(runtime.ENV, "onnxruntime")

    tries = []

    def broken(*a, **k):
        tries.append(1)
        raise RuntimeError("unsupported operator aten::frobnicate")
    monkeypatch.setattr(runtime, "export_graph", broken)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(extract(model, photos, "mobilenet"), ref)
    assert notices(caplog, "cannot run mobilenet in ONNX Runtime (RuntimeError: unsupported operator")
    assert not list(tmp_path.glob("onnx/*"))
    np.testing.assert_array_equal(extract(model, photos, "mobilenet"), ref)
    assert len(tries) == 1  # not tried again in this process: a failed export costs its seconds once


class _Pooled(torch.nn.Module):
    """A toy backbone: conv, pool, flatten (a Reshape that names the batch), and optionally a term that
    builds a batch-sized tensor (baked in when exported at a fixed batch)."""

    def __init__(self, batch_sized: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.batch_sized = torch.nn.Conv2d(3, 5, 3), batch_sized

    def forward(self, x):
        y = torch.nn.functional.adaptive_avg_pool2d(self.conv(x), 1).flatten(1)  # [B, 5]
        return y + torch.arange(x.shape[0], dtype=y.dtype)[:, None] if self.batch_sized else y


TOY_KEY = {"backbone": "toy", "input": {"mean": [0.5] * 3, "std": [0.25] * 3}}


def _run_graph(data: bytes, batch: int) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort
    x = torch.randint(0, 256, (batch, 3, 10, 8), generator=torch.Generator().manual_seed(batch)).float()
    out = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"pixels": x.numpy()})[0]
    return out, x


@pytest.mark.slow
@needs_ort
def test_fixed_batch_export_is_freed_or_redone_dynamic(monkeypatch):
    """The graph is exported at a fixed batch and its batch axis freed (half the exporter's time); where the
    batch is baked in elsewhere the graph is exported again with a dynamic axis. Either way it computes the
    module at any batch."""
    calls, matched = [], []
    real, real_matches = onnx_export._export, onnx_export._matches
    monkeypatch.setattr(onnx_export, "_export",
                        lambda m, size, dynamic: calls.append(dynamic) or real(m, size, dynamic))
    monkeypatch.setattr(onnx_export, "_matches", lambda *a: matched.append(real_matches(*a)) or matched[-1])
    for batch_sized, expected in ((False, [False]), (True, [False, True])):
        calls.clear()
        matched.clear()
        model = _Pooled(batch_sized).eval()
        data = runtime.export_graph(model, (10, 8), key=TOY_KEY)
        assert calls == expected
        # the batch freed without complaint both times (the probe ran); where arange(7) was folded into a
        # constant, only the probe against PyTorch caught it
        assert matched == [not batch_sized]
        module = onnx_export._FromRaw(model, (TOY_KEY["input"]["mean"], TOY_KEY["input"]["std"]))
        for batch in (1, 2, onnx_export.EXPORT_BATCH, 12):
            out, x = _run_graph(data, batch)
            with torch.no_grad():
                np.testing.assert_allclose(out, module(x).numpy(), rtol=1e-5, atol=1e-5)


def test_light_backbones_need_bigger_jobs_to_export():
    from xmodal.image.backbones import create_backbone
    mobilenet, _ = create_backbone("mobilenet", pretrained=False, quiet=True)
    efficientnet, _ = create_backbone("efficientnet", pretrained=False, quiet=True)
    assert runtime.export_min_pixels(efficientnet) == runtime.EXPORT_MIN_PIXELS
    # MobileNet's eager forward is light: the export repays itself only from ~1,550 images (the demo's 2,000 do)
    assert 2 * runtime.EXPORT_MIN_PIXELS < runtime.export_min_pixels(mobilenet) <= 2000 * 224 * 168
