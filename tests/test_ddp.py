"""Two-process training (``torchrun --nproc_per_node 2 -m xmodal.train``, gloo on CPU) against one process.

The DDP run must write one run folder with the same files and formats as a single-process run. Its gather
must give each process the one-process gradient (checked directly below on every model that trains on cached
features), so a DDP run whose global batch is the whole train split, without dropout, trains exactly as one
process does (the loss only sees the batch as a set, so the order in which the ranks' rows arrive is moot).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from conftest import EARLY_RUNS, TINY_SIZE, early_run, tiny_demo

EPOCHS = 3
TRAIN_ITEMS = 48  # the tiny catalogue's train split: one global batch, one optimiser step per epoch


def train_args(data: Path, out: Path, run_id: str) -> list[str]:
    return ["--model", "cmpm-efficientnet", "--data", str(data), "--epochs", str(EPOCHS),
            "--batch-size", str(TRAIN_ITEMS), "--set", "dropout=0", "--set", "word_dropout=0",
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

    from xmodal.training.loop import PairDataset, make_loader

    class RankZeroOfTwo:  # the sampler DistContext.sampler makes, without a process group
        def sampler(self, dataset, seed):
            return DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=True, seed=seed, drop_last=True)

    data = PairDataset(torch.randn(48, 4), torch.ones(48, 3, dtype=torch.long), torch.arange(48))
    batches = list(make_loader(data, 32, RankZeroOfTwo(), seed=0, device=torch.device("cpu")))
    assert [len(b[0]) for b in batches] == [24]  # global batch 64 > 48 items: one step, as in one process
    assert [len(b[0]) for b in make_loader(data, 8, RankZeroOfTwo(), 0, torch.device("cpu"))] == [8, 8, 8]


# --------------------------------------------------- the gather's gradient: two processes against one

GRAD_MODELS = ["siamese", "corrnet", "cmpm-efficientnet", "infonce-efficientnet"]  # models on cached features
GRAD_BATCH, WORLD = 8, 2


def _grad_case(name: str):
    """A tiny model (no dropout, Standardize statistics fixed) and one global batch with titles shared across
    the two halves, so the loss's positives and negatives cross the ranks."""
    from xmodal import create_model
    from xmodal.models.towers import Standardize
    torch.manual_seed(0)
    kw = {"cmpc_weight": 1.0} if name.startswith("cmpm") else {}
    model = create_model(name, vocab_size=30, word_dim=16, num_classes=5, embed_dim=32, image_size=(64, 48),
                         dropout=0.0, word_dropout=0.0, **kw).train()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, Standardize):  # running statistics as after training, not re-estimated per half batch
            m.mean.normal_(generator=g)
            m.var.uniform_(0.5, 2.0, generator=g)
            m.seen.fill_(1)
            m.momentum = 0.0
    images = torch.randn(GRAD_BATCH, model.cfg.feature_dim, generator=g).abs()  # [B, F] cached features
    tokens = torch.randint(2, 30, (GRAD_BATCH, 6), generator=g)  # [B, L]
    tokens[1, 3:] = 0
    labels = torch.tensor([0, 1, 2, 3, 1, 4, 0, 2])  # items 1/4, 0/6 and 2/7 share titles across the halves
    return model, images, tokens, labels


def _loss(model, out: dict, labels: torch.Tensor) -> torch.Tensor:
    return sum(model.loss({k: v.float() for k, v in out.items()}, labels).values())


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _grad_worker(rank: int, init_file: str, out_file: str) -> None:
    """One rank: its half of the batch through DDP, outputs gathered by ``DistContext.gather`` and the loss
    summed, as ``train_one_epoch`` does; rank 0 saves the gradients DDP leaves in the parameters."""
    from xmodal.training.distributed import DistContext
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    ctx = DistContext(rank=rank, world=WORLD)
    grads, rows = {}, slice(rank * GRAD_BATCH // WORLD, (rank + 1) * GRAD_BATCH // WORLD)
    for name in GRAD_MODELS:
        model, images, tokens, labels = _grad_case(name)
        ddp = ctx.wrap(model)
        out, every_label = ctx.gather(ddp(images[rows], tokens[rows]), labels[rows])
        assert torch.equal(every_label, labels)
        _loss(model, out, every_label).backward()
        grads[name] = _grads(model)
    if rank == 0:
        torch.save(grads, out_file)
    ctx.close()


@pytest.mark.slow
def test_gather_gives_two_processes_the_one_process_gradient(tmp_path):
    """Two gloo processes on half batches each (all-gather of the outputs, the loss on the global batch, DDP's
    all-reduce of the gradients) leave in every parameter the gradient one process computes on the whole batch."""
    out_file = tmp_path / "grads.pt"
    # forked ranks start from this process's imports (spawned ones imported PyTorch again, ~4 s); each runs PyTorch
    # on one thread, as DataLoader's forked workers do
    mp.start_processes(_grad_worker, args=(str(tmp_path / "init"), str(out_file)), nprocs=WORLD, join=True,
                       start_method="fork")
    two = torch.load(out_file, weights_only=True)
    for name in GRAD_MODELS:
        model, images, tokens, labels = _grad_case(name)
        _loss(model, model(images, tokens), labels).backward()
        one = _grads(model)
        assert set(two[name]) == set(one) and one, name
        assert any(float(g.abs().max()) > 1e-3 for g in one.values()), name
        for pname, g in one.items():
            torch.testing.assert_close(two[name][pname], g, rtol=1e-4, atol=1e-5, msg=lambda m: f"{name} {pname}: {m}")


def _ddp_and_one_process(folder: Path) -> tuple[list[tuple[list[str], dict]], tuple[Path, Path]]:
    """``torchrun --nproc_per_node 2 -m xmodal.train`` into ``folder/ddp``, then ``python -m xmodal.train`` (one
    process) into ``folder/single``: one thread per process, one feature cache (the first extracts, the second reads
    the same features). Run from the session's start (conftest.py)."""
    catalogue, ddp, single = folder / "cat", folder / "ddp", folder / "single"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return [tiny_demo(catalogue), ([*torchrun, "-m", "xmodal.train", *train_args(catalogue, ddp, "two")], {}),
            ([sys.executable, "-m", "xmodal.train", *train_args(catalogue, single, "one")], {})], (ddp, single / "one")


EARLY_RUNS["ddp_and_one_process"] = _ddp_and_one_process


@pytest.fixture(scope="module")
def ddp_and_one_process(request) -> tuple[Path, Path]:
    return early_run("ddp_and_one_process", request)


@pytest.fixture(scope="module")
def ddp_out(ddp_and_one_process) -> Path:
    """The folder the two-process run wrote into (it holds that run alone)."""
    return ddp_and_one_process[0]


@pytest.fixture(scope="module")
def single_run(ddp_and_one_process) -> Path:
    """The same training in one process."""
    return ddp_and_one_process[1]


@pytest.mark.slow
def test_ddp_writes_one_complete_run(ddp_out, single_run):
    assert sorted(p.name for p in ddp_out.iterdir()) == ["two"]  # one folder, from rank 0 only
    run = ddp_out / "two"
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in single_run.iterdir())
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
    one, two = (json.loads((d / "config.json").read_text()) for d in (single_run, run))
    assert set(one) == set(two) and two["world_size"] == 2 and one["world_size"] == 1
    assert two["train"]["batch_size"] == one["train"]["batch_size"] == TRAIN_ITEMS  # the global batch
    assert metrics_shape(run) == metrics_shape(single_run)
    test_one, test_two = (json.loads((d / "test.json").read_text()) for d in (single_run, run))
    assert set(test_one) == set(test_two) and set(test_one["caption"]) == set(test_two["caption"])
    assert json.loads((run / "splits.json").read_text()) == json.loads((single_run / "splits.json").read_text())


@pytest.mark.slow
def test_ddp_trains_like_one_process(ddp_out, single_run):
    """Same global batch (all of train), same initial weights, no dropout: the same losses, weights, validation
    and test metrics as one process. The weights agree to 1e-3 of their norm, not to the last bit: AdamW divides
    each gradient by its own running scale, so a coordinate whose gradient is ~0 moves by up to +-lr on the
    rounding noise of the two sums (measured: at most 4e-4 of a tensor's norm, 1.6e-3 in one coordinate)."""
    from safetensors.torch import load_file
    run = ddp_out / "two"
    losses, ref = epoch_losses(run), epoch_losses(single_run)
    assert len(losses) == len(ref) == EPOCHS
    assert losses[-1] < losses[0], f"DDP loss did not fall: {losses}"
    assert losses == pytest.approx(ref, rel=1e-5), f"DDP {losses} vs one process {ref}"
    rows, ref_rows = ([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
                      for d in (run, single_run))
    assert [(r["epoch"], r["step"]) for r in rows if r["kind"] == "step"] == \
        [(r["epoch"], r["step"]) for r in ref_rows if r["kind"] == "step"]  # the same optimiser steps
    for epoch, ref_epoch in zip(*([r for r in x if r["kind"] == "epoch"] for x in (rows, ref_rows))):
        assert epoch["val/rsum"] == pytest.approx(ref_epoch["val/rsum"], abs=1e-6), (epoch, ref_epoch)
        assert epoch["pos_sim"] == pytest.approx(ref_epoch["pos_sim"], rel=1e-2), (epoch, ref_epoch)
    weights, ref_weights = load_file(run / "best.safetensors"), load_file(single_run / "best.safetensors")
    assert set(weights) == set(ref_weights)
    for name, w in ref_weights.items():
        if w.is_floating_point():
            gap = float((weights[name] - w).norm())
            assert gap <= 1e-3 * float(w.norm()) + 1e-6, f"{name}: |DDP - one| {gap:.2e}, |one| {float(w.norm()):.2e}"
        else:
            assert torch.equal(weights[name], w), name
    test, ref_test = (json.loads((d / "test.json").read_text())["caption"] for d in (run, single_run))
    for key, value in ref_test.items():
        if isinstance(value, (int, float)):
            assert test[key] == pytest.approx(value, abs=1e-6), f"test {key}: {test[key]} (DDP), {value} (one process)"
