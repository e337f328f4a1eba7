"""Time every HTTP request of a worker: an aiohttp middleware feeding ``WorkerMetrics.http_seconds`` and
``http_requests`` labelled by route pattern (e.g. ``/features/transactions/{entity}``, so the label set
stays bounded), method and status.
"""

from __future__ import annotations

import time

from aiohttp import web

from .metrics import WorkerMetrics


def install_http_metrics(app, metrics: WorkerMetrics) -> None:
    """Add the timing middleware to the Faust app's aiohttp application (before the web server starts)."""

    @web.middleware
    async def observe(request: web.Request, handler):
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            metrics.http_seconds.labels(route, request.method).observe(time.perf_counter() - started)
            metrics.http_requests.labels(route, request.method, str(status)).inc()

    app.web.web_app.middlewares.append(observe)
