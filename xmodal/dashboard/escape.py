"""Catalogue text shown as text: escapes for Streamlit Markdown and for Plotly labels.

Captions, item ids, attribute values, image file names, run folder names and the error messages that
quote them come from files someone else may have written. Streamlit reads the body of ``st.markdown``,
``st.caption``, ``st.error``/``info``/``warning``/``success``, ``st.progress`` text, ``st.toast``,
expander labels and ``help`` tooltips as Markdown (``![x](http://...)`` makes the browser fetch an outside
address, ``[a](...)`` is a link, ``**`` is bold); Plotly reads ``<a href>``, ``<b>``, ``<br>`` in trace
names, hover text and tick labels. ``md`` and ``plotly`` make such a string display as exactly its
characters. Selectbox and multiselect options, ``st.text``, ``st.code`` and dataframe cells are plain
text already and need neither.
"""
from __future__ import annotations

import html
import re

# Every ASCII punctuation character: CommonMark lets each be backslash-escaped, and escaping all of them
# also covers Streamlit's own syntax (``:red[...]``, ``:material/icon:``, ``:emoji:``, ``$math$``).
_MD_PUNCTUATION = re.compile(r"([!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~])")
# GitHub-flavoured Markdown turns bare ``http://``, ``www.`` and ``name@host`` into links after escapes are
# undone, so an invisible word joiner (U+2060) is put inside each of them: the text reads the same.
_JOINER = "\u2060"
_AUTOLINK = re.compile(r"(?i)(?<=[a-z])(?=://)|(?<=\bwww)(?=\.)|(?<=@)")


def md(value: object) -> str:
    """``value`` as Markdown that displays its characters literally, on one line.

    Whitespace runs (newlines included) become one space, so the text cannot start a heading, list,
    quote or code block; every ASCII punctuation character is backslash-escaped, so it cannot open
    emphasis, a link, an image, raw HTML, a Streamlit directive or math; bare URLs and e-mail addresses
    get an invisible word joiner, so they are not turned into links.
    """
    text = " ".join(str(value).split())
    return _MD_PUNCTUATION.sub(r"\\\1", _AUTOLINK.sub(_JOINER, text))


def plotly(value: object) -> str:
    """``value`` for a Plotly trace name, hover text or tick label: ``&``, ``<``, ``>`` as entities."""
    return html.escape(str(value), quote=False)

