"""The thread driver: a :class:`~.race.Race` for a sync request over blocking I/O.

The third driver beside :mod:`.driver`'s two, for a sync request that may hedge. It
carries out the same race's actions (no decision is made here) and costs nothing
extra until a second attempt really starts:

* the primary runs **on the caller's thread**, like :func:`.driver.run_direct`, under
  an :class:`~llm_multicloud.upstream.Interrupt` whose timer is the race's next hedge
  time: its socket reads wait at most until then. If the primary answers first (the
  usual case) no other thread ever exists;
* when the timer comes, the race is told (``on_timer``) in the middle of that read,
  on the caller's thread; a hedge it starts runs on a **new worker thread** (one per
  concurrent attempt, daemon, gone when its attempt ends), and the primary's read
  goes on;
* whichever thread sees an event — its attempt ready or failed, the timer — feeds it
  to the race under the race's lock and carries out the actions itself: a thread
  that is free runs the next attempt it starts (a retry after a failure), others go
  to new workers; a **loser is cancelled** by the thread that ended the race: its
  socket is shut down (a blocked read returns at once) and it is accounted as
  cancelled right then (``race.closed``: never blamed; its thread only closes its
  connection and discards what it got); the terminal action wakes the caller;
* while every attempt runs on workers, the caller's thread waits on a condition
  until the next event or ``race.wake_at()`` (a hedge time or the deadline).

The winner is handed to the caller's thread: a stream continues there (its
connection may have been opened by a worker; the sync pools are not bound to a
thread). Every attempt's own deadlines are its own (``first_token_s``...); the
race's deadline is the caller's wait. Budgets and the ledger are only touched by the
race, under its lock: each fact is counted once.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from ..errors import FaultKind
from ..upstream import Cancelled, Interrupt, Interruptible, drive
from ..vocabulary import ErrorType
from .attempt import Attempt
from .driver import _terminal
from .race import Action, Cancel, Commit, Fail, Race, Start

#: the attempt's I/O (a coroutine: a worker thread drives its own to its end)
AttemptIO = Callable[[Attempt], Coroutine[Any, Any, None]]

_count_lock = threading.Lock()
_count = 0


def threads_started() -> int:
    """How many attempt threads this process has started, ever (for tests and
    benchmarks: a race in which no hedge fires starts none)."""
    return _count


async def run_threads(race: Race, io: AttemptIO, clock: Callable[[], float]) -> Attempt:
    """Drive ``race`` on this (the caller's) thread, with a worker thread for each
    attempt that starts while another one runs (see the module docs)."""
    return await _Threads(race, io, clock).run()


class _Threads:
    __slots__ = ("_clock", "_cond", "_hooks", "_inline", "_io", "_race", "_terminal")

    def __init__(self, race: Race, io: AttemptIO, clock: Callable[[], float]) -> None:
        self._race = race
        self._io = io
        self._clock = clock
        #: the race's lock: every event and action of this race happens under it
        self._cond = threading.Condition(threading.Lock())
        #: the Interrupt of every attempt still running
        self._hooks: dict[Attempt, Interrupt] = {}
        #: the Interrupt of the attempt on the caller's thread (its timer: the next hedge)
        self._inline: Interrupt | None = None
        self._terminal: Commit | Fail | None = None

    async def run(self) -> Attempt:
        race, cond = self._race, self._cond
        try:
            with cond:
                mine = self._apply(race.begin(), free=True)
            while True:
                if mine is not None:
                    await self._here(mine)
                    with cond:
                        mine = self._ended(mine, free=True)
                    continue
                with cond:
                    while self._terminal is None:
                        left = race.wake_at() - self._clock()
                        if left <= 0:
                            mine = self._apply(race.on_timer(), free=True)
                            if mine is not None:
                                break
                        else:
                            cond.wait(left)
                if mine is None:
                    break
        except BaseException:
            with cond:
                self._apply(race.abort(), free=False)
            raise
        return _terminal(self._terminal)

    async def _here(self, a: Attempt) -> None:
        """Run ``a`` on the caller's thread; the race's hedge timer runs in its reads."""
        h = self._hooks[a]
        h.on_timer = self._timer
        with self._cond:
            h.at = self._race.next_hedge
            self._inline = h
        try:
            with Interruptible(h):
                await self._io(a)
        except Cancelled:
            pass
        finally:
            with self._cond:
                self._inline = None
        if h.cancelled:
            await a.close()  # it was accounted by whoever cancelled it

    def _timer(self) -> None:
        """The hedge timer, on the caller's thread in the middle of an attempt's read."""
        with self._cond:
            if self._terminal is None:
                self._apply(self._race.on_timer(), free=False)

    def _worker(self, a: Attempt | None) -> None:
        """A worker thread: runs ``a``, then whatever the race starts for it next."""
        while a is not None:
            h = self._hooks[a]
            try:
                with Interruptible(h, fresh=True):
                    drive(self._io(a))
            except Cancelled:
                pass
            except BaseException as exc:  # a bug of ours: never the endpoint's fault
                a.fail(FaultKind.LOCAL, f"the attempt's thread failed: {exc!r}", ErrorType.LOCAL)
            if h.cancelled:
                drive(a.close())
            with self._cond:
                a = self._ended(a, free=True)

    # -- under the lock ---------------------------------------------------------------
    def _ended(self, a: Attempt, *, free: bool) -> Attempt | None:
        """``a``'s I/O is over: the race hears of it, unless it was cancelled (then it
        was accounted already). Returns the attempt this (free) thread runs next."""
        if self._hooks.pop(a).cancelled:
            return None
        return self._apply(self._race.on_done(a), free=free)

    def _apply(self, actions: Sequence[Action], *, free: bool) -> Attempt | None:
        """Carry out the race's actions; the first attempt started is this thread's
        to run when it is ``free``, any other goes to a new worker."""
        mine: Attempt | None = None
        for act in actions:
            if isinstance(act, Start):
                a = act.attempt
                self._hooks[a] = Interrupt()
                if free and mine is None:
                    mine = a
                else:
                    self._spawn(a)
            elif isinstance(act, Cancel):
                for a in act.attempts:
                    h = self._hooks.get(a)
                    if h is not None:
                        h.cancel()  # its blocked read returns; its own thread closes it
                    else:
                        drive(a.close())  # its I/O is over (a winner given up by abort)
                    self._race.closed(a)
            else:
                self._terminal = act
        if self._inline is not None:
            self._inline.at = self._race.next_hedge
        self._cond.notify_all()
        return mine

    def _spawn(self, a: Attempt) -> None:
        global _count
        with _count_lock:
            _count += 1
        ctx = contextvars.copy_context()  # the caller's context (telemetry), deadlines reset
        t = threading.Thread(target=ctx.run, args=(self._worker, a), name="llm-multicloud attempt", daemon=True)
        t.start()
