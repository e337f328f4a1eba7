"""docker-compose.yml stays consistent with the repository: the files it references exist, the featurestream
services run real subcommands, and it runs the same Kafka version as deploy/kafka.

No Docker here: this reads the file. PyYAML is not in requirements.lock, so without it a tiny parser for the
block-style subset the compose file uses (mappings, sequences, plain or quoted scalars; flow collections kept
as raw text) reads it instead.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
SUBCOMMANDS = {"worker", "replica", "sink", "produce", "drift"}

_KEY = re.compile(r"^([A-Za-z0-9_.-]+):(?:\s+(.*))?$")


def _scalar(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def parse_block_yaml(source: str) -> Any:
    """Parse the block-style YAML subset used by docker-compose.yml (see the module docstring)."""
    lines: list[list[Any]] = []
    for raw in source.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ValueError(f"tab indentation: {raw!r}")
        lines.append([len(raw) - len(raw.lstrip(" ")), stripped])

    def block(i: int, indent: int) -> tuple[Any, int]:
        if lines[i][1].startswith("- ") or lines[i][1] == "-":
            return sequence(i, indent)
        return mapping(i, indent)

    def child(i: int, indent: int) -> tuple[Any, int]:
        """The nested value after a 'key:' line at indent (the next line is i)."""
        if i < len(lines) and (lines[i][0] > indent or (lines[i][0] == indent and lines[i][1][:2] == "- ")):
            return block(i, lines[i][0])
        return None, i

    def mapping(i: int, indent: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        while i < len(lines) and lines[i][0] == indent and not lines[i][1].startswith("- "):
            m = _KEY.match(lines[i][1])
            if not m:
                raise ValueError(f"not a 'key: value' line: {lines[i][1]!r}")
            key, rest = m.group(1), m.group(2)
            if rest:
                out[key], i = _scalar(rest), i + 1
            else:
                out[key], i = child(i + 1, indent)
        if i < len(lines) and lines[i][0] > indent:
            raise ValueError(f"unexpected indentation: {lines[i][1]!r}")
        return out, i

    def sequence(i: int, indent: int) -> tuple[list[Any], int]:
        out: list[Any] = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            item = lines[i][1][2:].strip()
            if _KEY.match(item):  # "- key: value" opens a mapping indented past the dash
                lines[i] = [indent + 2, item]
                value, i = mapping(i, indent + 2)
            else:
                value, i = _scalar(item), i + 1
            out.append(value)
        return out, i

    if not lines:
        return None
    value, end = block(0, lines[0][0])
    if end != len(lines):
        raise ValueError(f"unparsed from line {lines[end][1]!r}")
    return value


def load_compose() -> dict[str, Any]:
    text = COMPOSE_FILE.read_text()
    try:
        import yaml
    except ImportError:
        return parse_block_yaml(text)
    return yaml.safe_load(text)


def command_words(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(w) for w in command]


def featurestream_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose["services"].items() if "build" in svc}


def test_compose_has_the_expected_services() -> None:
    services = load_compose()["services"]
    assert {"kafka", "worker", "sink", "prometheus"} <= set(services)
    assert set(featurestream_services(load_compose())) >= {"worker", "sink"}


@pytest.mark.parametrize("name", ["worker", "sink"])
def test_featurestream_services_run_a_subcommand_from_the_dockerfile(name: str) -> None:
    service = featurestream_services(load_compose())[name]
    words = command_words(service)
    assert words, f"{name} has no command"
    assert words[0] in SUBCOMMANDS, f"{name}: {words[0]!r} is not one of {sorted(SUBCOMMANDS)}"
    assert "--broker" in words and words[words.index("--broker") + 1] == "kafka:9092"

    build = service["build"]
    context = REPO_ROOT / (build if isinstance(build, str) else build.get("context", "."))
    dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
    assert dockerfile.is_file(), f"{name}: {dockerfile} does not exist"
    assert re.search(r'^ENTRYPOINT \["featurestream"\]', dockerfile.read_text(), re.M)


def test_every_service_command_is_a_featurestream_subcommand() -> None:
    for name, service in featurestream_services(load_compose()).items():
        words = command_words(service)
        assert words and words[0] in SUBCOMMANDS, f"service {name}: command {words}"


def test_bind_mounted_files_exist() -> None:
    mounts = [
        (name, str(volume).split(":")[0])
        for name, service in load_compose()["services"].items()
        for volume in service.get("volumes", [])
        if str(volume).startswith((".", "/"))
    ]
    assert mounts, "expected at least the Prometheus config bind mount"
    for name, source in mounts:
        assert (REPO_ROOT / source).exists(), f"service {name}: {source} does not exist"


def test_prometheus_scrapes_the_worker_metrics_port() -> None:
    compose = load_compose()
    worker = command_words(compose["services"]["worker"])
    port = worker[worker.index("--web-port") + 1]
    prometheus = compose["services"]["prometheus"]
    (config,) = [str(v).split(":")[0] for v in prometheus["volumes"] if "prometheus.yml" in str(v)]
    text = (REPO_ROOT / config).read_text()
    assert f"worker:{port}" in text
    assert re.search(r"^\s*metrics_path:\s*/metrics\s*$", text, re.M)


def test_kafka_image_matches_the_local_broker_version() -> None:
    pom = (REPO_ROOT / "deploy" / "kafka" / "pom.xml").read_text()
    (version,) = re.findall(r"<kafka\.version>([^<]+)</kafka\.version>", pom)
    kafka = load_compose()["services"]["kafka"]
    assert kafka["image"] == f"apache/kafka:{version}"
    env = kafka["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "INTERNAL://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"]


def test_block_yaml_parser_on_a_sample() -> None:
    sample = """
# comment
top:
  key: "quoted: value"
  list:
    - a
    - "b:c"
  flow: ["x", "y"]
  nested:
    - name: one
      extra: 1
    - two
empty:
"""
    assert parse_block_yaml(sample) == {
        "top": {
            "key": "quoted: value",
            "list": ["a", "b:c"],
            "flow": '["x", "y"]',
            "nested": [{"name": "one", "extra": "1"}, "two"],
        },
        "empty": None,
    }


def test_object_store_image_matches_the_local_s3proxy_and_the_sink_writes_there() -> None:
    pom = (REPO_ROOT / "deploy" / "s3proxy" / "pom.xml").read_text()
    (version,) = re.findall(r"<s3proxy\.version>([^<]+)</s3proxy\.version>", pom)
    compose = load_compose()
    s3 = compose["services"]["s3"]
    assert s3["image"] == f"andrewgaul/s3proxy:{version}"
    port = s3["environment"]["S3PROXY_ENDPOINT"].rsplit(":", 1)[1]
    sink = compose["services"]["sink"]
    words = command_words(sink)
    assert words[words.index("--data-dir") + 1].startswith("s3://featurestream/")
    assert sink["environment"]["AWS_ENDPOINT_URL"] == f"http://s3:{port}"
    assert sink["environment"]["AWS_ACCESS_KEY_ID"] == s3["environment"]["S3PROXY_IDENTITY"]
    assert sink["environment"]["AWS_SECRET_ACCESS_KEY"] == s3["environment"]["S3PROXY_CREDENTIAL"]
# --- the image and the network: what Docker would do, checked without Docker ---------------------------

DOCKERFILE = REPO_ROOT / "deploy" / "Dockerfile"


def dockerfile_copies(text: str | None = None) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY instruction (shell form), relative to the build context."""
    out = []
    for line in (text if text is not None else DOCKERFILE.read_text()).splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(w.startswith("--") for w in words[1:]):
            out.append((words[1:-1], words[-1]))
    return out


def copied_paths() -> set[str]:
    """Top-level names of the build context that end up in the image (globs expanded like Docker)."""
    names: set[str] = set()
    for sources, _dest in dockerfile_copies():
        for source in sources:
            names.update(p.name for p in REPO_ROOT.glob(source))
    return names


def test_the_worker_listens_beyond_its_containers_loopback() -> None:
    words = command_words(load_compose()["services"]["worker"])
    assert words[words.index("--web-bind") + 1] == "0.0.0.0", "the published port and Prometheus need it"
    assert words[words.index("--web-host") + 1] == "worker", "other containers reach it by its service name"


def test_the_drift_service_reads_the_worker_by_its_service_name() -> None:
    compose = load_compose()
    worker = command_words(compose["services"]["worker"])
    drift = command_words(compose["services"]["drift"])
    assert drift[drift.index("--url") + 1] == f"http://worker:{worker[worker.index('--web-port') + 1]}"


def test_the_image_holds_every_package_the_examples_and_the_build_files() -> None:
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    include = re.search(r"\[tool\.setuptools\.packages\.find\]\s*include\s*=\s*\[([^\]]*)\]", pyproject).group(1)
    packages = {p.strip().strip('"').rstrip("*") for p in include.split(",") if p.strip()}
    needed = packages | {"examples", "pyproject.toml", "README.md", "requirements.lock"}
    missing = needed - copied_paths()
    assert not missing, f"deploy/Dockerfile does not COPY {sorted(missing)}"
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    assert not needed & ignored, f".dockerignore excludes {sorted(needed & ignored)}"
    # The example definitions are package data: featurestream/examples must reach examples/.
    link = REPO_ROOT / "featurestream" / "examples"
    assert link.is_symlink() and link.resolve() == (REPO_ROOT / "examples").resolve()
    assert (link / "transactions" / "features.py").is_file()


def test_dockerfile_copy_parser_on_a_sample() -> None:
    sample = "FROM x\nCOPY a b ./\nCOPY --from=build /x /y\nRUN echo COPY no\nCOPY c ./c\n"
    assert dockerfile_copies(sample) == [(["a", "b"], "./"), (["c"], "./c")]


def promtool() -> str | None:
    import os
    import shutil

    cache = Path(os.environ.get("FEATURESTREAM_CACHE", Path.home() / ".cache" / "featurestream"))
    cached = cache / "promtool" / "promtool"
    return shutil.which("promtool") or (str(cached) if cached.is_file() else None)


def test_prometheus_config_passes_promtool(tmp_path) -> None:
    """`promtool check config` on deploy/prometheus/prometheus.yml, its container paths (the compose bind
    mounts) rewritten to the repository's files; also checks the alert rules it loads."""
    import subprocess

    tool = promtool()
    if tool is None:
        pytest.skip("promtool not found (make test fetches it with deploy/prometheus/fetch-promtool.sh)")
    mounts = {
        target: REPO_ROOT / source
        for source, target, *_ in (str(v).split(":") for v in load_compose()["services"]["prometheus"]["volumes"])
    }
    text = mounts["/etc/prometheus/prometheus.yml"].read_text()
    for target, source in mounts.items():
        text = text.replace(target, str(source))
    assert "/etc/prometheus" not in text
    config = tmp_path / "prometheus.yml"
    config.write_text(text)
    done = subprocess.run([tool, "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr
