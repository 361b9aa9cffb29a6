"""The dashboard's start-up: the modules Home, Training and the sidebar import never pull in PyTorch, the
torch-free constants match the library's, runs share the cached catalogue, PyTorch is imported in the background,
and ``python -m xmodal.warmup`` leaves UMAP's kernels in numba's disk cache."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from xmodal.dashboard import analysis, state
from xmodal.dashboard.jobs import training as jobs


# What Home, Training and the sidebar import; none may pull in PyTorch (4-8 s on a busy two-core machine).
TORCH_FREE = ["xmodal", "xmodal.runs", "xmodal.data", "xmodal.paths", *(f"xmodal.dashboard.{m}" for m in (
    "state", "analysis", "plots", "jobs.training", "sidebar", "ui", "queries", "uploads", "maps.projection",
    "jobs.queue", "escape", "checks", "catalogues", "maps.colours", "maps.embeds", "manage", "maps.figure",
    "maps.panels", "maps.view", "pickers", "runmeta", "slices", "jobs.tasks"))]


def _python_ok(code: str) -> None:
    """Run ``code`` in a fresh interpreter from the repo root; it must exit cleanly."""
    res = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
def test_home_modules_do_not_import_torch():
    code = (f"import sys, importlib\nfor m in {TORCH_FREE!r}: importlib.import_module(m)\n"
            "from xmodal.dashboard.jobs import training as jobs\n"
            "jobs.device_options() if not jobs.gpu_may_exist() else None\n"
            "heavy = sorted(m for m in ('torch', 'torchvision', 'timm', 'umap', 'xmodal.retrieval.run', "
            "'xmodal.models') "
            "if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    _python_ok(code)


def test_torch_free_constants_match_the_library():
    import xmodal
    from xmodal.retrieval import run as search
    from xmodal.evaluation.metrics import KS
    assert jobs.MODELS == tuple(xmodal.list_models())  # the sidebar's model list, without the registry
    assert analysis.KS == KS
    assert xmodal.load_run is search.load_run and "Run" in dir(xmodal)  # the lazy names of xmodal/__init__
    with pytest.raises(AttributeError, match="no attribute"):
        xmodal.nothing_here


def test_runs_share_the_cached_catalogue(trained_run, tmp_path):
    config = json.loads((trained_run / "config.json").read_text())
    cat = state._gallery_catalogue(trained_run)
    assert cat is not None and cat.fingerprint == config["data"]["fingerprint"]
    assert cat is state.catalogue(config["data"]["path"])  # the cached copy, validated once
    assert state.run(trained_run).catalogue is cat
    other = tmp_path / "other-run"  # trained on an older version of the catalogue: load_run loads its own
    other.mkdir()
    (other / "config.json").write_text(json.dumps({**config, "data": {**config["data"], "fingerprint": "0" * 16}}))
    assert state._gallery_catalogue(other) is None
    (other / "config.json").write_text(json.dumps({**config, "data": {"name": "x", "path": str(tmp_path / "no")}}))
    assert state._gallery_catalogue(other) is None


@pytest.mark.slow
def test_warm_pytorch_imports_search_in_the_background():
    code = ("import sys\nfrom xmodal.dashboard import state\n"
            "assert not state.pytorch_loaded()\n"
            "state.warm_pytorch(); state.warm_pytorch()  # once per server\n"
            "assert len(state._warming) == 1\n"
            "state._warming[0].join(300)\n"
            "assert state.pytorch_loaded() and 'torch' in sys.modules\n")
    _python_ok(code)


def test_warmup_leaves_umaps_kernels_in_numbas_disk_cache():
    """``python -m xmodal.warmup`` (the set-up command runs it): UMAP's kernels compiled into numba's on-disk
    cache, where the next process loads them instead of compiling."""
    from pathlib import Path as _Path

    from xmodal import warmup
    assert warmup.main([]) == 0
    import umap.umap_ as umap_module
    kernel = umap_module.smooth_knn_dist
    assert type(kernel._cache).__name__ == "FunctionCache"  # caching on (numba's own default: off)
    cached = list(_Path(kernel._cache._cache_path).glob("umap_.smooth_knn_dist-*.nbi"))
    assert cached, kernel._cache._cache_path
