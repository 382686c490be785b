"""The engine's test bench: a fake upstream and virtual time.

* :class:`VirtualClock` — one clock for the engine, health and the event loop. Under
  :func:`run_virtual`, the asyncio loop's ``time()`` is this clock and its selector
  never waits: when nothing is ready, it jumps the clock to the next timer (the
  autojump of Trio's ``MockClock``). Hedge delays, first-token timeouts and deadlines
  then fire exactly on time, in microseconds of wall time.
* :class:`FakeUpstream` — the shape of :class:`llm_multicloud.upstream.Upstream`;
  each endpoint host answers with a scripted :class:`Reply` after a virtual delay, and
  every opened and closed response is recorded.
* :class:`World` — a catalog of endpoints in distinct failure domains, the policy,
  health and an :class:`~llm_multicloud.engine.Executor` with audit and request hooks.
"""

from __future__ import annotations

import asyncio
import json
import selectors
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel

from llm_multicloud.catalog import Catalog
from llm_multicloud.engine import AttemptRecord, Executor, RequestRecord
from llm_multicloud.health import Health
from llm_multicloud.intent import Intent, parse
from llm_multicloud.router import Router
from llm_multicloud.upstream import ASYNC_IO, UpstreamError

from ..conftest import FakeClock

T = TypeVar("T")


#: The unit suite's hand-driven clock; under :func:`run_virtual` the event loop drives it too.
VirtualClock = FakeClock


def run_virtual(clock: VirtualClock, fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` on an asyncio loop whose time is ``clock`` and that never sleeps."""

    class Jump(selectors.DefaultSelector):
        def select(self, timeout: float | None = None) -> list[Any]:
            events = super().select(0)
            if not events:
                assert timeout is not None, "deadlock: nothing ready and no timer pending"
                clock.advance(max(timeout, 0.0))
            return events

    def factory() -> asyncio.AbstractEventLoop:
        loop = asyncio.SelectorEventLoop(Jump())
        loop.time = clock  # type: ignore[method-assign]
        return loop

    return anyio.run(fn, backend="asyncio", backend_options={"loop_factory": factory})


_PREAMBLE = b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
_CONTENT = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
_FINISH = b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
_USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":100,"completion_tokens":10,"total_tokens":110}}\n\n'
_DONE = b"data: [DONE]\n\n"
_ANSWER = json.dumps(
    {
        "id": "c",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
    }
).encode()


@dataclass
class Reply:
    """One endpoint's scripted behaviour: after ``delay_s`` (virtual), answer ``status``
    (200: an answer), or raise ``error`` (an UpstreamError kind), or never answer."""

    delay_s: float = 0.0
    status: int = 200
    error: str | None = None
    hang: bool = False
    headers: list[tuple[str, str]] = field(default_factory=list)


class FakeResponse:
    def __init__(self, status: int, headers: list[tuple[str, str]], parts: list[bytes]) -> None:
        self.status = status
        self.headers = headers
        self._parts = parts
        self.closed = False

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    async def chunks(self) -> AsyncIterator[bytes]:
        for p in self._parts:
            await anyio.lowlevel.checkpoint()
            yield p

    async def read(self, limit: int = 1 << 26, *, truncate: bool = False) -> bytes:
        return b"".join(self._parts)[:limit]

    async def aclose(self) -> None:
        self.closed = True


@dataclass
class Opened:
    host: str
    at: float
    resp: FakeResponse | None = None


class FakeUpstream:
    """Answers each host from ``script`` (host → Reply); records every request."""

    #: the engine's primitives: anyio's (the virtual clock drives them)
    io = ASYNC_IO

    def __init__(self, clock: VirtualClock, script: dict[str, Reply]) -> None:
        self.clock = clock
        self.script = script
        self.opened: list[Opened] = []

    async def open(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        content: bytes | None,
        *,
        connect_s: float,
        read_s: float,
        pool_s: float | None = None,
    ) -> FakeResponse:
        host = urlsplit(url).hostname or ""
        rec = Opened(host.split(".")[0], self.clock())
        self.opened.append(rec)
        r = self.script[rec.host]
        await anyio.sleep(r.delay_s)
        if r.hang:
            await anyio.sleep(3600)
        if r.error is not None:
            raise UpstreamError(r.error, f"{r.error} failed")
        stream = bool(content and json.loads(content).get("stream"))
        if r.status != 200:
            body = json.dumps({"error": {"message": f"status {r.status}"}}).encode()
            resp = FakeResponse(r.status, [("content-type", "application/json"), *r.headers], [body])
        elif stream:
            parts = [_PREAMBLE, _CONTENT, _FINISH, _USAGE, _DONE]
            resp = FakeResponse(200, [("content-type", "text/event-stream")], parts)
        else:
            resp = FakeResponse(200, [("content-type", "application/json")], [_ANSWER])
        rec.resp = resp
        return resp

    def hosts(self) -> list[str]:
        return [o.host for o in self.opened]


#: (id, provider, region): four failure domains, two of them on aws.
ENDPOINTS = (
    ("a", "aws", "eu-central-1"),
    ("b", "aws", "eu-west-1"),
    ("c", "gcp", "europe-west4"),
    ("d", "azure", "westeurope"),
)


class World:
    """A catalog, health and executor on a virtual clock, with hooks recording."""

    def __init__(
        self,
        policy: dict[str, Any] | None = None,
        *,
        endpoints: tuple[tuple[str, str, str], ...] = ENDPOINTS,
        clock: VirtualClock | None = None,
    ) -> None:
        self.clock = clock or VirtualClock()
        pol = {"strategy": "ordered", "probe": {"enabled": False}, **(policy or {})}
        self.catalog = Catalog.load(
            {
                "models": {"m": {}},
                "endpoints": [
                    {
                        "id": i,
                        "provider": p,
                        "region": r,
                        "base_url": f"https://{i}.example.invalid/v1",
                        "models": ["m"],
                        "pricing": {"input_per_mtok": 1.0, "output_per_mtok": 2.0},
                    }
                    for i, p, r in endpoints
                ],
                "policy": pol,
            }
        )
        self.policy = self.catalog.policy(None)
        self.health = Health(self.catalog, self.policy, clock=self.clock)
        self.attempts: list[AttemptRecord] = []
        self.requests: list[RequestRecord] = []
        self.executor = Executor(
            self.catalog,
            self.policy,
            Router(self.catalog, self.policy),
            self.health,
            hooks=[self.attempts.append],
            request_hooks=[self.requests.append],
            clock=self.clock,
        )

    def state(self, endpoint_id: str) -> Any:
        return next(s for s in self.health.states if s.endpoint.id == endpoint_id)

    def intent(self, *, stream: bool = False, timeout_s: float | None = None) -> Intent:
        body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "x" * 400}]}
        if stream:
            body["stream"] = True
        return parse(
            "POST", "chat/completions", "", [("content-type", "application/json")], json.dumps(body).encode(), timeout_s
        )
