"""The race: every decision between a plan and one winning attempt, with no I/O.

A sans-I/O state machine in the style of h11 (``h11/_state.py``: every transition
in one place, driven by events, no sockets) and httpx's auth flows: a driver feeds
it **events** and carries out the **actions** it returns. The same decisions serve
any I/O layer — the async driver of :mod:`.driver` today, a sync one on the
caller's thread tomorrow — and a unit test drives it with a fake clock alone.

Events (methods): :meth:`Race.begin`; :meth:`Race.on_done` (an attempt is ready
or failed); :meth:`Race.on_timer` (the clock reached :meth:`Race.wake_at`: a hedge
delay or the deadline); :meth:`Race.abort` (the caller went away).

Actions (returned lists): :class:`Start` an attempt (its kind and admitted target
are in the attempt); :class:`Cancel` losers (close their connections, then report
each with :meth:`Race.closed`); and exactly one terminal action, :class:`Commit`
the winner or :class:`Fail` with the error the executor handles.

Decisions, in order of precedence on each event:

* a ready attempt wins — as does a request fault (400/404/413/422) handed back as is,
  unless it is a 404 for a served name the endpoint never listed (the catalog's
  fault: it fails over, with no penalty);
* a local fault (this process) fails the request at once: every endpoint would fail
  the same way;
* an attempt that timed out at the caller's deadline, or the timer at the deadline,
  ends the race: a deadline error (the caller's, not the endpoint's fault), unless
  attempts failed;
* otherwise a failure is reported to the ledger (blame, accounting) and a retry
  starts where :class:`~.retry.RetryPolicy` says, within its budget;
* the hedge timer starts a hedge where :class:`~.hedge.HedgePolicy` says, within its
  budget; the next hedge timer is armed from the newest attempt.

A budget token is withdrawn only once a target has been placed; a placement
whose token is refused is given back (:mod:`.placement`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import DeadlineExceeded, FaultKind, RoutingError
from ..vocabulary import AttemptKind, AttemptOutcome, ErrorType
from .attempt import Attempt

if TYPE_CHECKING:
    from ..budget import Budget
    from ..health import Health
    from ..router import Candidate, Plan
    from .hedge import HedgePolicy
    from .ledger import Ledger
    from .placement import Placement
    from .retry import RetryPolicy


class AllFailed(Exception):
    """Every attempt of one race failed (the executor decides what follows)."""

    def __init__(self, failures: list[Attempt], note: str | None, *, starved: bool = False) -> None:
        super().__init__(f"{len(failures)} attempts failed")
        self.failures = failures
        self.note = note
        #: nothing could even start: every candidate's capacity was taken since the plan
        self.starved = starved


BUDGET_NOTE = "retry budget exhausted (a wide outage must not multiply load)"


@dataclass(frozen=True, slots=True)
class Start:
    """Send this attempt (admitted, counted in the ledger) and report it with on_done."""

    attempt: Attempt


@dataclass(frozen=True, slots=True)
class Cancel:
    """Stop these attempts and close their responses, then report each with closed()."""

    attempts: tuple[Attempt, ...]


@dataclass(frozen=True, slots=True)
class Commit:
    """The race is over: this attempt's answer goes to the caller."""

    winner: Attempt


@dataclass(frozen=True, slots=True)
class Fail:
    """The race is over without a winner: raise this."""

    error: Exception


Action = Start | Cancel | Commit | Fail


class Race:
    """The decisions of one race over one plan (see the module docs)."""

    __slots__ = (
        "_budget_refused",
        "_clock",
        "_event_bytes",
        "_health",
        "_hedge",
        "_hedging",
        "_ledger",
        "_model",
        "_placement",
        "_plan",
        "_retries_left",
        "_retry",
        "_tried",
        "deadline",
        "failures",
        "finished",
        "in_flight",
        "next_hedge",
        "winner",
    )

    def __init__(
        self,
        plan: Plan,
        ledger: Ledger,
        *,
        hedge: HedgePolicy,
        retry: RetryPolicy,
        placement: Placement,
        health: Health,
        deadline: float,
        attempts_left: int,
        clock: Callable[[], float],
        hedging: bool = True,
        event_bytes: int = 1 << 20,
    ) -> None:
        self._plan = plan
        self._ledger = ledger
        self._hedge = hedge
        self._retry = retry
        self._placement = placement
        self._health = health
        self._clock = clock
        self._event_bytes = event_bytes
        self._model = ledger.intent.model
        #: False: the driver cannot run two attempts at once, so no hedge timer is armed
        self._hedging = hedging
        self._retries_left = attempts_left - 1
        self._tried: set[int] = set()
        self._budget_refused = False
        self.deadline = deadline
        self.in_flight: list[Attempt] = []
        self.failures: list[Attempt] = []
        self.next_hedge = math.inf
        self.winner: Attempt | None = None
        self.finished = False

    def wake_at(self) -> float:
        """When the driver must call :meth:`on_timer` if no attempt reports first."""
        return min(self.next_hedge, self.deadline)

    # -- events -----------------------------------------------------------------------
    def begin(self) -> list[Action]:
        first = self._launch(AttemptKind.PRIMARY)
        if first is None:
            return self._lost()
        self._arm(first)
        return [Start(first)]

    def on_done(self, a: Attempt) -> list[Action]:
        """An attempt is ready (``a.fault is None``) or failed."""
        if a.fault is None or (a.fault is FaultKind.REQUEST and not self._name_refused(a)):
            self.in_flight.remove(a)
            return self._won(a)
        if a.error_kind == ErrorType.TIMEOUT and self._clock() >= self.deadline:
            return self.on_timer()  # cut short by the caller's deadline: not the endpoint's failure
        self.in_flight.remove(a)
        if a.fault is FaultKind.LOCAL:
            # Every endpoint would fail the same way: no penalty, no failover, and the
            # caller hears about it at once.
            self._ledger.finish(a, AttemptOutcome.LOCAL_ERROR)
            return self._end(Fail(RoutingError(500, "local_error", a.reason or "local error")))
        self.failures.append(a)
        self._ledger.failed(a)
        out: list[Action] = []
        if self._retry.allowed(self._retries_left, self._clock(), self.deadline):
            r = self._launch(AttemptKind.RETRY, last=a)
            if r is not None:
                self._retries_left -= 1
                out.append(Start(r))
                if self.next_hedge == math.inf and len(self.in_flight) == 1:
                    self._arm(r)
        if not self.in_flight:
            return out + self._lost()
        return out

    def on_timer(self) -> list[Action]:
        """The clock reached :meth:`wake_at`: the deadline, or a hedge delay."""
        if self._clock() >= self.deadline:
            return self._lost()
        self.next_hedge = math.inf
        if not self._hedge.allowed(self._plan, len(self.in_flight)):
            return []
        h = self._launch(AttemptKind.HEDGE)
        if h is None:
            return []
        self._arm(h)
        return [Start(h)]

    def abort(self) -> list[Action]:
        """The caller went away (or the driver broke): nothing wins; cancel everyone."""
        if self.winner is not None:
            self.in_flight.append(self.winner)
            self.winner = None
        self.finished = True
        losers, self.in_flight = tuple(self.in_flight), []
        return [Cancel(losers)] if losers else []

    def closed(self, a: Attempt) -> None:
        """A cancelled attempt's response is closed: account it."""
        self._ledger.cancelled(a)

    # -- decisions --------------------------------------------------------------------
    def _won(self, a: Attempt) -> list[Action]:
        self.winner = a
        return self._end(Commit(a))

    def _lost(self) -> list[Action]:
        """No winner: the deadline, or every attempt failed (or none could start)."""
        ledger = self._ledger
        if ledger.attempts and self._clock() >= self.deadline and not self.failures:
            err: Exception = DeadlineExceeded(
                f"no endpoint answered within the deadline ({self.deadline - ledger.t0:.1f}s)"
            )
        else:
            starved = not self._tried and self._placement.refused > 0
            err = AllFailed(self.failures, BUDGET_NOTE if self._budget_refused else None, starved=starved)
        return self._end(Fail(err))

    def _end(self, terminal: Commit | Fail) -> list[Action]:
        self.finished = True
        losers, self.in_flight = tuple(self.in_flight), []
        return [Cancel(losers), terminal] if losers else [terminal]

    def _arm(self, a: Attempt) -> None:
        if self._hedging:
            self.next_hedge = a.t0 + self._hedge.delay_ms(a.st, self._plan) / 1000.0

    def _pool(
        self, kind: AttemptKind, last: Attempt | None
    ) -> tuple[list[Candidate] | tuple[Candidate, ...], Budget | None]:
        untried = [c for c in self._plan.candidates if c.endpoint.index not in self._tried]
        if kind is AttemptKind.HEDGE:
            return self._hedge.targets(untried, (x.ep for x in self.in_flight)), self._hedge.budget
        if kind is AttemptKind.RETRY:
            return list(self._retry.targets(self._plan, untried, last is not None)), self._retry.budget
        return untried, None

    def _launch(self, kind: AttemptKind, last: Attempt | None = None) -> Attempt | None:
        """Admit a target for an attempt of ``kind`` and start it; a budget token is
        spent only when there is a target."""
        pool, budget = self._pool(kind, last)
        if not pool:
            return None
        if budget is not None and budget.balance() < 1.0:
            self._budget_refused |= kind is AttemptKind.RETRY
            return None
        got = self._placement.take(pool, self._clock())
        if got is None:
            return None
        if budget is not None and not budget.try_withdraw():
            self._placement.give_back(got)
            self._budget_refused |= kind is AttemptKind.RETRY
            return None
        a = Attempt(len(self._ledger.attempts) + 1, kind, got.state, got.breaker, self._clock(), self._event_bytes)
        a.reserved = got.reserved
        self._tried.add(got.candidate.endpoint.index)
        self._ledger.started(a)
        self.in_flight.append(a)
        return a

    def _name_refused(self, a: Attempt) -> bool:
        """A 404 for a served name the endpoint has never listed: not the caller's fault
        after all, but the catalog's (see ``Health.served_name_refused``). The attempt
        then fails over like an endpoint fault, with no penalty."""
        model = self._model
        if a.status != 404 or model is None or not self._health.served_name_refused(a.st, model):
            return False
        a.reason = f"HTTP 404 for {a.ep.models.get(model)!r}, a served name its /models has never listed"
        return True
