"""One entity's features from a running worker over HTTP (``GET /features/{set}/{entity}``), retried on
connection errors and 5xx; a 4xx is a one-line ``ValueError`` with the worker's message."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request


def read_online(
    url: str, set_name: str, entity: str, features: list[str], timeout: float, headers: dict | None = None
) -> dict:
    path = "/features/{}/{}".format(
        urllib.parse.quote(set_name, safe=""), urllib.parse.quote(entity, safe="")
    )
    query = "?" + urllib.parse.urlencode({"features": ",".join(features)})
    last: Exception | None = None
    for attempt in range(5):
        try:
            request = urllib.request.Request(url.rstrip("/") + path + query, headers=headers or {})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                detail = exc.read()[:200]
                raise ValueError(
                    f"worker answered HTTP {exc.code} for {set_name}/{entity}: {detail!r}"
                ) from None
            last = exc
        except OSError as exc:
            last = exc
        time.sleep(0.5 * (attempt + 1))
    raise ConnectionError(f"cannot read {set_name}/{entity} from {url}: {last}")
