"""docker-compose.yml and deploy/Dockerfile, run as Docker would run them, without Docker.

* The image: the files deploy/Dockerfile COPYs are copied to a fresh directory, built into a wheel and
  installed (not editable) into a directory of their own; the installed CLI, started elsewhere, finds its
  default definitions.
* The services: each featurestream service's command from docker-compose.yml is started locally, word for
  word (and with its ``environment:``), except for what the compose network provides: the broker
  ``kafka:9092`` is the test broker, the object store ``s3:9000`` the test S3 server (the offline store a
  prefix of its own in the same bucket), the volumes ``/state`` and ``/data`` are temporary directories, the
  service name ``worker`` (as a client sees it) and the published ports map to this machine. Each service must be reachable at an address other than
  127.0.0.1 (127.0.0.2: a container's published port or another container does not come in on its
  loopback), and the services must work together: sink to Parquet, the reference training set the compose
  file documents, drift reading the worker by the URL of its command.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.integration.test_worker import free_port
from tests.unit.test_compose import command_words, dockerfile_copies, load_compose

REPO_ROOT = Path(__file__).resolve().parents[2]
OTHER_ADDRESS = "127.0.0.2"  # any address but 127.0.0.1 (Linux routes all of 127/8 to the loopback)
TIMEOUT_S = 120


def featurestream(*words: str, cwd: Path, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "featurestream.cli", *words], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    assert done.returncode == 0, f"featurestream {shlex.join(words)}:\n{done.stdout}\n{done.stderr}"
    return done


def get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(what: str, check, procs: dict, logs: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                pytest.fail(f"{name} exited with {proc.returncode} while waiting for {what}:\n"
                            f"{(logs / f'{name}.log').read_text()[-4000:]}")  # fmt: skip
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.5)
    tails = "\n".join(f"--- {n}\n{(logs / f'{n}.log').read_text()[-3000:]}" for n in procs)
    pytest.fail(f"timed out waiting for {what}\n{tails}")


class Network:
    """What the compose network and volumes provide, mapped to this machine."""

    def __init__(self, broker: str, s3_endpoint: str, root: Path, run_id: str):
        self.broker, self.s3_endpoint = broker, s3_endpoint
        self.volumes = {"/state": root / "state", "/data": root / "data"}
        self.ports = {"6066": str(free_port()), "6067": str(free_port()), "9108": str(free_port())}
        self.store = f"s3://featurestream/compose-{run_id}"

    def word(self, word: str) -> str:
        word = word.replace("kafka:9092", self.broker).replace("http://s3:9000", self.s3_endpoint)
        word = word.replace("s3://featurestream/offline", self.store)
        return word

    def environment(self, service: str) -> dict[str, str]:
        env = load_compose()["services"][service].get("environment") or {}
        return {k: self.word(str(v)) for k, v in env.items()}

    def words(self, service: str) -> list[str]:
        """The service's command with only network names, volumes and ports replaced."""
        return self.command(command_words(load_compose()["services"][service]))

    def command(self, words: list[str]) -> list[str]:
        out = []
        for word in words:
            word = self.word(word)
            for port, local in self.ports.items():
                word = word.replace(f"worker:{port}", f"{OTHER_ADDRESS}:{local}")
                word = local if word == port else word
            for volume, local in self.volumes.items():
                if word == volume or word.startswith(volume + "/"):
                    word = str(local) + word[len(volume):]
            out.append(word)
        return out


def test_the_image_installs_and_finds_its_default_definitions(tmp_path):
    """The files the Dockerfile COPYs suffice to build and install the package, not editable; the installed
    CLI finds the example definitions (its default --definitions) from any directory."""
    app = tmp_path / "app"
    app.mkdir()
    for sources, dest in dockerfile_copies():
        for source in sources:
            for path in REPO_ROOT.glob(source):
                target = app / dest / path.name if dest.endswith("/") else app / dest
                if path.is_dir():
                    shutil.copytree(path, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(path, target)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(app)], check=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("featurestream-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "events.csv").write_text("user_id,ts,amount\nu1,2026-01-01T00:00:00Z,5.0\nu1,2026-01-02T00:00:00Z,7.0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURESTREAM_")}
    env["PYTHONPATH"] = str(site)
    done = subprocess.run(
        [sys.executable, "-c", "import sys, featurestream; print(featurestream.__file__, file=sys.stderr); "
         "from featurestream.cli import main; sys.exit(main(['preview', 'events.csv', '--rows', '2']))"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(str(site)), f"imported the checkout, not the install: {done.stderr}"
    assert "amount_avg_90d" in done.stdout


def test_compose_services_run_as_compose_starts_them(kafka_bootstrap, s3_server, tmp_path):
    from aggregations.loading import load_registry
    from sinks.dataset import read_events

    run_id = uuid.uuid4().hex[:8]
    net = Network(kafka_bootstrap, s3_server, tmp_path, run_id)
    workdir = tmp_path / "app"  # the image's WORKDIR: no examples/ or checkout next to it
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEATURESTREAM_")}
    # A deployment of its own on the shared test broker (compose would set these in `environment:`).
    env.update(FEATURESTREAM_APP_ID=f"compose-{run_id}", FEATURESTREAM_TOPIC_PREFIX=f"compose-{run_id}-")
    env["PYTHONPATH"] = str(REPO_ROOT)
    procs: dict[str, subprocess.Popen] = {}

    def start(service: str) -> None:
        log = open(tmp_path / f"{service}.log", "w")  # noqa: SIM115 - closed with the process
        procs[service] = subprocess.Popen([sys.executable, "-m", "featurestream.cli", *net.words(service)], cwd=workdir,
                                          env={**env, **net.environment(service)}, stdout=log,
                                          stderr=subprocess.STDOUT)  # fmt: skip

    worker_url = f"http://{OTHER_ADDRESS}:{net.ports['6066']}"
    try:
        start("worker")
        wait_for("the worker's /health at " + worker_url, lambda: get(f"{worker_url}/health")[0] == 200, procs, tmp_path)
        featurestream("produce", "--broker", kafka_bootstrap, "--count", "2000", "--users", "50", cwd=workdir, env=env)
        start("sink")
        tx = load_registry(str(REPO_ROOT / "examples" / "transactions" / "features.py")).feature_set("transactions")

        def all_stored() -> bool:
            try:
                return len(read_events(tx, net.store, columns=["user_id"])) >= 2000
            except (FileNotFoundError, OSError):
                return False

        wait_for(f"the sink's Parquet files in {net.store}", all_stored, procs, tmp_path)

        def all_applied() -> bool:
            _, text = get(f"{worker_url}/metrics")
            line = next(x for x in text.decode().splitlines() if x.startswith("featurestream_events_applied_total"))
            return float(line.rsplit(" ", 1)[1]) >= 2000

        wait_for("the worker to apply every event", all_applied, procs, tmp_path)
        start("replica")
        replica_url = f"http://{OTHER_ADDRESS}:{net.ports['6067']}"

        def replica_agrees() -> bool:
            path = "/features/transactions/u00001?features=amount_count_90d"
            status, body = get(f"{replica_url}{path}")
            return status == 200 and json.loads(body)["features"] == json.loads(get(f"{worker_url}{path}")[1])["features"]

        wait_for("the replica to answer as the worker does", replica_agrees, procs, tmp_path)
        # The reference of the drift service, exported as the compose file's header says.
        header = load_compose_header()
        reference_cmd = next(line for line in header if "run --rm drift training-set" in line)
        words = net.command(shlex.split(reference_cmd.split("run --rm drift", 1)[1].replace("\\", " ")))
        featurestream(*words, cwd=workdir, env={**env, **net.environment("drift")})
        entities = [{"user_id": f"u{i:05d}", "amount": 10.0 + i} for i in range(50)]
        for _ in range(3):  # served rows for the drift sample (at least --min-rows 100)
            body = json.dumps({"entities": entities}).encode()
            request = urllib.request.Request(f"{worker_url}/vectors/fraud", data=body, method="POST")
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.status == 200
        start("drift")
        drift_url = f"http://{OTHER_ADDRESS}:{net.ports['9108']}/metrics"

        def drift_ran() -> bool:
            status, text = get(drift_url)
            return status == 200 and 'featurestream_drift_last_run_timestamp_seconds{vector="fraud"}' in text.decode()

        wait_for("the drift service's first comparison", drift_ran, procs, tmp_path)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


def load_compose_header() -> list[str]:
    """The comment lines at the top of docker-compose.yml, joined where they continue with a backslash."""
    lines, current = [], ""
    for raw in (REPO_ROOT / "docker-compose.yml").read_text().splitlines():
        if not raw.startswith("#"):
            break
        text = raw.lstrip("#").strip()
        current = f"{current} {text}" if current.endswith("\\") else text
        if not current.endswith("\\"):
            lines.append(current)
    return lines
