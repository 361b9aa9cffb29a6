"""The background job that makes a map's sprite sheets (``sprites.py``) when the map has none: a map made
before sheets existed, or whose sheets were removed. A new map's own job makes them as its last phase
(``projection.compute``).

``python -m xmodal.dashboard.maps.sprite_job PROJECTION_FILE`` reads the map (``projection.load``: its items'
catalogue positions and photos) and builds the sheets, reporting through ``xmodal.dashboard.jobs.tasks``; the
Embeddings page starts it (``start``) and polls.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import projection
from ..jobs import tasks
from .sprites import build_for_map, fingerprint_of, sprite_folder, task_name


def start(run_dir: Path, projection_file: Path, folder: Path) -> bool:
    """Make the sheets of a map that has none in a background process; False when already under way."""
    return bool(tasks.start([Path(run_dir)], task_name(folder),
                            ["-m", "xmodal.dashboard.maps.sprite_job", str(projection_file)]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xmodal.dashboard.maps.sprite_job", description=__doc__.split("\n\n")[0])
    p.add_argument("projection", type=Path, metavar="PROJECTION_FILE", help="a run's projection_<key>.npz")
    a = p.parse_args(argv)
    if not a.projection.is_file():
        p.error(f"{a.projection} is not a map file (projection_<key>.npz in a run folder)")
    data = projection.load(a.projection)
    run_dir = a.projection.parent
    folder = sprite_folder(run_dir, fingerprint_of(run_dir), data["index"])
    return tasks.run_each([str(run_dir)], task_name(folder),
                          lambda d, progress: build_for_map(d, data["index"], data["images"], progress))


if __name__ == "__main__":
    sys.exit(main())
