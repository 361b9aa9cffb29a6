"""Runs and catalogues as plain functions: a bad catalogue folder said in one line, a run's lock holder named,
runs grouped by catalogue, run health (failed, training, collapsed, near chance), pending runs, notes and tags,
config diffs, and deleting and resuming a run."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from xmodal.dashboard import analysis, catalogues, checks, runmeta
from xmodal.dashboard.jobs import training as jobs


# ---------------------------------------------------------------- bad catalogue folders, run locks

def test_folder_problem_says_what_is_wrong(tmp_path, tiny_catalogue):
    assert checks.folder_problem("demo") is None and checks.folder_problem(str(tiny_catalogue)) is None
    assert "does not exist" in checks.folder_problem(str(tmp_path / "nowhere"))
    (tmp_path / "a-file").write_text("x")
    assert "is a file, not a folder" in checks.folder_problem(str(tmp_path / "a-file"))
    (tmp_path / "empty").mkdir()
    assert "no captions.csv" in checks.folder_problem(str(tmp_path / "empty"))


def test_load_problem_is_one_line_with_what_to_do():
    line = checks.load_problem("/data/cat", ValueError("captions.csv lacks column(s) ['caption']\n  found x"))
    assert "\n" not in line and line.startswith("The catalogue /data/cat cannot be used: captions.csv lacks")
    assert line.endswith(checks.WHAT_TO_DO)
    assert checks.load_problem("x", OSError()) == f"The catalogue x cannot be used: OSError. {checks.WHAT_TO_DO}"


def test_lock_holder_names_the_live_holder(tmp_path, monkeypatch):
    import xmodal.runs
    monkeypatch.delattr(xmodal.runs, "read_lock", raising=False)
    assert analysis.lock_holder(tmp_path) == ""  # a version of xmodal.runs without locks
    started = time.time() - 65
    locks = {"held": {"pid": 4242, "host": "box", "started": started, "command": "python -m xmodal.train"},
             "no-time": {"pid": 7, "host": "box", "started": None}}
    def read_lock(run_dir):
        if run_dir.name == "broken":
            raise ValueError("not JSON")
        return locks.get(run_dir.name)
    monkeypatch.setattr(xmodal.runs, "read_lock", read_lock, raising=False)
    since = time.strftime("%H:%M:%S", time.localtime(started))
    assert analysis.lock_holder(tmp_path / "held", now=started + 65) == f"4242@box since {since} (1m05s ago)"
    assert analysis.lock_holder(tmp_path / "no-time") == "7@box"
    assert analysis.lock_holder(tmp_path / "free") == "" and analysis.lock_holder(tmp_path / "broken") == ""


def test_lock_holder_reads_a_live_run_lock(tmp_path):
    import socket

    import xmodal.runs
    if not hasattr(xmodal.runs, "RunLock"):
        pytest.skip("this xmodal.runs has no run-folder locks")
    assert analysis.lock_holder(tmp_path) == ""  # never locked
    with xmodal.runs.RunLock.acquire(tmp_path, "python -m xmodal.train"):
        held = analysis.lock_holder(tmp_path)
    assert held.startswith(f"{os.getpid()}@{socket.gethostname()} since ") and held.endswith(" ago)"), held
    assert analysis.lock_holder(tmp_path) == ""  # released


# ---------------------------------------------------------------- catalogues, health, run management

def _info(path: Path, fp: str = "f" * 16, name: str = "demo", state_: str = "finished", test: dict | None = None,
          created: float = 0.0):
    from xmodal.runs import RunInfo
    config = {"model": "siamese", "created": created, "data": {"name": name, "path": f"/data/{name}",
                                                               "fingerprint": fp, "items": 2000}}
    return RunInfo(path, config, {"state": state_}, test, None)


def test_runs_are_grouped_by_catalogue(tmp_path):
    runs = [_info(tmp_path / "a", "1" * 16), _info(tmp_path / "b", "2" * 16, name="/x/myntra"),
            _info(tmp_path / "c", "1" * 16), _info(tmp_path / "d", "3" * 16)]  # demo regenerated: another print
    groups = catalogues.group_runs(runs)
    assert list(groups) == ["demo-1111111111", "myntra-2222222222", "demo-3333333333"]
    assert [r.path.name for r in groups["demo-1111111111"]] == ["a", "c"]
    assert catalogues.describe(groups["demo-1111111111"]) == "demo · 2,000 products · 2 runs · fingerprint 1111111111"
    assert catalogues.catalogue_id({}).key == "?-unknown"


def test_health_flags_failed_training_collapsed_and_chance_runs(tmp_path):
    good = {"item": {"text_to_image/R@10": 40.0, "image_to_text/R@10": 35.0}, "gallery_size": 200,
            "caption": {"rsum": 200.0}}
    chance = {"item": {"text_to_image/R@10": 6.0, "image_to_text/R@10": 9.0}, "gallery_size": 200,
              "caption": {"rsum": 20.0}}
    flat = [{"kind": "step", "epoch": 1, "step": i, "loss": 5.0} for i in range(20)]
    assert catalogues.health(_info(tmp_path, test=good)) is None
    assert catalogues.health(_info(tmp_path, state_="failed", test=good)) == "failed"
    assert catalogues.health(_info(tmp_path, state_="running")) == "training"
    assert catalogues.health(_info(tmp_path)) == "no test metrics yet"
    assert "near chance" in catalogues.health(_info(tmp_path, test=chance))
    collapsed = flat + [{"kind": "epoch", "epoch": 1, "pos_sim": 0.9, "neg_sim": 0.9}]
    assert catalogues.health(_info(tmp_path, test=good), collapsed).startswith("collapsed: flat loss")
    apart = flat + [{"kind": "epoch", "epoch": 1, "pos_sim": 0.6, "neg_sim": 0.1}]
    runs = [_info(tmp_path / "x", test=chance), _info(tmp_path / "y", test=good),
            _info(tmp_path / "z", test={**good, "caption": {"rsum": 300.0}})]
    picked = catalogues.default_runs(runs, lambda r: apart)
    assert [r.path.name for r in picked] == ["z", "y"]  # healthy only, best rsum first
    assert catalogues.default_runs(runs, lambda r: collapsed) == []


def test_pending_runs_show_their_model_and_phase(tmp_path):
    young = tmp_path / "siamese-young"
    young.mkdir()
    jobs.write_launch(young, jobs.TrainJob(model="siamese", data="demo"))
    (young / "status.json").write_text(json.dumps({"state": "running", "phase": "extracting image features",
                                                   "pid": os.getpid(), "host": __import__("socket").gethostname()}))
    done = tmp_path / "done"
    done.mkdir()
    (done / "status.json").write_text(json.dumps({"state": "finished"}))
    (done / "config.json").write_text("{}")
    (pending,) = catalogues.pending_runs(tmp_path)
    assert (pending.run_id, pending.model, pending.data) == ("siamese-young", "siamese", "demo")
    assert pending.status["phase"] == "extracting image features"
    before = catalogues.runs_signature(tmp_path)
    (young / "config.json").write_text("{}")
    assert catalogues.runs_signature(tmp_path) != before  # the sidebar's poll reruns the page


def test_notes_and_tags_are_stored_atomically_and_bounded(tmp_path):
    assert runmeta.read_meta(tmp_path) == {"notes": "", "tags": [], "hidden": False}
    meta = runmeta.write_meta(tmp_path, notes="lr 1e-3\nbaseline <b>", tags=" best , <script>, best,, x\x00y ")
    assert meta == {"notes": "lr 1e-3\nbaseline <b>", "tags": ["best", "<script>", "xy"], "hidden": False}
    assert runmeta.write_meta(tmp_path, hidden=True)["tags"] == ["best", "<script>", "xy"]
    assert runmeta.read_meta(tmp_path)["hidden"] and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match="characters"):
        runmeta.write_meta(tmp_path, notes="x" * (runmeta.MAX_NOTES + 1))
    assert len(runmeta.clean_tags([f"t{i}" for i in range(50)])) == runmeta.MAX_TAGS
    (tmp_path / runmeta.META_FILE).write_text('{"notes": 5, "tags": "x", "hidden": "yes"}')
    assert runmeta.read_meta(tmp_path) == {"notes": "", "tags": [], "hidden": False}


def test_config_diff_lists_what_differs():
    a = {"run_id": "a", "created": 1, "model": "siamese", "train": {"lr": 0.001, "epochs": 8, "out": "x"},
         "data": {"fingerprint": "1", "report": {"rows": 3}}}
    b = {"run_id": "b", "created": 2, "model": "corrnet", "train": {"lr": 0.001, "epochs": 12, "out": "y",
                                                                    "finetune": True}, "data": {"fingerprint": "1"}}
    assert runmeta.config_diff(a, b) == [{"setting": "model", "a": "siamese", "b": "corrnet"},
                                         {"setting": "train.epochs", "a": "8", "b": "12"},
                                         {"setting": "train.finetune", "a": "—", "b": "True"}]
    assert runmeta.config_diff(a, a) == []


def test_delete_refuses_a_locked_running_or_foreign_folder(tmp_path):
    from xmodal.runs import RunLock
    root = tmp_path / "ckpt"
    run = root / "r1"
    run.mkdir(parents=True)
    (run / "config.json").write_text("{}")
    with RunLock.acquire(run, "python -m xmodal.train"):
        assert "holds its lock" in runmeta.delete_problem(run, root)
        with pytest.raises(ValueError, match="not deleted"):
            runmeta.delete_run(run, root)
    assert run.is_dir()
    (run / "status.json").write_text(json.dumps({"state": "running", "pid": os.getpid(),
                                                 "host": __import__("socket").gethostname()}))
    assert "running" in runmeta.delete_problem(run, root)
    (run / "status.json").write_text(json.dumps({"state": "stopped"}))
    assert "not a folder of the checkpoints" in runmeta.delete_problem(run, tmp_path)
    (root / "not-a-run").mkdir()
    assert "not a run folder" in runmeta.delete_problem(root / "not-a-run", root)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (root / "link").symlink_to(target, target_is_directory=True)
    runmeta.delete_run(root / "link", root)
    assert target.is_dir() and not (root / "link").exists()  # a link: only the link goes
    runmeta.delete_run(run, root)
    assert not run.exists()


def test_resume_launches_the_trainer_for_a_stopped_run(tmp_path, monkeypatch):
    run = tmp_path / "r"
    run.mkdir()
    assert "only a stopped or failed" in jobs.can_resume(run, {"state": "finished"})
    assert "no config.json" in jobs.can_resume(run, {"state": "stopped"})
    (run / "config.json").write_text("{}")
    (run / "status.json").write_text(json.dumps({"state": "stopped"}))
    launched = []

    class Proc:
        pid = 12345
    monkeypatch.setattr(jobs, "spawn", lambda cmd, log: launched.append((cmd, log)) or Proc())
    jobs.resume_training(run)
    ((cmd, log),) = launched
    assert cmd[1:] == ["-m", "xmodal.train", "--resume", str(run.resolve())] and log.name == jobs.LOG_NAME
    assert json.loads((run / "status.json").read_text())["phase"] == "resuming"
    with pytest.raises(ValueError, match="cannot be resumed"):
        jobs.resume_training(tmp_path / "nowhere")
