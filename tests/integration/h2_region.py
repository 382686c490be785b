"""A fleet region's ASGI app for ``granian --factory`` (tests/integration/test_http2.py).

The app records the protocol version and the client address (host, port) of every
chat request, and answers ``GET /seen`` with them (and forgets them): the test's only
way to see from outside the server process which connection each request came over.
"""

from __future__ import annotations

import json
from typing import Any

from llm_multicloud.fleet import Latency, RegionSpec
from llm_multicloud.fleet.server import RegionRuntime, uvicorn_config_kwargs

MODEL = "llama"
SERVED = "served-llama"
KEY = "sk-h2-region"


def app() -> Any:
    """The factory: one region whose 20 ms to the first token keeps concurrent
    requests in flight at once (HTTP/1.1 then needs several connections)."""
    spec = RegionSpec(
        id="r0",
        provider="aws",
        region="us-east-1",
        models={MODEL: SERVED},
        api_key=KEY,
        latency=Latency(ttft_ms=20, ttft_jitter=0, itl_ms=1),
        seed=0,
    )
    runtime = RegionRuntime(
        spec, host="127.0.0.1", max_records=100, uvicorn_kwargs=uvicorn_config_kwargs(configure_logging=False)
    )
    inner = runtime.app
    seen: list[tuple[str, list[Any]]] = []

    async def recording(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/seen":
            body = json.dumps(seen).encode()
            seen.clear()
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": body})
            return
        if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
            seen.append((scope["http_version"], list(scope["client"])))
        await inner(scope, receive, send)

    return recording
