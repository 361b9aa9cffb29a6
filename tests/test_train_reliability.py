"""The training command under bad flags, bad run folders, stops, kills, a full disk and a second writer.

Every case checks what the user sees (one line, exit code 2 for their own mistakes) and what is left on
disk (nothing written for a refused command; a loadable last good checkpoint after a fault).
"""
from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_SIZE
from xmodal.evaluation.evaluate import main as evaluate_cli
from xmodal.runs import RunLock, read_json, read_lock, read_metrics, read_status
from xmodal.training.cli import main as train_cli


def base(cat: Path, out: Path, run_id: str = "r", model: str = "siamese", epochs: int = 2) -> list[str]:
    return ["--model", model, "--data", str(cat), "--epochs", str(epochs), "--batch-size", "16",
            "--out", str(out), "--run-id", run_id, *TINY_SIZE]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


BAD_FLAGS = [
    (["--epochs", "0"], "--epochs"), (["--epochs", "-3"], "--epochs"),
    (["--batch-size", "0"], "--batch-size"), (["--batch-size", "-8"], "--batch-size"),
    (["--batch-size", "1"], "--batch-size"), (["--embed-dim", "0"], "--embed-dim"),
    (["--lr", "nan"], "--lr"), (["--lr", "inf"], "--lr"), (["--lr", "0"], "--lr"), (["--lr", "-1e-3"], "--lr"),
    (["--weight-decay", "-0.1"], "--weight-decay"), (["--weight-decay", "nan"], "--weight-decay"),
    (["--image-size", "0", "0"], "--image-size"), (["--image-size", "64", "-48"], "--image-size"),
    (["--cmpc-weight", "nan"], "--cmpc-weight"), (["--tune-blocks", "-1"], "--tune-blocks"),
    (["--freeze-epochs", "2"], "--freeze-epochs"), (["--finetune", "--freeze-epochs", "-1"], "--freeze-epochs"),
    (["--seed", "-1"], "--seed"), (["--split-seed", "-5"], "--split-seed"),
    (["--set", "margin=1..0"], "margin"), (["--set", "margin=nan"], "margin"), (["--set", "margin=-2"], "margin"),
    (["--set", "dropout=1.5"], "dropout"), (["--set", "no_such_field=1"], "no_such_field"),
    (["--set", "vocab_size=10"], "vocab_size"), (["--set", "margin"], "FIELD=VALUE"),
    (["--set", "backbone=resnet"], "backbone"), (["--set", "pretrained=maybe"], "pretrained"),
    (["--set", "lstm_dim=abc"], "lstm_dim"), (["--run-id", "../escape"], "--run-id"),
    (["--run-id", ".hidden"], "--run-id"), (["--epochs", "two"], "--epochs"), (["--model", "resnet"], "--model"),
]


@pytest.mark.parametrize("flags,named", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_exit_2_nothing_written(flags, named, tiny_catalogue, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["--model", "siamese", "--data", str(tiny_catalogue), "--out", str(out), *flags]
    try:
        code = train_cli(argv)
    except SystemExit as e:  # argparse's own type errors exit through SystemExit(2)
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and named in err, err
    assert not out.exists() or not any(out.iterdir())


def test_bad_data_paths_are_one_line(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("hello")
    empty_csv = tmp_path / "emptycsv"
    empty_csv.mkdir()
    (empty_csv / "captions.csv").write_text("")
    for data in (tmp_path / "nowhere", a_file, tmp_path, empty_csv):
        assert train_cli(["--model", "siamese", "--data", str(data), "--out", str(tmp_path / "runs")]) == 2
        assert str(data.name) in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_existing_run_id_is_refused_and_left_intact(tiny_catalogue, tmp_path, capsys):
    assert train_cli(base(tiny_catalogue, tmp_path, epochs=1)) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file() and p.name != ".lock"}
    capsys.readouterr()
    other = tmp_path / "other"
    from xmodal.data import generate_demo
    generate_demo(other, n=40, seed=5)
    assert train_cli(base(other, tmp_path, epochs=1)) == 2  # same id, different data
    assert "already exists" in one_error_line(capsys)
    after = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before
    # a bad flag with --overwrite still writes nothing
    assert train_cli([*base(other, tmp_path, epochs=1), "--overwrite", "--lr", "nan"]) == 2
    assert read_json(tmp_path / "r" / "config.json") == json.loads(before["config.json"])
    # --overwrite replaces it, and nothing of the old run is left
    assert train_cli([*base(other, tmp_path, epochs=1), "--overwrite"]) == 0
    config = read_json(tmp_path / "r" / "config.json")
    assert config["data"]["path"] == str(other) and config["data"]["items"] <= 40


def test_resume_flags_other_than_epochs_and_device_are_refused(trained_run, capsys):
    assert train_cli(["--resume", str(trained_run), "--model", "siamese"]) == 2
    assert "--model" in one_error_line(capsys)


def test_resume_of_a_finished_run_changes_nothing(tiny_catalogue, tmp_path, capsys):
    assert train_cli(base(tiny_catalogue, tmp_path, epochs=1)) == 0
    test_before = (tmp_path / "r" / "test.json").read_bytes()
    assert train_cli(["--resume", str(tmp_path / "r")]) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert (tmp_path / "r" / "test.json").read_bytes() == test_before


def test_resume_honours_epochs_and_adds_train_time(tiny_catalogue, tmp_path):
    assert train_cli(base(tiny_catalogue, tmp_path, epochs=1)) == 0
    first = read_json(tmp_path / "r" / "test.json")["train_seconds"]
    assert train_cli(["--resume", str(tmp_path / "r"), "--epochs", "2"]) == 0
    epochs = [r["epoch"] for r in read_metrics(tmp_path / "r") if r["kind"] == "epoch"]
    assert epochs == [1, 2]
    assert read_json(tmp_path / "r" / "config.json")["train"]["epochs"] == 2
    assert read_json(tmp_path / "r" / "test.json")["train_seconds"] > first > 0


def test_stop_during_epoch_1_can_be_resumed(tiny_catalogue, tmp_path, monkeypatch):
    import xmodal.training.cli as train_mod
    real = train_mod.train_one_epoch

    def interrupted(*args, **kw):
        raise KeyboardInterrupt  # Ctrl-C during the first epoch: no last.pt yet
    monkeypatch.setattr(train_mod, "train_one_epoch", interrupted)
    assert train_cli(base(tiny_catalogue, tmp_path)) == 130
    assert not (tmp_path / "r" / "last.pt").exists() and read_status(tmp_path / "r")["state"] == "stopped"
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    assert train_cli(["--resume", str(tmp_path / "r")]) == 0
    assert [r["epoch"] for r in read_metrics(tmp_path / "r") if r["kind"] == "epoch"] == [1, 2]
    assert read_status(tmp_path / "r")["state"] == "finished"


def test_damaged_run_folders_are_one_line(trained_run, tmp_path, capsys):
    cases = {
        "config.json": (b"{not json", "config.json"),
        "last.pt": (b"\x80\x02garbage", "last.pt"),
        "vocab.json": (b"", "vocab.json"),
    }
    for name, (content, named) in cases.items():
        run = tmp_path / f"bad-{name}"
        shutil.copytree(trained_run, run)
        (run / ".lock").unlink(missing_ok=True)
        (run / name).write_bytes(content)
        assert train_cli(["--resume", str(run), "--epochs", "3"]) == 2, name
        assert named in one_error_line(capsys)
    assert train_cli(["--resume", str(tmp_path / "absent")]) == 2
    assert "no such run folder" in one_error_line(capsys)


class Payload:  # any Python object: torch.load(weights_only=True) must refuse to unpickle it
    pass


def test_a_pickle_in_last_pt_is_refused_without_suggesting_unsafe_loading(trained_run, tmp_path, capsys):
    import torch
    run = tmp_path / "pickled"
    shutil.copytree(trained_run, run)
    state = torch.load(run / "last.pt", weights_only=True)
    state["payload"] = Payload()
    torch.save(state, run / "last.pt", pickle_module=pickle)
    assert train_cli(["--resume", str(run), "--epochs", "3"]) == 2
    line = one_error_line(capsys)
    assert "refused: this file is not a safe checkpoint" in line and "weights_only=False" not in line


def test_resume_needs_the_same_catalogue(tiny_catalogue, tmp_path, capsys):
    cat = tmp_path / "cat"
    shutil.copytree(tiny_catalogue, cat)
    assert train_cli(base(cat, tmp_path / "runs", epochs=1)) == 0
    lines = (cat / "captions.csv").read_text().splitlines(keepends=True)
    (cat / "captions.csv").write_text("".join(lines[:-1]))  # one product removed
    assert train_cli(["--resume", str(tmp_path / "runs" / "r"), "--epochs", "2"]) == 2
    assert "changed since run" in one_error_line(capsys)


def test_lock_one_writer_per_run_folder(trained_run, tmp_path, capsys):
    run = tmp_path / "locked"
    shutil.copytree(trained_run, run)
    assert read_lock(run) is None
    with RunLock.acquire(run, command="test holder"):
        holder = read_lock(run)
        assert holder["pid"] == os.getpid() and holder["command"] == "test holder"
        assert train_cli(["--resume", str(run), "--epochs", "3"]) == 2
        assert f"in use by process {os.getpid()}" in one_error_line(capsys)
    assert read_lock(run) is None


def test_a_lock_left_by_a_killed_process_is_free(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code = ("import sys, time; from xmodal.runs import RunLock; RunLock.acquire(sys.argv[1], 'child'); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE)
    assert proc.stdout.readline().strip() == b"held"
    assert read_lock(run)["pid"] == proc.pid
    proc.kill()
    proc.wait()
    assert read_lock(run) is None  # the kernel dropped the flock with the process
    RunLock.acquire(run).release()


def test_disk_full_keeps_the_last_good_checkpoint(tiny_catalogue, tmp_path, monkeypatch, capsys):
    import xmodal.runs as runs_mod
    real = runs_mod.atomic_write_bytes

    def full_disk(path, data):
        if Path(path).name == "last.pt" and (Path(path).parent / "last.pt").exists():  # epoch 2's save
            tmp = Path(path).with_name(f".{Path(path).name}.{os.getpid()}.tmp")
            tmp.write_bytes(data[: len(data) // 2])
            try:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            finally:
                tmp.unlink()  # what atomic_write_bytes does on failure
        return real(path, data)
    monkeypatch.setattr(runs_mod, "atomic_write_bytes", full_disk)
    assert train_cli(base(tiny_catalogue, tmp_path, epochs=3)) == 1
    err = capsys.readouterr().err
    assert "disk full" in err and "Traceback" not in err
    run = tmp_path / "r"
    status = read_status(run)
    assert status["state"] == "failed" and "disk full" in status["error"]
    assert not list(run.glob(".*.tmp"))
    import torch
    assert int(torch.load(run / "last.pt", weights_only=True)["epoch"]) == 1
    monkeypatch.setattr(runs_mod, "atomic_write_bytes", real)
    assert train_cli(["--resume", str(run)]) == 0  # space freed: the run carries on from epoch 1
    assert [r["epoch"] for r in read_metrics(run) if r["kind"] == "epoch"] == [1, 2, 3]


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path, monkeypatch):
    from xmodal import runs as runs_mod
    target = tmp_path / "x.json"
    runs_mod.atomic_write_json(target, {"a": 1})

    def broken_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        runs_mod.atomic_write_json(target, {"a": 2})
    assert read_json(target) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_best_weights_carry_their_own_record(trained_run):
    from xmodal.runs import read_best
    best = read_best(trained_run)
    assert best["epoch"] == read_json(trained_run / "best.json")["epoch"]
    (trained_run / "best.json").rename(trained_run / "best.json.bak")
    try:
        assert read_best(trained_run)["epoch"] == best["epoch"]  # the weights file alone says it
    finally:
        (trained_run / "best.json.bak").rename(trained_run / "best.json")


@pytest.mark.slow
def test_resume_with_a_cold_feature_cache_extracts_imagenet_features(tiny_catalogue, tmp_path, monkeypatch):
    """Regression: --resume used to extract features from a random backbone before loading last.pt."""
    import numpy as np
    import torch

    import xmodal.training.cli as train_mod
    from xmodal.image.backbones import create_backbone, image_transform
    from xmodal.image.extraction import extract_features
    from xmodal.data import load_catalogue
    real = train_mod.train_one_epoch

    def stop_at_2(*args, **kw):
        if args[6] == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)
    monkeypatch.setattr(train_mod, "train_one_epoch", stop_at_2)
    assert train_cli(base(tiny_catalogue, tmp_path, model="cmpm-efficientnet")) == 130
    cache = tmp_path / "cold-cache"
    monkeypatch.setenv("XMODAL_CACHE", str(cache))  # another machine, or a cleared cache
    seen = []
    real_extract = train_mod.catalogue_features

    def spy(model, cat, device, progress=True):
        feats = real_extract(model, cat, device, progress)
        seen.append(feats)
        return feats
    monkeypatch.setattr(train_mod, "catalogue_features", spy)
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    assert train_cli(["--resume", str(tmp_path / "r")]) == 0
    cat = load_catalogue(tiny_catalogue)
    backbone, source = create_backbone("efficientnet")
    assert source and "imagenet" in source
    ref = extract_features(backbone, [cat.image_path(i) for i in range(4)], image_transform("efficientnet", (64, 48)),
                           torch.device("cpu"), progress=False)
    assert seen and np.allclose(seen[0][:4].numpy(), ref, atol=1e-4)


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


@pytest.mark.slow
@pytest.mark.parametrize("when", ["epoch 1", "mid-run"])
def test_kill_9_then_resume_finishes(when, tiny_catalogue, tmp_path):
    run = tmp_path / "r"
    argv = [sys.executable, "-m", "xmodal.train", *base(tiny_catalogue, tmp_path, model="corrnet", epochs=3),
            "--batch-size", "8"]
    proc = subprocess.Popen(argv, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "the run did not get there in time"
        status = read_json(run / "status.json") or {}
        if when == "epoch 1" and status.get("phase") == "training" and status.get("epoch") == 1:
            break
        if when == "mid-run" and status.get("epoch") == 2 and (run / "last.pt").is_file():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read_status(run)["state"] == "failed"  # the process is gone: never shown as running
    assert read_lock(run) is None
    assert train_cli(["--resume", str(run)]) == 0  # here: the killed process is gone, its lock with it
    assert [r["epoch"] for r in read_metrics(run) if r["kind"] == "epoch"] == [1, 2, 3]
    steps = [(r["epoch"], r["step"]) for r in read_metrics(run) if r["kind"] == "step"]
    assert len(steps) == len(set(steps))


@pytest.mark.slow
def test_two_processes_on_one_run_folder_then_sigterm_keeps_the_last_epoch(tiny_catalogue, tmp_path, capsys):
    """A run training in another process holds its folder: this process (the CLI's ``main``) can neither resume
    it nor start another run under its id. Once it has finished an epoch, SIGTERM stops it cleanly (exit 130,
    "stopped" with how to resume, the folder free) keeping that epoch; one process serves both, as each pays
    seconds of imports."""
    import torch
    run = tmp_path / "r"
    args = [*base(tiny_catalogue, tmp_path, model="corrnet", epochs=200), "--batch-size", "8"]
    first = subprocess.Popen([sys.executable, "-m", "xmodal.train", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})  # leave us a core
    try:
        deadline = time.time() + 240
        while read_lock(run) is None or not (run / "config.json").is_file():  # under way: a run folder, locked
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            assert time.time() < deadline
            time.sleep(0.05)
        assert train_cli(["--resume", str(run)]) == 2  # each refused before it trains
        assert f"in use by process {first.pid}" in one_error_line(capsys)
        assert train_cli(args) == 2
        assert "already exists" in one_error_line(capsys)
        assert read_lock(run)["pid"] == first.pid and first.poll() is None
        while not (run / "last.pt").is_file():  # an epoch finished
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "no epoch finished in time"
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 130
    status = read_status(run)
    assert status["state"] == "stopped" and "resume" in status["message"] and read_lock(run) is None
    assert int(torch.load(run / "last.pt", weights_only=True)["epoch"]) >= 1


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


def test_foreign_lock_and_status_files_never_crash_readers(tmp_path):
    from xmodal.runs import read_status
    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text('{"state": "running", "epoch": "three", "loss": NaN, "pid": "x"}')
    status = read_status(run)
    assert "epoch" not in status and "loss" not in status and status["state"] == "running"
    (run / "status.json").write_text('["not", "an", "object"]')
    assert read_status(run)["state"] == "unknown"
    (run / "status.json").write_text('{"state": "exploded"}')
    assert read_status(run)["state"] == "unknown"
    # any bytes: not UTF-8, nested past the recursion limit, a folder where the file should be
    from xmodal.runs import list_runs, read_json, read_metrics
    (run / "status.json").write_bytes(b'{"state": "fin\xff\xfeished"}')
    assert read_status(run) == {"state": "unknown", "error": "status.json is damaged (not UTF-8 text)"}
    (run / "status.json").write_text("[" * 100_000)
    assert read_status(run)["error"] == "status.json is damaged (not JSON)"
    (run / "metrics.jsonl").write_bytes(b'{"kind": "epoch", "epoch": 1}\n\xff\xfe garbage\n[1, 2]\n{"kind": "step"}\n')
    assert read_metrics(run) == [{"kind": "epoch", "epoch": 1}, {"kind": "step"}]
    (run / "config.json").mkdir()
    assert read_json(run / "config.json", default="d") == "d" and list_runs(tmp_path) == []
    (run / "config.json").rmdir()
    (run / "config.json").write_text('["a", "list"]')
    assert list_runs(tmp_path) == []
    (run / ".lock").write_text("[]")
    assert read_lock(run) is None  # nobody holds it
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); fcntl.flock(fd, fcntl.LOCK_EX); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run / ".lock")], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"held"
        assert read_lock(run) == {"pid": None, "host": None, "started": None, "command": ""}
        with pytest.raises(Exception, match="in use by process"):
            RunLock.acquire(run)
    finally:
        proc.kill()
        proc.wait()


def test_checkpoints_written_in_the_background_hold_the_epoch_they_were_taken_at(tmp_path):
    """The loop hands its checkpoint to a writer thread and trains on: the file holds the state at the
    hand-over (a copy), a failed write is raised in the loop's thread by the next hand-over, and close waits."""
    import threading

    import torch

    from xmodal.runs import BackgroundWriter, save_torch, snapshot
    weights = {"w": torch.zeros(4), "nested": {"state": [torch.ones(2)], "step": 1}}
    copy = snapshot(weights)
    assert copy["w"].data_ptr() != weights["w"].data_ptr() and copy["nested"]["step"] == 1
    release = threading.Event()
    writer = BackgroundWriter()

    def slow_save(path, obj):
        release.wait(5)
        save_torch(path, obj)
    writer.submit(slow_save, tmp_path / "last.pt", copy)
    weights["w"].add_(7)  # the next epoch's steps change the live tensors while the write waits
    weights["nested"]["state"][0].mul_(3)
    release.set()
    writer.wait()
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["w"].tolist() == [0.0] * 4 and saved["nested"]["state"][0].tolist() == [1.0, 1.0]

    def full(*_):
        raise OSError(errno.ENOSPC, "No space left on device", "last.pt")
    writer.submit(full)
    with pytest.raises(OSError, match="No space"):
        writer.submit(save_torch, tmp_path / "other.pt", copy)  # the failure surfaces at the next hand-over
    writer.submit(full)
    with pytest.raises(OSError):
        writer.close()


# ---------------------------------------------------------------- non-finite values stop the run

@pytest.mark.parametrize("when", ["last step", "first step"])
def test_weights_that_turn_nan_stop_the_run_and_keep_the_last_good_checkpoint(when, tiny_catalogue, tmp_path,
                                                                              monkeypatch, capsys):
    """Regression: a weight made NaN by the last step of the last epoch was validated, could be chosen as the
    best checkpoint and was tested. Now the step that made it stops the run, naming it, before any of that."""
    import torch
    from safetensors.torch import load_file

    import xmodal.training.cli as train_mod
    from xmodal.runs import read_best
    real_optimizer, real_epoch = train_mod.make_optimizer, train_mod.train_one_epoch
    now: dict = {}

    def poisoned_optimizer(model, *args, **kw):
        opt, sched = real_optimizer(model, *args, **kw)
        name, param = next((n, p) for n, p in model.named_parameters() if p.requires_grad)
        now["name"] = name

        def hook(*_):  # after the optimiser step: as if AdamW had overflowed this weight
            now["step"] += 1
            if now["epoch"] == 2 and now["step"] == (now["steps"] if when == "last step" else 1):
                with torch.no_grad():
                    param.view(-1)[0] = float("nan")
        opt.register_step_post_hook(hook)
        return opt, sched

    def counted_epoch(*args, **kw):
        now.update(epoch=args[6], steps=len(args[2]), step=0)
        return real_epoch(*args, **kw)
    monkeypatch.setattr(train_mod, "make_optimizer", poisoned_optimizer)
    monkeypatch.setattr(train_mod, "train_one_epoch", counted_epoch)
    assert train_cli(base(tiny_catalogue, tmp_path, epochs=2)) == 1
    step = now["steps"] if when == "last step" else 1
    line = one_error_line(capsys)
    assert f"parameter {now['name']} became non-finite" in line and f"epoch 2 step {step}" in line, line
    run = tmp_path / "r"
    status = read_status(run)
    assert status["state"] == "failed" and len(status["error"].splitlines()) == 1
    assert f"{now['name']}" in status["error"] and f"epoch 2 step {step}" in status["error"]
    assert "last good checkpoint is kept (best.safetensors from epoch 1" in status["error"]
    assert read_best(run)["epoch"] == 1
    assert all(bool(t.isfinite().all()) for t in load_file(run / "best.safetensors").values())
    last = torch.load(run / "last.pt", weights_only=True)
    assert int(last["epoch"]) == 1 and all(bool(t.isfinite().all()) for t in last["model"].values())
    assert not (run / "test.json").exists()
    assert [r["epoch"] for r in read_metrics(run) if r["kind"] == "epoch"] == [1]


def _toy_epoch(bad_steps: set[int], steps: int = 6):
    """``train_one_epoch`` over ``steps`` toy batches whose gradients are NaN at ``bad_steps``; the weights seen
    after each step."""
    import torch

    from xmodal.training.distributed import DistContext
    from xmodal.training.loop import train_one_epoch

    class Toy(torch.nn.Module):  # one layer and a loss: enough for train_one_epoch
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(4, 2)

        def forward(self, images, tokens):
            return {"out": self.w(images)}

        @staticmethod
        def loss(out, labels):
            return {"mse": (out["out"] ** 2).mean()}
    torch.manual_seed(0)
    model = Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loader = [(torch.randn(8, 4), torch.ones(8, 3, dtype=torch.long), torch.zeros(8, dtype=torch.long))
              for _ in range(steps)]
    seen, step = [], [0]

    def poison(grad):
        step[0] += 1
        return grad * float("nan") if step[0] in bad_steps else grad
    model.w.weight.register_hook(poison)
    means = train_one_epoch(model, model.loss, loader, opt, sched, torch.device("cpu"), 1,
                            lambda *a: seen.append(model.w.weight.detach().clone()), DistContext(), progress=False)
    return means, seen


def test_a_step_with_a_nonfinite_gradient_norm_is_skipped():
    import torch
    means, seen = _toy_epoch({3, 5})
    assert means["skipped_steps"] == 2
    assert all(bool(w.isfinite().all()) for w in seen)
    assert torch.equal(seen[2], seen[1]) and torch.equal(seen[4], seen[3])  # no step taken there
    assert not torch.equal(seen[3], seen[2]) and not torch.equal(seen[1], seen[0])  # the others stepped


def test_nonfinite_gradients_in_a_row_stop_the_run():
    from xmodal.training.loop import MAX_SKIPPED_STEPS, NonFiniteError
    with pytest.raises(NonFiniteError, match=f"gradient norm was nan for {MAX_SKIPPED_STEPS} steps in a row "
                                             r"\(epoch 1, steps 2-4\)"):
        _toy_epoch({2, 3, 4})


def test_xmodal_precision_sets_the_default_and_the_flag_wins(tiny_catalogue, tmp_path, monkeypatch, capsys):
    from xmodal.training.args import parse_args
    monkeypatch.delenv("XMODAL_PRECISION", raising=False)  # the suite may itself run under XMODAL_PRECISION
    assert parse_args([]).cfg.precision == "auto"
    for value in ("fp32", "bf16", " BF16 ", "auto"):
        monkeypatch.setenv("XMODAL_PRECISION", value)
        assert parse_args([]).cfg.precision == value.strip().lower()
        assert parse_args(["--precision", "fp32"]).cfg.precision == "fp32"
    monkeypatch.setenv("XMODAL_PRECISION", "fp16")
    out = tmp_path / "runs"
    assert train_cli(base(tiny_catalogue, out)) == 2
    line = one_error_line(capsys)
    assert "XMODAL_PRECISION='fp16'" in line and "auto, fp32, bf16" in line
    assert not out.exists()
    assert parse_args(["--precision", "bf16"]).cfg.precision == "bf16"  # the flag wins: the variable is not read
