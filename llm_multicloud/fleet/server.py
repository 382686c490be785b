"""The region server: an OpenAI-compatible starlette app plus its uvicorn lifecycle.

Everything here runs on the fleet's event loop thread. The inference endpoints
are plain ASGI callables dispatched before starlette's router, because the
benchmarks measure a client library's overhead of ~0.1 ms against this server
and the router + exception middleware would be a visible share of that. The
control API and the rarely used routes go through the normal starlette router.

Three deliberate details, each something a client library must cope with in
production:

* streams send headers and a role-only chunk *before* the TTFT delay, as vLLM
  and OpenAI do, so "got HTTP 200" is not "got the first token";
* a client that goes away is noticed (a watcher task waits for the ASGI
  ``http.disconnect`` message during every delay), so a cancelled hedge loser
  shows up as ``outcome="disconnected"`` rather than as a completed request;
* ``down`` really refuses connections: the listening socket is closed and the
  port is kept reserved by a bound-but-not-listening socket, so clients get
  ``ECONNREFUSED`` and the region comes back on the same port.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import errno
import hashlib
import importlib.util
import json
import math
import os
import random
import socket
import struct
import time
import zlib
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .capacity import PrefixCacheSim, RateLimiterSim
from .records import Received
from .spec import Fault, Latency, RegionSpec

__all__ = ["ControlServer", "RegionRuntime", "uvicorn_config_kwargs"]

ASGIHandler = Callable[[Scope, Receive, Send], Awaitable[None]]
_BodyHandler = Callable[[Scope, Receive, Send, Received, dict[str, Any], str], Awaitable[None]]

DEFAULT_TOKENS = 8
MAX_TOKENS = 65536
EMBEDDING_DIM = 8
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
_JSON_CT = (b"content-type", b"application/json")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _error(message: str, type_: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


_STATUS_ERRORS: dict[int, tuple[str, str, str | None]] = {
    400: ("Bad request.", "invalid_request_error", None),
    401: ("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
    403: ("Forbidden.", "invalid_request_error", None),
    404: ("Not found.", "invalid_request_error", None),
    408: ("Request timed out.", "timeout", None),
    429: ("Rate limit reached. Please retry later.", "requests", "rate_limit_exceeded"),
    500: ("The server had an error while processing your request.", "server_error", None),
    502: ("Bad gateway.", "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
    504: ("Gateway timeout.", "server_error", None),
}


def _fault_error(status: int, region_id: str) -> dict[str, Any]:
    message, type_, code = _STATUS_ERRORS.get(
        status, ("Simulated error.", "server_error" if status >= 500 else "invalid_request_error", None)
    )
    return _error(f"{message} (simulated by fleet region {region_id})", type_, code)


def _http_impl() -> str:
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


def uvicorn_config_kwargs(*, configure_logging: bool) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.Config`` tuned for a lean request path.

    No proxy-headers middleware, no server/date headers, no lifespan, no
    websockets: nothing per request that a real inference server's client would
    not see anyway. ``configure_logging=False`` keeps an in-process fleet from
    calling ``logging.config.dictConfig`` on the host application's logging.
    """
    kwargs: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "http": _http_impl(),
        "lifespan": "off",
        "ws": "none",
        "interface": "asgi3",
        "proxy_headers": False,
        "server_header": False,
        "date_header": False,
        # Longer than the usual client pool expiry (httpx: 5 s) so the client
        # closes idle connections first and never races a server-side close.
        "timeout_keep_alive": 75,
    }
    if not configure_logging:
        kwargs["log_config"] = None
    return kwargs


def _bound_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` but NOT listening.

    Bound-and-not-listening is exactly the "down" state: the kernel answers a
    connection attempt with RST (``ECONNREFUSED``) while the port stays ours,
    so nobody else can take it and the OS will not hand it out as an ephemeral
    port (which could otherwise make a client TCP-self-connect to it).
    SO_REUSEADDR lets us rebind while old connections sit in TIME_WAIT.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted
    # sockets whose proto says TCP, and without it Nagle + delayed ACK add
    # ~40 ms to every response written in two pieces (headers, then body).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if os.name != "nt":  # on Windows SO_REUSEADDR means "allow port stealing"
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(
                exc.errno, f"port {port} on {host} is already in use; stop what listens there or choose another port"
            ) from None
        raise
    except BaseException:
        sock.close()
        raise
    return sock


def _make_server(app: Any, host: str, port: int, kwargs: dict[str, Any]) -> uvicorn.Server:
    """A uvicorn Server we drive ourselves (startup per listening socket, our own shutdown).

    ``Server.serve()`` would own the socket for the server's whole life and
    install signal handlers; we need to stop and restart listening on the same
    port (``down``) and to run many servers on one loop, so we call
    ``startup(sockets=...)`` directly and prepare what ``serve()`` would have.
    """
    config = uvicorn.Config(app, host=host, port=port, **kwargs)
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    return server


def _count_words(text: str) -> int:
    return len(text.split())


def _content_words(content: Any) -> int:
    if isinstance(content, str):
        return _count_words(content)
    if isinstance(content, list):
        n = 0
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                n += _count_words(part["text"])
        return n
    return 0


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _embedding(text: str) -> list[float]:
    digest = hashlib.blake2b(text.encode(), digest_size=EMBEDDING_DIM * 2).digest()
    raw = [(int.from_bytes(digest[i : i + 2], "little") / 32767.5) - 1.0 for i in range(0, len(digest), 2)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


async def _read_body(receive: Receive) -> bytes | None:
    """Read the whole request body; None if the client disconnected first."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _wait_disconnect(receive: Receive) -> None:
    # Only valid once the request body has been read and before the response
    # completes: in that window the server's receive() blocks until the
    # connection is lost, then yields http.disconnect.
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _send_bytes(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]], content_type: bytes | None = None
) -> None:
    raw = [
        (b"content-type", content_type) if content_type else _JSON_CT,
        (b"content-length", str(len(body)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _Served:
    """Per-request helper: disconnect watching and connection killing.

    The watcher task is created lazily on the first real delay, so a
    zero-latency request (benchmark baseline) costs no extra task.
    """

    __slots__ = ("gone", "rec", "receive", "region", "scope", "watcher")

    def __init__(self, region: RegionRuntime, rec: Received, scope: Scope, receive: Receive) -> None:
        self.region = region
        self.rec = rec
        self.scope = scope
        self.receive = receive
        self.watcher: asyncio.Task[None] | None = None
        self.gone = False

    async def pause(self, seconds: float) -> bool:
        """Sleep, but wake up early if the client disconnects. True means it did."""
        if self.gone:
            return True
        watcher = self.watcher
        if watcher is None:
            watcher = self.watcher = asyncio.ensure_future(_wait_disconnect(self.receive))
        if not watcher.done():
            await asyncio.wait((watcher,), timeout=seconds)
        if watcher.done():
            self.mark_disconnected()
            return True
        return False

    async def wait_disconnect(self) -> None:
        await _wait_disconnect(self.receive)
        self.mark_disconnected()

    def mark_disconnected(self) -> None:
        self.gone = True
        if self.rec.outcome != "disconnected":
            self.region.disconnects += 1
            self.rec.end_time = time.monotonic()
            self.rec.outcome = "disconnected"

    def stop_watching(self) -> None:
        # Must run before the final response message: once the response is
        # complete the server's receive() reports http.disconnect too.
        watcher = self.watcher
        if watcher is not None and not watcher.done():
            watcher.cancel()

    async def kill_connection(self, *, reset: bool) -> None:
        """Close this request's TCP connection without finishing the response.

        ``reset`` sends RST (SO_LINGER 0) instead of FIN. We yield to the loop
        twice afterwards so that the server's connection_lost() has run before
        the app returns; otherwise uvicorn would complain that the app returned
        without completing the response.
        """
        self.gone = True
        self.stop_watching()
        transport = self.region.transport_for(self.scope)
        if transport is not None:
            if reset:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            elif transport.get_write_buffer_size() == 0:
                transport.close()  # flushes nothing, closes now: the client has every chunk sent so far
            else:
                transport.abort()
        await asyncio.sleep(0)
        await asyncio.sleep(0)


def _echo(headers: Mapping[str, str]) -> str:
    """An error message that echoes the request's key in the forms servers print it."""
    from urllib.parse import quote

    auth = headers.get("authorization", "")
    key = auth.partition(" ")[2].strip() if " " in auth else headers.get("api-key", auth)
    forms = [
        key,
        quote(key, safe=""),
        base64.b64encode(f"user:{key}".encode()).decode(),
        repr(key.encode()),
        key.encode().hex(),
        key[: max(len(key) * 2 // 3, 8)] + "...",
    ]
    return "invalid api key " + " / ".join(forms) + " (simulated key echo)"


async def _pour(served: _Served, head: bytes, size: int, tail: bytes) -> AsyncGenerator[bytes, None]:
    """``head``, then ``size`` filler bytes in 64 KiB pieces, then ``tail``; stops as
    soon as the client is gone. Counts what left in ``rec.bytes_sent``."""
    rec = served.rec
    piece = b"x" * 65536
    rec.bytes_sent += len(head)
    yield head
    left = size
    while left > 0:
        if await served.pause(0):
            return
        n = min(left, len(piece))
        rec.bytes_sent += n
        left -= n
        yield piece[:n]
    rec.bytes_sent += len(tail)
    yield tail


class _SSEResponse(StreamingResponse):
    """StreamingResponse whose body is an async generator of pre-encoded SSE events.

    It replaces starlette's ``__call__`` to (a) delay the headers by
    ``headers_ms`` while still noticing a disconnect, (b) stop the disconnect
    watcher before the final message, and (c) behave identically whatever ASGI
    spec version the HTTP implementation announces (starlette switches between
    a listener task and ``OSError`` on send depending on it).
    """

    def __init__(self, content: AsyncGenerator[bytes, None], served: _Served, headers_delay: float) -> None:
        # Not calling StreamingResponse.__init__: the headers are precomputed
        # per region (building them is a visible share of a ~50 us request).
        self.body_iterator = content
        self.status_code = 200
        self.media_type = "text/event-stream"
        self.background = None
        self.raw_headers = served.region.sse_headers
        self._events = content
        self._served = served
        self._headers_delay = headers_delay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        served = self._served
        try:
            if self._headers_delay > 0 and await served.pause(self._headers_delay):
                return
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.body_iterator:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if served.gone:
                return
            served.stop_watching()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            served.mark_disconnected()
        finally:
            served.stop_watching()
            await self._events.aclose()


@dataclasses.dataclass(frozen=True, slots=True)
class AuthCheck:
    """What a custom authorizer sees: the request as received (for signature checks)."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # lower-case names
    body: bytes


class RegionRuntime:
    """Mutable state and request handlers of one region.

    Only the fleet loop thread mutates it (the public ``Fleet`` methods hop onto
    that loop), except for plain attribute reads used by snapshots.
    """

    def __init__(self, spec: RegionSpec, *, host: str, max_records: int, uvicorn_kwargs: dict[str, Any]) -> None:
        self.spec = spec
        self.id = spec.id
        self.host = host
        self.port = spec.port
        self.fault: Fault = spec.fault
        self.latency: Latency = spec.latency
        self.models: dict[str, str] = dict(spec.models)
        #: in-process fleets: a callable that replaces the API-key check (SigV4,
        #: short-lived tokens...); ``None``: the spec's api_key
        self.authorizer: Callable[[AuthCheck], bool] | None = None
        self._served_names: frozenset[str] = frozenset(self.models.values())
        self.waiting = 0
        self.rng = random.Random(self._seed())
        self.records: deque[Received] = deque(maxlen=max_records)
        self.requests = 0
        self.in_flight = 0
        self.disconnects = 0
        self._in_flight_by_model: dict[str, int] = {}
        self._seq = 0
        self._created = int(time.time())
        self.static_headers: list[tuple[bytes, bytes]] = [(b"x-fleet-region", self.id.encode())]
        self.sse_headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            *self.static_headers,
        ]
        self.prefix_cache = PrefixCacheSim(spec.prefix_cache) if spec.prefix_cache is not None else None
        self.limiter = RateLimiterSim(spec.limits) if spec.limits is not None else None
        self._uvicorn_kwargs = uvicorn_kwargs
        self._server: uvicorn.Server | None = None
        self._sock: socket.socket | None = None  # reserved port while down / before start
        self.listening = False
        self.app = _RegionApp(self)

    def _seed(self) -> int:
        return self.spec.seed if self.spec.seed is not None else zlib.crc32(self.id.encode())

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the port and start listening (unless the configured fault is ``down``)."""
        self._sock = _bound_socket(self.host, self.port)
        self.port = self._sock.getsockname()[1]
        self._server = _make_server(self.app, self.host, self.port, self._uvicorn_kwargs)
        if not self._wants_down():
            await self._listen()

    def _wants_down(self) -> bool:
        return self.fault.mode == "down" and self.fault.probability >= 1.0

    async def _listen(self) -> None:
        assert self._server is not None
        if self._sock is None:
            self._sock = await self._rebind()
        sock, self._sock = self._sock, None
        # asyncio's create_server calls listen() on the socket and owns it from here on.
        await self._server.startup(sockets=[sock])
        self.listening = True

    async def _rebind(self) -> socket.socket:
        # Our own listener was just closed, so EADDRINUSE can only be a
        # transient race with the kernel; retry briefly, then give up loudly.
        deadline = time.monotonic() + 2.0
        while True:
            try:
                return _bound_socket(self.host, self.port)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)

    async def _unlisten(self, spare_client: Any = None) -> None:
        assert self._server is not None
        for srv in self._server.servers:
            srv.close()
        self.listening = False
        self._sock = await self._rebind()
        self._drop_connections(spare_client)
        # Let connection_lost() run so clients see the close before we return.
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    def _connections(self) -> list[Any]:
        if self._server is None:
            return []
        return list(self._server.server_state.connections)

    def _drop_connections(self, spare_client: Any = None) -> None:
        for conn in self._connections():
            if spare_client is not None and getattr(conn, "client", None) == spare_client:
                continue
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()

    def transport_for(self, scope: Scope) -> asyncio.Transport | None:
        """The transport carrying the request in ``scope`` (found by client address)."""
        client = scope.get("client")
        if client is None:
            return None
        client = tuple(client)
        for conn in self._connections():
            if getattr(conn, "client", None) == client:
                transport: asyncio.Transport | None = getattr(conn, "transport", None)
                return transport
        return None

    async def shutdown(self) -> None:
        """Stop listening, drop every connection and wait (briefly) for handlers to end."""
        server = self._server
        if server is not None and self.listening:
            for srv in server.servers:
                srv.close()
        self.listening = False
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if server is None:
            return
        self._drop_connections()
        tasks = set(server.server_state.tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=1.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    # ------------------------------------------------------------------ control

    async def apply_fault(self, fault: Fault, spare_client: Any = None) -> None:
        """Install a fault; switching to/from ``down`` (re)moves the listener."""
        self.fault = fault
        if self._server is None:
            return
        if self._wants_down():
            if self.listening:
                await self._unlisten(spare_client)
        elif not self.listening:
            await self._listen()

    def apply_models(self, models: Mapping[str, str]) -> None:
        self.models = dict(models)
        self._served_names = frozenset(self.models.values())

    def clear(self) -> None:
        """Forget records and counters (in-flight is a live gauge and is kept)."""
        self.records.clear()
        self.requests = 0
        self.disconnects = 0

    def restore_config(self) -> None:
        """Back to the spec's latency, models, waiting gauge, RNG, cache and quota state
        (fault: see ``reset``)."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        if self.limiter is not None:
            self.limiter = RateLimiterSim(self.limiter.spec)
        self.latency = self.spec.latency
        self.apply_models(self.spec.models)
        self.waiting = 0
        self.rng = random.Random(self._seed())

    async def reset(self, *, config: bool) -> None:
        """Clear records; with ``config`` also restore the spec's configuration, fault included."""
        self.clear()
        if config:
            self.restore_config()
            self.authorizer = None
            await self.apply_fault(self.spec.fault)

    def state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": f"http://{self.url_host}:{self.port}/v1",
            "port": self.port,
            "listening": self.listening,
            "fault": self.fault.model_dump(),
            "latency": self.latency.model_dump(),
            "models": dict(self.models),
            "waiting": self.waiting,
            "requests": self.requests,
            "in_flight": self.in_flight,
            "disconnects": self.disconnects,
            "records": len(self.records),
            "prefix_cache": None if self.prefix_cache is None else self.prefix_cache.state(),
            "limits": None if self.limiter is None else self.limiter.state(),
        }

    @property
    def url_host(self) -> str:
        if self.host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if self.host == "::":
            return "[::1]"
        return f"[{self.host}]" if ":" in self.host else self.host

    # ------------------------------------------------------------------ request helpers

    def _begin(self, scope: Scope) -> Received:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        rec = Received(self.id, time.monotonic(), scope["method"], scope["path"], headers)
        self.records.append(rec)
        return rec

    def _authorized(self, headers: dict[str, str], scope: Scope | None = None, body: bytes = b"") -> bool:
        if self.authorizer is not None:
            qs = scope.get("query_string", b"") if scope is not None else b""
            check = AuthCheck(
                scope["method"] if scope is not None else "GET",
                ((scope.get("raw_path") or b"").decode("latin-1") or scope["path"]) if scope is not None else "/",
                qs.decode("latin-1"),
                headers,
                body,
            )
            try:
                return bool(self.authorizer(check))
            except Exception:
                return False
        key = self.spec.api_key
        auth = headers.get("authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            return scheme.lower() == "bearer" and token.strip() == key
        return headers.get("api-key") == key  # Azure-style header

    async def _start(
        self, served: _Served, send: Send, *, ignored: tuple[str, ...] = (), extra_s: float = 0.0
    ) -> tuple[Fault | None, float] | None:
        """Begin an answer: draw this request's fault (less those this API does not
        have), apply a blocking one (None: it answered), sample the time to first token
        (plus ``extra_s``, e.g. an uncached prefix's prefill) and record it."""
        rec = served.rec
        fault = self._draw_fault()
        if fault is not None and fault.mode in ignored:
            fault = None
        if fault is not None and await self._apply_blocking_fault(fault, served, send):
            return None
        slow = fault is not None and fault.mode == "slow"
        ttft = self._sample_ttft(self.latency, slow=slow) + extra_s
        rec.ttft_ms = ttft * 1000.0
        if slow:
            rec.fault = "slow"
        return fault, ttft

    def _prefill_s(self, uncached_tokens: int) -> float:
        return 0.0 if self.prefix_cache is None else self.prefix_cache.prefill_s(uncached_tokens)

    def _draw_fault(self) -> Fault | None:
        fault = self.fault
        if fault.mode == "none":
            return None
        if fault.probability >= 1.0 or self.rng.random() < fault.probability:
            return fault
        return None

    def _sample_ttft(self, latency: Latency, slow: bool) -> float:
        ms = latency.ttft_ms
        if latency.ttft_jitter > 0 and ms > 0:
            ms *= math.exp(self.rng.gauss(0.0, latency.ttft_jitter))
        if latency.tail_prob > 0 and self.rng.random() < latency.tail_prob:
            ms += latency.tail_ms
        if slow:
            ms *= 20.0
        return ms / 1000.0

    def _next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}-{self.id}-{self._seq:06d}"

    async def _reply(
        self,
        send: Send,
        rec: Received,
        status: int,
        payload: Any,
        *,
        outcome: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        rec.status = status
        rec.outcome = outcome or ("ok" if status < 400 else f"error:{status}")
        rec.end_time = time.monotonic()  # settled before the client can see the response
        await _send_bytes(send, status, _dumps(payload), [*self.static_headers, *(headers or [])])

    async def _apply_blocking_fault(self, fault: Fault, served: _Served, send: Send) -> bool:
        """Apply faults that replace the response entirely. True if the request is finished."""
        rec = served.rec
        rec.fault = fault.mode
        if fault.mode == "down":
            # Per-request analogue of an outage (only reached with probability < 1,
            # or by a request that raced the listener shutdown): reset the connection.
            rec.outcome = "fault:down"
            await served.kill_connection(reset=True)
            return True
        if fault.mode == "status":
            headers = list(self.static_headers)
            if fault.retry_after is not None:
                headers.append((b"retry-after", fault.retry_after.encode("latin-1")))
            if fault.retry_after_ms is not None:
                headers.append((b"retry-after-ms", str(fault.retry_after_ms).encode()))
            if fault.body is not None:
                body = fault.body.encode()
                try:
                    json.loads(body)
                    ctype = None
                except ValueError:
                    ctype = b"text/plain; charset=utf-8"
            else:
                body, ctype = _dumps(_fault_error(fault.status, self.id)), None
            rec.status = fault.status
            rec.outcome = "fault:status"
            rec.end_time = time.monotonic()
            await _send_bytes(send, fault.status, body, headers, ctype)
            return True
        if fault.mode == "hang":
            rec.outcome = "fault:hang"
            await served.wait_disconnect()
            return True
        if fault.mode == "redirect":
            status = fault.status if 300 <= fault.status < 400 else 307
            headers = [*self.static_headers, (b"location", fault.location.encode("latin-1"))]
            rec.status, rec.outcome, rec.end_time = status, "fault:redirect", time.monotonic()
            await _send_bytes(send, status, b"", headers, b"text/html")
            return True
        if fault.mode == "html_200":
            page = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>Please sign in</body></html>"
            rec.status, rec.outcome, rec.end_time = 200, "fault:html_200", time.monotonic()
            await _send_bytes(send, 200, page, list(self.static_headers), b"text/html; charset=utf-8")
            return True
        if fault.mode == "error_200":
            body = _dumps(_error(f"upstream failure (simulated by fleet region {self.id})", "server_error", None))
            rec.status, rec.outcome, rec.end_time = 200, "fault:error_200", time.monotonic()
            await _send_bytes(send, 200, body, list(self.static_headers))
            return True
        if fault.mode == "huge_body":
            rec.status, rec.outcome = fault.status, "fault:huge_body"
            head = b'{"choices":[{"index":0,"message":{"role":"assistant","content":"'
            await send(
                {"type": "http.response.start", "status": fault.status, "headers": [_JSON_CT, *self.static_headers]}
            )
            async for piece in _pour(served, head, fault.size, b'"},"finish_reason":"stop"}]}'):
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            if not served.gone:
                served.stop_watching()
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            rec.end_time = time.monotonic()
            return True
        if fault.mode == "key_echo" and not rec.stream:
            body = _dumps(_error(_echo(rec.headers), "invalid_request_error", "invalid_api_key"))
            rec.status, rec.outcome, rec.end_time = fault.status, "fault:key_echo", time.monotonic()
            await _send_bytes(send, fault.status, body, list(self.static_headers))
            return True
        return False

    # ------------------------------------------------------------------ endpoints

    async def chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inference(scope, receive, send, self._chat)

    async def embeddings(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inference(scope, receive, send, self._embeddings)

    async def responses(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._inference(scope, receive, send, self._responses)

    async def _inference(self, scope: Scope, receive: Receive, send: Send, handler: _BodyHandler) -> None:
        """Bookkeeping shared by the inference endpoints: record, counters, in-flight gauges."""
        rec = self._begin(scope)
        self.requests += 1
        self.in_flight += 1
        try:
            checked = await self._prologue(scope, receive, send, rec)
            if checked is None:
                return
            body, model = checked
            by_model = self._in_flight_by_model
            by_model[model] = by_model.get(model, 0) + 1
            try:
                await handler(scope, receive, send, rec, body, model)
            finally:
                by_model[model] -= 1
        except asyncio.CancelledError:
            # Only happens when the fleet stops under a request: its connection is gone.
            if rec.outcome == "pending":
                rec.outcome = "disconnected"
            raise
        except Exception:
            rec.outcome = "error:500"
            raise
        finally:
            self.in_flight -= 1
            if rec.end_time is None:
                rec.end_time = time.monotonic()

    async def _prologue(
        self, scope: Scope, receive: Receive, send: Send, rec: Received
    ) -> tuple[dict[str, Any], str] | None:
        """Body, auth and model checks shared by chat and embeddings; None = already answered."""
        raw = await _read_body(receive)
        if raw is None:
            rec.outcome = "disconnected"
            self.disconnects += 1
            return None
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if isinstance(body, dict):
            rec.json = body
            model = body.get("model")
            rec.model = model if isinstance(model, str) else None
            rec.stream = body.get("stream") is True
        if not self._authorized(rec.headers, scope, raw):
            await self._reply(send, rec, 401, _error(*_STATUS_ERRORS[401]))
            return None
        if not isinstance(body, dict):
            await self._reply(
                send, rec, 400, _error("Request body must be a JSON object.", "invalid_request_error", None)
            )
            return None
        if rec.model is None or rec.model not in self._served_names:
            message = f"The model `{body.get('model')}` does not exist or you do not have access to it."
            await self._reply(send, rec, 404, _error(message, "invalid_request_error", "model_not_found", "model"))
            return None
        return body, rec.model

    async def _chat(
        self, scope: Scope, receive: Receive, send: Send, rec: Received, body: dict[str, Any], model: str
    ) -> None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            await self._reply(
                send,
                rec,
                400,
                _error("`messages` must be a non-empty list of objects.", "invalid_request_error", None, "messages"),
            )
            return
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            await self._reply(
                send,
                rec,
                400,
                _error("`max_tokens` must be a positive integer.", "invalid_request_error", None, "max_tokens"),
            )
            return
        n_tokens = min(limit, MAX_TOKENS) if limit is not None else DEFAULT_TOKENS
        finish_reason = "length" if limit is not None else "stop"

        prefix: str | None = None
        if body.get("continue_final_message") is True:
            # vLLM semantics: continuing the final assistant message is exclusive
            # with adding a generation prompt (whose default is true).
            if body.get("add_generation_prompt", True) is not False:
                await self._reply(
                    send,
                    rec,
                    400,
                    _error(
                        "continue_final_message and add_generation_prompt cannot both be true.",
                        "invalid_request_error",
                        None,
                        "continue_final_message",
                    ),
                )
                return
            if messages[-1].get("role") != "assistant":
                await self._reply(
                    send,
                    rec,
                    400,
                    _error(
                        "continue_final_message requires the final message to be an assistant message.",
                        "invalid_request_error",
                        None,
                        "messages",
                    ),
                )
                return
            prefix = _content_text(messages[-1].get("content"))
        words = [_content_words(m.get("content")) for m in messages]
        prompt_tokens = sum(words)
        if self.limiter is not None:
            wait = self.limiter.take(prompt_tokens + n_tokens)
            if wait is not None:
                hdrs = [(b"retry-after", b"3600")]
                if not math.isinf(wait):
                    hdrs = [(b"retry-after", str(math.ceil(wait)).encode())]
                    hdrs.append((b"retry-after-ms", str(math.ceil(wait * 1000.0)).encode()))
                await self._reply(send, rec, 429, _error(*_STATUS_ERRORS[429]), headers=hdrs)
                return
        cached = 0
        if self.prefix_cache is not None:
            cached = self.prefix_cache.admit(
                [f"{m.get('role')}\x1f{_content_text(m.get('content'))}" for m in messages], words
            )

        served = _Served(self, rec, scope, receive)
        started = await self._start(served, send, extra_s=self._prefill_s(prompt_tokens - cached))
        if started is None:
            return
        fault, ttft = started
        latency = self.latency

        # Token i of an answer is "w{i}"; a fresh answer is tagged with the
        # region, a continuation picks up after the words already present
        # (region tags like "[aws-use1]" are not words of the sequence).
        if prefix is None:
            pieces = [f"[{self.id}] w0", *(f" w{i}" for i in range(1, n_tokens))]
        else:
            start = sum(1 for w in prefix.split() if not (w.startswith("[") and w.endswith("]")))
            sep = "" if not prefix or prefix[-1].isspace() else " "
            pieces = [f"{sep}w{start}", *(f" w{i}" for i in range(start + 1, start + n_tokens))]
        usage: dict[str, Any] = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n_tokens,
            "total_tokens": prompt_tokens + n_tokens,
        }
        if self.prefix_cache is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}

        if rec.stream:
            stream_options = body.get("stream_options")
            include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
            gen = self._sse(
                served,
                model,
                pieces,
                finish_reason,
                usage if include_usage else None,
                ttft,
                latency.itl_ms / 1000.0,
                fault,
            )
            elapsed = time.monotonic() - rec.time
            response = _SSEResponse(gen, served, latency.headers_ms / 1000.0 - elapsed)
            rec.status = 200
            await response(scope, receive, send)
            if rec.outcome == "pending":
                rec.outcome = f"fault:{rec.fault}" if rec.fault else "ok"
            return

        delay = max(latency.headers_ms / 1000.0, ttft + n_tokens * latency.itl_ms / 1000.0)
        delay -= time.monotonic() - rec.time
        if delay > 0 and await served.pause(delay):
            return
        served.stop_watching()
        payload = {
            "id": self._next_id("chatcmpl"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(pieces)},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
        }
        await self._complete(served, send, payload, usage, fault)
        return

    async def _complete(
        self, served: _Served, send: Send, payload: dict[str, Any], usage: dict[str, Any], fault: Fault | None
    ) -> None:
        """Send a whole non-streamed answer (chat or embeddings), or half of it for close_mid_stream."""
        if fault is not None and fault.mode == "close_mid_stream":
            await self._truncate(served, send, _dumps(payload))
            return
        rec = served.rec
        rec.usage = usage
        await self._reply(send, rec, 200, payload, outcome=f"fault:{rec.fault}" if rec.fault else "ok")

    async def _truncate(self, served: _Served, send: Send, body: bytes) -> None:
        """Announce the full Content-Length, send half the body, then drop the connection."""
        rec = served.rec
        rec.status = 200
        rec.ended_by("close_mid_stream")
        headers = [_JSON_CT, (b"content-length", str(len(body)).encode()), *self.static_headers]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
        await served.kill_connection(reset=False)

    async def _sse(
        self,
        served: _Served,
        model: str,
        pieces: list[str],
        finish_reason: str,
        usage: dict[str, Any] | None,
        ttft: float,
        itl: float,
        fault: Fault | None,
    ) -> AsyncGenerator[bytes, None]:
        """The SSE event sequence of one streamed completion, composed by hand for speed."""
        rec = served.rec
        chunk_id = json.dumps(self._next_id("chatcmpl"))
        head = (
            f'data: {{"id":{chunk_id},"object":"chat.completion.chunk","created":{int(time.time())},'
            f'"model":{json.dumps(model)},"system_fingerprint":null,"choices":[{{"index":0,'
        ).encode()
        tail = b',"usage":null}\n\n' if usage is not None else b"}\n\n"
        mode = fault.mode if fault is not None else "none"
        fault_at = fault.after_chunks if fault is not None else -1
        fault_interval = fault.interval_ms / 1000.0 if fault is not None else 0.0
        size = fault.size if fault is not None else 0

        yield head + b'"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]' + tail

        wait = ttft - (time.monotonic() - rec.time)
        if wait > 0 and await served.pause(wait):
            return
        # The fault strikes before content chunk `after_chunks` (or before the finish
        # chunk when the answer is shorter): one place for both cases.
        point = min(fault_at, len(pieces)) if fault_at >= 0 else -1
        for i in range(len(pieces) + 1):
            if 0 < i < len(pieces) and itl > 0 and await served.pause(itl):
                return
            if i == point:
                if mode == "close_mid_stream":
                    rec.ended_by(mode)
                    await served.kill_connection(reset=False)
                    return
                if mode == "malformed_sse":
                    rec.fault = mode
                    yield b"data: {not json\n\n"
                if mode == "stop_mid_stream":
                    rec.ended_by(mode)
                    yield b"data: [DONE]\n\n"  # and no finish_reason: stopped mid-answer
                    return
                if mode == "garbage_mid_stream":
                    rec.fault = mode
                    yield b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]]}\n\n'
                if mode == "key_echo":
                    rec.ended_by(mode)
                    yield b"data: " + _dumps(_error(_echo(rec.headers), "invalid_request_error", None)) + b"\n\n"
                    return  # and no [DONE]
                if mode == "keepalive_only":
                    rec.fault = mode
                    for _ in range(10_000):  # bounded: ~30 min at the default pace
                        if await served.pause(fault_interval):
                            return
                        yield b": keep-alive\n\n"
                    return
                if mode == "huge_event":
                    rec.fault = mode
                    async for piece in _pour(
                        served, b'data: {"choices":[{"index":0,"delta":{"content":"', size, b'"}}]}\n\n'
                    ):
                        yield piece
                    if served.gone:
                        return
                if mode == "drip":
                    rec.fault = mode
                    rest = b"".join(
                        head
                        + b'"delta":{"content":"'
                        + p.encode()
                        + b'"},"logprobs":null,"finish_reason":null}]'
                        + tail
                        for p in pieces[i:]
                    )
                    for b in range(len(rest)):  # bounded by the answer's length
                        if await served.pause(fault_interval):
                            return
                        rec.bytes_sent += 1
                        yield rest[b : b + 1]
                    rec.ended_by(mode)
                    return
            if i == len(pieces):
                break
            # Pieces are "w<i>", spaces and the region id (whose allowed
            # characters never need JSON escaping), so no json.dumps here.
            rec.chunks_sent += 1  # counted before the write: the client may look as soon as it has it
            yield (
                head
                + b'"delta":{"content":"'
                + pieces[i].encode()
                + b'"},"logprobs":null,"finish_reason":null}]'
                + tail
            )
        yield (
            head + b'"delta":{},"logprobs":null,"finish_reason":' + json.dumps(finish_reason).encode() + b"}]" + tail
        )
        if usage is not None:
            rec.usage = usage
            yield head[: head.index(b'"choices":[')] + b'"choices":[],"usage":' + _dumps(usage) + b"}\n\n"
        # Settle the record *before* the client can see [DONE]: a client thread
        # in this process may inspect it the instant the bytes arrive.
        if rec.outcome == "pending":
            rec.outcome = f"fault:{rec.fault}" if rec.fault else "ok"
        rec.end_time = time.monotonic()
        yield b"data: [DONE]\n\n"

    async def _responses(
        self, scope: Scope, receive: Receive, send: Send, rec: Received, body: dict[str, Any], model: str
    ) -> None:
        """The Responses API, as a scripted model: given function tools and no tool
        output yet, it calls the first tool (string arguments = the last user text);
        otherwise it answers like chat, quoting the tool outputs it was given.

        Latency and blocking faults (down, errors, 429s...) apply; faults inside a
        stream are modelled for Chat Completions only."""
        items = body.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
            await self._reply(
                send, rec, 400, _error("`input` must be a string or a list of items.", "invalid_request_error", None)
            )
            return
        served = _Served(self, rec, scope, receive)
        started = await self._start(served, send, ignored=("malformed_sse", "close_mid_stream", "stop_mid_stream"))
        if started is None:
            return
        _, ttft = started
        latency = self.latency

        user_text = ""
        outputs: list[str] = []
        for item in items:
            if item.get("type") == "function_call_output":
                outputs.append(str(item.get("output", "")))
            elif item.get("role") == "user":
                user_text = _content_text(item.get("content"))
        tools = [t for t in body.get("tools") or () if isinstance(t, dict) and t.get("type") == "function"]
        prompt_tokens = sum(_content_words(i.get("content")) for i in items)
        output: dict[str, Any]
        if tools and not outputs:
            params = tools[0].get("parameters") or {}
            props = params.get("properties") or {} if isinstance(params, dict) else {}
            args = {
                name: user_text if (spec or {}).get("type") == "string" else 1
                for name, spec in props.items()
                if isinstance(spec, dict)
            }
            output = {
                "type": "function_call",
                "id": self._next_id("fc"),
                "call_id": self._next_id("call"),
                "name": str(tools[0].get("name")),
                "arguments": json.dumps(args),
                "status": "completed",
            }
            pieces = [output["arguments"]]
        else:
            said = "".join(f" tool said: {o}" for o in outputs)
            limit = body.get("max_output_tokens")
            n_tokens = min(limit, MAX_TOKENS) if isinstance(limit, int) and limit > 0 else DEFAULT_TOKENS
            pieces = [f"[{self.id}]{said} w0", *(f" w{i}" for i in range(1, n_tokens))]
            output = {
                "type": "message",
                "id": self._next_id("msg"),
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "".join(pieces), "annotations": []}],
            }
        n_out = len(pieces)
        usage = {
            "input_tokens": prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": n_out,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_tokens + n_out,
        }
        # what the fleet records, in the chat vocabulary the other endpoints use
        counted = {"prompt_tokens": prompt_tokens, "completion_tokens": n_out, "total_tokens": prompt_tokens + n_out}
        response = {
            "id": self._next_id("resp"),
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": model,
            "output": [output],
            "parallel_tool_calls": True,
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "usage": usage,
        }
        if rec.stream:
            gen = self._response_events(served, response, counted, pieces, ttft, latency.itl_ms / 1000.0)
            elapsed = time.monotonic() - rec.time
            rec.status = 200
            await _SSEResponse(gen, served, latency.headers_ms / 1000.0 - elapsed)(scope, receive, send)
            if rec.outcome == "pending":
                rec.outcome = f"fault:{rec.fault}" if rec.fault else "ok"
            return
        delay = max(latency.headers_ms / 1000.0, ttft + n_out * latency.itl_ms / 1000.0)
        if delay - (time.monotonic() - rec.time) > 0 and await served.pause(delay - (time.monotonic() - rec.time)):
            return
        served.stop_watching()
        rec.usage = counted
        await self._reply(send, rec, 200, response, outcome=f"fault:{rec.fault}" if rec.fault else "ok")

    async def _response_events(
        self,
        served: _Served,
        response: dict[str, Any],
        counted: dict[str, int],
        pieces: list[str],
        ttft: float,
        itl: float,
    ) -> AsyncGenerator[bytes, None]:
        """The typed event sequence of a streamed Responses API answer."""
        rec = served.rec
        seq = 0

        def event(kind: str, **fields: Any) -> bytes:
            nonlocal seq
            seq += 1
            return (
                f"event: {kind}\ndata: ".encode() + _dumps({"type": kind, "sequence_number": seq, **fields}) + b"\n\n"
            )

        item = response["output"][0]
        start = {**response, "status": "in_progress", "output": [], "usage": None}
        yield event("response.created", response=start)
        yield event("response.in_progress", response=start)
        wait = ttft - (time.monotonic() - rec.time)
        if wait > 0 and await served.pause(wait):
            return
        ref = {"output_index": 0, "item_id": item["id"]}
        if item["type"] == "function_call":
            yield event(
                "response.output_item.added", output_index=0, item={**item, "arguments": "", "status": "in_progress"}
            )
            rec.chunks_sent += 1
            yield event("response.function_call_arguments.delta", **ref, delta=item["arguments"])
            yield event("response.function_call_arguments.done", **ref, arguments=item["arguments"])
        else:
            yield event(
                "response.output_item.added", output_index=0, item={**item, "content": [], "status": "in_progress"}
            )
            part = {"type": "output_text", "text": "", "annotations": []}
            yield event("response.content_part.added", **ref, content_index=0, part=part)
            for i, piece in enumerate(pieces):
                if i and itl > 0 and await served.pause(itl):
                    return
                rec.chunks_sent += 1
                yield event("response.output_text.delta", **ref, content_index=0, delta=piece, logprobs=[])
            text = item["content"][0]["text"]
            yield event("response.output_text.done", **ref, content_index=0, text=text, logprobs=[])
            yield event("response.content_part.done", **ref, content_index=0, part={**part, "text": text})
        yield event("response.output_item.done", output_index=0, item=item)
        rec.usage = counted
        if rec.outcome == "pending":
            rec.outcome = f"fault:{rec.fault}" if rec.fault else "ok"
        rec.end_time = time.monotonic()
        yield event("response.completed", response=response)

    async def _embeddings(
        self, scope: Scope, receive: Receive, send: Send, rec: Received, body: dict[str, Any], model: str
    ) -> None:
        rec.stream = False
        raw_input = body.get("input")
        items: list[Any] = []
        if isinstance(raw_input, str):
            items = [raw_input]
        elif isinstance(raw_input, list) and raw_input:
            if all(isinstance(x, int) and not isinstance(x, bool) for x in raw_input):
                items = [raw_input]  # one token array is one input
            elif all(isinstance(x, str | list) for x in raw_input):
                items = raw_input
        if not items:
            await self._reply(
                send,
                rec,
                400,
                _error(
                    "`input` must be a string, a list of strings or token arrays.",
                    "invalid_request_error",
                    None,
                    "input",
                ),
            )
            return

        served = _Served(self, rec, scope, receive)
        # no SSE on this endpoint
        started = await self._start(served, send, ignored=("malformed_sse", "stop_mid_stream"))
        if started is None:
            return
        fault, ttft = started
        latency = self.latency
        delay = max(latency.headers_ms / 1000.0, ttft) - (time.monotonic() - rec.time)
        if delay > 0 and await served.pause(delay):
            return
        served.stop_watching()

        as_base64 = body.get("encoding_format") == "base64"
        data = []
        tokens = 0
        for index, item in enumerate(items):
            text = item if isinstance(item, str) else " ".join(str(t) for t in item)
            tokens += _count_words(item) if isinstance(item, str) else len(item)
            vector = _embedding(text)
            embedding: Any = (
                base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if as_base64 else vector
            )
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        payload = {"object": "list", "data": data, "model": model, "usage": usage}
        await self._complete(served, send, payload, usage, fault)
        return

    async def _flapping_down(self, scope: Scope, receive: Receive, rec: Received) -> bool:
        """For the side endpoints: a flapping ``down`` resets their connections too."""
        fault = self.fault
        if fault.mode != "down" or not (fault.probability >= 1.0 or self.rng.random() < fault.probability):
            return False
        rec.fault = "down"
        rec.outcome = "fault:down"
        await _Served(self, rec, scope, receive).kill_connection(reset=True)
        return True

    async def list_models(self, scope: Scope, receive: Receive, send: Send) -> None:
        rec = self._begin(scope)
        try:
            if await self._flapping_down(scope, receive, rec):
                return
            if not self._authorized(rec.headers, scope):
                await self._reply(send, rec, 401, _error(*_STATUS_ERRORS[401]))
                return
            if self.fault.mode == "huge_body":  # a listing that never ends
                served = _Served(self, rec, scope, receive)
                await self._apply_blocking_fault(self.fault.model_copy(update={"status": 200}), served, send)
                return
            seen: dict[str, None] = dict.fromkeys(
                self.models.values() if self.spec.listed is None else self.spec.listed
            )
            data = [
                {"id": name, "object": "model", "created": self._created, "owned_by": self.spec.provider}
                for name in seen
            ]
            await self._reply(send, rec, 200, {"object": "list", "data": data})
        finally:
            if rec.end_time is None:
                rec.end_time = time.monotonic()

    async def retrieve_model(self, request: Request) -> Response:
        rec = self._begin(request.scope)
        rec.end_time = time.monotonic()
        if not self._authorized(rec.headers, request.scope):
            rec.status, rec.outcome = 401, "error:401"
            return JSONResponse(_error(*_STATUS_ERRORS[401]), status_code=401)
        name = request.path_params["model"]
        rec.model = name
        if name not in self._served_names:
            rec.status, rec.outcome = 404, "error:404"
            message = f"The model `{name}` does not exist or you do not have access to it."
            return JSONResponse(_error(message, "invalid_request_error", "model_not_found", "model"), 404)
        rec.status, rec.outcome = 200, "ok"
        return JSONResponse({"id": name, "object": "model", "created": self._created, "owned_by": self.spec.provider})

    async def metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        rec = self._begin(scope)
        try:
            if await self._flapping_down(scope, receive, rec):
                return
            if not self.spec.metrics:
                await self._reply(send, rec, 404, _error("Not found.", "invalid_request_error", None))
                return
            rec.status, rec.outcome, rec.end_time = 200, "ok", time.monotonic()
            await _send_bytes(
                send,
                200,
                self.metrics_text().encode(),
                list(self.static_headers),
                b"text/plain; version=0.0.4; charset=utf-8",
            )
        finally:
            if rec.end_time is None:
                rec.end_time = time.monotonic()

    def metrics_text(self) -> str:
        """vLLM-style gauges, one series per served model.

        ``num_requests_running`` is the model's in-flight count; ``waiting`` is
        set through the control API (the region has no real queue) and is
        reported on every model's series; cache usage is a plausible function
        of both so that load-aware routing has something to read.
        """
        names = list(dict.fromkeys(self.models.values()))
        running = {n: float(self._in_flight_by_model.get(n, 0)) for n in names}
        waiting = float(self.waiting)
        gauges: list[tuple[str, str, dict[str, float]]] = [
            ("vllm:num_requests_running", "Number of requests currently running on GPU.", running),
            ("vllm:num_requests_waiting", "Number of requests waiting to be processed.", dict.fromkeys(names, waiting)),
            (
                "vllm:gpu_cache_usage_perc",
                "GPU KV-cache usage. 1 means 100 percent usage.",
                {n: min(1.0, (running[n] + waiting) / 256.0) for n in names},
            ),
        ]
        lines: list[str] = []
        for metric, help_text, values in gauges:
            lines.append(f"# HELP {metric} {help_text}")
            lines.append(f"# TYPE {metric} gauge")
            for name, value in values.items():
                label = name.replace("\\", "\\\\").replace('"', '\\"')
                lines.append(f'{metric}{{model_name="{label}"}} {value}')
        return "\n".join(lines) + "\n"


class _RegionApp(Starlette):
    """The region's starlette app, with the hot endpoints dispatched before the router."""

    def __init__(self, region: RegionRuntime) -> None:
        self._region = region
        self._fast: dict[tuple[str, str], ASGIHandler] = {
            ("POST", "/v1/chat/completions"): region.chat,
            ("POST", "/v1/embeddings"): region.embeddings,
            ("POST", "/v1/responses"): region.responses,
            ("GET", "/v1/models"): region.list_models,
            ("GET", "/metrics"): region.metrics,
        }
        routes = [
            Route(path, endpoint=_ASGIEndpoint(handler), methods=[method])
            for (method, path), handler in self._fast.items()
        ]
        routes.append(Route("/v1/models/{model:path}", region.retrieve_model, methods=["GET"]))
        routes.extend(control_routes(lambda: {region.id: region}, default_region=region.id, home=region))
        super().__init__(routes=routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self._fast.get((scope["method"], scope["path"]))
            if handler is not None:
                await handler(scope, receive, send)
                return
            if scope["method"] == "POST" and scope["path"].startswith("/v1/"):
                # An API path this server does not have (legacy completions, an SDK
                # that doubles /v1...): recorded like any request, answered 404 below.
                rec = self._region._begin(scope)
                rec.outcome, rec.status = "error:404", 404
        await super().__call__(scope, receive, send)


class _ASGIEndpoint:
    """Wraps a handler so starlette's Route treats it as a raw ASGI app (not ``f(request)``)."""

    def __init__(self, handler: ASGIHandler) -> None:
        self._handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handler(scope, receive, send)


# ---------------------------------------------------------------------- control API


def control_routes(
    regions: Callable[[], Mapping[str, RegionRuntime]],
    *,
    default_region: str | None,
    home: RegionRuntime | None = None,
) -> list[Route]:
    """Routes of the ``/_fleet/`` control API.

    Mounted on every region server (``region`` defaults to that server's own
    region) and on the fleet's control server (``region`` selects one; reads
    default to all). The control server matters for ``down``: a region that is
    down cannot be told to come back through its own port.
    """

    def pick(request: Request, *, required: bool) -> list[RegionRuntime]:
        table = regions()
        rid = request.query_params.get("region") or default_region
        if rid is None:
            if required:
                raise _ControlError(400, "query parameter `region` is required")
            return list(table.values())
        if rid not in table:
            raise _ControlError(404, f"unknown region {rid!r}")
        return [table[rid]]

    async def body_json(request: Request) -> Any:
        raw = await request.body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise _ControlError(400, "invalid JSON body") from exc

    def guarded(fn: Callable[[Request], Awaitable[Any]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            client = request.client
            if client is not None and client.host not in _LOOPBACK:
                return JSONResponse({"error": "the fleet control API is loopback-only"}, status_code=403)
            try:
                result = await fn(request)
            except _ControlError as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)
            except ValueError as exc:  # pydantic validation errors
                return JSONResponse({"error": str(exc)}, status_code=422)
            if isinstance(result, Response):
                return result
            return JSONResponse(result)

        return endpoint

    def states(selected: list[RegionRuntime]) -> dict[str, Any]:
        return {"regions": {r.id: r.state() for r in selected}}

    async def get_state(request: Request) -> Any:
        return states(pick(request, required=False))

    async def post_fault(request: Request) -> Any:
        (region,) = pick(request, required=True)
        fault = Fault.model_validate(await body_json(request))
        spare = None
        if region is home and fault.mode == "down":
            # Going down through our own port: keep this connection alive long
            # enough to answer, then close it (Connection: close).
            spare = tuple(request.scope["client"]) if request.scope.get("client") else None
        await region.apply_fault(fault, spare_client=spare)
        result = states([region])
        if spare is not None:
            return JSONResponse(result, headers={"connection": "close"})
        return result

    async def post_latency(request: Request) -> Any:
        (region,) = pick(request, required=True)
        region.latency = Latency.model_validate(await body_json(request))
        return states([region])

    async def post_models(request: Request) -> Any:
        (region,) = pick(request, required=True)
        data = await body_json(request)
        models = data.get("models") if isinstance(data, dict) else None
        if not isinstance(models, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in models.items()
        ):
            raise _ControlError(400, 'body must be {"models": {"<logical>": "<served name>"}}')
        region.apply_models(models)
        return states([region])

    async def post_waiting(request: Request) -> Any:
        (region,) = pick(request, required=True)
        data = await body_json(request)
        n = data.get("n") if isinstance(data, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise _ControlError(400, 'body must be {"n": <non-negative int>}')
        region.waiting = n
        return states([region])

    async def get_log(request: Request) -> Any:
        selected = pick(request, required=False)
        since = float(request.query_params.get("since", "-inf"))
        records = [rec for r in selected for rec in list(r.records) if rec.time > since]
        records.sort(key=lambda rec: rec.time)
        limit = request.query_params.get("limit")
        if limit is not None:
            records = records[-int(limit) :] if int(limit) > 0 else []
        return {"records": [rec.to_dict() for rec in records]}

    async def get_counts(request: Request) -> Any:
        return {r.id: r.requests for r in pick(request, required=False)}

    async def post_reset(request: Request) -> Any:
        selected = pick(request, required=False)
        data = await body_json(request)
        config = bool(data.get("config", False)) if isinstance(data, dict) else False
        for region in selected:
            await region.reset(config=config)
        return states(selected)

    return [
        Route("/_fleet/state", guarded(get_state), methods=["GET"]),
        Route("/_fleet/fault", guarded(post_fault), methods=["POST"]),
        Route("/_fleet/latency", guarded(post_latency), methods=["POST"]),
        Route("/_fleet/models", guarded(post_models), methods=["POST"]),
        Route("/_fleet/waiting", guarded(post_waiting), methods=["POST"]),
        Route("/_fleet/log", guarded(get_log), methods=["GET"]),
        Route("/_fleet/counts", guarded(get_counts), methods=["GET"]),
        Route("/_fleet/reset", guarded(post_reset), methods=["POST"]),
    ]


class _ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ControlServer:
    """The fleet-wide control server: ``/_fleet/`` for every region, always up."""

    def __init__(
        self, regions: Mapping[str, RegionRuntime], *, host: str, port: int, uvicorn_kwargs: dict[str, Any]
    ) -> None:
        self.host = host
        self.port = port
        self.app = Starlette(routes=control_routes(lambda: regions, default_region=None))
        self._uvicorn_kwargs = uvicorn_kwargs
        self._server: uvicorn.Server | None = None

    async def start(self) -> None:
        sock = _bound_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        self._server = _make_server(self.app, self.host, self.port, self._uvicorn_kwargs)
        await self._server.startup(sockets=[sock])

    async def shutdown(self) -> None:
        server = self._server
        if server is None:
            return
        for srv in server.servers:
            srv.close()
        for conn in list(server.server_state.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()
        tasks = set(server.server_state.tasks)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=1.0)
            for task in pending:
                task.cancel()
