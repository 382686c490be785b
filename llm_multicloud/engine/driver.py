"""The drivers: carry out a :class:`~.race.Race`'s actions.

Two drivers over the same decisions (and a third, :mod:`.threads`, for a sync
request over blocking I/O that may hedge):

* :func:`run_direct` — when no hedge can happen (one candidate, hedging off, no
  hedge budget left): each attempt is awaited in the caller's own task, one after
  the other (failovers are sequential). No task group, memory stream or cancel
  scope is built: the deadline is the attempt's own (its timeouts never run past
  the request's). It uses nothing of anyio, only the upstream's I/O primitives
  (``shield``), so it also runs a sync client's request on the caller's thread
  (:class:`~llm_multicloud.upstream.SyncIO`, driven by ``upstream.drive``).
* :func:`run_racing` — when a hedge may start: anyio structured concurrency (one
  task group per race, Trio's nursery discipline) runs the attempts side by side;
  their results arrive on a memory stream; one ``move_on_after`` waits for the next
  result or the race's next timer. When the race ends, the task group's cancel scope
  stops the losers.

Both close every loser's response inside a shielded scope before they return or
raise — so the provider stops generating and no slot, task or connection outlives
the race — and report it to the race for accounting. The race always ends before
the winner is handed to the SDK: nothing is ever raced across a ``yield``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import anyio
import anyio.abc

from .attempt import Attempt
from .race import Action, Cancel, Commit, Fail, Race, Start

#: The attempt's I/O (:func:`.attempt.run` with its request bound).
AttemptIO = Callable[[Attempt], Awaitable[None]]
#: A scope that protects closing from cancellation (``io.shield``).
Shield = Callable[[], contextlib.AbstractContextManager[Any]]


def _anyio_shield() -> contextlib.AbstractContextManager[Any]:
    return anyio.CancelScope(shield=True)


async def run_direct(race: Race, io: AttemptIO, shield: Shield = _anyio_shield) -> Attempt:
    """Drive ``race`` with one attempt at a time, awaited in this task."""
    try:
        actions = race.begin()
        while True:
            current: Attempt | None = None
            for act in actions:
                if isinstance(act, Start):
                    current = act.attempt
                elif isinstance(act, Cancel):
                    await _close(race, act.attempts, shield)
                else:
                    return _terminal(act)
            assert current is not None, "a race that starts nothing must end"
            await io(current)
            actions = race.on_done(current)
    except BaseException:
        await _close(race, _cancelled(race.abort()), shield)
        raise


async def run_racing(race: Race, io: AttemptIO, clock: Callable[[], float]) -> Attempt:
    """Drive ``race`` with attempts side by side in one task group."""
    send, recv = anyio.create_memory_object_stream[Attempt](max_buffer_size=64)

    async def attempt_task(a: Attempt) -> None:
        await io(a)
        send.send_nowait(a)

    losers: list[Attempt] = []
    terminal: Commit | Fail | None = None
    try:
        async with anyio.create_task_group() as tg:
            actions = race.begin()
            while True:
                terminal = _start(tg, actions, attempt_task, losers)
                if terminal is not None:
                    break
                got: Attempt | None = None
                with anyio.move_on_after(max(race.wake_at() - clock(), 0.0)):
                    got = await recv.receive()
                actions = race.on_timer() if got is None else race.on_done(got)
            tg.cancel_scope.cancel()
    except BaseException:
        losers.extend(_cancelled(race.abort()))
        raise
    finally:
        send.close()
        recv.close()
        await _close(race, losers)
    return _terminal(terminal)


def _start(
    tg: anyio.abc.TaskGroup,
    actions: Sequence[Action],
    task: Callable[[Attempt], Coroutine[Any, Any, None]],
    losers: list[Attempt],
) -> Commit | Fail | None:
    """Start the attempts ``actions`` name; collect losers; the terminal action, if any."""
    for act in actions:
        if isinstance(act, Start):
            tg.start_soon(task, act.attempt)
        elif isinstance(act, Cancel):
            losers.extend(act.attempts)
        else:
            return act
    return None


def _terminal(act: Commit | Fail | None) -> Attempt:
    if isinstance(act, Commit):
        return act.winner
    assert act is not None
    raise act.error


def _cancelled(actions: Sequence[Action]) -> list[Attempt]:
    return [a for act in actions if isinstance(act, Cancel) for a in act.attempts]


async def _close(race: Race, attempts: Sequence[Attempt], shield: Shield = _anyio_shield) -> None:
    """Close losers' responses (shielded: this runs while being cancelled too) and account them."""
    if not attempts:
        return
    with shield():
        for a in attempts:
            await a.close()
            race.closed(a)
