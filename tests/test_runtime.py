"""xmodal.image.runtime: the frozen backbone in ONNX Runtime computes PyTorch's features, its graph is cached and
healed, and PyTorch takes over whenever ONNX Runtime cannot (missing, forced off, failing export: the export
itself in tests/test_runtime_export.py).

Tolerance: ONNX Runtime's outputs differ from PyTorch's by at most ``runtime.TOLERANCE`` (1e-4) relative to
the largest output magnitude, and pooled features by at most 1e-4 absolute; measured differences are about
1e-6 relative. Images are 64x48 so that each export takes seconds.
"""
from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import runtime_kit
from runtime_kit import (ABS_TOLERANCE, CPU, SIZE, backbone, exported, extract, needs_ort, no_export, notices,
                         runtime_image)
from xmodal import cachefile
from xmodal.image import runtime
from xmodal.image.backbones import image_transform, stem_module, weights_digest

# the kit's fixtures, for this module's tests (shared_cache is autouse: every test gets the module's graph cache)
graphs, photos, shared_cache = runtime_kit.graphs, runtime_kit.photos, runtime_kit.shared_cache
CASES = [("efficientnet", 0), ("efficientnet", 2), ("mobilenet", 0)]  # the cut is the same code for both


# ---------------------------------------------------------------- equivalence

@pytest.mark.slow
@needs_ort
@pytest.mark.parametrize("name,tail_blocks", CASES)
def test_onnxruntime_matches_pytorch(graphs, photos, monkeypatch, name, tail_blocks):
    model, _ = exported(graphs, name, tail_blocks)
    graph = runtime.load_graph(model, SIZE, tail_blocks)
    assert graph is not None and runtime.probe_error(graph, model, SIZE, tail_blocks) <= runtime.TOLERANCE
    monkeypatch.setenv(runtime.ENV, "torch")
    ref = extract(model, photos, name, tail_blocks)
    monkeypatch.setenv(runtime.ENV, "onnxruntime")
    calls = []
    monkeypatch.setattr(runtime.OrtBackbone, "raw", lambda self, x, real=runtime.OrtBackbone.raw:
                        calls.append(len(x)) or real(self, x))
    out = extract(model, photos, name, tail_blocks)
    assert calls == [len(photos)]  # ONNX Runtime did run
    assert out.shape == ref.shape and out.dtype == ref.dtype == (np.float16 if tail_blocks else np.float32)
    pixels = torch.stack([image_transform(name, SIZE)(runtime_image(p)) for p in photos])  # [6, 3, H, W]
    with torch.no_grad():
        exact = (runtime._runnable(model, tail_blocks)(pixels)).numpy()  # PyTorch float32
    assert runtime.relative_error(graph(pixels), exact) <= runtime.TOLERANCE
    if tail_blocks:  # float16 maps: PyTorch's and ONNX Runtime's may round a value to neighbouring halves
        np.testing.assert_allclose(out.astype(np.float32), ref.astype(np.float32), rtol=2 ** -10,
                                   atol=runtime.TOLERANCE * float(np.abs(exact).max()))
    else:
        assert np.abs(out - ref).max() <= ABS_TOLERANCE
        assert runtime.relative_error(out, ref) <= runtime.TOLERANCE


@pytest.mark.slow
@needs_ort
@pytest.mark.parametrize("tail_blocks", [0, 2])
@pytest.mark.usefixtures("two_torch_threads")
def test_lanes_give_every_image_its_own_features_in_order(graphs, photos, monkeypatch, tail_blocks):
    """Several lanes (each decoding a batch and running a one-thread session) return what one session fed by
    a decoding thread returns, row for row, for a job whose batches finish out of order."""
    from xmodal.image import extraction
    model, _ = exported(graphs, "efficientnet", tail_blocks)
    paths = [photos[(i * 5) % len(photos)] for i in range(2 * extraction.LANE_BATCH * 3 + 5)]  # 53: a short last batch
    monkeypatch.setenv(runtime.ENV, "onnxruntime")
    monkeypatch.setattr(extraction, "lanes_for", lambda images: 1)
    one = extract(model, paths, "efficientnet", tail_blocks)
    assert runtime.load_graph(model, SIZE, tail_blocks, threads=1) is not None  # loaded (and probed) before counting
    sessions = []
    real_raw = runtime.OrtBackbone.raw

    def slow_raw(self, x):  # lanes finish out of order: the first batch of each three is the slowest
        sessions.append((self.threads, len(x)))
        if len(sessions) % 3 == 1:
            import time
            time.sleep(0.05)
        return real_raw(self, x)
    monkeypatch.setattr(runtime.OrtBackbone, "raw", slow_raw)
    monkeypatch.setattr(extraction, "lanes_for", lambda images: 3)
    threads = torch.get_num_threads()
    lanes = extract(model, paths, "efficientnet", tail_blocks)
    assert {threads for threads, _ in sessions} == {1}  # the one-thread session ran every batch
    later = []  # the lanes ran torch on one thread each; the caller and threads started afterwards did not
    thread = __import__("threading").Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert torch.get_num_threads() == threads and later == [threads]
    assert sorted(n for _, n in sessions) == sorted([extraction.LANE_BATCH] * 6 + [5])
    assert lanes.shape == one.shape and lanes.dtype == one.dtype
    np.testing.assert_allclose(lanes.astype(np.float32), one.astype(np.float32), rtol=2 ** -10,
                               atol=ABS_TOLERANCE * max(1.0, float(np.abs(one.astype(np.float32)).max())))
    first = {p: i for i, p in reversed(list(enumerate(paths)))}  # each photo's first row
    rows = one.astype(np.float32).reshape(len(paths), -1)[[first[p] for p in photos]]
    gaps = np.abs(rows[:, None] - rows[None]).max(-1)[~np.eye(len(photos), dtype=bool)]
    assert gaps.min() > 100 * ABS_TOLERANCE  # different photos differ: a row out of order would have failed above


@pytest.mark.slow
@needs_ort
def test_backbone_features_for_single_queries(graphs, photos):
    model, _ = exported(graphs, "efficientnet")
    x = image_transform("efficientnet", SIZE)(runtime_image(photos[0]))[None]  # [1, 3, H, W]
    with torch.no_grad():
        ref = model(x)
    runtime.load_graph(model, SIZE)  # cached on disk: a single query uses it, never exports
    feats = runtime.backbone_features(model, x)
    assert feats.dtype == torch.float32 and feats.shape == ref.shape
    assert runtime.relative_error(feats.numpy(), ref.numpy()) <= runtime.TOLERANCE
    tf = image_transform("efficientnet", SIZE)
    raw = tf.to_uint8(runtime_image(photos[0]))[None]  # [1, 3, H, W] uint8: the graph normalises it itself
    direct = runtime.backbone_features(model, raw, transform=tf)
    assert runtime.relative_error(direct.numpy(), ref.numpy()) <= runtime.TOLERANCE


@needs_ort
def test_a_weight_changed_in_place_is_never_run_from_the_old_graph(graphs, photos):
    """Single queries reuse the session they were given while no tensor of the backbone changes; an in-place
    change (a fine-tuning step, ``load_state_dict``) makes the next query ask for its own graph."""
    model, _ = exported(graphs, "efficientnet")
    model = __import__("copy").deepcopy(model)  # the module's shared model stays as it is
    graph = runtime.load_graph(model, SIZE)
    assert runtime.select_runtime(model, CPU, SIZE) is graph and runtime.select_runtime(model, CPU, SIZE) is graph
    with torch.no_grad():
        model.conv_stem.weight.mul_(1.5)
    assert runtime.select_runtime(model, CPU, SIZE) is None  # another weights digest: not cached, not exported
    x = image_transform("efficientnet", SIZE)(runtime_image(photos[0]))[None]
    with torch.no_grad():
        ref = model(x)
    assert runtime.relative_error(runtime.backbone_features(model, x).numpy(), ref.numpy()) <= runtime.TOLERANCE


# ---------------------------------------------------------------- when PyTorch runs instead

def test_without_onnxruntime_pytorch_runs(graphs, photos, monkeypatch, caplog):
    # with onnxruntime installed, a cached graph is there too: it must not be used once the import fails
    model = exported(graphs, "efficientnet")[0] if runtime.onnxruntime_version() else backbone("efficientnet")
    monkeypatch.setenv(runtime.ENV, "torch")
    ref = extract(model, photos, "efficientnet")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    monkeypatch.delenv(runtime.ENV)
    assert runtime.onnxruntime_version() is None
    assert runtime.select_runtime(model, CPU, SIZE, images=10 ** 6) is None
    np.testing.assert_array_equal(extract(model, photos, "efficientnet"), ref)
    monkeypatch.setenv(runtime.ENV, "onnxruntime")  # asked for, not there: said, and PyTorch runs
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(extract(model, photos, "efficientnet"), ref)
    assert notices(caplog, "onnxruntime does not import")


@needs_ort
def test_env_forces_pytorch(graphs, photos, monkeypatch):
    model, _ = exported(graphs, "efficientnet")
    assert runtime.load_graph(model, SIZE) is not None  # a graph is there to be used...
    monkeypatch.setenv(runtime.ENV, "torch")
    assert runtime.select_runtime(model, CPU, SIZE, images=10 ** 6) is None  # ...and is not
    monkeypatch.setattr(runtime.OrtBackbone, "raw", no_export)
    out = extract(model, photos, "efficientnet")
    with torch.no_grad():
        pixels = torch.stack([image_transform("efficientnet", SIZE)(runtime_image(p)) for p in photos])
        np.testing.assert_array_equal(out, model(pixels).numpy())


def test_bad_env_value(monkeypatch):
    monkeypatch.setenv(runtime.ENV, "tensorrt")
    with pytest.raises(ValueError, match="auto, torch, onnxruntime"):
        runtime.requested_runtime()
    monkeypatch.setenv(runtime.ENV, "ORT")
    assert runtime.requested_runtime() == "onnxruntime"


@needs_ort
def test_gpu_and_non_float32_stay_on_pytorch(graphs):
    model, _ = exported(graphs, "efficientnet")
    assert runtime.select_runtime(model, torch.device("cuda"), SIZE, images=10 ** 6) is None
    half = backbone("mobilenet").to(torch.bfloat16)
    assert runtime.select_runtime(half, CPU, SIZE, images=10 ** 6) is None


# ---------------------------------------------------------------- the graph cache

@pytest.mark.slow
@needs_ort
def test_auto_exports_only_jobs_that_repay_it(graphs, monkeypatch, tmp_path):
    model, good = exported(graphs, "mobilenet")
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path))
    assert runtime.select_runtime(model, CPU, SIZE, images=60) is None  # small job, no graph: PyTorch
    assert not (tmp_path / "onnx").exists()
    monkeypatch.setattr(runtime, "export_graph", lambda *a, **k: good)
    big = runtime.export_min_pixels(model) // (SIZE[0] * SIZE[1]) + 1
    assert runtime.select_runtime(model, CPU, SIZE, images=big - 2) is None  # not quite big enough
    assert not (tmp_path / "onnx").exists()
    assert runtime.select_runtime(model, CPU, SIZE, images=big) is not None  # a big one exports
    runtime.clear_sessions()
    monkeypatch.setattr(runtime, "export_graph", no_export)
    assert runtime.select_runtime(model, CPU, SIZE, images=1) is not None  # cached: any job uses it


@pytest.mark.slow
@needs_ort
def test_cached_graph_is_reused_and_keyed(graphs, monkeypatch):
    model, _ = exported(graphs, "mobilenet")
    first = runtime.load_graph(model, SIZE)
    path = first.path
    assert path.parent.name == "onnx" and path.name.startswith("mobilenet_64x48_") and path.suffix == ".onnx"
    assert runtime.load_graph(model, SIZE) is first  # kept in this process
    runtime.clear_sessions()
    monkeypatch.setattr(runtime, "export_graph", no_export)
    again = runtime.load_graph(model, SIZE)  # read back from disk, checked, not exported
    assert again is not first and again.path == path
    # the key: other weights, another size, another cut each have their own graph
    other = backbone("mobilenet")
    with torch.no_grad():
        other.conv_stem.weight.mul_(2)  # in place: the remembered digest must notice
    assert runtime.graph_key(other, SIZE)["weights"] == weights_digest(other)
    assert len({runtime.graph_path(runtime.graph_key(m, s, k)) for m, s, k in
                [(model, SIZE, 0), (other, SIZE, 0), (model, (96, 72), 0), (model, SIZE, 2)]}) == 4
    assert runtime.graph_key(model, SIZE, 2)["weights"] == weights_digest(stem_module(model, 2))


DAMAGE = ["truncate", "garble", "garbage", "empty", "other_key", "other_weights"]


def other_weights(graph: bytes) -> bytes:
    """``graph`` with its largest weight tensor scaled by 1.5 (its metadata, key included, unchanged)."""
    import onnx
    from onnx import numpy_helper
    proto = onnx.load_from_string(graph)
    init = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5, init.name))
    return proto.SerializeToString()


@pytest.mark.slow
@needs_ort
@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_graph_is_rebuilt(graphs, monkeypatch, tmp_path, caplog, how):
    model, good = exported(graphs, "efficientnet")
    other_cut = exported(graphs, "efficientnet", 2)[1] if how == "other_key" else None  # before the cache moves
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path))
    path = runtime.graph_path(runtime.graph_key(model, SIZE))
    path.parent.mkdir(parents=True)
    data = bytearray(good)
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "garble":  # bytes flipped inside the largest weight tensor: only the probe against PyTorch can
        # tell (flipping the file's middle byte range instead sometimes hit a node name or a debug string: a graph
        # that still computes the same function, rightly kept)
        import onnx
        init = max(onnx.load_from_string(bytes(good)).graph.initializer, key=lambda t: np.prod(t.dims))
        at = bytes(data).find(init.raw_data[:64]) + len(init.raw_data) // 2
        assert len(init.raw_data) > 64 and at > 64
        data[at:at + 16] = bytes(b ^ 0xFF for b in data[at:at + 16])
    elif how == "garbage":
        data = bytearray(b"not an onnx graph")
    elif how == "empty":
        data = bytearray()
    elif how == "other_key":  # a sound graph of another cut filed under this key
        data = bytearray(other_cut)
    else:  # this key's graph with one weight tensor changed: only the probe against PyTorch can tell
        data = bytearray(other_weights(good))
    path.write_bytes(bytes(data))
    monkeypatch.setattr(runtime, "export_graph", lambda *a, **k: good)  # the rebuild, without a 5 s export
    with caplog.at_level(logging.WARNING):
        graph = runtime.load_graph(model, SIZE)
    assert graph is not None and runtime.probe_error(graph, model, SIZE) <= runtime.TOLERANCE
    assert len(notices(caplog, f"{path.name} is damaged")) == 1
    assert path.read_bytes() == good  # healed on disk
    caplog.clear()
    runtime.clear_sessions()
    with caplog.at_level(logging.WARNING):
        assert runtime.load_graph(model, SIZE) is not None
    assert not notices(caplog, "damaged")


@needs_ort
def test_graph_disk_full(graphs, monkeypatch, tmp_path, caplog):
    model, good = exported(graphs, "mobilenet")
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path))
    monkeypatch.setattr(runtime, "export_graph", lambda *a, **k: good)

    def enospc(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(cachefile.os, "fsync", enospc)
    with caplog.at_level(logging.WARNING):
        graph = runtime.load_graph(model, SIZE)
    assert graph is not None  # runs from memory all the same
    assert not graph.path.exists() and not list(graph.path.parent.glob("*.tmp"))
    assert notices(caplog, "could not write")


# ---------------------------------------------------------------- preprocessing split, decoding thread

@pytest.mark.parametrize("name", ["efficientnet", "mobilenet"])
def test_transform_halves_equal_torchvision_pipeline(photos, name):
    """uint8 pixels then ``normalise`` is bit-for-bit ToTensor + Normalize of the resized image: cached
    features keep their meaning whichever half runs where (the loader, the graph, the query)."""
    from torchvision import transforms

    from xmodal.image.backbones import normalisation, resize_pixels
    mean, std = normalisation(name)
    reference = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    tf = image_transform(name, SIZE)
    for path in photos:
        image = runtime_image(path)
        raw = tf.to_uint8(image)
        assert raw.dtype == torch.uint8 and raw.shape == (3, *SIZE)
        assert torch.equal(raw, resize_pixels([np.asarray(image)], SIZE)[0])
        resized = Image.fromarray(raw.permute(1, 2, 0).numpy())
        assert torch.equal(tf(image), reference(resized))
        assert torch.equal(tf.normalise(raw[None])[0], reference(resized))


def test_decoded_batches_in_order_bounded_and_failing_loudly(tmp_path):
    from xmodal.image.batching import decoded_batches
    seen = []

    def decode(i):
        seen.append(i)
        return torch.full((2,), i)

    def stack(items):
        return torch.stack([decode(i) for i in items])

    batches = decoded_batches(list(range(10)), stack, batch_size=3, threads=2, ahead=2)
    first = next(batches)
    assert first.tolist() == [[0, 0], [1, 1], [2, 2]]
    assert max(seen) < 9  # at most `ahead` batches decoded in front of the consumer
    rest = list(batches)
    assert [b[:, 0].tolist() for b in rest] == [[3, 4, 5], [6, 7, 8], [9]]

    def broken(i):
        if i == 4:
            raise ValueError("damaged photo 4")
        return torch.zeros(1)

    with pytest.raises(ValueError, match="damaged photo 4"):
        list(decoded_batches(list(range(8)), lambda items: torch.stack([broken(i) for i in items]), batch_size=2,
                             threads=1))
