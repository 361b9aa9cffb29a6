"""``python -m xmodal.report RUN_DIR...``: a markdown table of runs' test metrics (from test.json).

Caption-level ground truth by default (``--gt item`` for item level); both directions, R@1/5/10 and
median rank, with the gallery size, the checkpoint choice and the training time of each run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .runs import read_json

COLUMNS = [("text_to_image", "R@1"), ("text_to_image", "R@5"), ("text_to_image", "R@10"),
           ("text_to_image", "median_rank"), ("image_to_text", "R@1"), ("image_to_text", "R@5"),
           ("image_to_text", "R@10"), ("image_to_text", "median_rank")]


def table(run_dirs: list[Path], gt: str = "caption") -> str:
    """The markdown table for ``run_dirs`` (runs without test.json are listed as unfinished)."""
    head = ("| model | backbone weights | t2i R@1 | t2i R@5 | t2i R@10 | t2i medR | i2t R@1 | i2t R@5 | i2t R@10 "
            "| i2t medR | test items | chosen on | train time |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d in run_dirs:
        config = read_json(d / "config.json") or {}
        test = read_json(d / "test.json")
        name = config.get("model", d.name)
        weights = "ImageNet" if config.get("pretrained") else "random init"
        if config.get("model_config", {}).get("finetune"):
            weights += ", trained end to end"
        else:
            weights += ", frozen"
        if not test:
            lines.append(f"| {name} | {weights} | unfinished |" + " |" * 10)
            continue
        m = test[gt]
        cells = [f"{m[f'{d_}/{k}']:.1f}" if k != "median_rank" else f"{m[f'{d_}/{k}']:.0f}" for d_, k in COLUMNS]
        epoch = test.get("chosen_on", "").split("(")[-1].split(",")[0]
        lines.append(f"| {name} | {weights} | " + " | ".join(cells) +
                     f" | {test['gallery_size']} | val rsum, {epoch} | {test.get('train_seconds', 0) / 60:.1f} min |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmodal.report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--gt", choices=["caption", "item"], default="caption")
    a = p.parse_args(argv)
    print(table(a.runs, a.gt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
