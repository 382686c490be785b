"""Placement re-checks each attempt with health's one usable-now predicate: what changed
since the plan (a cooldown, an ejection, a model gone from the listing, a credential
lost) keeps a new attempt off that endpoint; a plan's re-admission of an ejected
endpoint still holds."""

from __future__ import annotations

import pytest

from llm_multicloud.engine.placement import Placement

from .conftest import World


@pytest.mark.parametrize("change", ["cooling", "ejected", "missing_model", "credential"])
def test_a_change_since_the_plan_keeps_the_attempt_off(change: str) -> None:
    w = World()
    intent = w.intent()
    plan = w.executor.plan(intent, w.clock(), 0.0)
    first = plan.candidates[0].endpoint.id
    st = w.state(first)
    now = w.clock()
    if change == "cooling":
        st.quota.until = now + 30
    elif change == "ejected":
        st.breaker, st.open_until = "open", now + 30
    elif change == "missing_model":
        st.missing_models = frozenset({"m"})
    else:
        st.endpoint.credential.unavailable = "token endpoint down"
    try:
        got = Placement(w.health, intent, w.executor.resume_style).take(list(plan.candidates), now)
    finally:
        st.endpoint.credential.unavailable = None
    assert got is not None and got.candidate.endpoint.id != first
    assert got.candidate.endpoint.id == plan.candidates[1].endpoint.id
    assert st.inflight == 0  # nothing was admitted on the changed endpoint


def test_an_ejection_the_plan_readmitted_still_holds() -> None:
    w = World()
    intent = w.intent()
    plan = w.executor.plan(intent, w.clock(), 0.0)
    c = plan.candidates[0]
    st = w.state(c.endpoint.id)
    st.breaker, st.open_until = "open", w.clock() + 30
    placement = Placement(w.health, intent, w.executor.resume_style)
    got = placement.take([c], w.clock())
    assert got is None  # ejected since the plan, not re-admitted by it: off
    c.readmitted = True  # the ejection cap or panic took it back in the plan
    got = placement.take([c], w.clock())
    assert got is not None and got.candidate is c and got.breaker == "open"
