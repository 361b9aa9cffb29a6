"""The ``xmodal`` command: one name for the package's CLIs, ``xmodal <command> [its arguments]``.

Each command hands its arguments, untouched, to the CLI that ``python -m`` runs (``xmodal train ...`` is
``python -m xmodal.train ...``). Their modules are imported only when their command runs, so
``xmodal --help`` answers at once and does not import PyTorch. ``xmodal dashboard [streamlit args]`` runs
``streamlit run dashboard.py`` for the checkout this package was installed from (``pip install -e .``);
the dashboard is not part of the wheel.
"""
from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

from . import __version__

# command -> (module whose ``main(argv)`` runs it, one line for --help); "dashboard" is handled here
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("xmodal.train", "train a model on a catalogue (python -m xmodal.train)"),
    "evaluate": ("xmodal.evaluate", "retrieval metrics of a run's best weights (python -m xmodal.evaluate)"),
    "report": ("xmodal.report", "results table over run folders (python -m xmodal.report)"),
    "data": ("xmodal.data.__main__", "import, check or generate catalogues (python -m xmodal.data)"),
    "export": ("xmodal.export", "a run's embeddings as parquet or for TensorBoard (python -m xmodal.export)"),
    "compose": ("xmodal.compose", "composed-query benchmark: photo + words (python -m xmodal.compose)"),
    "bench": ("xmodal.bench.cli", "performance bench, each figure beside its limit (python -m xmodal.bench)"),
    "dashboard": ("", "the Streamlit dashboard of this checkout (streamlit run dashboard.py [args])"),
}


def usage() -> str:
    """The ``xmodal --help`` text: every command with one line."""
    width = max(map(len, COMMANDS))
    lines = ["usage: xmodal <command> [arguments]   (xmodal <command> --help for its own)", "", "commands:"]
    lines += [f"  {name:<{width}}  {line}" for name, (_, line) in COMMANDS.items()]
    return "\n".join(lines)


def dashboard_script() -> Path | None:
    """``dashboard.py`` beside the ``xmodal`` package (a checkout or an editable install), else None."""
    script = Path(__file__).resolve().parent.parent / "dashboard.py"
    return script if script.is_file() else None


def run_dashboard(args: list[str]) -> int:
    """``streamlit run dashboard.py *args`` with this Python; returns Streamlit's exit code."""
    script = dashboard_script()
    if script is None:
        print("error: dashboard.py is not beside this xmodal package (the wheel does not ship the dashboard); "
              "clone the repository and run `pip install -e .` there, or `streamlit run dashboard.py` in it",
              file=sys.stderr)
        return 2
    try:
        return subprocess.call([sys.executable, "-m", "streamlit", "run", str(script), *args])
    except KeyboardInterrupt:  # Ctrl-C reaches Streamlit too; it stops on its own
        return 130


def main(argv: list[str] | None = None) -> int:
    """Run ``xmodal <command> [arguments]``.

    Args:
        argv: the arguments after ``xmodal``; ``sys.argv[1:]`` when None.

    Returns:
        The command's exit code; 0 for ``--help``, 2 with no command or an unknown one.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"xmodal {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"xmodal: unknown command {command!r}; choose from {', '.join(COMMANDS)} (see xmodal --help)",
              file=sys.stderr)
        return 2
    if command == "dashboard":
        return run_dashboard(rest)
    # imported here, not at the top: the command's module may import PyTorch, and --help must stay fast
    module = importlib.import_module(COMMANDS[command][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
