"""Dataset retention: delete whole days older than N days, never what a window still needs to bootstrap.

A day ``date=D`` is deleted only if every event it can hold is older than both

* ``now - keep_days`` (the retention the user asked for), and
* ``floor((ref - W) / P) * P - P`` where W/P is the feature set's longest window and its period
  (``FeatureSet.plan.longest``) and ``ref`` is the earlier of ``now`` and the start of the newest
  stored day: a bootstrap of online state from Parquet at ``ref`` reads from the start of its
  longest window (the window contract), and one more period is kept as a margin; and
* for plain features (``Feature``), ``ref - ttl - 1 day`` for the longest ttl; a plain feature without a
  ttl may read any earlier event, so such a set is never pruned.

Each day goes atomically: under the exclusive snapshot lock its directory is renamed to a hidden
``.deleting-date=...`` name (readers skip it; the rename is fsynced), then removed. A run killed in
between leaves only an invisible directory, removed by the next maintenance run. On an object store
(no rename) a day goes as a transaction without outputs: one journal naming its files hides them at
once, and they are deleted after the grace period (see ``snapshot``). Never deleting
the newest data is what keeps the sink's offset accounting safe: the live sink resumes from its
committed offsets, which belong to recent days.
"""

from __future__ import annotations

import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from aggregations import FeatureSet

from .layout import DAY_MS, dataset_dir, day_files, parse_day
from .snapshot import DELETING_PREFIX, fsync_dir, involved, maintenance, rewriting, write_journal
from .storage import is_local


@dataclass
class RetentionResult:
    cutoff_ms: int  # days ending at or before this instant were deleted
    deleted: list[str] = field(default_factory=list)  # date directory names
    kept: int = 0

    def summary(self, dry_run: bool = False) -> str:
        cutoff = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.cutoff_ms / 1000))
        verb = "would delete" if dry_run else "deleted"
        names = f": {', '.join(self.deleted)}" if self.deleted else ""
        return f"{verb} {len(self.deleted)} day(s) ending by {cutoff}, kept {self.kept}{names}"


def retention_cutoff(fs: FeatureSet, keep_days: float, now_ms: int, newest_day: int | None) -> int:
    """The instant before which whole days may be deleted (see the module docstring)."""
    if keep_days < 0:
        raise ValueError(f"keep_days must be >= 0, got {keep_days}")
    longest = fs.plan.longest
    ref = now_ms if newest_day is None else min(now_ms, newest_day * DAY_MS)
    starts = [int(now_ms - keep_days * DAY_MS)]
    if longest is not None:
        starts.append(((ref - longest.length) // longest.period) * longest.period - longest.period)
    if fs.plan.latest:  # a plain feature reads the latest event within its ttl; without a ttl, any event
        ttls = [f.ttl_ms for f in fs.plan.latest]
        starts.append(0 if None in ttls else ref - max(ttls) - DAY_MS)
    return min(starts)


def prune(
    fs: FeatureSet, store: str | Path, keep_days: float, *, now_ms: int | None = None, dry_run: bool = False
) -> RetentionResult:
    """Delete the days of ``fs``'s dataset that retention allows (see the module docstring)."""
    now_ms = int(time.time() * 1000) if now_ms is None else int(now_ms)
    root = dataset_dir(store, fs.name)
    if not root.is_dir():
        return RetentionResult(retention_cutoff(fs, keep_days, now_ms, None))
    with maintenance(root):
        days = sorted((d, entry) for entry in root.iterdir() if (d := parse_day(entry.name)) is not None)
        if not is_local(root):
            return _prune_store(root, fs, keep_days, now_ms, dry_run, days)
        newest = days[-1][0] if days else None
        result = RetentionResult(retention_cutoff(fs, keep_days, now_ms, newest))
        for day, entry in days:
            if (day + 1) * DAY_MS > result.cutoff_ms:
                result.kept += 1
                continue
            result.deleted.append(entry.name)
            if dry_run:
                continue
            hidden = root / f"{DELETING_PREFIX}{entry.name}"
            with rewriting(root):  # no reader is between listing and reading this day
                entry.rename(hidden)
                fsync_dir(root)
            shutil.rmtree(hidden)
    return result


def _prune_store(root, fs: FeatureSet, keep_days: float, now_ms: int, dry_run: bool, days) -> RetentionResult:
    """Object stores: each day's files hidden by one journal (a transaction without outputs)."""
    newest = days[-1][0] if days else None
    result = RetentionResult(retention_cutoff(fs, keep_days, now_ms, newest))
    files_of: dict[int, list[str]] = {}
    pending = involved(root)  # hidden already, by a transaction in its grace period
    for day, file in day_files(root):
        rel = file.relative_to(root).as_posix()
        if rel not in pending:
            files_of.setdefault(day, []).append(rel)
    for day, entry in days:
        if day not in files_of:
            continue
        if (day + 1) * DAY_MS > result.cutoff_ms:
            result.kept += 1
            continue
        result.deleted.append(entry.name)
        if not dry_run:
            write_journal(root, {"tx": uuid.uuid4().hex[:16], "inputs": sorted(files_of[day]), "outputs": []})
    return result
