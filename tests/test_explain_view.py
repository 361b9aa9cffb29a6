"""Explanations a user can compare (issue 21 §4), drawn with AppTest: one absolute colour scale with its bar
for every model; every word's signed effect against a stated baseline; the photo beside and under its heat
map; a sanity check that says when the model credits a word the product contradicts; scores placed among the
catalogue so that two models' can be compared."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120


def _shown(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value).replace("\u2060", "")


def _two_models_script() -> None:
    import numpy as np
    import streamlit as st

    from xmodal.dashboard.explain_view import show_explanation
    from xmodal.retrieval.explain import GRID, Explanation, word_spans
    text = "navy striped shirt cotton"
    shown, spans = word_spans(text)
    photo = np.tile(np.linspace(0, 255, 48, dtype=np.uint8)[None, :, None], (64, 1, 3))
    for col, (name, words, cell) in zip(st.columns(2), (
            ("siamese", [0.002, 0.007, 0.011, -0.001], 0.007),  # a model whose scores barely move
            ("corrnet", [0.006, 0.091, 0.228, -0.03], 0.2))):
        regions = np.zeros(GRID, np.float32)
        regions[3, 2] = cell
        with col:
            st.markdown(f"**{name}**")
            show_explanation(Explanation(text, 0.9, text.split(), spans, shown, np.array(words), regions, photo, 0.1))


def test_every_model_is_drawn_on_one_scale_with_its_colour_bar():
    """siamese's +0.011 was drawn as strongly as corrnet's +0.228 (each scaled to its own largest effect)."""
    at = AppTest.from_function(_two_models_script, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    words = [m.value for m in at.markdown if "shirt" in m.value]
    assert len(words) == 2
    small, large = words
    assert "-background[" not in small, small  # effects of at most 0.011: plain text on the shared scale
    assert ":orange-background[**shirt**]" in large and ":orange-background[striped]" in large, large
    bars = [c.value for c in at.caption if "score change" in c.value]
    assert len(bars) == 2 and all("0.20" in b for b in bars), bars  # the same bar under each model
    assert sum("One scale for every model" in c.value for c in at.caption) == 2


def test_each_word_has_its_signed_effect_against_a_stated_baseline():
    at = AppTest.from_function(_two_models_script, default_timeout=TIMEOUT).run()
    effects = [_shown(c.value) for c in at.caption if "read as unknown" in c.value and "'navy'" in c.value]
    assert len(effects) == 2, [c.value for c in at.caption]
    corrnet = effects[1]
    for word, value in (("navy", "+0.006"), ("striped", "+0.091"), ("shirt", "+0.228"), ("cotton", "-0.030")):
        assert f"'{word}' {value}" in corrnet, corrnet  # every word, not only the three largest, with its sign


def test_the_photo_stays_visible_beside_and_under_its_heat_map():
    from xmodal.retrieval.explain import GRID, SCALE, Explanation, overlay, word_spans
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)  # texture everywhere
    regions = np.zeros(GRID, np.float32)
    regions[3, 2] = 5 * SCALE  # as strong as heat gets
    shown, spans = word_spans("red shirt")
    out = np.asarray(overlay(Explanation("red shirt", 0.5, ["red", "shirt"], spans, shown, np.zeros(2), regions,
                                         photo, 0.0)).convert("L"), dtype=np.float32)
    grey = np.asarray(Image.fromarray(photo).convert("L").resize((100, 140), Image.BILINEAR), dtype=np.float32)
    cell = (slice(62, 76), slice(42, 58))  # inside the strongest cell (row 3 of 7, column 2 of 5), 2x size
    assert out[cell].std() >= 0.4 * grey[cell].std()  # the garment's detail still shows through the heat
    at = AppTest.from_function(_two_models_script, default_timeout=TIMEOUT).run()
    lists = [e.proto for e in at.get("image")]
    captions = [[i.caption for i in p.imgs] for p in lists]
    assert captions.count(["photo", "regions"]) == 2, captions  # the photo beside its heat map, per model


@pytest.fixture
def checkpoints(trained_run, tmp_path, monkeypatch) -> Path:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / trained_run.name).symlink_to(trained_run, target_is_directory=True)
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(ckpt))
    return ckpt


def _contradiction_script(run_dir: str) -> None:
    import numpy as np

    from xmodal.dashboard import explain_view, state
    from xmodal.retrieval.explain import explain
    run = state.run(run_dir)
    colours = run.catalogue.attributes["colour"]
    item = next(i for i, c in enumerate(colours) if c == "Red")
    other = next(c for c in colours if c not in ("Red",) and len(c.split()) == 1)
    expl = explain(run, f"{other.lower()} shirt", item)
    expl.word_scores = np.array([0.15, 0.05])  # the model credits the colour word most
    explain_view.show_explanation(expl, check=explain_view.sanity_check(run_dir, expl, item))


def test_an_explanation_that_contradicts_the_photo_says_the_model_does_not_read_the_word(trained_run):
    """Credit for a colour word on a product of another colour was shown as the reason for the match."""
    at = AppTest.from_function(_contradiction_script, args=(str(trained_run),), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    warning = " ".join(_shown(w.value) for w in at.warning)
    assert "does not read" in warning and "this product's colour is Red" in warning, warning
    assert re.search(r"it is right for \d+% \(always answering the most common colour: \d+%\)", warning), warning


def _search_page(catalogue: Path) -> AppTest:
    at = AppTest.from_file(str(REPO / "dashboard.py"), default_timeout=TIMEOUT)
    at.session_state["cat_source"] = "folder"
    at.session_state["cat_folder"] = str(catalogue)
    at.run()
    at.switch_page("pages/search.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_search_scores_are_placed_among_the_catalogue_and_checked(checkpoints, tiny_catalogue):
    """Each model's raw cosine (siamese: 0.998 for every hit) was shown as if two models' could be compared."""
    at = _search_page(tiny_catalogue)
    at.text_input(key="search_query").input("red striped shirt").run()
    assert not at.exception, [e.value for e in at.exception]
    line = next(_shown(c.value) for c in at.caption if "cannot be compared across models" in c.value)
    assert re.search(r"#1 [+-]\d+\.\d, #2 [+-]\d+\.\d", line) and "60 photos" in line, line
    at.selectbox(key="search_why_text_0").set_value(0).run()
    assert not at.exception, [e.value for e in at.exception]
    score = next(_shown(c.value) for c in at.caption if "largest word effects" in c.value)
    assert re.search(r"rank \d+ of the catalogue's 60 photos for this title, [+-]\d+\.\d standard deviations", score)
    assert any(c.value.startswith("Sanity check") for c in at.caption) or at.warning  # the check was made
