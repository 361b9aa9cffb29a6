"""The one normalisation of text: the key of a product title and the characters the tokeniser reads.

Text that looks the same is the same: Unicode compatibility forms (NFKC/NFKD: ligatures, full-width letters,
the Kelvin sign), invisible format characters (soft hyphen U+00AD, zero-width space U+200B, joiners, BOM:
Unicode category Cf), accents (``Crème`` reads ``creme``; a title typed in NFD equals one in NFC) and case
(``casefold``: ``Straße`` equals ``STRASSE``) all fold away. Caption-level ground truth, the title-grouped
split and the tokeniser all go through :func:`fold`, so they can never disagree. A leaf module (no imports
of the package), shared without import cycles.
"""
from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")


def fold_chars(text: str) -> tuple[str, list[int]]:
    """The folded text and, for each of its characters, the index in ``text`` of the character it came from
    (so spans found in the folded text can be shown on the original)."""
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        if unicodedata.category(ch) == "Cf":  # invisible: soft hyphen, zero-width space and joiners, BOM
            continue
        for part in unicodedata.normalize("NFKD", ch):
            if unicodedata.combining(part):  # accents: "è" is "e" + a combining grave
                continue
            for c in part.casefold():
                if not unicodedata.combining(c):
                    out.append(c)
                    origin.append(i)
    return "".join(out), origin


def fold(text: str) -> str:
    """``text`` without compatibility forms, format characters, accents or case (see the module docstring)."""
    return fold_chars(text)[0]


def normalise_caption(text: str) -> str:
    """The caption key of caption-level ground truth and the title-grouped split: folded, single spaces."""
    return _SPACES.sub(" ", fold(text)).strip()
