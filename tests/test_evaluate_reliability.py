"""``python -m xmodal.evaluate`` on a run whose catalogue changed after training (items matched by id, with or
without an item_id column) or whose run folder is damaged (one line, exit 2)."""
from __future__ import annotations

import json
import shutil

from train_kit import base, one_error_line
from xmodal.evaluation.evaluate import main as evaluate_cli
from xmodal.runs import read_json
from xmodal.training.cli import main as train_cli


def test_evaluate_on_a_changed_catalogue_matches_items_by_id(tiny_catalogue, tmp_path, capsys):
    cat = tmp_path / "cat"
    shutil.copytree(tiny_catalogue, cat)
    assert train_cli(base(cat, tmp_path / "runs", epochs=1)) == 0
    run = tmp_path / "runs" / "r"
    splits = read_json(run / "splits.json")
    lines = (cat / "captions.csv").read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    first_train = splits["train"][0]
    kept = [r for r in rows if first_train not in r.split(",")]  # one training product removed
    assert len(kept) == len(rows) - 1
    (cat / "captions.csv").write_text(header + "".join(kept))
    capsys.readouterr()
    assert evaluate_cli(["--run", str(run), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["gallery_size"] == len(splits["test"])  # the same test items, none of train or val
    assert "recorded test split" in res["protocol"] and res["items"]["gone_since_training"] == 0


def test_evaluate_rejects_damaged_run_folders_in_one_line(trained_run, tmp_path, capsys):
    for name, content in (("config.json", '{"model": "siamese"}'), ("splits.json", "[]"), ("vocab.json", "{")):
        run = tmp_path / f"bad-{name}"
        shutil.copytree(trained_run, run)
        (run / name).write_text(content)
        assert evaluate_cli(["--run", str(run)]) == 2, name
        one_error_line(capsys)


def test_evaluate_without_an_item_id_column_survives_a_removed_row(tiny_catalogue, tmp_path, capsys):
    """Ids default to the image path, so removing one csv row moves no item between splits."""
    import csv
    cat = tmp_path / "cat"
    shutil.copytree(tiny_catalogue, cat)
    with open(cat / "captions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cols = [c for c in rows[0] if c != "item_id"]

    def write(rs):
        with open(cat / "captions.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            w.writeheader()
            w.writerows(rs)
    write(rows)
    assert train_cli(base(cat, tmp_path / "runs", epochs=1)) == 0
    run = tmp_path / "runs" / "r"
    splits = read_json(run / "splits.json")
    assert splits["test"][0].endswith((".jpg", ".png"))  # the image path is the id
    write(rows[1:])  # the first csv row removed: every later row moves up one line
    capsys.readouterr()
    assert evaluate_cli(["--run", str(run), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    gone = res["items"]["gone_since_training"]
    assert res["gallery_size"] == len(splits["test"]) - gone and gone in (0, 1)
    assert res["items"]["new_since_training"] == 0
