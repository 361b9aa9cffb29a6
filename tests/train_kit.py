"""What the training command's reliability tests share: the command line of a tiny run (``base``) and the one
``error:`` line a refused command prints (``one_error_line``). Used by tests/test_train_*.py and
tests/test_evaluate_reliability.py."""
from __future__ import annotations

from pathlib import Path

from conftest import TINY_SIZE


def base(cat: Path, out: Path, run_id: str = "r", model: str = "siamese", epochs: int = 2) -> list[str]:
    return ["--model", model, "--data", str(cat), "--epochs", str(epochs), "--batch-size", "16",
            "--out", str(out), "--run-id", run_id, *TINY_SIZE]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]
