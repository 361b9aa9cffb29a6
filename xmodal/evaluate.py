"""``python -m xmodal.evaluate --run DIR [--data DIR] [--split test|val|all] [--json]``

Retrieval metrics of a run's best weights, both directions, under item-level and caption-level
ground truth, with the protocol and gallery size named. ``--data`` evaluates on another catalogue
(then ``--split all`` uses every item of it, and test/val re-split it with the run's split seed).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from .data import CatalogueError, load_catalogue, make_splits
from .pipeline import evaluate_split
from .search import RunError, load_model, run_catalogue_path

DIRECTIONS = ("text_to_image", "image_to_text")


def split_index(cat, run_config: dict, split: str, same_catalogue: bool, run_dir: Path) -> np.ndarray:
    """Indices of ``split`` in ``cat``: the run's own recorded split when it is the run's catalogue."""
    if split == "all":
        return np.arange(len(cat))
    if same_catalogue:
        recorded = json.loads((run_dir / "splits.json").read_text())
        pos = {item: i for i, item in enumerate(cat.item_ids)}
        return np.array(sorted(pos[x] for x in recorded[split] if x in pos), dtype=np.int64)
    sp = run_config["split"]
    return make_splits(cat, seed=sp["seed"], fractions=tuple(sp["fractions"]))[split]


def evaluate_run(run_dir: str | Path, data: str | None = None, split: str = "test", device: str = "cpu") -> dict:
    """Metrics dict for one run (see module docstring)."""
    run_dir = Path(run_dir)
    model, vocab, config = load_model(run_dir, device)
    path = run_catalogue_path(config, data)
    cat = load_catalogue(path)
    same = cat.fingerprint == config["data"]["fingerprint"]
    index = split_index(cat, config, split, same, run_dir)
    if len(index) == 0:
        raise ValueError(f"the {split} split of {path} is empty")
    res = evaluate_split(model, vocab, cat, index, torch.device(device))
    return {"run": run_dir.name, "model": config["model"], "catalogue": str(path),
            "trained_on_this_catalogue": same, "split": split, **res,
            "protocol": f"{split} split, 1:1 gallery of {res['gallery_size']} items; item-level: only the "
                        "item's own pair is correct; caption-level: identical captions all count as correct"}


def format_table(res: dict) -> str:
    lines = [f"{res['model']} ({res['run']}) on {res['catalogue']}", f"protocol: {res['protocol']}",
             f"{'ground truth':<14}{'direction':<15}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'medR':>7}{'meanR':>8}"]
    for gt in ("item", "caption"):
        for d in DIRECTIONS:
            m = res[gt]
            lines.append(f"{gt:<14}{d:<15}{m[f'{d}/R@1']:>7.1f}{m[f'{d}/R@5']:>7.1f}{m[f'{d}/R@10']:>7.1f}"
                         f"{m[f'{d}/median_rank']:>7.0f}{m[f'{d}/mean_rank']:>8.1f}")
        lines.append(f"{gt:<14}{'rsum':<15}{res[gt]['rsum']:>7.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmodal.evaluate", description=__doc__.split("\n\n")[1])
    p.add_argument("--run", required=True, help="run folder (checkpoints/<run-id>)")
    p.add_argument("--data", help="catalogue to evaluate on (default: the run's own)")
    p.add_argument("--split", choices=["test", "val", "all"], default="test")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = p.parse_args(argv)
    try:
        res = evaluate_run(a.run, a.data, a.split, a.device)
    except (RunError, CatalogueError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1) if a.json else format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
