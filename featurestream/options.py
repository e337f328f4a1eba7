"""The command-line options several commands share, declared once; each command asks for the ones it uses.

``add(parser, "definitions", "broker", "kafka", ...)`` adds the named entries of ``SHARED``. Every option's
default is its ``FEATURESTREAM_*`` environment variable (read when the parser is built), else the table's
default; the help text says both. ``stream/`` and ``sinks/`` never import this module: the CLI hands their
``add_commands`` the ``add`` function.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregations.naming import DEFAULT_APP_ID
from stream.auth import TOKEN_ENV, TOKEN_FILE_ENV

from .kafka_security import MECHANISMS, PASSWORD_ENV, PROTOCOLS, USERNAME_ENV

# The example definitions ship inside the package (featurestream/examples links to the repository's
# examples/), so an installed featurestream finds them as well as a checkout does.
EXAMPLE_DEFINITIONS = Path(__file__).resolve().parent / "examples" / "transactions" / "features.py"
DEFAULT_URL = "http://127.0.0.1:6066"

AddOptions = Callable[..., None]
"""``add(parser, *names)``: what ``stream.cli`` and ``sinks.cli`` receive to add shared options."""


def env(name: str, default: str) -> str:
    """``FEATURESTREAM_<name>`` from the environment, else ``default``."""
    return os.environ.get(f"FEATURESTREAM_{name}", default)


@dataclass(frozen=True)
class Option:
    """One flag: its environment variable (without the FEATURESTREAM_ prefix) supplies the default."""

    flag: str
    help: str
    env: str | None = None
    default: Any = None
    shown_default: str | None = None  # how the help names the default (else the default itself)
    kwargs: dict = field(default_factory=dict)  # type, metavar, action, ...

    def add_to(self, parser) -> None:
        default = self.default
        if self.env is not None and self.kwargs.get("action") != "append":  # the command reads env itself
            raw = os.environ.get(f"FEATURESTREAM_{self.env}")
            if raw:
                default = self.kwargs.get("type", str)(raw)
        where = [f"env FEATURESTREAM_{self.env}"] if self.env else []
        shown = self.shown_default if self.shown_default is not None else self.default
        if shown not in (None, ""):
            where.append(f"default {shown}")
        suffix = f" ({'; '.join(where)})" if where else ""
        parser.add_argument(self.flag, default=default, help=self.help + suffix, **self.kwargs)


@dataclass(frozen=True)
class Shared:
    """A named set of options, optionally shown under their own heading in --help."""

    options: tuple[Option, ...]
    group: str | None = None


SHARED: dict[str, Shared] = {
    "definitions": Shared((Option(
        "--definitions", "Python file or module defining the feature sets and vectors", env="DEFINITIONS",
        default=str(EXAMPLE_DEFINITIONS), shown_default="the example examples/transactions/features.py",
    ),)),
    "broker": Shared((Option(
        "--broker", "Kafka bootstrap servers, host:port[,host:port]", env="BROKER", default="127.0.0.1:9092",
    ),)),
    "data_dir": Shared((
        Option("--data-dir", "root of the Parquet datasets (the offline store): a directory or "
               "s3://bucket/prefix", env="DATA_DIR", default="data"),
        Option("--s3-endpoint", "S3-compatible endpoint of an s3:// data dir, e.g. http://127.0.0.1:9000 "
               "(or env AWS_ENDPOINT_URL); credentials come from the AWS variables, profile or instance role",
               env="S3_ENDPOINT", shown_default="AWS",
               kwargs={"metavar": "URL"}),
        Option("--s3-region", "region of an s3:// data dir (or env AWS_REGION, AWS_DEFAULT_REGION)",
               shown_default="us-east-1"),
    )),
    "app_id": Shared((Option(
        "--app-id", "the deployment's name: the workers' Faust app id and consumer group, and the sink's "
        "consumer group <app-id>-sink-<set>", env="APP_ID", default=DEFAULT_APP_ID,
    ),)),
    "topic_prefix": Shared((Option(
        "--topic-prefix", "prefix of source topic names: topic = PREFIX + FeatureSet.source",
        env="TOPIC_PREFIX", default="", shown_default="none",
    ),)),
    "url": Shared((Option("--url", "a worker's base URL", env="URL", default=DEFAULT_URL),)),
    "urls": Shared((Option(
        "--url", "a worker's base URL, repeatable (their answers are pooled)", env="URL", default=None,
        shown_default=DEFAULT_URL, kwargs={"action": "append"},
    ),)),
    "auth": Shared((Option(
        "--auth-token-file", f"file holding the workers' HTTP bearer token (or the token itself in env "
        f"{TOKEN_ENV}); a worker then requires it on every route but /health and /metrics, a client sends it",
        env=TOKEN_FILE_ENV.removeprefix("FEATURESTREAM_"), kwargs={"metavar": "PATH"},
    ),)),
    "kafka": Shared(
        (
            Option(
                "--kafka-security-protocol", ", ".join(PROTOCOLS), env="KAFKA_SECURITY_PROTOCOL",
                default="PLAINTEXT", kwargs={"type": str.upper, "metavar": "PROTOCOL"},
            ),
            Option(
                "--kafka-sasl-mechanism", f"{', '.join(MECHANISMS)}; user name and password from env "
                f"{USERNAME_ENV} and {PASSWORD_ENV}", env="KAFKA_SASL_MECHANISM", default="PLAIN",
                kwargs={"type": str.upper, "metavar": "MECHANISM"},
            ),
            Option("--kafka-ssl-cafile", "CA bundle (PEM) to verify the brokers", env="KAFKA_SSL_CAFILE",
                   kwargs={"metavar": "PATH"}),
            Option("--kafka-ssl-certfile", "client certificate (PEM), for mutual TLS", env="KAFKA_SSL_CERTFILE",
                   kwargs={"metavar": "PATH"}),
            Option("--kafka-ssl-keyfile", "client private key (PEM), for mutual TLS", env="KAFKA_SSL_KEYFILE",
                   kwargs={"metavar": "PATH"}),
        ),
        group="Kafka security (TLS/SASL)",
    ),
}  # fmt: skip


def add(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add the shared options ``names`` (keys of ``SHARED``) to a command's parser, in that order."""
    for name in names:
        shared = SHARED[name]
        target = parser.add_argument_group(shared.group) if shared.group else parser
        for option in shared.options:
            option.add_to(target)
