"""The breaker's rules and the admission policy, each alone (no Health, no catalog),
then injected into Health from code."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest

from llm_multicloud.catalog import Catalog
from llm_multicloud.health import Admission, Breaker, BreakerState, Change, EndpointState, Health
from llm_multicloud.policy import BreakerPolicy

BP = BreakerPolicy(consecutive_failures=3, base_ejection_s=10.0, max_ejection_s=25.0, jitter=0.0)


@dataclass
class Fields:
    """The breaker's data, as a test's own object (BreakerFields)."""

    breaker: BreakerState = "closed"
    consecutive: int = 0
    ejections: int = 0
    opened_at: float = 0.0
    open_until: float = 0.0
    half_open_inflight: int = 0
    window: deque[tuple[float, bool]] = field(default_factory=deque)


def test_consecutive_failures_open_it_and_ejections_grow_to_the_cap() -> None:
    b, s = Breaker(), Fields()
    assert b.failure(s, 0.0, "500", 0.5, BP) is None
    assert b.failure(s, 0.1, "500", 0.5, BP) is None
    c = b.failure(s, 0.2, "502", 0.5, BP)
    assert c == Change("closed", "open", "3 consecutive failures, last: 502", 10.2)
    assert (s.breaker, s.open_until, s.ejections) == ("open", 10.2, 1)
    # once the ejection is over: half-open, then a failed trial re-opens it for longer
    assert b.ready(s, 10.1) is None and s.breaker == "open"
    assert b.ready(s, 10.2) == Change("open", "half_open", "ejection over: trial requests admitted")
    c = b.failure(s, 10.3, "timeout", 0.5, BP)
    assert c is not None and (c.old, c.new, c.until) == ("half_open", "open", pytest.approx(30.3))
    b.ready(s, 31.0)
    c = b.failure(s, 31.0, "timeout", 0.5, BP)
    assert c is not None and c.until == pytest.approx(31.0 + 25.0)  # 30 s capped at max_ejection_s


def test_only_a_trial_success_closes_it() -> None:
    b, s = Breaker(), Fields(breaker="open", open_until=50.0, ejections=1, opened_at=20.0)
    assert b.success(s, 30.0, BP, trial=False) is None  # a stream from before the ejection
    assert s.breaker == "open"
    assert b.success(s, 30.0, BP, trial=True) == Change("open", "closed", "trial request succeeded")
    assert s.breaker == "closed" and s.consecutive == 0


def test_a_failure_while_open_counts_but_moves_nothing() -> None:
    b, s = Breaker(), Fields(breaker="open", open_until=50.0, ejections=1)
    assert b.failure(s, 1.0, "500", 0.5, BP) is None
    assert (s.breaker, s.open_until, s.ejections, s.consecutive) == ("open", 50.0, 1, 1)


def test_failure_rate_over_the_window_given_volume() -> None:
    bp = BreakerPolicy(consecutive_failures=100, failure_rate=0.5, min_requests=4, window_s=10.0, jitter=0.0)
    b, s = Breaker(), Fields()
    for t, ok in ((0.0, True), (0.1, False), (0.2, True)):
        (b.success if ok else lambda s, now, bp, **_: b.failure(s, now, "x", 0.5, bp))(s, t, bp, trial=False)
    c = b.failure(s, 0.3, "503", 0.5, bp)
    assert c is not None and c.reason == "failure rate 2/4 over 10s, last: 503"


def test_jitter_spreads_the_ejection_both_ways() -> None:
    bp = BreakerPolicy(consecutive_failures=1, base_ejection_s=10.0, jitter=0.2)
    spans = []
    for rand in (0.0, 0.5, 0.999):
        s = Fields()
        c = Breaker().failure(s, 0.0, "x", rand, bp)
        assert c is not None and c.until is not None
        spans.append(c.until)
    assert spans[0] == pytest.approx(8.0) and spans[1] == pytest.approx(10.0) and spans[2] > 11.9


def test_remote_ejection_is_forward_only() -> None:
    b, s = Breaker(), Fields()
    assert b.remote_ejection(s, 0.0, -1.0, 2, "gone") == (False, None)  # already over
    adopted, c = b.remote_ejection(s, 0.0, 20.0, 2, "down")
    assert adopted and c == Change("closed", "open", "ejected by another replica: down", 20.0)
    assert s.ejections == 2
    assert b.remote_ejection(s, 1.0, 15.0, 1, "earlier") == (False, None)  # ends sooner: ignored
    assert b.remote_ejection(s, 1.0, 30.0, 1, "longer") == (True, None)  # extended, no new transition
    assert s.open_until == 30.0 and s.ejections == 2


def test_a_move_outside_the_table_is_a_bug() -> None:
    b, s = Breaker(), Fields(breaker="closed")
    with pytest.raises(RuntimeError, match="no move for event 'ejection_over' in state 'closed'"):
        b._move(s, "ejection_over")
    # every move in the table ends in a real state, and every state can be left
    states = {"closed", "open", "half_open"}
    assert {new for new in Breaker.MOVES.values()} <= states
    assert {old for old, _ in Breaker.MOVES} == states


# --------------------------------------------------------------------------- admission


def _state(max_concurrency: int | None = None, **policy: Any) -> EndpointState:
    ep: dict[str, Any] = {
        "id": "e",
        "provider": "aws",
        "region": "us-east-1",
        "base_url": "https://e.example.invalid/v1",
        "models": ["m"],
    }
    if max_concurrency is not None:
        ep["max_concurrency"] = max_concurrency
    cat = Catalog.load({"endpoints": [ep]})
    return Health(cat, cat.policy(policy or None)).states[0]


def test_half_open_permits_bound_the_trials() -> None:
    st = _state()
    st.breaker, st.half_open_inflight = "half_open", 0
    adm = Admission(half_open_permits=2)
    bp = BreakerPolicy()
    assert adm.allows(st, bp)
    st.half_open_inflight = 2
    assert not adm.allows(st, bp)
    assert Admission().allows(_state(), bp)  # closed: always
    st.half_open_inflight = 1
    assert not Admission().allows(st, bp)  # the policy's default: 1 permit


def test_max_concurrency_is_enforced_only_when_asked() -> None:
    st = _state(max_concurrency=2)
    st.inflight, st.remote_inflight = 1, 1
    assert Admission().allows(st, BreakerPolicy())
    assert not Admission(enforce_max_concurrency=True).allows(st, BreakerPolicy())
    st.remote_inflight = 0
    assert Admission(enforce_max_concurrency=True).allows(st, BreakerPolicy())


def test_bad_permits_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Admission(half_open_permits=0)


# --------------------------------------------------------------------------- injected


class Strict(Breaker):
    """A replacement from code: one failure opens it, for exactly 5 s."""

    def failure(self, s: Any, now: float, reason: str, rand: float, bp: BreakerPolicy) -> Change | None:
        s.consecutive += 1
        if s.breaker != "closed":
            return super().failure(s, now, reason, rand, bp)
        self._move(s, "trip")
        s.ejections += 1
        s.opened_at, s.open_until = now, now + 5.0
        return Change("closed", "open", f"strict: {reason}", s.open_until)


class Deny:
    def __init__(self) -> None:
        self.asked = 0

    def allows(self, st: EndpointState, bp: BreakerPolicy) -> bool:
        self.asked += 1
        return False


def test_health_uses_the_breaker_and_admission_it_is_given(clock: Any) -> None:
    ep = {"id": "e", "provider": "aws", "region": "us-east-1", "base_url": "https://e.x.invalid/v1", "models": ["m"]}
    cat = Catalog.load({"endpoints": [ep]})
    seen = []
    h = Health(cat, cat.policy(None), clock=clock, breaker=Strict())
    h.listeners.append(seen.append)
    st = h.states[0]
    h.endpoint_fault(st, "HTTP 500")
    assert st.breaker == "open" and st.open_until == clock.now + 5.0
    assert [(t.old, t.new, t.reason) for t in seen] == [("closed", "open", "strict: HTTP 500")]
    # a catalog update keeps the injected rules for new and redefined states
    (st2,) = h.retarget(Catalog.load({"endpoints": [{**ep, "region": "us-west-2"}]}), h.policy)
    assert st2 is not st and st2._breaker_rules is h.breaker

    deny = Deny()
    h2 = Health(cat, cat.policy(None), clock=clock, admission=deny)
    assert h2.states[0].admit(clock.now) is None and deny.asked == 1
    assert h2.states[0].inflight == 0 and h2.states[0].requests == 0
