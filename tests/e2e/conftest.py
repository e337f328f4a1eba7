"""The fault suite's results table: each test adds rows (fault, events, lost, duplicated, mismatched) with
``fault_table.add(...)``; the table is printed at the end of the session (terminal summary).

Short mode (default; CI runs it in ``make test``, under 4 minutes on 2 cores) and long mode (more events,
more kills, more broker restarts) run the same tests::

    FEATURESTREAM_E2E_LONG=1 .venv/bin/pytest tests/e2e
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from .harness import LONG


@dataclass
class Row:
    fault: str
    events: int
    lost: int
    duplicated: int
    mismatched: int
    seconds: float


class FaultTable:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, fault: str, events: int, outcome, seconds: float = 0.0) -> None:
        self.rows.append(Row(fault, events, outcome.lost, outcome.duplicated, outcome.mismatched, seconds))

    def render(self) -> str:
        head = ("fault", "events", "lost", "duplicated", "mismatched", "seconds")
        body = [(r.fault, str(r.events), str(r.lost), str(r.duplicated), str(r.mismatched), f"{r.seconds:.0f}")
                for r in self.rows]  # fmt: skip
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
        line = "-+-".join("-" * w for w in widths)
        fmt = lambda cells: " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))  # noqa: E731
        return "\n".join([fmt(head), line, *(fmt(b) for b in body)])


_TABLE = FaultTable()


def pytest_collection_modifyitems(config, items) -> None:
    if LONG:  # more events and kills than the suite-wide 300 s per test allows
        for item in items:
            if "e2e" in item.nodeid and not item.get_closest_marker("timeout"):
                item.add_marker(pytest.mark.timeout(1800))


@pytest.fixture(scope="session")
def fault_table() -> FaultTable:
    return _TABLE


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not _TABLE.rows:
        return
    mode = "long" if LONG else "short"
    terminalreporter.write_sep("=", f"fault suite ({mode} mode): every event checked against the oracle")
    for line in _TABLE.render().splitlines():
        terminalreporter.write_line(line)
