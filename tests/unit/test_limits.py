"""Capacity limits: token buckets (limits.py), their catalog form, and the router's use."""

from __future__ import annotations

from typing import Any

import pytest

from llm_multicloud.catalog import Catalog
from llm_multicloud.errors import CatalogError
from llm_multicloud.limits import Bucket, Limits, estimate_tokens

from .test_router import NOW, Setup, _ep, ids


def test_bucket_holds_burst_s_of_the_limit_and_refills_continuously() -> None:
    b = Bucket("d", Limits(rpm=60, tpm=6000, burst_s=10), now=0.0)  # 1 req/s, 100 tok/s
    assert b.to_dict(0.0)["remaining_requests"] == 10 and b.to_dict(0.0)["remaining_tokens"] == 1000
    for _ in range(10):
        assert b.reserve(0.0, 50)
    assert not b.fits(0.0, 50) and not b.reserve(0.0, 50)  # rpm spent
    b.ack(0.0)  # the server answered: it counted them (the refill runs from its first answer)
    assert b.ready_at(0.0, 50) == pytest.approx(1.0)
    assert b.fits(1.0, 50) and b.reserve(1.0, 50)
    # tokens: 1000 - 11 x 50 + 100 refilled = 550 left
    assert b.to_dict(1.0)["remaining_tokens"] == pytest.approx(550)
    assert b.to_dict(1.0)["reserved_tokens"] == 550


def test_settlement_returns_the_difference_and_charges_an_underestimate() -> None:
    b = Bucket("d", Limits(rpm=None, tpm=600, burst_s=60), now=0.0)  # 600 tokens, 10/s
    assert b.reserve(0.0, 300)
    b.settle(300, 120)  # it used less: 180 back
    assert b.to_dict(0.0)["remaining_tokens"] == pytest.approx(480)
    assert b.reserve(0.0, 100)
    b.settle(100, 250)  # it used more: the extra 150 comes off
    d = b.to_dict(0.0)
    assert d["remaining_tokens"] == pytest.approx(230) and d["reserved_tokens"] == 0 and d["settled_tokens"] == 370
    # a request larger than the whole bucket goes only when the bucket is full
    assert not b.fits(0.0, 5000)
    assert b.fits(100.0, 5000)


def test_share_divides_the_limit_while_replicas_cannot_coordinate() -> None:
    b = Bucket("d", Limits(rpm=120, tpm=None, burst_s=30), now=0.0)
    b.set_share(0.25, 0.0)
    d = b.to_dict(0.0)
    assert d["remaining_requests"] == 15 and d["mode"] == "local 1/4"
    assert b.ready_at(0.0, 1) == 0.0
    for _ in range(15):
        assert b.reserve(0.0, 1)
    assert b.ready_at(0.0, 1) == pytest.approx(2.0)  # 0.5 req/s for this replica


def test_estimate_is_prompt_plus_max_tokens() -> None:
    assert estimate_tokens(100, 50) == 150
    assert estimate_tokens(100, None) == 356


def test_catalog_limits_are_validated_and_shared_by_the_quota_domain() -> None:
    cat = Catalog.load(
        {
            "endpoints": [
                _ep("a", limits={"tpm": 1000}, quota_domain="acct"),
                _ep("b", quota_domain="acct"),
                _ep("c"),
            ]
        }
    )
    assert cat.endpoints[0].limits == Limits(None, 1000, 10.0)
    from llm_multicloud.health import Health

    h = Health(cat, cat.policy(), clock=lambda: NOW)
    assert h.states[0].bucket is h.states[1].bucket is not None and h.states[2].bucket is None
    with pytest.raises(CatalogError, match=r"limits.*give rpm, tpm or both"):
        Catalog.load({"endpoints": [_ep("a", limits={})]})
    with pytest.raises(CatalogError, match="same quota domain 'acct'"):
        Catalog.load(
            {
                "endpoints": [
                    _ep("a", limits={"tpm": 1000}, quota_domain="acct"),
                    _ep("b", limits={"tpm": 2000}, quota_domain="acct"),
                ]
            }
        )


def test_router_skips_an_endpoint_over_its_limit_and_waits_when_nothing_else_can_serve() -> None:
    s = Setup(
        [_ep("a", limits={"rpm": 60, "burst_s": 1}), _ep("b", limits={"rpm": 60, "burst_s": 1})],
        {"limits": {"headroom": 1.0}},
    )
    assert sorted(ids(s.plan())) == ["a", "b"]
    assert s.st("a").bucket.reserve(NOW, 10)
    s.st("a").bucket.ack(NOW)  # answered at once
    plan = s.plan(max_tokens=10)
    assert ids(plan) == ["b"]
    (x,) = plan.excluded
    assert x.kind == "limited" and "rpm left" in x.reason and "room in 1.00s" in x.reason
    assert s.st("b").bucket.reserve(NOW, 10)
    s.st("b").bucket.ack(NOW)
    plan = s.plan(max_tokens=10)
    assert plan.candidates == [] and plan.wait_until == pytest.approx(NOW + 1.0)
    assert ids(s.plan(max_tokens=10, now=NOW + 1.0)) != []


def test_a_cold_start_lag_does_not_put_the_client_ahead_of_the_server() -> None:
    """After an idle spell both buckets are full. The client's first reservations
    reach the server only after a cold-start lag (new connections, a busy machine);
    a client that refilled from its reservation would run ahead of the server by that
    lag. Virtual time, the fleet's own server-side limiter: not one refusal."""
    from llm_multicloud.fleet.capacity import RateLimiterSim
    from llm_multicloud.fleet.spec import RateLimits

    clock = [0.0]
    server = RateLimiterSim(RateLimits(rpm=300, burst_s=2), clock=lambda: clock[0])  # 10, 5/s
    client = Bucket("d", Limits(rpm=300, tpm=None, burst_s=2), now=-60.0, headroom=0.95)
    arrivals: list[float] = []
    answers: list[float] = []
    refused = sent = 0
    t = 0.0
    while t < 6.0:
        for a in sorted(x for x in arrivals if x <= t):  # the server counts each on arrival
            clock[0] = a
            refused += server.take(1) is not None
        arrivals = [x for x in arrivals if x > t]
        for b in sorted(x for x in answers if x <= t):  # ...and answers a little later
            client.ack(b)
        answers = [x for x in answers if x > t]
        while client.reserve(t, 1):
            lag = 1.0 if t < 0.5 else 0.01  # the cold start: the first requests arrive 1 s late
            arrivals.append(t + lag)
            answers.append(t + lag + 0.005)
            sent += 1
        t = round(t + 0.01, 2)
    assert refused == 0, f"{refused} of {sent} refused"
    assert sent >= 10 + 5 * 5 * 0.9  # the burst, then the refill: the quota stays in use


def test_fleet_prefill_lanes_queue_uncached_prompts() -> None:
    """The fleet's prefix cache with ``prefill_lanes``: a region prefills that many
    prompts at once and the rest queue (what makes a region everyone sends to slow,
    so that B7's router without affinity spreads its load)."""
    from llm_multicloud.fleet.capacity import PrefixCacheSim
    from llm_multicloud.fleet.spec import PrefixCache

    clock = [0.0]
    one = PrefixCacheSim(PrefixCache(prefill_ms_per_token=1.0, prefill_lanes=1), clock=lambda: clock[0])
    assert one.prefill_s(100) == pytest.approx(0.1)
    assert one.prefill_s(100) == pytest.approx(0.2)  # behind the first
    clock[0] = 0.15
    assert one.prefill_s(10) == pytest.approx(0.06)  # the lane frees at 0.2
    two = PrefixCacheSim(PrefixCache(prefill_ms_per_token=1.0, prefill_lanes=2), clock=lambda: clock[0])
    assert [round(two.prefill_s(100), 3) for _ in range(3)] == [0.1, 0.1, 0.2]
    unlimited = PrefixCacheSim(PrefixCache(prefill_ms_per_token=1.0), clock=lambda: clock[0])
    assert [unlimited.prefill_s(100) for _ in range(3)] == [pytest.approx(0.1)] * 3


def _kv_cache(**kw: Any) -> Any:
    from llm_multicloud.fleet.capacity import PrefixCacheSim
    from llm_multicloud.fleet.spec import PrefixCache

    return PrefixCacheSim(PrefixCache(**kw), clock=lambda: 0.0)


def test_fleet_prefix_cache_capacity_is_counted_in_tokens() -> None:
    """``kv_tokens``: a long context document fills the cache as its tokens do (a
    GPU's KV memory), not as one entry like a short question; ``max_entries`` alone
    keeps counting entries, whatever their size."""
    a, b = (["system\x1fcontext a", "user\x1fq0"], [80, 5]), (["system\x1fcontext b", "user\x1fq0"], [60, 5])
    kv = _kv_cache(kv_tokens=100)
    assert kv.admit(*a) == 0 and kv.state()["tokens"] == 85
    assert kv.admit(*a) == 85  # held
    assert kv.admit(*b) == 0  # 150 tokens > 100: a's two entries go, least recently used first
    st = kv.state()
    assert (st["tokens"], st["entries"], st["evictions"], st["evicted_tokens"]) == (65, 2, 2, 85)
    assert kv.admit(*a) == 0  # evicted: prefilled again (and b goes in turn)
    assert kv.admit(*a) == 85
    entries = _kv_cache(max_entries=4)
    for _ in range(2):
        entries.admit(*a)
        entries.admit(*b)
    assert entries.admit(*a) == 85 and entries.state()["evictions"] == 0  # 4 entries, 150 tokens


def test_fleet_prefix_cache_evicts_a_prefix_from_its_tail_and_the_least_recent_first() -> None:
    """A prompt larger than the cache keeps its head (what a later prompt can reuse;
    a tail without its head could never hit); between conversations the one used
    least recently goes first."""
    kv = _kv_cache(kv_tokens=100)
    long = (["s\x1fdoc", "u\x1fq0", "a\x1fanswer"], [50, 30, 40])
    assert kv.admit(*long) == 0
    assert kv.state()["tokens"] == 80  # the 40-token tail went
    assert kv.admit(*long) == 80  # the head still hits
    kv = _kv_cache(kv_tokens=100)
    convs = [([f"s\x1fdoc {c}"], [30]) for c in "abcd"]
    for c in convs[:3]:
        kv.admit(*c)
    assert kv.admit(*convs[0]) == 30  # a used again: b is now the least recent
    kv.admit(*convs[3])  # 120 tokens: one of 30 goes
    assert [kv.admit(*convs[i]) for i in (0, 2, 3)] == [30, 30, 30]
    assert kv.admit(*convs[1]) == 0


def test_fleet_prefix_cache_spec_rejects_a_zero_capacity() -> None:
    from pydantic import ValidationError

    from llm_multicloud.fleet.spec import PrefixCache

    with pytest.raises(ValidationError, match="kv_tokens"):
        PrefixCache(kv_tokens=0)
