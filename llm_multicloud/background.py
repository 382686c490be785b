"""The background event loop of a :class:`~llm_multicloud.MultiCloud`, and why a
process that uses the library always exits.

Sync requests whose credentials may suspend run on this loop — every other sync
request, hedges included, runs on its caller's thread — and the probes, credential
refresh and the shared-state task run on it. It is a plain asyncio loop on a **daemon** thread,
not anyio's ``start_blocking_portal()``: the portal's thread is a non-daemon
``ThreadPoolExecutor`` worker, which the interpreter joins at exit *before* any
``atexit`` hook can stop it — a ``MultiCloud`` that was never closed hung the
process at exit, for ever.

The lifecycle, in one place:

* **start**: on first use (a sync request, probes, shared state); the thread
  runs ``loop.run_forever()``.
* **stop** (``MultiCloud.close()``, or the ``atexit`` hook for every background
  loop still running when the interpreter exits): the tasks still running on the
  loop (probes, shared state, pumps of sync streams nobody finished) are
  cancelled and awaited, so their ``finally`` blocks close their connections;
  async generators are finalised; the loop is closed. Nothing prints: a task that
  ended with an exception has it retrieved (and logged at debug level).
* **never wait on the loop from the loop**: :meth:`run` refuses to be called from
  the loop's own thread (it would wait for itself for ever); code that may run
  there (a stream finalised by the garbage collector on that thread) uses
  :meth:`in_loop_thread` and schedules instead of waiting.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import logging
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

log = logging.getLogger("llm_multicloud.background")

T = TypeVar("T")

#: How long stopping waits for cancelled tasks to finish their clean-up.
STOP_TIMEOUT_S = 5.0

_running: weakref.WeakSet[Background] = weakref.WeakSet()


class LoopThreadError(RuntimeError):
    """A blocking call into the background loop was made from that loop's own thread."""


class Background:
    """One event loop on one daemon thread (see the module docs)."""

    def __init__(self, name: str = "llm-multicloud") -> None:
        self.loop = asyncio.new_event_loop()
        self._stopping = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._done = threading.Event()
        #: Run on the loop first when stopping (the MultiCloud ends its probes and
        #: closes unfinished streams in order, before the loop cancels the rest).
        self.on_stop: Callable[[], Awaitable[None]] | None = None
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()
        _running.add(self)

    # -- the thread -------------------------------------------------------------------
    def _main(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            loop.run_until_complete(self._drain())
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception:  # pragma: no cover - defensive: the thread must end quietly
            log.debug("background loop shutdown failed", exc_info=True)
        finally:
            loop.close()
            self._done.set()

    async def _drain(self) -> None:
        """Cancel what is still running and let it clean up (bounded)."""
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                log.debug("background task %r ended with %r", t, t.exception())

    # -- from any thread ------------------------------------------------------------------
    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self.thread

    @property
    def alive(self) -> bool:
        return not self._stopping and not self._done.is_set()

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the loop and wait for its result (the caller's context
        is copied into the task). Refused on the loop's own thread."""
        if self.in_loop_thread():
            raise LoopThreadError(
                "llm_multicloud: a blocking call into the MultiCloud's background event loop was made from "
                "that loop's own thread (it would wait for itself for ever); call it from another thread, "
                "or await the coroutine directly"
            )
        if not self.alive:
            raise RuntimeError("this MultiCloud is closed")
        fut: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(fn(*args), self.loop)  # type: ignore[arg-type]
        try:
            while True:
                try:
                    return fut.result(timeout=1.0)
                except TimeoutError:
                    if fut.done():
                        return fut.result()  # done meanwhile, or itself raised TimeoutError
                    if self._done.is_set() or not self.thread.is_alive():
                        # The loop stopped under us (close() or interpreter exit from
                        # another thread; or this is a forked child, where the loop's
                        # thread does not exist): never wait for a loop that is gone.
                        raise RuntimeError(
                            "this MultiCloud's background loop is not running: it was closed while the "
                            "request ran, or this is a forked child process (create MultiCloud objects "
                            "after forking)"
                        ) from None
        except BaseException:
            fut.cancel()
            raise

    def start_task(self, fn: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Start ``fn()`` as a task on the loop (fire and forget; cancelled at stop)."""

        def start() -> None:
            task = self.loop.create_task(fn())
            self._tasks.add(task)
            task.add_done_callback(self._forget)

        self.call_soon(start)

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # Between the main thread's end and the atexit hook that stops this loop,
            # the interpreter refuses new threads ("can't register atexit after
            # shutdown"): a task failing then is the exit, not a fault to report.
            exiting = not threading.main_thread().is_alive() or getattr(threading, "_SHUTTING_DOWN", False)
            (log.debug if exiting else log.warning)("background task failed: %r", task.exception())

    def call_soon(self, fn: Callable[[], Any]) -> None:
        """Schedule ``fn()`` on the loop without waiting (safe from any thread, also
        from the loop's own; a no-op once the loop is closed)."""
        with contextlib.suppress(RuntimeError):  # closed: nothing left to do there
            self.loop.call_soon_threadsafe(fn)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop the loop (tasks cancelled and cleaned up) and, unless called from the
        loop's own thread, wait for the thread to end. Idempotent."""
        _running.discard(self)
        hook, self.on_stop = self.on_stop, None
        if hook is not None and not self._stopping and not self.in_loop_thread():
            try:
                self.run(hook)
            except Exception:  # best effort: what it did not close, the drain cancels
                log.debug("background on_stop hook failed", exc_info=True)
        if not self._stopping:
            self._stopping = True
            self.call_soon(self.loop.stop)
        if not self.in_loop_thread():
            self.thread.join(timeout)


@atexit.register
def _stop_all() -> None:
    """At interpreter exit, stop every background loop still running (a MultiCloud
    nobody closed): its connections are closed, nothing is left for finalisation.
    ``atexit`` hooks run while daemon threads still run, after non-daemon ones ended."""
    for bg in list(_running):
        bg.stop()
