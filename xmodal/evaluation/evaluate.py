"""``python -m xmodal.evaluate --run DIR [--data DIR] [--split test|val|all] [--flip-tta] [--json]``

Retrieval metrics of a run's best weights, both directions, under item-level and caption-level
ground truth, with the protocol and gallery size named. ``--data`` evaluates on another catalogue
(then ``--split all`` uses every item of it, and test/val re-split it with the run's split seed). ``--flip-tta``
embeds each gallery image as the normalised mean of its and its horizontal mirror's embeddings; the result says so
(``flip_tta`` and the protocol line).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

from ..data import CatalogueError, load_catalogue, make_splits
from ..runs import read_json
from .failures import describe, failure_clusters
from .scoring import evaluate_split
from ..retrieval.run import RUN_INPUT_ERRORS, RunError, load_model, run_catalogue_path, run_error_line

DIRECTIONS = ("text_to_image", "image_to_text")
FLIP_PROTOCOL = ("; flip test-time augmentation: each image embedded as the normalised mean of its own and its "
                 "horizontal mirror's embeddings")


SAME_IMAGES = 0.9  # share of the shared item ids whose image files must be byte-identical: the run's own


def recognise(cat, run_config: dict, known: dict[str, str]) -> tuple[bool, str, set[str]]:
    """Whether ``cat`` is the run's own catalogue (perhaps edited since training), never decided by ids alone.

    Its own when its fingerprint is the one the run recorded, when it is the folder the run trained on (edited
    in place), or when the run's catalogue folder still exists and at least ``SAME_IMAGES`` of the item ids the
    two share name byte-identical image files in both (an edited copy: rows added or removed, same images).
    Another catalogue can reuse the ids (every demo catalogue names its items ``demo00000``...): its images
    differ, so it is not the run's.

    Returns:
        (own, how it was decided, the shared item ids whose images changed since training: not the run's items)
    """
    data = run_config.get("data", {})
    if cat.fingerprint == data.get("fingerprint"):
        return True, "the catalogue the run trained on (same fingerprint)", set()
    recorded = str(data.get("path") or "")
    if recorded and Path(recorded).resolve() == Path(cat.root).resolve():
        return True, "the run's catalogue folder, edited since training", set()
    shared = [x for x in cat.item_ids if x in known]
    if not shared:
        return False, "no item id in common with the run's splits", set()
    try:
        theirs = load_catalogue(recorded, check_images=False).digest_of() if recorded else {}
    except (CatalogueError, OSError):
        theirs = {}
    ours = cat.digest_of()
    if not theirs or not ours:
        return False, (f"{len(shared)} item ids in common with the run's splits, but the run's catalogue folder "
                       f"{recorded or '(not recorded)'} cannot be read to compare their images"), set()
    changed = {x for x in shared if theirs.get(x) != ours[x]}
    if len(shared) - len(changed) >= SAME_IMAGES * len(shared):
        return True, (f"an edited copy of the run's catalogue ({len(shared) - len(changed)} of {len(shared)} shared "
                      "item ids have the same image file)"), changed
    return False, (f"{len(shared)} item ids in common with the run's splits, but only {len(shared) - len(changed)} "
                   "of them have the same image file: other products under the same ids"), set()


def split_index(cat, run_config: dict, split: str, run_dir: Path) -> tuple[np.ndarray, dict]:
    """Positions of ``split`` in ``cat``, and what they are.

    On the run's own catalogue, even edited since training (see ``recognise``: fingerprint, folder, or item
    ids with the same image files), items are matched by ``item_id`` against the run's ``splits.json``: the
    run's train and val items are never scored as its test, and items added, removed or whose image changed
    since are counted. A catalogue the run never saw is split by its own split column or the run's split seed.

    Returns:
        (index, info) where info says ``source``, ``own_catalogue`` and ``recognised`` (how that was decided)
        and the counts ``new_since_training``, ``gone_since_training`` and, for ``all``, ``seen_in_training``.
    """
    recorded = read_json(run_dir / "splits.json")
    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(s), list) for s in ("train", "val", "test")):
        raise RunError(f"{run_dir}/splits.json is missing or damaged; the run's split is unknown")
    known = {x: s for s in ("train", "val", "test") for x in recorded[s]}
    own, how, changed = recognise(cat, run_config, known)
    ids = cat.item_ids
    # the run's items in this catalogue: nothing of a foreign one, whatever its ids
    theirs = {x: s for x, s in known.items() if x not in changed} if own else {}
    about = {"own_catalogue": own, "recognised": how}
    if split == "all":
        seen = sum(theirs.get(x) in ("train", "val") for x in ids)
        return np.arange(len(cat)), {"source": "every item of the catalogue", "seen_in_training": seen, **about}
    if own:
        index = np.array([i for i, x in enumerate(ids) if theirs.get(x) == split], dtype=np.int64)
        new = sum(x not in theirs for x in ids)
        gone = len(recorded[split]) - len(index)  # an item whose image changed is gone (and new)
        return index, {"source": f"the run's recorded {split} split (splits.json, matched by item_id)",
                       "new_since_training": new, "gone_since_training": gone,
                       "image_changed_since_training": len(changed), "train_ids": recorded["train"], **about}
    sp = run_config.get("split", {})
    index = make_splits(cat, seed=sp.get("seed", 0), fractions=tuple(sp.get("fractions", (0.8, 0.1, 0.1))),
                        grouping=sp.get("grouping", "item"))[split]  # runs before title grouping: item level
    return index, {"source": f"the {split} split of a catalogue this run never saw (its own split)", **about}


def evaluate_run(run_dir: str | Path, data: str | None = None, split: str = "test", device: str = "cpu",
                 hubness: str = "none", failures_k: int | None = None, flip_tta: bool = False) -> dict:
    """Metrics dict for one run (see module docstring); ``flip_tta`` averages each image with its mirror."""
    run_dir = Path(run_dir)
    model, vocab, config = load_model(run_dir, device)
    path = run_catalogue_path(config, data)
    cat = load_catalogue(path)
    same = cat.fingerprint == config["data"]["fingerprint"]
    index, info = split_index(cat, config, split, run_dir)
    if len(index) == 0:
        raise ValueError(f"the {split} split of {path} is empty ({info['source']})")
    train_caps = bank = None
    if info.get("train_ids") is not None:
        train_ids = set(info.pop("train_ids"))
        train_caps = [c for c, x in zip(cat.captions, cat.item_ids) if x in train_ids]
        bank = np.array([i for i, x in enumerate(cat.item_ids) if x in train_ids], dtype=np.int64)
    res = evaluate_split(model, vocab, cat, index, torch.device(device), train_captions=train_caps,
                         hubness=hubness, bank_index=bank if bank is not None and len(bank) else None,
                         flip=flip_tta)
    notes = []
    if info.get("new_since_training") or info.get("gone_since_training"):
        changed = info.get("image_changed_since_training", 0)
        also = f", {changed} of them an item whose image changed" if changed else ""
        notes.append(f"the catalogue changed since training: {info.get('new_since_training', 0)} new items "
                     f"(in no split, not scored{also}), {info.get('gone_since_training', 0)} {split} items gone")
    if not info["own_catalogue"]:
        notes.append(f"not the run's own catalogue: {info['recognised']}")
    if info.get("seen_in_training"):
        notes.append(f"{info['seen_in_training']} of these items were trained or validated on")
    if failures_k:
        attrs = {c: [values[int(i)] for i in index] for c, values in cat.attributes.items()}
        res["failure_clusters"] = {d: failure_clusters(res["ranks"]["caption"][d], attrs,
                                                       [cat.captions[int(i)] for i in index], k=failures_k)
                                   for d in DIRECTIONS}
    return {"run": run_dir.name, "model": config["model"], "catalogue": str(path),
            "trained_on_this_catalogue": same, "split": split, "items": info, "notes": notes, **res,
            "flip_tta": flip_tta,  # every number above was made with (or without) the mirrored views: say which
            "protocol": f"{info['source']}; 1:1 gallery of {res['gallery_size']} items; item-level: only the "
                        "item's own pair is correct; caption-level: identical captions all count as correct"
                        + (FLIP_PROTOCOL if flip_tta else "")}


def _cell(m: dict, ci: dict, key: str) -> str:
    """``52.5 [49.4-55.6]``: a recall with its interval (the point alone when no interval is known)."""
    lo_hi = ci.get(key)
    return f"{m[key]:.1f} [{lo_hi[0]:.1f}-{lo_hi[1]:.1f}]" if lo_hi else f"{m[key]:.1f}"


def _fixed_gallery_lines(res: dict) -> list[str]:
    """The fixed-gallery rows and the two protocols' notes (none for results from before them)."""
    if not res.get("dedup"):
        return []
    lines = []
    fixed = res.get("fixed_gallery")
    if fixed:
        m, ci, label = fixed["metrics"], fixed.get("ci95", {}), f"gallery of {fixed['size']}"
        for d in DIRECTIONS:
            lines.append(f"{label:<23}{d:<15}" + "".join(f" {_cell(m, ci, f'{d}/R@{k}'):>19}" for k in (1, 5, 10)))
        lines.append(f"{label:<23}{'rsum':<15} {_cell(m, ci, 'rsum'):>19}")
    lines.append(f"(title-deduplicated: one product per distinct title, {res['dedup_gallery_size']} of "
                 f"{res['gallery_size']}; the proxy for products nobody has seen"
                 + (f"; gallery of {fixed['size']}: its recall averaged over {fixed['reps']} seeded galleries of "
                    f"{fixed['size']} of them, interval over products)" if fixed else
                    "; fewer distinct titles than a fixed gallery needs)"))
    return lines


def format_table(res: dict) -> str:
    """The human table of :func:`evaluate_run`: every recall and median rank with its 95 % interval."""
    ci_all = res.get("ci95") or {}
    hub = res.get("hubness")
    lines = [f"{res['model']} ({res['run']}) on {res['catalogue']}", f"protocol: {res['protocol']}",
             *([f"ranked with {hub['method'].upper()} hubness reduction (k={hub['k']}, weight {hub['weight']}, "
                f"offsets from {hub['bank']})"] if hub else []),
             *(f"note: {n}" for n in res.get("notes", [])),
             f"{'ground truth':<23}{'direction':<15}{'R@1':>20}{'R@5':>20}{'R@10':>20}{'medR':>15}{'meanR':>8}"]
    rows = [("item", "item"), ("caption", "caption")]
    if res.get("unseen_title"):
        rows += [("unseen_title_item", "unseen title, item"), ("unseen_title", "unseen title, caption")]
    if res.get("dedup"):
        rows.append(("dedup", "title-deduplicated"))
    for key, label in rows:
        m, ci = res.get(key), ci_all.get(key, {})
        if not m:
            continue
        for d in DIRECTIONS:
            med = ci.get(f"{d}/median_rank")
            medr = f"{m[f'{d}/median_rank']:.0f}" + (f" [{med[0]:.0f}-{med[1]:.0f}]" if med else "")
            lines.append(f"{label:<23}{d:<15}" + "".join(f" {_cell(m, ci, f'{d}/R@{k}'):>19}" for k in (1, 5, 10))
                         + f" {medr:>14}{m[f'{d}/mean_rank']:>8.1f}")
        lines.append(f"{label:<23}{'rsum':<15} {_cell(m, ci, 'rsum'):>19}")
    if res.get("unseen_title"):
        lines.append(f"(unseen title: the {res['unseen_queries']} queries whose title never occurs in the run's train "
                     "split, same gallery)")
    lines += _fixed_gallery_lines(res)
    ceiling = res.get("item_ceiling") or {}
    if ceiling and ceiling.get("image_to_text/R@1", 100.0) < 100.0:
        lines.append(f"(item level: titles repeat in this gallery, so i2t R@1 cannot exceed "
                     f"{ceiling['image_to_text/R@1']:.1f} and t2i R@1 cannot exceed "
                     f"{ceiling['text_to_image/R@1']:.1f})")
    if res.get("nonfinite_embeddings"):
        lines.append(f"warning: {res['nonfinite_embeddings']} embeddings are NaN or infinite; their queries rank last")
    for d, occ in ((hub or {}).get("k_occurrence") or {}).items():
        b, a = occ["before"], occ["after"]
        lines.append(f"hubness {d}: N_10 skewness {b['skewness']:.2f} -> {a['skewness']:.2f}, items never in a "
                     f"top 10 {b['anti_hub_share']:.1f}% -> {a['anti_hub_share']:.1f}%, biggest hub reaches "
                     f"{b['max_share']:.1f}% -> {a['max_share']:.1f}% of queries")
    if ci_all:
        lines.append(f"[lo-hi]: {res.get('ci_method', 'a 95% interval')}")
    for d, fc in (res.get("failure_clusters") or {}).items():
        lines.append(f"failure clusters, {d} (rank past {fc['k']}, caption-level): {fc['failures']} of {fc['items']} "
                     f"queries fail, base rate {fc['base_rate']:.1f}%; groups by {fc['by']} whose failure rate's 95% "
                     "interval lies above it")
        lines += [f"  {describe(c)}" for c in fc["clusters"]] or ["  none"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmodal.evaluate", description=__doc__.split("\n\n")[1])
    p.add_argument("--run", required=True, help="run folder (checkpoints/<run-id>)")
    p.add_argument("--data", help="catalogue to evaluate on (default: the run's own)")
    p.add_argument("--split", choices=["test", "val", "all"], default="test")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--failures", type=int, metavar="K",
                   help="also name the kinds of product whose queries rank their match past K (caption-level)")
    p.add_argument("--hubness", choices=["none", "csls"], default="none",
                   help="rank with CSLS hubness reduction, learnt from the train split's embeddings")
    p.add_argument("--flip-tta", action="store_true",
                   help="embed each image as the normalised mean of it and its horizontal mirror (off by default)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--ranks", action="store_true", help="with --json: also every query's rank (for paired tests)")
    p.add_argument("--debug", action="store_true", help="show Python tracebacks (also XMODAL_DEBUG=1)")
    a = p.parse_args(argv)
    debug = a.debug or os.environ.get("XMODAL_DEBUG", "") not in ("", "0")
    try:
        if a.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda asked for, but no CUDA GPU is visible; use --device cpu")
        if a.failures is not None and a.failures < 1:
            raise ValueError(f"--failures must be at least 1; got {a.failures}")
        res = evaluate_run(a.run, a.data, a.split, a.device, a.hubness, a.failures, flip_tta=a.flip_tta)
    except RUN_INPUT_ERRORS as err:
        if debug:
            traceback.print_exc()
        print(f"error: {run_error_line(err, a.run)}", file=sys.stderr)
        return 2
    if a.json:
        res = {k: v for k, v in res.items() if k != "ranks" or a.ranks}
    print(json.dumps(res, indent=1) if a.json else format_table(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
