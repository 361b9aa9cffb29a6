"""Nothing a user made is overwritten: catalogues written by ``demo`` and the importers (CLI and the dashboard's
form), crafted ids, bounds on ``--n``, and temporary files of dead writers in run folders."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from PIL import Image

from xmodal.data import load_catalogue
from xmodal.data.__main__ import main as data_cli
from xmodal.data.importers import import_kaggle

KAGGLE_HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"


def _digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> its content digest."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _kaggle(folder: Path, titles: dict[str, str], colour=(200, 10, 10)) -> Path:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for i, (item, _) in enumerate(titles.items()):
        Image.new("RGB", (30, 40), (colour[0], (colour[1] + 20 * i) % 256, colour[2])).save(
            folder / "images" / f"{item}.jpg")
    rows = [f"{item},Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,{t}" for item, t in titles.items()]
    (folder / "styles.csv").write_text("\n".join([KAGGLE_HEADER, *rows]) + "\n")
    return folder


def test_demo_never_replaces_a_catalogue_without_overwrite(tmp_path, capsys):
    out = tmp_path / "cat"
    assert data_cli(["demo", "--out", str(out), "--n", "5"]) == 0
    before = _digest(out)
    assert data_cli(["demo", "--out", str(out), "--n", "7", "--seed", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already holds a catalogue" in err and "--overwrite" in err
    assert _digest(out) == before  # not one byte changed
    assert data_cli(["demo", "--out", str(out), "--n", "7", "--seed", "3", "--overwrite"]) == 0
    assert len(load_catalogue(out)) == 7
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_overwrite_never_replaces_a_folder_with_other_files(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("months of work")
    (mine / "captions.csv").write_text("image,caption\n")
    before = _digest(mine)
    assert data_cli(["demo", "--out", str(mine), "--n", "5", "--overwrite"]) == 2
    assert "thesis.tex" in capsys.readouterr().err
    assert _digest(mine) == before


@pytest.mark.parametrize("n", ["0", "-3", "1000000000", "2.5", "many"])
def test_demo_n_is_bounded_with_one_line(tmp_path, capsys, n):
    with pytest.raises(SystemExit) if n in ("2.5", "many") else _no_exit():
        assert data_cli(["demo", "--out", str(tmp_path / "cat"), "--n", n]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--n" in err
    assert not (tmp_path / "cat").exists()


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_import_in_place_keeps_a_hand_edited_catalogue(tmp_path, capsys):
    src = _kaggle(tmp_path / "kaggle", {"1": "Navy Shirt", "2": "Red Kurta"})
    assert data_cli(["import", "kaggle", str(src)]) == 0  # no catalogue there yet: in place is fine
    (src / "captions.csv").write_text((src / "captions.csv").read_text().replace("Navy Shirt", "Navy Shirt (fixed)"))
    edited = (src / "captions.csv").read_bytes()
    assert data_cli(["import", "kaggle", str(src)]) == 2
    assert "already has a captions.csv" in capsys.readouterr().err
    assert (src / "captions.csv").read_bytes() == edited
    assert data_cli(["import", "kaggle", str(src), "--overwrite"]) == 0
    assert load_catalogue(src).captions == ["Navy Shirt", "Red Kurta"]


def test_a_second_import_never_pairs_old_photos_with_new_titles(tmp_path):
    first = _kaggle(tmp_path / "first", {str(i): f"First title {i}" for i in range(10)}, colour=(250, 0, 0))
    second = _kaggle(tmp_path / "second", {str(i): f"Second title {i}" for i in range(10)}, colour=(0, 0, 250))
    out = tmp_path / "out"
    assert data_cli(["import", "kaggle", str(first), "--out", str(out)]) == 0
    assert data_cli(["import", "kaggle", str(second), "--out", str(out)]) == 2  # refused, first import intact
    assert load_catalogue(out).captions[0] == "First title 0"
    assert data_cli(["import", "kaggle", str(second), "--out", str(out), "--overwrite"]) == 0
    cat = load_catalogue(out)
    for i in range(10):  # each row's photo is the second import's photo of that id
        assert cat.captions[i] == f"Second title {i}"
        assert cat.image_path(i).read_bytes() == (second / "images" / f"{i}.jpg").read_bytes()


def test_a_crafted_kaggle_id_links_nothing_from_outside(tmp_path):
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (30, 40), (1, 2, 3)).save(secret)
    src = _kaggle(tmp_path / "kaggle" / "dl", {"1": "Navy Shirt"})
    with open(src / "styles.csv", "a") as f:  # images/../../../secret.jpg is tmp_path/secret.jpg
        f.write("../../../secret,Men,Apparel,Topwear,Tshirts,Blue,Summer,2012,Casual,Stolen\n")
    res = import_kaggle(src, tmp_path / "out")
    assert res.rows == 1 and res.dropped == {"id not a plain file name": 1}
    assert os.stat(secret).st_nlink == 1  # no hard link was made to it
    assert all(p.resolve().is_relative_to((tmp_path / "out").resolve()) for p in (tmp_path / "out").rglob("*"))


@pytest.mark.slow
def test_the_dashboard_imports_into_a_new_folder_never_the_source(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest
    monkeypatch.setenv("XMODAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XMODAL_CHECKPOINTS", str(tmp_path / "ckpt"))
    (tmp_path / "ckpt").mkdir()
    src = _kaggle(tmp_path / "kaggle", {"1": "Navy Shirt", "2": "Red Kurta"})
    (src / "captions.csv").write_text("image,caption\nimages/1.jpg,My own edited title\n")
    mine = (src / "captions.csv").read_bytes()
    taken = tmp_path / "cache" / "imports" / "kaggle"
    taken.mkdir(parents=True)
    (taken / "captions.csv").write_text("image,caption\n")  # an earlier import: the default moves on
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "dashboard.py"), default_timeout=60).run()
    at.radio(key="cat_source").set_value("import").run()
    at.text_input(key="imp_src").input(str(src)).run()
    assert at.text_input(key="imp_out").placeholder == str(tmp_path / "cache" / "imports" / "kaggle-2")
    assert at.text_input(key="imp_out").value == ""  # left empty: the suggested new folder
    at.button(key="imp_go").click().run()
    assert not at.exception
    assert (src / "captions.csv").read_bytes() == mine
    assert (taken / "captions.csv").read_text() == "image,caption\n"
    assert load_catalogue(tmp_path / "cache" / "imports" / "kaggle-2").captions == ["Navy Shirt", "Red Kurta"]
    # the source itself, typed in: refused with the box unticked, the user's file kept
    at.radio(key="cat_source").set_value("import").run()
    at.text_input(key="imp_src").input(str(src)).run()
    at.text_input(key="imp_out").input(str(src)).run()
    at.button(key="imp_go").click().run()
    assert not at.exception
    assert any("already has a captions" in e.value for e in at.error), [e.value for e in at.error]
    assert (src / "captions.csv").read_bytes() == mine


def _dead_pid() -> int:
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_deleting_the_lock_file_lets_no_second_writer_in(tmp_path):
    from xmodal.runs import RunLock, RunLocked, read_lock
    run = tmp_path / "run"
    run.mkdir()
    with RunLock.acquire(run, command="train"):
        (run / ".lock").unlink()
        with pytest.raises(RunLocked, match="in use"):
            RunLock.acquire(run, command="second")
        assert read_lock(run) is not None
    assert read_lock(run) is None
    RunLock.acquire(run).release()  # free again once the holder is gone


def test_temporary_files_of_dead_writers_go_when_the_run_is_next_opened(tmp_path):
    from xmodal.runs import RunLock, list_runs
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"model": "siamese", "created": 1}')
    dead, old = _dead_pid(), os.path.getmtime(run) - 3600
    stale = run / f".last.pt.{dead}.tmp"
    young = run / f".best.safetensors.{_dead_pid()}.tmp"
    live = run / f".metrics.{os.getppid()}.tmp"  # a live writer's
    for path in (stale, young, live):
        path.write_bytes(b"x" * 1000)
    os.utime(stale, (old, old))
    os.utime(live, (old, old))
    assert [r.path.name for r in list_runs(tmp_path)] == ["run"]
    assert not stale.exists() and young.exists() and live.exists()
    os.utime(young, (old, old))
    RunLock.acquire(run).release()
    assert not young.exists() and live.exists()
