"""Endpoint health: peak-EWMA latency, TTFT quantiles, circuit breaker, cooldowns, hooks."""

from __future__ import annotations

import logging
import math
import random
from typing import Any

import pytest

from llm_multicloud.catalog import Catalog
from llm_multicloud.health import EndpointState, Health, Transition


def _catalog(n: int = 2, **per_endpoint: Any) -> Catalog:
    return Catalog.load(
        {
            "endpoints": [
                {
                    "id": f"e{i}",
                    "provider": "aws",
                    "region": "us-east-1",
                    "base_url": f"https://e{i}.example.invalid/v1",
                    "models": ["m"],
                    **per_endpoint,
                }
                for i in range(n)
            ]
        }
    )


def _health(clock: Any, policy: dict[str, Any] | None = None, n: int = 2, **per_endpoint: Any) -> Health:
    cat = _catalog(n, **per_endpoint)
    return Health(cat, cat.policy(policy), clock=clock)


# --------------------------------------------------------------------------- latency


def test_first_sample_sets_the_estimate(clock: Any) -> None:
    st = _health(clock).states[0]
    assert st.ttft_ms is None
    st.observe_ttft(120.0, clock.now)
    assert st.ttft_ms == 120.0
    assert st.ttft_at == clock.now
    assert st.ttft_samples == 1


def test_slow_sample_replaces_estimate_at_once(clock: Any) -> None:
    st = _health(clock).states[0]
    st.observe_ttft(100.0, clock.now)
    clock.advance(0.001)  # however little time passed
    st.observe_ttft(900.0, clock.now)
    assert st.ttft_ms == 900.0


def test_fast_sample_blends_with_time_based_weight(clock: Any) -> None:
    st = _health(clock, {"decay_s": 10}).states[0]
    st.observe_ttft(100.0, clock.now)
    clock.advance(10.0)  # one time constant: the old estimate keeps weight e^-1
    st.observe_ttft(50.0, clock.now)
    expected = 100.0 * math.exp(-1) + 50.0 * (1 - math.exp(-1))
    assert st.ttft_ms == pytest.approx(expected)
    assert 50.0 < st.ttft_ms < 100.0


def test_fast_sample_soon_after_barely_moves_estimate(clock: Any) -> None:
    st = _health(clock, {"decay_s": 10}).states[0]
    st.observe_ttft(100.0, clock.now)
    clock.advance(0.1)
    st.observe_ttft(10.0, clock.now)
    assert st.ttft_ms == pytest.approx(100.0 * math.exp(-0.01) + 10.0 * (1 - math.exp(-0.01)))
    assert st.ttft_ms > 95.0
    clock.advance(1000.0)  # after a long quiet period a fast sample dominates
    st.observe_ttft(10.0, clock.now)
    assert st.ttft_ms == pytest.approx(10.0, abs=1e-6)


def test_censored_sample_only_raises(clock: Any) -> None:
    st = _health(clock).states[0]
    st.observe_ttft(200.0, clock.now)
    clock.advance(5)
    st.observe_ttft(50.0, clock.now, censored=True)  # "at least 50 ms" says nothing new
    assert st.ttft_ms == 200.0
    assert st.ttft_at == clock.now - 5
    st.observe_ttft(800.0, clock.now, censored=True)  # "at least 800 ms" raises it
    assert st.ttft_ms == 800.0
    assert st.ttft_at == clock.now
    # censored samples are not real TTFTs: not counted, not in the hedge histogram
    assert st.ttft_samples == 1
    assert st.ttft_quantile(0.99) == 200.0


def test_censored_sample_on_unknown_endpoint_sets_a_floor(clock: Any) -> None:
    st = _health(clock).states[0]
    st.observe_ttft(300.0, clock.now, censored=True)
    assert st.ttft_ms == 300.0
    assert st.ttft_quantile(0.5) is None


def test_ttft_quantile(clock: Any) -> None:
    st = _health(clock).states[0]
    assert st.ttft_quantile(0.9) is None
    values = list(range(1, 101))
    random.Random(7).shuffle(values)
    for v in values:
        st.observe_ttft(float(v), clock.now)
    p50, p90 = st.ttft_quantile(0.5), st.ttft_quantile(0.9)
    assert p50 is not None and 50 <= p50 <= 51
    assert p90 is not None and 90 <= p90 <= 91
    assert st.ttft_quantile(0.0) == 1
    assert st.ttft_quantile(0.999) == 100


def test_ttft_quantile_window_forgets_old_samples(clock: Any) -> None:
    st = _health(clock).states[0]
    for _ in range(256):
        st.observe_ttft(5000.0, clock.now)
    assert st.ttft_quantile(0.5) == 5000.0
    for _ in range(256):  # a full window of new samples
        clock.advance(1)
        st.observe_ttft(10.0, clock.now)
    assert st.ttft_quantile(0.99) == 10.0


def test_rtt_smoothing(clock: Any) -> None:
    st = _health(clock).states[0]
    st.observe_rtt(100.0)
    assert st.rtt_ms == 100.0
    st.observe_rtt(200.0)
    assert 100.0 < st.rtt_ms < 200.0  # type: ignore[operator]


def test_stream_observation_time_per_output_token(clock: Any) -> None:
    st = _health(clock).states[0]
    st.observe_stream(total_ms=1100.0, output_tokens=101, ttft_ms=100.0)
    assert st.tpot_ms == pytest.approx(10.0)  # (1100 - 100) ms over 100 inter-token gaps
    assert st.total_ms == 1100.0


# --------------------------------------------------------------------------- breaker


def _fail(h: Health, st: EndpointState, n: int, reason: str = "HTTP 503") -> None:
    for _ in range(n):
        h.endpoint_fault(st, reason)


def test_breaker_opens_after_n_consecutive_failures_not_before(clock: Any) -> None:
    h = _health(clock, {"breaker": {"consecutive_failures": 3, "jitter": 0.0, "base_ejection_s": 30}})
    st = h.states[0]
    _fail(h, st, 2)
    assert st.breaker == "closed"
    _fail(h, st, 1, "connect refused")
    assert st.breaker == "open"
    assert st.open_until == pytest.approx(clock.now + 30)
    assert st.last_error == "connect refused"
    assert st.state_name(clock.now) == "open"
    # the other endpoint is untouched
    assert h.states[1].breaker == "closed"


def test_success_resets_the_consecutive_count(clock: Any) -> None:
    h = _health(clock, {"breaker": {"consecutive_failures": 3}})
    st = h.states[0]
    for _ in range(5):
        _fail(h, st, 2)
        h.success(st, trial=False)
    assert st.breaker == "closed"
    assert st.failures == 10


def _open_then_half_open(h: Health, st: EndpointState, clock: Any) -> bool:
    """Wait out the ejection and take a half-open trial slot."""
    clock.now = st.open_until
    return st.admit(clock.now)


def test_ejection_grows_with_repeated_ejections_within_jitter(clock: Any) -> None:
    base, cap, jitter = 10.0, 35.0, 0.1
    h = _health(
        clock,
        {"breaker": {"consecutive_failures": 2, "base_ejection_s": base, "max_ejection_s": cap, "jitter": jitter}},
    )
    st = h.states[0]
    _fail(h, st, 2)
    spans = [st.open_until - clock.now]
    for _ in range(4):
        assert _open_then_half_open(h, st, clock)
        assert st.breaker == "half_open"
        h.endpoint_fault(st, "trial failed")  # a failed trial re-opens at once
        st.release(True)
        assert st.breaker == "open"
        spans.append(st.open_until - clock.now)
    assert st.ejections == 5
    for k, span in enumerate(spans, 1):
        nominal = min(base * k, cap)
        assert nominal * (1 - jitter) <= span <= nominal * (1 + jitter), (k, span)
    assert spans[1] > spans[0] * (1 - jitter) / (1 + jitter) * 1.5  # roughly doubled
    assert spans[-1] <= cap * (1 + jitter)


def test_ejection_jitter_is_exact_for_a_given_random_draw(clock: Any) -> None:
    h = _health(clock, {"breaker": {"consecutive_failures": 1, "base_ejection_s": 20, "jitter": 0.25}})
    st = h.states[0]
    t = st.record_failure(clock.now, "x", rand=1.0)  # the top of the jitter range
    assert t is not None
    assert t.until == pytest.approx(clock.now + 25.0)
    st2 = h.states[1]
    st2.record_failure(clock.now, "x", rand=0.0)  # the bottom
    assert st2.open_until == pytest.approx(clock.now + 15.0)


def test_half_open_admits_at_most_permits(clock: Any) -> None:
    h = _health(clock, {"breaker": {"consecutive_failures": 1, "half_open_permits": 2}})
    st = h.states[0]
    _fail(h, st, 1)
    assert st.breaker == "open"
    clock.now = st.open_until + 0.01
    assert st.admit(clock.now)
    assert st.breaker == "half_open"
    assert st.admit(clock.now)
    assert not st.admit(clock.now)  # third trial refused
    assert not st.admit(clock.now)
    st.release(True)  # one trial ends (without a verdict): a slot frees up
    assert st.admit(clock.now)
    assert not st.admit(clock.now)


def test_closed_breaker_admits_freely_and_counts_inflight(clock: Any) -> None:
    st = _health(clock).states[0]
    for _ in range(10):
        assert st.admit(clock.now)
    assert st.inflight == 10
    for _ in range(10):
        st.release(False)
    assert st.inflight == 0
    st.release(False)
    assert st.inflight == 0  # never negative


def test_success_in_half_open_closes(clock: Any) -> None:
    h = _health(clock, {"breaker": {"consecutive_failures": 1}})
    got: list[Transition] = []
    h.listeners.append(got.append)
    st = h.states[0]
    _fail(h, st, 1)
    assert _open_then_half_open(h, st, clock)
    h.success(st, trial=True)
    st.release(True)
    assert st.breaker == "closed"
    assert st.state_name(clock.now) == "closed"
    assert [(t.old, t.new) for t in got] == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
    assert st.admit(clock.now) and st.admit(clock.now)  # no trial limit any more


def test_failure_in_half_open_reopens_longer(clock: Any) -> None:
    h = _health(clock, {"breaker": {"consecutive_failures": 1, "base_ejection_s": 10, "jitter": 0.0}})
    st = h.states[0]
    _fail(h, st, 1)
    first = st.open_until - clock.now
    assert _open_then_half_open(h, st, clock)
    h.endpoint_fault(st, "still broken")
    assert st.breaker == "open"
    assert st.open_until - clock.now == pytest.approx(2 * first)


def test_straggler_success_while_open_does_not_end_the_ejection(clock: Any) -> None:
    h = _health(clock, {"breaker": {"consecutive_failures": 2, "base_ejection_s": 30}})
    st = h.states[0]
    assert st.admit(clock.now)  # a long request starts while the endpoint looks fine
    _fail(h, st, 2)  # other requests fail: ejected for ~30 s
    assert st.breaker == "open"
    clock.advance(1)
    h.success(st, trial=False)  # the old request finishes fine
    st.release(False)
    assert st.state_name(clock.now) == "open"


def test_failure_rate_trips_over_minimum_volume(clock: Any) -> None:
    h = _health(
        clock,
        {"breaker": {"consecutive_failures": 1000, "failure_rate": 0.5, "min_requests": 10, "window_s": 30}},
    )
    st = h.states[0]
    # alternate success / failure: 50% failures, never two in a row
    for _ in range(4):
        h.success(st, trial=False)
        h.endpoint_fault(st, "500")
        clock.advance(0.5)
    h.success(st, trial=False)
    assert st.breaker == "closed"  # 9 requests: under the minimum volume
    h.endpoint_fault(st, "500")  # 10 requests, 5 failures: 50%
    assert st.breaker == "open"


def test_failure_rate_ignores_old_requests(clock: Any) -> None:
    h = _health(
        clock,
        {"breaker": {"consecutive_failures": 1000, "failure_rate": 0.5, "min_requests": 10, "window_s": 30}},
    )
    st = h.states[0]
    for _ in range(5):  # 9 requests, 5 failing: under the minimum volume, no trip
        h.endpoint_fault(st, "500")
    for _ in range(4):
        h.success(st, trial=False)
    assert st.breaker == "closed"
    clock.advance(31)  # all of that is outside the window now
    for _ in range(4):
        h.endpoint_fault(st, "500")
        h.success(st, trial=False)
    assert st.breaker == "closed"  # only 8 requests in the window
    assert len(st.window) == 8


def test_failure_rate_below_threshold_does_not_trip(clock: Any) -> None:
    h = _health(clock, {"breaker": {"consecutive_failures": 1000, "failure_rate": 0.5, "min_requests": 10}})
    st = h.states[0]
    for _ in range(30):  # 1 failure in 3
        h.success(st, trial=False)
        h.success(st, trial=False)
        h.endpoint_fault(st, "500")
    assert st.breaker == "closed"


# --------------------------------------------------------------------------- cooldowns


def test_cooldown_sets_an_absolute_deadline(clock: Any) -> None:
    h = _health(clock)
    st = h.states[0]
    h.cooldown(st, 20, "429 rate limited")
    assert st.quota.until == clock.now + 20
    assert st.quota.reason == "429 rate limited"
    assert st.state_name(clock.now) == "cooling"
    assert st.breaker == "closed"  # quota faults never touch the breaker
    clock.advance(21)
    assert st.state_name(clock.now) == "closed"


def test_cooldown_is_forward_only(clock: Any) -> None:
    h = _health(clock)
    st = h.states[0]
    h.cooldown(st, 60, "first")
    deadline = st.quota.until
    clock.advance(5)
    h.cooldown(st, 10, "shorter")  # would end at +15 < +60
    assert st.quota.until == deadline
    assert st.quota.reason == "first"
    h.cooldown(st, 120, "longer")
    assert st.quota.until == clock.now + 120
    assert st.quota.reason == "longer"


def test_cooldown_capped_by_max_retry_after(clock: Any) -> None:
    h = _health(clock, {"max_retry_after_s": 300})
    st = h.states[0]
    h.cooldown(st, 86400 * 365, "absurd Retry-After")
    assert st.quota.until == clock.now + 300
    h.cooldown(h.states[1], math.inf, "inf")
    assert h.states[1].quota.until == clock.now + 300


@pytest.mark.parametrize("bad", [-5.0, math.nan])
def test_cooldown_ignores_nonsense(clock: Any, bad: float) -> None:
    h = _health(clock)
    st = h.states[0]
    h.cooldown(st, bad, "garbage")
    assert not st.quota.until > clock.now
    assert st.state_name(clock.now) == "closed"


def test_quota_domain_shared_by_two_endpoints_cools_both(clock: Any) -> None:
    cat = Catalog.load(
        {
            "endpoints": [
                {
                    "id": "a",
                    "provider": "azure",
                    "region": "westeurope",
                    "base_url": "https://a/v1",
                    "models": ["m"],
                    "quota_domain": "acct-1",
                },
                {
                    "id": "b",
                    "provider": "azure",
                    "region": "swedencentral",
                    "base_url": "https://b/v1",
                    "models": ["m"],
                    "quota_domain": "acct-1",
                },
                {
                    "id": "c",
                    "provider": "azure",
                    "region": "francecentral",
                    "base_url": "https://c/v1",
                    "models": ["m"],
                },
            ]
        }
    )
    h = Health(cat, cat.policy(), clock=clock)
    a, b, c = h.states
    h.cooldown(a, 30, "429")
    assert a.state_name(clock.now) == "cooling"
    assert b.state_name(clock.now) == "cooling"
    assert c.state_name(clock.now) == "closed"
    assert a.quota is b.quota
    assert set(h.domains) == {"acct-1", "endpoint:c"}


# --------------------------------------------------------------------------- model presence


def test_model_presence_transitions(clock: Any) -> None:
    h = _health(clock)
    got: list[Transition] = []
    h.listeners.append(got.append)
    st = h.states[0]
    h.set_model_presence(st, frozenset({"m"}))
    h.set_model_presence(st, frozenset({"m"}))  # no change, no event
    h.set_model_presence(st, frozenset())
    assert [(t.old, t.new) for t in got] == [("serving", "missing"), ("missing", "serving")]
    assert st.missing_models == frozenset()


def test_a_name_never_listed_is_a_warning_not_an_exclusion(clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    h = _health(clock, n=1, models={"m": "served-m"})
    got: list[Transition] = []
    h.listeners.append(got.append)
    st = h.states[0]
    with caplog.at_level(logging.WARNING, "llm_multicloud.health"):
        # llama.cpp lists its model file, not the served name: never listed
        for _ in range(3):
            assert h.observe_listing(st, ["/models/smol.gguf"]) == ([], ["m"])
    assert st.missing_models == frozenset() and st.unlisted_models == {"m"}
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1  # once, not every round
    assert "'served-m'" in warned[0] and "'/models/smol.gguf'" in warned[0]
    assert got == []  # no transition: the endpoint keeps serving
    snap = st.to_dict(clock.now, 0.0)
    assert snap["unlisted_models"] == ["m"] and snap["models_listed"] == ["/models/smol.gguf"]


def test_a_model_listed_before_and_now_gone_is_taken_out(clock: Any) -> None:
    h = _health(clock, n=1, models={"m": "served-m"})
    got: list[Transition] = []
    h.listeners.append(got.append)
    st = h.states[0]
    assert h.observe_listing(st, ["/models/smol.gguf"]) == ([], ["m"])
    assert h.observe_listing(st, ["served-m"]) == ([], [])  # the alias got fixed
    assert h.observe_listing(st, ["other"]) == (["m"], [])  # listed before, gone now
    assert st.missing_models == {"m"}
    assert h.observe_listing(st, ["served-m", "other"]) == ([], [])
    assert [(t.old, t.new) for t in got] == [("serving", "missing"), ("missing", "serving")]
    assert "no longer lists" in got[0].reason


# --------------------------------------------------------------------------- listeners


def test_transitions_reach_listeners(clock: Any) -> None:
    h = _health(clock, {"breaker": {"consecutive_failures": 2}})
    got: list[Transition] = []
    h.listeners.append(got.append)
    st = h.states[0]
    _fail(h, st, 2, "HTTP 502")
    h.cooldown(h.states[1], 7, "429")
    h.cooldown(h.states[1], 9, "429 again")  # already cooling: no second transition
    assert len(got) == 2
    opened, cooling = got
    assert (opened.endpoint, opened.old, opened.new) == ("e0", "closed", "open")
    assert "HTTP 502" in opened.reason
    assert opened.at == clock.now
    assert opened.until == st.open_until
    assert (cooling.endpoint, cooling.new, cooling.until) == ("e1", "cooling", clock.now + 7)


def test_raising_listener_breaks_nothing(clock: Any, caplog: pytest.LogCaptureFixture) -> None:
    h = _health(clock, {"breaker": {"consecutive_failures": 1}})
    got: list[Transition] = []

    def broken(t: Transition) -> None:
        raise RuntimeError("hook bug")

    h.listeners.extend([broken, got.append])
    st = h.states[0]
    with caplog.at_level(logging.INFO, logger="llm_multicloud.health"):
        h.endpoint_fault(st, "boom")
    assert st.breaker == "open"
    assert len(got) == 1  # the next listener still ran
    assert any("listener failed" in r.getMessage() for r in caplog.records)
    assert any(r.levelno == logging.WARNING and "closed -> open" in r.getMessage() for r in caplog.records)


def test_snapshot_dict(clock: Any) -> None:
    h = _health(clock, {"breaker": {"consecutive_failures": 1}})
    st = h.states[0]
    st.observe_ttft(100.0, clock.now)
    h.endpoint_fault(st, "boom")
    d = st.to_dict(clock.now, wall=1_700_000_000.0)
    assert d["id"] == "e0"
    assert d["state"] == "open"
    assert d["reason"] == "boom"
    assert d["until"] == pytest.approx(1_700_000_000.0 + (st.open_until - clock.now), abs=1e-3)
    assert d["ttft_ms"] == 100.0
    assert d["failures"] == 1


def test_one_outlier_is_forgotten_by_the_next_sample(clock: Any) -> None:
    """A jump is applied at once but provisionally: the next sample is judged against
    the estimate from before it, so one 1.5 s first token does not banish a 10 ms region."""
    st = _health(clock).states[0]
    st.observe_ttft(10.0, clock.now)
    clock.advance(0.1)
    st.observe_ttft(1500.0, clock.now)
    assert st.ttft_ms == 1500.0 and st.ttft_before_jump == 10.0  # avoided at once...
    clock.advance(0.1)
    st.observe_ttft(11.0, clock.now)
    assert st.ttft_ms == 11.0 and st.ttft_before_jump is None  # ...and back with the next sample


def test_a_jump_confirmed_by_the_next_sample_stays(clock: Any) -> None:
    st = _health(clock).states[0]
    st.observe_ttft(10.0, clock.now)
    st.observe_ttft(300.0, clock.now)
    st.observe_ttft(290.0, clock.now)  # really slow now
    assert st.ttft_ms == 290.0 and st.ttft_before_jump is None
    st.observe_ttft(280.0, clock.now)  # no longer a jump: ordinary blending
    assert st.ttft_ms == pytest.approx(290.0, abs=0.5)


def test_small_rises_are_not_jumps(clock: Any) -> None:
    st = _health(clock).states[0]
    st.observe_ttft(100.0, clock.now)
    st.observe_ttft(190.0, clock.now)
    assert st.ttft_ms == 190.0 and st.ttft_before_jump is None


def test_a_404_for_a_never_listed_name_takes_it_out_until_it_is_listed(clock: Any) -> None:
    h = _health(clock, n=1, models={"m": "served-m"})
    got: list[Transition] = []
    h.listeners.append(got.append)
    st = h.states[0]
    assert not h.served_name_refused(st, "m")  # no listing seen yet: a 404 is the caller's
    assert h.observe_listing(st, ["/models/smol.gguf"]) == ([], ["m"])
    assert h.served_name_refused(st, "m")  # a real request settled the doubt
    assert st.missing_models == {"m"} and st.failures == 0 and st.breaker == "closed"
    assert h.observe_listing(st, ["/models/smol.gguf"]) == (["m"], ["m"])  # stays out while unlisted
    assert st.missing_models == {"m"}
    assert h.observe_listing(st, ["served-m"]) == ([], [])  # the server lists it now: back in
    assert st.missing_models == frozenset() and st.refused_models == frozenset()
    assert [(t.old, t.new) for t in got] == [("serving", "missing"), ("missing", "serving")]
    assert "never listed" in got[0].reason and "404" in got[0].reason
