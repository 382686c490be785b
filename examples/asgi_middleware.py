"""An ASGI middleware that routes each user's LLM calls by the user's region.

A web service authenticates a user, reads two claims from the token — where the
user's data may be processed (``data_residency``) and where the user is
(``region``) — and wraps the rest of the request in
``lmc.routing(residency=..., near=...)``. Every LLM call the handler makes, however
deep in the code, is then routed under those constraints: the handlers do not
pass anything around. contextvars keep concurrent users apart.

The middleware is plain ASGI, so it works with any ASGI framework. Starlette here
(it comes with the ``fleet`` extra); with FastAPI the same class mounts with::

    from fastapi import FastAPI

    app = FastAPI()
    app.add_middleware(RoutingContextMiddleware, claims_for=verify_token)

    @app.post("/summarize")
    async def summarize(body: dict) -> dict: ...   # calls the wrapped AsyncOpenAI client

(async endpoints run in the middleware's context; FastAPI/Starlette run sync
``def`` endpoints through ``anyio.to_thread.run_sync``, which carries the context
into the worker thread too.)

The app is exercised in-process with httpx's ASGITransport (httpx2 under openai
3.x, httpx under openai 1.x/2.x), four users at once.

Prerequisites: the ``fleet`` extra and the openai SDK — ``pip install '.[demo]'``.
Runs against the simulated fleet on 127.0.0.1; no credentials.

    python examples/asgi_middleware.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import openai
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, demo_spec

try:  # the HTTP library of the installed openai SDK
    import httpx2 as http
except ImportError:
    import httpx as http  # type: ignore[no-redef]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Stand-in for real token verification (JWT, session lookup...): token -> claims.
TOKENS: dict[str, dict[str, str]] = {
    "alice-token": {"sub": "alice", "data_residency": "EU", "region": "eu-central-1"},
    "bob-token": {"sub": "bob", "data_residency": "US", "region": "us-east-1"},
    "chiyo-token": {"sub": "chiyo", "data_residency": "JP", "region": "ap-northeast-1"},
    "dora-token": {"sub": "dora", "data_residency": "BR", "region": "sa-east-1"},  # no endpoint in Brazil
}


def verify_token(authorization: str | None) -> dict[str, str] | None:
    scheme, _, token = (authorization or "").partition(" ")
    return TOKENS.get(token) if scheme.lower() == "bearer" else None


class RoutingContextMiddleware:
    """Pure ASGI middleware: authenticate, then run the app inside ``lmc.routing()``."""

    def __init__(self, app: ASGIApp, *, claims_for: Callable[[str | None], dict[str, str] | None]) -> None:
        self.app = app
        self.claims_for = claims_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        claims = self.claims_for(headers.get("authorization"))
        if claims is None:
            await _json(send, 401, {"error": "missing or invalid token"})
            return
        scope.setdefault("state", {})["user"] = claims["sub"]
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(lmc.routing(residency=claims["data_residency"], near=claims["region"]))
            except lmc.ResidencyError as exc:  # an unknown code in a claim: refuse before any LLM call
                await _json(send, 403, {"error": str(exc)})
                return
            # Everything the app does for this request — including streaming the
            # response body — runs inside the user's routing scope.
            await self.app(scope, receive, send)


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def build_app(llm: openai.AsyncOpenAI) -> Any:
    async def summarize(request: Request) -> JSONResponse:
        body = await request.json()
        try:
            raw = await llm.chat.completions.with_raw_response.create(
                model="llama-3.1-8b", messages=[{"role": "user", "content": body["text"]}], max_tokens=8
            )
        except openai.APIStatusError as exc:  # e.g. 503: no endpoint allowed for this user is usable
            message = exc.body["message"] if isinstance(exc.body, dict) else exc.message
            return JSONResponse({"error": message, "code": exc.code}, status_code=exc.status_code)
        return JSONResponse(
            {
                "user": request.scope["state"]["user"],
                "summary": raw.parse().choices[0].message.content,
                "served_by": raw.headers["x-llm-multicloud-endpoint"],
                "region": raw.headers["x-llm-multicloud-region"],
            }
        )

    app = Starlette(routes=[Route("/summarize", summarize, methods=["POST"])])
    return RoutingContextMiddleware(app, claims_for=verify_token)


async def run(mc: lmc.MultiCloud) -> dict[str, tuple[int, dict[str, Any]]]:
    async with mc.wrap(openai.AsyncOpenAI(api_key="unused")) as llm:
        app = build_app(llm)
        transport = http.ASGITransport(app=app)
        async with http.AsyncClient(transport=transport, base_url="http://app.test") as web:

            async def as_user(token: str | None) -> tuple[int, dict[str, Any]]:
                headers = {"authorization": f"Bearer {token}"} if token else {}
                r = await web.post("/summarize", json={"text": "a long document"}, headers=headers)
                return r.status_code, r.json()

            users = [*TOKENS, None]
            results = await asyncio.gather(*[as_user(t) for t in users])  # concurrently: contexts stay apart
            return {str(t): res for t, res in zip(users, results, strict=True)}


def main() -> int:
    with Fleet(demo_spec()) as fleet, lmc.MultiCloud(fleet.catalog()) as mc:
        results = asyncio.run(run(mc))
    for token, (status, body) in results.items():
        if status == 200:
            print(f"{body['user']:>5}: 200 served by {body['served_by']} ({body['region']}): {body['summary']!r}")
        else:  # the whole message: a 503 names every candidate and why it was out
            first, *rest = str(body["error"]).splitlines()
            print(f"{token:>11}: {status} {first}")
            for line in rest:
                print(f"{'':>11}  {line.strip()}")

    where = {t.split("-")[0]: body.get("served_by") for t, (s, body) in results.items() if s == 200}
    assert results["alice-token"][0] == 200 and where["alice"] in {"aws-euc1", "gcp-euw4", "onprem-vllm"}, where
    assert results["bob-token"][0] == 200 and where["bob"] in {"aws-use1", "gcp-usc1"}, where
    assert results["chiyo-token"][0] == 200 and where["chiyo"] == "azure-jpe", where
    assert results["dora-token"][0] == 503, results["dora-token"]  # fail closed: never served outside Brazil
    assert results["None"][0] == 401
    print("\nok: each user's request was served inside the user's residency; no compliant endpoint -> 503")
    return 0


if __name__ == "__main__":
    sys.exit(main())
