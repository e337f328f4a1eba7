"""HTTP load with ``wrk`` (a compiled load generator: Debian package ``wrk``) and a bare aiohttp server as
the machine's Python HTTP ceiling. Shared by ``benchmarks/online.py`` and ``benchmarks/peers/peers.py``.

``run_wrk`` drives one URL with ``connections`` keep-alive connections from one wrk thread for ``seconds``;
requests are made by a Lua script: GETs of ``{path_prefix}{entity}`` or POSTs of a JSON body with the entity
filled in, the entity drawn at random from a file of entity keys (many entities, so no read is served from
a warm cache of one key). It returns requests per second and client-side latency percentiles (wrk measures
from the request's send to its response, so a request that waits in the server's queue counts its wait).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

_LUA = """
local entities = {}
for line in io.lines(%(entities)s) do entities[#entities + 1] = line end
local prefix, method, body = %(prefix)s, %(method)s, %(body)s
local headers = {["Content-Type"] = "application/json"}
local threads = 0
setup = function(thread) threads = threads + 1; thread:set("seed", threads) end
init = function(args) math.randomseed(os.time() * 1000 + (seed or 0)) end
request = function()
  local entity = entities[math.random(#entities)]
  if method == "GET" then return wrk.format("GET", prefix .. entity) end
  return wrk.format("POST", prefix, headers, string.gsub(body, "@ENTITY@", entity))
end
done = function(summary, latency, requests)
  io.write(string.format(
    'WRK_JSON {"requests": %%d, "seconds": %%.3f, "errors": %%d, "non2xx": %%d, ' ..
    '"p50_ms": %%.3f, "p99_ms": %%.3f, "p999_ms": %%.3f, "max_ms": %%.3f}\\n',
    summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.errors.status, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency:percentile(99.9) / 1000, latency.max / 1000))
end
"""


@dataclass
class WrkResult:
    """One wrk run: requests per second and latency percentiles in ms."""

    connections: int
    requests: int
    rate: float
    p50: float
    p99: float
    p999: float
    errors: int

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def wrk_path() -> str:
    """The wrk binary, or SystemExit with how to install it."""
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit("wrk not found: install it (Debian/Ubuntu: apt-get install -y wrk)")
    return path


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def run_wrk(
    base_url: str,
    connections: int,
    seconds: float,
    entities_file: Path | None = None,
    path_prefix: str = "/",
    body: str | None = None,
    timeout_s: float = 10.0,
) -> WrkResult:
    """``seconds`` of load on ``base_url``: GET ``path_prefix + entity`` (or POST ``body`` with ``@ENTITY@``
    replaced) for random entities of ``entities_file``; without a file, GET ``path_prefix`` itself."""
    with tempfile.TemporaryDirectory(prefix="featurestream-wrk-") as tmp:
        if entities_file is None:
            entities_file = Path(tmp) / "entities.txt"
            entities_file.write_text("\n")
        script = Path(tmp) / "load.lua"
        script.write_text(
            _LUA
            % {
                "entities": _lua_string(str(entities_file)),
                "prefix": _lua_string(path_prefix),
                "method": _lua_string("GET" if body is None else "POST"),
                "body": _lua_string(body or ""),
            }
        )
        cmd = [
            wrk_path(), "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            f"--timeout={timeout_s:g}s", "-s", str(script), base_url,
        ]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((x for x in out.stdout.splitlines() if x.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no summary (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")
    got = json.loads(line[len("WRK_JSON ") :])
    return WrkResult(
        connections,
        got["requests"],
        got["requests"] / got["seconds"] if got["seconds"] else float("nan"),
        got["p50_ms"],
        got["p99_ms"],
        got["p999_ms"],
        got["errors"] + got["non2xx"],
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_BARE_SERVER = textwrap.dedent(
    """
    import sys
    from aiohttp import web
    body = sys.argv[2].encode()
    async def handler(request):
        return web.Response(body=body, content_type="application/json")
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
    """
)


class BareServer:
    """A minimal aiohttp app answering every GET with a fixed JSON body: the Python HTTP stack's ceiling."""

    def __init__(self, body: str):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BARE_SERVER, str(self.port), body],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("bare aiohttp server did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
