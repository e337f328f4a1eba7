"""Where the offline dataset lives on disk, and how its file names encode what each file holds.

One hive-style Parquet dataset per feature set::

    <data_dir>/<feature set>/date=YYYY-MM-DD/part-p<partition>-o<first>-<last>.parquet

``date`` is the UTC date of the event time, ``partition`` the Kafka partition the rows came from and
``first``/``last`` the smallest and largest Kafka offset of the rows in the file. The sink writes each
file under a temporary name starting with ``.`` in the same directory and renames it into place, so a
reader (pyarrow ignores names starting with ``.`` or ``_``) never sees a partial file, and file names
alone tell which offsets may already be written after a crash.

Every path is built from a validated feature-set name and from integers, never from raw input.
"""

from __future__ import annotations

import datetime as _dt
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from aggregations.definitions import check_name

from .storage import Location, StorePath, open_location

DAY_MS = 86_400_000
TEMP_PREFIX = ".tmp-"
SOURCE_FILE = "_source.json"  # which topic the dataset's partitions and offsets refer to
_EPOCH = _dt.date(1970, 1, 1)
_DATE_DIR = re.compile(r"^date=(\d{4})-(\d{2})-(\d{2})$")
_PART_FILE = re.compile(r"^part-p(\d{1,9})-o(\d{1,19})-(\d{1,19})\.parquet$")


@dataclass(frozen=True, order=True)
class PartFile:
    """One data file of the dataset, as described by its name."""

    day: int  # days since 1970-01-01 (UTC)
    partition: int
    first: int
    last: int
    path: Location


def dataset_dir(data_dir: str | Path | StorePath, feature_set: str) -> Location:
    """The dataset root of a feature set under a local directory or an ``s3://`` URI (the name is checked)."""
    return open_location(data_dir) / check_name("feature set", feature_set)


def day_of(ts_ms: int) -> int:
    """UTC day number (days since the epoch) of an epoch-ms timestamp."""
    return int(ts_ms) // DAY_MS


def date_label(day: int) -> str:
    """``YYYY-MM-DD`` of a UTC day number."""
    day = _non_negative("day", day)
    return (_EPOCH + _dt.timedelta(days=day)).isoformat()


def date_dir(root: Location, day: int) -> Location:
    """The ``date=YYYY-MM-DD`` directory of a day under a dataset root."""
    return root / f"date={date_label(day)}"


def part_name(partition: int, first: int, last: int) -> str:
    """File name of the rows of one Kafka partition with offsets in [first, last]."""
    partition, first, last = (
        _non_negative(n, v) for n, v in (("partition", partition), ("first", first), ("last", last))
    )
    if first > last:
        raise ValueError(f"first offset {first} is after last offset {last}")
    return f"part-p{partition}-o{first}-{last}.parquet"


def source_path(root: Location) -> Location:
    """The file naming the Kafka topic whose offsets the dataset's file names and ``_offset`` refer to."""
    return root / SOURCE_FILE


def temp_path(final: Location) -> Location:
    """A unique temporary name next to ``final``; hidden from readers by its leading dot."""
    return final.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}-{final.name}")


def parse_day(dirname: str) -> int | None:
    """Day number of a ``date=YYYY-MM-DD`` directory name, or None if the name is not one."""
    match = _DATE_DIR.match(dirname)
    if not match:
        return None
    try:
        date = _dt.date(int(match.group(1)), int(match.group(2)), int(match.group(3)))
    except ValueError:
        return None
    return (date - _EPOCH).days


def parse_part(filename: str) -> tuple[int, int, int] | None:
    """(partition, first, last) of a data file name, or None if the name is not one."""
    match = _PART_FILE.match(filename)
    if not match:
        return None
    partition, first, last = (int(g) for g in match.groups())
    return (partition, first, last) if first <= last else None


def day_files(root: Location):
    """(day, file) of every file in a ``date=`` directory of the dataset (one listing on an object store)."""
    if isinstance(root, StorePath):
        for file in root.walk_files():
            parts = file.relative_to(root).parts
            if len(parts) == 2 and (day := parse_day(parts[0])) is not None:
                yield day, file
        return
    if not root.is_dir():
        return
    for day_dir in root.iterdir():
        day = parse_day(day_dir.name)
        if day is None or not day_dir.is_dir():
            continue
        for file in day_dir.iterdir():
            yield day, file


def list_parts(root: Location, partition: int | None = None) -> list[PartFile]:
    """Data files under a dataset root (optionally of one Kafka partition), sorted; other files are ignored."""
    out = []
    for day, file in day_files(root):
        parsed = parse_part(file.name)
        if parsed is None or (partition is not None and parsed[0] != partition):
            continue
        out.append(PartFile(day, *parsed, file))
    return sorted(out)


def list_temps(root: Location, partition: int | None = None) -> list[Location]:
    """Leftover temporary files (from a writer that died before renaming), optionally of one partition."""
    out = []
    for _day, file in day_files(root):
        if file.name.startswith(TEMP_PREFIX):
            parsed = parse_part(file.name[len(TEMP_PREFIX) + 33 :])  # skip the uuid and its dash
            if parsed is not None and (partition is None or parsed[0] == partition):
                out.append(file)
    return sorted(out)


def _non_negative(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            as_int = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
        if as_int != value:
            raise ValueError(f"{name} must be an integer, got {value!r}")
        value = as_int
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value
