"""``OnlineClient``: the Python client a model server uses to read features from running workers.

The counterpart of MLRun's ``get_online_feature_service(vector).get([...])``::

    from featurestream import OnlineClient

    client = OnlineClient("http://127.0.0.1:6066")            # token: env FEATURESTREAM_AUTH_TOKEN
    client.vector("fraud").get([{"user_id": "u1", "amount": 12.5}])   # -> [{"amount_avg_90d": ..., ...}]
    client.vector("fraud").get(rows, as_frame=True)                   # -> DataFrame: rows' columns + features
    client.features("transactions", "u1")                             # -> {"amount_count_1h": 3, ...}

One pooled HTTP connection set per client (thread-safe; share one client per process). Each request has a
connect and a read timeout. A request that could not connect (refused, reset before sending, DNS) is
retried with backoff; a timeout or an answer is never retried, so a slow worker never gets the same work
twice. Errors are exceptions carrying the worker's own message: ``FeatureRequestError`` for 4xx (bad entity,
unknown set or feature, missing token), ``FeatureServerError`` for 5xx (e.g. 503 while a worker recovers),
``FeatureConnectionError`` and ``FeatureTimeout``. Vectors of more entities than a worker takes in one
request (1000) are sent in several requests, results in input order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
)

from stream.auth import client_headers, resolve_token
from stream.reading import MAX_VECTOR_ENTITIES

KEY_SEPARATOR = "\x1f"  # composite entity keys: parts joined as the workers join them


class FeatureClientError(RuntimeError):
    """Base of every error the online client raises."""


class FeatureRequestError(FeatureClientError):
    """The worker refused the request (HTTP 4xx); ``message`` is the worker's own explanation."""

    def __init__(self, status: int, message: str, url: str):
        super().__init__(f"HTTP {status} from {url}: {message}")
        self.status, self.message, self.url = status, message, url


class FeatureServerError(FeatureClientError):
    """The worker failed or is not ready (HTTP 5xx; 503 while it recovers state: retry later)."""

    def __init__(self, status: int, message: str, url: str):
        super().__init__(f"HTTP {status} from {url}: {message}")
        self.status, self.message, self.url = status, message, url


class FeatureConnectionError(FeatureClientError, ConnectionError):
    """No connection to the worker, after the retries."""


class FeatureTimeout(FeatureClientError, TimeoutError):
    """The worker did not answer within the timeout (never retried)."""


class OnlineClient:
    """Reads features from featurestream workers over HTTP (see the module docstring).

    ``url``: a worker's or a read replica's (``featurestream replica``) base URL (either answers for any key).
    ``token``: the workers' bearer token;
    default from ``token_file`` or env ``FEATURESTREAM_AUTH_TOKEN`` / ``FEATURESTREAM_AUTH_TOKEN_FILE``.
    ``timeout``: seconds for the whole answer; ``connect_timeout``: seconds to connect. ``retries``:
    attempts after the first when connecting fails, ``backoff`` seconds apart, doubling. ``pool_size``:
    kept-alive connections (about the number of threads sharing the client).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        token_file: str | os.PathLike | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        retries: int = 3,
        backoff: float = 0.1,
        pool_size: int = 10,
    ):
        self.url = (url or os.environ.get("FEATURESTREAM_URL") or "http://127.0.0.1:6066").rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"worker url must start with http:// or https://, got {self.url!r}")
        if token is None:
            token = resolve_token(token_file or os.environ.get("FEATURESTREAM_AUTH_TOKEN_FILE") or None)
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self._headers = {"Accept": "application/json", **client_headers(token)}
        retry = urllib3.Retry(
            total=None, connect=retries, read=0, status=0, other=0, redirect=0,
            backoff_factor=backoff, raise_on_status=False, allowed_methods=None,
        )  # fmt: skip
        self._pool = urllib3.PoolManager(
            num_pools=4,
            maxsize=pool_size,
            block=False,
            retries=retry,
            timeout=urllib3.Timeout(connect=connect_timeout, read=timeout),
        )

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.clear()

    def __enter__(self) -> OnlineClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OnlineClient({self.url!r})"

    # -- reads ----------------------------------------------------------------------------------------

    def features(
        self,
        feature_set: str,
        entity: str | int | Sequence[Any] | Mapping[str, Any],
        features: Sequence[str] | None = None,
        **inputs: Any,
    ) -> dict[str, Any]:
        """One entity's features of a feature set, read now: ``{feature: value}`` (null -> None).

        ``entity``: the key; a composite key as a tuple of its parts in the set's entity order, e.g.
        ``("u1", "m1")`` for entities ``[user_id, merchant]``. ``features``: the names to read
        (default all). ``inputs``: request values that on-read features take (e.g. ``amount=12.5``).
        """
        key = _entity_key(entity)
        query: dict[str, str] = {f"{k}": str(v) for k, v in inputs.items() if v is not None}
        if features is not None:
            if isinstance(features, str):
                features = [features]
            query["features"] = ",".join(features)
        path = f"/features/{quote(feature_set, safe='')}/{quote(key, safe='')}"
        return self._request("GET", path, fields=query)["features"]

    def vector(self, name: str) -> OnlineVector:
        """The named feature vector (resolved by the worker): ``.get(entities)``."""
        return OnlineVector(self, name)

    def health(self) -> bool:
        """True if the worker is up and has recovered its state (``GET /health`` is 200)."""
        try:
            self._request("GET", "/health")
        except (FeatureServerError, FeatureRequestError):
            return False
        return True

    # -- transport ------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, fields=None, body: bytes | None = None) -> dict:
        url = self.url + path
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = self._pool.request(method, url, fields=fields or None, body=body, headers=headers)
        except MaxRetryError as exc:
            reason = exc.reason
            if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
                raise FeatureConnectionError(f"cannot connect to {self.url} (timed out): {reason}") from None
            if isinstance(reason, ReadTimeoutError):
                raise FeatureTimeout(f"{method} {url}: no answer within the timeout") from None
            raise FeatureConnectionError(f"cannot reach {self.url}: {reason}") from None
        except ReadTimeoutError:
            raise FeatureTimeout(f"{method} {url}: no answer within the timeout") from None
        except (NewConnectionError, ProtocolError, OSError) as exc:
            raise FeatureConnectionError(f"{method} {url}: {exc}") from None
        payload = _json(response.data)
        if response.status >= 400:
            message = payload.get("error") if isinstance(payload, dict) else None
            message = message or response.data[:300].decode("utf-8", "replace") or response.reason
            kind = FeatureRequestError if response.status < 500 else FeatureServerError
            raise kind(response.status, message, url)
        if not isinstance(payload, dict):
            raise FeatureServerError(response.status, "answer is not a JSON object", url)
        return payload


class OnlineVector:
    """A feature vector served by the workers (``OnlineClient.vector(name)``)."""

    def __init__(self, client: OnlineClient, name: str):
        self.client, self.name = client, name

    def get(self, entities: Iterable[Mapping[str, Any]] | Any, as_frame: bool = False):
        """The vector's features of each entity row, read now.

        ``entities``: dicts (or a DataFrame) holding every entity column of the vector's sets, plus
        request values its on-read features take (e.g. ``amount``). Returns one ``{feature: value}``
        dict per row, in order; ``as_frame=True``: a DataFrame of the rows' columns followed by the
        features (output names as in ``get_offline_features``: ``set.feature`` where names collide).
        """
        rows = _rows(entities)
        results: list[dict] = []
        path = f"/vectors/{quote(self.name, safe='')}"
        for start in range(0, len(rows), MAX_VECTOR_ENTITIES):
            chunk = rows[start : start + MAX_VECTOR_ENTITIES]
            body = json.dumps({"entities": chunk}, default=_json_default).encode()
            answer = self.client._request("POST", path, body=body)
            results.extend(r["features"] for r in answer["results"])
        if not as_frame:
            return results
        import pandas as pd

        request = pd.DataFrame.from_records(rows) if rows else pd.DataFrame()
        features = pd.DataFrame.from_records(results) if results else pd.DataFrame()
        clash = [c for c in features.columns if c in request.columns]
        return pd.concat([request, features.drop(columns=clash)], axis=1)

    def __repr__(self) -> str:
        return f"OnlineVector({self.name!r}, {self.client.url!r})"


def _entity_key(entity) -> str:
    if isinstance(entity, Mapping):
        raise TypeError(
            "pass a composite key as a tuple of its parts in entity order; a mapping's order is not checked "
            "against the feature set's entities"
        )
    if isinstance(entity, bool) or entity is None:
        raise TypeError(f"entity key must be a string, an integer or a tuple of them, got {entity!r}")
    if isinstance(entity, str | int):
        return str(entity)
    parts = list(entity)
    if not parts:
        raise ValueError("entity key is empty")
    return KEY_SEPARATOR.join(str(p) for p in parts)


def _rows(entities) -> list[dict]:
    if hasattr(entities, "to_dict") and hasattr(entities, "columns"):  # a DataFrame
        frame = entities.astype(object).where(entities.notna(), None)
        return frame.to_dict("records")
    if isinstance(entities, Mapping):
        raise TypeError("entities must be a list of dicts (one per entity) or a DataFrame, not one dict")
    rows = [dict(e) for e in entities]
    return rows


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"cannot send {type(value).__name__} {value!r} as JSON")


def _json(raw: bytes):
    try:
        return json.loads(raw) if raw else None
    except (ValueError, UnicodeDecodeError):
        return None
