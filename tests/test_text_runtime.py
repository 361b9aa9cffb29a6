"""xmodal.text.runtime: a saved run's text tower in ONNX Runtime computes PyTorch's embeddings and search results,
its graph is cached, keyed and healed, and PyTorch takes over whenever ONNX Runtime cannot (missing, forced off,
a failing export, a model in training).

Tolerance: embeddings differ from PyTorch's by at most 1e-5 absolute (unit vectors; measured about 1e-7), and the
graph's probe by ``runtime.TOLERANCE`` relative. The tiny run's BiLSTM is 32 wide: an export takes ~0.1 s.
"""
from __future__ import annotations

import copy
import importlib.util
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xmodal.models.embed import embed_texts
from xmodal.retrieval.run import load_model, load_run
from xmodal.text import runtime

CPU = torch.device("cpu")
ABS_TOLERANCE = 1e-5
QUERIES = ["blue shirt", "red floral dress for women", "black", "grey melange round neck t-shirt men casual"]
needs_ort = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx")
                               is None, reason="onnxruntime or onnx not installed (requirements.txt)")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("text_onnx_cache")


@pytest.fixture(autouse=True)
def shared_cache(cache, monkeypatch) -> Path:
    """The module's cache folder (a graph exported once is reused), the default runtime, no session kept."""
    monkeypatch.setenv("XMODAL_CACHE", str(cache))
    monkeypatch.delenv(runtime.ENV, raising=False)
    runtime.clear_sessions()
    yield cache
    runtime.clear_sessions()


@pytest.fixture(scope="module")
def loaded(trained_run):
    """(model, vocab, catalogue captions) of the tiny trained run, loaded once for the module."""
    from xmodal.data import load_catalogue
    model, vocab, config = load_model(trained_run)
    return model, vocab, load_catalogue(config["data"]["path"]).captions


def torch_embeds(monkeypatch, model, vocab, texts) -> np.ndarray:
    monkeypatch.setenv(runtime.ENV, "torch")
    out = embed_texts(model, vocab, texts, CPU).numpy()
    monkeypatch.delenv(runtime.ENV)
    return out


def notices(caplog, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and words in r.getMessage()]


def no_export(*args, **kwargs):
    raise AssertionError("exported again")


@needs_ort
def test_onnxruntime_matches_pytorch_on_a_trained_run(loaded, monkeypatch, cache):
    model, vocab, captions = loaded
    graph = runtime.select_runtime(model, CPU)
    assert isinstance(graph, runtime.OrtText)  # a loaded run's model is fixed: its text tower runs in ONNX Runtime
    assert graph.path.parent == cache / "onnx" and graph.path.name.startswith("text_CMPM_") and graph.path.is_file()
    assert runtime.probe_error(graph, model) <= runtime.TOLERANCE
    for texts in ([q] for q in QUERIES):  # single queries, the search path
        np.testing.assert_allclose(embed_texts(model, vocab, texts, CPU).numpy(),
                                   torch_embeds(monkeypatch, model, vocab, texts), atol=ABS_TOLERANCE)
    ours = embed_texts(model, vocab, captions, CPU, batch=16).numpy()  # batches padded to their longest caption
    np.testing.assert_allclose(ours, torch_embeds(monkeypatch, model, vocab, captions), atol=ABS_TOLERANCE)
    with torch.no_grad():  # one caption at a time, no padding: also holds the batches to the captions' order
        one_by_one = torch.cat([model.encode_text(vocab.encode([c])) for c in captions]).numpy()
    np.testing.assert_allclose(ours, one_by_one, atol=ABS_TOLERANCE)
    assert not np.array_equal(ours, torch_embeds(monkeypatch, model, vocab, captions))  # it did run elsewhere
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


@needs_ort
def test_search_results_are_identical_through_either_path(trained_run, monkeypatch):
    run = load_run(trained_run)
    assert runtime.select_runtime(run.model, CPU) is not None
    fast = [run.search_text(q, k=10) for q in QUERIES]
    monkeypatch.setenv(runtime.ENV, "torch")
    slow = [run.search_text(q, k=10) for q in QUERIES]
    for a, b in zip(fast, slow):
        assert len(a) == 10 and [h.index for h in a] == [h.index for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=ABS_TOLERANCE)
    # the caption gallery (photo -> titles): the same ten captions for every photo, whichever path embedded it
    monkeypatch.delenv(runtime.ENV)
    captions = run.catalogue.captions
    fast_gallery = embed_texts(run.model, run.vocab, captions, CPU)
    slow_gallery = torch.from_numpy(torch_embeds(monkeypatch, run.model, run.vocab, captions))
    photos = run.image_embeds  # [N, D]
    assert torch.equal((photos @ fast_gallery.T).topk(10).indices, (photos @ slow_gallery.T).topk(10).indices)


@needs_ort
def test_cached_graph_is_reused_and_keyed(loaded, monkeypatch):
    model, vocab, _ = loaded
    first = runtime.load_graph(model)
    assert runtime.load_graph(model) is first and runtime.select_runtime(model, CPU) is first  # kept in this process
    runtime.clear_sessions()
    monkeypatch.setattr(runtime, "export_graph", no_export)
    again = runtime.load_graph(model)  # read back from disk, checked, not exported
    assert again is not first and again.path == first.path
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.text_proj[1].weight.mul_(1.5)  # in place: the remembered digest must notice
    assert runtime.graph_key(other)["weights"] != runtime.graph_key(model)["weights"]
    moved = copy.deepcopy(model)
    with torch.no_grad():
        moved.backbone.conv_stem.weight.mul_(2)  # the image backbone is no part of the text graph
    assert runtime.graph_key(moved) == runtime.graph_key(model)


@needs_ort
def test_a_weight_changed_in_place_is_never_run_from_the_old_graph(loaded, monkeypatch):
    model, vocab, _ = loaded
    model = runtime.fixed_weights(copy.deepcopy(model))  # the module's shared model stays as it is
    graph = runtime.select_runtime(model, CPU)
    assert graph is not None and runtime.select_runtime(model, CPU) is graph
    with torch.no_grad():
        model.text_encoder.lstm.weight_hh_l0.mul_(0.5)
    changed = runtime.select_runtime(model, CPU)
    assert changed is not None and changed.path != graph.path  # its own graph, exported for the new weights
    np.testing.assert_allclose(embed_texts(model, vocab, QUERIES, CPU).numpy(),
                               torch_embeds(monkeypatch, model, vocab, QUERIES), atol=ABS_TOLERANCE)


# ---------------------------------------------------------------- when PyTorch runs instead

def test_without_onnxruntime_pytorch_runs(loaded, monkeypatch, caplog):
    model, vocab, _ = loaded
    ref = torch_embeds(monkeypatch, model, vocab, QUERIES)
    if runtime.onnxruntime_version() is not None:
        assert runtime.select_runtime(model, CPU) is not None  # a session is loaded: it must not be used after this
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    assert runtime.onnxruntime_version() is None and runtime.select_runtime(model, CPU) is None
    np.testing.assert_array_equal(embed_texts(model, vocab, QUERIES, CPU).numpy(), ref)
    monkeypatch.setenv(runtime.ENV, "onnxruntime")  # asked for, not there: said, and PyTorch runs
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(embed_texts(model, vocab, QUERIES, CPU).numpy(), ref)
    assert notices(caplog, "onnxruntime does not import")


@needs_ort
def test_env_training_models_gpu_and_bf16_stay_on_pytorch(loaded, monkeypatch):
    model, vocab, _ = loaded
    assert runtime.select_runtime(model, CPU) is not None  # a graph is there to be used...
    monkeypatch.setenv(runtime.ENV, "torch")
    assert runtime.select_runtime(model, CPU) is None  # ...and is not
    monkeypatch.setattr(runtime.OrtText, "__call__", no_export)
    with torch.no_grad():
        ref = model.encode_text(vocab.encode(QUERIES)).numpy()
    np.testing.assert_array_equal(embed_texts(model, vocab, QUERIES, CPU).numpy(), ref)
    monkeypatch.delenv(runtime.ENV)
    training = copy.deepcopy(model)  # a deep copy is a new module: not marked, as a model being trained is not
    assert runtime.select_runtime(training, CPU) is None
    assert runtime.select_runtime(model, torch.device("cuda")) is None
    assert runtime.select_runtime(runtime.fixed_weights(copy.deepcopy(model).to(torch.bfloat16)), CPU) is None


@needs_ort
def test_export_failure_falls_back(loaded, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path))
    model, vocab, _ = loaded
    ref = torch_embeds(monkeypatch, model, vocab, QUERIES)
    tries = []

    def broken(*a, **k):
        tries.append(1)
        raise RuntimeError("unsupported operator aten::frobnicate")
    monkeypatch.setattr(runtime, "export_graph", broken)
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(embed_texts(model, vocab, QUERIES, CPU).numpy(), ref)
        np.testing.assert_array_equal(embed_texts(model, vocab, QUERIES, CPU).numpy(), ref)
    assert notices(caplog, "cannot run the text tower of CMPM in ONNX Runtime (RuntimeError: unsupported operator")
    assert tries == [1] and not list(tmp_path.glob("onnx/*"))  # tried once in this process, nothing written


@needs_ort
@pytest.mark.parametrize("how", ["truncate", "garbage", "other_weights"])
def test_damaged_graph_is_rebuilt(loaded, monkeypatch, tmp_path, caplog, how):
    import onnx
    from onnx import numpy_helper
    model, vocab, _ = loaded
    good = runtime.load_graph(model).path.read_bytes()
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path))
    runtime.clear_sessions()
    path = runtime.graph_path(runtime.graph_key(model))
    path.parent.mkdir(parents=True)
    if how == "truncate":
        data = good[: len(good) // 2]
    elif how == "garbage":
        data = b"not an onnx graph"
    else:  # this key's graph with its largest weight scaled: only the probe against PyTorch can tell
        proto = onnx.load_from_string(good)
        init = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
        data = proto.SerializeToString()
    path.write_bytes(data)
    with caplog.at_level(logging.WARNING):
        graph = runtime.load_graph(model)
    assert graph is not None and runtime.probe_error(graph, model) <= runtime.TOLERANCE
    assert len(notices(caplog, f"{path.name} is damaged")) == 1
    assert runtime.probe_error(runtime.OrtText(path.read_bytes(), path, 1), model) <= runtime.TOLERANCE  # healed


# ---------------------------------------------------------------- the bench's row

def test_bench_row_against_the_bare_runtimes(loaded, monkeypatch):
    from xmodal.bench.search import text_encoding_row
    model, vocab, captions = loaded
    row = text_encoding_row(model, vocab, captions[:8], "tiny run")
    used = "onnxruntime" if runtime.onnxruntime_version() else "torch"
    assert row.section == "3 search" and f"(tiny run, {used}, " in row.measure and "8 captions" in row.measure
    assert row.reference.startswith("tokenise p50 ") and "+ bare " in row.reference and "(torch " in row.reference
    assert row.target == "<= 1.25x" and row.met == (float(row.score[:-1]) <= 1.25)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # without ONNX Runtime: PyTorch is the only bare runtime
    row = text_encoding_row(model, vocab, captions[:8], "tiny run")
    assert "(tiny run, torch, " in row.measure and "+ bare torch p50" in row.reference
