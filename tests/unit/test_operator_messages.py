"""One-line errors and quiet logs: what a user or operator reads (featurestream.cli, featurestream.logs,
stream.status, the worker's web port check)."""

from __future__ import annotations

import logging
import socket
import types

import pytest

from featurestream.cli import main
from featurestream.logs import RepeatFilter
from stream.status import WorkerStatus


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


# --- one-line errors -------------------------------------------------------------------------------------


def test_a_web_port_in_use_is_one_line_before_any_kafka_work(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The broker does not exist: the port check comes first, so this fails fast on the port.
        assert main(["worker", "--broker", "127.0.0.1:1", "--web-port", str(port), "--state-dir", "/tmp/x"]) == 2
    err = one_line_error(capsys)
    assert err == (
        f"featurestream worker: error: web port {port} on 127.0.0.1 is already in use (another worker?); "
        "hint: stop it, or pass --web-port (env FEATURESTREAM_WEB_PORT)"
    )


@pytest.mark.parametrize(
    "source, where, what",
    [
        ("from aggregations import *\nx = (\n", ":2: SyntaxError: '(' was never closed", None),
        ("from aggregations import *\n\nsets = [FeatureSett('x')]\n", ":3: NameError: name 'FeatureSett' is not defined", None),
        ("import no_such_module_here\n", ":1: ModuleNotFoundError: No module named 'no_such_module_here'", None),
        (
            "from aggregations import *\nfs = FeatureSet(name='t', entities=[Entity('u')], timestamp_key='ts',\n"
            "    source='t', schema={'u': 'string', 'ts': 'timestamp', 'v': 'float64'},\n"
            "    aggregations=[Aggregation('v', ['count'], windows=['7x'])])\n",
            ":4: ValueError: aggregation ", "7x",
        ),
    ],
)  # fmt: skip
def test_an_error_in_the_definitions_file_names_its_line(tmp_path, capsys, source, where, what):
    path = tmp_path / "features.py"
    path.write_text(source)
    assert main(["preview", "events.csv", "--definitions", str(path)]) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"featurestream preview: error in the definitions: {path}{where}"), err
    assert what is None or what in err


def test_errors_elsewhere_are_not_blamed_on_the_definitions(tmp_path, capsys):
    assert main(["preview", str(tmp_path / "missing.csv")]) == 2
    err = one_line_error(capsys)
    assert "error in the definitions" not in err and "missing.csv" in err


# --- quiet logs ------------------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def record(name: str, level: int, msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_repeated_client_errors_pass_once_per_interval_then_say_how_many_were_dropped():
    clock = Clock()
    f = RepeatFilter(interval_s=30, clock=clock)
    passed = []
    for i in range(600):  # ten seconds of a broker outage at 60 lines a second
        clock.now = i / 60
        r = record("aiokafka.conn", logging.ERROR, "Unable connect to node with id %s: [Errno 111] port %d", 1, 9092)
        if f.filter(r):
            passed.append(r.getMessage())
    assert passed == ["Unable connect to node with id 1: [Errno 111] port 9092"]
    clock.now = 31
    r = record("aiokafka.conn", logging.ERROR, "Unable connect to node with id %s: [Errno 111] port %d", 1, 9092)
    assert f.filter(r) and r.getMessage().endswith("(and 599 similar in the last 30 s)")
    # Other kinds, other loggers and lower levels are not held back.
    assert f.filter(record("aiokafka.consumer", logging.ERROR, "Failed fetch messages from 1"))
    assert f.filter(record("stream.status", logging.WARNING, "broker unreachable"))
    assert f.filter(record("aiokafka.conn", logging.INFO, "Unable connect to node with id 1"))


def test_retriable_coordinator_errors_become_debug():
    f = RepeatFilter()
    r = record("kafka.coordinator", logging.WARNING, "Error fetching offsets: NotCoordinatorError: [Error 16]")
    assert not f.filter(r) and r.levelno == logging.DEBUG


def test_the_filter_installs_on_the_root_handlers():
    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        f = RepeatFilter()
        f.install()
        f.install()
        assert handler.filters.count(f) == 1
    finally:
        root.removeHandler(handler)


# --- the worker's status -----------------------------------------------------------------------------------


def status() -> WorkerStatus:
    return WorkerStatus("w1", "fraud", ["127.0.0.1:9092"], "http://w1:6066", bind="0.0.0.0:6066",
                        session_timeout_s=45, started=0.0)  # fmt: skip


def fake_app(assigned=(), in_recovery=False, remaining=0):
    recovery = types.SimpleNamespace(in_recovery=in_recovery, active_remaining_total=lambda: remaining)
    consumer = types.SimpleNamespace(assignment=lambda: set(assigned))
    return types.SimpleNamespace(tables=types.SimpleNamespace(recovery=recovery), consumer=consumer)


def test_health_says_degraded_while_the_broker_is_unreachable(caplog):
    s = status()
    assert s.health(ready=False) == (503, {"worker": "w1", "status": "recovering"})
    assert s.health(ready=True) == (200, {"worker": "w1", "status": "ok"})
    with caplog.at_level(logging.INFO, logger="stream.status"):
        s.record_probe(False, now=100.0)
        s.record_probe(False, now=105.0)  # said once, not per probe
        code, body = s.health(ready=True)
        assert code == 503 and body["status"] == "degraded" and "broker unreachable" in body["reason"]
        s.record_probe(True, now=130.0)
    assert s.health(ready=True)[0] == 200
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("broker unreachable: no bootstrap server of 127.0.0.1:9092 accepts connections")
    assert lines[1] == "broker reachable again after 30 s (127.0.0.1:9092)"


def test_until_ready_the_worker_says_what_it_waits_for_then_that_it_is_ready(caplog):
    s = status()
    with caplog.at_level(logging.INFO, logger="stream.status"):
        for second in range(0, 40):
            s.log_progress(fake_app(), ready=False, now=float(second))
        s.log_progress(fake_app(assigned={1}, in_recovery=True, remaining=1234), ready=False, now=45.0)
        s.log_progress(fake_app(assigned={1}), ready=True, now=50.0)
        s.log_progress(fake_app(assigned={1}), ready=True, now=51.0)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == (
        "worker w1 not ready after 5 s: waiting for its partitions from consumer group 'fraud'; if a worker of "
        "this group was killed without leaving (kill -9), the broker keeps that worker's partitions until its "
        "session expires: up to --session-timeout 45 s"
    )
    assert lines[1] == "worker w1 not ready after 15 s: waiting for its partitions from consumer group 'fraud' (as above)"
    assert "restoring its tables from their changelog topics (1234 changelog records to go)" in lines[-2]
    assert lines[-1] == "worker w1 ready after 50.0 s: serving http://w1:6066"
    assert sum("ready after" in line and "not ready" not in line for line in lines) == 1


def test_the_starting_line_says_where_the_worker_listens():
    line = status().starting_line(["transactions"], "kafka:9092")
    assert line == (
        "worker w1 starting: app id 'fraud', broker kafka:9092, feature sets transactions; HTTP on 0.0.0.0:6066 "
        "(advertised as http://w1:6066); /health answers 200 once ready"
    )


def test_a_missing_labels_file_says_what_the_rows_are(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["training-set", "--vector", "fraud", "--rows", "labels.parquet", "--out", "t.parquet"]) == 2
    err = one_line_error(capsys)
    assert err.startswith("featurestream training-set: error: --rows labels.parquet: no such file; hint: the rows")
    assert "entity column" in err and "tutorial" in err
