"""The training command under faults: one writer per run folder (a lock, freed when its process is killed), a full
disk that keeps the last good checkpoint, atomic writes, best weights that carry their own record, ``kill -9``
then resume, a second process and SIGTERM, foreign lock and status files, and checkpoints written in the
background. What is left on disk after each is a loadable last good checkpoint."""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from train_kit import base, one_error_line
from xmodal.runs import RunLock, read_json, read_lock, read_metrics, read_status
from xmodal.training.cli import main as train_cli


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
