"""The optional loss terms of the dual encoders: the hardest-negative hinge after its warm-up, and attribute
heads fed from the catalogue's columns (issue 22's candidates; their effect is measured in docs/quality.md)."""
import json

import numpy as np
import pytest

from conftest import TINY_SIZE
from xmodal.training.attributes import attribute_classes


def test_attribute_classes_keep_usable_columns_only():
    attributes = {"gender": ["Men", "women", "Women ", "", "Men", "NA"],  # case and spaces fold; blanks are missing
                  "title": [f"t{i}" for i in range(6)],  # would be 6 classes of 6 rows: kept (<= 100) ...
                  "season": ["", "", "", "", "Fall", "Summer"],  # filled for a third of the rows: dropped
                  "usage": ["Casual"] * 6}  # one value: nothing to learn, dropped
    classes, ids = attribute_classes(attributes, np.arange(6))
    assert classes == {"gender": 2, "title": 6}
    assert ids[:, 0].tolist() == [0, 1, 1, -1, 0, -1]  # sorted values: men 0, women 1
    # ... but a column naming more values than MAX_CLASSES is an identifier
    many = {"code": [str(i) for i in range(150)], "gender": ["M", "F"] * 75}
    assert attribute_classes(many, np.arange(150))[0] == {"gender": 2}


@pytest.mark.slow
def test_hinge_warms_up_and_attribute_heads_train(tiny_catalogue, tmp_path):
    from xmodal.training.cli import main
    assert main(["--model", "infonce-efficientnet", "--data", str(tiny_catalogue), "--epochs", "2", "--batch-size",
                 "16", "--out", str(tmp_path), "--run-id", "aux", "--snapshots", "0", *TINY_SIZE,
                 "--set", "hard_weight=1", "--set", "hard_warmup=0.5", "--set", "attr_weight=0.5"]) == 0
    run = tmp_path / "aux"
    classes = json.loads((run / "config.json").read_text())["model_config"]["attr_classes"]
    assert classes["gender"] == 3 and "colour" in classes  # the demo's columns, counted on the train split
    steps = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "step"]
    first = {k for r in steps if r["epoch"] == 1 for k in r}
    second = {k for r in steps if r["epoch"] == 2 for k in r}
    assert {"attr_image", "attr_text"} <= first and not {"hard_i2t", "hard_t2i"} & first  # warm-up: no hinge yet
    assert {"hard_i2t", "hard_t2i", "attr_image", "attr_text"} <= second
    from xmodal import load_run  # the heads are training-only: the run loads and searches as any other
    assert len(load_run(run).search_text("blue shirt", k=3)) == 3


@pytest.mark.parametrize("flag", ["hard_weight=1", "attr_weight=0.5"])
def test_dual_only_terms_are_refused_for_siamese(flag, capsys):
    from xmodal.training.cli import main
    assert main(["--model", "siamese", "--data", "demo", "--set", flag]) == 2
    assert "dual encoders" in capsys.readouterr().err
