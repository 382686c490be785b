"""The race's decisions, driven directly (sans-I/O): events in, actions out, on a
virtual clock. No event loop, no sockets: each test is a scripted sequence of
attempt results and timer ticks, and asserts the actions and the ledger."""

from __future__ import annotations

from typing import Any

import pytest

from llm_multicloud.budget import Budget
from llm_multicloud.engine.attempt import Attempt
from llm_multicloud.engine.hedge import HedgePolicy
from llm_multicloud.engine.placement import Placement
from llm_multicloud.engine.race import BUDGET_NOTE, AllFailed, Cancel, Commit, Fail, Race, Start
from llm_multicloud.errors import DeadlineExceeded, FaultKind, RoutingError
from llm_multicloud.vocabulary import AttemptKind, AttemptOutcome

from .conftest import World

HEDGE = {"hedge": {"enabled": True, "delay_ms": 50, "budget": 1.0}}


def make_race(w: World, *, hedging: bool = True, deadline_s: float = 60.0) -> Race:
    ex = w.executor
    intent = w.intent()
    ledger = ex.ledger(intent)
    plan = ex.plan(intent, w.clock(), 0.0)
    return Race(
        plan,
        ledger,
        hedge=ex.hedge,
        retry=ex.retry,
        placement=Placement(w.health, intent, ex.resume_style),
        health=w.health,
        deadline=w.clock() + deadline_s,
        attempts_left=ex.retry.max_attempts,
        clock=w.clock,
        hedging=hedging,
    )


def started(actions: list[Any]) -> Attempt:
    assert len(actions) == 1 and isinstance(actions[0], Start), actions
    a: Attempt = actions[0].attempt
    return a


def ready(w: World, a: Attempt) -> Attempt:
    a.fault, a.status, a.ttft = None, 200, w.clock() - a.t0
    return a


def failed(a: Attempt, fault: FaultKind, status: int | None = None, retry_after: float | None = None) -> Attempt:
    a.fault, a.status, a.reason, a.retry_after = fault, status, f"HTTP {status}", retry_after
    return a


def outcomes(w: World) -> list[tuple[str, str, str]]:
    return [(r.endpoint, r.kind, r.outcome) for r in w.attempts]


def test_the_primary_goes_first_and_arms_the_hedge_timer_at_its_delay() -> None:
    w = World(HEDGE)
    race = make_race(w)
    a = started(race.begin())
    assert (a.ep.id, a.kind) == ("a", AttemptKind.PRIMARY)
    assert race.wake_at() == pytest.approx(w.clock() + 0.050)
    assert w.state("a").inflight == 1


def test_the_hedge_fires_at_its_delay_in_another_failure_domain_of_another_provider() -> None:
    w = World(HEDGE)
    race = make_race(w)
    primary = started(race.begin())
    balance = w.executor.hedge.budget.balance()
    w.clock.advance(0.050)
    h = started(race.on_timer())
    # b is another region but the same provider (aws) as the primary: c (gcp) goes first.
    assert (h.ep.id, h.kind) == ("c", AttemptKind.HEDGE)
    assert h.t0 == primary.t0 + 0.050
    assert w.executor.hedge.budget.balance() == balance - 1
    assert race.wake_at() == pytest.approx(h.t0 + 0.050)  # the next hedge, from the newest attempt
    assert w.state("c").hedges == 1


def test_the_first_ready_attempt_wins_and_the_loser_is_cancelled_and_accounted() -> None:
    w = World(HEDGE)
    race = make_race(w)
    primary = started(race.begin())
    w.clock.advance(0.050)
    hedge = started(race.on_timer())
    w.clock.advance(0.010)
    actions = race.on_done(ready(w, hedge))
    assert actions == [Cancel((primary,)), Commit(hedge)]
    race.closed(primary)
    assert outcomes(w) == [("a", "primary", AttemptOutcome.CANCELLED)]
    st = w.state("a")
    assert st.inflight == 0 and st.wasted == 1
    assert st.ttft_ms == pytest.approx(60.0)  # censored sample: at least as slow as it was
    rec = w.attempts[0]
    assert rec.cost_estimated and rec.cost_usd > 0  # the prompt was processed


def test_a_failure_retries_on_the_next_untried_candidate_and_blames_the_endpoint() -> None:
    w = World(HEDGE)
    race = make_race(w)
    a = started(race.begin())
    balance = w.executor.retry.budget.balance()
    r = started(race.on_done(failed(a, FaultKind.ENDPOINT, 503)))
    assert (r.ep.id, r.kind) == ("b", AttemptKind.RETRY)
    assert w.executor.retry.budget.balance() == balance - 1
    assert outcomes(w) == [("a", "primary", AttemptOutcome.FAILED)]
    assert w.attempts[0].fault is FaultKind.ENDPOINT and w.attempts[0].error_type == "503"
    assert w.state("a").consecutive == 1 and w.state("a").inflight == 0


def test_a_quota_refusal_cools_the_endpoint_down_for_its_retry_after() -> None:
    w = World()
    race = make_race(w)
    a = started(race.begin())
    r = started(race.on_done(failed(a, FaultKind.QUOTA, 429, retry_after=7.0)))
    assert r.ep.id == "b"
    assert w.state("a").quota.until == pytest.approx(w.clock() + 7.0)
    assert w.state("a").consecutive == 0  # a quota is not the endpoint's failure


def test_a_request_fault_is_handed_back_without_retry_or_penalty() -> None:
    w = World()
    race = make_race(w)
    a = started(race.begin())
    assert race.on_done(failed(a, FaultKind.REQUEST, 400)) == [Commit(a)]
    assert w.state("a").consecutive == 0 and len(race.failures) == 0


def test_a_local_fault_fails_at_once_without_penalty_or_failover() -> None:
    w = World()
    race = make_race(w)
    a = started(race.begin())
    actions = race.on_done(failed(a, FaultKind.LOCAL))
    assert len(actions) == 1 and isinstance(actions[0], Fail)
    assert isinstance(actions[0].error, RoutingError) and actions[0].error.code == "local_error"
    assert outcomes(w) == [("a", "primary", AttemptOutcome.LOCAL_ERROR)]
    assert w.state("a").consecutive == 0


def test_an_empty_retry_budget_stops_failover_with_a_note_and_spends_nothing() -> None:
    w = World({"retry": {"budget": 0.0, "min_per_s": 0.0}})
    race = make_race(w)
    a = started(race.begin())
    actions = race.on_done(failed(a, FaultKind.ENDPOINT, 503))
    assert len(actions) == 1 and isinstance(actions[0], Fail)
    err = actions[0].error
    assert isinstance(err, AllFailed) and err.note == BUDGET_NOTE and err.failures == [a]
    assert w.state("b").inflight == 0  # nothing admitted


def test_a_hedge_token_is_spent_only_when_there_is_a_target() -> None:
    # Two endpoints in one failure domain: a hedge has nowhere to go.
    w = World(HEDGE, endpoints=(("a", "aws", "eu-central-1"), ("b", "aws", "eu-central-1")))
    race = make_race(w)
    started(race.begin())
    balance = w.executor.hedge.budget.balance()
    w.clock.advance(0.050)
    assert race.on_timer() == []
    assert w.executor.hedge.budget.balance() == balance
    assert w.state("b").inflight == 0


def test_a_retry_token_is_spent_only_when_there_is_a_target() -> None:
    w = World(endpoints=(("a", "aws", "eu-central-1"), ("b", "gcp", "europe-west4")))
    race = make_race(w)
    a = started(race.begin())
    b = started(race.on_done(failed(a, FaultKind.ENDPOINT, 503)))
    balance = w.executor.retry.budget.balance()
    actions = race.on_done(failed(b, FaultKind.ENDPOINT, 503))
    assert w.executor.retry.budget.balance() == balance  # nobody left to retry on
    assert len(actions) == 1 and isinstance(actions[0], Fail)
    err = actions[0].error
    assert isinstance(err, AllFailed) and err.note is None and err.failures == [a, b]


def test_a_placement_refused_its_token_is_given_back() -> None:
    """The budget empties between the balance check and the withdrawal (another
    request took the last token): the placed target is released."""

    class Raced(Budget):
        def balance(self) -> float:
            return 5.0  # looks available...

        def try_withdraw(self) -> bool:
            return False  # ...but another request took it

    w = World(HEDGE)
    ex = w.executor
    ex.hedge = HedgePolicy(ex.policy.hedge, Raced(1.0, min_per_s=0, window_s=1, clock=w.clock), default_ttft_ms=200)
    race = make_race(w)
    started(race.begin())
    w.clock.advance(0.050)
    assert race.on_timer() == []
    assert w.state("c").inflight == 0 and w.state("c").hedges == 0


def test_the_deadline_cancels_every_attempt_and_is_a_deadline_error() -> None:
    w = World(HEDGE)
    race = make_race(w, deadline_s=0.2)
    a = started(race.begin())
    w.clock.advance(0.050)
    h = started(race.on_timer())
    w.clock.advance(0.151)
    actions = race.on_timer()
    assert actions[0] == Cancel((a, h)) and isinstance(actions[1], Fail)
    assert isinstance(actions[1].error, DeadlineExceeded)


def test_a_timeout_at_the_deadline_is_the_callers_deadline_not_the_endpoints_failure() -> None:
    w = World()
    race = make_race(w, hedging=False, deadline_s=2.0)
    a = started(race.begin())
    w.clock.advance(2.0)
    a.fail(FaultKind.ENDPOINT, "no first token within 2.00s", "timeout")
    actions = race.on_done(a)
    assert actions[0] == Cancel((a,)) and isinstance(actions[1], Fail)
    assert isinstance(actions[1].error, DeadlineExceeded)
    assert w.state("a").consecutive == 0


def test_without_hedging_no_hedge_timer_is_armed() -> None:
    w = World(HEDGE)
    race = make_race(w, hedging=False, deadline_s=5.0)
    started(race.begin())
    assert race.wake_at() == pytest.approx(w.clock() + 5.0)


def test_the_attempt_limit_ends_the_race() -> None:
    w = World({"retry": {"max_attempts": 2}})
    race = make_race(w)
    a = started(race.begin())
    b = started(race.on_done(failed(a, FaultKind.ENDPOINT, 503)))
    actions = race.on_done(failed(b, FaultKind.ENDPOINT, 503))
    assert isinstance(actions[-1], Fail) and isinstance(actions[-1].error, AllFailed)
    assert outcomes(w) == [("a", "primary", "failed"), ("b", "retry", "failed")]


def test_the_only_compliant_endpoint_is_retried_in_place() -> None:
    w = World(endpoints=(("a", "aws", "eu-central-1"),))
    race = make_race(w)
    a = started(race.begin())
    r = started(race.on_done(failed(a, FaultKind.ENDPOINT, 503)))
    assert (r.ep.id, r.kind) == ("a", AttemptKind.RETRY)


def test_abort_cancels_everyone_including_a_winner_not_yet_handed_over() -> None:
    w = World(HEDGE)
    race = make_race(w)
    a = started(race.begin())
    w.clock.advance(0.050)
    h = started(race.on_timer())
    assert race.on_done(ready(w, h)) == [Cancel((a,)), Commit(h)]
    assert race.abort() == [Cancel((h,))]  # the caller went away before the hand-over
    assert race.winner is None
