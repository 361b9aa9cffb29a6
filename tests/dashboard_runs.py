"""Runs on two catalogues for the dashboard tests: the tiny demo (conftest's ``tiny_catalogue``) and a second
tiny demo made with another seed and other attribute values, with a real trained run on each and copies of
those runs (other ids, other numbers, one collapsed) to make eight runs in all.

Plain functions, cached for the session, so the AppTest, logic and browser test modules share one set.
"""
from __future__ import annotations

import csv
import json
import shutil
import time
from pathlib import Path

from conftest import TINY_SIZE

# The second catalogue's attribute values: none of them occurs in the demo's.
OTHER_COLOURS = {"Black": "Charcoal", "White": "Off White", "Red": "Burgundy", "Navy Blue": "Steel",
                 "Blue": "Turquoise Blue", "Green": "Sea Green", "Yellow": "Mustard", "Pink": "Peach",
                 "Grey": "Grey Melange", "Brown": "Tan", "Orange": "Rust", "Purple": "Lavender", "Maroon": "Mauve",
                 "Beige": "Cream", "Teal": "Sea Green", "Olive": "Khaki"}
OTHER_BRANDS = {"Roadster": "Quechua", "Nivora": "Nabaiji", "Urban Loom": "Kalenji", "Kaveri": "Domyos",
                "Peakline": "Artengo", "Solace": "Tribord"}
OTHER_GENDERS = {"Men": "Boys", "Women": "Girls", "Unisex": "Kids"}
_CACHE: dict[str, object] = {}


def second_catalogue(root: Path) -> Path:
    """A 60-item demo with seed 2 whose colour, brand and gender columns use other values (and a season column)."""
    from xmodal.data import generate_demo
    folder = generate_demo(root / "second", n=60, seed=2)
    with open(folder / "captions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        row["colour"] = OTHER_COLOURS[row["colour"]]
        row["brand"] = OTHER_BRANDS[row["brand"]]
        row["gender"] = OTHER_GENDERS[row["gender"]]
        row["season"] = ("Summer", "Winter", "Fall")[i % 3]
    with open(folder / "captions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def train(data: Path, out: Path, run_id: str, model: str = "cmpm-efficientnet") -> Path:
    from xmodal.training.cli import main
    assert main(["--model", model, "--data", str(data), "--epochs", "2", "--batch-size", "16", "--out", str(out),
                 "--run-id", run_id, *TINY_SIZE]) == 0
    return out / run_id


def copy_run(src: Path, dst: Path, created: float, shift: float = 0.0, collapse: bool = False) -> Path:
    """A copy of a finished run under another id: its test recall moved by ``shift`` points. Its validation
    says matching pairs pull away from random ones (0.6 vs 0.1), or with ``collapse`` that they are no closer
    (0.97 vs 0.97: with the tiny run's flat loss, the collapse alarm goes off)."""
    shutil.copytree(src, dst, copy_function=shutil.copy2, symlinks=True)  # copy2: same mtime, same cache keys
    for p in dst.glob("projection_*.npz"):
        p.unlink()
    config = json.loads((dst / "config.json").read_text())
    config.update(run_id=dst.name, created=created)
    (dst / "config.json").write_text(json.dumps(config))
    test = json.loads((dst / "test.json").read_text())
    for level in ("caption", "item"):
        for k, v in list(test[level].items()):
            if "/R@" in k:
                test[level][k] = max(0.0, min(100.0, v + shift))
        test[level]["rsum"] = sum(v for k, v in test[level].items() if "/R@" in k)
    (dst / "test.json").write_text(json.dumps(test))
    rows = [json.loads(x) for x in (dst / "metrics.jsonl").read_text().splitlines() if x.strip()]
    for r in rows:
        if r.get("kind") == "epoch":
            r["pos_sim"], r["neg_sim"] = (0.97, 0.97) if collapse else (0.6, 0.1)
    (dst / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return dst


def two_catalogues(trained_run: Path, tiny_catalogue: Path, tmp_path_factory) -> dict:
    """Eight finished runs, four per catalogue (one per catalogue collapsed), with their catalogue embeddings
    made; returns ``{"root", "demo": [run dirs], "second": [run dirs], "second_catalogue"}``."""
    if "runs" in _CACHE:  # other tests may have started runs in this folder (the sidebar's training): drop them
        out = _CACHE["runs"]
        keep = {d.name for d in out["demo"] + out["second"]}
        for extra in out["root"].iterdir():
            if extra.is_dir() and extra.name not in keep and not extra.name.startswith("."):
                shutil.rmtree(extra, ignore_errors=True)
        return out
    from xmodal.dashboard.maps import embeds
    base = tmp_path_factory.mktemp("two_catalogues")
    other = second_catalogue(base)
    first = train(other, base / "trained", "tiny-second")
    embeds.compute(trained_run)
    embeds.compute(first)
    root = base / "ckpt"
    root.mkdir()
    now = time.time()
    out = {"root": root, "second_catalogue": other, "demo": [], "second": []}
    for name, src in (("demo", trained_run), ("second", first)):
        for i, (shift, collapse) in enumerate(((0.0, False), (-5.0, False), (-10.0, False), (-30.0, True))):
            out[name].append(copy_run(src, root / f"{name}-run{i}", created=now - 10 * i - (0 if name == "demo" else 5),
                                      shift=shift, collapse=collapse))
    _CACHE["runs"] = out
    return out


def real_and_demo(trained_run: Path, tmp_path_factory) -> dict:
    """A checkpoints folder with a run on the first 150 real Myntra products (copied to a temp folder with
    their photos) and the tiny demo run: two catalogues, one of them real; ``{"root", "catalogue"}``.
    Skips (pytest) where the real catalogue is absent. Cached for the session."""
    if "real" in _CACHE:
        return _CACHE["real"]
    from conftest import myntra_or_skip
    from xmodal.dashboard.maps import embeds
    from xmodal.training.cli import main as train_main
    src = myntra_or_skip()
    base = tmp_path_factory.mktemp("real")
    cat = base / "myntra150"
    (cat / "images").mkdir(parents=True)
    with open(src / "captions.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = [r for _, r in zip(range(150), reader)]
        fields = reader.fieldnames
    for r in rows:
        shutil.copy(src / r["image"], cat / r["image"])
    with open(cat / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    ckpt = base / "ckpt"
    assert train_main(["--model", "cmpm-efficientnet", "--data", str(cat), "--epochs", "2", "--batch-size", "16",
                       "--out", str(ckpt), "--run-id", "real-cmpm", *TINY_SIZE]) == 0
    shutil.copytree(trained_run, ckpt / "demo-cmpm")
    for run in ("real-cmpm", "demo-cmpm"):
        embeds.compute(ckpt / run)
    _CACHE["real"] = {"root": ckpt, "catalogue": cat}
    return _CACHE["real"]
