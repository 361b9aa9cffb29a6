"""Catalogue text is text (xmodal.dashboard.escape): Markdown escapes every punctuation character and breaks
bare links, Plotly text escapes the HTML Plotly reads, and every figure escapes run names, captions and attribute
values."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from xmodal.dashboard import analysis, plots
from xmodal.dashboard.maps import colours, figure as mapplot
from xmodal.dashboard.escape import md
from xmodal.dashboard.escape import plotly as plotly_text


HOSTILE = ['<script>window.__xss=1</script>', '<img src=x onerror="window.__xss=1">',
           '<iframe srcdoc="<script>parent.__xss=1</script>">', '![x](http://203.0.113.5/pixel.png)',
           '[click](javascript:window.__xss=1)', '<a href="http://203.0.113.5/">', '<svg onload=window.__xss=1>',
           'see www.example.com or a@b.co', '**bold** _it_ `code` # h1 > quote | a | :red[x] :smile: $x^2$ &amp;',
           'line one\n# heading\n\n- item\r\n    code', '\\*not bold\\*']
PUNCTUATION = set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def _unescape(text: str) -> str:
    """What a CommonMark renderer shows for backslash-escaped text (and the invisible word joiner dropped)."""
    return re.sub(r"\\(.)", r"\1", text).replace("\u2060", "")


@pytest.mark.parametrize("text", HOSTILE)
def test_md_escapes_every_markdown_character(text):
    out = md(text)
    assert "\n" not in out and "\r" not in out  # one line: no headings, lists, quotes or code blocks
    assert _unescape(out) == " ".join(text.split())  # it shows exactly the text
    i = 0
    while i < len(out):  # every punctuation character is escaped, so none can open markup
        if out[i] == "\\":
            assert out[i + 1] in PUNCTUATION
            i += 2
            continue
        assert out[i] not in PUNCTUATION, (out, i)
        i += 1
    visible = out.replace("\\", "")  # what GitHub-flavoured Markdown scans for bare links after unescaping
    assert not re.search(r"(?i)[a-z]://|\bwww\.|[-.\w+]@[-\w]", visible), visible


def test_md_breaks_bare_links_and_keeps_plain_words():
    assert md("Roadster Men Navy Blue Striped Shirt") == "Roadster Men Navy Blue Striped Shirt"
    assert md("visit http://x.io or WWW.shop.in") == "visit http\u2060\\:\\/\\/x\\.io or WWW\u2060\\.shop\\.in"
    assert md(42) == "42" and md(Path("a b/c")) == "a b\\/c"


def test_plotly_text_escapes_the_html_plotly_reads():
    assert plotly_text('<a href="http://x/">a & b</a>') == '&lt;a href="http://x/"&gt;a &amp; b&lt;/a&gt;'
    assert plotly_text("&lt;b&gt;") == "&amp;lt;b&amp;gt;"  # an entity in the text shows as typed


def _figure_strings(fig) -> list[str]:
    """Every string Plotly would render as rich text: trace names, hover text, categories, titles."""
    out = [a.text for a in fig.layout.annotations or []]
    for t in fig.data:
        out.append(t.name or "")
        for attr in ("text", "x", "hovertext"):
            values = getattr(t, attr, None)
            if values is not None and not isinstance(values, (int, float)):
                out.extend(v for v in np.asarray(values, dtype=object).ravel() if isinstance(v, str))
    return out


def test_figures_escape_run_names_captions_and_attribute_values():
    bad = HOSTILE[1]
    step = {"kind": "step", "epoch": 1, "step": 1, "loss": 1.0, bad: 0.5}
    epoch = {"kind": "epoch", "epoch": 1, "pos_sim": 0.5, "neg_sim": 0.1, "val/text_to_image/R@1": 10.0}
    metrics = {bad: [step, epoch]}
    table = pd.DataFrame([{"run": bad, **{c: 1.0 for c in (f"{analysis.SHORT[d]} {m}" for d in analysis.DIRECTIONS
                                                           for m in ("R@1", "R@5", "R@10", "median rank"))}}])
    slice_rows = pd.DataFrame([{"attribute": "colour", "value": bad, "n": 3, "small": True, "direction": d, "R@1": 1.0,
                                "R@1 lo": 0.0, "R@1 hi": 5.0, "R@5": 2.0, "R@10": 3.0, "median_rank": 4.0, "run": bad}
                               for d in analysis.DIRECTIONS])
    xy = np.zeros((4, 2), dtype=np.float32)
    figures = [plots.loss_figure(metrics), plots.validation_figure(metrics), plots.similarity_figure(metrics),
               plots.metric_bars(table), plots.slice_figure(slice_rows),
               mapplot.map_figure(xy, [bad, bad], colouring=colours.colouring([bad, "x"]), highlight=[0], gl=False)]
    for fig in figures:
        strings = _figure_strings(fig)
        assert any("&lt;img" in s for s in strings), strings
        assert not any("<" in s for s in strings), strings
