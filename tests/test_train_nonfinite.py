"""Non-finite values stop the run: weights that turn NaN stop it at the step that made them, naming the parameter,
and keep the last good checkpoint; a step with a non-finite gradient norm is skipped, and several in a row stop
the run."""
from __future__ import annotations

import pytest

from train_kit import base, one_error_line
from xmodal.runs import read_metrics, read_status
from xmodal.training.cli import main as train_cli


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
