"""The built-in demo catalogue: synthetic product photos whose titles describe what they show.

Generated offline and deterministically from a seed. Each item has a garment type (its silhouette),
a main colour, a pattern (solid, striped, checked, dotted, printed) that may bring a second colour,
a gender (shown by the backdrop) and a brand (shown by its logo mark on the item). Titles follow the
real catalogue's style: "Roadster Women Navy Blue & White Striped Kurta".
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .catalogue import Catalogue, load_catalogue
from .writing import write_catalogue

WIDTH, HEIGHT = 150, 200

COLOURS: dict[str, tuple[int, int, int]] = {
    "Black": (25, 25, 25), "White": (245, 245, 245), "Red": (200, 30, 35), "Navy Blue": (20, 35, 90),
    "Blue": (40, 110, 220), "Green": (30, 140, 60), "Yellow": (240, 210, 40), "Pink": (240, 140, 180),
    "Grey": (128, 128, 128), "Brown": (110, 70, 35), "Orange": (245, 130, 30), "Purple": (120, 50, 150),
    "Maroon": (115, 20, 40), "Beige": (215, 195, 160), "Teal": (20, 130, 130), "Olive": (110, 115, 40),
}
PATTERNS = ("Solid", "Striped", "Checked", "Dotted", "Printed")
GENDERS: dict[str, tuple[int, int, int]] = {  # gender -> backdrop colour
    "Men": (200, 215, 230), "Women": (240, 222, 205), "Unisex": (222, 222, 222)}
# brand -> (logo shape, logo colour)
BRANDS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "Roadster": ("circle", (230, 40, 40)), "Nivora": ("square", (30, 60, 200)),
    "Urban Loom": ("triangle", (20, 150, 70)), "Kaveri": ("diamond", (250, 190, 0)),
    "Peakline": ("bar", (20, 20, 20)), "Solace": ("ring", (150, 40, 170)),
}
# garment -> (polygon in unit coordinates, genders it is sold for)
GARMENTS: dict[str, tuple[list[tuple[float, float]], tuple[str, ...]]] = {
    "T-Shirt": ([(.30, .15), (.42, .12), (.58, .12), (.70, .15), (.92, .30), (.82, .40), (.72, .33),
                 (.72, .85), (.28, .85), (.28, .33), (.18, .40), (.08, .30)], ("Men", "Women", "Unisex")),
    "Shirt": ([(.32, .10), (.50, .18), (.68, .10), (.76, .14), (.90, .75), (.80, .77), (.72, .36),
               (.72, .90), (.28, .90), (.28, .36), (.20, .77), (.10, .75), (.24, .14)], ("Men", "Women")),
    "Kurta": ([(.36, .06), (.50, .12), (.64, .06), (.76, .12), (.88, .55), (.78, .57), (.70, .30),
               (.78, .96), (.22, .96), (.30, .30), (.22, .57), (.12, .55), (.24, .12)], ("Women", "Men")),
    "Dress": ([(.40, .06), (.60, .06), (.64, .30), (.58, .40), (.86, .94), (.14, .94), (.42, .40),
               (.36, .30)], ("Women",)),
    "Trousers": ([(.30, .06), (.70, .06), (.74, .95), (.56, .95), (.50, .35), (.44, .95), (.26, .95)],
                 ("Men", "Women", "Unisex")),
    "Shorts": ([(.24, .25), (.76, .25), (.82, .70), (.56, .72), (.50, .48), (.44, .72), (.18, .70)],
               ("Men", "Women", "Unisex")),
    "Skirt": ([(.36, .18), (.64, .18), (.86, .82), (.14, .82)], ("Women",)),
    "Jacket": ([(.30, .10), (.45, .08), (.55, .08), (.70, .10), (.92, .80), (.80, .82), (.74, .40),
                (.74, .88), (.26, .88), (.26, .40), (.20, .82), (.08, .80)], ("Men", "Women", "Unisex")),
    "Cap": ([(.20, .55), (.26, .38), (.40, .30), (.60, .30), (.74, .38), (.80, .55), (.95, .60),
             (.95, .65), (.20, .62)], ("Men", "Unisex")),
    "Handbag": ([(.18, .45), (.82, .45), (.88, .85), (.12, .85)], ("Women",)),
}


def _pattern_fill(rng: np.random.Generator, pattern: str, c1: tuple, c2: tuple) -> Image.Image:
    fill = Image.new("RGB", (WIDTH, HEIGHT), c1)
    draw = ImageDraw.Draw(fill)
    step = int(rng.integers(12, 20))
    if pattern == "Striped":
        for y in range(0, HEIGHT, step):
            draw.rectangle([0, y, WIDTH, y + step // 2 - 1], fill=c2)
    elif pattern == "Checked":
        for y in range(0, HEIGHT, step):
            draw.rectangle([0, y, WIDTH, y + 2], fill=c2)
        for x in range(0, WIDTH, step):
            draw.rectangle([x, 0, x + 2, HEIGHT], fill=c2)
    elif pattern == "Dotted":
        r = max(2, step // 5)
        for y in range(step // 2, HEIGHT, step):
            for x in range(step // 2 + (y // step % 2) * step // 2, WIDTH, step):
                draw.ellipse([x - r, y - r, x + r, y + r], fill=c2)
    elif pattern == "Printed":  # scattered small flowers
        for _ in range(40):
            x, y = int(rng.integers(0, WIDTH)), int(rng.integers(0, HEIGHT))
            for dx, dy in ((-3, 0), (3, 0), (0, -3), (0, 3)):
                draw.ellipse([x + dx - 2, y + dy - 2, x + dx + 2, y + dy + 2], fill=c2)
    return fill


def _logo(draw: ImageDraw.ImageDraw, shape: str, colour: tuple, cx: float, cy: float, r: float) -> None:
    box = [cx - r, cy - r, cx + r, cy + r]
    outline = (255, 255, 255)
    if shape == "circle":
        draw.ellipse(box, fill=colour, outline=outline)
    elif shape == "square":
        draw.rectangle(box, fill=colour, outline=outline)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=colour, outline=outline)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour, outline=outline)
    elif shape == "bar":
        draw.rectangle([cx - r * 1.4, cy - r * 0.45, cx + r * 1.4, cy + r * 0.45], fill=colour, outline=outline)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r / 2.5)))


def render_item(rng: np.random.Generator, garment: str, gender: str, brand: str, pattern: str,
                c1: str, c2: str | None) -> Image.Image:
    """Draw one product photo."""
    bg = np.array(GENDERS[gender], dtype=np.int16) + rng.integers(-8, 9, size=3)
    img = Image.new("RGB", (WIDTH, HEIGHT), tuple(int(v) for v in np.clip(bg, 0, 255)))
    poly, _ = GARMENTS[garment]
    scale = rng.uniform(0.85, 1.05)
    ox, oy = rng.uniform(-0.05, 0.05), rng.uniform(-0.04, 0.04)
    pts = [((0.5 + (x - 0.5) * scale + ox) * WIDTH, (0.5 + (y - 0.5) * scale + oy) * HEIGHT) for x, y in poly]
    mask = Image.new("L", (WIDTH, HEIGHT), 0)
    ImageDraw.Draw(mask).polygon(pts, fill=255)
    fill = _pattern_fill(rng, pattern, COLOURS[c1], COLOURS[c2] if c2 else COLOURS[c1])
    img.paste(fill, (0, 0), mask)
    draw = ImageDraw.Draw(img)
    draw.polygon(pts, outline=(60, 60, 60))
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    cx, cy = (min(xs) + max(xs)) / 2, min(ys) + (max(ys) - min(ys)) * 0.35
    shape, colour = BRANDS[brand]
    _logo(draw, shape, colour, cx, cy, 8 * scale)
    arr = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, size=(HEIGHT, WIDTH, 1))  # sensor noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def caption_for(brand: str, gender: str, pattern: str, c1: str, c2: str | None, garment: str,
                say_solid: bool) -> str:
    colour = f"{c1} & {c2}" if c2 else c1
    pat = "" if pattern == "Solid" and not say_solid else f"{pattern} "
    return f"{brand} {gender} {colour} {pat}{garment}"


MAX_DEMO_ITEMS = 200_000  # about 1.2 GB of photos; more is a typo, not a demo
DEMO_BYTES_PER_ITEM = 8_000  # a generous upper bound of one photo and its row, to check the disk first


def check_demo_size(n: int, out: Path | None = None) -> None:
    """Raise ``ValueError`` naming the problem when ``n`` demo items cannot or should not be written."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_DEMO_ITEMS:
        raise ValueError(f"--n must be a whole number from 1 to {MAX_DEMO_ITEMS:,}, got {n!r}")
    if out is not None:
        probe = out
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if free < n * DEMO_BYTES_PER_ITEM:
            raise ValueError(f"{n:,} demo items need about {n * DEMO_BYTES_PER_ITEM / 1e9:.1f} GB and {probe} has "
                             f"{free / 1e9:.1f} GB free; ask for fewer with --n, or free some space")


def _write_demo(out: Path, n: int, seed: int) -> None:
    """Render ``n`` items into the empty folder ``out`` (captions.csv + images/ + demo.json)."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    colour_names = list(COLOURS)
    garments = list(GARMENTS)
    rows = []
    for i in range(n):
        garment = garments[int(rng.integers(len(garments)))]
        gender = GARMENTS[garment][1][int(rng.integers(len(GARMENTS[garment][1])))]
        brand = list(BRANDS)[int(rng.integers(len(BRANDS)))]
        pattern = PATTERNS[int(rng.choice(len(PATTERNS), p=[0.4, 0.15, 0.15, 0.15, 0.15]))]
        c1 = colour_names[int(rng.integers(len(colour_names)))]
        c2 = None
        if pattern != "Solid":
            c2 = colour_names[int(rng.integers(len(colour_names)))]
            while c2 == c1:
                c2 = colour_names[int(rng.integers(len(colour_names)))]
        image = render_item(rng, garment, gender, brand, pattern, c1, c2)
        name = f"images/demo_{i:05d}.jpg"
        image.save(out / name, quality=90)
        rows.append({"image": name, "caption": caption_for(brand, gender, pattern, c1, c2, garment,
                                                           say_solid=bool(rng.random() < 0.3)),
                     "item_id": f"demo{i:05d}", "gender": gender, "master_category": garment,
                     "colour": c1, "pattern": pattern, "brand": brand})
    with open(out / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "demo.json").write_text(json.dumps({"n": n, "seed": seed}))


def generate_demo(out_dir: str | os.PathLike, n: int = 2000, seed: int = 0, overwrite: bool = False) -> Path:
    """Write a demo catalogue of ``n`` items into the new folder ``out_dir`` (captions.csv + images/).

    Raises:
        ValueError: ``n`` out of range or more than the disk holds; a negative ``seed``.
        writing.TargetExists: ``out_dir`` holds something, and ``overwrite`` does not allow replacing it.
    """
    out = Path(out_dir).expanduser()
    check_demo_size(n, out)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be a whole number >= 0, got {seed!r}")
    return write_catalogue(out, lambda folder: _write_demo(folder, n, seed), overwrite)


def demo_dir(n: int = 2000, seed: int = 0) -> Path:
    """Where the demo catalogue with these settings lives (under the xmodal cache)."""
    from ..paths import cache_dir
    return cache_dir() / "demo" / f"n{n}_seed{seed}"


def ensure_demo(n: int = 2000, seed: int = 0) -> Path:
    """The demo catalogue's folder, generated on first use."""
    path = demo_dir(n, seed)
    if (path / "demo.json").is_file():
        return path
    # Generate beside it and rename into place, so concurrent runs never see half a catalogue.
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)  # a dead process's half-made copy under our pid
    generate_demo(tmp, n=n, seed=seed)
    try:
        os.rename(tmp, path)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_demo(n: int = 2000, seed: int = 0) -> Catalogue:
    return load_catalogue(ensure_demo(n, seed))
