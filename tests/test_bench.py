"""xmodal.bench: its helpers and a tiny end-to-end run. No timing assertions: only the table's shape."""
from __future__ import annotations

import ast
import os
import runpy
import sys
from pathlib import Path

import pytest
import torch

from xmodal.bench import (SECTIONS, BenchConfig, Row, bench_dashboard, compare_many, format_table, main,
                          product_like, run_bench)
from xmodal.bench.cli import cpu_model, header, numpy_blas, torch_blas
from xmodal.bench.features import _export_row, bare_forwards
from xmodal.bench.search import _bench_faiss

BENCH = Path(__file__).resolve().parents[1] / "xmodal" / "bench"


def test_product_like_is_normalised_and_structured():
    gallery, queries = product_like(2000, 32, seed=0, queries=10, chunk=700)
    assert gallery.shape == (2000, 32) and queries.shape == (10, 32)
    torch.testing.assert_close(gallery.norm(dim=1), torch.ones(2000))
    top = torch.topk(queries @ gallery.T, 10).values
    assert float(top[:, 0].mean()) > 0.5  # each query sits near its item


def test_header_names_the_cpu_and_the_blas_libraries():
    line = header(True, 2, 0.5, 12.4)
    assert "\n" not in line and line.startswith(f"xmodal bench --quick: {cpu_model()}, ")
    assert f"BLAS {torch_blas()} (torch) / {numpy_blas()} (numpy)" in line and "12 s in all" in line
    assert "2 threads, GOMP_SPINCOUNT 20000)" in line  # xmodal's short OpenMP spin (xmodal/__init__.py)


def test_importing_xmodal_shortens_openmps_spin_unless_the_user_set_it():
    import subprocess
    code = "import os, xmodal; print(os.environ['GOMP_SPINCOUNT'])"  # set before anything loads PyTorch
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "20000"
    env["GOMP_SPINCOUNT"] = "5"
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() == "5"
    assert cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nmodel name\t: other\n") == "AMD EPYC 7B13"
    assert cpu_model("processor\t: 0\n")  # no model name (not x86): platform's answer, never empty
    assert torch_blas("  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, LAPACK_INFO=mkl") == "mkl"
    assert torch_blas("  - LAPACK is enabled (usually provided by OpenBLAS)") == "openblas"
    assert torch_blas("nothing about it") == "unknown"
    assert numpy_blas({"Build Dependencies": {"blas": {"name": "scipy-openblas", "version": "0.3.27"}}}) == \
        "scipy-openblas 0.3.27"
    assert numpy_blas({"Build Dependencies": {}}) == "unknown"


def test_format_table_has_a_target_met_column():
    rows = [Row("s", "a", "1", "2", "0.5x", "<= 1x", True), Row("s", "b", "skipped (x)", "-", "-", "-", None),
            Row("s", "c", "3", "1", "3x", "<= 1x", False)]
    lines = format_table(rows).splitlines()
    assert "target met?" in lines[0] and len(lines) == 2 + len(rows)
    assert [line.rstrip(" |").split("|")[-1].strip() for line in lines[2:]] == ["yes", "-", "NO"]
    assert len({len(line) for line in lines}) == 1  # aligned


def test_faiss_rows(tmp_path):
    gallery, queries = product_like(3000, 32, queries=50)
    encode = lambda text: queries[len(text) % len(queries)]  # noqa: E731
    rows = _bench_faiss(gallery, BenchConfig(dim=32), tmp_path, encode, ["a", "bb", "ccc"], 0.001)
    measures = [r.measure for r in rows]
    assert [m.split(",")[0] for m in measures] == ["faiss IVF build", "faiss index reload from the run-folder cache",
                                                   "text->top-10"]
    latency = rows[2]  # against faiss's own search of the same vectors, not an absolute budget
    assert latency.target == "<= 1.5x" and latency.score.endswith("x") and float(latency.score[:-1]) > 0
    assert "faiss's own search, same nprobe" in latency.reference and "1 thread" in latency.reference
    assert not list(tmp_path.iterdir())  # the index file is removed afterwards


def test_faiss_recall_row_uses_a_trained_runs_captions(trained_run):
    """The recall row measures real text queries of a trained run against its photos (not gallery rows plus
    noise), and shows what the old calibration would have promised beside it."""
    from xmodal.bench.search import real_query_recall
    rows = real_query_recall(trained_run)
    assert len(rows) == 2 and all("held-out captions of a trained run" in r.measure for r in rows)
    ours, old = rows
    assert "calibrated on other captions" in ours.measure and ours.target == ">= 0.95"
    assert 0.0 <= float(ours.measured) <= 1.0 and ours.met == (float(ours.measured) >= 0.95)
    assert old.met is None and "plus noise" in old.measure


def test_dashboard_skips_when_missing(tmp_path):
    rows = bench_dashboard(BenchConfig(dashboard=str(tmp_path / "nope.py")), tmp_path)
    assert len(rows) == 1 and rows[0].measured.startswith("skipped (") and rows[0].met is None


def test_unknown_section(tiny_catalogue):
    with pytest.raises(ValueError, match="unknown bench sections"):
        run_bench(BenchConfig(data=str(tiny_catalogue), sections=("gpu",)))


@pytest.mark.slow
def test_tiny_run_has_every_row(tiny_catalogue, trained_run, tmp_path, capsys):
    # the recall rows read the suite's trained run (training the bench's own would repeat it); the image-query run
    # is trained once and reused by the explore section
    cfg = BenchConfig(sizes=(500, 2000), data=str(tiny_catalogue), feature_images=8, image_queries=3,
                      recall_run=str(trained_run),
                      query_run_items=30, train_batch=8, train_steps=1, models=("siamese", "cmpm-mobilenet"),
                      latency_queries=5, metrics_items=3000, umap_points=200, embed_items=100, reps=1,
                      map_points=2000, map_browser=False, sections=SECTIONS, dashboard=str(tmp_path / "absent.py"),
                      work_dir=str(tmp_path / "work"))
    rows = run_bench(cfg)
    measures = [r.measure for r in rows]
    assert [r.section for r in rows] == ["1 features"] * 3 + ["2 training"] * 2 + ["3 search"] * 10 + \
        ["4 maps"] * 4 + ["5 dashboard"] + ["6 explore"] * 3 + ["7 metrics"]
    assert measures[-2].startswith("explain one pair") and rows[-2].met is not None
    assert measures[-1].startswith("score a split of 3,000 items") and rows[-1].met is True
    assert measures[0].startswith("image features") and measures[1].startswith("ONNX export")
    assert measures[2].startswith("image -> top-10 titles: search_image")
    assert "bare onnxruntime" in rows[0].reference and "bare torch" in rows[0].reference  # three figures
    assert "decoding" in rows[0].reference and "x the bare " in rows[0].measured
    assert measures[3].startswith("train step: siamese") and measures[4].startswith("train step: cmpm-mobilenet")
    assert [m.split(" (")[0] for m in measures[6:12]] == [
        "text->top-10, exact, 500 x 512", "text->top-10, exact fp16, 500 x 512",
        "text->top-10, exact, filtered, 500 x 512", "text->top-10, exact, 2,000 x 512",
        "text->top-10, exact fp16, 2,000 x 512", "text->top-10, exact, filtered, 2,000 x 512"]
    assert all("(kernel: " in measures[i] for i in (6, 7, 9, 10))  # each exact row names its kernel
    assert rows[8].measured.count("p50") == 3 and "unfiltered exact search" in rows[8].reference
    assert "one pass (sum) of the fp16 gallery" in rows[7].reference and "(0.50x)" in rows[7].reference
    assert "float16 pass + float32 re-score" in measures[7] and "exact fp16" not in measures[6]
    assert all("held-out captions of a trained run" in m for m in measures[12:15])  # real queries' recall, fp16's
    assert measures[14].startswith("fp16 vs fp32 exact top-10") and "R@10" in rows[14].reference
    assert rows[14].score == "100.0 %" and rows[14].met is True  # re-scored: float32's top 10 by construction
    assert all(rows[i].met is not None for i in (0, 2, 3, 4, *range(5, 13), 14))  # every comparison has a verdict
    umap = [r for r in rows if r.section == "4 maps"][:2]  # the first call informs; the next is held to umap-learn
    assert "first call" in umap[0].measure and umap[0].met is None
    assert "next call" in umap[1].measure and "bare umap-learn" in umap[1].reference and umap[1].met is not None
    table = format_table(rows)
    assert table.count("\n") == len(rows) + 1


def test_cli_runs_one_section(tiny_catalogue, tmp_path, capsys):
    assert main(["--sections", "dashboard", "--data", str(tiny_catalogue),
                 "--dashboard", str(tmp_path / "absent.py"), "--json", str(tmp_path / "rows.json")]) == 0
    out = capsys.readouterr().out
    assert "target met?" in out and "skipped (" in out
    assert (tmp_path / "rows.json").is_file()


def test_compare_many_rotates_the_order():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    best = compare_many(fns, reps=3)
    assert set(best) == set("abc") and all(t >= 0 for t in best.values())
    assert [calls[i] for i in (0, 3, 6)] == ["a", "b", "c"]  # each goes first once
    assert [calls[i] for i in (2, 5, 8)] == ["c", "a", "b"]  # and last once


def test_features_rows_without_onnxruntime():
    from xmodal.image.backbones import create_backbone
    model = create_backbone("mobilenet", pretrained=False)[0].eval()
    fns = bare_forwards(model, None, torch.randn(3, 3, 32, 24), torch.zeros(3, 3, 32, 24, dtype=torch.uint8), batch=2)
    assert list(fns) == ["torch", "torch channels_last"]
    for fn in fns.values():
        fn()
    row = _export_row(None, "onnxruntime not installed", {"torch": 1.0}, 3, (32, 24))
    assert row.measured == "skipped (onnxruntime not installed)" and row.met is None
    row = _export_row(8.0, None, {"torch": 3.0, "onnxruntime": 1.0}, 100, (224, 168))
    assert row.reference == "repaid after 400 images at 224x168"


def test_sections_do_not_import_each_other():
    """One module per section; shared helpers only in common.py (no import cycle between sections)."""
    sections = {"features", "training", "search", "maps", "dashboard", "explore"}
    for path in BENCH.glob("*.py"):
        tree = ast.parse(path.read_text())
        siblings = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}
        if path.stem in sections:
            assert siblings <= {"common"}, f"{path.name} imports {sorted(siblings)}"


def test_python_m_entry_point(monkeypatch, capsys):
    """``python -m xmodal.bench --help`` runs the package's ``__main__`` (here, in this process: a new one would
    spend its time importing PyTorch)."""
    monkeypatch.setattr(sys, "argv", ["python -m xmodal.bench", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("xmodal.bench", run_name="__main__", alter_sys=True)
    out = capsys.readouterr().out
    assert done.value.code == 0 and "--runtime" in out and "--sections" in out
