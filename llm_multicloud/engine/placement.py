"""Placement: taking a slot on a candidate right before an attempt is sent.

The router planned with a snapshot; by the time an attempt starts (a hedge tens of
milliseconds later, a retry after a failure) the fleet may have moved. Placement
re-checks, in this order, and takes the first candidate that passes (the breaker's
own admission rules — half-open permits, concurrency — are health's):

1. the endpoint is still live (not drained, removed or redefined by a catalog update);
2. a resumed stream does not go back to the endpoint that broke, nor to one that
   cannot continue a partial answer;
3. it is usable now — :func:`~llm_multicloud.usable.unusable_now`, the one predicate
   the router's plan was made with: not cooled down by a 429 of its quota domain, not
   ejected during this request unless the plan re-admitted it, the model not gone
   from its listing, its credential not unavailable;
4. **residency, the second lock**: the endpoint complies with the request's
   constraint (the router already filtered; a violation here is a bug, refused with
   an error, never sent);
5. its capacity bucket can reserve the request's token estimate;
6. its breaker admits it (:meth:`EndpointState.admit`: closed, a half-open trial
   permit, or an ejected endpoint re-admitted under panic).

:meth:`Placement.give_back` undoes a placement whose attempt will not start (its
budget token was refused), so that only attempts that really start hold a slot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

from ..errors import RoutingError
from ..limits import estimate_tokens
from ..router import complies
from ..usable import unusable_now
from ..vocabulary import BreakerState, ExclusionKind

if TYPE_CHECKING:
    from ..catalog import Endpoint
    from ..health import EndpointState, Health
    from ..intent import Intent
    from ..router import Candidate


class Placed(NamedTuple):
    candidate: Candidate
    state: EndpointState
    #: the breaker state it was admitted under (closed | half_open | open)
    breaker: str
    #: tokens reserved in its capacity bucket (0: it has none)
    reserved: int


class Placement:
    """Places one request's attempts on candidates (see the module docs)."""

    __slots__ = ("_health", "_intent", "_need", "_resume_style", "refused")

    def __init__(self, health: Health, intent: Intent, resume_style: Callable[[Endpoint], str]) -> None:
        self._health = health
        self._intent = intent
        self._resume_style = resume_style
        self._need = estimate_tokens(intent.input_tokens, intent.max_tokens)
        #: reservations refused: capacity taken by other requests since the plan
        self.refused = 0

    def take(self, pool: Sequence[Candidate], now: float) -> Placed | None:
        """The first candidate of ``pool`` that passes every check, with its slot taken."""
        intent, live, need = self._intent, self._health.live, self._need
        for c in pool:
            st = live(c.endpoint)
            if st is None or not self._eligible(c, st, now):
                continue
            if not complies(st.endpoint, intent.constraints):  # second lock; the router already filtered
                raise RoutingError(500, "residency_violation_prevented", f"refused to send to {c.endpoint.id}")
            b = st.bucket
            if b is not None and not b.reserve(now, need):
                self.refused += 1
                continue  # its quota is spent (by other requests since the plan)
            admitted = st.admit(now)
            if admitted is None:
                if b is not None:
                    b.settle(need, 0, refund_request=True)
                continue
            return Placed(c, st, admitted, need if b is not None else 0)
        return None

    def _eligible(self, c: Candidate, st: EndpointState, now: float) -> bool:
        intent = self._intent
        if c.endpoint.id in intent.avoid or (
            intent.resume_prefix is not None and self._resume_style(c.endpoint) == "none"
        ):
            return False  # resuming: not the endpoint that broke, and one that can continue
        # Usable now (health's one predicate): it may have cooled down (its quota domain
        # got a 429), been ejected (unless the plan re-admitted it), lost the model or its
        # credential since the plan was made.
        why = unusable_now(st, intent.model, now)
        return why is None or (why == ExclusionKind.EJECTED and c.readmitted)

    @staticmethod
    def give_back(got: Placed) -> None:
        """Undo a placement whose attempt will not start."""
        st = got.state
        st.release(got.breaker == BreakerState.HALF_OPEN)
        if got.reserved and st.bucket is not None:
            st.bucket.settle(got.reserved, 0, refund_request=True)
