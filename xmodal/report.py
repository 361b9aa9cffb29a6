"""``python -m xmodal.report RUN_DIR...``: a markdown table of runs' test metrics (from test.json).

Caption-level ground truth by default (``--gt item`` for item level); both directions, R@1/5/10 and
median rank, with the gallery size, the checkpoint choice and the training time of each run.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .runs import read_best, read_json

COLUMNS = [("text_to_image", "R@1"), ("text_to_image", "R@5"), ("text_to_image", "R@10"),
           ("text_to_image", "median_rank"), ("image_to_text", "R@1"), ("image_to_text", "R@5"),
           ("image_to_text", "R@10"), ("image_to_text", "median_rank")]


def backbone_description(config: dict) -> str:
    """What happened to the image backbone: where its weights came from and how it trained."""
    mc = config.get("model_config", {})
    source = mc.get("weights_source")
    if not source:
        start = "random init"
    elif "distil" in source.lower():
        start = source
    elif "imagenet" in source.lower():
        start = "ImageNet"
    else:
        start = source
    freeze = (config.get("train") or {}).get("freeze_epochs") or 0
    if mc.get("finetune"):
        how = (f"{freeze} frozen epochs, then fine-tuned end to end" if freeze and source else
               "fine-tuned end to end" if source else "trained end to end")
    elif mc.get("tune_blocks"):
        how = f"last {mc['tune_blocks']} stage(s) tuned"
    else:
        how = "frozen"
    return f"{start}, {how}"


def val_table(run_dirs: list[Path], gt: str = "caption") -> str:
    """Validation metrics of each run's chosen checkpoint (for choosing recipes; test stays untouched)."""
    head = ("| run | model | backbone | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@1 | i2t R@5 | i2t R@10 | rsum "
            "| val items | epoch | train time |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d in run_dirs:
        config = read_json(d / "config.json") or {}
        best = read_best(d)
        status = read_json(d / "status.json") or {}
        if not best:
            lines.append(f"| {d.name} | {config.get('model', '?')} | no checkpoint yet |" + " |" * 10)
            continue
        m = best["val"][gt]
        cells = [f"{m[f'{k}']:.1f}" for k in ("text_to_image/R@1", "text_to_image/R@5", "text_to_image/R@10",
                                                "image_to_text/R@1", "image_to_text/R@5", "image_to_text/R@10")]
        test = read_json(d / "test.json") or {}
        minutes = test.get("train_seconds", 0) / 60
        lines.append(f"| {d.name} | {config.get('model', '?')} | {backbone_description(config)} | " + " | ".join(cells)
                     + f" | {m['rsum']:.1f} | {best['val']['gallery_size']} | {best['epoch']}/"
                     f"{status.get('epochs', '?')} | {minutes:.1f} min |")
    return "\n".join(lines)


def table(run_dirs: list[Path], gt: str = "caption") -> str:
    """The markdown table for ``run_dirs`` (runs without test.json are listed as unfinished)."""
    head = ("| model | backbone | t2i R@1 | t2i R@5 | t2i R@10 | t2i medR | i2t R@1 | i2t R@5 | i2t R@10 "
            "| i2t medR | unseen-title t2i R@1 / R@10 (queries) | test items | split | chosen on | train time |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d in run_dirs:
        config = read_json(d / "config.json") or {}
        test = read_json(d / "test.json")
        name = config.get("model", d.name)
        weights = backbone_description(config)
        if not test:
            lines.append(f"| {name} | {weights} | unfinished |" + " |" * 12)
            continue
        m = test[gt]
        cells = [f"{m[f'{d_}/{k}']:.1f}" if k != "median_rank" else f"{m[f'{d_}/{k}']:.0f}" for d_, k in COLUMNS]
        u = test.get("unseen_title")
        unseen = (f"{u['text_to_image/R@1']:.1f} / {u['text_to_image/R@10']:.1f} ({test['unseen_queries']})"
                  if u else "-")
        split = test.get("split_source") or (config.get("split") or {}).get("source", "?")
        epoch = test.get("chosen_on", "").split("(")[-1].split(",")[0]
        lines.append(f"| {name} | {weights} | " + " | ".join(cells) + f" | {unseen} | {test['gallery_size']} | "
                     f"{split} | val rsum, {epoch} | {test.get('train_seconds', 0) / 60:.1f} min |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmodal.report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--gt", choices=["caption", "item"], default="caption")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="val: the chosen checkpoint's validation metrics (to compare recipes without touching test)")
    a = p.parse_args(argv)
    print(val_table(a.runs, a.gt) if a.split == "val" else table(a.runs, a.gt))
    return 0


if __name__ == "__main__":
    sys.exit(main())
