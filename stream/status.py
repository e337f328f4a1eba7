"""What a worker says about itself: where it listens, when it is ready, what it waits for until then, and
whether the broker is reachable (``/health``, and one log line per change instead of a flood).

* At start: one line with the worker id, app id, broker, feature sets and the HTTP address.
* Until ready, every ``WAIT_LOG_S`` seconds: what it waits for. The group join is the long wait after a
  kill -9: the broker keeps the dead worker's session (and its partitions) until ``--session-timeout``
  expires, and says nothing meanwhile.
* Ready: one line with the time it took and the URL it serves.
* Broker: every ``PROBE_S`` seconds a TCP connect to the bootstrap servers. When none accepts, the worker
  logs it once (and again once it is back) and ``/health`` answers 503 ``degraded``: it still serves the
  state it has, but that state no longer moves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import faust

log = logging.getLogger(__name__)

PROBE_S = 5.0
PROBE_TIMEOUT_S = 2.0
WAIT_LOG_S = 10.0


def _host_port(server: str) -> tuple[str, int]:
    host, _, port = server.rpartition(":")
    return host.strip("[]") or server, int(port or 9092)


@dataclass
class WorkerStatus:
    """Readiness and broker reachability of one worker, and the lines it logs about them."""

    worker_id: str
    app_id: str
    servers: list[str]
    url: str
    bind: str
    session_timeout_s: float
    started: float = field(default_factory=time.monotonic)
    ready_since: float | None = None
    broker_down_since: float | None = None  # wall clock (time.time) of the first failed probe
    _last_wait_log: float = float("-inf")
    _last_waiting: str = ""

    def starting_line(self, sets: list[str], broker: str) -> str:
        return (
            f"worker {self.worker_id} starting: app id {self.app_id!r}, broker {broker}, feature sets "
            f"{', '.join(sets)}; HTTP on {self.bind} (advertised as {self.url}); /health answers 200 once ready"
        )

    # -- readiness ---------------------------------------------------------------------------------------

    def waiting_for(self, app) -> str:
        """What a worker that is not ready yet waits for, in words."""
        recovery = app.tables.recovery
        if recovery.in_recovery:
            try:
                remaining = recovery.active_remaining_total()
            except Exception:  # recovery bookkeeping not set up yet
                remaining = None
            left = f"{remaining} changelog records to go" if remaining is not None else "in progress"
            return f"restoring its tables from their changelog topics ({left})"
        if not _assignment(app):
            return (
                f"its partitions from consumer group {self.app_id!r}; if a worker of this group was killed "
                f"without leaving (kill -9), the broker keeps that worker's partitions until its session "
                f"expires: up to --session-timeout {self.session_timeout_s:g} s"
            )
        return "table recovery to start"

    def log_progress(self, app, ready: bool, now: float | None = None) -> None:
        """Called every second: the ready line once, or what it waits for every WAIT_LOG_S."""
        now = time.monotonic() if now is None else now
        if ready:
            if self.ready_since is None:
                self.ready_since = now
                log.info("worker %s ready after %.1f s: serving %s", self.worker_id, now - self.started, self.url)
            return
        if self.ready_since is not None:  # a rebalance moved partitions: not ready again, quietly
            self.ready_since = None
            self._last_wait_log = now
            return
        if now - self.started >= WAIT_LOG_S / 2 and now - self._last_wait_log >= WAIT_LOG_S:
            self._last_wait_log = now
            waiting = self.waiting_for(app)
            said = waiting == self._last_waiting
            self._last_waiting = waiting
            log.info("worker %s not ready after %.0f s: waiting for %s", self.worker_id, now - self.started,
                     waiting.split(";")[0] + " (as above)" if said else waiting)  # fmt: skip

    # -- broker ------------------------------------------------------------------------------------------

    async def broker_reachable(self) -> bool:
        """True if any bootstrap server accepts a TCP connection within PROBE_TIMEOUT_S."""
        for server in self.servers:
            host, port = _host_port(server)
            try:
                _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), PROBE_TIMEOUT_S)
            except (TimeoutError, OSError):
                continue
            writer.close()
            return True
        return False

    def record_probe(self, reachable: bool, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if reachable and self.broker_down_since is not None:
            log.warning("broker reachable again after %.0f s (%s)", now - self.broker_down_since, ",".join(self.servers))
            self.broker_down_since = None
        elif not reachable and self.broker_down_since is None:
            self.broker_down_since = now
            log.warning(
                "broker unreachable: no bootstrap server of %s accepts connections; serving the state as of now "
                "(it no longer moves), /health answers 503 until the broker is back; the Kafka clients' retries "
                "are logged once per 30 s", ",".join(self.servers),
            )  # fmt: skip

    def health(self, ready: bool) -> tuple[int, dict]:
        """(HTTP status, body) of /health."""
        body: dict = {"worker": self.worker_id}
        if self.broker_down_since is not None:
            down = time.time() - self.broker_down_since
            body.update(status="degraded", reason=f"broker unreachable for {down:.0f} s", ready=ready)
            return 503, body
        if not ready:
            return 503, {**body, "status": "recovering"}
        return 200, {**body, "status": "ok"}

    async def watch(self, app, is_ready) -> None:
        """Run for the worker's life: readiness lines every second, a broker probe every PROBE_S."""
        last_probe = 0.0
        while True:
            try:
                self.log_progress(app, is_ready(app))
                if time.monotonic() - last_probe >= PROBE_S:
                    last_probe = time.monotonic()
                    self.record_probe(await self.broker_reachable())
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a status line must never stop the worker
                log.debug("status check failed: %r", exc)
            await asyncio.sleep(1.0)


def _assignment(app) -> set:
    try:
        return set(app.consumer.assignment())
    except Exception:  # no consumer yet
        return set()


class StatusWorker(faust.Worker):
    """A Faust worker that installs the CLI's log filter once Faust has set up logging, says where it
    listens, and runs ``WorkerStatus.watch`` from the start (Faust's own timers only start once ready)."""

    def __init__(self, app, *, status: WorkerStatus, is_ready, log_filter=None, starting_line: str = "", **kwargs):
        super().__init__(app, **kwargs)
        self.status, self.is_ready, self.log_filter, self.starting_line = status, is_ready, log_filter, starting_line

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        if self.log_filter is not None:
            self.log_filter.install()
        # The status lines are the worker's own INFO lines, shown at the default WARNING level too: its
        # logger is set to INFO and the handlers let INFO through (other loggers still stop below WARNING).
        status_level = logging.INFO if level <= logging.WARNING else level
        log.setLevel(status_level)
        for handler in logger.handlers:
            handler.setLevel(min(handler.level or status_level, status_level))

    async def on_first_start(self) -> None:
        await super().on_first_start()
        if self.starting_line:
            log.info(self.starting_line)
        self.add_future(self.status.watch(self.app, self.is_ready))
