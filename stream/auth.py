"""Access control and request limits of a worker's HTTP views (an aiohttp middleware).

* **Bearer token** (optional). Started with ``--auth-token-file PATH`` or env ``FEATURESTREAM_AUTH_TOKEN``,
  a worker answers every route except ``/health`` and ``/metrics`` only with ``Authorization: Bearer
  <token>`` (compared in constant time), else ``401 {"error": ...}`` with ``WWW-Authenticate: Bearer``.
  ``/health`` stays open for liveness/readiness probes (Kubernetes, load balancers, ``make demo``) and
  ``/metrics`` for Prometheus scrapers; neither reveals features or entity keys. A token is never taken
  from the command line itself (it would show in ``ps`` and shell history).
* **Forwarding.** A GET for a key another worker owns is forwarded to that owner with the request's own
  headers (``views``), so the caller's token goes along; the worker's own calls to other workers (POST /vectors
  fetching keys owned elsewhere) add it with ``outgoing_headers(app)``. All workers of a deployment
  share one token.
* **Limits.** A request body is at most ``MAX_BODY_BYTES`` (1 MiB; 413 beyond); an entity key in a path
  or a vector request is at most ``MAX_ENTITY_BYTES`` (1 KiB of UTF-8; 400 beyond).

Entity keys are never used as file names: they are RocksDB table keys (bytes), so a key such as
``../../etc`` is just an unknown entity.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from .reading import MAX_ENTITY_BYTES

TOKEN_ENV = "FEATURESTREAM_AUTH_TOKEN"
TOKEN_FILE_ENV = "FEATURESTREAM_AUTH_TOKEN_FILE"
OPEN_PATHS = frozenset({"/health", "/metrics"})  # probes and Prometheus scrapers
MAX_BODY_BYTES = 1 << 20
_HEADERS_ATTR = "featurestream_auth_headers"


class RequestTooLarge(ValueError):
    """A request body over the limit (HTTP 413)."""


def resolve_token(token_file: str | os.PathLike | None, environ=os.environ) -> str | None:
    """The token from ``token_file`` if given, else from env ``FEATURESTREAM_AUTH_TOKEN``; None if neither."""
    if token_file:
        path = Path(token_file)
        try:
            token = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ValueError(f"auth token file {str(path)!r} not found; hint: create it or unset it") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read auth token file {str(path)!r}: {exc}") from None
        if not token:
            raise ValueError(f"auth token file {str(path)!r} is empty; hint: write the token in it")
        source = f"file {str(path)!r}"
    else:
        token = (environ.get(TOKEN_ENV) or "").strip()
        if not token:
            return None
        source = f"env {TOKEN_ENV}"
    if any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E for c in token):
        raise ValueError(f"auth token from {source} must be printable ASCII without spaces")
    return token


def client_headers(token: str | None) -> dict[str, str]:
    """Headers a client sends (empty without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def outgoing_headers(app) -> dict[str, str]:
    """Headers of the worker's own requests to other workers (POST /vectors fetching remote keys)."""
    return getattr(app, _HEADERS_ATTR, None) or {}


def authorized(header: str | None, token: str) -> bool:
    """True if an ``Authorization`` header carries ``token`` (constant-time comparison)."""
    scheme, _, given = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode())


def middleware(token: str | None):
    """The aiohttp middleware: token check (if ``token``), body size and entity key length."""
    from aiohttp import web

    def error(status: int, message: str, **headers) -> web.Response:
        return web.json_response({"error": message}, status=status, headers=headers or None)

    @web.middleware
    async def access(request: web.Request, handler):
        open_path = token is None or request.path in OPEN_PATHS
        if not open_path and not authorized(request.headers.get("Authorization"), token):
            return error(
                401, "missing or wrong bearer token; hint: send 'Authorization: Bearer <token>'",
                **{"WWW-Authenticate": 'Bearer realm="featurestream"'},
            )  # fmt: skip
        length = request.content_length
        if length is not None and length > MAX_BODY_BYTES:
            return error(413, f"request body of {length} bytes is over the limit of {MAX_BODY_BYTES} bytes")
        entity = request.match_info.get("entity")
        if entity is not None and len(entity.encode("utf-8", "surrogatepass")) > MAX_ENTITY_BYTES:
            return error(400, f"entity key longer than {MAX_ENTITY_BYTES} bytes")
        return await handler(request)

    return access


def install(app, token: str | None) -> None:
    """Add the middleware to a Faust app's aiohttp application; remember the token for forwarded calls."""
    setattr(app, _HEADERS_ATTR, client_headers(token))
    app.web.web_app.middlewares.append(middleware(token))


async def read_body(request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, at most ``limit`` bytes (a chunked body has no Content-Length to check upfront)."""
    chunks, size = [], 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)

