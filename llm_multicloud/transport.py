"""Transports: where the ``openai`` SDK's HTTP requests enter the routing engine.

Routing sits at the HTTP layer, so every API of the SDK works unchanged (typed
objects, streaming, ``with_raw_response``, embeddings, models) and any SDK built on
httpx or httpx2 can use it. The transports are thin: parse the request into an
:class:`~llm_multicloud.intent.Intent`, hand it to the one async executor, and turn
its :class:`~llm_multicloud.executor.Result` into a response object of the
caller's HTTP library.

* The **async** transport awaits the executor in the caller's event loop.
* The **sync** transport runs the *same* coroutine on the caller's thread, over
  the sync HTTP library (:class:`~llm_multicloud.upstream.SyncUpstream`, whose I/O
  blocks and never suspends: :func:`~llm_multicloud.upstream.drive` completes it in
  one step), and reads a committed stream chunk by chunk the same way. No thread
  hop, no event loop; a hedge that fires runs its attempt on a worker thread
  (:mod:`~llm_multicloud.engine.threads`). Only a request whose endpoints have a
  credential of the caller's own that may suspend (``Executor.needs_loop``,
  decided before it starts) is driven through the MultiCloud's background event
  loop thread instead, its stream pumped from there.
  There is no second, synchronous implementation to drift.

The transports see the composition root only as a
:class:`~llm_multicloud.runtime.TransportRuntime` (the engine's entry point, the
background loop, the stream registry, close), never as a ``MultiCloud``.

httpx and httpx2 differ only in module name for everything used here, so the
library-specific classes are made once per module by :func:`transport_classes`.
Routing errors become real HTTP error responses (``x-should-retry: false``), so
the SDK raises its own exception types; a missed overall deadline becomes the
library's ``ReadTimeout``, which the SDK reports as ``APITimeoutError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any

from . import intent as intent_mod
from .errors import DeadlineExceeded, RoutingError
from .executor import Result
from .stream import Passthrough
from .upstream import SyncUpstream, Upstream, drive

if TYPE_CHECKING:
    from .runtime import TransportRuntime


def _api_path(raw_path: str) -> str:
    """``/v1/chat/completions`` → ``chat/completions`` (the wrapped client's base URL
    is ``http://llm-multicloud.invalid/v1``; other SDKs may or may not use ``/v1``)."""
    p = raw_path.lstrip("/")
    return p[3:] if p.startswith("v1/") else p


def _deadline(request: Any) -> float | None:
    """The request's overall deadline: its read timeout, else the largest one it has."""
    ext = getattr(request, "extensions", None)
    t = ext.get("timeout") if ext is not None else None
    if not isinstance(t, dict):
        return None
    read = t.get("read")
    if read is not None:
        return float(read)
    vals = [v for v in (t.get("connect"), t.get("write"), t.get("pool")) if v is not None]
    return max(vals) if vals else None


class _Core:
    """What the sync and async transports share: request → intent, result → response."""

    def __init__(self, mc: TransportRuntime, lib: ModuleType, owns: bool) -> None:
        self.mc = mc
        self.lib = lib
        self.owns = owns

    def prepare(self, request: Any, body: bytes) -> tuple[intent_mod.Intent | None, Any]:
        """The intent, or a ready response (local answers and errors)."""
        url = request.url
        try:
            it = intent_mod.parse(
                request.method,
                _api_path(url.path),
                url.query.decode() if isinstance(url.query, bytes) else str(url.query or ""),
                list(request.headers.multi_items()),
                body,
                _deadline(request),
            )
        except RoutingError as err:
            return None, self.error(err, request)
        if it.method == "GET" and (it.path == "models" or it.path.startswith("models/")):
            return None, self.models(it.path, request)
        return it, None

    def models(self, path: str, request: Any) -> Any:
        """``models.list()`` / ``models.retrieve()``: answered from the catalog. The
        logical models are what callers name, whatever each endpoint calls them."""
        cat = self.mc.catalog

        def entry(m: str) -> dict[str, Any]:
            return {"id": m, "object": "model", "created": 0, "owned_by": "llm-multicloud"}

        if path == "models":
            payload: dict[str, Any] = {"object": "list", "data": [entry(m) for m in sorted(cat.models)]}
        else:
            name = path[len("models/") :]
            if name not in cat.models:
                return self.error(
                    RoutingError(
                        404,
                        "model_not_found",
                        f"unknown model {name!r}; this catalog serves: {', '.join(sorted(cat.models))}",
                    ),
                    request,
                )
            payload = entry(name)
        return self.lib.Response(
            200, headers=[("content-type", "application/json")], content=json.dumps(payload).encode(), request=request
        )

    def error(self, err: RoutingError, request: Any) -> Any:
        return self.lib.Response(err.status, headers=err.headers(), content=err.body(), request=request)

    async def run(self, it: intent_mod.Intent, upstream: Upstream, request: Any) -> Result:
        """Execute, with routing errors as HTTP error results (the SDK raises its own
        exception types for them) and a missed deadline as the library's ReadTimeout
        (``openai.APITimeoutError``). The one place both transports translate."""
        try:
            return await self.mc.execute(it, upstream)
        except RoutingError as err:
            return Result(err.status, [(k.decode(), v.decode()) for k, v in err.headers()], err.body(), None)
        except DeadlineExceeded as exc:
            raise self.lib.ReadTimeout(str(exc), request=request) from None

    def response(self, result: Result, request: Any, stream: Any) -> Any:
        if result.stream is None:
            return self.lib.Response(result.status, headers=result.headers, content=result.body or b"", request=request)
        return self.lib.Response(result.status, headers=result.headers, stream=stream, request=request)


class _Janitor:
    """Closes the async streams still open when their event loop shuts down.

    ``asyncio.run()`` ends by cancelling every task, *then* closing every async
    generator at once. A stream the caller left half read holds the HTTP library's
    nested generators; closed all at once they report "aclose(): asynchronous
    generator is already running" (the plain openai client prints it too). This task
    exists only while a stream of this loop is open: cancelled with the others, it
    closes those streams in order first, so nothing is left for that step.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.streams: set[Any] = set()
        self._idle = asyncio.Event()
        self.task = loop.create_task(self._run(), name="llm-multicloud stream janitor")

    async def _run(self) -> None:
        try:
            await self._idle.wait()
        except asyncio.CancelledError:  # the loop is shutting down (or the task was cancelled)
            for s in list(self.streams):
                with contextlib.suppress(Exception):
                    await s.aclose()
            raise

    def add(self, stream: Any) -> None:
        self.streams.add(stream)

    def discard(self, stream: Any) -> None:
        self.streams.discard(stream)
        if not self.streams:
            self._idle.set()  # nothing open: the task ends (never left pending)


_janitors: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Janitor] = weakref.WeakKeyDictionary()


def _janitor() -> _Janitor | None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # not asyncio: its own shutdown is orderly
        return None
    j = _janitors.get(loop)
    if j is None or j._idle.is_set():
        j = _janitors[loop] = _Janitor(loop)
    return j


class _NotAsyncio:
    """The key of the one connection pool of an async client on a non-asyncio loop."""


_NOT_ASYNCIO = _NotAsyncio()


@functools.cache
def transport_classes(lib: ModuleType) -> tuple[type[Any], type[Any]]:
    """The (sync, async) transport classes for one HTTP library module."""

    class SyncStream(lib.SyncByteStream):  # type: ignore[misc,name-defined]
        """A committed stream for a sync client. A pump task in the background loop
        reads ahead into a thread-safe queue, so the caller's thread takes chunks
        without a thread hop per chunk. The pump ends with the stream (it is bounded
        by the answer's length) or when the caller closes it. Only for requests
        that ran on the loop (:meth:`MultiCloud.needs_loop`)."""

        #: closed by the background loop's shutdown (MultiCloud.close)
        loop_bound = True

        def __init__(self, mc: TransportRuntime, pt: Passthrough) -> None:
            self._mc = mc
            self._pt = pt
            self._closed = False
            self._queue: queue.SimpleQueue[bytes | BaseException | None] = queue.SimpleQueue()
            self._pump: asyncio.Task[None] | None = None
            # Closed by MultiCloud.close() (and so at interpreter exit) if nobody
            # reads it to the end or closes it: its connection never dangles.
            mc.streams.add(self)

        async def _start(self) -> None:
            self._pump = asyncio.get_running_loop().create_task(self._run())

        async def _run(self) -> None:
            q = self._queue
            try:
                while True:
                    chunk = await self._pt.next_chunk()
                    q.put(chunk)
                    if chunk is None:
                        return
            except Exception as exc:  # StreamInterrupted & co: raised in the caller's thread
                q.put(exc)
            except asyncio.CancelledError:
                # Closed by the caller, or the MultiCloud shut down: never leave a
                # consumer blocked on the queue.
                q.put(RuntimeError("the stream was closed before its end"))
                raise

        async def _stop(self) -> None:
            self._closed = True
            self._mc.streams.discard(self)
            pump = self._pump
            if pump is not None and not pump.done():
                pump.cancel()
                with contextlib.suppress(BaseException):
                    await pump
            await self._pt.aclose()

        def __iter__(self) -> Iterator[bytes]:
            if self._pump is None:
                self._mc.run_sync(self._start)
            get = self._queue.get
            while True:
                item = get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item

        def close(self) -> None:
            if self._closed:
                return
            self._closed = True
            mc = self._mc
            bg = mc.background
            if bg is None or not bg.alive:
                return  # the MultiCloud closed: its shutdown closed this stream
            if bg.in_loop_thread():
                # Finalised by the garbage collector on the loop's own thread (an
                # abandoned stream): waiting here would wait for this very thread and
                # freeze the MultiCloud. Schedule the close instead.
                bg.call_soon(lambda: bg.loop.create_task(self._stop()))
                return
            with contextlib.suppress(RuntimeError):  # closed concurrently: nothing to do
                mc.run_sync(self._stop)

    class DirectStream(lib.SyncByteStream):  # type: ignore[misc,name-defined]
        """A committed stream of a request that ran on the caller's thread: each
        chunk is read there (``drive(pt.next_chunk())``, blocking I/O), no task, no
        queue, no loop. Closed by the caller, by the SDK, by the garbage collector
        on any thread, or by :meth:`MultiCloud.close` (and so at exit)."""

        loop_bound = False

        def __init__(self, mc: TransportRuntime, pt: Passthrough) -> None:
            self._mc = mc
            self._pt = pt
            self._closed = False
            mc.streams.add(self)

        def __iter__(self) -> Iterator[bytes]:
            pt = self._pt
            while True:
                chunk = drive(pt.next_chunk())
                if chunk is None:
                    self._mc.streams.discard(self)
                    return
                yield chunk

        async def _stop(self) -> None:  # MultiCloud's shutdown (blocking I/O: returns at once)
            self.close()

        def close(self) -> None:
            if self._closed:
                return
            self._closed = True
            self._mc.streams.discard(self)
            drive(self._pt.aclose())

    class AsyncStream(lib.AsyncByteStream):  # type: ignore[misc,name-defined]
        # An iterator object rather than an async generator: the HTTP library may
        # leave the iteration without closing it, and an async generator would then
        # be finalised later by the event loop instead of now.
        def __init__(self, pt: Passthrough) -> None:
            self._pt = pt
            self._janitor = _janitor()
            if self._janitor is not None:
                self._janitor.add(self)

        def __aiter__(self) -> AsyncIterator[bytes]:
            return self

        async def __anext__(self) -> bytes:
            chunk = await self._pt.next_chunk()
            if chunk is None:
                raise StopAsyncIteration
            return chunk

        async def aclose(self) -> None:
            j, self._janitor = self._janitor, None
            try:
                await self._pt.aclose()
            finally:
                if j is not None:
                    j.discard(self)

    class SyncTransport(lib.BaseTransport):  # type: ignore[misc,name-defined]
        """Routes a sync client's requests (see the module docs)."""

        def __init__(self, mc: TransportRuntime, *, owns: bool = False) -> None:
            self._core = _Core(mc, lib, owns)
            #: async pools on the background loop (requests that need concurrency)
            self._upstream: Upstream | None = None
            #: sync pools, used on the callers' threads (every other request)
            self._direct: SyncUpstream | None = None
            self._lock = threading.Lock()

        @property
        def multicloud(self) -> TransportRuntime:
            return self._core.mc

        async def _run(self, it: intent_mod.Intent, request: Any) -> Result:
            if self._upstream is None:  # created in the portal's loop, where it is used
                self._upstream = self._core.mc.upstream(lib)
            return await self._core.run(it, self._upstream, request)

        def _sync_upstream(self) -> SyncUpstream:
            up = self._direct
            if up is None:
                with self._lock:
                    up = self._direct
                    if up is None:
                        up = self._direct = SyncUpstream(lib, **self._core.mc.http_options)
            return up

        def handle_request(self, request: Any) -> Any:
            core = self._core
            it, ready = core.prepare(request, request.read())
            if it is None:
                return ready
            mc = core.mc
            if mc.needs_loop(it):
                result = mc.run_sync(self._run, it, request)
                pt = result.stream
                return core.response(result, request, SyncStream(mc, pt) if pt is not None else None)
            mc.started()  # background work (probes, refresh) starts lazily; refused once closed
            result = drive(core.run(it, self._sync_upstream(), request))
            pt = result.stream
            return core.response(result, request, DirectStream(mc, pt) if pt is not None else None)

        def close(self) -> None:
            mc = self._core.mc
            direct, self._direct = self._direct, None
            if direct is not None:
                direct.close()
            up, self._upstream = self._upstream, None
            bg = mc.background
            if up is not None and bg is not None and bg.alive:
                if bg.in_loop_thread():
                    bg.call_soon(lambda: bg.loop.create_task(up.aclose()))
                else:
                    with contextlib.suppress(RuntimeError):
                        mc.run_sync(up.aclose)
            if self._core.owns:
                mc.close()

    class AsyncTransport(lib.AsyncBaseTransport):  # type: ignore[misc,name-defined]
        """Routes an async client's requests in the caller's event loop."""

        def __init__(self, mc: TransportRuntime, *, owns: bool = False) -> None:
            self._core = _Core(mc, lib, owns)
            # One connection pool per event loop: a pool belongs to the loop that
            # opened its connections. An async client used from several asyncio.run()
            # calls, or from loops in several threads, gets a pool on each (the plain
            # client fails there with "Event loop is closed").
            self._last: tuple[Any, Upstream | None] = (None, None)  # (loop, its pool): read at once
            #: one upstream for every loop, when set (benchmarks stub the network with it)
            self._upstream: Upstream | None = None
            self._upstreams: weakref.WeakKeyDictionary[Any, Upstream] = weakref.WeakKeyDictionary()
            self._lock = threading.Lock()

        @property
        def multicloud(self) -> TransportRuntime:
            return self._core.mc

        def _upstream_here(self) -> Upstream:
            if self._upstream is not None:
                return self._upstream
            try:
                loop: Any = asyncio.get_running_loop()
            except RuntimeError:  # not asyncio (trio): one loop per run, keyed by the backend
                loop = _NOT_ASYNCIO
            last_loop, last = self._last
            if loop is last_loop and last is not None:
                return last  # the hot path: the same loop as last time
            with self._lock:
                up = self._upstreams.get(loop)
                if up is None:
                    for old in [k for k in self._upstreams if k is not _NOT_ASYNCIO and k.is_closed()]:
                        # A finished asyncio.run(): its connections died with their loop.
                        del self._upstreams[old]
                    up = self._upstreams[loop] = self._core.mc.upstream(lib)
                self._last = (loop, up)
            return up

        async def handle_async_request(self, request: Any) -> Any:
            core = self._core
            it, ready = core.prepare(request, await request.aread())
            if it is None:
                return ready
            upstream = self._upstream_here()
            core.mc.started()
            result = await core.run(it, upstream, request)
            pt = result.stream
            return core.response(result, request, AsyncStream(pt) if pt is not None else None)

        async def aclose(self) -> None:
            # The pool of this loop is closed here; pools of other loops that are
            # still running are left to them (they cannot be closed from this one).
            up = None
            with self._lock:
                try:
                    loop: Any = asyncio.get_running_loop()
                except RuntimeError:
                    loop = _NOT_ASYNCIO
                up = self._upstreams.pop(loop, None)
                if self._last[0] is loop:
                    self._last = (None, None)
            if up is not None:
                await up.aclose()
            if self._core.owns:
                await self._core.mc.aclose()

    return SyncTransport, AsyncTransport
