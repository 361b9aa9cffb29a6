"""Intervals, paired comparisons and seed spreads of the metrics core: seeded bootstrap intervals of the binomial
width, a paired difference that says noise when it is noise, test.json carrying intervals, ranks and the ceiling,
and ``python -m xmodal.report`` showing intervals, saying noise, spreading seeds, comparing recipes on validation
and giving one line per bad run."""
import numpy as np
import pytest

from xmodal.evaluation import metrics


# ---------------------------------------------------------------- intervals, paired tests, seeds

def test_bootstrap_intervals_are_seeded_cover_the_estimate_and_have_the_binomial_width():
    rng = np.random.default_rng(0)
    n = 1010
    ranks = {"text_to_image": rng.integers(1, 3, n), "image_to_text": rng.integers(1, 40, n)}
    ci = metrics.bootstrap_intervals(ranks)
    assert ci == metrics.bootstrap_intervals(ranks)  # seeded: the same interval every time
    point = metrics.summarise(ranks)
    for key, (lo, hi) in ci.items():
        assert lo <= point[key] <= hi, key
    p = point["text_to_image/R@1"] / 100
    half = 1.96 * np.sqrt(p * (1 - p) / n) * 100  # about 3 points at 1,010 queries
    lo, hi = ci["text_to_image/R@1"]
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    assert metrics.bootstrap_intervals({"text_to_image": np.zeros(0), "image_to_text": np.zeros(0)}) == {}


def test_paired_difference_says_noise_when_it_is_noise():
    rng = np.random.default_rng(1)
    n = 1010
    a = {d: rng.integers(1, 20, n) for d in metrics.DIRECTIONS}
    b = {d: r.copy() for d, r in a.items()}
    flip = rng.choice(n, 16, replace=False)  # b gets 16 queries (1.6 points) right that a had wrong
    for d in metrics.DIRECTIONS:
        b[d][flip] = 1
    small = metrics.paired_difference(b, a, "text_to_image/R@1")
    assert small["difference"] > 0 and small["lo"] <= small["difference"] <= small["hi"]
    # 52.5 vs 50.9 on independent queries would be noise; paired, a consistent gain of 16 queries is not
    assert small["different"] is True and small["p"] < 0.05
    c = {d: rng.permutation(r) for d, r in a.items()}  # the same scores, shuffled over queries: unrelated
    noise = metrics.paired_difference(c, a, "rsum")
    assert noise["different"] is False and noise["lo"] < 0 < noise["hi"]
    with pytest.raises(ValueError, match="same queries"):
        metrics.paired_difference(a, {d: r[:-1] for d, r in a.items()})


def test_seed_spread():
    s = metrics.seed_spread([50.0, 52.0, 54.0])
    assert s == {"n": 3, "mean": 52.0, "std": 2.0, "min": 50.0, "max": 54.0}
    assert metrics.seed_spread([1.0])["std"] == 0.0 and metrics.seed_spread([])["n"] == 0


def test_test_json_carries_intervals_ranks_and_the_ceiling(trained_run):
    import json
    test = json.loads((trained_run / "test.json").read_text())
    n = test["gallery_size"]
    for gt in ("item", "caption"):
        for d in metrics.DIRECTIONS:
            assert len(test["ranks"][gt][d]) == n
            lo, hi = test["ci95"][gt][f"{d}/R@1"]
            assert lo <= test[gt][f"{d}/R@1"] <= hi
        assert test[gt] == pytest.approx(metrics.summarise({d: np.array(r) for d, r in test["ranks"][gt].items()}))
    assert "bootstrap" in test["ci_method"] and set(test["item_ceiling"]) >= {"image_to_text/R@1"}
    assert test["unseen_title_item"] is None or "text_to_image/R@1" in test["unseen_title_item"]


# ---------------------------------------------------------------- report: intervals, noise, seeds

def _fake_run(root, name, ranks, seed=0, fingerprint="cat-a", test_ids=None, model="infonce-efficientnet"):
    """A run folder with just what ``report`` reads: config, splits and a test.json scored by the core."""
    import json
    from xmodal.evaluation.scoring import item_level_ceiling  # noqa: F401  (the module that writes test.json)
    d = root / name
    d.mkdir()
    n = len(ranks["text_to_image"])
    test_ids = test_ids or [f"i{j}" for j in range(n)]
    summary = metrics.summarise(ranks)
    (d / "config.json").write_text(json.dumps({
        "model": model, "data": {"fingerprint": fingerprint, "name": "cat"},
        "train": {"seed": seed, "lr": 1e-3, "run_id": name}, "model_config": {"weights_source": "imagenet"}}))
    (d / "splits.json").write_text(json.dumps({"train": [], "val": [], "test": test_ids}))
    (d / "test.json").write_text(json.dumps({
        "gallery_size": n, "caption": summary, "item": summary, "chosen_on": "validation (epoch 3, rsum 1)",
        "ci95": {"caption": metrics.bootstrap_intervals(ranks)},
        "ranks": {"caption": {k: v.tolist() for k, v in ranks.items()}}}))
    return d


def test_report_shows_intervals_says_noise_and_spreads_seeds(tmp_path, capsys):
    from xmodal.evaluation.report import main
    rng = np.random.default_rng(0)
    base = {d: rng.integers(1, 30, 1010) for d in metrics.DIRECTIONS}
    near = {d: r.copy() for d, r in base.items()}
    churn = rng.choice(np.flatnonzero(base["text_to_image"] > 1), 40, replace=False)
    near["text_to_image"][churn[:21]] = 1  # 21 queries gained, 19 lost: +0.2 points, noise
    near["text_to_image"][rng.choice(np.flatnonzero(base["text_to_image"] == 1), 19, replace=False)] = 9
    better = {d: np.where(rng.random(1010) < 0.3, 1, r) for d, r in base.items()}  # +25 points: real
    runs = [_fake_run(tmp_path, "a-s0", base, 0), _fake_run(tmp_path, "a-s1", near, 1),
            _fake_run(tmp_path, "b", better, 0, model="cmpm-efficientnet"),
            _fake_run(tmp_path, "other", base, 0, fingerprint="cat-b")]
    (tmp_path / "broken").mkdir()
    assert main([*map(str, runs), str(tmp_path / "broken")]) == 0
    out = capsys.readouterr().out
    lo, hi = metrics.bootstrap_intervals(base)["text_to_image/R@1"]
    assert f"[{lo:.1f}-{hi:.1f}]" in out  # every recall carries its interval
    line = next(x for x in out.splitlines() if x.startswith("- a-s0 vs a-s1"))
    assert "inside the noise" in line.split(";")[1]  # t2i R@1: 21 gained, 19 lost of 1,010
    line = next(x for x in out.splitlines() if x.startswith("- a-s0 vs b"))
    assert "different" in line and "inside the noise" not in line
    assert "- a-s0 vs other: not compared" in out
    assert "over 2 seeds [0, 1]" in out  # a-s0 and a-s1 are one recipe
    assert "unreadable: no config.json" in out


def test_report_compares_recipes_on_validation_from_the_chosen_checkpoints(trained_run, tmp_path, capsys):
    """--split val pairs runs on their recorded validation ranks (recipes are chosen there, not on test)."""
    import shutil
    from xmodal.evaluation.report import main
    from xmodal.runs import read_best
    copy = tmp_path / "copy"
    shutil.copytree(trained_run, copy)
    assert main(["--split", "val", str(trained_run), str(copy)]) == 0
    out = capsys.readouterr().out
    n = len(read_best(trained_run)["val"]["ranks"]["caption"]["text_to_image"])
    assert f"(the same {n} val queries): rsum +0.0 [+0.0, +0.0], inside the noise" in out
    assert "over 2 runs, seeds [0]" in out


def test_report_gives_one_line_per_bad_run_and_the_table_for_good_ones(trained_run, tmp_path, capsys):
    import json
    import shutil
    from xmodal.evaluation.report import main
    bad = {}
    damaged = (("garbage", b"\xff\xfe{not json"), ("a-list", b"[1, 2]"), ("missing-keys", b'{"caption": {}}'))
    for name, content in damaged:
        d = tmp_path / name
        shutil.copytree(trained_run, d)
        (d / "test.json").write_bytes(content)
        bad[name] = d
    (tmp_path / "a-file").write_text("x")
    assert main([str(trained_run), *map(str, bad.values()), str(tmp_path / "a-file"), str(tmp_path / "nope")]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()
            if line.startswith("| ") and "---" not in line}
    assert "damaged test.json (KeyError" in rows["missing-keys"]
    assert "test.json is damaged (not UTF-8 text)" in rows["garbage"]
    assert "test.json is damaged (not an object)" in rows["a-list"]
    assert "not a run folder" in rows["a-file"] and "not a run folder" in rows["nope"]
    good = json.loads((trained_run / "test.json").read_text())["caption"]["text_to_image/R@1"]
    assert f"| {good:.1f} [" in rows[trained_run.name]
