"""What batch ingests left in a dataset: one record per ingest id, and each history ingest's reserved partition.

Everything lives under ``<dataset>/_ingests/`` (hidden from readers by the leading ``_``), on a local disk or
an object store alike::

    _ingests/<ingest id>.json                       the ingest's record (mode, rows, started/finished, partition)
    _ingests/p<partition>.<ingest id>.<run>.claim   a run of a history ingest claiming a reserved partition

Each object belongs to one ingest id (the same id means the same rows) and is replaced whole (temporary file
and rename locally, one PUT on an object store), so concurrent ingests never overwrite each other's records.

**Reserved partitions.** History (``offline_only``) rows are stored under a partition no source topic has,
``INGEST_PARTITION_BASE`` and up, one per ingest id, with row numbers as offsets: (partition, offset) is an
event's identity in the dataset, so two ingests must never share a partition, and two runs of one ingest must
not use two. There is no lock on an object store (and pyarrow offers no conditional PUT), so a partition is
taken by *claim, then check*, the same code on both: a run writes its claim on a free partition (one its
ingest's other runs claim, else the lowest free), then lists the claims. A claim of another ingest on that
partition, or of another run of the same ingest on another partition, is a conflict: the run deletes its
claim, waits a random moment and tries again; else it keeps the partition and records it. Of two conflicting
claims, the one checked later was checked after the other was written, and a kept claim is never deleted,
so two ingests never both keep one partition and two runs of one ingest never keep two. This needs a listing
to show every object written before it (read-after-write consistency: local file systems, AWS S3, MinIO and
S3Proxy's ``filesystem`` backend give it; S3Proxy's ``filesystem-nio2`` backend does not: a listing racing a
PUT in the same prefix ends early). Runs of the same ingest at the same moment write identical files (named
by partition, day and block offsets), so they cannot duplicate rows either.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

from .layout import list_parts
from .storage import Location
from .writer import write_text_atomic

INGEST_PARTITION_BASE = 60_000  # dataset partitions >= this hold history ingests: source topics stay below
INGEST_PARTITION_LIMIT = 65_536  # aggregations.bookkeeping packs a partition into 16 bits (tie order)
RECORDS_DIR = "_ingests"
LEGACY_REGISTRY = "_ingests.json"  # one shared file, written by earlier versions: read, never written
CLAIM_ATTEMPTS = 40
_CLAIM = re.compile(r"^p(\d{1,5})\.([0-9a-f]{8,64})\.([0-9a-f]{8})\.claim$")


class IngestRecords:
    """The ingest records and partition claims of one dataset (see the module docstring)."""

    def __init__(self, root: Location):
        self.root = root
        self.dir = root / RECORDS_DIR

    def get(self, ingest_id: str) -> dict | None:
        """The record of an ingest, or None if it never started here."""
        try:
            return json.loads((self.dir / f"{_checked(ingest_id)}.json").read_text())
        except FileNotFoundError:
            return self._legacy().get(ingest_id)

    def put(self, ingest_id: str, record: dict) -> None:
        """Replace the record of an ingest (atomically: a reader sees the old one or the new one)."""
        write_text_atomic(self.dir / f"{_checked(ingest_id)}.json", json.dumps(record, indent=1) + "\n")

    def claims(self) -> list[tuple[int, str, str]]:
        """Every (partition, ingest id, run) claim, in no particular order."""
        if isinstance(self.dir, Path) and not self.dir.is_dir():
            return []
        out = []
        for entry in self.dir.iterdir():
            match = _CLAIM.match(entry.name)
            if match:
                out.append((int(match.group(1)), match.group(2), match.group(3)))
        return out

    def partition(self, ingest_id: str, rows: int, *, rng: random.Random | None = None) -> int:
        """The reserved partition of a history ingest: the one it kept before, else a free one, claimed and
        checked (module docstring); recorded in the ingest's record."""
        rng = rng or random.Random()
        run = f"{rng.getrandbits(32):08x}"
        stored = {p.partition for p in list_parts(self.root) if p.partition >= INGEST_PARTITION_BASE}
        stored |= {int(e["partition"]) for e in self._legacy().values() if "partition" in e}
        for attempt in range(CLAIM_ATTEMPTS):
            record = self.get(ingest_id) or {}
            if "partition" in record:  # kept before, or by a run of the same ingest meanwhile
                return int(record["partition"])
            claims = self.claims()
            others = {p for p, owner, _ in claims if owner != ingest_id}
            siblings = sorted((p, r) for p, owner, r in claims if owner == ingest_id and r != run)
            for p, r in siblings:  # a run of this ingest that died claiming a partition another ingest kept
                if p in others and self._kept_by_another(p, ingest_id, claims):
                    self._claim_path(p, ingest_id, r).unlink(missing_ok=True)
            partition = next((p for p, _ in siblings if p not in others | stored), None)
            if partition is None:
                partition = _lowest_free(others | stored, self.root)
            mine = self._claim_path(partition, ingest_id, run)
            write_text_atomic(mine, json.dumps({"claimed_ms": _now_ms()}) + "\n")
            conflicts = [
                (p, owner)
                for p, owner, r in self.claims()
                if (owner != ingest_id and p == partition) or (owner == ingest_id and p != partition)
            ]
            if not conflicts:
                self.put(ingest_id, {**record, "mode": "history", "partition": partition, "rows": rows,
                                     "started_at_ms": _now_ms()})  # fmt: skip
                return partition
            mine.unlink(missing_ok=True)  # another ingest claimed it too, or a run of this one claimed another
            time.sleep(rng.uniform(0, min(1.0, 0.02 * 2**attempt)))
        raise RuntimeError(
            f"{self.root}: no reserved ingest partition could be claimed in {CLAIM_ATTEMPTS} attempts; claims in "
            f"the way: {conflicts}. Run it again; if it fails the same way, ingests were killed while claiming: "
            f"delete their claim files (p<partition>.<ingest id>.<run>.claim) in {self.dir}"
        )

    def _kept_by_another(self, partition: int, ingest_id: str, claims: list[tuple[int, str, str]]) -> bool:
        """Whether an ingest other than ``ingest_id`` has kept ``partition`` (its record says so)."""
        for p, owner, _ in claims:
            if p == partition and owner != ingest_id and (self.get(owner) or {}).get("partition") == partition:
                return True
        return False

    def _claim_path(self, partition: int, ingest_id: str, run: str) -> Location:
        return self.dir / f"p{int(partition)}.{_checked(ingest_id)}.{run}.claim"

    def _legacy(self) -> dict:
        try:
            return json.loads((self.root / LEGACY_REGISTRY).read_text())
        except FileNotFoundError:
            return {}


def _lowest_free(taken: set[int], root: Location) -> int:
    for p in range(INGEST_PARTITION_BASE, INGEST_PARTITION_LIMIT):
        if p not in taken:
            return p
    raise ValueError(
        f"{root}: every reserved history-ingest partition ({INGEST_PARTITION_BASE}..{INGEST_PARTITION_LIMIT - 1}) "
        "is taken"
    )


def _checked(ingest_id: str) -> str:
    if not re.fullmatch(r"[0-9a-f]{8,64}", ingest_id):
        raise ValueError(f"not an ingest id: {ingest_id!r}")
    return ingest_id


def _now_ms() -> int:
    return int(time.time() * 1000)

