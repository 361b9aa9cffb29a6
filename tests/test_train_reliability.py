"""The training command under bad flags, bad data paths, an existing run id and a bad XMODAL_PRECISION.

Every case checks what the user sees (one line, exit code 2 for their own mistakes) and what is left on
disk (nothing written for a refused command). Resuming, faults (kills, a full disk, a second writer) and
non-finite values have modules of their own (tests/test_train_*.py).
"""
from __future__ import annotations

import json

import pytest

from train_kit import base, one_error_line
from xmodal.runs import read_json
from xmodal.training.cli import main as train_cli


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
