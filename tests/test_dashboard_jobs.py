"""The dashboard's jobs: training commands and run ids, devices, a failed launch, the training queue, a run's
progress read from its log, background tasks (progress, a dead child, one task per folder) and warm children
that run a module like ``python -m``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from xmodal.dashboard.maps import embeds, projection
from xmodal.dashboard.jobs import training as jobs, tasks
from xmodal.runs import read_status


# ---------------------------------------------------------------- jobs

def test_train_command_and_unique_ids(tmp_path):
    job = jobs.TrainJob(model="siamese", data="demo", epochs=3, batch_size=64, lr=5e-4, finetune=True,
                        device="cpu", run_id="r1")
    cmd = job.command(tmp_path)
    assert cmd[1:3] == ["-m", "xmodal.train"]
    for flag, value in [("--model", "siamese"), ("--epochs", "3"), ("--batch-size", "64"), ("--device", "cpu"),
                        ("--out", str(tmp_path)), ("--run-id", "r1")]:
        assert cmd[cmd.index(flag) + 1] == value
    assert "--finetune" in cmd and float(cmd[cmd.index("--lr") + 1]) == 5e-4
    assert len({jobs.unique_run_id("siamese") for _ in range(50)}) == 50
    assert {j.model for j in jobs.demo_jobs()} == set(jobs.DEMO_EPOCHS)
    assert "cuda" not in jobs.device_options() or torch.cuda.is_available()


def test_device_options_skip_torch_without_gpu_signs(monkeypatch):
    monkeypatch.setattr(jobs, "gpu_may_exist", lambda: False)
    assert jobs.device_options() == ["auto", "cpu"]


def _wait(pred, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_a_failed_launch_reports_its_error(tmp_path):
    run_dir = jobs.start_training(jobs.TrainJob(model="siamese", data=str(tmp_path / "nowhere"), epochs=1), tmp_path)
    assert read_status(run_dir)["state"] == "running"  # visible at once
    assert _wait(lambda: (jobs.reap(), read_status(run_dir)["state"])[1] == "failed")
    status = read_status(run_dir)
    assert "captions.csv" in (status.get("error") or "") + jobs.failure_detail(run_dir)
    assert any(d == run_dir for d, _ in jobs.recent_runs(tmp_path))
    assert not jobs.stop_run(run_dir)


@pytest.mark.slow
def test_queue_trains_in_turn_and_stop_is_clean(tiny_catalogue, tmp_path):
    queue = jobs.start_queue([jobs.TrainJob(model="siamese", data=str(tiny_catalogue), epochs=1, batch_size=16),
                              jobs.TrainJob(model="siamese", data=str(tiny_catalogue), epochs=200, batch_size=8)],
                             tmp_path, name="t", prepare=True)
    first, second = (tmp_path / j["run_id"] for j in json.loads(queue.read_text())["jobs"])
    assert _wait(lambda: read_status(second).get("phase") == "training", 180)
    assert read_status(first)["state"] == "finished"  # one after the other
    assert jobs.active_queues(tmp_path)
    assert jobs.stop_run(second)
    assert _wait(lambda: jobs.read_queue(queue).get("state") == "finished", 60)
    assert read_status(second)["state"] == "stopped"
    assert [j["state"] for j in jobs.read_queue(queue)["jobs"]] == ["finished", "stopped"]
    assert projection.projection_path(first, "umap").is_file()  # prepared for the Embeddings page
    assert embeds.ready(first) and tasks.read(first, embeds.TASK)["state"] == "finished"  # and for Compare
    assert not projection.projection_path(second, "umap") or not projection.projection_path(second).is_file()


def test_log_progress_reads_the_last_progress_bar(tmp_path):
    assert jobs.log_progress(tmp_path) is None
    (tmp_path / jobs.LOG_NAME).write_text(
        "[xmodal] siamese: backbone efficientnet\nimage features:   9%|▉         | 3/32 [00:23<03:54,  8.09s/batch]"
        "\rimage features:  19%|█▉        | 6/32 [00:47<03:25,  7.89s/batch]")
    assert jobs.log_progress(tmp_path) == ("image features", 6 / 32, "03:25")


# ---------------------------------------------------------------- background tasks

def test_task_progress_and_a_dead_child(tmp_path):
    progress = tasks.Progress(tmp_path, "job", every_s=0)
    progress.phase("embedding", total=100)
    progress.advance(25)
    rec = tasks.read(tmp_path, "job")
    assert rec["state"] == "running" and rec["done"] == 25 and rec["eta_s"] is not None
    line, frac = tasks.describe(rec)
    assert line.startswith("embedding: 25/100, ") and line.endswith(" left") and frac == 0.25
    progress.finish()
    assert tasks.describe(tasks.read(tmp_path, "job")) == ("done", 1.0)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tasks.mark_queued(tmp_path, "other", dead.pid)
    assert tasks.read(tmp_path, "other")["state"] == "failed" and not tasks.active(tmp_path, "other")
    progress = tasks.Progress(tmp_path, "bar")
    progress.phase("reading the image features")
    tasks.task_file(tmp_path, "bar").with_suffix(".log").write_text(
        "image features:  50%|#####     | 16/32 [00:10<00:10,  1.6batch/s]")
    line, frac = tasks.describe(tasks.read(tmp_path, "bar"))  # the phase's own progress bar, from the log
    assert frac == 0.5 and "00:10 left" in line


def test_task_start_runs_once_per_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    proc = tasks.start([a, b], "sleep", ["-c", "import time; time.sleep(30)"])
    try:
        assert proc is not None and tasks.read(a, "sleep")["state"] == tasks.read(b, "sleep")["state"] == "queued"
        assert tasks.start([a, b], "sleep", ["-c", "pass"]) is None  # already under way: nothing new
    finally:
        proc.kill()
        proc.wait()
    assert tasks.read(a, "sleep")["state"] == "failed"  # the child died without finishing


@pytest.mark.parametrize("fork", ["1", "0"])
def test_warm_children_run_a_module_like_python_dash_m(tmp_path, monkeypatch, fork):
    """A job forked from the queue's process (or, with XMODAL_FORK=0, a subprocess) runs ``python -m MODULE
    ARGS``: its own pid, its output in its log, its exit code; SIGTERM reaches the job, not the queue."""
    import signal
    from xmodal.dashboard.jobs import warm
    monkeypatch.setenv(warm.ENV, fork)
    pkg = tmp_path / "warmjob"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "job.py").write_text(
        "import signal, sys, time\n"
        "print('args', sys.argv[1:], flush=True)\n"
        "if sys.argv[1] == 'sleep':\n"
        "    signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(60)\n"
        "sys.exit(int(sys.argv[1]))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    log = tmp_path / "job.log"
    proc = warm.start([sys.executable, "-m", "warmjob.job", "3"], log)
    assert proc.pid != os.getpid() and proc.wait() == 3
    assert "args ['3']" in log.read_text()
    proc = warm.start([sys.executable, "-m", "warmjob.job", "sleep"], log)
    assert _wait(lambda: "ready" in log.read_text(), 30)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait() == 7  # the job's own handler ran; this (the queue's) process is untouched
    assert isinstance(proc, warm.Forked) == (fork == "1" and sys.platform.startswith("linux"))
