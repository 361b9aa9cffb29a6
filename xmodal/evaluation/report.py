"""``python -m xmodal.report RUN_DIR...``: a markdown table of runs' test metrics (from test.json).

Caption-level ground truth by default (``--gt item`` for item level); both directions, R@1/5/10 and
median rank, each with its 95 % interval, with the gallery size, the checkpoint choice and the training
time of each run. Below the table: which differences between runs on the same test queries are inside the
noise (a paired bootstrap), the spread of runs of one recipe over seeds, and (``--provenance``) what
software and hardware made each run.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from . import metrics
from .protocols import FIXED_GALLERY
from ..runs import json_problem, read_best, read_json
from ..training.provenance import describe

COLUMNS = [("text_to_image", "R@1"), ("text_to_image", "R@5"), ("text_to_image", "R@10"),
           ("text_to_image", "median_rank"), ("image_to_text", "R@1"), ("image_to_text", "R@5"),
           ("image_to_text", "R@10"), ("image_to_text", "median_rank")]
UNSEEN = {"caption": "unseen_title", "item": "unseen_title_item"}  # the unseen-title figures of each ground truth
SEED_FREE = ("seed", "run_id", "out", "device", "download_weights")  # train fields that do not make a new recipe


def backbone_description(config: dict) -> str:
    """What happened to the image backbone: where its weights came from and how it trained."""
    mc = config.get("model_config", {})
    source = mc.get("weights_source")
    if not source:
        start = "random init"
    elif "distil" in source.lower():
        start = "distilled offline from EfficientNet-Lite0"
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


def cell(m: dict, ci: dict | None, key: str) -> str:
    """``52.9 [49.8-56.0]`` (a median rank without decimals); the point alone when no interval is recorded."""
    fmt = ".0f" if key.endswith("median_rank") else ".1f"
    lo_hi = (ci or {}).get(key)
    point = format(m[key], fmt)
    return f"{point} [{format(lo_hi[0], fmt)}-{format(lo_hi[1], fmt)}]" if lo_hi else point


def _readable(d: Path) -> tuple[dict, str]:
    """A run's config, or an empty dict and why it cannot be read."""
    if not d.is_dir():
        return {}, "not a run folder"
    config = read_json(d / "config.json")
    if not isinstance(config, dict):
        return {}, "unreadable: no config.json (or a damaged one)"
    return config, ""


def val_table(run_dirs: list[Path], gt: str = "caption") -> str:
    """Validation metrics of each run's chosen checkpoint (for choosing recipes; test stays untouched)."""
    head = ("| run | model | backbone | t2i R@1 | t2i R@5 | t2i R@10 | i2t R@1 | i2t R@5 | i2t R@10 | rsum "
            "| val items | epoch | train time |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d in run_dirs:
        config, why = _readable(d)
        best = read_best(d) if not why else None
        if not best:
            lines.append(f"| {d.name} | {config.get('model', '?')} | {why or 'no checkpoint yet'} |" + " |" * 10)
            continue
        status = read_json(d / "status.json") or {}
        try:
            val = _scores(d, "val", gt)
            m, ci = val[gt], (val.get("ci95") or {}).get(gt)
            size = val["dedup_gallery_size"] if gt == "dedup" else val["gallery_size"]
            cells = [cell(m, ci, f"{d_}/R@{k}") for d_ in metrics.DIRECTIONS for k in metrics.KS]
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            lines.append(f"| {d.name} | {config.get('model', '?')} | damaged checkpoint record ({err}) |" + " |" * 10)
            continue
        test = read_json(d / "test.json") or {}
        minutes = test.get("train_seconds", 0) / 60
        lines.append(f"| {d.name} | {config.get('model', '?')} | {backbone_description(config)} | " + " | ".join(cells)
                     + f" | {cell(m, ci, 'rsum')} | {size} | {best['epoch']}/"
                     f"{status.get('epochs', '?')} | {minutes:.1f} min |")
    return "\n".join(lines)


def table(run_dirs: list[Path], gt: str = "caption") -> str:
    """The markdown table for ``run_dirs`` (runs without test.json are listed as unfinished)."""
    head = ("| run | model | backbone | t2i R@1 | t2i R@5 | t2i R@10 | t2i medR | i2t R@1 | i2t R@5 | i2t R@10 "
            f"| i2t medR | unseen-title t2i R@1 / R@10 ({gt}-level; queries) | title-deduplicated t2i R@1 / R@10 "
            f"(products) | rsum in galleries of {FIXED_GALLERY} deduplicated products | test items | catalogue | split "
            "| chosen on | train time |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d in run_dirs:
        config, why = _readable(d)
        test, problem = json_problem(d / "test.json") if not why else (None, "")
        name = config.get("model", d.name)
        if not why and (problem or test is not None and not isinstance(test, dict)):
            why = problem or "test.json is damaged (not an object)"
        if why or not isinstance(test, dict) or not isinstance(test.get(gt), dict):
            lines.append(f"| {d.name} | {name} | {why or 'unfinished (no test.json yet)'} |" + " |" * 16)
            continue
        m, ci = test[gt], (test.get("ci95") or {}).get(gt)
        try:
            cells = [cell(m, ci if isinstance(ci, dict) else None, f"{d_}/{k}") for d_, k in COLUMNS]
        except (KeyError, TypeError, ValueError, IndexError) as err:  # a damaged or foreign test.json
            lines.append(f"| {d.name} | {name} | damaged test.json ({type(err).__name__}: {err}) |" + " |" * 16)
            continue
        u = test.get(UNSEEN.get(gt, ""))
        unseen = (f"{u['text_to_image/R@1']:.1f} / {u['text_to_image/R@10']:.1f} ({test['unseen_queries']})"
                  if u else "-")
        dd = test.get("dedup")
        dedup = (f"{cell(dd, (test.get('ci95') or {}).get('dedup'), 'text_to_image/R@1')} / "
                 f"{dd['text_to_image/R@10']:.1f} ({test.get('dedup_gallery_size', '?')})"
                 if isinstance(dd, dict) else "- (test.json from before the protocol)")
        fixed = test.get("fixed_gallery")
        fixed = cell(fixed["metrics"], fixed.get("ci95"), "rsum") if isinstance(fixed, dict) else \
            "- (fewer distinct titles)" if "fixed_gallery" in test else "- (test.json from before the protocol)"
        split = test.get("split_source") or (config.get("split") or {}).get("source", "?")
        epoch = test.get("chosen_on", "").split("(")[-1].split(",")[0]
        catalogue = Path(str((config.get("data") or {}).get("name") or "?")).name
        lines.append(f"| {d.name} | {name} | {backbone_description(config)} | " + " | ".join(cells) + f" | {unseen} | "
                     f"{dedup} | {fixed} | {test['gallery_size']} | {catalogue} | {split} | val rsum, {epoch} | "
                     f"{test.get('train_seconds', 0) / 60:.1f} min |")
    truth = {"caption": "identical titles all count as correct", "item": "only the item's own pair is correct",
             "dedup": "one product per distinct title, the proxy for new products"}[gt]
    lines += ["", f"Test split, {gt}-level ground truth ({truth}); title-deduplicated: one product per distinct "
              f"title, the proxy for products nobody has seen; [lo-hi]: {metrics.INTERVAL_METHOD}."]
    return "\n".join(lines)


def _test_ranks(d: Path, gt: str, split: str = "test") -> tuple[dict | None, tuple]:
    """A run's per-query ranks under ``gt`` on ``split`` (test.json, or the chosen checkpoint's validation
    record) and what they were measured on (catalogue, the split's item ids)."""
    test, config, splits = _scores(d, split, gt), read_json(d / "config.json"), read_json(d / "splits.json")
    if not all(isinstance(x, dict) for x in (test, config, splits)) or not isinstance(test.get("ranks"), dict):
        return None, ()
    ranks = test["ranks"].get(gt)
    if not isinstance(ranks, dict):
        return None, ()
    where = ((config.get("data") or {}).get("fingerprint"), tuple(splits.get(split) or ()))
    return {k: np.asarray(v) for k, v in ranks.items()}, where


def paired_rows(run_dirs: list[Path], gt: str = "caption",
                metrics_: tuple[str, ...] = ("rsum", "text_to_image/R@1"), split: str = "test") -> list[dict]:
    """Every pair of runs with its paired-bootstrap difference per metric (first minus second), or why the pair
    is not compared (another catalogue or split, or no recorded ranks)."""
    runs = [(d, *_test_ranks(d, gt, split)) for d in run_dirs]
    rows = []
    for (da, ra, wa), (db, rb, wb) in itertools.combinations(runs, 2):
        if ra is None or rb is None:
            rows.append({"a": da.name, "b": db.name, "compared": f"no: no per-query {split} ranks recorded"})
        elif wa != wb:
            rows.append({"a": da.name, "b": db.name, "compared": f"no: different catalogue or {split} split"})
        else:
            n = len(next(iter(ra.values())))  # queries compared (dedup: the kept products, not the split's items)
            for key in metrics_:
                p = metrics.paired_difference(ra, rb, key)
                rows.append({"a": da.name, "b": db.name, "compared": f"yes: the same {n} {split} queries",
                             "metric": key, "difference": p["difference"], "lo": p["lo"], "hi": p["hi"],
                             "verdict": "different" if p["different"] else "inside the noise"})
    return rows


def differences(run_dirs: list[Path], gt: str = "caption", split: str = "test") -> list[str]:
    """:func:`paired_rows` as lines: whether each difference between runs on the same queries is real."""
    lines, pairs = [], {}
    for row in paired_rows(run_dirs, gt, split=split):
        pairs.setdefault((row["a"], row["b"]), []).append(row)
    for (a, b), rows in pairs.items():
        if "metric" not in rows[0]:
            lines.append(f"- {a} vs {b}: not compared ({rows[0]['compared'][4:]})")
            continue
        parts = [f"{r['metric']} {r['difference']:+.1f} [{r['lo']:+.1f}, {r['hi']:+.1f}], {r['verdict']}" for r in rows]
        lines.append(f"- {a} vs {b} ({rows[0]['compared'][5:]}): " + "; ".join(parts))
    if lines:
        lines.insert(0, f"Paired differences ({gt}-level, first minus second, 95% paired bootstrap over the same "
                        "queries; \"inside the noise\" when the interval contains 0; it covers the queries, not "
                        "the training seed: compare recipes over seeds too):")
    return lines


def recipe_key(config: dict) -> str:
    """What makes a recipe: the model, the catalogue and every training field but the seed and the folder."""
    train = {k: v for k, v in (config.get("train") or {}).items() if k not in SEED_FREE}
    return repr((config.get("model"), (config.get("data") or {}).get("fingerprint"), sorted(train.items(), key=str)))


def recipe_label(config: dict) -> str:
    """The model and what its flags set (``--set`` fields, word vectors other than word2vec, epochs, tuning), so
    two recipes of one model read apart:
    ``infonce-efficientnet (word_vectors=fasttext, hard_weight=1.0, epochs=30)``."""
    train = config.get("train") or {}
    changed = {"word_vectors": train.get("word_vectors")} if train.get("word_vectors", "word2vec") != "word2vec" else {}
    changed.update(train.get("model_args") or {})
    changed.update({k: train[k] for k in ("epochs", "tune_blocks", "finetune") if train.get(k)})
    inside = ", ".join(f"{k}={v}" for k, v in changed.items())
    return f"{config.get('model')} ({inside})" if inside else str(config.get("model"))


_MEASURED: dict[Path, dict] = {}  # validation records completed in this process (one model load per run)


def _scores(d: Path, split: str, gt: str = "caption") -> dict | None:
    """test.json, or the chosen checkpoint's validation record, of a run (None when absent).

    On validation under ``dedup``, a record from before that protocol (no dedup ranks) is completed by
    scoring the chosen checkpoint on the run's recorded validation split now (``evaluate_run``)."""
    if split == "val":
        best = read_best(d)
        val = best.get("val") if isinstance(best, dict) else None
        if gt != "dedup" or not isinstance(val, dict) or "dedup" in (val.get("ranks") or {}):
            return val
        if d not in _MEASURED:
            from .evaluate import evaluate_run  # lazy: loads the model, only for records that lack the protocol
            res = evaluate_run(d, split="val")
            _MEASURED[d] = {**val, "dedup": res["dedup"], "dedup_gallery_size": res["dedup_gallery_size"],
                            "ci95": {**(val.get("ci95") or {}), "dedup": res["ci95"]["dedup"]},
                            "ranks": {**(val.get("ranks") or {}), "dedup": res["ranks"]["dedup"]}}
        return _MEASURED[d]
    test = read_json(d / "test.json")
    return test if isinstance(test, dict) else None


def seed_table(run_dirs: list[Path], gt: str = "caption", split: str = "test") -> list[str]:
    """Runs of one recipe that differ only by seed: mean, standard deviation and range of the metrics."""
    groups: dict[str, list[tuple[Path, dict, dict]]] = {}
    for d in run_dirs:
        config, test = read_json(d / "config.json"), _scores(d, split, gt)
        if isinstance(config, dict) and isinstance(test, dict) and isinstance(test.get(gt), dict):
            groups.setdefault(recipe_key(config), []).append((d, config, test))
    lines = []
    for members in groups.values():
        if len(members) < 2:
            continue
        seeds = sorted({(c.get("train") or {}).get("seed") for _, c, _ in members}, key=str)
        parts = []
        for key in ("text_to_image/R@1", "text_to_image/R@10", "image_to_text/R@1", "rsum"):
            s = metrics.seed_spread([t[gt].get(key) for _, _, t in members])
            parts.append(f"{key} {s['mean']:.1f} ± {s['std']:.1f} ({s['min']:.1f}-{s['max']:.1f})")
        runs = f"{len(members)} runs, seeds {seeds}" if len(seeds) < len(members) else f"{len(members)} seeds {seeds}"
        lines.append(f"- {recipe_label(members[0][1])} over {runs}: " + "; ".join(parts))
    if lines:
        lines[:0] = ["", f"Over seeds (same recipe, {gt}-level {split} metrics: mean ± sample sd (min-max)):"]
    return lines


def provenance(run_dirs: list[Path]) -> list[str]:
    """What made each run: the project's commit, library versions, hardware and arithmetic."""
    lines = []
    for d in run_dirs:
        config = read_json(d / "config.json")
        if isinstance(config, dict):
            lines += [f"{d.name}:", *(f"  {x}" for x in describe(config))]
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmodal.report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--gt", choices=["caption", "item", "dedup"], default="caption",
                   help="dedup: the title-deduplicated protocol (on val, records from before it are scored now)")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="val: the chosen checkpoint's validation metrics (to compare recipes without touching test)")
    p.add_argument("--provenance", action="store_true", help="also print what software and hardware made each run")
    a = p.parse_args(argv)
    if a.split == "val":
        print(val_table(a.runs, a.gt))
        spread = differences(a.runs, a.gt, "val") + seed_table(a.runs, a.gt, "val")
        if spread:
            print("\n" + "\n".join(spread))
    else:
        print(table(a.runs, a.gt))
        extra = differences(a.runs, a.gt) + seed_table(a.runs, a.gt)
        if extra:
            print("\n" + "\n".join(extra))
    if a.provenance:
        print("\n" + "\n".join(provenance(a.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
