"""The executor's HTTP client toward endpoints, over httpx2 or legacy httpx.

openai 3.x runs on httpx2 (pydantic's fork of httpx) and openai 1.x/2.x on httpx.
Their APIs are the same for what is used here, so one small adapter serves both:
it is given the library *module* the wrapped client uses and never imports the
other one. Exceptions of either library are translated into :class:`UpstreamError`
here and nowhere else, so the executor reasons about "connect failed" or "timed
out", never about a library's exception hierarchy.

Bodies are read decoded (``aiter_bytes``): the executor parses SSE, and the caller
gets identity-encoded bytes (``content-encoding`` is dropped on the way back).

Two I/O layers serve the one engine (issue 14: a sync request runs on its caller's
thread). The engine never calls anyio directly for a request: it asks the upstream's
:attr:`Upstream.io` for its deadlines (``fail_after``, ``move_on_after``), ``shield``
and ``sleep``.

* :class:`Upstream` + :class:`AsyncIO`: async pools, anyio deadlines (cancel scopes).
* :class:`SyncUpstream` + :class:`SyncIO`: the sync HTTP library's pools on the
  caller's thread. The methods are still ``async def`` — the engine's coroutines are
  the same — but they block and never suspend, so :func:`drive` runs a whole request
  with one ``coro.send(None)``. A deadline is a context variable of the caller's
  thread; every socket operation is clamped to it by a wrapper around the pool's
  network backend (httpcore reads the request's ``timeout`` extension only once per
  phase — headers, then the whole body — so mutating that dict could not bound a
  stream that trickles keep-alives; the wrapper can, at each read).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator
from types import ModuleType, TracebackType
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


class UpstreamError(Exception):
    """A failure talking to an endpoint, sorted by :func:`translate`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        #: "connect", "timeout", "read" (connection broke mid-body), "transport",
        #: "protocol" (a reply we cannot use) — the endpoint's faults — or "local":
        #: nothing the endpoint did (see :func:`translate`).
        self.kind = kind

    @property
    def endpoint_fault(self) -> bool:
        """Is the endpoint to blame? (``False`` for "local": never penalise it.)"""
        return self.kind != "local"


class UpstreamResponse:
    """An open response from an endpoint. Close it (``aclose``) in every path."""

    __slots__ = ("_gens", "_lib", "_resp", "headers", "status")

    def __init__(self, lib: ModuleType, resp: Any) -> None:
        self._lib = lib
        self._resp = resp
        self._gens: list[Any] = []
        self.status: int = resp.status_code
        #: lowercased names (``multi_items`` gives them so in httpx and httpx2 alike)
        self.headers: list[tuple[str, str]] = resp.headers.multi_items()

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def chunks(self) -> AsyncIterator[bytes]:
        """The decoded body, chunk by chunk. Closed by :meth:`aclose` (so that an
        abandoned iterator is not left for the garbage collector to finalise).

        An identity-encoded body (what every event stream is) is read straight from
        the transport's stream — the bytes as they leave the connection, one await per
        chunk — instead of through the response's ``aiter_bytes`` → ``aiter_raw``
        generators and their no-op decoder and chunker (issue 14: streams at the
        speed of the wire). The connection goes back to its pool at :meth:`aclose`."""
        gen: Any
        if self.header("content-encoding") in (None, "identity"):
            gen = _RawChunks(self._lib, self._resp.stream)
        else:
            gen = self._chunks()
        self._gens.append(gen)
        it: AsyncIterator[bytes] = gen
        return it

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        inner = self._resp.aiter_bytes()
        try:
            async for chunk in inner:
                yield chunk
        except Exception as exc:
            raise translate(self._lib, exc) from exc
        finally:
            # `async for` does not close an iterator it leaves early: do it here, or
            # the library's generator is finalised later by the event loop.
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await inner.aclose()

    async def _whole(self) -> bytes:
        """The body in one read (its framing bounds it)."""
        try:
            body: bytes = await self._resp.aread()
        except Exception as exc:
            raise translate(self._lib, exc) from exc
        return body

    async def read(self, limit: int = 64 * 1024 * 1024, *, truncate: bool = False) -> bytes:
        """The whole decoded body (a complete answer, or an error body), at most ``limit``
        bytes. The limit holds while reading: the body is not read past it (a declared
        ``content-length`` above it is refused before reading at all). Past the limit,
        ``truncate`` keeps the first ``limit`` bytes (error bodies: their start says
        what went wrong); otherwise it is an error. Either way the connection is
        closed by :meth:`aclose` without reading the rest."""
        declared = self.header("content-length")
        encoded = self.header("content-encoding") not in (None, "identity")
        if declared is not None and declared.isdigit() and not encoded:
            size = int(declared)
            if size <= limit:
                return await self._whole()  # one read, no per-chunk loop (hot path)
            if not truncate:
                raise UpstreamError("protocol", f"response body of {size} bytes is larger than the {limit}-byte limit")
        parts: list[bytes] = []
        got = 0
        async for chunk in self.chunks():
            parts.append(chunk)
            got += len(chunk)
            if got > limit:
                if truncate:
                    return b"".join(parts)[:limit]
                raise UpstreamError("protocol", f"response body larger than the {limit}-byte limit")
        return b"".join(parts)

    async def aclose(self) -> None:
        """Close the response; an unfinished body closes its connection, so the server
        sees the disconnect and stops generating."""
        if self._resp.is_closed and not self._gens:
            return  # read to the end: the connection is already back in the pool
        with anyio.CancelScope(shield=True):
            gens, self._gens = self._gens, []
            for gen in gens:
                with contextlib.suppress(Exception):
                    await gen.aclose()
            with contextlib.suppress(Exception):  # closing a broken connection may raise
                await self._resp.aclose()


class _RawChunks:
    """The transport's response stream of an identity-encoded body, as an async
    iterator: one ``__anext__`` per network chunk, exceptions sorted by
    :func:`translate`, empty chunks skipped (an empty read means "nothing yet" to the
    committed stream's bounded reads, never data)."""

    __slots__ = ("_inner", "_lib")

    def __init__(self, lib: ModuleType, stream: Any) -> None:
        self._lib = lib
        self._inner = stream.__aiter__()

    def __aiter__(self) -> _RawChunks:
        return self

    async def __anext__(self) -> bytes:
        nxt = self._inner.__anext__
        try:
            while True:
                chunk: bytes = await nxt()
                if chunk:
                    return chunk
        except StopAsyncIteration:
            raise
        except Exception as exc:
            raise translate(self._lib, exc) from exc

    async def aclose(self) -> None:
        aclose = getattr(self._inner, "aclose", None)
        if aclose is not None:
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await aclose()


class SyncUpstreamResponse(UpstreamResponse):
    """The same response over the sync HTTP library: every read blocks the caller's
    thread, bounded by the innermost :class:`SyncIO` deadline (see the module docs)."""

    __slots__ = ()

    def chunks(self) -> AsyncIterator[bytes]:
        it = _SyncChunks(self._lib, self._resp.iter_bytes())
        self._gens.append(it)
        return it

    async def _whole(self) -> bytes:
        _check_deadline()
        try:
            body: bytes = self._resp.read()
        except Exception as exc:
            raise _expired_or(self._lib, exc) from exc
        return body

    async def aclose(self) -> None:
        if self._resp.is_closed and not self._gens:
            return
        gens, self._gens = self._gens, []
        for gen in gens:
            gen.close()
        with contextlib.suppress(Exception):
            self._resp.close()


class _SyncChunks:
    """An async iterator over a sync body iterator: ``__anext__`` blocks, never suspends."""

    __slots__ = ("_inner", "_lib")

    def __init__(self, lib: ModuleType, inner: Iterator[bytes]) -> None:
        self._lib = lib
        self._inner = inner

    def __aiter__(self) -> _SyncChunks:
        return self

    async def __anext__(self) -> bytes:
        _check_deadline()  # a deadline that passed between reads (a trickle of keep-alives)
        try:
            return next(self._inner)
        except StopIteration:
            raise StopAsyncIteration from None
        except Exception as exc:
            raise _expired_or(self._lib, exc) from exc

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()


def translate(lib: ModuleType, exc: BaseException) -> UpstreamError:
    """The one place where exceptions from talking to an endpoint are sorted.

    Only the HTTP library's network and protocol errors (and the TLS, socket and
    anyio stream errors under them) are the endpoint's fault. Anything else — a bug
    of ours, ``RuntimeError: Event loop is closed`` from a pool whose loop is gone, a
    request our own HTTP library refused to send (``LocalProtocolError``) — is
    "local": it must never penalise an endpoint (it would fail on every one).
    """
    if isinstance(exc, UpstreamError):
        return exc
    name = type(exc).__name__
    detail = str(exc) or name
    if isinstance(exc, lib.LocalProtocolError | lib.PoolTimeout):
        # PoolTimeout: every connection of our own pool toward that origin stayed busy
        # (``http_options["limits"]``); the endpoint did nothing wrong.
        kind = "local"
    elif isinstance(exc, lib.ConnectTimeout | lib.ConnectError):
        kind = "connect"
    elif isinstance(exc, lib.TimeoutException):
        kind = "timeout"
    elif isinstance(exc, lib.RemoteProtocolError | lib.ReadError | lib.WriteError):
        kind = "read"
    elif isinstance(exc, lib.HTTPError | ssl.SSLError | OSError | anyio.EndOfStream | anyio.BrokenResourceError):
        kind = "transport"
    else:
        kind = "local"
    return UpstreamError(kind, f"{name}: {detail}")


def _tls_context(lib: ModuleType, verify: Any, cert: Any, trust_env: bool) -> ssl.SSLContext:
    """The TLS context for these settings, built once per process (see :class:`_Pools`)."""
    try:
        key = (lib.__name__, verify, cert, trust_env)
        hash(key)
    except TypeError:  # unhashable settings (a list as cert): built each time, as before
        return lib.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)  # type: ignore[no-any-return]
    with _TLS_LOCK:
        ctx = _TLS.get(key)
        if ctx is None:
            ctx = _TLS[key] = lib.create_ssl_context(verify=verify, cert=cert, trust_env=trust_env)
    return ctx


#: TLS contexts by (library, verify, cert, trust_env): a handful per process
_TLS: dict[tuple[Any, ...], ssl.SSLContext] = {}
_TLS_LOCK = threading.Lock()


class _Pools:
    """Connection pools toward the endpoints, one per origin, created on first use.

    One pool per origin (scheme, host, port): keep-alive is bounded *per endpoint*
    (``max_keepalive``), and the work a request does in its pool (the HTTP library
    walks its pool's connections and probes every idle socket on each request and
    each release) grows only with that endpoint's idle connections. With one pool
    for every endpoint, a burst left up to 200 idle sockets that each request probed
    twice: milliseconds per request until they expired (issue 14).

    It drives the library's transport directly, not a full client: requests are
    already complete (URL, headers, body, deadlines), so the client layer (cookies,
    auth flows, redirects, event hooks) would only add latency to every attempt.
    Each URL is parsed once (memoised), and the TLS context is built once per
    process for each set of TLS settings (:func:`_tls_context`), shared by every pool.
    ``options`` reach each pool's transport: ``verify`` (a CA bundle path or an
    ``ssl.SSLContext``), ``cert``, ``proxy``, ``http2``, and ``limits`` (then per
    endpoint, replacing ``max_connections``/``max_keepalive``).
    """

    #: parsed URLs kept (a catalog's endpoints x paths; emptied when full)
    URL_CACHE_SIZE = 4096

    def __init__(
        self,
        lib: ModuleType,
        *,
        max_connections: int = 1000,
        max_keepalive: int = 32,
        keepalive_expiry: float = 30.0,
        **options: Any,
    ) -> None:
        self.lib = lib
        options.setdefault("trust_env", False)
        verify = options.pop("verify", True)  # TLS verification is on unless told otherwise
        cert = options.pop("cert", None)
        if not isinstance(verify, ssl.SSLContext) or cert is not None:
            # One context for every pool of every upstream with these settings: building
            # one reads the CA bundle (20 ms on a quiet machine, hundreds under load), and
            # a wrapped async client makes an upstream per event loop — its first request
            # on each loop paid that before (issue 14).
            verify = _tls_context(lib, verify, cert, options["trust_env"])
        options["verify"] = verify
        options.setdefault(
            "limits",
            lib.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_keepalive,
                keepalive_expiry=keepalive_expiry,
            ),
        )
        self._options = options
        self._pools: dict[tuple[str, str, int | None], Any] = {}
        self._urls: dict[str, tuple[Any, tuple[str, str, int | None]]] = {}
        self._closed = False

    def _new_pool(self) -> Any:
        raise NotImplementedError

    def _pool(self, url: str) -> tuple[Any, Any]:
        """The parsed URL and its origin's transport (created on first use)."""
        hit = self._urls.get(url)
        if hit is None:
            parsed = self.lib.URL(url)
            if len(self._urls) >= self.URL_CACHE_SIZE:
                self._urls.clear()
            hit = self._urls[url] = (parsed, (parsed.scheme, parsed.host, parsed.port))
        parsed, origin = hit
        pool = self._pools.get(origin)
        if pool is None:
            if self._closed:
                raise UpstreamError("local", "the connection pools are closed (MultiCloud closed)")
            pool = self._pools.setdefault(origin, self._new_pool())
        return parsed, pool

    def idle_connections(self) -> dict[str, int]:
        """Per origin, its pool's idle connections (for tests and benchmarks)."""
        out = {}
        for (scheme, host, port), pool in list(self._pools.items()):
            conns = getattr(getattr(pool, "_pool", None), "connections", [])
            out[f"{scheme}://{host}:{port}"] = sum(1 for c in conns if c.is_idle())
        return out


class Upstream(_Pools):
    """Async HTTP connection pools toward the endpoints, one per origin, bound to one
    loop (``AsyncHTTPTransport``; see :class:`_Pools`)."""

    #: the engine's primitives for requests over these pools
    io: AsyncIO | SyncIO

    def __init__(self, lib: ModuleType, **options: Any) -> None:
        super().__init__(lib, **options)
        self.io = ASYNC_IO

    def _new_pool(self) -> Any:
        return self.lib.AsyncHTTPTransport(**self._options)

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
    ) -> UpstreamResponse:
        """Send one request. ``connect_s`` bounds the TCP (and TLS) connect, ``read_s``
        each read and write; ``pool_s`` (default ``connect_s``) the wait for a free
        connection of this process's own pool toward the origin, which is a separate
        bound: a full pool is our queue, not the endpoint's slowness (a pool timeout is
        "local" in :func:`translate`, never blamed on the endpoint)."""
        lib = self.lib
        timeout = {
            "connect": connect_s,
            "read": read_s,
            "write": read_s,
            "pool": connect_s if pool_s is None else pool_s,
        }
        try:
            parsed, pool = self._pool(url)
            req = lib.Request(method, parsed, headers=headers, content=content, extensions={"timeout": timeout})
            return await self._send(pool, req)
        except Exception as exc:
            raise _expired_or(lib, exc) from exc

    async def _send(self, pool: Any, req: Any) -> UpstreamResponse:
        return UpstreamResponse(self.lib, await pool.handle_async_request(req))

    async def aclose(self) -> None:
        self._closed = True
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            with anyio.CancelScope(shield=True):
                await pool.aclose()


class SyncUpstream(Upstream):
    """Sync HTTP connection pools toward the endpoints (``HTTPTransport``), used on the
    callers' threads (the library's pools are thread-safe). After ``os.fork()`` the
    child starts with no pools: the parent's sockets are never shared."""

    def __init__(self, lib: ModuleType, **options: Any) -> None:
        super().__init__(lib, **options)
        self.io = SYNC_IO
        self._pid = os.getpid()
        self._lock = threading.Lock()

    def _new_pool(self) -> Any:
        transport = self.lib.HTTPTransport(**self._options)
        inner: Any = getattr(transport, "_pool", None)
        backend = getattr(inner, "_network_backend", None)
        if backend is None:  # pragma: no cover - guarded by the tests on both libraries
            raise UpstreamError("local", f"{self.lib.__name__}'s sync pool has no network backend to bound reads")
        inner._network_backend = _BoundedBackend(backend, http2=bool(self._options.get("http2")))
        return transport

    def _pool(self, url: str) -> tuple[Any, Any]:
        if os.getpid() != self._pid:  # a forked child: drop (never close) the parent's pools
            with self._lock:
                if os.getpid() != self._pid:
                    self._pools = {}
                    self._pid = os.getpid()
        return super()._pool(url)

    async def _send(self, pool: Any, req: Any) -> UpstreamResponse:
        _check_deadline()
        return SyncUpstreamResponse(self.lib, pool.handle_request(req))

    def close(self) -> None:
        """Close every pool (their idle connections); safe from any thread."""
        self._closed = True
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            with contextlib.suppress(Exception):
                pool.close()

    async def aclose(self) -> None:
        self.close()


# -- the engine's primitives -------------------------------------------------------------


class AsyncIO:
    """anyio's primitives: the async engine, unchanged."""

    #: attempts may run side by side (a hedge can race)
    concurrent = True

    @staticmethod
    def fail_after(seconds: float) -> contextlib.AbstractContextManager[Any]:
        return _FailAfter(seconds)

    @staticmethod
    def move_on_after(seconds: float) -> contextlib.AbstractContextManager[Any]:
        return anyio.move_on_after(seconds)

    @staticmethod
    def shield() -> contextlib.AbstractContextManager[Any]:
        return anyio.CancelScope(shield=True)

    @staticmethod
    async def sleep(seconds: float) -> None:
        await anyio.sleep(seconds)

    @staticmethod
    def time_left() -> float | None:
        """Seconds left for blocking waits (None: waits are awaited, cancel scopes end them)."""
        return None


class _FailAfter:
    """``anyio.fail_after``, as one object around one cancel scope: the same deadline
    (from when it is made) and the same ``TimeoutError`` when that deadline cancelled
    the block, without the two generator-based context managers (``fail_after`` over
    ``fail_at``) that every attempt otherwise builds and holds while it waits."""

    __slots__ = ("_scope",)

    def __init__(self, seconds: float) -> None:
        self._scope = anyio.CancelScope(deadline=anyio.current_time() + seconds)

    def __enter__(self) -> anyio.CancelScope:
        return self._scope.__enter__()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> bool:
        scope = self._scope
        suppressed = bool(scope.__exit__(et, ev, tb))
        if scope.cancelled_caught and anyio.current_time() >= scope.deadline:
            raise TimeoutError from None
        return suppressed


class SyncIO:
    """Blocking primitives for a request driven on its caller's thread (:func:`drive`).

    A deadline (``fail_after``/``move_on_after``) is a context variable: the network
    backend's reads, writes and connects clamp their timeouts to it, and each body
    read checks it first (see the module docs). Nothing here ever suspends."""

    concurrent = False

    @staticmethod
    def fail_after(seconds: float) -> contextlib.AbstractContextManager[Any]:
        return _SyncScope(seconds, fail=True)

    @staticmethod
    def move_on_after(seconds: float) -> contextlib.AbstractContextManager[Any]:
        return _SyncScope(seconds, fail=False)

    @staticmethod
    def shield() -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()  # nothing cancels a blocking call

    @staticmethod
    async def sleep(seconds: float) -> None:
        time.sleep(seconds)  # noqa: ASYNC251 - the point: block the caller's thread, never suspend

    @staticmethod
    def time_left() -> float | None:
        """Seconds left before the innermost deadline (None: none), for blocking waits."""
        left = _left()
        return None if left is None else max(left, 0.0)


ASYNC_IO = AsyncIO()
SYNC_IO = SyncIO()

#: (deadline on time.monotonic, the scope that set it) of the innermost SyncIO scope
_DEADLINE: contextvars.ContextVar[tuple[float, _SyncScope] | None] = contextvars.ContextVar(
    "llm_multicloud_sync_deadline", default=None
)


class _Expired(BaseException):
    """A SyncIO deadline passed (a BaseException, like anyio's cancellation: no
    ``except Exception`` on the way may take it for an upstream failure)."""

    def __init__(self, scope: _SyncScope) -> None:
        super().__init__("deadline")
        self.scope = scope


class _SyncScope:
    """A deadline for blocking I/O: ``fail=True`` raises ``TimeoutError`` when it
    passes (anyio's ``fail_after``), ``fail=False`` leaves the block (``move_on_after``)."""

    __slots__ = ("_fail", "_seconds", "_token", "cancelled_caught", "deadline")

    def __init__(self, seconds: float, *, fail: bool) -> None:
        self._seconds = seconds
        self._fail = fail
        self.deadline = math.inf
        self.cancelled_caught = False
        self._token: contextvars.Token[tuple[float, _SyncScope] | None] | None = None

    def __enter__(self) -> _SyncScope:
        self.deadline = time.monotonic() + max(self._seconds, 0.0)
        outer = _DEADLINE.get()
        if outer is None or self.deadline < outer[0]:
            self._token = _DEADLINE.set((self.deadline, self))
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> bool:
        if self._token is not None:
            _DEADLINE.reset(self._token)
            self._token = None
        if isinstance(ev, _Expired) and ev.scope is self:
            self.cancelled_caught = True
            if self._fail:
                raise TimeoutError from None
            return True
        return False


def _left() -> float | None:
    """Seconds left before the innermost SyncIO deadline (None: no deadline)."""
    d = _DEADLINE.get()
    return None if d is None else d[0] - time.monotonic()


def _check_deadline() -> None:
    d = _DEADLINE.get()
    if d is not None and time.monotonic() >= d[0]:
        raise _Expired(d[1])


def _expired_or(lib: ModuleType, exc: Exception) -> BaseException:
    """A timeout when the innermost SyncIO deadline has passed is that deadline;
    anything else (and everything on the async path, which sets no SyncIO deadline)
    is sorted by :func:`translate`, still the one place."""
    d = _DEADLINE.get()
    if d is not None and isinstance(exc, lib.TimeoutException) and time.monotonic() >= d[0] - 0.0005:
        return _Expired(d[1])
    return translate(lib, exc)


def _bound(timeout: float | None) -> float | None:
    left = _left()
    if left is None:
        return timeout
    left = max(left, 1e-4)
    return left if timeout is None else min(timeout, left)


class Interrupt:
    """The hold another thread has on one attempt's blocking I/O (the thread race of
    :mod:`llm_multicloud.engine.threads`), installed with :class:`Interruptible`.

    * :meth:`cancel` (from any thread): the attempt lost. Its current socket is shut
      down, so a read blocked on it returns at once, and every later operation of the
      attempt raises :class:`Cancelled`. Only ``shutdown``: the owner thread closes
      the connection itself (closing a descriptor another thread is blocked on does
      not wake it, and could let a new connection reuse it). Only while the
      connection is still the attempt's: the pool probes a released connection
      (``is_readable``) before it hands it to anyone, and that ends the hold. Over
      HTTP/2 (one connection carries other requests' streams) nothing is shut down:
      the loser ends at its next read.
    * a timer (``at`` on ``time.monotonic``, ``on_timer``): reads wait at most until
      ``at``; then ``on_timer`` runs on the owner thread, in the middle of the read
      (it may start a hedge on another thread), and the read goes on for the rest of
      its own timeout. A connect is split the same way (it restarts once the timer
      ran); writes and the TLS handshake are not split (a partial write cannot be
      resumed), the timer runs before them when due.
    """

    __slots__ = ("at", "cancelled", "on_timer", "stream")

    def __init__(self) -> None:
        self.cancelled = False
        #: the network stream the attempt used last (shut down by :meth:`cancel`)
        self.stream: _BoundedStream | None = None
        self.at = math.inf
        self.on_timer: Callable[[], None] | None = None

    def cancel(self) -> None:
        self.cancelled = True
        s = self.stream
        if s is not None:
            with _OWNERS:
                # Still this attempt's connection? Once released, the pool probes it
                # ("is_readable") before anyone reuses it, which ends our hold on it:
                # another request's connection is never shut down.
                if s._owner is self:
                    s.shutdown()

    def _due(self) -> float:
        """Seconds until the timer (runs it first when it is due; inf: no timer)."""
        while self.on_timer is not None:
            wait = self.at - time.monotonic()
            if wait > 0:
                return wait
            self.at = math.inf
            self.on_timer()
        return math.inf


def _slice(h: Interrupt, end: float | None) -> tuple[float | None, bool]:
    """The timeout of the next slice of a blocking read or connect under ``h``: up to
    the hedge timer when it comes first (``split``: its timeout is the timer's turn, not
    the operation's own), else the time left to ``end``. Runs the timer if it is due,
    and raises :class:`Cancelled` once the attempt is cancelled."""
    if h.cancelled:
        raise Cancelled
    wait = h._due()
    t = _bound(_remaining(end))
    split = wait < (math.inf if t is None else t)
    return (wait if split else t), split


class Cancelled(BaseException):
    """The attempt was cancelled by another thread (:meth:`Interrupt.cancel`). A
    BaseException, like anyio's cancellation: nothing on the way takes it for the
    endpoint's failure (the race accounts the attempt as cancelled, never blamed)."""


#: guards the hand-over of a connection between an attempt's Interrupt and the pool
_OWNERS = threading.Lock()

#: the Interrupt of the attempt running in this context (None: nobody can interrupt it)
_HOOK: contextvars.ContextVar[Interrupt | None] = contextvars.ContextVar("llm_multicloud_interrupt", default=None)


class Interruptible:
    """Run an attempt's blocking I/O under ``hook`` (a context manager; ``fresh``: in a
    new thread's context, without the deadlines of the thread that started it)."""

    __slots__ = ("_fresh", "_hook", "_tokens")

    def __init__(self, hook: Interrupt, *, fresh: bool = False) -> None:
        self._hook = hook
        self._fresh = fresh
        self._tokens: tuple[Any, ...] = ()

    def __enter__(self) -> Interrupt:
        t = _HOOK.set(self._hook)
        self._tokens = (t, _DEADLINE.set(None)) if self._fresh else (t,)
        return self._hook

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        _HOOK.reset(self._tokens[0])
        if self._fresh:
            _DEADLINE.reset(self._tokens[1])


def _remaining(end: float | None) -> float | None:
    return None if end is None else max(end - time.monotonic(), 0.0)


class _BoundedStream:
    """A network stream whose every operation ends by the innermost SyncIO deadline
    (and, under an :class:`Interrupt`, can be cancelled and reads split at its timer)."""

    __slots__ = ("_inner", "_owner", "_shutdown", "_timeout")

    def __init__(self, inner: Any, timeout_exc: type[BaseException], shutdown: bool) -> None:
        self._inner = inner
        #: the network library's timeout exception (a read split at the timer raises it)
        self._timeout = timeout_exc
        #: the Interrupt of the attempt that used it last, until the pool takes it back
        self._owner: Interrupt | None = None
        #: False over HTTP/2: one connection carries other requests' streams too
        self._shutdown = shutdown

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        h = _HOOK.get()
        if h is None:
            data: bytes = self._inner.read(max_bytes, _bound(timeout))
            return data
        h.stream, self._owner = self, h
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            t, split = _slice(h, end)
            try:
                data = self._inner.read(max_bytes, t)
            except self._timeout:
                if h.cancelled:
                    raise Cancelled from None
                if split:
                    continue  # the timer's turn, not the read's own timeout
                raise
            except Exception:
                if h.cancelled:
                    raise Cancelled from None
                raise
            if h.cancelled:
                raise Cancelled
            return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        h = _HOOK.get()
        if h is not None:
            h.stream, self._owner = self, h
            h._due()
            if h.cancelled:
                raise Cancelled
        self._inner.write(buffer, _bound(timeout))

    def close(self) -> None:
        self._inner.close()

    def shutdown(self) -> None:
        """End the connection at once, from any thread (the owner's blocked read
        returns); its owner still closes it."""
        sock = self._inner.get_extra_info("socket") if self._shutdown else None
        if sock is not None:
            with contextlib.suppress(OSError):
                # socket.socket's own: an SSLSocket's would also drop its TLS object
                # under the thread that is reading through it
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> Any:
        h = _HOOK.get()
        if h is not None:
            h.stream, self._owner = self, h
            h._due()
        inner = self._inner.start_tls(ssl_context, server_hostname, _bound(timeout))
        return _BoundedStream(inner, self._timeout, self._shutdown)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable" and self._owner is not None:
            with _OWNERS:  # the pool considers reusing it: no attempt may shut it down now
                self._owner = None
        return self._inner.get_extra_info(info)


class _BoundedBackend:
    """The sync pool's network backend, its streams bounded by SyncIO deadlines."""

    __slots__ = ("_inner", "_shutdown", "_timeout")

    def __init__(self, inner: Any, *, http2: bool = False) -> None:
        self._inner = inner
        # httpcore / httpcore2: the package of the backend's class holds its exceptions
        lib = sys.modules[type(inner).__module__.partition(".")[0]]
        self._timeout: type[BaseException] = getattr(lib, "TimeoutException", TimeoutError)
        #: a cancelled attempt's socket may be shut down (not over HTTP/2: shared)
        self._shutdown = not http2

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, **kw: Any) -> _BoundedStream:
        h = _HOOK.get()
        if h is None:
            return _BoundedStream(self._inner.connect_tcp(host, port, _bound(timeout), **kw), *self._kind)
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            t, split = _slice(h, end)
            try:
                inner = self._inner.connect_tcp(host, port, t, **kw)
            except self._timeout:
                if split and not h.cancelled:
                    continue  # the timer ran out first: run it, then connect again
                raise
            s = _BoundedStream(inner, *self._kind)
            h.stream, s._owner = s, h
            if h.cancelled:
                s.close()
                raise Cancelled
            return s

    def connect_unix_socket(self, path: str, timeout: float | None = None, **kw: Any) -> _BoundedStream:
        return _BoundedStream(self._inner.connect_unix_socket(path, _bound(timeout), **kw), *self._kind)

    @property
    def _kind(self) -> tuple[type[BaseException], bool]:
        return self._timeout, self._shutdown

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine of the engine over :class:`SyncIO` to its end on this thread.

    Its I/O blocks, so it completes within one ``send(None)``. Suspending would mean
    something awaited a real event loop — a bug (there is none to resume it): the
    coroutine is closed (its ``finally`` blocks close what it opened) and a
    ``RuntimeError`` says so."""
    try:
        coro.send(None)
    except StopIteration as stop:
        value: T = stop.value
        return value
    coro.close()
    raise RuntimeError(
        "llm_multicloud bug: a sync request's coroutine suspended (something on the sync path awaited "
        "an event loop); please report it"
    )
