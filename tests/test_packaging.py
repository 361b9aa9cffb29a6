"""Installable like its peers: ``pyproject.toml``, the ``xmodal`` command (``xmodal/cli.py``) and a real wheel."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from xmodal import cli

ROOT = Path(__file__).resolve().parents[1]
# the CLIs the issue asks `xmodal` to reach; "dashboard" runs streamlit
EXPECTED = {"train": "xmodal.train", "evaluate": "xmodal.evaluate",
            "report": "xmodal.report", "data": "xmodal.data", "export": "xmodal.export", "compose": "xmodal.compose",
            "bench": "xmodal.bench"}


def _requirements(text: str) -> dict[str, str]:
    """``{normalised name: specifier without spaces}`` of a requirements file or a dependency list."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line).group(0)
        out[re.sub(r"[-_.]+", "-", name).lower()] = line[len(name):].replace(" ", "")
    return out


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


# ---- the dispatcher, in process ----

@pytest.mark.parametrize("command", sorted(EXPECTED))
def test_each_command_reaches_its_cli(command, capsys):
    """``xmodal <command> --help`` is that CLI's own --help (argparse exits 0 after printing it)."""
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {EXPECTED[command]}"), out[:200]


def test_report_help_is_reports_own(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["report", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m xmodal.report" in out and "--provenance" in out and "test.json" in out


def test_arguments_reach_the_cli_untouched(monkeypatch):
    seen = []
    import xmodal.report
    monkeypatch.setattr(xmodal.report, "main", lambda argv: seen.append(argv) or 7)
    assert cli.main(["report", "runs/a", "--gt", "item", "--help-me"]) == 7
    assert seen == [["runs/a", "--gt", "item", "--help-me"]]


def test_help_lists_every_command_with_one_line(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    listed = {}
    for line in out.splitlines():
        m = re.match(r"  (\w+)  +(\S.*)$", line)
        if m:
            listed[m.group(1)] = m.group(2)
    assert set(listed) == {*EXPECTED, "dashboard"}, out
    for name, module in EXPECTED.items():
        assert f"python -m {module}" in listed[name]


def test_no_command_prints_the_list_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "train" in capsys.readouterr().out


def test_unknown_command_is_one_line_naming_the_choices(capsys):
    assert cli.main(["trian", "--epochs", "3"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "'trian'" in lines[0]
    assert all(name in lines[0] for name in [*EXPECTED, "dashboard"])


def test_dashboard_runs_this_checkouts_app_with_this_python(monkeypatch):
    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda args: calls.append(args) or 3)
    assert cli.main(["dashboard", "--server.port", "8600"]) == 3
    assert calls == [[sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard.py"), "--server.port", "8600"]]


def test_dashboard_without_a_checkout_says_what_to_do(monkeypatch, capsys):
    monkeypatch.setattr(cli, "dashboard_script", lambda: None)
    monkeypatch.setattr(cli.subprocess, "call", lambda args: pytest.fail("streamlit must not start"))
    assert cli.main(["dashboard"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "dashboard.py" in lines[0] and "pip install -e ." in lines[0]


def test_help_does_not_import_torch_and_python_m_xmodal_works():
    probe = ("import sys; from xmodal.cli import main; rc = main(['--help']); "
             "heavy = sorted(m for m in ('torch', 'streamlit', 'numpy') if m in sys.modules); "
             "print('HEAVY', heavy); sys.exit(rc)")
    res = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
    res = subprocess.run([sys.executable, "-m", "xmodal", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert "dashboard" in res.stdout and "train" in res.stdout


# ---- pyproject.toml ----

def test_pyproject_metadata_and_console_script():
    project = _pyproject()["project"]
    assert project["name"] == "xmodal"
    assert project["requires-python"] == ">=3.11"
    assert project["readme"] == "README.md"
    assert project["scripts"] == {"xmodal": "xmodal.cli:main"}
    assert _pyproject()["build-system"]["build-backend"] == "setuptools.build_meta"


def test_dependencies_match_requirements_txt():
    """Every line of requirements.txt is a dependency (or an extra) with the same bounds, and back."""
    project = _pyproject()["project"]
    runtime = _requirements("\n".join(project["dependencies"]))
    extra = _requirements("\n".join(d for deps in project["optional-dependencies"].values() for d in deps))
    wanted = _requirements((ROOT / "requirements.txt").read_text(encoding="utf-8"))
    assert {"torch", "torchvision", "pytest"} <= set(wanted)
    for name, spec in wanted.items():
        declared = runtime.get(name, extra.get(name))
        assert declared == spec, f"{name}{spec} in requirements.txt, {declared!r} in pyproject.toml"
    assert set(runtime) <= set(wanted), f"not in requirements.txt: {sorted(set(runtime) - set(wanted))}"
    assert not set(runtime) & set(extra)
    assert runtime["torch"].startswith("==") and runtime["torchvision"].startswith("==")


# ---- a real wheel ----

def _can_build() -> str | None:
    """Why a wheel cannot be built here without the network, or None."""
    if importlib.util.find_spec("pip") is None:
        return "pip is not installed"
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed (pip install 'setuptools>=70.1')"
    major, minor = (int(x) for x in importlib.metadata.version("setuptools").split(".")[:2])
    if (major, minor) < (70, 1) and importlib.util.find_spec("wheel") is None:
        return "setuptools < 70.1 needs the wheel package to build wheels (pip install 'setuptools>=70.1')"
    return None


def test_wheel_holds_the_library_and_no_tests(tmp_path):
    why = _can_build()
    if why:
        pytest.skip(why)
    # build from a copy: setuptools writes build/ and *.egg-info beside pyproject.toml
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("xmodal", "tests", "pages"):
        shutil.copytree(ROOT / folder, src / folder, ignore=skip)
    for name in ("pyproject.toml", "README.md", "dashboard.py"):
        shutil.copy2(ROOT / name, src / name)
    out = tmp_path / "dist"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                          "-q", "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    wheels = list(out.glob("xmodal-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    with zipfile.ZipFile(wheels[0]) as whl:
        names = set(whl.namelist())
        entry_points = next(whl.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "xmodal").rglob("*.py") if "__pycache__" not in p.parts}
    assert {"xmodal/evaluation/metrics.py", "xmodal/data/__init__.py", "xmodal/cli.py"} <= names
    assert source <= names, f"missing from the wheel: {sorted(source - names)[:10]}"
    assert not [n for n in names if n.split("/")[0] in ("tests", "pages", "dashboard.py", "checkpoints")]
    assert re.search(r"^xmodal = xmodal\.cli:main$", entry_points, re.M), entry_points


def test_old_import_paths_warn_once_and_give_the_new_modules():
    import importlib
    import warnings

    from xmodal import _moved
    for old, targets in _moved.MOVED.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert [w.category for w in caught] == [DeprecationWarning], old
        assert all(t in str(caught[0].message) for t in targets)
        if len(targets) == 1:
            assert module is importlib.import_module(targets[0])  # the same object: patches and isinstance agree
        else:
            for target in targets:
                names = [n for n in vars(importlib.import_module(target)) if not n.startswith("_")]
                assert all(getattr(module, n) is getattr(importlib.import_module(target), n) for n in names)
    with pytest.warns(DeprecationWarning, match="xmodal.text.vocabulary.tokenize"):
        from xmodal.text import tokenize  # noqa: F401
    with pytest.warns(DeprecationWarning, match="xmodal.training.loop.train_one_epoch"):
        from xmodal.training import train_one_epoch  # noqa: F401
    with pytest.raises(ImportError):
        from xmodal.training import no_such_name  # noqa: F401


def imported_modules(path: Path) -> set[str]:
    """The absolute names of the xmodal modules and packages a source file imports (at any depth)."""
    import ast
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    package = parts[:-1]  # a module's package; an __init__'s own package
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names |= {module} | {f"{module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return {n for n in names if n.startswith("xmodal")}


def test_layers_point_down_the_library_never_imports_the_dashboard():
    # pages -> dashboard -> library; the bench sits on top (it times the dashboard too) and nothing imports it
    for path in (ROOT / "xmodal").rglob("*.py"):
        top = path.relative_to(ROOT / "xmodal").parts[0]
        names = imported_modules(path)
        if top not in ("dashboard", "bench"):
            assert not [n for n in names if n.startswith("xmodal.dashboard")], f"{path.relative_to(ROOT)}"
        if top != "bench":
            assert not [n for n in names if n.startswith("xmodal.bench")], f"{path.relative_to(ROOT)}"
