"""``featurestream plan``: what deploying these definitions will do to each feature set's online state.

Compares each set's definition fingerprint with the versions deployed on the broker (tile changelog
topics and the definitions the workers recorded) and says, per set: unchanged, new, or changed (with
what changed) and what to do before starting workers. Exit 1 when a set needs action (``--check``).
"""

from __future__ import annotations

import json
import sys


def add_command(subparsers, shared) -> None:
    p = subparsers.add_parser(
        "plan",
        help="show what deploying the definitions does to online state (before starting workers)",
        description=__doc__.split("\n\n")[1],
        epilog="example: featurestream plan --definitions features.py --broker kafka:9092 --app-id fraud",
    )
    shared(p, "definitions", "broker", "app_id", "topic_prefix", "kafka")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--check", action="store_true", help="exit 1 when a set needs action before workers start")
    p.set_defaults(func=run)


def run(args) -> int:
    from kafka import KafkaAdminClient, KafkaConsumer

    from aggregations.loading import load_registry
    from stream.topics import bootstrap_servers, topic_names
    from stream.versions import inspect_versions

    registry = load_registry(args.definitions)
    sets = list(registry.feature_sets.values())
    servers = bootstrap_servers(args.broker)
    from aggregations.retry import Retrying, retrying

    security = args.kafka.client_config() if getattr(args, "kafka", None) else {}
    where = f"connecting to Kafka at {args.broker}"
    try:
        admin = Retrying(
            retrying(
                lambda: KafkaAdminClient(bootstrap_servers=servers, client_id="featurestream-plan", **security),
                where,
                deadline_s=20,
            )
        )
        consumer = Retrying(
            retrying(
                lambda: KafkaConsumer(
                    bootstrap_servers=servers, enable_auto_commit=False, client_id="featurestream-plan", **security
                ),
                where,
                deadline_s=20,
            )
        )
    except Exception as exc:
        raise ValueError(f"cannot reach Kafka at {args.broker}: {exc} (check --broker)") from exc
    try:
        sources = {fs.name: topic_names(fs, args.topic_prefix)[0] for fs in sets}
        statuses = inspect_versions(admin, consumer, sets, sources, args.app_id)
    finally:
        consumer.close()
        admin.close()
    if args.json:
        rows = [{**vars(s), "action": s.action, "needs_action": s.blocked} for s in statuses]
        json.dump(rows, sys.stdout, indent=2)
        print()
    else:
        for s in statuses:
            print("\n".join(describe(s, args.app_id)))
    return 1 if args.check and any(s.blocked for s in statuses) else 0


def describe(s, app_id: str) -> list[str]:
    """A set's version status in words (``stream.versions.SetVersion``)."""
    others = ", ".join(s.other_versions)
    return [
        f"{s.name}: definition {s.fingerprint}",
        "  online state of this definition: "
        + ("built (its changelog topic holds records)" if s.has_state else "none yet"),
        "  other definitions of this set with online state: "
        + (f"{others} (kept, not read by this one)" if others else "none"),
        f"  worker group {app_id!r} has consumed the source topic: " + ("yes" if s.group_committed else "not yet"),
        *(f"  state behind the group: source partition {p} at offset {state}, group at {group}"
          for p, (state, group) in sorted(s.behind.items())),
        *(f"  change from the last deployed definition: {change}" for change in s.changes),
        f"  -> {s.action}",
    ]
