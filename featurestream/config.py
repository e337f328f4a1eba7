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
        help="root of the Parquet datasets: a directory or s3://bucket/prefix (env FEATURESTREAM_DATA_DIR; "
        "default ./data)",
    )
    parser.add_argument(
        "--s3-endpoint",
        default=os.environ.get("FEATURESTREAM_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL"),
        metavar="URL",
        help="S3-compatible endpoint of an s3:// data dir, e.g. http://127.0.0.1:9000 (env FEATURESTREAM_S3_ENDPOINT "
        "or AWS_ENDPOINT_URL; default: AWS). Credentials come from the AWS variables, profile or instance role",
    )
    parser.add_argument(
        "--s3-region",
        default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
        help="region of an s3:// data dir (env AWS_REGION; default us-east-1)",
    )
    add_token_argument(parser)
    kafka_security.add_arguments(parser)
    return parser
