"""What the ONNX Runtime tests share: the backbones (``backbone``), a module's graph cache folder (``graphs``,
with the autouse ``shared_cache`` that points XMODAL_CACHE at it) and the graphs exported into it once per module
(``exported``), a few catalogue photos, feature extraction and the warnings logged. A test module binds the
fixtures it uses to names of its own, ``graphs`` and ``shared_cache`` always. Used by tests/test_runtime.py and
tests/test_runtime_export.py."""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from xmodal.image import runtime
from xmodal.image.backbones import create_backbone, image_transform
from xmodal.image.extraction import extract_features

CPU = torch.device("cpu")
SIZE = (64, 48)
ABS_TOLERANCE = 1e-4  # pooled features, absolute
needs_ort = pytest.mark.skipif(runtime.onnxruntime_version() is None or importlib.util.find_spec("onnxscript") is None,
                               reason="onnxruntime or onnxscript not installed (requirements.txt)")


def backbone(name: str) -> torch.nn.Module:
    """EfficientNet with its packaged ImageNet weights; MobileNet randomly initialised (no weights offline)."""
    torch.manual_seed(0)
    return create_backbone(name, pretrained=name == "efficientnet", quiet=True)[0].eval()


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> dict:
    """(backbone, cut) -> (model, exported graph bytes), each exported once for the test module."""
    return {"cache": tmp_path_factory.mktemp("onnx_cache")}


@pytest.fixture(autouse=True)
def shared_cache(graphs, monkeypatch) -> Path:
    """The module's cache folder (graphs exported once are reused) and no session kept between tests."""
    monkeypatch.setenv("XMODAL_CACHE", str(graphs["cache"]))
    monkeypatch.delenv(runtime.ENV, raising=False)
    runtime.clear_sessions()
    yield graphs["cache"]
    runtime.clear_sessions()


def exported(graphs: dict, name: str, tail_blocks: int = 0) -> tuple[torch.nn.Module, bytes]:
    """The backbone and its graph's bytes, exported on first use into the module's cache folder."""
    if (name, tail_blocks) not in graphs:
        model = backbone(name)
        data = runtime.export_graph(model, SIZE, tail_blocks)
        path = runtime.graph_path(runtime.graph_key(model, SIZE, tail_blocks))
        assert path.parent.parent == graphs["cache"]
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        graphs[name, tail_blocks] = model, data
    return graphs[name, tail_blocks]


@pytest.fixture(scope="module")
def photos(tiny_catalogue) -> list[Path]:
    from xmodal.data import load_catalogue
    cat = load_catalogue(tiny_catalogue)
    return [cat.image_path(i) for i in range(6)]


def extract(model, photos, name: str, tail_blocks: int = 0) -> np.ndarray:
    return extract_features(model, photos, image_transform(name, SIZE), CPU, progress=False, tail_blocks=tail_blocks)


def notices(caplog, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and words in r.getMessage()]


def no_export(*args, **kwargs):
    raise AssertionError("the cached graph should have been used")


def runtime_image(path: Path):
    from xmodal.data.images import open_rgb
    return open_rgb(path)
