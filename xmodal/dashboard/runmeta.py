"""Run management: notes, tags and a hidden flag kept in the run folder, the config differences between two
runs, and deleting a run folder safely.

``notes.json`` in the run folder holds ``{"notes": str, "tags": [str], "hidden": bool}``, written atomically
(``xmodal.runs.atomic_write_json``). Notes and tags are typed by users: they are data, shown as text, and
bounded in size. A run is never deleted while a live process holds its lock (``xmodal.runs.read_lock``) or
while its status says it is running here.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

from ..paths import checkpoints_dir
from ..runs import RunLock, RunLocked, atomic_write_json, read_json, read_lock, read_status

META_FILE = "notes.json"
MAX_NOTES = 5000  # characters
MAX_TAGS, MAX_TAG = 20, 40
# config.json keys that differ between any two runs and say nothing about how they were trained
DIFF_IGNORED = ("run_id", "created", "train.run_id", "train.out", "data.report")


def read_meta(run_dir: Path) -> dict:
    """``{"notes", "tags", "hidden"}`` of a run (defaults when absent; a damaged or foreign file reads as far as
    it makes sense)."""
    raw = read_json(Path(run_dir) / META_FILE, default={})
    raw = raw if isinstance(raw, dict) else {}
    notes = raw.get("notes") if isinstance(raw.get("notes"), str) else ""
    tags = [t for t in raw.get("tags") or [] if isinstance(t, str)] if isinstance(raw.get("tags"), list) else []
    return {"notes": notes[:MAX_NOTES], "tags": tags[:MAX_TAGS], "hidden": raw.get("hidden") is True}


def clean_tags(tags: str | list[str]) -> list[str]:
    """Tags from a comma-separated string or a list: trimmed, control characters dropped, each at most
    ``MAX_TAG`` characters, no duplicates, at most ``MAX_TAGS``."""
    items = tags.split(",") if isinstance(tags, str) else list(tags)
    out: list[str] = []
    for t in items:
        t = re.sub(r"[\x00-\x1f\x7f]", "", " ".join(str(t).split()))[:MAX_TAG]
        if t and t not in out:
            out.append(t)
    return out[:MAX_TAGS]


def write_meta(run_dir: Path, notes: str | None = None, tags: str | list[str] | None = None,
               hidden: bool | None = None) -> dict:
    """Update the given fields of a run's ``notes.json`` atomically; returns the record as stored.

    Raises:
        ValueError: the notes are longer than ``MAX_NOTES`` characters.
    """
    meta = read_meta(run_dir)
    if notes is not None:
        notes = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", str(notes))
        if len(notes) > MAX_NOTES:
            raise ValueError(f"the notes are {len(notes):,} characters; keep them under {MAX_NOTES:,}")
        meta["notes"] = notes
    if tags is not None:
        meta["tags"] = clean_tags(tags)
    if hidden is not None:
        meta["hidden"] = bool(hidden)
    atomic_write_json(Path(run_dir) / META_FILE, meta)
    return meta


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"train.lr": 0.001, ...}`` (lists kept whole)."""
    if not isinstance(config, dict):
        return {prefix: config} if prefix else {}
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def config_diff(a: dict, b: dict, ignored: tuple[str, ...] = DIFF_IGNORED) -> list[dict[str, str]]:
    """The config keys whose values differ between two runs, as rows ``{"setting", "a", "b"}`` of plain
    text (``—`` where a run lacks the key), sorted by key; bookkeeping keys (``DIFF_IGNORED``) left out."""
    fa, fb = flatten(a), flatten(b)
    rows = []
    for key in sorted(set(fa) | set(fb)):
        if any(key == i or key.startswith(f"{i}.") for i in ignored):
            continue
        va, vb = fa.get(key, "—"), fb.get(key, "—")
        if va != vb:
            rows.append({"setting": key, "a": str(va), "b": str(vb)})
    return rows


def delete_problem(run_dir: Path, root: Path | None = None) -> str | None:
    """Why ``run_dir`` must not be deleted now, or None when it may be."""
    run_dir = Path(run_dir)
    root = Path(root or checkpoints_dir()).resolve()
    if run_dir.parent.resolve() != root:
        return f"{run_dir.name} is not a folder of the checkpoints folder {root}"
    if not ((run_dir / "config.json").is_file() or (run_dir / "status.json").is_file()):
        return f"{run_dir.name} is not a run folder (no config.json or status.json)"
    if lock := read_lock(run_dir):
        return (f"process {lock.get('pid') or '?'} on {lock.get('host') or '?'} holds its lock: stop the run "
                "first")
    if read_status(run_dir).get("state") == "running":
        return "it is running: stop it first"
    return None


def delete_run(run_dir: Path, root: Path | None = None) -> None:
    """Delete a run folder (a link to a run folder: only the link).

    Raises:
        ValueError: ``delete_problem`` names a reason not to.
    """
    run_dir = Path(run_dir)
    if why := delete_problem(run_dir, root):
        raise ValueError(f"{run_dir.name} was not deleted: {why}")
    if run_dir.is_symlink():
        run_dir.unlink()
        return
    try:
        lock = RunLock.acquire(run_dir, "delete (dashboard)")  # no trainer can claim it while it goes
    except RunLocked as err:
        raise ValueError(f"{run_dir.name} was not deleted: {err}") from None
    try:
        shutil.rmtree(run_dir)
    finally:
        lock.release()
