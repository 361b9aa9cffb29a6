"""The real CLIs end to end on a tiny demo catalogue: train, evaluate, search, resume, stop (SIGTERM to a real
training process: tests/test_train_faults.py)."""
import json

import pytest

import xmodal
from tests.conftest import TINY_SIZE
from xmodal.evaluation.evaluate import main as evaluate_cli
from xmodal.runs import read_json, read_metrics, read_status
from xmodal.retrieval.run import RunError, load_run
from xmodal.training.cli import main as train_cli

RUN_FILES = {"config.json", "vocab.json", "splits.json", "metrics.jsonl", "status.json", "best.safetensors",
             "best.json", "last.pt", "test.json"}


@pytest.mark.parametrize("name", xmodal.list_models())
def test_train_evaluate_search_every_model(name, tiny_catalogue, tmp_path, capsys):
    argv = ["--model", name, "--data", str(tiny_catalogue), "--epochs", "2", "--batch-size", "16",
            "--out", str(tmp_path), "--run-id", "r", *TINY_SIZE]
    assert train_cli(argv) == 0
    run = tmp_path / "r"
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    assert read_status(run)["state"] == "finished"
    config = read_json(run / "config.json")
    assert config["model"] == name and config["split"]["seed"] == 0
    assert config["data"]["fingerprint"] and "pretrained" in config
    rows = read_metrics(run)
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert all("loss" in s for s in steps) and len(steps) == 2 * 3  # 48 train items / 16
    for key in ("val/text_to_image/R@1", "val/image_to_text/median_rank", "val/rsum", "pos_sim", "neg_sim"):
        assert key in epochs[0]
    test = read_json(run / "test.json")
    assert test["gallery_size"] == 6 and "validation" in test["chosen_on"]

    capsys.readouterr()
    assert evaluate_cli(["--run", str(run), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["gallery_size"] == 6 and res["trained_on_this_catalogue"]
    # the test split evaluated again from the best weights gives the numbers the run recorded
    assert res["caption"]["rsum"] == pytest.approx(test["caption"]["rsum"], abs=1e-3)
    assert evaluate_cli(["--run", str(run), "--split", "all"]) == 0
    table = capsys.readouterr().out
    assert "protocol" in table and "60 items" in table and "caption" in table

    r = load_run(run)
    hits = r.search_text(r.catalogue.captions[0], k=5)
    assert len(hits) == 5 and hits[0].score >= hits[-1].score
    img_hits = r.search_image(r.catalogue.image_path(0), k=3)
    assert len(img_hits) == 3 and all(isinstance(h.caption, str) for h in img_hits)
    assert list(run.glob("gallery_images_*.safetensors")), "gallery embeddings cached in the run folder"


def test_evaluate_on_another_catalogue(trained_run, tmp_path, capsys):
    from xmodal.data import generate_demo
    other = generate_demo(tmp_path / "other", n=30, seed=9)
    assert evaluate_cli(["--run", str(trained_run), "--data", str(other), "--split", "all", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["gallery_size"] == 30 and not res["trained_on_this_catalogue"]
    assert res["items"]["seen_in_training"] == 0 and not res["items"]["own_catalogue"]


def test_evaluate_tells_another_demo_with_the_same_ids_from_the_runs_own(trained_run, tiny_catalogue, tmp_path):
    """Every demo catalogue names its items demo00000...: the same ids under other products are not the run's."""
    from xmodal.data import generate_demo, load_catalogue
    from xmodal.evaluation.evaluate import evaluate_run
    other = generate_demo(tmp_path / "other", n=60, seed=2)  # the run's 60 ids, other products
    assert load_catalogue(other).item_ids == load_catalogue(tiny_catalogue).item_ids
    res = evaluate_run(trained_run, data=str(other), split="all")
    assert res["items"]["seen_in_training"] == 0 and not any("trained or validated" in n for n in res["notes"])
    assert not res["items"]["own_catalogue"] and "same image" in res["items"]["recognised"]
    test = evaluate_run(trained_run, data=str(other), split="test")
    assert "never saw" in test["items"]["source"] and not test["items"]["own_catalogue"]


def test_evaluate_recognises_an_edited_copy_of_the_runs_catalogue(trained_run, tiny_catalogue, tmp_path):
    """A copy in another folder with most rows removed and one added (same images) is still the run's own: its
    test items are the recorded ones, its train items are never scored as test."""
    import csv
    import shutil

    from xmodal.evaluation.evaluate import evaluate_run
    copy = tmp_path / "edited"
    shutil.copytree(tiny_catalogue, copy)
    with open(tiny_catalogue / "captions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    splits = read_json(trained_run / "splits.json")
    kept = rows[::3]  # 20 of 60 rows: fewer than half of the run's ids, as the old rule asked for
    added = {**rows[1], "item_id": "brand-new", "caption": "A brand new product"}
    with open(copy / "captions.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([*kept, added])
    res = evaluate_run(trained_run, data=str(copy), split="test")
    info = res["items"]
    test_kept = [r["item_id"] for r in kept if r["item_id"] in set(splits["test"])]
    assert "recorded test" in info["source"] and res["gallery_size"] == len(test_kept) > 0
    assert info["own_catalogue"] and "edited copy" in info["recognised"]
    assert info["new_since_training"] == 1 and info["gone_since_training"] == len(splits["test"]) - len(test_kept)
    assert evaluate_run(trained_run, data=str(copy), split="all")["items"]["seen_in_training"] == sum(
        r["item_id"] in set(splits["train"]) | set(splits["val"]) for r in kept)


def test_evaluate_without_the_runs_catalogue_folder_does_not_trust_ids(trained_run, tiny_catalogue, tmp_path):
    """A run whose catalogue folder is gone cannot compare images: a catalogue with its ids but another content is
    evaluated as one it never saw, and says why."""
    import shutil

    from xmodal.evaluation.evaluate import evaluate_run
    from xmodal.runs import atomic_write_json
    run = shutil.copytree(trained_run, tmp_path / "run")
    config = read_json(run / "config.json")
    config["data"]["path"] = str(tmp_path / "moved-away")
    atomic_write_json(run / "config.json", config)
    edited = shutil.copytree(tiny_catalogue, tmp_path / "edited")
    lines = (edited / "captions.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    (edited / "captions.csv").write_text("".join(lines[:-5]), encoding="utf-8")  # other content: fingerprint differs
    res = evaluate_run(run, data=str(edited), split="all")
    assert res["items"]["seen_in_training"] == 0 and not res["items"]["own_catalogue"]
    assert any("cannot be read to compare their images" in n for n in res["notes"])


def test_resume_after_interrupt(tiny_catalogue, tmp_path, monkeypatch):
    import xmodal.training.cli as train_mod
    real = train_mod.train_one_epoch

    def interrupted(*args, **kw):
        if args[6] == 2:  # epoch 2: the user presses Ctrl-C
            raise KeyboardInterrupt
        return real(*args, **kw)
    monkeypatch.setattr(train_mod, "train_one_epoch", interrupted)
    argv = ["--model", "siamese", "--data", str(tiny_catalogue), "--epochs", "3", "--batch-size", "16",
            "--out", str(tmp_path), "--run-id", "r", *TINY_SIZE]
    assert train_cli(argv) == 130
    run = tmp_path / "r"
    assert read_status(run)["state"] == "stopped"
    assert (run / "best.safetensors").is_file() and not (run / "test.json").exists()
    monkeypatch.setattr(train_mod, "train_one_epoch", real)
    assert train_cli(["--resume", str(run)]) == 0
    assert read_status(run)["state"] == "finished"
    epochs = [r["epoch"] for r in read_metrics(run) if r["kind"] == "epoch"]
    assert epochs == [1, 2, 3]
    steps = [(r["epoch"], r["step"]) for r in read_metrics(run) if r["kind"] == "step"]
    assert len(steps) == len(set(steps)) == 9


def test_bad_checkpoint_is_a_clear_error(trained_run, tmp_path, capsys):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(trained_run, broken)
    (broken / "best.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RunError, match="cannot be loaded"):
        load_run(broken)
    assert evaluate_cli(["--run", str(broken)]) == 2
    assert "retrain or resume" in capsys.readouterr().err
    with pytest.raises(RunError, match="not a run folder"):
        load_run(tmp_path)


def test_unusable_catalogue_is_one_line_and_writes_nothing(tmp_path, capsys):
    cat = tmp_path / "empty"
    cat.mkdir()
    (cat / "captions.csv").write_text("image,caption\nmissing.jpg,Nothing Here\n")
    assert train_cli(["--model", "siamese", "--data", str(cat), "--out", str(tmp_path / "runs"),
                      "--run-id", "bad"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no usable rows" in err and len(err.splitlines()) == 1
    assert "Traceback" not in err and not (tmp_path / "runs" / "bad").exists()


def test_a_failure_inside_the_run_is_recorded(tiny_catalogue, tmp_path, monkeypatch, capsys):
    import xmodal.training.cli as train_mod

    def boom(*args, **kw):
        raise RuntimeError("simulated fault in the loop")
    monkeypatch.setattr(train_mod, "train_one_epoch", boom)
    assert train_cli(["--model", "siamese", "--data", str(tiny_catalogue), "--epochs", "1", "--batch-size", "16",
                      "--out", str(tmp_path), "--run-id", "bad", *TINY_SIZE]) == 1
    status = read_status(tmp_path / "bad")
    assert status["state"] == "failed" and "simulated fault" in status["error"]
    assert "Traceback" in (tmp_path / "bad" / "error.log").read_text()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--debug" in err


def test_cuda_request_without_gpu_is_refused(tiny_catalogue, tmp_path, capsys):
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert train_cli(["--model", "siamese", "--data", str(tiny_catalogue), "--device", "cuda",
                      "--out", str(tmp_path)]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_finetune_after_frozen_epochs(tiny_catalogue, tmp_path):
    """Epoch 1 trains the head on cached features with the ImageNet backbone as it is; epoch 2 fine-tunes the
    backbone, which must then move. Whichever epoch validation chose, best.safetensors holds that epoch's backbone."""
    import torch
    from safetensors.torch import load_file

    from xmodal.image.backbones import create_backbone
    argv = ["--model", "cmpm-efficientnet", "--finetune", "--freeze-epochs", "1", "--data", str(tiny_catalogue),
            "--epochs", "2", "--batch-size", "16", "--out", str(tmp_path), "--run-id", "ft", *TINY_SIZE]
    assert train_cli(argv) == 0
    run = tmp_path / "ft"
    config = read_json(run / "config.json")
    assert config["model_config"]["finetune"] and config["pretrained"]
    fresh = {f"backbone.{k}": v for k, v in create_backbone("efficientnet")[0].state_dict().items()
             if not k.endswith("num_batches_tracked")}

    def moved(weights: dict) -> list[str]:
        """The backbone tensors that differ from the packaged ImageNet ones."""
        assert set(fresh) <= set(weights)
        return sorted(k for k, v in fresh.items() if not torch.equal(weights[k].float(), v))
    last = torch.load(run / "last.pt", weights_only=True)
    assert int(last["epoch"]) == 2
    tuned = moved(last["model"])
    assert "backbone.conv_stem.weight" in tuned and len(tuned) > len(fresh) // 2, "epoch 2 left the backbone as it was"
    best_epoch = read_json(run / "best.json")["epoch"]
    assert best_epoch in (1, 2)
    assert moved(load_file(run / "best.safetensors")) == (tuned if best_epoch == 2 else []), best_epoch


def test_precision_choice_is_applied_and_recorded(tiny_catalogue, tmp_path, monkeypatch, capsys):
    import torch

    from xmodal.training import loop as training
    from xmodal.training.args import TrainConfig, parse_args
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(training, "cpu_has_amx", lambda: False)
    assert not training.use_bf16("auto", cpu) and training.use_bf16("auto", cuda)
    monkeypatch.setattr(training, "cpu_has_amx", lambda: True)  # bf16 in hardware: auto takes it
    assert training.use_bf16("auto", cpu) and training.use_bf16("bf16", cpu) and not training.use_bf16("fp32", cpu)
    seen = []
    real = training.train_one_epoch
    monkeypatch.setattr("xmodal.training.cli.train_one_epoch", lambda *a, **k: seen.append(k["amp"]) or real(*a, **k))
    argv = ["--model", "infonce-efficientnet", "--data", str(tiny_catalogue), "--epochs", "1", "--batch-size", "16",
            "--out", str(tmp_path), "--run-id", "p", "--precision", "bf16", *TINY_SIZE]
    assert train_cli(argv) == 0 and seen == [True]
    config = read_json(tmp_path / "p" / "config.json")
    assert config["train"]["precision"] == "bf16" and config["arithmetic"] == "bf16 autocast"
    assert "training arithmetic: bf16 autocast (bf16)" in capsys.readouterr().err
    legacy = {k: v for k, v in config["train"].items() if k != "precision"}  # a run from before the flag
    assert TrainConfig.from_saved(legacy).precision == "fp32"
    with pytest.raises(SystemExit):
        parse_args(["--precision", "fp16"])
