"""The dashboard's side of ``xmodal.retrieval.explain`` and ``xmodal.retrieval.compose``: "why did it match?" for
Search hits and Compare's disagreement rows, and the Search page's photo + words and "more like this" views.

Explanations are computed on demand (a result picked in a selectbox) and cached per pair with
``st.cache_data``, keyed on the run folder, the weights' modification time, the caption and the photo.
Catalogue text is escaped (``escape.md``) before it reaches Markdown; the only markup added is our own
constant colour directives around escaped words, and the heatmap is a PNG handed to Streamlit as bytes.

Every panel, of every model, draws on one absolute scale (``xmodal.retrieval.explain.SCALE``) with its colour
bar; each word's effect is listed with its sign against a stated baseline; the photo is shown beside its heat
map; the score is placed among the catalogue (rank and standard score), since raw cosines of two models cannot
be compared; and when a credited word names an attribute value the product does not have, the page says how
reliably the model reads that attribute instead of presenting the heat as the reason for the match.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import streamlit as st
from PIL import Image

from ..data import normalise_caption
from . import state, ui
from .escape import md

if TYPE_CHECKING:
    from ..retrieval.compose import ComposedResult
    from ..retrieval.explain import Explanation
    from ..retrieval.run import Hit, Run

_JOINER = "\u2060"  # as escape.md: keeps a word and a following "://", "." or "@" from becoming a link
LEGEND = ("Orange words and regions pushed the score up (the match leans on them), blue ones pulled it down. One "
          "scale for every model and panel: full colour at a change of {scale:.2f} in the cosine score (the bar), "
          "paler for less; a word is tinted from {faint:.3f}, highlighted from {weak:.2f}, bold from {strong:.2f}. "
          "Words: the score minus the score with that word read as unknown. Regions: the "
          "score minus the score with that cell of the photo greyed out.")
SCORES = ("Scores are cosine similarities on each model's own scale: they order one model's results but cannot be "
          "compared across models (a siamese model scores every hit near 1). Comparable across models: each "
          "result's standard score, how many standard deviations it stands above this query's mean score over "
          "the catalogue's {n:,} {what}: {zs}.")


def _explain():
    """``xmodal.retrieval.explain``, imported on first use."""
    from ..retrieval import explain  # lazy: PyTorch, only once an explanation is drawn or checked
    return explain


def _scale(scale: float | None) -> float:
    return float(scale) if scale is not None else _explain().SCALE


# ----------------------------------------------------------------------------------------- why did it match

STRONG, WEAK, FAINT = 0.5, 0.15, 0.025  # shares of the scale from which a word is bold, highlighted, tinted


def highlighted_words(expl: Explanation, strong: float = STRONG, weak: float = WEAK, faint: float = FAINT,
                      scale: float | None = None) -> str:
    """The caption as Markdown with each read word marked by its importance, on the absolute ``scale`` shared
    by every model (``explain.SCALE``): a word worth +0.011 is only tinted where one worth +0.228 is bold.

    Every piece of catalogue text goes through ``escape.md``; the only markup is ours, orange where the word
    pushes the score up and blue where it pulls it down: coloured text (``:orange[...]``) from ``faint`` of
    ``scale``, a coloured background (``:orange-background[...]``) from ``weak`` of it, in bold from ``strong``.
    """
    text, spans = expl.display_text, expl.spans
    if not spans:
        return md(text)
    top = _scale(scale)
    out, last = [], 0
    for (s, e), value in zip(spans, expl.word_scores):
        out.append(_escape_keep_spaces(text[last:s]))
        word = md(text[s:e])
        level = float(value) / top
        colour = "orange" if level > 0 else "blue"
        if abs(level) >= weak:
            word = f":{colour}-background[{f'**{word}**' if abs(level) >= strong else word}]"
        elif abs(level) >= faint:
            word = f":{colour}[{word}]"
        out.append(word + (_JOINER if text[e:e + 1] in (":", ".", "@") else ""))
        last = e
    out.append(_escape_keep_spaces(text[last:]))
    return "".join(out)


def _escape_keep_spaces(piece: str) -> str:
    """``md`` of the text between words, keeping single spaces at its ends (``md`` strips them)."""
    return " ".join(md(p) for p in " ".join(piece.split("\n")).replace("\t", " ").split(" "))


def word_effects(expl: Explanation) -> str:
    """Every read word with its signed effect, in caption order (escaped), against the stated baseline."""
    words = " · ".join(f"'{md(w)}' {v:+.3f}" for w, v in zip(expl.words, expl.word_scores))
    return f"Each word's effect, the score minus {md(_explain().BASELINE)}: {words}"


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def overlay_png(expl: Explanation) -> bytes:
    """The photo with its region importance laid over it on the absolute scale, as PNG bytes."""
    return _png(_explain().overlay(expl))


def photo_png(expl: Explanation) -> bytes:
    """The photo as the model saw it, twice its size, in colour, as PNG bytes (shown beside its heat map)."""
    h, w = expl.photo.shape[:2]
    return _png(Image.fromarray(expl.photo).resize((2 * w, 2 * h), Image.BILINEAR))


def legend_png(scale: float | None = None) -> bytes:
    """The colour bar shared by every panel, ``-scale`` to ``+scale``, as PNG bytes."""
    return _png(_explain().legend(_scale(scale)))


def score_line(expl: Explanation) -> str:
    """The pair's score, and where it stands among the catalogue (what can be compared across models)."""
    line = f"score {expl.score:.3f} (cosine, on this model's own scale)"
    cal = getattr(expl, "calibration", None)
    if cal is not None:
        what = ("photos for this title" if cal.query == "text" else "titles for this photo")
        line += (f" · rank {cal.rank:,} of the catalogue's {cal.gallery:,} {what}, {cal.z:+.1f} standard deviations "
                 "from its mean score (comparable across models)")
    return line


def image_key(image: Image.Image | str | Path) -> str:
    """A cache key for a photo: its path, or a digest of its pixels (an upload)."""
    if isinstance(image, (str, Path)):
        return f"path:{image}"
    return f"pixels:{image.size}:{hashlib.sha256(image.tobytes()).hexdigest()}"


@st.cache_data(show_spinner="Explaining the match (each word and each region of the photo left out in turn)...",
               max_entries=256)
def _explanation(run_dir: str, stamp: int, text: str, key: str, query: str, _image) -> Explanation:
    return _explain().explain(state.run(run_dir), text, _image, query=query)


def explanation(run_dir: str | Path, text: str, image: Image.Image | str | Path, query: str = "text") -> Explanation:
    """Why ``text`` and ``image`` (a PIL image or a photo's path) match under the run, cached per pair; its
    calibration from the side of ``query`` (``text`` or ``image``)."""
    return _explanation(str(run_dir), state.weights_stamp(run_dir), text, image_key(image), query, image)


@st.cache_data(show_spinner="Measuring how well the model reads this attribute over the catalogue...",
               max_entries=64)
def _reading(run_dir: str, stamp: int, attribute: str) -> dict:
    return _explain().attribute_reading(state.run(run_dir), attribute)


def sanity_check(run_dir: str | Path, expl: Explanation, item: int | None) -> list | None:
    """``explain.reading_check`` of an explanation whose photo is catalogue item ``item`` of the run (each
    attribute's reading cached per run); None when the photo is not a catalogue product."""
    if item is None:
        return None
    stamp = state.weights_stamp(run_dir)
    return _explain().reading_check(state.run(run_dir), expl, int(item),
                                    reading=lambda _run, attribute: _reading(str(run_dir), stamp, attribute))


def contradiction_text(c) -> str:
    """What the page says when the model credits a word the product contradicts (escaped Markdown)."""
    r, word, attr = c.reading or {}, md(c.word), md(c.attribute)
    named = ", ".join(md(v) for v in c.named[:3]) + (" ..." if len(c.named) > 3 else "")
    line = (f"The model credits '{word}' ({c.effect:+.3f}), but this product's {attr} is {md(c.value)}, not "
            f"{named}: the model does not read '{word}' reliably, so do not take the heat as the reason for the "
            "match.")
    if r:
        line += (f" Giving each of the catalogue's {r['items']:,} photos the {attr} whose name scores highest, it "
                 f"is right for {r['accuracy']:.0%} (always answering the most common {attr}: {r['majority']:.0%})")
        per = r.get("per_value", {}).get(c.named[0]) if c.named else None
        if per and per.get("n"):
            line += f"; of the {per['n']:,} {md(c.named[0])} photos it names {per['recall']:.0%} so"
        line += "."
    return line


def show_explanation(expl: Explanation, stacked: bool = False, check: list | None = None,
                     scale: float | None = None) -> None:
    """The photo and its heat map beside (or, ``stacked``, above) the highlighted caption, every word's signed
    effect, the score placed among the catalogue, the colour bar of the scale every panel shares, and the
    sanity check (``check``: ``sanity_check``'s list; None when the photo is not a catalogue product)."""
    left, right = (st.container(), st.container()) if stacked else st.columns([1, 2])
    left.image([photo_png(expl), overlay_png(expl)], caption=["photo", "regions"], width=120 if stacked else 110)
    for c in check or []:
        right.warning(contradiction_text(c), icon=":material/report:")
    right.markdown(highlighted_words(expl, scale=scale))
    top = ", ".join(f"'{md(w)}' {v:+.3f}" for w, v in expl.top_words(3))
    right.caption(f"{score_line(expl)} · largest word effects: {top} · computed in {expl.seconds:.1f} s")
    right.caption(word_effects(expl))
    right.image(legend_png(scale), width=200)
    right.caption(f"−{_scale(scale):.2f} ← score change → +{_scale(scale):.2f} · " + LEGEND.format(
        scale=_scale(scale), faint=FAINT * _scale(scale), weak=WEAK * _scale(scale), strong=STRONG * _scale(scale)))
    if check is not None and not check:
        right.caption("Sanity check: no credited word names an attribute value this product lacks.")


def standard_scores(hits: Sequence[Hit], spread: tuple[float, float, int]) -> list[float]:
    """Each hit's standard score against the query's scores over the run's catalogue (``spread``: their mean,
    standard deviation and count, ``queries.QueryResult.spread``): unlike the raw cosine, comparable across models."""
    mean, std, _ = spread
    return [(h.score - mean) / std if std > 0 else 0.0 for h in hits]


def why_it_matched(run_dir: str | Path, candidates: Sequence[tuple[str, Hit]], key: str,
                   text: str | None = None, image: Image.Image | None = None, stacked: bool = False,
                   spread: tuple[float, float, int] | None = None) -> None:
    """The results' scores made comparable across models, then a selectbox over ``candidates`` ((label, hit)
    pairs) and the picked pair's explanation.

    Args:
        text: the query, for text -> products (each candidate's photo is explained against it).
        image: the query photo, for image -> captions (each candidate's caption is explained against it).
        stacked: photo above words (a narrow column).
        spread: the query's scores over the catalogue (``standard_scores``); None: no standard scores shown.
    """
    if not candidates:
        return
    labels, hits = [label for label, _ in candidates], [h for _, h in candidates]
    if spread is not None:
        shown = [f"{label.split(' · ')[0]} {v:+.1f}" for label, v in zip(labels, standard_scores(hits, spread))]
        st.caption(SCORES.format(n=spread[2], what="photos" if text is not None else "titles",
                                 zs=md(", ".join(shown))))
    choice = st.selectbox("Why did it match?", [None, *range(len(labels))], key=key,
                          format_func=lambda i: "pick a result to explain" if i is None else labels[i])
    if choice is None:
        return
    hit = candidates[choice][1]
    try:
        if text is not None:
            expl = explanation(run_dir, text, str(hit.image), "text")
            check = sanity_check(run_dir, expl, hit.index)
        else:
            expl = explanation(run_dir, hit.caption, image, "image")
            check = None  # the photo is the query: no catalogue attributes to check the words against
    except (OSError, ValueError) as err:  # the photo changed or went since the catalogue was checked
        st.error(md(f"Cannot explain this pair: {err}"), icon=":material/error:")
        return
    show_explanation(expl, stacked, check)
    if check is None:
        st.caption("Sanity check: the photo is the query, not a catalogue product, so there are no attributes to "
                   "check the credited words against.")


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
    query = "text" if direction == "text_to_image" else "image"
    st.caption("Every model's panels share one colour scale (the bar): a paler colour is a smaller effect, "
               "whichever model it is.")
    for col, (run_dir, label) in zip(st.columns(len(runs)), runs.items()):
        with col:
            st.markdown(f"**{md(label)}**")
            try:
                sel = _positions(run_dir, ids)  # catalogue index of each shared item under this run
                st.caption("the query and its true match")
                expl = explanation(run_dir, captions[q], images[q], query)
                show_explanation(expl, len(runs) > 2, sanity_check(run_dir, expl, None if sel is None else sel[q]))
                first = _first_result(run_dir, sel, q, direction)
                if first is None or normalise_caption(captions[first]) == normalise_caption(captions[q]):
                    st.caption("this model put the true match (or an identical title) first")
                    continue
                st.caption(f"what this model put first instead: {md(ids[first])}")
                photo = first if direction == "text_to_image" else q
                pair = (captions[q], images[first]) if direction == "text_to_image" else (captions[first], images[q])
                expl = explanation(run_dir, *pair, query)
                show_explanation(expl, len(runs) > 2, sanity_check(run_dir, expl, None if sel is None else sel[photo]))
            except (OSError, ValueError) as err:
                st.error(md(f"Cannot explain this query: {err}"), icon=":material/error:")


def _positions(run_dir: str, item_ids: Sequence[str]) -> np.ndarray | None:
    """The run's catalogue index of each of ``item_ids``; None when its catalogue lacks one of them."""
    pos = {x: i for i, x in enumerate(state.run(run_dir).catalogue.item_ids)}
    return np.array([pos[x] for x in item_ids]) if all(x in pos for x in item_ids) else None


def _first_result(run_dir: str, sel: np.ndarray | None, q: int, direction: str) -> int | None:
    """The position (in ``sel``, the shared items' catalogue indices) of the run's first result for query ``q``
    over those items."""
    if sel is None:
        return None
    run = state.run(run_dir)
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
            col.caption(f"score {hit.score:.3f} (this model's own scale)")
            col.checkbox("more like this", key=f"fb_good_{n}_{hit.index}", value=hit.index in current.good)
            col.checkbox("less like this", key=f"fb_bad_{n}_{hit.index}", value=hit.index in current.bad)
