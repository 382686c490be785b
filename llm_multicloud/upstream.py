"""The executor's HTTP client toward endpoints, over httpx2 or legacy httpx.

openai 3.x runs on httpx2 (pydantic's fork of httpx) and openai 1.x/2.x on httpx.
Their APIs are the same for what is used here, so one small adapter serves both:
it is given the library *module* the wrapped client uses and never imports the
other one. Exceptions of either library are translated into :class:`UpstreamError`
here and nowhere else, so the executor reasons about "connect failed" or "timed
out", never about a library's exception hierarchy.

Bodies are read decoded (``aiter_bytes``): the executor parses SSE, and the caller
gets identity-encoded bytes (``content-encoding`` is dropped on the way back).
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncGenerator, AsyncIterator
from types import ModuleType
from typing import Any

import anyio


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
        self._gens: list[AsyncGenerator[bytes, None]] = []
        self.status: int = resp.status_code
        self.headers: list[tuple[str, str]] = [(k.lower(), v) for k, v in resp.headers.multi_items()]

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def chunks(self) -> AsyncIterator[bytes]:
        """The decoded body, chunk by chunk. Closed by :meth:`aclose` (so that an
        abandoned iterator is not left for the garbage collector to finalise)."""
        gen = self._chunks()
        self._gens.append(gen)
        return gen

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
                # The framing bounds the body: one read, no per-chunk loop (hot path).
                try:
                    body: bytes = await self._resp.aread()
                except Exception as exc:
                    raise translate(self._lib, exc) from exc
                return body
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
    if isinstance(exc, lib.LocalProtocolError):
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


class Upstream:
    """Async HTTP connection pools toward the endpoints, one per origin, bound to one loop.

    One pool per origin (scheme, host, port), created on first use: keep-alive is
    bounded *per endpoint* (``max_keepalive``), and the work a request does in its pool
    (the HTTP library walks its pool's connections and probes every idle socket on
    each request and each release) grows only with that endpoint's idle connections.
    With one pool for every endpoint, a burst left up to 200 idle sockets that each
    request probed twice: milliseconds per request until they expired (issue 14).

    It drives the library's transport directly (``AsyncHTTPTransport``), not a full
    ``AsyncClient``: requests are already complete (URL, headers, body, deadlines), so
    the client layer (cookies, auth flows, redirects, event hooks) would only add
    latency to every attempt. Each URL is parsed once (memoised), and the TLS context
    is built once for every pool. ``options`` reach each pool's transport: ``verify``
    (a CA bundle path or an ``ssl.SSLContext``), ``cert``, ``proxy``, ``http2``, and
    ``limits`` (then per endpoint, replacing ``max_connections``/``max_keepalive``).
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
            # One context for every pool: building one reads the CA bundle (milliseconds).
            verify = lib.create_ssl_context(verify=verify, cert=cert, trust_env=options["trust_env"])
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
            pool = self._pools[origin] = self.lib.AsyncHTTPTransport(**self._options)
        return parsed, pool

    def idle_connections(self) -> dict[str, int]:
        """Per origin, its pool's idle connections (for tests and benchmarks)."""
        out = {}
        for (scheme, host, port), pool in self._pools.items():
            conns = getattr(getattr(pool, "_pool", None), "connections", [])
            out[f"{scheme}://{host}:{port}"] = sum(1 for c in conns if c.is_idle())
        return out

    async def open(
        self,
        method: str,
        url: str,
        headers: list[tuple[str, str]],
        content: bytes | None,
        *,
        connect_s: float,
        read_s: float,
    ) -> UpstreamResponse:
        lib = self.lib
        timeout = {"connect": connect_s, "read": read_s, "write": read_s, "pool": connect_s}
        try:
            parsed, pool = self._pool(url)
            req = lib.Request(method, parsed, headers=headers, content=content, extensions={"timeout": timeout})
            resp = await pool.handle_async_request(req)
        except Exception as exc:
            raise translate(lib, exc) from exc
        return UpstreamResponse(lib, resp)

    async def aclose(self) -> None:
        self._closed = True
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            with anyio.CancelScope(shield=True):
                await pool.aclose()
