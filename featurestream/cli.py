"""The ``featurestream`` command: worker, sink, produce, training-set, get, preview, describe, drift, verify, plan."""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from kafka.errors import KafkaError

from sinks import storage

from . import options
from .kafka_security import KafkaSecurity
from .logs import RepeatFilter, quiet_numpy_overflow


def build_parser() -> argparse.ArgumentParser:
    import sinks.cli
    import stream.cli

    from . import describe_cmd, drift_cmd, ingest_cmd, plan_cmd, preview_cmd, produce, verify_cmd

    parser = argparse.ArgumentParser(
        prog="featurestream",
        description="Streaming-first feature store: Kafka + Faust online, Parquet offline, one aggregation kernel.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    shared = options.add  # each command adds the shared options it uses, declared once in options.SHARED
    stream.cli.add_commands(sub, shared)
    sinks.cli.add_commands(sub, shared)
    for command in (produce, ingest_cmd, preview_cmd, describe_cmd, drift_cmd, verify_cmd, plan_cmd):
        command.add_command(sub, shared)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = ["featurestream", *(sys.argv[1:] if argv is None else argv)]  # for manifests
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        # Kafka TLS/SASL, checked once; commands hand its plain results to stream/ and sinks/.
        args.kafka = KafkaSecurity.from_args(args)
        args.log_filter = RepeatFilter()  # each command installs it once its logging is set up
        quiet_numpy_overflow()
        storage.configure(endpoint=getattr(args, "s3_endpoint", None), region=getattr(args, "s3_region", None))
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        located = definitions_error(exc, getattr(args, "definitions", None))
        if located is not None:
            print(f"featurestream {args.command}: error in the definitions: {located}", file=sys.stderr)
            return 2
        if isinstance(exc, KeyError | ValueError | FileNotFoundError):
            message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            print(f"featurestream {args.command}: error: {message}", file=sys.stderr)
            return 2
        if isinstance(exc, ConnectionError | KafkaError):
            print(
                f"featurestream {args.command}: error: {exc}; hint: is Kafka running at "
                f"{getattr(args, 'broker', '?')}? (--broker or FEATURESTREAM_BROKER; `make kafka-start` starts a local one)",
                file=sys.stderr,
            )
            return 3
        raise


def definitions_error(exc: BaseException, definitions: str | None) -> str | None:
    """``FILE:LINE: message`` when ``exc`` comes from the definitions file itself (a syntax error, a name
    typo, an invalid declaration raised from one of its lines), else None."""
    if not definitions or not definitions.endswith(".py"):
        return None
    path = Path(definitions).resolve()
    if isinstance(exc, SyntaxError) and exc.filename and Path(exc.filename).resolve() == path:
        return f"{definitions}:{exc.lineno}: {type(exc).__name__}: {exc.msg}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if Path(f.filename).resolve() == path]
    if not frames:
        return None
    message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
    return f"{definitions}:{frames[-1].lineno}: {type(exc).__name__}: {message}"


if __name__ == "__main__":
    sys.exit(main())
