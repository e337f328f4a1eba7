"""The base of the worker's HTTP views: strict JSON answers, and a JSON 500 for what nothing else caught.

Every answer goes through ``http_json.dumps`` (NaN and ±Infinity written as null). An unexpected exception
in a view is answered ``500 {"error": ...}`` and logged once with its traceback: a 500 is a bug of ours,
never the client's input (malformed input is a 400 raised by the view itself).
"""

from __future__ import annotations

import logging

from aiohttp import web
from faust.web import View

from . import http_json

log = logging.getLogger(__name__)


class StrictJSONView(View):
    """A Faust view whose ``json`` answers are strict JSON."""

    def json(self, value, *, content_type=None, status: int = 200, reason=None, headers=None):
        return self.bytes(
            http_json.dumps(value), content_type=content_type or "application/json", status=status,
            reason=reason, headers=headers,
        )  # fmt: skip

    async def dispatch(self, request):
        try:
            return await super().dispatch(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            log.error("%s %s failed: %s: %s", request.method, request.path, type(exc).__name__, exc, exc_info=True)
            return self.json({"error": f"internal error ({type(exc).__name__}); see the worker log"}, status=500)
