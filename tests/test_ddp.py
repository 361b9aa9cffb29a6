"""Two-process training (``torchrun --nproc_per_node 2 -m xmodal.train``, gloo on CPU) against one process.

The DDP run must write one run folder with the same files and formats as a single-process run, and with
the same global batch (the loss is computed on the batch gathered from both ranks) it must train the
same way: the epoch-mean losses agree closely and the test metrics are near.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TINY_SIZE

EPOCHS = 4


def train_args(data: Path, out: Path, run_id: str) -> list[str]:
    return ["--model", "cmpm-efficientnet", "--data", str(data), "--epochs", str(EPOCHS), "--batch-size", "16",
            "--out", str(out), "--run-id", run_id, "--device", "cpu", *TINY_SIZE]


def epoch_losses(run_dir: Path) -> list[float]:
    """Mean training loss of each epoch, from metrics.jsonl."""
    per_epoch: dict[int, list[float]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == "step":
            per_epoch.setdefault(row["epoch"], []).append(row["loss"])
    return [sum(v) / len(v) for _, v in sorted(per_epoch.items())]


def metrics_shape(run_dir: Path) -> dict[str, set[str]]:
    """The keys of each kind of metrics row."""
    keys: dict[str, set[str]] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        keys.setdefault(row["kind"], set()).update(row)
    return keys


def test_loader_keeps_a_shard_smaller_than_the_batch():
    """Each rank's shard (not the whole data set) decides whether the last short batch is dropped."""
    from torch.utils.data import DistributedSampler

    from xmodal.training import PairDataset, make_loader

    class RankZeroOfTwo:  # the sampler DistContext.sampler makes, without a process group
        def sampler(self, dataset, seed):
            return DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=seed, drop_last=True)

    data = PairDataset(torch.randn(48, 4), torch.ones(48, 3, dtype=torch.long), torch.arange(48))
    batches = list(make_loader(data, 32, RankZeroOfTwo(), seed=0, device=torch.device("cpu")))
    assert [len(b[0]) for b in batches] == [24]  # global batch 64 > 48 items: one step, as in one process
    assert [len(b[0]) for b in make_loader(data, 8, RankZeroOfTwo(), 0, torch.device("cpu"))] == [8, 8, 8]


@pytest.fixture(scope="module")
def single_run(tiny_catalogue, tmp_path_factory) -> Path:
    from xmodal.train import main
    out = tmp_path_factory.mktemp("single")
    assert main(train_args(tiny_catalogue, out, "one")) == 0
    return out / "one"


@pytest.fixture(scope="module")
def ddp_out(tiny_catalogue, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "xmodal.train", *train_args(tiny_catalogue, out, "two")]
    proc = subprocess.run(cmd, env=env, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return out


@pytest.mark.slow
def test_ddp_writes_one_complete_run(ddp_out, single_run):
    assert sorted(p.name for p in ddp_out.iterdir()) == ["two"]  # one folder, from rank 0 only
    run = ddp_out / "two"
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in single_run.iterdir())
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    one, two = (json.loads((d / "config.json").read_text()) for d in (single_run, run))
    assert set(one) == set(two) and two["world_size"] == 2 and one["world_size"] == 1
    assert two["train"]["batch_size"] == one["train"]["batch_size"] == 16  # the global batch
    assert metrics_shape(run) == metrics_shape(single_run)
    test_one, test_two = (json.loads((d / "test.json").read_text()) for d in (single_run, run))
    assert set(test_one) == set(test_two) and set(test_one["caption"]) == set(test_two["caption"])
    assert json.loads((run / "splits.json").read_text()) == json.loads((single_run / "splits.json").read_text())


@pytest.mark.slow
def test_ddp_trains_like_one_process(ddp_out, single_run):
    run = ddp_out / "two"
    losses, ref = epoch_losses(run), epoch_losses(single_run)
    assert len(losses) == len(ref) == EPOCHS
    assert losses[-1] < losses[0], f"DDP loss did not fall: {losses}"
    # Same global batch, same initial weights; only the batch order and dropout masks differ.
    assert losses[-1] == pytest.approx(ref[-1], rel=0.03), f"DDP {losses} vs one process {ref}"
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in steps if r["kind"] == "step") == \
        max(r["step"] for r in (json.loads(x) for x in (single_run / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "step")  # the same number of optimiser steps per epoch
    rsum = json.loads((run / "test.json").read_text())["caption"]["rsum"]
    ref_rsum = json.loads((single_run / "test.json").read_text())["caption"]["rsum"]
    assert abs(rsum - ref_rsum) <= 150, f"test rsum {rsum:.1f} (DDP) vs {ref_rsum:.1f} (one process)"
