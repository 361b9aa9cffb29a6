"""xmodal.training.provenance: what a run records about the code, software and hardware that made it."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from xmodal.training import provenance
from xmodal.training.provenance import collect, describe

VERSIONS = {"python", "torch", "timm", "onnxruntime", "faiss", "numpy", "gensim"}


def git_head() -> str | None:
    if shutil.which("git") is None:
        return None
    out = subprocess.run(["git", "-C", str(provenance.ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def test_collect_has_every_key_as_a_string_or_none():
    import numpy
    import torch
    p = collect("fp32")
    assert set(p) == {"git", "versions", "hardware", "arithmetic"} and p["arithmetic"] == "fp32"
    assert set(p["git"]) == {"commit", "dirty"} and set(p["versions"]) == VERSIONS
    assert set(p["hardware"]) == {"cpu", "cores", "gpu", "os"}
    for value in [p["git"]["commit"], *p["versions"].values(), *(p["hardware"][k] for k in ("cpu", "gpu", "os"))]:
        assert value is None or (isinstance(value, str) and value), value
    assert p["git"]["dirty"] in (True, False, None) and isinstance(p["hardware"]["cores"], int)
    assert p["versions"]["numpy"] == numpy.__version__
    assert p["versions"]["torch"] == torch.__version__  # the loaded build's own, with its +cu tag
    assert p["versions"]["python"].count(".") == 2
    json.dumps(p)  # config.json takes it as it is


def test_git_commit_is_the_checkout_head():
    before = git_head()
    if before is None:
        pytest.skip("not run from a git checkout")
    state = provenance.git_state()
    assert state["commit"] in (before, git_head())  # another commit may land meanwhile in a shared tree
    assert isinstance(state["dirty"], bool)


def test_no_git_checkout_or_no_git_is_none_never_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "ROOT", tmp_path)  # an installed copy: no checkout around it
    assert provenance.git_state() == {"commit": None, "dirty": None}
    inner = tmp_path / "other-repo"
    inner.mkdir()
    if shutil.which("git"):
        subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
        monkeypatch.setattr(provenance, "ROOT", inner)  # a copy inside someone else's repository: not ours
        assert provenance.git_state() == {"commit": None, "dirty": None}
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # git not installed
    assert provenance.git_state() == {"commit": None, "dirty": None}
    assert collect()["git"] == {"commit": None, "dirty": None}


def test_absent_packages_are_none(monkeypatch):
    monkeypatch.setitem(provenance.PACKAGES, "gensim", ("no-such-distribution-xmodal",))
    monkeypatch.delitem(__import__("sys").modules, "gensim", raising=False)
    assert provenance.package_version("gensim") is None
    assert collect()["versions"]["gensim"] is None


def test_describe_lines():
    p = collect("training: fp32 on cpu (--precision auto)")
    lines = describe({"provenance": p})
    assert lines[0].startswith("code: ") and lines[1].startswith("software: python ")
    assert "torch " in lines[1] and "hardware: " in lines[2] and lines[3].endswith("fp32 on cpu (--precision auto)")
    if p["git"]["commit"]:
        assert p["git"]["commit"][:12] in lines[0]
    absent = {**p, "git": {"commit": None, "dirty": None}, "versions": {**p["versions"], "gensim": None}}
    lines = describe({"provenance": absent})
    assert "not a git checkout" in lines[0] and "gensim absent" in lines[1]
    assert describe({"run_id": "old"}) == ["provenance: not recorded (a run from before xmodal recorded it)"]
    assert len(describe({"provenance": {"git": "junk", "versions": None}})) == 4  # damaged: read as far as it goes


def test_a_run_records_its_provenance(trained_run):
    config = json.loads((trained_run / "config.json").read_text())
    p = config["provenance"]
    assert set(p["versions"]) == VERSIONS and p["hardware"]["cores"] >= 1
    assert p["arithmetic"].startswith(f"training: {config['arithmetic']} on cpu")
    head = git_head()
    if head is not None:
        assert len(p["git"]["commit"]) == 40 and isinstance(p["git"]["dirty"], bool)
