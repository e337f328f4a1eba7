"""`make demo` (deploy/demo.sh) refuses ports that are taken, before starting anything, with a hint."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_refuses_a_taken_web_port_before_starting_kafka():
    broker_port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        web_port = taken.getsockname()[1]
        env = {**os.environ, "FEATURESTREAM_DEMO_PORT": str(broker_port), "FEATURESTREAM_DEMO_WEB_PORT": str(web_port)}
        done = subprocess.run(["bash", "deploy/demo.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"[demo] error: the worker's web port {web_port} is taken" in done.stderr
    assert "FEATURESTREAM_DEMO_WEB_PORT=" in done.stderr
    assert "starting Kafka" not in done.stdout + done.stderr
    assert not (REPO_ROOT / ".run" / f"demo-kafka-{broker_port}").exists()


def test_demo_refuses_a_taken_replica_port_before_starting_kafka():
    broker_port, web_port = free_port(), free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        replica_port = taken.getsockname()[1]
        env = {**os.environ, "FEATURESTREAM_DEMO_PORT": str(broker_port), "FEATURESTREAM_DEMO_WEB_PORT": str(web_port),
               "FEATURESTREAM_DEMO_REPLICA_PORT": str(replica_port)}  # fmt: skip
        done = subprocess.run(["bash", "deploy/demo.sh"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=600, stdin=subprocess.DEVNULL)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"[demo] error: the read replica's web port {replica_port} is taken" in done.stderr
    assert "starting Kafka" not in done.stdout + done.stderr
    assert not (REPO_ROOT / ".run" / f"demo-kafka-{broker_port}").exists()


def test_readme_documents_the_demo_ports():
    readme = (REPO_ROOT / "README.md").read_text()
    for name in ("FEATURESTREAM_DEMO_PORT", "FEATURESTREAM_DEMO_WEB_PORT", "FEATURESTREAM_DEMO_REPLICA_PORT"):
        assert name in readme
