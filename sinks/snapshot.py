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

On an object store there is no ``flock`` and no rename, so readers take no lock and nothing a reader
may have listed is deleted at once. Each maintenance transaction writes its own journal
``_compaction-<tx>.json`` (one PUT: the commit point) naming its inputs (hidden from then on) and its
``[staged, final]`` outputs; applying it copies each staged output to its final name (a server-side copy:
the object appears whole); retention is a transaction with inputs and no outputs. The inputs, the staged
copies and the journal itself are deleted only by a maintenance run at least ``grace`` seconds
(``FEATURESTREAM_STORE_GRACE_S``, default one hour) after the commit. Readers list the files first and
the journals second, so any listing, together with the journals read right after it, names a set of
objects that all exist for ``grace`` seconds: a reader that lists and reads within that time sees one
snapshot, every event exactly once. One maintenance run at a time holds a lease object
(``_maintenance.lease``); a run finding another's unexpired lease refuses to start.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from .layout import PartFile, day_files, list_parts, parse_day, parse_part, temp_path
from .storage import Location, StorePath, is_local

JOURNAL = "_compaction.json"
STORE_JOURNAL_PREFIX = "_compaction-"  # object stores: one journal per transaction, _compaction-<tx>.json
SNAPSHOT_LOCK = "_snapshot.lock"
MAINTENANCE_LOCK = "_maintenance.lock"
MAINTENANCE_LEASE = "_maintenance.lease"
STAGED_PREFIX = ".compact-"
DELETING_PREFIX = ".deleting-"
DEFAULT_GRACE_S = 3600.0
LEASE_S = 6 * 3600.0


class MaintenanceBusy(RuntimeError):
    """Another maintenance run holds the dataset's lease (object stores)."""


def grace_seconds() -> float:
    """How long objects a committed transaction replaced stay readable on an object store."""
    return float(os.environ.get("FEATURESTREAM_STORE_GRACE_S", DEFAULT_GRACE_S))


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
def reading(root: Location) -> Iterator[None]:
    """Hold the dataset's snapshot lock shared: no rewrite is applied while the block lists and reads files.

    On an object store there is no lock: deferred deletion (the module docstring) keeps the snapshot."""
    if not is_local(root):
        yield
        return
    root = Path(root)
    if not root.is_dir():
        yield
        return
    with _flock(root / SNAPSHOT_LOCK, fcntl.LOCK_SH):
        yield


@contextlib.contextmanager
def rewriting(root: Location) -> Iterator[None]:
    """Hold the snapshot lock exclusive (waits for current readers; keep the block short). No-op on a store."""
    if not is_local(root):
        yield
        return
    with _flock(Path(root) / SNAPSHOT_LOCK, fcntl.LOCK_EX):
        yield


@contextlib.contextmanager
def maintenance(root: Location) -> Iterator[None]:
    """One compaction/retention at a time per dataset; leftovers of a killed one are recovered on entry."""
    if not is_local(root):
        with _lease(root):
            recover(root)
            yield
        return
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with _flock(root / MAINTENANCE_LOCK, fcntl.LOCK_EX):
        recover(root)
        yield


def read_journal(root: Location) -> dict | None:
    """The local dataset's journal, if a committed compaction is not fully applied yet."""
    try:
        return json.loads((root / JOURNAL).read_text())
    except FileNotFoundError:
        return None


def read_journals(root: Location) -> list[dict]:
    """Every committed, not yet retired transaction's journal (at most one on a local dataset)."""
    if is_local(root):
        journal = read_journal(root)
        return [] if journal is None else [journal]
    out = []
    for entry in root.iterdir():
        if entry.name.startswith(STORE_JOURNAL_PREFIX) and entry.name.endswith(".json"):
            try:
                out.append(json.loads(entry.read_text()))
            except FileNotFoundError:  # retired between the listing and the read: its objects are gone too
                continue
    return sorted(out, key=lambda j: (j.get("committed_ms", 0), j["tx"]))


def journal_path(root: Location, journal: dict) -> Location:
    return root / JOURNAL if is_local(root) else root / f"{STORE_JOURNAL_PREFIX}{journal['tx']}.json"


def write_journal(root: Location, journal: dict) -> None:
    """The commit point of a compaction: the journal appears atomically and durably, or not at all."""
    if not is_local(root):
        journal.setdefault("committed_ms", int(time.time() * 1000))
        journal_path(root, journal).write_text(json.dumps(journal))
        return
    path = Path(root) / JOURNAL
    tmp = temp_path(path)
    with open(tmp, "w") as handle:
        json.dump(journal, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(Path(root))


def live_parts(root: Location, partition: int | None = None) -> list[PartFile]:
    """The data files a reader must read: ``list_parts`` with committed transactions' journals applied.

    Call inside ``reading(root)`` so that no rewrite is applied between this listing and the reads. The
    files are listed before the journals are read (the order the object-store protocol relies on).
    """
    if is_local(root):
        root = Path(root)
    parts = list_parts(root, partition)
    journals = read_journals(root)
    if not journals:
        return parts
    hidden = set()
    for journal in journals:
        hidden |= set(journal["inputs"]) | {final for _, final in journal["outputs"]}
    out = [p for p in parts if p.path.relative_to(root).as_posix() not in hidden]
    for journal in journals:
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


def involved(root: Location) -> set[str]:
    """Relative names of every file a pending transaction names (inputs, staged and final outputs)."""
    names: set[str] = set()
    for journal in read_journals(root):
        names |= set(journal["inputs"])
        for staged, final in journal["outputs"]:
            names |= {staged, final}
    return names


def apply_journal(root: Location, journal: dict, step=lambda name: None) -> None:
    """Roll a committed compaction forward (idempotent; under ``rewriting``): outputs in, inputs out, journal gone.

    On an object store only the outputs are copied to their final names; deletions wait for the grace
    period (``retire``)."""
    if not is_local(root):
        for staged, final in journal["outputs"]:
            if (root / staged).exists() and not (root / final).exists():
                root.fs.copy_file((root / staged).path, (root / final).path)
                step("rename")
        return
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


def retire(root: StorePath, journal: dict) -> None:
    """Delete what a committed object-store transaction replaced (its grace period is over), then its journal."""
    apply_journal(root, journal)  # its outputs are at their final names before anything goes
    finals = {final for _, final in journal["outputs"]}
    for rel in journal["inputs"]:
        if rel not in finals:
            (root / rel).unlink(missing_ok=True)
    for staged, _final in journal["outputs"]:
        (root / staged).unlink(missing_ok=True)
    journal_path(root, journal).unlink(missing_ok=True)


def _recover_store(root: StorePath) -> dict:
    found = {"rolled_forward": 0, "staged_removed": 0, "deleting_removed": 0, "retired": 0}
    now_ms = int(time.time() * 1000)
    journals = read_journals(root)
    named = set()
    for journal in journals:
        named |= {staged for staged, _ in journal["outputs"]}
        if journal.get("committed_ms", 0) + grace_seconds() * 1000 <= now_ms:
            retire(root, journal)
            found["retired"] += 1
        else:
            apply_journal(root, journal)
            found["rolled_forward"] += 1
    for _day, file in day_files(root):  # a staged file no journal names was never committed
        if file.name.startswith(STAGED_PREFIX) and file.relative_to(root).as_posix() not in named:
            file.unlink(missing_ok=True)
            found["staged_removed"] += 1
    return found


@contextlib.contextmanager
def _lease(root: StorePath) -> Iterator[None]:
    """Best-effort mutual exclusion of maintenance runs on an object store (no conditional PUT through pyarrow)."""
    path = root / MAINTENANCE_LEASE
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    now_ms = int(time.time() * 1000)
    try:
        held = json.loads(path.read_text())
    except FileNotFoundError:
        held = None
    if held is not None and held.get("expires_ms", 0) > now_ms:
        raise MaintenanceBusy(
            f"another maintenance run ({held.get('owner')}) holds {path} until "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(held['expires_ms'] / 1000))}; if it died, delete "
            "that object and run again"
        )
    path.write_text(json.dumps({"owner": owner, "expires_ms": now_ms + int(LEASE_S * 1000)}))
    if json.loads(path.read_text()).get("owner") != owner:
        raise MaintenanceBusy(f"another maintenance run took {path} at the same time")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError):
            if json.loads(path.read_text()).get("owner") == owner:
                path.unlink(missing_ok=True)


def recover(root: Location) -> dict:
    """Finish or undo what a killed compaction/retention left (caller holds the maintenance lock).

    On an object store: roll committed transactions forward, retire those past their grace period,
    delete staged files that no journal names."""
    if not is_local(root):
        return _recover_store(root)
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
