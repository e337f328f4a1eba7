"""docs/tutorial.md from start to end, as a new user runs it: every marked block in order (``<!-- test -->``,
``<!-- test: online -->``, ``<!-- test: stream -->``), in a fresh directory holding only a link to
``examples/``, against a real broker. What the test changes is what a user's machine would provide: the broker
address (FEATURESTREAM_BROKER), a deployment name and topic prefix of its own on the shared test broker, and
a free port for the worker instead of 6066. Afterwards the sink's dataset holds each produced event exactly
once (the tutorial writes nothing else there).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd

from aggregations.loading import load_registry
from tests.integration.test_worker import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
TUTORIAL = REPO_ROOT / "docs" / "tutorial.md"
BLOCK = re.compile(r"^<!-- test(?:: (online|stream))? -->\n```(python|bash)\n(.*?)^```", re.M | re.S)
PRODUCED = 20_000


def blocks(text: str) -> list[tuple[str, str]]:
    return [(m.group(2), m.group(3)) for m in BLOCK.finditer(text)]


def test_every_marked_block_is_collected():
    text = TUTORIAL.read_text()
    assert len(blocks(text)) == len(re.findall(r"^<!-- test(?:: \w+)? -->$", text, re.M))


def test_the_tutorial_runs_end_to_end(kafka_bootstrap, tmp_path, monkeypatch):
    run_id = uuid.uuid4().hex[:8]
    port = str(free_port())
    (tmp_path / "examples").symlink_to(REPO_ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("FEATURESTREAM_")]:
        monkeypatch.delenv(key)
    settings = {
        "FEATURESTREAM_BROKER": kafka_bootstrap,
        "FEATURESTREAM_APP_ID": f"tutorial-{run_id}",
        "FEATURESTREAM_TOPIC_PREFIX": f"tutorial-{run_id}-",
        "FEATURESTREAM_URL": f"http://127.0.0.1:{port}",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip
    session: dict = {"__name__": "tutorial"}  # one Python session for the whole tutorial, as a reader's
    try:
        for i, (lang, code) in enumerate(blocks(TUTORIAL.read_text())):
            code = code.replace("6066", port)
            if lang == "python":
                exec(compile(code, f"tutorial.md[block {i}]", "exec"), session)
                continue
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], env=env, capture_output=True, text=True,
                                  timeout=240, stdin=subprocess.DEVNULL)  # fmt: skip
            log = (tmp_path / "worker.log").read_text()[-3000:] if (tmp_path / "worker.log").exists() else ""
            assert done.returncode == 0, f"tutorial.md[block {i}]:\n{code}\n{done.stdout}\n{done.stderr}\n{log}"
    finally:
        pid_file = tmp_path / "worker.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):  # the tutorial's last step stopped it
                os.kill(int(pid_file.read_text()), signal.SIGKILL)

    tx = load_registry("examples/transactions/features.py").feature_set("transactions")
    from sinks import read_events

    stored = read_events(tx, "data")
    assert not stored.duplicated(["_partition", "_offset"]).any()
    assert stored["user_id"].str.fullmatch(r"u\d{5}").sum() == PRODUCED  # the sample events, each once
    assert not stored.duplicated(["user_id", "ts", "amount"]).any()
    assert pd.read_parquet("train.parquet").shape[0] == 2000
