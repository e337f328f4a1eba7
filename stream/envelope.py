"""Dead-letter and late-event envelopes: the original bytes plus why and where they came from.

Rejected events go to ``<topic>.dlq`` and late events to ``<topic>.late`` wrapped in one small JSON
object, so an operator can see the reason, find the source record (topic, partition, offset) and
replay the exact original payload (``payload_b64``), whatever bytes it held. A payload too large to
publish is left out (``payload_omitted_bytes``); the reason then points at the source record.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Envelope:
    """A record that did not make it into online state, ready to publish (key = original Kafka key)."""

    key: bytes | None
    value: bytes


def envelope(reason: str, topic: str, partition: int, offset: int, payload: bytes | None) -> bytes:
    """The JSON envelope ``{"reason", "topic", "partition", "offset", "payload_b64"}`` as UTF-8 bytes."""
    body = {
        "reason": reason,
        "topic": topic,
        "partition": int(partition),
        "offset": int(offset),
        "payload_b64": None if payload is None else base64.b64encode(payload).decode("ascii"),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def without_payload(data: bytes, why: str) -> bytes:
    """The envelope ``data`` minus its payload (too large to publish): the reason says where the original is."""
    body = json.loads(data)
    raw = body.pop("payload_b64", None)
    size = 0 if raw is None else len(raw) * 3 // 4 - raw[-2:].count("=")
    body["payload_b64"] = None
    body["payload_omitted_bytes"] = size
    body["reason"] = (
        f"{body.get('reason', '')}; the payload ({size} bytes) is left out: {why}; the original stays in "
        f"{body.get('topic')} partition {body.get('partition')} offset {body.get('offset')}"
    )
    return json.dumps(body, separators=(",", ":")).encode()


def open_envelope(data: bytes) -> dict:
    """Parse an envelope back; ``payload`` holds the original bytes (None for a null payload)."""
    body = json.loads(data)
    raw = body.get("payload_b64")
    body["payload"] = None if raw is None else base64.b64decode(raw)
    return body
