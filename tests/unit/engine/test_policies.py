"""Each policy alone, and replaced from code: the hedging policy (when, whether, to
whom), the retry policy (whether, where) and the ledger's usage normalisation."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from llm_multicloud.engine.hedge import HedgePolicy
from llm_multicloud.engine.ledger import Usage
from llm_multicloud.engine.retry import RetryPolicy
from llm_multicloud.errors import FaultKind
from llm_multicloud.policy import Policy
from llm_multicloud.router import Candidate, Plan
from llm_multicloud.vocabulary import AttemptKind

from .conftest import FakeUpstream, Reply, World, run_virtual
from .test_race import failed, make_race, started


def hedge_for(w: World, **settings: object) -> HedgePolicy:
    pol = Policy.model_validate({"hedge": {"enabled": True, **settings}})
    return HedgePolicy.build(pol.hedge, w.clock, default_ttft_ms=200.0)


def plan(w: World) -> Plan:
    return w.executor.plan(w.intent(), w.clock(), 0.0)


# -- hedging: when ---------------------------------------------------------------------
def test_a_fixed_delay_wins_over_estimates() -> None:
    w = World()
    assert hedge_for(w, delay_ms=75).delay_ms(w.state("a"), plan(w)) == 75.0


def test_cold_endpoints_wait_a_multiple_of_the_predicted_ttft_clamped() -> None:
    w = World()
    p = plan(w)
    pred = next(c.predicted_ms for c in p.candidates if c.endpoint.id == "a")
    h = hedge_for(w, cold_factor=2.0, min_delay_ms=1, max_delay_ms=100_000)
    assert h.delay_ms(w.state("a"), p) == pytest.approx(pred * 2.0)
    assert hedge_for(w, cold_factor=2.0, min_delay_ms=1, max_delay_ms=5).delay_ms(w.state("a"), p) == 5.0


def test_with_enough_samples_the_delay_is_a_quantile_of_the_endpoints_ttft() -> None:
    w = World()
    st = w.state("a")
    for ms in range(1, 101):  # 1..100 ms
        st.observe_ttft(float(ms), w.clock())
    h = hedge_for(w, quantile=0.9, headroom=1.0, min_samples=20, min_delay_ms=1, max_delay_ms=10_000)
    q = st.ttft_quantile(0.9)
    assert q is not None and 85 <= q <= 95
    assert h.delay_ms(st, plan(w)) == pytest.approx(q)


def test_no_delay_without_a_second_candidate_or_when_disabled() -> None:
    w = World(endpoints=(("a", "aws", "eu-central-1"),))
    assert hedge_for(w).delay_ms(w.state("a"), plan(w)) == math.inf
    assert not hedge_for(w).possible(plan(w))
    w = World()
    off = HedgePolicy.build(Policy.model_validate({"hedge": {"enabled": False}}).hedge, w.clock, default_ttft_ms=1)
    assert not off.possible(plan(w)) and off.delay_ms(w.state("a"), plan(w)) == math.inf


# -- hedging: whether --------------------------------------------------------------------
def test_hedges_stop_at_max_in_flight() -> None:
    w = World()
    h = hedge_for(w, max_in_flight=2)
    assert h.allowed(plan(w), 1) and not h.allowed(plan(w), 2)


def test_no_hedge_while_the_fleet_is_saturated() -> None:
    w = World()
    for x in ("b", "c", "d"):
        w.health.cooldown(w.state(x), 30.0, "429")
    p = plan(w)
    assert len(p.candidates) == 1 and not hedge_for(w).allowed(p, 1)


# -- hedging: to whom --------------------------------------------------------------------
def test_hedge_targets_skip_busy_failure_domains_and_prefer_other_providers() -> None:
    w = World()
    p = plan(w)
    a = p.candidates[0].endpoint
    assert [c.endpoint.id for c in hedge_for(w).targets(p.candidates[1:], [a])] == ["c", "d", "b"]
    assert hedge_for(w).targets(p.candidates, [a])[0].endpoint.id == "c"  # a itself is busy


# -- retries ------------------------------------------------------------------------------
def test_retry_whether_attempts_and_deadline() -> None:
    w = World()
    r = RetryPolicy.build(w.policy.retry, w.clock)
    assert r.allowed(1, now=1.0, deadline=2.0)
    assert not r.allowed(0, now=1.0, deadline=2.0)
    assert not r.allowed(1, now=2.0, deadline=2.0)


def test_retry_where_untried_first_and_the_only_endpoint_again() -> None:
    w = World()
    r = RetryPolicy.build(w.policy.retry, w.clock)
    p = plan(w)
    assert list(r.targets(p, p.candidates[2:], tried_any=True)) == p.candidates[2:]
    assert list(r.targets(p, [], tried_any=True)) == []  # several endpoints: never back to a tried one
    one = World(endpoints=(("a", "aws", "eu-central-1"),))
    p1 = plan(one)
    assert list(r.targets(p1, [], tried_any=True)) == p1.candidates


def test_the_retry_policy_is_replaceable_from_code() -> None:
    class LastFirst(RetryPolicy):
        """Fail over to the plan's last candidate first."""

        def targets(self, plan: Plan, pool: Sequence[Candidate], tried_any: bool) -> Sequence[Candidate]:
            return list(reversed(pool))

    w = World()
    w.executor.retry = LastFirst(w.policy.retry, w.executor.retry.budget)
    race = make_race(w)
    a = started(race.begin())
    r = started(race.on_done(failed(a, FaultKind.ENDPOINT, 503)))
    assert (r.ep.id, r.kind) == ("d", AttemptKind.RETRY)


def test_the_hedge_policy_is_replaceable_from_code() -> None:
    class Immediate(HedgePolicy):
        """Hedge after 1 ms, to the same provider first."""

        def delay_ms(self, st: object, plan: Plan) -> float:
            return 1.0

        def targets(self, pool: Sequence[Candidate], in_flight: object) -> list[Candidate]:
            return [c for c in pool if c.endpoint.provider == "aws"]

    w = World({"hedge": {"enabled": True, "budget": 1.0}})
    ex = w.executor
    ex.hedge = Immediate(ex.policy.hedge, ex.hedge.budget, default_ttft_ms=200.0)
    t0 = w.clock()
    up = FakeUpstream(w.clock, {"a": Reply(delay_s=1.0), "b": Reply(delay_s=0.01)})

    async def go() -> object:
        return await ex.execute(w.intent(), up)  # type: ignore[arg-type]

    run_virtual(w.clock, go)
    assert [(o.host, round(o.at - t0, 6)) for o in up.opened] == [("a", 0.0), ("b", 0.001)]


# -- usage, normalised once -------------------------------------------------------------------
def test_usage_of_chat_and_responses_answers() -> None:
    chat = {
        "prompt_tokens": 10,
        "completion_tokens": 3,
        "total_tokens": 13,
        "prompt_tokens_details": {"cached_tokens": 4},
    }
    assert Usage.of(chat) == Usage(10, 3, 4, 13)
    resp = {"input_tokens": 7, "output_tokens": 2, "input_tokens_details": {"cached_tokens": 1}}
    assert Usage.of(resp) == Usage(7, 2, 1, None)
    assert Usage.of(None) is None and Usage.of({}) is None


def test_usage_ignores_values_that_are_not_counts() -> None:
    bad = {"prompt_tokens": "ten", "completion_tokens": -1, "total_tokens": True, "prompt_tokens_details": []}
    assert Usage.of(bad) == Usage(None, None, 0, None)
    assert Usage.of({"prompt_tokens": None, "input_tokens": 5}) == Usage(5, None, 0, None)
