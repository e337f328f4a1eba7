"""List the holes in what each worker's table recovery applied, from worker logs written with
``FEATURESTREAM_TRACE=1`` (``stream.trace``).

Recovery reads a changelog partition from where its "Reading Starts At" table says and applies batches in
order; a batch that begins more than one offset past what was applied before is a hole (records fetched and
never applied). Compaction can remove records legitimately, but the short fault tests never compact, so there
any hole is a fault.

    .venv/bin/python -m tests.e2e.recovery_holes <worker log> [<worker log> ...]
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

_START_ROW = re.compile(r"\|\s*(\S+)\s*\|\s*(\d+)\s*\|\s*(-?\d+)\s*\|")
_APPLIED = re.compile(r"trace recovery applied (\{.*\}), skipped")


def holes(log_text: str) -> list[tuple[int, int, int]]:
    """(partition, last offset applied or read from, first offset of the next batch) of every hole."""
    last: dict[int, int] = {}
    found: list[tuple[int, int, int]] = []
    in_table = False
    for line in log_text.splitlines():
        if "Reading Starts At" in line:
            in_table = True
            continue
        if in_table:
            row = _START_ROW.match(line)
            if row:
                last[int(row.group(2))] = int(row.group(3))
                continue
            if line.startswith("+") or "| topic" in line:
                continue
            in_table = False
        applied = _APPLIED.search(line)
        if applied:
            for partition, (low, high) in ast.literal_eval(applied.group(1)).items():
                if partition in last and low > last[partition] + 1:
                    found.append((partition, last[partition], low))
                last[partition] = max(last.get(partition, -1), high)
    return found


def main(argv: list[str] | None = None) -> int:
    paths = argv if argv is not None else sys.argv[1:]
    if not paths:
        print(__doc__)
        return 2
    bad = 0
    for path in paths:
        found = holes(Path(path).read_text(errors="replace"))
        bad += bool(found)
        print(f"{path}: " + (", ".join(f"partition {p} after {a}: next applied {b}" for p, a, b in found) or "no holes"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
