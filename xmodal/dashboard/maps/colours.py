"""Colours for the map's points: a colour attribute drawn in its own colours, any other attribute in a
palette that never repeats.

``Blue`` products are drawn blue, ``White`` ones near-white with a dark outline, ``Navy Blue`` navy: the
common fashion colour names (the demo's 16 and the Myntra catalogue's base colours) map to hex; an unknown
name is matched on its last word (``Dark Teal`` -> teal) and otherwise gets a palette colour. For other
attributes the most frequent ``TOP_N`` values get distinct palette colours and the rest one grey ``(other)``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

# Distinct qualitative colours (plotly's Dark24 then Alphabet, de-duplicated): never reused within one legend.
PALETTE = ("#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#B68100", "#750D86", "#EB663B", "#511CFB",
           "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE", "#862A16", "#A777F1", "#620042",
           "#1616A7", "#DA60CA", "#6C4516", "#0D2A63", "#AF0038", "#AA0DFE", "#3283FE", "#85660D", "#782AB6",
           "#565656", "#1C8356", "#16FF32", "#F7E1A0", "#C4451C", "#DEA0FD", "#FE00FA", "#325A9B", "#FEAF16")
OTHER = "(other)"
OTHER_COLOUR = "#c8c8c8"
TOP_N = 24  # values with their own colour; the rest share OTHER
OUTLINE = "#555555"  # around light colours, so white points show on the white plot

# Common fashion colour names -> hex (lower case keys).
FASHION: dict[str, str] = {
    "black": "#191919", "white": "#f5f5f5", "off white": "#f3efe2", "cream": "#f4ecd0", "red": "#c81e23",
    "navy blue": "#14235a", "navy": "#14235a", "blue": "#286edc", "turquoise blue": "#30c5d2",
    "turquoise": "#30c5d2", "teal": "#148282", "green": "#1e8c3c", "sea green": "#2e8b57",
    "lime green": "#7ed321", "fluorescent green": "#39ff14", "olive": "#6e7328", "yellow": "#f0d228",
    "mustard": "#d4a017", "gold": "#d4af37", "orange": "#f5821e", "rust": "#b7410e", "peach": "#ffcba4",
    "pink": "#f08cb4", "rose": "#e8768f", "magenta": "#d0208d", "purple": "#783296", "lavender": "#b9a3e3",
    "mauve": "#c094b8", "maroon": "#731428", "burgundy": "#800020", "grey": "#808080", "gray": "#808080",
    "grey melange": "#a3a3a3", "charcoal": "#36454f", "silver": "#c0c0c0", "steel": "#7b8a95",
    "metallic": "#a8a9ad", "brown": "#6e4623", "coffee brown": "#4b3621", "mushroom brown": "#8b7765",
    "tan": "#d2b48c", "khaki": "#c3b091", "beige": "#d7c3a0", "nude": "#e3bc9a", "skin": "#e8b996",
    "taupe": "#8b8589", "bronze": "#cd7f32", "copper": "#b87333",
}


@dataclass
class Colouring:
    """How one attribute is coloured: each item's legend label (a value, or ``(other)``) and each label's
    colour; ``outlined`` names the labels drawn with a dark outline (too light to see on white)."""

    labels: list[str]
    colours: dict[str, str]
    outlined: set[str]


def light(hex_colour: str) -> bool:
    """Whether a ``#rrggbb`` colour is too light to see on a white plot without an outline."""
    r, g, b = (int(hex_colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.82


def fashion_hex(name: str) -> str | None:
    """The hex of a fashion colour name (``Navy Blue``, ``off-white``, ``Dark Teal``), or None when unknown."""
    key = " ".join(str(name).lower().replace("-", " ").replace("_", " ").split())
    if key in FASHION:
        return FASHION[key]
    words = key.split()
    for i in range(1, len(words)):  # "dark teal" -> "teal", "light sea green" -> "sea green"
        if (tail := " ".join(words[i:])) in FASHION:
            return FASHION[tail]
    return None


def colour_attribute(name: str) -> bool:
    """Whether a column holds colour names (``colour``, ``baseColour``, ``color``)."""
    return "colour" in name.lower() or "color" in name.lower()


def colouring(values: Sequence[str], attribute: str = "", top_n: int = TOP_N) -> Colouring:
    """Colours for the items' ``values`` of ``attribute``.

    A colour attribute's known names keep their own colour whatever their count; every other value ranks
    by frequency (ties by name): the first ``top_n`` get palette colours not used by anything else, the
    rest become ``other`` (grey). Empty values read as ``(none)``.
    """
    values = [v if v else "(none)" for v in values]
    counts = Counter(values)
    ranked = sorted(counts, key=lambda v: (-counts[v], v))
    colours: dict[str, str] = {}
    if colour_attribute(attribute):
        for v in ranked:
            if (hex_colour := fashion_hex(v)) is not None:
                colours[v] = hex_colour
    free = [c for c in PALETTE if c.lower() not in {h.lower() for h in colours.values()}]
    for v in ranked:
        if v in colours:
            continue
        if len(colours) >= top_n or not free:
            break
        colours[v] = free.pop(0)
    labels = [v if v in colours else OTHER for v in values]
    if OTHER in labels:
        colours[OTHER] = OTHER_COLOUR
    return Colouring(labels, colours, {v for v, c in colours.items() if light(c)})
