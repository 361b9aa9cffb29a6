"""Why did it match: word importance and occlusion maps are exact on hand-made models, agree with the gallery's
own scores for every registered model, point at colour and garment on a demo run that reads colour, and show
up on the Search page (AppTest) and under Compare's disagreement rows, catalogue text escaped."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from streamlit.testing.v1 import AppTest
from torch import nn

from xmodal.retrieval.explain import GRID, explain, explain_pair, occluded, overlay, word_spans
from xmodal.models import ModelConfig, create_model, list_models
from xmodal.text.vocabulary import Vocab, tokenize

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 120


class CellReader(nn.Module):
    """A model that sees only one grid cell of the photo (channel 0) and only one word of the text."""

    def __init__(self, size: tuple[int, int], cell: tuple[int, int], word: int):
        super().__init__()
        self.cfg = ModelConfig(backbone="efficientnet", image_size=size, finetune=True)
        self.cell, self.word = cell, word
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        (h, w), (r, c) = self.cfg.image_size, self.cell
        ys = np.linspace(0, h, GRID[0] + 1).round().astype(int)
        xs = np.linspace(0, w, GRID[1] + 1).round().astype(int)
        v = pixels[:, 0, ys[r]:ys[r + 1], xs[c]:xs[c + 1]].mean((1, 2))  # [B]
        return F.normalize(torch.stack([v, torch.ones_like(v)], 1), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        n = (tokens == self.word).float().sum(1)  # [B]
        return F.normalize(torch.stack([n, 0.5 * torch.ones_like(n)], 1), dim=-1)


def _bright_cell_photo(size: tuple[int, int], cell: tuple[int, int]) -> Image.Image:
    """A dark photo (model input size) whose one grid cell is bright red."""
    h, w = size
    img = Image.new("RGB", (w, h), (20, 20, 20))
    ys = np.linspace(0, h, GRID[0] + 1).round().astype(int)
    xs = np.linspace(0, w, GRID[1] + 1).round().astype(int)
    r, c = cell
    ImageDraw.Draw(img).rectangle([xs[c], ys[r], xs[c + 1] - 1, ys[r + 1] - 1], fill=(255, 0, 0))
    return img


def test_occluded_paints_each_cell_once_row_major():
    pixels = torch.randn(3, 21, 15)
    batch = occluded(pixels, (7, 5), fill="grey")
    assert batch.shape == (36, 3, 21, 15) and torch.equal(batch[0], pixels)
    for k in range(35):
        changed = (batch[1 + k] != pixels).any(0)  # [H, W]
        r, c = divmod(k, 5)
        assert changed[3 * r:3 * r + 3, 3 * c:3 * c + 3].all() and changed.sum() == 9, k
    mean = occluded(pixels, (7, 5), fill="mean")[1]
    assert torch.allclose(mean[:, 0, 0], pixels.mean((1, 2)))
    with pytest.raises(ValueError, match="unknown fill"):
        occluded(pixels, fill="white")


@pytest.mark.parametrize("cell", [(0, 0), (2, 3), (6, 4)])
def test_region_and_word_importance_are_exact_on_a_model_that_reads_one_cell_and_one_word(cell):
    vocab = Vocab(["roadster", "men", "red", "white", "shirt"])
    size = (70, 50)
    model = CellReader(size, cell, vocab.stoi["red"])
    text = "Roadster Men RED & White <b>Shirt</b>"
    expl = explain_pair(model, vocab, text, _bright_cell_photo(size, cell))
    assert expl.grid == GRID
    assert np.unravel_index(np.argmax(expl.regions), GRID) == cell  # rows are rows, columns are columns
    others = np.delete(expl.regions.ravel(), cell[0] * GRID[1] + cell[1])
    assert expl.regions[cell] > 0.05 and np.abs(others).max() < 1e-6
    assert expl.words == ["roadster", "men", "red", "white", "b", "shirt", "b"]
    assert expl.word_scores[2] > 0.05 and np.abs(np.delete(expl.word_scores, 2)).max() < 1e-6
    s, e = expl.spans[2]
    assert expl.display_text[s:e] == "RED"  # the span points at the word as written
    from xmodal.image.backbones import image_transform
    pixels = image_transform("efficientnet", size)(_bright_cell_photo(size, cell))[None]
    assert expl.score == pytest.approx(float(model.encode_text(vocab.encode([text])) @ model.encode_image(pixels).T))
    assert overlay(expl).size == (2 * size[1], 2 * size[0])


def test_word_spans_follow_the_tokeniser_and_survive_lower_casing_that_changes_length():
    shown, spans = word_spans("Navy-Blue T-Shirt, 2 pcs")
    assert [shown[s:e] for s, e in spans] == ["Navy", "Blue", "T", "Shirt", "2", "pcs"]
    shown, spans = word_spans("İstanbul Crème Shirt")  # "İ" folds to "i", "è" to "e": the text is shown as it is
    assert shown == "İstanbul Crème Shirt" and [shown[s:e] for s, e in spans] == ["İstanbul", "Crème", "Shirt"]
    assert tokenize(shown) == ["istanbul", "creme", "shirt"]
    assert len(word_spans("a b c d", max_len=2)[1]) == 2


@pytest.mark.parametrize("name", list_models())
def test_every_model_is_explained_on_pixels(name):
    """Frozen-feature models too: the explanation runs their backbone on the photo, and its score is the
    score of the model's own pixel path."""
    torch.manual_seed(0)
    vocab = Vocab(["red", "striped", "shirt", "kurta"])
    model = create_model(name, vocab_size=len(vocab), image_size=(64, 48)).eval()
    image = _bright_cell_photo((64, 48), (3, 2))
    expl = explain_pair(model, vocab, "red striped shirt", image)
    from xmodal.models.embed import embed_pil, embed_texts
    want = float(embed_texts(model, vocab, ["red striped shirt"], torch.device("cpu"))[0] @
                 embed_pil(model, [image], torch.device("cpu"))[0])
    assert expl.score == pytest.approx(want, abs=1e-4)
    assert expl.regions.shape == GRID and np.isfinite(expl.regions).all() and np.abs(expl.regions).max() > 0
    assert expl.word_scores.shape == (3,) and np.isfinite(expl.word_scores).all()


def test_explain_a_trained_run_matches_its_gallery_scores(trained_run):
    from xmodal.retrieval.run import load_run
    run = load_run(trained_run)
    for i in (0, 7):
        expl = explain(run, run.catalogue.captions[i], i)
        assert expl.score == pytest.approx(float(run.text_embeds[i] @ run.image_embeds[i]), abs=2e-3)
        assert expl.photo.shape == (*run.model.cfg.image_size, 3)
    from_path = explain(run, run.catalogue.captions[0], run.catalogue.image_path(0))
    assert np.allclose(from_path.regions, explain(run, run.catalogue.captions[0], 0).regions, atol=1e-5)


def test_bench_explain_times_one_pair(trained_run, monkeypatch):
    from xmodal.retrieval.explain import bench_explain
    monkeypatch.setenv("XMODAL_RUNTIME", "torch")  # no ONNX export for the test (bench_explain exports one)
    out = bench_explain(trained_run, repeats=1)
    assert 0 < out["seconds"] <= out["median_s"] < 60
    assert out["copies"] == 1 + GRID[0] * GRID[1] and out["model"] == "cmpm-efficientnet" and out["runtime"] == "torch"


# ------------------------------------------------------- the sanity check: a demo run that reads colour

def _garment_cells(garment: str, grid: tuple[int, int], share: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """(garment cells, backdrop cells) ``[rows, cols]`` booleans for a demo photo of ``garment``.

    ``xmodal.data.demo.render_item`` draws the garment's polygon (``GARMENTS``) scaled about the centre by
    0.85-1.05 and shifted by up to 5% of the width and 4% of the height: a pixel inside the polygon under every
    such placement is surely garment, one outside all of them surely backdrop. A cell counts when at least
    ``share`` of it is sure (the smallest garments: their surest cells).
    """
    from xmodal.data.demo import GARMENTS, HEIGHT, WIDTH
    poly, _ = GARMENTS[garment]
    inside, anywhere = np.ones((HEIGHT, WIDTH), bool), np.zeros((HEIGHT, WIDTH), bool)
    for scale in (0.85, 0.95, 1.05):
        for ox in (-0.05, 0.0, 0.05):
            for oy in (-0.04, 0.0, 0.04):
                mask = Image.new("L", (WIDTH, HEIGHT), 0)
                pts = [((0.5 + (x - 0.5) * scale + ox) * WIDTH, (0.5 + (y - 0.5) * scale + oy) * HEIGHT)
                       for x, y in poly]
                ImageDraw.Draw(mask).polygon(pts, fill=1)
                m = np.asarray(mask, bool)
                inside &= m
                anywhere |= m
    rows, cols = grid
    ys = np.linspace(0, HEIGHT, rows + 1).round().astype(int)
    xs = np.linspace(0, WIDTH, cols + 1).round().astype(int)

    def shares(mask):
        return np.array([[mask[ys[r]:ys[r + 1], xs[c]:xs[c + 1]].mean() for c in range(cols)] for r in range(rows)])
    garment_share, backdrop_share = shares(inside), shares(~anywhere)
    return garment_share >= min(share, garment_share.max()), backdrop_share >= share


def _phrase(words: list[str], phrase: str) -> list[int]:
    """Positions of ``phrase``'s words in ``words`` (its first occurrence)."""
    p = tokenize(phrase)
    return next((list(range(i, i + len(p))) for i in range(len(words) - len(p) + 1) if words[i:i + len(p)] == p), [])


@pytest.fixture(scope="module")
def colour_run(tmp_path_factory) -> Path:
    """infonce-efficientnet on 500 demo items at 64x48 with GloVe vectors: at this size the brand's logo is a
    few pixels while the garment's colour fills the photo, and (unlike word2vec vectors learnt from the titles,
    where every colour word has the same neighbours) GloVe tells the colours apart, so this run reads colour.
    Its BiLSTM is 256 wide, not 512: 10 s of training instead of 17 on one core, and the shares below hold as well
    (at 128 the garment/backdrop margin narrowed, at 64 colour beat brand in only 0.68 of the pairs). Trained by
    the CLI's ``main`` in this process (a subprocess would import PyTorch and timm again), on one thread: the
    arithmetic the shares below were measured under."""
    from xmodal.data import generate_demo
    from xmodal.training.cli import main
    folder = tmp_path_factory.mktemp("colour")
    cat = generate_demo(folder / "cat", n=500, seed=5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["--model", "infonce-efficientnet", "--data", str(cat), "--epochs", "12", "--batch-size", "32",
                     "--word-vectors", "glove", "--set", "lstm_dim=256", "--image-size", "64", "48",
                     "--out", str(folder / "runs"), "--run-id", "colour"]) == 0
    finally:
        torch.set_num_threads(threads)
    return folder / "runs" / "colour"


PAIRS = 50  # correct hits explained by the test below


@pytest.mark.slow
def test_explanations_point_at_colour_words_and_the_garment(colour_run):
    """On correct hits, the colour words carry more of the score than the brand words, and greying out the
    garment lowers it more than greying out the backdrop. The run is first shown to read colour better than
    brand by its behaviour alone (a search for "<colour> <garment>" finds that colour further above its base
    rate than a search for "<brand> <garment>" finds that brand), so the explanations must agree with something
    measured without them; the exact cell and word positions are checked on hand-made models above."""
    from xmodal.data.demo import BRANDS, COLOURS
    from xmodal.retrieval.run import load_run
    run = load_run(colour_run)
    cat = run.catalogue
    attrs = cat.attributes

    def lift(query: str, key: str, value: str, garment: str) -> float:
        """Precision@10 of the query's attribute value among that garment's results, over its base rate."""
        hits = [h for h in run.search_text(query, 10) if attrs["master_category"][h.index] == garment]
        share = np.mean([v == value for v, g in zip(attrs[key], attrs["master_category"]) if g == garment])
        return np.mean([attrs[key][h.index] == value for h in hits]) / share if hits and share else np.nan
    garments = ("T-Shirt", "Kurta", "Trousers", "Shirt", "Jacket")
    by_colour = np.nanmean([lift(f"{c} {g}", "colour", c, g) for g in garments for c in COLOURS])
    by_brand = np.nanmean([lift(f"{b} {g}", "brand", b, g) for g in garments for b in BRANDS])
    assert by_colour > by_brand, (by_colour, by_brand)

    top = (run.text_embeds @ run.image_embeds.T).argmax(1).numpy()
    correct = np.flatnonzero(top == np.arange(len(cat)))
    assert len(correct) >= PAIRS, len(correct)
    colour_w, brand_w, garment_r, backdrop_r = [], [], [], []
    for i in np.random.default_rng(0).choice(correct, PAIRS, replace=False):
        expl = explain(run, cat.captions[i], int(i))
        colour, brand = _phrase(expl.words, attrs["colour"][i]), _phrase(expl.words, attrs["brand"][i])
        assert colour and brand, (expl.words, attrs["colour"][i], attrs["brand"][i])
        colour_w.append(expl.word_scores[colour].sum())
        brand_w.append(expl.word_scores[brand].sum())
        garment, backdrop = _garment_cells(attrs["master_category"][i], expl.grid)
        garment_r.append(expl.regions[garment].mean())
        backdrop_r.append(expl.regions[backdrop].mean())
    colour_w, brand_w, garment_r, backdrop_r = map(np.array, (colour_w, brand_w, garment_r, backdrop_r))
    # Over all ~345 correct hits of this run: colour beats brand in 0.80 (fp32) / 0.80 (bf16) of the pairs, means
    # 0.082 / 0.017; garment beats backdrop in 0.85 / 0.84, means 0.067 / 0.017 (the backdrop shows the gender,
    # which the titles name, so it matters too). The 50 pairs drawn here (rechecked when 100 became 50, each
    # pair's occlusion map being most of the test's time): 0.82 and 0.84 (fp32), 0.80 and 0.78 (bf16). At 50 pairs
    # a share's standard error is about 0.057, so 0.60 lies 3.5 standard errors below 0.80; a model indifferent to
    # colour (0.5) clears 0.60 one time in ten, and must then also pass the means. 30 pairs drew 0.60 for the
    # garment under fp32 and 0.87 under bf16 from the recipe with a 512-wide BiLSTM (0.84 and 0.80 over all its hits).
    for name, a, b in (("colour/brand words", colour_w, brand_w), ("garment/backdrop cells", garment_r, backdrop_r)):
        summary = f"{name}: {np.mean(a > b):.2f} of {PAIRS} pairs, means {a.mean():.4f} / {b.mean():.4f}"
        assert np.mean(a > b) >= 0.60 and a.mean() > 1.5 * b.mean() and a.mean() > b.mean() + 0.02, summary


# ------------------------------------------------------------------------------------ the dashboard

def _shown(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value).replace("\u2060", "")


def _no_markup(values: list[str]) -> None:
    for value in values:
        assert not re.search(r"(?<!\\)<|(?<!\\)!(?<!\\)\[|(?<!\\)\]\(", value), value


def test_highlighted_words_are_escaped_text_in_our_colours():
    from xmodal.dashboard.explain_view import highlighted_words
    from xmodal.retrieval.explain import Explanation
    text = "Red <img src=x onerror=alert(1)> [link](http://203.0.113.5/) **Shirt** :red[x] $y$"
    shown, spans = word_spans(text)
    scores = np.zeros(len(spans))
    scores[0], scores[-2] = 1.0, -0.4  # "red" pushes, "y"... the second last word pulls
    expl = Explanation(text, 0.5, tokenize(text), spans, shown, scores, np.zeros(GRID), np.zeros((4, 3, 3), np.uint8),
                       0.0)
    out = highlighted_words(expl)
    _no_markup([out])
    assert out.startswith(":orange-background[**Red**]") and ":blue-background[" in out
    plain = re.sub(r":(orange|blue)-background\[(?:\*\*)?(.*?)(?:\*\*)?\]", r"\2", out)
    assert _shown(plain) == text  # every character of the caption, literally


@pytest.fixture
def checkpoints(trained_run, tmp_path, monkeypatch) -> Path:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / trained_run.name).symlink_to(trained_run, target_is_directory=True)
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(ckpt))
    return ckpt


def _search_page(catalogue: Path) -> AppTest:
    at = AppTest.from_file(str(REPO / "dashboard.py"), default_timeout=TIMEOUT)
    at.session_state["cat_source"] = "folder"
    at.session_state["cat_folder"] = str(catalogue)
    at.run()
    at.switch_page("pages/search.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_search_page_explains_a_hit_and_what_ranked_above_the_true_match(checkpoints, tiny_catalogue):
    at = _search_page(tiny_catalogue)
    at.text_input(key="search_query").input("red striped shirt").run()
    why = at.selectbox(key="search_why_text_0")
    assert why.value is None and len(why.options) == 9  # nothing computed until a result is picked
    assert not any("largest word effects" in c.value for c in at.caption)
    why.set_value(1).run()
    assert not at.exception, [e.value for e in at.exception]
    # the words are tinted on the shared absolute scale only when their effect is big enough (a tiny run's are
    # not): the listing of signed word effects below is what every explanation shows
    assert any(c.value.startswith("score ") and "largest word effects" in c.value for c in at.caption)
    _no_markup([m.value for m in at.markdown] + [c.value for c in at.caption])

    at.radio(key="search_text_src").set_value("A catalogue title (test split)").run()
    options = at.selectbox(key="search_why_text_0").options
    rank = next(m.value for m in at.metric if m.label == "True match landed at rank")
    if int(rank) > 1:  # the true match and what ranked above it are offered too
        assert any(o.startswith("the true match") for o in options)
        assert any(o.startswith("ranked above the true match") for o in options)
    at.radio(key="search_image_src").set_value("A catalogue product (test split)").run()
    at.selectbox(key="search_why_image_0").set_value(0).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("largest word effects" in c.value for c in at.caption)


def _compare_script(run_dir: str) -> None:
    import streamlit as st  # noqa: F401

    from xmodal.dashboard.explain_view import disagreement_why
    from xmodal.retrieval.run import load_run
    cat = load_run(run_dir).catalogue
    data = {"item_ids": cat.item_ids[:8], "captions": cat.captions[:8],
            "images": [str(cat.image_path(i)) for i in range(8)]}
    disagreement_why({run_dir: "A: the tiny run"}, data, [2, 5], "text_to_image")


def test_compare_disagreement_rows_can_be_explained(trained_run):
    at = AppTest.from_function(_compare_script, args=(str(trained_run),), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    options = at.selectbox(key="cmp_why").options
    assert len(options) == 3 and options[1].startswith("demo00002 · ") and options[2].startswith("demo00005 · ")
    at.selectbox(key="cmp_why").set_value(5).run()
    assert not at.exception, [e.value for e in at.exception]
    assert sum("largest word effects" in c.value for c in at.caption) in (1, 2)
    assert any(c.value.startswith("the query and its true match") for c in at.caption)
