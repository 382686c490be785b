"""The hedging policy: when a second attempt starts, whether it may, and to whom.

After Dean & Barroso, *The Tail at Scale* (CACM 2013) and tower's ``hedge``
middleware (``tower/src/hedge``: a second request once the first has been
outstanding longer than a latency percentile, only with enough data points) and
Finagle's ``RetryBudget`` (hedges are extra load, so they draw on a budget):

* **when** — :meth:`HedgePolicy.delay_ms`: a quantile of the endpoint's recent TTFT
  (``policy.hedge.quantile`` × ``headroom``, once ``min_samples`` are in); before
  that, the router's predicted TTFT × ``cold_factor``; a fixed ``delay_ms`` if set;
  always clamped to ``[min_delay_ms, max_delay_ms]``.
* **whether** — :meth:`HedgePolicy.possible` (can a hedge happen at all for this
  plan: enabled, two candidates, room in ``max_in_flight``; when not, the driver
  awaits the attempt directly, with no race machinery) and :meth:`HedgePolicy.allowed`
  (at the timer: not beyond ``max_in_flight``, not while the fleet is saturated —
  most compliant endpoints cooling down, ejected or out of capacity, where a hedge
  only adds load).
* **to whom** — :meth:`HedgePolicy.targets`: untried candidates in a failure domain
  that has no attempt in flight, other providers first (a hedge to the same
  provider's other region shares its control plane).
* **budget** — ``policy.hedge.budget`` extra requests per request, withdrawn only
  once a target has been admitted (:mod:`.race`): a hedge that finds nobody to go
  to costs nothing.

Replace it from code with ``MultiCloud(...).executor.hedge = MyHedgePolicy(...)``
(any object with these methods and a ``budget``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from ..budget import Budget
from ..vocabulary import UNAVAILABLE_EXCLUSIONS

if TYPE_CHECKING:
    from ..catalog import Endpoint
    from ..health import EndpointState
    from ..policy import HedgePolicy as HedgeSettings
    from ..router import Candidate, Plan


class HedgePolicy:
    """Hedging decisions built from ``policy.hedge`` (see the module docs)."""

    __slots__ = ("budget", "default_ttft_ms", "settings")

    def __init__(self, settings: HedgeSettings, budget: Budget, *, default_ttft_ms: float) -> None:
        self.settings = settings
        self.budget = budget
        self.default_ttft_ms = default_ttft_ms

    @classmethod
    def build(cls, settings: HedgeSettings, clock: Callable[[], float], *, default_ttft_ms: float) -> HedgePolicy:
        return cls(
            settings,
            Budget(settings.budget, min_per_s=0.1, window_s=30.0, clock=clock),
            default_ttft_ms=default_ttft_ms,
        )

    def reconfigure(self, settings: HedgeSettings, *, default_ttft_ms: float) -> None:
        """A new policy generation; the budget keeps its history."""
        self.settings = settings
        self.default_ttft_ms = default_ttft_ms
        self.budget.ratio = settings.budget

    def possible(self, plan: Plan) -> bool:
        """Can a hedge happen at all for this plan? (False: no race machinery needed.)"""
        h = self.settings
        return h.enabled and h.max_in_flight >= 2 and len(plan.candidates) >= 2

    def delay_ms(self, st: EndpointState, plan: Plan) -> float:
        """How long an attempt on ``st`` may wait for its first token before a hedge."""
        h = self.settings
        if not h.enabled or len(plan.candidates) < 2:
            return math.inf
        if h.delay_ms is not None:
            return float(h.delay_ms)
        q = st.ttft_quantile(h.quantile) if st.ttft_samples >= h.min_samples else None
        if q is not None:
            q *= h.headroom
        else:
            ep = st.endpoint
            pred = next((c.predicted_ms for c in plan.candidates if c.endpoint is ep), self.default_ttft_ms)
            q = pred * h.cold_factor
        return float(min(max(q, h.min_delay_ms), h.max_delay_ms))

    def allowed(self, plan: Plan, in_flight: int) -> bool:
        """May a hedge start now (room in max_in_flight, fleet not saturated)?"""
        if in_flight >= self.settings.max_in_flight:
            return False
        out = sum(1 for x in plan.excluded if x.kind in UNAVAILABLE_EXCLUSIONS)
        return not (plan.panic or out > len(plan.candidates))

    def targets(self, pool: Sequence[Candidate], in_flight: Iterable[Endpoint]) -> list[Candidate]:
        """Where a hedge may go, best first: another failure domain, other providers first."""
        flying = list(in_flight)
        domains = {ep.failure_domain for ep in flying}
        providers = {ep.provider for ep in flying}
        out = [c for c in pool if c.endpoint.failure_domain not in domains]
        out.sort(key=lambda c: c.endpoint.provider in providers)  # stable: the plan's order otherwise
        return out
