"""The engine end to end — executor, drivers, attempts, ledger, stream — against a
fake upstream on virtual time: hedge delays, timeouts and deadlines fire at their
exact virtual instants, and each test takes milliseconds of wall time."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from llm_multicloud.engine import Result
from llm_multicloud.errors import DeadlineExceeded
from llm_multicloud.vocabulary import AttemptKind, AttemptOutcome, RequestOutcome

from .conftest import FakeUpstream, Reply, World, run_virtual

HEDGE = {"hedge": {"enabled": True, "delay_ms": 50, "budget": 1.0}}


def execute(w: World, up: FakeUpstream, **intent: Any) -> Result:
    async def go() -> Result:
        return await w.executor.execute(w.intent(**intent), up)  # type: ignore[arg-type]

    return run_virtual(w.clock, go)


def header(res: Result, name: str) -> str:
    return dict(res.headers)[name]


def test_a_late_primary_is_hedged_at_exactly_its_delay_and_the_hedge_wins() -> None:
    w = World(HEDGE)
    t0 = w.clock()
    up = FakeUpstream(w.clock, {"a": Reply(delay_s=1.0), "c": Reply(delay_s=0.010)})
    res = execute(w, up)
    assert header(res, "x-llm-multicloud-endpoint") == "c"
    assert header(res, "x-llm-multicloud-hedged") == "true"
    assert [(o.host, round(o.at - t0, 6)) for o in up.opened] == [("a", 0.0), ("c", 0.05)]
    assert w.clock() - t0 == pytest.approx(0.060)  # answered by the hedge, not after a's second
    assert [(r.endpoint, r.kind, r.outcome) for r in w.attempts] == [
        ("a", AttemptKind.PRIMARY, AttemptOutcome.CANCELLED),  # closed when the race ended
        ("c", AttemptKind.HEDGE, AttemptOutcome.WON),  # when its answer was complete
    ]
    assert all(s.inflight == 0 for s in w.health.states)
    (req,) = w.requests
    assert req.outcome is RequestOutcome.OK and req.hedged and len(req.attempts) == 2
    assert req.cost_usd == pytest.approx(sum(r.cost_usd for r in req.attempts))


def test_a_fast_primary_is_never_hedged() -> None:
    w = World(HEDGE)
    up = FakeUpstream(w.clock, {"a": Reply(delay_s=0.049)})
    res = execute(w, up)
    assert up.hosts() == ["a"] and header(res, "x-llm-multicloud-hedged") == "false"


def test_without_a_possible_hedge_the_attempt_is_awaited_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    """One candidate, hedging off, or no hedge budget: no task group is built."""

    async def no_race(*args: Any) -> Any:
        raise AssertionError("the racing driver ran although no hedge could happen")

    monkeypatch.setattr("llm_multicloud.engine.executor.run_racing", no_race)
    # hedging off
    w = World({"hedge": {"enabled": False}})
    assert header(execute(w, FakeUpstream(w.clock, {"a": Reply(0.01)})), "x-llm-multicloud-endpoint") == "a"
    # a single candidate
    w = World(HEDGE, endpoints=(("a", "aws", "eu-central-1"),))
    assert header(execute(w, FakeUpstream(w.clock, {"a": Reply(0.01)})), "x-llm-multicloud-endpoint") == "a"
    # no hedge budget left
    w = World({"hedge": {"enabled": True, "delay_ms": 50, "budget": 0.0}})
    while w.executor.hedge.budget.try_withdraw():
        pass  # spend the floor
    assert header(execute(w, FakeUpstream(w.clock, {"a": Reply(0.01)})), "x-llm-multicloud-endpoint") == "a"


def test_the_direct_driver_fails_over_in_plan_order() -> None:
    w = World({"hedge": {"enabled": False}})
    up = FakeUpstream(w.clock, {"a": Reply(0.01, status=503), "b": Reply(error="connect"), "c": Reply(0.01)})
    res = execute(w, up)
    assert header(res, "x-llm-multicloud-endpoint") == "c"
    assert header(res, "x-llm-multicloud-attempts") == "3"
    assert [(r.endpoint, r.kind, r.outcome, r.error_type) for r in w.attempts] == [
        ("a", "primary", "failed", "503"),
        ("b", "retry", "failed", "connect"),
        ("c", "retry", "won", None),
    ]
    assert up.opened[2].resp is not None and up.opened[2].resp.closed


def test_the_first_token_timeout_fails_over_at_its_virtual_instant() -> None:
    w = World({"hedge": {"enabled": False}, "timeouts": {"response_s": 3.0}})
    t0 = w.clock()
    up = FakeUpstream(w.clock, {"a": Reply(hang=True), "b": Reply(0.01)})
    assert header(execute(w, up), "x-llm-multicloud-endpoint") == "b"
    assert up.opened[1].at - t0 == pytest.approx(3.0)
    assert w.attempts[0].error_type == "timeout" and w.attempts[0].outcome == "failed"


def test_the_callers_deadline_is_a_timeout_and_cancels_every_attempt() -> None:
    w = World(HEDGE)
    t0 = w.clock()
    up = FakeUpstream(w.clock, {x: Reply(hang=True) for x in "abcd"})
    with pytest.raises(DeadlineExceeded):
        execute(w, up, timeout_s=2.0)
    assert w.clock() - t0 == pytest.approx(2.0)
    assert {r.outcome for r in w.attempts} == {AttemptOutcome.CANCELLED}
    assert len(w.attempts) >= 2  # hedged on the way
    assert all(s.inflight == 0 and s.consecutive == 0 for s in w.health.states)
    assert w.requests[0].outcome is RequestOutcome.TIMEOUT


def test_a_committed_stream_reports_its_end_to_the_ledger() -> None:
    w = World(HEDGE)
    up = FakeUpstream(w.clock, {"a": Reply(0.01)})

    async def go() -> bytes:
        res = await w.executor.execute(w.intent(stream=True), up)  # type: ignore[arg-type]
        assert res.stream is not None
        out = b""
        while (chunk := await res.stream.next_chunk()) is not None:
            out += chunk
        return out

    body = run_virtual(w.clock, go)
    assert b"[DONE]" in body and b'"usage"' not in body  # the usage we asked for is stripped
    (rec,) = w.attempts
    assert rec.outcome is AttemptOutcome.WON and (rec.input_tokens, rec.output_tokens) == (100, 10)
    assert rec.cost_usd == pytest.approx((100 * 1.0 + 10 * 2.0) / 1e6) and not rec.cost_estimated
    st = w.state("a")
    assert st.inflight == 0 and (st.input_tokens, st.output_tokens) == (100, 10)
    assert w.requests[0].outcome is RequestOutcome.OK and w.requests[0].ttft_ms is not None


def test_a_cancelled_caller_cancels_every_attempt_and_releases_their_slots() -> None:
    w = World(HEDGE)
    up = FakeUpstream(w.clock, {x: Reply(hang=True) for x in "abcd"})

    async def go() -> None:
        with anyio.move_on_after(0.2):
            await w.executor.execute(w.intent(), up)  # type: ignore[arg-type]

    run_virtual(w.clock, go)
    assert len(up.opened) >= 2
    assert {r.outcome for r in w.attempts} == {AttemptOutcome.CANCELLED}
    assert all(s.inflight == 0 for s in w.health.states)
    assert w.requests[0].outcome is RequestOutcome.CANCELLED


def test_both_drivers_follow_the_same_decisions() -> None:
    """The same failover script through the direct and the racing driver."""
    results = []
    for hedge in ({"enabled": False}, {"enabled": True, "delay_ms": 10_000, "max_delay_ms": 20_000, "budget": 1.0}):
        w = World({"hedge": hedge})
        up = FakeUpstream(w.clock, {"a": Reply(0.01, status=502), "b": Reply(0.01)})
        execute(w, up)
        results.append([(r.endpoint, r.kind, r.outcome) for r in w.attempts])
    assert results[0] == results[1] == [("a", "primary", "failed"), ("b", "retry", "won")]


def test_a_loser_ready_at_the_same_instant_is_closed_and_accounted() -> None:
    """Both streams reach their first token at +60 ms: one wins, the other's open
    response is closed (its connection, so the provider stops) and counted cancelled."""
    w = World(HEDGE)
    up = FakeUpstream(w.clock, {"a": Reply(delay_s=0.060), "c": Reply(delay_s=0.010)})

    async def go() -> str:
        res = await w.executor.execute(w.intent(stream=True), up)  # type: ignore[arg-type]
        assert res.stream is not None
        await res.stream.aclose()
        return header(res, "x-llm-multicloud-endpoint")

    winner = run_virtual(w.clock, go)
    loser = {"a": "c", "c": "a"}[winner]
    assert [o.host for o in up.opened] == ["a", "c"]
    assert all(o.resp is not None and o.resp.closed for o in up.opened)
    outcome = {r.endpoint: r.outcome for r in w.attempts}
    assert outcome[loser] is AttemptOutcome.CANCELLED
    assert outcome[winner] is AttemptOutcome.CLOSED_BY_CALLER  # closed before its end
    assert all(s.inflight == 0 for s in w.health.states)
