"""What the dashboard's AppTest modules share: the app opened on a catalogue folder (``_app``), the checks that a
script raised nothing (``_ok``) and that no Markdown element holds markup (``_no_markup``), what the browser shows
of escaped Markdown (``_shown``), the photo captions of a result grid, and the checkpoints folders the pages are
opened on are conftest's fixtures (``with_run``, ``empty``, ``eight``). Used by tests/test_dashboard_*.py and
the other AppTest modules (Search, views as URLs, trajectories)."""
from __future__ import annotations

import json
import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[1]
PAGES = ["pages/training.py", "pages/compare.py", "pages/embeddings.py", "pages/search.py"]
TIMEOUT = 120  # seconds per script run: the CPU may be shared


def _app(catalogue: Path) -> AppTest:
    at = AppTest.from_file(str(REPO / "dashboard.py"), default_timeout=TIMEOUT)
    at.session_state["cat_source"] = "folder"
    at.session_state["cat_folder"] = str(catalogue)
    return at.run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def _shown(value: str) -> str:
    """What the browser shows for escaped Markdown: backslash escapes undone, invisible word joiners dropped."""
    return re.sub(r"\\(.)", r"\1", value).replace("\u2060", "")


def _hit_captions(at: AppTest) -> list[str]:
    """The caption under each photo of the page's image rows (the Search page's result grid)."""
    return [img.caption for e in at.get("image") for img in e.proto.imgs]


def _markdown_values(at: AppTest) -> list[str]:
    """The body of every element Streamlit renders as Markdown, photo captions included."""
    return [e.value for kind in ("markdown", "caption", "error", "warning", "info", "success") for e in at.get(kind)
            ] + _hit_captions(at)


def _no_markup(at: AppTest) -> None:
    """No Markdown element holds an unescaped ``<`` (raw HTML) or an image or link opener."""
    for value in _markdown_values(at):
        assert not re.search(r"(?<!\\)<|(?<!\\)!(?<!\\)\[|(?<!\\)\]\(", value), value


def _keys(runs: dict) -> tuple[str, str]:
    """The catalogue keys of the tiny demo's runs and of the second catalogue's."""
    from xmodal.dashboard.catalogues import catalogue_id
    return tuple(catalogue_id(json.loads((runs[k][0] / "config.json").read_text())).key for k in ("demo", "second"))


def _legend(at: AppTest, index: int = 0) -> list[str]:
    import json as _json
    fig = _json.loads(at.get("plotly_chart")[index].proto.spec)
    return [t.get("name") for t in fig["data"] if t.get("showlegend") is not False and t.get("name")]
