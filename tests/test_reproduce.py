"""A run folder reproduces: copied elsewhere and evaluated again, it gives the numbers its test.json recorded."""
import shutil

import pytest

from xmodal.evaluation.evaluate import evaluate_run
from xmodal.runs import read_json

# Recalls are shares of 6 test queries (steps of 16.7 points) and ranks are whole numbers: equal within this
# tolerance means every query got the same rank again. Float noise in the embeddings (other thread counts,
# batch sizes) would have to flip a near-tie to move a figure, so none is allowed.
TOLERANCE = 1e-6


def test_a_copied_run_folder_reproduces_its_test_numbers(trained_run, tmp_path):
    copy = tmp_path / "elsewhere" / "copied-run"
    shutil.copytree(trained_run, copy)
    recorded = read_json(copy / "test.json")
    res = evaluate_run(copy)  # the run's own catalogue, found from the copied config.json
    info = res["items"]
    assert info["own_catalogue"] and "recorded test" in info["source"], info
    assert res["gallery_size"] == recorded["gallery_size"]
    for level in ("item", "caption"):
        assert set(recorded[level]) <= set(res[level])
        for key, value in recorded[level].items():
            assert res[level][key] == pytest.approx(value, abs=TOLERANCE), (level, key)
