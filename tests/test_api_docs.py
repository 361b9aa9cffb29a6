"""docs/api.md is the public API's reference, rendered from the docstrings; this test keeps it true.

After changing a documented signature or docstring: ``python tests/test_api_docs.py > docs/api.md``.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (module, names) in reading order; a class lists its public methods and properties under it
API: list[tuple[str, list[str]]] = [
    ("xmodal", ["load_run", "create_model", "list_models", "register_model"]),
    ("xmodal.retrieval.run", ["Run", "Hit", "SearchResult", "ComposedResult", "RunError"]),
    ("xmodal.retrieval.gallery", ["Gallery", "GalleryConfig", "exact_topk"]),
    ("xmodal.retrieval.compose", ["search", "refine"]),
    ("xmodal.retrieval.query_vectors", ["compose_vectors", "rocchio"]),
    ("xmodal.retrieval.explain", ["explain", "explain_pair", "Explanation", "word_importance", "region_importance"]),
    ("xmodal.retrieval.export", ["embeddings_table", "write_parquet", "write_projector"]),
    ("xmodal.evaluation.metrics", ["query_ranks", "ranks_by_ground_truth", "summarise", "bootstrap_intervals",
                                   "paired_difference", "title_groups"]),
]


def _doc(obj) -> str:
    return inspect.cleandoc(obj.__doc__ or "(no docstring)")


def _signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def _members(cls) -> list[tuple[str, object]]:
    out = []
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property) or inspect.isfunction(value):
            out.append((name, value))
        elif isinstance(value, (classmethod, staticmethod)):
            out.append((name, value.__func__))
    return out


def render() -> str:
    """The text of docs/api.md."""
    lines = ["# Python API", "",
             "Rendered from the docstrings by `python tests/test_api_docs.py > docs/api.md`; "
             "`tests/test_api_docs.py` fails when this page and the code disagree.", ""]
    for module, names in API:
        mod = importlib.import_module(module)
        lines += [f"## `{module}`", ""]
        for name in names:
            obj = getattr(mod, name)
            kind = "class " if inspect.isclass(obj) else ""
            lines += [f"### {kind}`{module}.{name}{_signature(obj)}`", "", _doc(obj), ""]
            if inspect.isclass(obj):
                for member, value in _members(obj):
                    if isinstance(value, property):
                        lines += [f"#### `{name}.{member}` (property)", "", _doc(value), ""]
                    else:
                        lines += [f"#### `{name}.{member}{_signature(value)}`", "", _doc(value), ""]
    return "\n".join(lines).rstrip() + "\n"


def test_api_page_matches_the_code():
    page = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    assert page == render(), "docs/api.md is stale: python tests/test_api_docs.py > docs/api.md"


def test_every_documented_name_imports_from_its_path():
    for module, names in API:
        mod = importlib.import_module(module)
        missing = [n for n in names if not hasattr(mod, n)]
        assert not missing, f"{module} lacks {missing}"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.stdout.write(render())
