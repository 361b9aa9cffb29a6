"""The dashboard's side of ``xmodal.retrieval.explain`` and ``xmodal.retrieval.compose``: "why did it match?" for
Search hits and
Compare's disagreement rows, and the Search page's photo + words and "more like this / less like this" views.

Explanations are computed on demand (a result picked in a selectbox) and cached per pair with
``st.cache_data``, keyed on the run folder, the weights' modification time, the caption and the photo.
Catalogue text is escaped (``escape.md``) before it reaches Markdown; the only markup added is our own
constant colour directives around escaped words, and the heatmap is a PNG handed to Streamlit as bytes.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import streamlit as st

from ..data import normalise_caption
from . import state, ui
from .escape import md

if TYPE_CHECKING:
    from PIL import Image

    from ..retrieval.compose import ComposedResult
    from ..retrieval.explain import Explanation
    from ..retrieval.run import Hit, Run

_JOINER = "\u2060"  # as escape.md: keeps a word and a following "://", "." or "@" from becoming a link
LEGEND = ("Orange words and regions pushed the score up (the match leans on them), blue ones pulled it down; "
          "the stronger the colour, the larger the effect. Words: the score's drop when the word is read as "
          "unknown. Regions: the drop when that cell of the photo is greyed out.")


# ----------------------------------------------------------------------------------------- why did it match

def highlighted_words(expl: Explanation, strong: float = 0.5, weak: float = 0.15) -> str:
    """The caption as Markdown with each read word highlighted by its importance.

    Every piece of catalogue text goes through ``escape.md``; the only markup is ours: ``:orange-background``
    (pushes the score up) or ``:blue-background`` (pulls it down) around a word whose ``|importance|`` is at
    least ``weak`` of the largest, in bold from ``strong`` of it.
    """
    text, spans = expl.display_text, expl.spans
    if not spans:
        return md(text)
    top = float(np.abs(expl.word_scores).max(initial=0.0)) or 1.0
    out, last = [], 0
    for (s, e), value in zip(spans, expl.word_scores):
        out.append(_escape_keep_spaces(text[last:s]))
        word = md(text[s:e])
        level = float(value) / top
        if abs(level) >= weak:
            colour = "orange" if level > 0 else "blue"
            word = f":{colour}-background[{f'**{word}**' if abs(level) >= strong else word}]"
        out.append(word + (_JOINER if text[e:e + 1] in (":", ".", "@") else ""))
        last = e
    out.append(_escape_keep_spaces(text[last:]))
    return "".join(out)


def _escape_keep_spaces(piece: str) -> str:
    """``md`` of the text between words, keeping single spaces at its ends (``md`` strips them)."""
    return " ".join(md(p) for p in " ".join(piece.split("\n")).replace("\t", " ").split(" "))


def overlay_png(expl: Explanation) -> bytes:
    """The photo with its region importance laid over it, as PNG bytes."""
    from ..retrieval.explain import overlay  # lazy: PyTorch, only once an explanation is drawn
    buf = io.BytesIO()
    overlay(expl).save(buf, format="PNG")
    return buf.getvalue()


def image_key(image: Image.Image | str | Path) -> str:
    """A cache key for a photo: its path, or a digest of its pixels (an upload)."""
    if isinstance(image, (str, Path)):
        return f"path:{image}"
    return f"pixels:{image.size}:{hashlib.sha256(image.tobytes()).hexdigest()}"


@st.cache_data(show_spinner="Explaining the match (each word and each region of the photo left out in turn)...",
               max_entries=256)
def _explanation(run_dir: str, stamp: int, text: str, key: str, _image) -> Explanation:
    from ..retrieval.explain import explain  # lazy: PyTorch, only once a pair is explained
    return explain(state.run(run_dir), text, _image)


def explanation(run_dir: str | Path, text: str, image: Image.Image | str | Path) -> Explanation:
    """Why ``text`` and ``image`` (a PIL image or a photo's path) match under the run, cached per pair."""
    stamp = state._mtime(Path(run_dir) / "best.safetensors")
    return _explanation(str(run_dir), stamp, text, image_key(image), image)


def show_explanation(expl: Explanation, stacked: bool = False) -> None:
    """The photo with its heatmap beside (or, ``stacked``, above) the highlighted caption, score and legend."""
    left, right = (st.container(), st.container()) if stacked else st.columns([1, 2])
    left.image(overlay_png(expl), width="stretch", caption="regions")
    right.markdown(highlighted_words(expl))
    top = ", ".join(f"'{md(w)}' {v:+.3f}" for w, v in expl.top_words(3))
    right.caption(f"score {expl.score:.3f} · largest word effects: {top} · computed in {expl.seconds:.1f} s")
    right.caption(LEGEND)


def why_it_matched(run_dir: str | Path, candidates: Sequence[tuple[str, Hit]], key: str,
                   text: str | None = None, image: Image.Image | None = None, stacked: bool = False) -> None:
    """A selectbox over ``candidates`` ((label, hit) pairs); the picked pair's explanation.

    Args:
        text: the query, for text -> products (each candidate's photo is explained against it).
        image: the query photo, for image -> captions (each candidate's caption is explained against it).
        stacked: photo above words (a narrow column).
    """
    if not candidates:
        return
    labels = [label for label, _ in candidates]
    choice = st.selectbox("Why did it match?", [None, *range(len(labels))], key=key,
                          format_func=lambda i: "pick a result to explain" if i is None else labels[i])
    if choice is None:
        return
    hit = candidates[choice][1]
    try:
        if text is not None:
            expl = explanation(run_dir, text, str(hit.image))
        else:
            expl = explanation(run_dir, hit.caption, image)
    except (OSError, ValueError) as err:  # the photo changed or went since the catalogue was checked
        st.error(md(f"Cannot explain this pair: {err}"), icon=":material/error:")
        return
    show_explanation(expl, stacked)


def hit_candidates(hits: Sequence[Hit], true_hit: Hit | None = None, above: Sequence[Hit] = ()
                   ) -> list[tuple[str, Hit]]:
    """(label, hit) choices for ``why_it_matched``: the results, then the true match and what ranked above it."""
    out = [(f"#{i} · {h.caption}", h) for i, h in enumerate(hits, start=1)]
    if true_hit is not None and above:
        out.append((f"the true match · {true_hit.caption}", true_hit))
        out += [(f"ranked above the true match, #{i} · {h.caption}", h) for i, h in enumerate(above, start=1)]
    return out


def disagreement_why(runs: dict[str, str], data: dict, rows: Sequence[int], direction: str,
                     key: str = "cmp_why") -> None:
    """Compare's "why?": pick one of the disagreement rows; for each run, why the query and its true match
    scored as they did and, when the run put something else first, why that scored higher.

    Args:
        runs: run folder -> label.
        data: ``state.compare_ranks``'s dict (``item_ids``, ``captions``, ``images`` of the shared test items).
        rows: the positions in ``data`` of the rows shown.
        direction: ``text_to_image`` or ``image_to_text``.
    """
    rows = [int(r) for r in rows]
    if not rows or not runs:
        return
    ids, captions, images = data["item_ids"], data["captions"], data["images"]
    q = st.selectbox("Why? Explain a query under each model", [None, *rows], key=key,
                     format_func=lambda i: "pick a query" if i is None else f"{ids[i]} · {captions[i]}")
    if q is None:
        return
    for col, (run_dir, label) in zip(st.columns(len(runs)), runs.items()):
        with col:
            st.markdown(f"**{md(label)}**")
            try:
                st.caption("the query and its true match")
                show_explanation(explanation(run_dir, captions[q], images[q]), stacked=len(runs) > 2)
                first = _first_result(run_dir, ids, q, direction)
                if first is None or normalise_caption(captions[first]) == normalise_caption(captions[q]):
                    st.caption("this model put the true match (or an identical title) first")
                    continue
                st.caption(f"what this model put first instead: {md(ids[first])}")
                pair = (captions[q], images[first]) if direction == "text_to_image" else (captions[first], images[q])
                show_explanation(explanation(run_dir, *pair), stacked=len(runs) > 2)
            except (OSError, ValueError) as err:
                st.error(md(f"Cannot explain this query: {err}"), icon=":material/error:")


def _first_result(run_dir: str, item_ids: Sequence[str], q: int, direction: str) -> int | None:
    """The position (in ``item_ids``) of the run's first result for query ``q`` over those items."""
    run = state.run(run_dir)
    pos = {x: i for i, x in enumerate(run.catalogue.item_ids)}
    if not all(x in pos for x in item_ids):
        return None
    sel = np.array([pos[x] for x in item_ids])
    img, txt = run.image_embeds.numpy()[sel], run.text_embeds.numpy()[sel]  # [n, D] each, in item_ids' order
    scores = img @ txt[q] if direction == "text_to_image" else txt @ img[q]
    return int(np.argmax(scores))


# -------------------------------------------------------------------------------------- photo + words

def result_column(title: str, hits: Sequence[Hit], image_width: int = 70) -> None:
    """One list of results under a heading, as hit cards."""
    st.markdown(f"**{md(title)}**")
    for i, hit in enumerate(hits, start=1):
        ui.hit_card(hit, title=f"#{i}", image_width=image_width)


def side_by_side(run: Run, image, text: str, weight: float, k: int) -> None:
    """Photo only, words only and photo + words, in three columns."""
    from ..retrieval.compose import search  # lazy: PyTorch, only once a composed query runs
    cols = st.columns(3)
    with cols[0]:
        result_column("Photo only", search(run, image=image, k=k))
    with cols[1]:
        result_column("Words only", search(run, text=text, k=k))
    with cols[2]:
        result_column(f"Photo + words (words {weight:.0%})", search(run, image=image, text=text, weight=weight, k=k))


FEEDBACK = "search_feedback"  # st.session_state: {"key": query key, "rounds": [ComposedResult, ...]}


def feedback(run: Run, query_key: str, start, k: int, columns: int = 4) -> None:
    """More like this / less like this: tick results, press Refine, repeat; each round re-ranks the gallery
    from the first query with every judgement so far (Rocchio). The rounds live in ``st.session_state``.

    Args:
        query_key: identifies the query (run, photo, words, weight): a new one starts over.
        start: a function returning the first round's ``ComposedResult``.
    """
    from ..retrieval.compose import refine  # lazy: PyTorch, only once a composed query runs
    fb = st.session_state.get(FEEDBACK)
    if not fb or fb.get("key") != query_key:
        fb = st.session_state[FEEDBACK] = {"key": query_key, "rounds": [start()]}
    rounds: list[ComposedResult] = fb["rounds"]
    current, n = rounds[-1], len(rounds)
    c1, c2 = st.columns([1, 1])
    refine_clicked = c1.button("Refine: more like the ticked, less like the crossed", key="search_fb_refine",
                               icon=":material/tune:")
    if c2.button("Start over", key="search_fb_reset", icon=":material/restart_alt:"):
        fb["rounds"] = rounds = [start()]
        current, n = rounds[0], 1
    if refine_clicked:
        good = [h.index for h in current if st.session_state.get(f"fb_good_{n}_{h.index}")]
        bad = [h.index for h in current if st.session_state.get(f"fb_bad_{n}_{h.index}")]
        if good or bad:
            rounds.append(refine(run, current, good=good, bad=bad, k=k))
            current, n = rounds[-1], len(rounds)
        else:
            st.info("Tick *more like this* or *less like this* under a few results first.", icon=":material/info:")
    st.caption(f"Round {n}: {len(current.good)} marked more like this, {len(current.bad)} less like this so far.")
    for start_i in range(0, len(current), columns):
        for col, (i, hit) in zip(st.columns(columns), enumerate(current[start_i:start_i + columns], start=start_i + 1)):
            ui.photo(hit.image, 110, where=col)
            col.markdown(f"**#{i}** {md(hit.caption)}")
            col.caption(f"score {hit.score:.3f}")
            col.checkbox("more like this", key=f"fb_good_{n}_{hit.index}", value=hit.index in current.good)
            col.checkbox("less like this", key=f"fb_bad_{n}_{hit.index}", value=hit.index in current.bad)
