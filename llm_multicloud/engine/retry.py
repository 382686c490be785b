"""The retry (failover) policy: whether a failed attempt is retried, and where.

After Finagle's ``RetryBudget`` and tower's ``retry::budget`` (``TpsBudget``:
every request deposits, every retry withdraws, a floor of retries per second; see
:mod:`llm_multicloud.budget`) and gRPC's retry throttling:

* **whether** — :meth:`RetryPolicy.allowed`: only before the commit point (the race
  asks only then), within ``policy.retry.max_attempts`` attempts per request and the
  caller's deadline; and within the **budget**: ``policy.retry.budget`` retries per
  request over ``window_s`` plus ``min_per_s``, so that during a wide outage retries
  add at most that share of load instead of multiplying it. The token is withdrawn
  only once a target has been admitted (:mod:`.race`): a retry that finds nobody to
  go to costs nothing.
* **where** — :meth:`RetryPolicy.targets`: the plan's next untried candidates, in the
  plan's order; a retry never returns to an endpoint already tried by this request,
  unless it is the one compliant endpoint there is (then retrying it is the only way
  to ride out a blip).

Replace it from code with ``MultiCloud(...).executor.retry = MyRetryPolicy(...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..budget import Budget
from ..vocabulary import ExclusionKind

if TYPE_CHECKING:
    from ..policy import RetryPolicy as RetrySettings
    from ..router import Candidate, Plan


class RetryPolicy:
    """Retry decisions built from ``policy.retry`` (see the module docs)."""

    __slots__ = ("budget", "settings")

    def __init__(self, settings: RetrySettings, budget: Budget) -> None:
        self.settings = settings
        self.budget = budget

    @classmethod
    def build(cls, settings: RetrySettings, clock: Callable[[], float]) -> RetryPolicy:
        return cls(
            settings, Budget(settings.budget, min_per_s=settings.min_per_s, window_s=settings.window_s, clock=clock)
        )

    def reconfigure(self, settings: RetrySettings) -> None:
        """A new policy generation; the budget keeps its history."""
        self.settings = settings
        b = self.budget
        b.ratio, b.min_per_s, b.window_s = settings.budget, settings.min_per_s, settings.window_s

    @property
    def max_attempts(self) -> int:
        return self.settings.max_attempts

    def allowed(self, attempts_left: int, now: float, deadline: float) -> bool:
        """May a failed attempt be followed by another (attempt limit and deadline)?"""
        return attempts_left > 0 and now < deadline

    def targets(self, plan: Plan, pool: Sequence[Candidate], tried_any: bool) -> Sequence[Candidate]:
        """Where a retry may go, best first: the untried candidates; or, when nothing is
        left and the plan has one compliant endpoint that is not ejected or cooling, that one again."""
        if pool or not tried_any:
            return pool
        only_one = len(plan.candidates) == 1 and not any(
            x.kind in (ExclusionKind.EJECTED, ExclusionKind.COOLING) for x in plan.excluded
        )
        return plan.candidates if only_one else pool
