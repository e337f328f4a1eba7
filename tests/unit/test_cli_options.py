"""The shared CLI options are declared once (featurestream/options.py) and each command lists only the
options it uses."""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from pathlib import Path

import pytest

from featurestream import options
from featurestream.cli import build_parser

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_FLAGS = {o.flag: name for name, s in options.SHARED.items() for o in s.options if name != "urls"}

# What each command reads of the shared options (and nothing more).
EXPECTED = {
    "worker": {"definitions", "broker", "app_id", "topic_prefix", "auth", "kafka"},
    "replica": {"definitions", "broker", "app_id", "auth", "kafka"},
    "get": {"url", "auth"},
    "sink": {"definitions", "broker", "data_dir", "app_id", "topic_prefix", "kafka"},
    "training-set": {"definitions", "data_dir"},
    "compact": {"definitions", "data_dir"},
    "backfill": {"definitions", "broker", "data_dir", "app_id", "topic_prefix", "kafka"},
    "prune": {"definitions", "data_dir"},
    "bootstrap": {"definitions", "broker", "data_dir", "app_id", "kafka"},
    "produce": {"definitions", "broker", "topic_prefix", "kafka"},
    "preview": {"definitions"},
    "datasets": {"definitions", "data_dir"},
    "ingest": {"definitions", "broker", "data_dir", "topic_prefix", "kafka"},
    "describe": {"definitions", "data_dir"},
    "drift": {"definitions", "urls", "auth"},
    "verify": {"definitions", "broker", "data_dir", "url", "app_id", "topic_prefix", "auth", "kafka"},
    "plan": {"definitions", "broker", "app_id", "topic_prefix", "kafka"},
}
# How a command's code reads each shared option: ``args.<dest>`` or ``getattr(args, "<dest>"``.
DESTS = {
    "definitions": ["definitions"], "broker": ["broker"], "data_dir": ["data_dir"], "app_id": ["app_id"],
    "topic_prefix": ["topic_prefix"], "url": ["url"], "urls": ["url"], "auth": ["auth_token_file"],
    "kafka": ["kafka"],  # set from the Kafka options by featurestream.cli
}  # fmt: skip
READS = {
    name: "|".join(rf"args\.{d}\b|getattr\(args, [\"']{d}[\"']" for d in dests) + ("|_kafka_config\\(args\\)" if name == "kafka" else "")
    for name, dests in DESTS.items()
}


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name: p for name, p in sub.choices.items() if name != "retention"}


def _shared_of(parser: argparse.ArgumentParser) -> set[str]:
    names = set()
    for action in parser._actions:
        for flag in action.option_strings:
            if flag in SHARED_FLAGS:
                repeatable = isinstance(action, argparse._AppendAction)
                names.add("urls" if flag == "--url" and repeatable else SHARED_FLAGS[flag])
    return names


def test_every_command_is_expected():
    assert set(_commands()) == set(EXPECTED)


@pytest.mark.parametrize("command", sorted(EXPECTED))
def test_help_lists_only_the_shared_options_the_command_uses(command):
    parser = _commands()[command]
    assert _shared_of(parser) == EXPECTED[command]
    text = parser.format_help()
    if "kafka" not in EXPECTED[command]:
        assert "--kafka-" not in text and "Kafka security" not in text
    if "auth" not in EXPECTED[command]:
        assert "--auth-token-file" not in text


@pytest.mark.parametrize("command", sorted(EXPECTED))
def test_each_shared_option_a_command_lists_is_read_by_its_code(command):
    func = _commands()[command].get_default("func")
    source = inspect.getsource(sys.modules[func.__module__])
    unread = [name for name in EXPECTED[command] if not re.search(READS[name], source)]
    assert not unread, f"{command} lists {unread} but {func.__module__} never reads them"


def test_shared_flags_are_declared_only_in_the_option_table():
    declared = re.compile(r"add_argument\(\s*\"(--[a-z-]+)\"")
    offenders = []
    for path in [*REPO_ROOT.glob("stream/*.py"), *REPO_ROOT.glob("sinks/*.py"), *REPO_ROOT.glob("featurestream/*.py")]:
        for flag in declared.findall(path.read_text()):
            if flag in SHARED_FLAGS and path.name != "options.py":
                offenders.append(f"{path.relative_to(REPO_ROOT)}: {flag}")
    assert not offenders


def test_defaults_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("FEATURESTREAM_BROKER", "kafka:9092")
    monkeypatch.setenv("FEATURESTREAM_APP_ID", "fraud")
    monkeypatch.setenv("FEATURESTREAM_KAFKA_SECURITY_PROTOCOL", "ssl")
    args = _commands()["plan"].parse_args([])
    assert (args.broker, args.app_id, args.kafka_security_protocol) == ("kafka:9092", "fraud", "SSL")
    text = " ".join(_commands()["plan"].format_help().split())
    assert "env FEATURESTREAM_BROKER" in text and "env FEATURESTREAM_APP_ID" in text


def test_repeatable_url_does_not_take_the_environment_as_a_first_element(monkeypatch):
    monkeypatch.setenv("FEATURESTREAM_URL", "http://elsewhere:1")
    args = _commands()["drift"].parse_args(["--vector", "fraud", "--reference", "r.parquet", "--url", "http://a:1"])
    assert args.url == ["http://a:1"]


def test_sink_group_follows_the_app_id():
    from aggregations.loading import load_registry
    from sinks.parquet_sink import default_group

    fs = load_registry(options.SHARED["definitions"].options[0].default).feature_set("transactions")
    assert default_group(fs) == "featurestream-sink-transactions"  # unchanged for the default deployment
    assert default_group(fs, "fraud") == "fraud-sink-transactions"
