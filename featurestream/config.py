"""Shared command-line options, each with a FEATURESTREAM_* environment variable as its default."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from stream.auth import add_token_argument

from . import kafka_security

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEFINITIONS = str(REPO_ROOT / "examples" / "transactions" / "features.py")


def env(name: str, default: str) -> str:
    return os.environ.get(f"FEATURESTREAM_{name}", default)


def common_parser() -> argparse.ArgumentParser:
    """Options every subcommand takes."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--definitions",
        default=env("DEFINITIONS", DEFAULT_DEFINITIONS),
        help="Python file or module defining the feature sets (env FEATURESTREAM_DEFINITIONS; "
        "default: the example in examples/transactions/features.py)",
    )
    parser.add_argument(
        "--broker",
        default=env("BROKER", "127.0.0.1:9092"),
        help="Kafka bootstrap servers, host:port[,host:port] (env FEATURESTREAM_BROKER; default 127.0.0.1:9092)",
    )
    parser.add_argument(
        "--data-dir",
        default=env("DATA_DIR", "data"),
        help="root of the Parquet datasets (env FEATURESTREAM_DATA_DIR; default ./data)",
    )
    add_token_argument(parser)
    kafka_security.add_arguments(parser)
    return parser
