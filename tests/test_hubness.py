"""CSLS hubness reduction: offsets against a brute-force reference, the hub it demotes, and the same ranking
through the metrics core (evaluate --hubness csls) and through Run's search."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xmodal.evaluation import metrics
from xmodal.evaluation.scoring import with_offsets
from xmodal.retrieval.hubness import CSLS_WEIGHT, csls_offsets, csls_topk


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_offsets_are_the_mean_of_the_k_nearest_bank_similarities():
    rng = np.random.default_rng(0)
    bank, gallery = _unit(rng.normal(size=(50, 6))), _unit(rng.normal(size=(30, 6)))
    want = np.sort(gallery @ bank.T, axis=1)[:, -7:].mean(1)
    assert np.allclose(csls_offsets(bank, gallery, k=7).numpy(), want, atol=1e-6)
    assert np.allclose(csls_offsets(bank, gallery, k=500).numpy(), (gallery @ bank.T).mean(1), atol=1e-6)
    with pytest.raises(ValueError):
        csls_offsets(bank[:, :5], gallery)


def test_a_hub_loses_its_grip_on_the_top_ranks():
    rng = np.random.default_rng(1)
    centre = _unit(rng.normal(size=(1, 16)))
    queries = _unit(rng.normal(size=(200, 16)) + 3 * centre)  # queries crowd around one direction
    gallery = _unit(rng.normal(size=(100, 16)) + 2 * centre)
    gallery[0] = centre[0]  # at the crowd's centre: near every query, a hub
    plain = (queries @ gallery.T).argmax(1)
    _, idx = csls_topk(queries, gallery, csls_offsets(queries, gallery, k=10), k=1)
    before, after = (plain == 0).mean(), (idx[:, 0].numpy() == 0).mean()  # share of queries the hub tops
    assert before > 0.1 and after < before / 2, (before, after)


def test_the_metrics_core_ranks_corrected_scores_through_augmented_embeddings():
    rng = np.random.default_rng(2)
    img, txt = _unit(rng.normal(size=(40, 8))), _unit(rng.normal(size=(40, 8)))
    oi, ot = rng.random(40).astype(np.float32), rng.random(40).astype(np.float32)
    img2, txt2 = with_offsets(img, txt, oi, ot, CSLS_WEIGHT)
    ranks = metrics.query_ranks(img2, txt2)
    sim = txt @ img.T
    eye = np.eye(40, dtype=bool)
    t2i = metrics.first_match_ranks(sim - CSLS_WEIGHT * oi[None, :], eye)
    i2t = metrics.first_match_ranks(sim.T - CSLS_WEIGHT * ot[None, :], eye)
    assert (ranks["text_to_image"] == t2i).all() and (ranks["image_to_text"] == i2t).all()


def test_evaluate_and_search_with_csls(trained_run, capsys):
    from xmodal import load_run
    from xmodal.evaluation.evaluate import main as evaluate_cli
    assert evaluate_cli(["--run", str(trained_run), "--split", "val", "--hubness", "csls"]) == 0
    assert "ranked with CSLS hubness reduction" in capsys.readouterr().out
    run = load_run(trained_run)
    run.hubness = "csls"
    hits = run.search_text(run.catalogue.captions[0], k=5)
    q = run.embed_text(run.catalogue.captions[0])
    scores = run.image_embeds @ q - CSLS_WEIGHT * csls_offsets(run.text_embeds, run.image_embeds)
    assert [h.index for h in hits] == torch.topk(scores, 5).indices.tolist()
    run.hubness = "bogus"
    with pytest.raises(ValueError, match="hubness"):
        run.search_text(run.catalogue.captions[0], k=5)


def test_hubness_stats_against_a_hand_made_distribution():
    from xmodal.retrieval.hubness import hubness_stats, k_occurrence
    eye = np.eye(4, dtype=np.float32)
    queries = eye[[0, 0, 0, 1]]  # three queries point at item 0
    counts = k_occurrence(queries, eye, k=1)
    assert counts.tolist() == [3, 1, 0, 0]
    stats = hubness_stats(counts, k=1, top=2)
    c = counts.astype(float)
    assert stats["skewness"] == pytest.approx(((c - c.mean()) ** 3).mean() / c.std() ** 3)
    assert stats["anti_hub_share"] == 50.0 and stats["max"] == 3 and stats["max_share"] == 75.0
    assert stats["top"] == [[0, 3], [1, 1]]


def test_csls_offsets_are_kept_in_the_run_folder(trained_run, tmp_path, monkeypatch, caplog):
    """A run's CSLS offsets are computed once and kept beside its embeddings: a fresh load reads them (no
    recomputation), and a damaged file is computed again."""
    import shutil

    import xmodal.retrieval.run as run_module
    from xmodal import load_run
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    first = load_run(run_dir).csls_offsets("images")
    assert torch.allclose(first, csls_offsets(load_run(run_dir).text_embeds, load_run(run_dir).image_embeds))
    saved = list(run_dir.glob("gallery_csls*_images_*.safetensors"))
    assert len(saved) == 1
    monkeypatch.setattr(run_module, "csls_offsets", lambda *a, **k: pytest.fail("recomputed"))
    assert torch.equal(load_run(run_dir).csls_offsets("images"), first)
    saved[0].write_bytes(saved[0].read_bytes()[:-7])  # cut short
    monkeypatch.undo()
    assert torch.equal(load_run(run_dir).csls_offsets("images"), first)
    assert "is damaged" in caplog.text
