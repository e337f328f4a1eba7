"""``featurestream worker`` (run the online worker), ``featurestream replica`` (serve its reads from a process of
its own) and ``featurestream get`` (read one entity over HTTP)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

from aggregations.durations import parse_duration
from aggregations.schema import DEFAULT_MAX_FUTURE

from .auth import client_headers, resolve_token
from .topics import DEFAULT_PARTITIONS


def _env(name: str, default: str) -> str:
    return os.environ.get(f"FEATURESTREAM_{name}", default)


def add_commands(subparsers, shared) -> None:
    """Register the ``worker``, ``replica`` and ``get`` subcommands; ``shared(parser, *names)`` adds the CLI's shared options."""
    w = subparsers.add_parser(
        "worker",
        help="run the online worker (Faust): consume, aggregate, serve features over HTTP",
        description="Consume every feature set's source topic, keep tile state in RocksDB (with a Kafka "
        "changelog) and serve GET /features/{set}/{entity}, POST /vectors/{vector}, /health and /metrics.",
        epilog="example: featurestream worker --broker 127.0.0.1:9092 --state-dir .run/state --web-port 6066",
    )
    shared(w, "definitions", "broker", "app_id", "topic_prefix", "auth", "kafka")
    w.add_argument(
        "--state-dir",
        default=_env("STATE_DIR", ".run/state"),
        help="RocksDB state directory (env FEATURESTREAM_STATE_DIR; default .run/state)",
    )
    w.add_argument(
        "--web-port",
        type=int,
        default=int(_env("WEB_PORT", "6066")),
        help="HTTP port (env FEATURESTREAM_WEB_PORT; default 6066)",
    )
    w.add_argument(
        "--web-host",
        default=_env("WEB_HOST", "127.0.0.1"),
        help="host name other workers use to reach this one (env FEATURESTREAM_WEB_HOST; default 127.0.0.1)",
    )
    w.add_argument(
        "--web-bind",
        default=_env("WEB_BIND", "") or None,
        help="interface to bind (env FEATURESTREAM_WEB_BIND; default: --web-host)",
    )
    w.add_argument(
        "--worker-id",
        default=_env("WORKER_ID", "") or None,
        help="name of this worker in logs, client ids and /health (default host-pid)",
    )
    w.add_argument(
        "--partitions",
        type=int,
        default=int(_env("PARTITIONS", str(DEFAULT_PARTITIONS))),
        help=f"partitions of source topics created when missing (default {DEFAULT_PARTITIONS})",
    )
    w.add_argument(
        "--max-future",
        default=_env("MAX_FUTURE", DEFAULT_MAX_FUTURE),
        help="events further than this in the future are dead-lettered (default 1h)",
    )
    w.add_argument(
        "--batch-max",
        type=int,
        default=int(_env("BATCH_MAX", "5000")),
        help="most events per micro-batch; a batch is what one fetch returned, up to this (default 5000)",
    )
    w.add_argument(
        "--session-timeout",
        type=float,
        default=float(_env("SESSION_TIMEOUT", "45")),
        help="seconds before the group gives a silently dead worker's partitions to others; a "
        "killed worker's restart also waits this long (env FEATURESTREAM_SESSION_TIMEOUT; default 45)",
    )
    w.add_argument(
        "--standby-replicas",
        type=int,
        default=int(_env("STANDBY_REPLICAS", "1")),
        help="other workers that keep a warm copy of each table partition, for fast take-over when its "
        "owner dies (env FEATURESTREAM_STANDBY_REPLICAS; default 1)",
    )
    w.add_argument(
        "--state-cache-mb",
        type=int,
        default=int(_env("STATE_CACHE_MB", "256")),
        help="memory for recently used entity state in front of RocksDB, per feature set; a batch whose "
        "entities are all in it reads no RocksDB (env FEATURESTREAM_STATE_CACHE_MB; default 256)",
    )
    w.add_argument(
        "--allow-partial-state",
        action="store_true",
        default=_env("ALLOW_PARTIAL_STATE", "") in ("1", "true", "yes"),
        help="start a changed feature set on empty state although the group already consumed its source "
        "(windows then fill up over time); by default the worker refuses and asks for `featurestream bootstrap`",
    )
    w.add_argument(
        "--loglevel",
        default=_env("LOGLEVEL", "WARNING"),
        help="log level (env FEATURESTREAM_LOGLEVEL; default WARNING)",
    )
    w.set_defaults(func=run_worker)

    r = subparsers.add_parser(
        "replica",
        help="serve the workers' read API from a process of its own, following the state changelogs",
        description="Follow every feature set's changelog topic (written by the workers of --app-id), keep each "
        "entity's newest state in memory and serve GET /features/{set}/{entity}, POST /vectors/{vector}, /health "
        "and /metrics for every entity, in a process of its own: reads never wait for a worker's ingest.",
        epilog="example: featurestream replica --broker 127.0.0.1:9092 --web-port 6067",
    )
    shared(r, "definitions", "broker", "app_id", "auth", "kafka")
    r.add_argument(
        "--web-port",
        type=int,
        default=int(_env("REPLICA_PORT", "6067")),
        help="HTTP port (env FEATURESTREAM_REPLICA_PORT; default 6067)",
    )
    r.add_argument(
        "--web-bind",
        default=_env("REPLICA_BIND", "127.0.0.1"),
        help="interface to bind (env FEATURESTREAM_REPLICA_BIND; default 127.0.0.1)",
    )
    r.add_argument("--loglevel", default=_env("LOGLEVEL", "WARNING"), help="log level (default WARNING)")
    r.set_defaults(func=run_replica)

    g = subparsers.add_parser(
        "get",
        help="read one entity's features from a running worker",
        description="GET /features/{SET}/{ENTITY} from a worker and print the JSON answer.",
        epilog="example: featurestream get transactions u00001 --features amount_count_1h,amount_avg_90d",
    )
    g.add_argument("feature_set", metavar="SET", help="feature set name, e.g. transactions")
    g.add_argument("entity", metavar="ENTITY", help="entity key, e.g. a user id")
    shared(g, "url", "auth")
    g.add_argument("--features", default=None, help="comma-separated feature names (default: all)")
    g.add_argument("--timeout", type=float, default=10.0, help="seconds (default 10)")
    g.set_defaults(func=run_get)


def run_worker(args: argparse.Namespace) -> int:
    """Build the app from the definitions and run the Faust worker until SIGTERM/SIGINT."""
    from aggregations.loading import load_registry

    from .app import create_app
    from .state_cache import StateCache
    from .status import StatusWorker
    from .views import is_ready

    parse_duration(args.max_future)  # a malformed bound fails here, with a clear message
    if args.state_cache_mb < 0:
        raise ValueError(f"--state-cache-mb must be >= 0, got {args.state_cache_mb}")
    StateCache.set_default_max_bytes(args.state_cache_mb * 1024 * 1024)
    check_web_port(args.web_bind or args.web_host, args.web_port)  # before any Kafka work: fail fast
    auth_token = resolve_token(getattr(args, "auth_token_file", None))
    kafka = getattr(args, "kafka", None)  # featurestream.kafka_security.KafkaSecurity (TLS/SASL), set by the CLI
    registry = load_registry(args.definitions)
    app = create_app(
        registry,
        args.broker,
        args.state_dir,
        args.web_port,
        web_host=args.web_host,
        worker_id=args.worker_id,
        app_id=args.app_id,
        topic_prefix=args.topic_prefix,
        max_future=args.max_future,
        partitions=args.partitions,
        web_bind=args.web_bind,
        batch_max=args.batch_max,
        session_timeout_s=args.session_timeout,
        broker_credentials=kafka.faust_credentials() if kafka else None,
        kafka_client_config=kafka.client_config() if kafka else None,
        auth_token=auth_token,
        allow_partial_state=args.allow_partial_state,
        standby_replicas=args.standby_replicas,
    )
    status = app.featurestream.extra["status"]
    worker = StatusWorker(
        app, status=status, is_ready=is_ready, log_filter=getattr(args, "log_filter", None),
        starting_line=status.starting_line(list(registry.feature_sets), args.broker),
        loglevel=args.loglevel, quiet=True, redirect_stdouts=False,
    )  # fmt: skip
    # Faust's startup spinner sets the *root* logger to DEBUG (so it can spin on every record) and never
    # restores it: every aiokafka debug call then builds a LogRecord, about a tenth of the ingest time.
    worker.spinner = None
    tune_gc()
    tune_threads()
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


def run_replica(args: argparse.Namespace) -> int:
    """Follow the changelogs and serve reads until SIGTERM/SIGINT."""
    import asyncio
    import logging

    from aggregations.loading import load_registry

    from .replica import serve
    from .topics import bootstrap_servers

    check_web_port(args.web_bind, args.web_port)
    logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(levelname)s %(message)s")
    kafka = getattr(args, "kafka", None)
    registry = load_registry(args.definitions)
    tune_gc()
    token = resolve_token(getattr(args, "auth_token_file", None))
    client_config = kafka.aiokafka_config() if kafka else None
    brokers = bootstrap_servers(args.broker)
    asyncio.run(serve(registry, brokers, args.app_id, args.web_bind, args.web_port, token=token, client_config=client_config))
    return 0


def check_web_port(bind: str, port: int) -> None:
    """A one-line ``ValueError`` if the worker could not listen on ``bind:port`` (in use, unknown host)."""
    import errno
    import socket

    try:
        infos = socket.getaddrinfo(bind, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot listen on {bind}:{port}: {exc.strerror}; hint: check --web-bind/--web-host") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp: a TIME_WAIT port is free
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ValueError(
                    f"web port {port} on {bind} is already in use (another worker?); hint: stop it, or pass "
                    "--web-port (env FEATURESTREAM_WEB_PORT)"
                ) from None
            raise ValueError(f"cannot listen on {bind}:{port}: {exc.strerror}; hint: check --web-bind") from None


GC_THRESHOLDS = (10_000, 50, 100)


def tune_gc() -> None:
    """Collect cycles less often: a batch allocates a few objects per event, and at Python's default
    (a collection every 700 allocations) the collector took a quarter of the processor's time
    (processor alone: ~45k vs ~58k events/s). Not too seldom either: every young collection stops every
    thread, and at 100,000 allocations one took 25-40 ms (a read or a fresh event waited that long); at
    10,000 they take a few ms, for the same ingest rate. Objects alive at startup are frozen out of
    collection."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


SWITCH_INTERVAL_S = 0.0005


def tune_threads() -> None:
    """Switch threads every 0.5 ms (Python's default: 5 ms): a read on the web server's thread waits about that
    long for the interpreter while the event loop folds a batch (0.1 ms was no better, measured)."""
    import sys

    sys.setswitchinterval(SWITCH_INTERVAL_S)


def run_get(args: argparse.Namespace) -> int:
    """HTTP GET of one entity's features; prints the JSON, returns 0 on HTTP 200."""
    path = "/features/{}/{}".format(
        urllib.parse.quote(args.feature_set, safe=""), urllib.parse.quote(args.entity, safe="")
    )
    query = f"?{urllib.parse.urlencode({'features': args.features})}" if args.features else ""
    url = args.url.rstrip("/") + path + query
    try:
        request = urllib.request.Request(url, headers=client_headers(resolve_token(args.auth_token_file)))
        with urllib.request.urlopen(request, timeout=args.timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        print(f"featurestream get: HTTP {exc.code} from {url}: {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"featurestream get: cannot reach {url}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2))
    return 0
