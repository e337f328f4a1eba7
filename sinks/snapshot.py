"""Consistent snapshots of a dataset while compaction and retention rewrite it, crash-safe at every step.

The sink and backfill only ever *add* files (each atomically). Compaction replaces several files by
one and retention deletes whole days; both must look atomic to readers and survive kill -9 at any
instant. Three pieces make that so:

* ``_snapshot.lock`` (``flock``): readers (dataset reads, the sink's ``written_offsets``) hold it
  *shared* while they list and read files; a rewrite holds it *exclusive* only for its short commit
  and apply (a few renames and unlinks), so a live reader never sees a half-applied rewrite and never
  has a file deleted under it. A killed process releases its locks with it.
* ``_compaction.json``, the journal: a compaction first writes its outputs under hidden staged names
  (``.compact-<tx>-part-...parquet``, ignored by every reader), fsyncs them, then writes the journal
  (``os.replace`` + directory fsync) listing its inputs and ``[staged, final]`` outputs. That rename
  is the commit point. Applying it renames each staged output to its final name, deletes the inputs,
  then deletes the journal. Whoever finds a journal (a reader) interprets it: inputs and final names
  are hidden, each output is read from its staged name if that still exists, else its final name; a
  maintenance run (``recover``) rolls it forward, idempotently.
* ``_maintenance.lock``: one compaction or retention at a time; ``recover`` deletes what an
  uncommitted compaction left (staged files with no journal) and what an interrupted retention left
  (``.deleting-date=...`` directories, already invisible).

``live_parts`` is the one listing every reader uses; without a journal it equals ``list_parts``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .layout import PartFile, list_parts, parse_day, parse_part, temp_path

JOURNAL = "_compaction.json"
SNAPSHOT_LOCK = "_snapshot.lock"
MAINTENANCE_LOCK = "_maintenance.lock"
STAGED_PREFIX = ".compact-"
DELETING_PREFIX = ".deleting-"


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError:  # a read-only reader: lock the existing file, or none exists to honour
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            fd = None
    try:
        if fd is not None:
            fcntl.flock(fd, mode)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


@contextlib.contextmanager
def reading(root: Path) -> Iterator[None]:
    """Hold the dataset's snapshot lock shared: no rewrite is applied while the block lists and reads files."""
    root = Path(root)
    if not root.is_dir():
        yield
        return
    with _flock(root / SNAPSHOT_LOCK, fcntl.LOCK_SH):
        yield


@contextlib.contextmanager
def rewriting(root: Path) -> Iterator[None]:
    """Hold the snapshot lock exclusive (waits for current readers; keep the block short)."""
    with _flock(Path(root) / SNAPSHOT_LOCK, fcntl.LOCK_EX):
        yield


@contextlib.contextmanager
def maintenance(root: Path) -> Iterator[None]:
    """One compaction/retention at a time per dataset; leftovers of a killed one are recovered on entry."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with _flock(root / MAINTENANCE_LOCK, fcntl.LOCK_EX):
        recover(root)
        yield


def read_journal(root: Path) -> dict | None:
    try:
        return json.loads((Path(root) / JOURNAL).read_text())
    except FileNotFoundError:
        return None


def write_journal(root: Path, journal: dict) -> None:
    """The commit point of a compaction: the journal appears atomically and durably, or not at all."""
    path = Path(root) / JOURNAL
    tmp = temp_path(path)
    with open(tmp, "w") as handle:
        json.dump(journal, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(root))


def live_parts(root: Path, partition: int | None = None) -> list[PartFile]:
    """The data files a reader must read: ``list_parts`` with a committed compaction's journal applied.

    Call inside ``reading(root)`` so that no rewrite is applied between this listing and the reads.
    """
    root = Path(root)
    parts = list_parts(root, partition)
    journal = read_journal(root)
    if journal is None:
        return parts
    hidden = set(journal["inputs"]) | {final for _, final in journal["outputs"]}
    out = [p for p in parts if p.path.relative_to(root).as_posix() not in hidden]
    for staged, final in journal["outputs"]:
        final_path = root / final
        day = parse_day(final_path.parent.name)
        parsed = parse_part(final_path.name)
        if day is None or parsed is None or (partition is not None and parsed[0] != partition):
            continue
        path = root / staged if (root / staged).exists() else final_path
        if path.exists():
            out.append(PartFile(day, *parsed, path))
    return sorted(out)


def apply_journal(root: Path, journal: dict, step=lambda name: None) -> None:
    """Roll a committed compaction forward (idempotent; under ``rewriting``): outputs in, inputs out, journal gone."""
    root = Path(root)
    dirs = set()
    for staged, final in journal["outputs"]:
        if (root / staged).exists():
            os.replace(root / staged, root / final)
            dirs.add((root / final).parent)
            step("rename")
    finals = {final for _, final in journal["outputs"]}
    for fsync_target in sorted(dirs):
        fsync_dir(fsync_target)
    for rel in journal["inputs"]:
        if rel not in finals:  # an output may have taken an input's name (same offset range)
            (root / rel).unlink(missing_ok=True)
            dirs.add((root / rel).parent)
            step("unlink")
    for fsync_target in sorted(dirs):
        if fsync_target.exists():
            fsync_dir(fsync_target)
    (root / JOURNAL).unlink(missing_ok=True)
    fsync_dir(root)
    step("journal-removed")


def recover(root: Path) -> dict:
    """Finish or undo what a killed compaction/retention left (caller holds the maintenance lock)."""
    root = Path(root)
    found = {"rolled_forward": 0, "staged_removed": 0, "deleting_removed": 0}
    journal = read_journal(root)
    if journal is not None:
        with rewriting(root):
            apply_journal(root, journal)
        found["rolled_forward"] = 1
    for entry in root.iterdir():
        if entry.name.startswith(DELETING_PREFIX) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            found["deleting_removed"] += 1
        elif entry.name.startswith(".tmp-") and entry.name.endswith(JOURNAL):
            entry.unlink(missing_ok=True)
        elif parse_day(entry.name) is not None and entry.is_dir():
            for file in entry.iterdir():
                if file.name.startswith(STAGED_PREFIX):  # never committed: no journal names it
                    file.unlink(missing_ok=True)
                    found["staged_removed"] += 1
    return found
