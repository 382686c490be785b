"""The router's health index plans exactly what the reference scan plans.

``Router(indexed=True)`` keeps, per (model, constraints, near), the kind of every
compliant endpoint and a lower bound of its score, updated from the change log
(``llm_multicloud.changes``) and from the cooldown and breaker timers; a plan walks
only the bounds that can still reach its first places. ``indexed = False`` is the
reference: every endpoint's health read on every plan. Here one indexed router lives
through random sequences of health changes — made through Health's and the states'
own methods and by plain writes, affinity keys, quota-domain cooldowns, credentials going away,
drains, model listings, capacity buckets, load, and time moving on past timers and
staleness — and after every change its plan must be the reference plan computed from
scratch, and never contain an endpoint outside the request's residency."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_multicloud.catalog import Catalog
from llm_multicloud.context import UNCONSTRAINED
from llm_multicloud.health import Health
from llm_multicloud.router import Router, _Index, complies

from .test_router_topk import _summary

REGIONS = ["us-east-1", "eu-west-1", "eu-central-1", "ap-northeast-1"]


def _catalog(n: int, rng: random.Random) -> Catalog:
    eps: list[dict[str, Any]] = []
    for i in range(n):
        e: dict[str, Any] = {
            "id": f"e{i}",
            "provider": "aws",
            "region": rng.choice(REGIONS),
            "base_url": f"https://e{i}.example.invalid/v1",
            "models": ["m", "other"] if rng.random() < 0.5 else ["m"],
        }
        if rng.random() < 0.8:
            price = rng.choice([0.1, 0.2, 0.5])
            e["pricing"] = {"input_per_mtok": price, "output_per_mtok": price * 2}
        if rng.random() < 0.2:
            e["max_concurrency"] = 2
        if rng.random() < 0.1:
            e["limits"] = {"rpm": 60, "burst_s": 1}
        if rng.random() < 0.2:
            e["quota_domain"] = f"acct{rng.randrange(2)}"  # endpoints that cool down together
        eps.append(e)
    # one limits definition per shared quota domain (the catalog's rule)
    seen: set[str] = set()
    for e in eps:
        dom = e.get("quota_domain")
        if dom is not None and "limits" in e:
            if dom in seen:
                del e["limits"]
            seen.add(dom)
    for e in eps:
        if e.get("quota_domain") in seen and "limits" not in e:
            e.pop("quota_domain")
    return Catalog.load({"endpoints": eps})


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _change(rng: random.Random, health: Health, clock: Clock) -> None:
    """One random health change, the way the library (or a test) makes it."""
    s = rng.choice(health.states)
    what = rng.randrange(16)
    if what == 0:
        s.observe_ttft(rng.choice([15.0, 20.0, 50.0, 200.0]), clock.t - rng.choice([0.0, 1.0]))
    elif what == 1:
        s.admit(clock.t)
    elif what == 2:
        s.release(False)
    elif what == 3:
        health.endpoint_fault(s, "HTTP 500")
    elif what == 4:
        health.success(s, trial=rng.random() < 0.5)
    elif what == 5:
        health.cooldown(s, rng.choice([1.0, 5.0, 30.0]), "HTTP 429")
    elif what == 6:
        if s.drained is None:
            health.drain(s, "maintenance")
        else:
            health.undrain(s)
    elif what == 7:
        health.set_model_presence(s, frozenset({"m"}) if rng.random() < 0.5 else frozenset())
    elif what == 8:
        s.endpoint.credential.unavailable = "token refresh failed" if rng.random() < 0.5 else None
    elif what == 9:
        s.observe_rtt(rng.choice([5.0, 30.0]))
    elif what == 10:
        s.inflight = rng.randrange(4)  # a plain write (tests, shared state)
    elif what == 11:
        s.remote_inflight, s.queue_waiting = rng.randrange(3), rng.choice([0.0, 0.5, 2.0])
    elif what == 12:
        s.breaker, s.open_until = "open", clock.t + rng.choice([0.5, 5.0])
    elif what == 13 and s.bucket is not None:
        if s.bucket.reserve(clock.t, 10):
            s.bucket.ack(clock.t)
    elif what == 14:
        s.observe_ttft(rng.choice([100.0, 400.0]), clock.t)  # maybe a one-sample jump
    else:
        clock.t += rng.choice([0.001, 0.1, 1.0, 6.0, 31.0])  # timers run out, samples go stale


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["latency", "balanced"]),
    st.integers(2, 30),
    st.integers(1, 8),
    st.integers(0, 2**32),
    st.booleans(),
)
def test_indexed_plans_equal_the_reference_through_random_health_changes(
    strategy: str, n: int, limit: int, salt: int, slo: bool
) -> None:
    rng = random.Random(salt)
    cat = _catalog(n, rng)
    pol: dict[str, Any] = {
        "strategy": strategy,
        "near_equal": rng.choice([0.0, 0.1, 0.5]),
        "slack": rng.choice([0.0, 0.25]),
        "slack_ms": rng.choice([0.0, 20.0]),
        "explore": rng.choice([0.0, 0.5, 1.0]),
        "recheck": rng.choice([0.0, 0.5, 1.0]),
        "limits": {"headroom": 1.0},
        "affinity": {"slack": rng.choice([0.0, 1.0]), "slack_ms": rng.choice([0.0, 30.0, 250.0])},
    }
    if slo:
        pol["slo_ms"] = rng.choice([5.0, 50.0])
    policy = cat.policy(pol)
    clock = Clock()
    health = Health(cat, policy, clock=clock)
    indexed, reference = Router(cat, policy), Router(cat, policy)
    indexed.index_from, reference.indexed = 1, False  # (the index serves every size here)
    keys = [UNCONSTRAINED, UNCONSTRAINED.narrow("EU"), UNCONSTRAINED.narrow("DE", near="eu-west-1")]
    for _ in range(40):
        for _ in range(rng.randrange(4)):  # (none: the index may reuse its last walk)
            _change(rng, health, clock)
        c = rng.choice(keys)
        kw: dict[str, Any] = {
            "seed": rng.random(),
            "input_tokens": rng.randrange(1000),
            "max_tokens": rng.choice([None, 10, 100]),
            "limit": limit if rng.random() < 0.8 else limit + 3,
            "affinity": (rng.getrandbits(64), rng.choice(["session", "prefix"])) if rng.random() < 0.4 else None,
        }
        try:
            want = reference.plan("m", c, health.states, clock.t, **kw)
        except Exception as exc:  # nothing compliant: both refuse the same way
            try:
                indexed.plan("m", c, health.states, clock.t, **kw)
            except Exception as exc2:
                assert repr(exc2) == repr(exc)
                continue
            raise AssertionError(f"the reference refused ({exc!r}), the index planned") from exc
        got = indexed.plan("m", c, health.states, clock.t, **kw)
        assert _summary(got) == _summary(want)
        assert all(complies(x.endpoint, c) for x in got.candidates)  # residency: never a leak


def test_the_index_serves_the_executors_plans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a silent fallback: a limited latency plan over tracked states builds an index
    and, with nothing changed, reads no endpoint again (the log is empty for it)."""
    rng = random.Random(3)
    cat = _catalog(40, rng)
    policy = cat.policy({"strategy": "latency"})
    health = Health(cat, policy, clock=lambda: 1000.0)
    router = Router(cat, policy)
    router.plan("m", UNCONSTRAINED, health.states, 1000.0, limit=4)
    (ix,) = router._index.values()
    calls = 0
    real = _Index.classify

    def counting(self: _Index, j: int, now: float, update: bool) -> None:
        nonlocal calls
        calls += 1
        real(self, j, now, update)

    monkeypatch.setattr(_Index, "classify", counting)
    router.plan("m", UNCONSTRAINED, health.states, 1000.1, limit=4)  # (bounds are tightened each decay_s / 64)
    assert calls == 0
    health.states[0].inflight += 1
    router.plan("m", UNCONSTRAINED, health.states, 1000.1, limit=4)
    assert calls == (1 if ix.where.get(health.states[0]) is not None else 0)


def test_a_cooldown_takes_out_every_endpoint_of_its_quota_domain_at_once() -> None:
    """A 429 cools the whole quota domain down: the index re-reads the domain's
    endpoints (the domain is logged, not each state), on the very next plan."""
    eps = [
        {
            "id": f"e{i}",
            "provider": "aws",
            "region": "us-east-1",
            "base_url": f"https://e{i}.example.invalid/v1",
            "models": ["m"],
            "quota_domain": "acct" if i < 4 else f"own{i}",
        }
        for i in range(6)
    ]
    cat = Catalog.load({"endpoints": eps})
    policy = cat.policy({"strategy": "latency"})
    clock = Clock()
    health = Health(cat, policy, clock=clock)
    indexed, reference = Router(cat, policy), Router(cat, policy)
    indexed.index_from, reference.indexed = 1, False
    indexed.plan("m", UNCONSTRAINED, health.states, clock.t, limit=3)  # builds the index
    health.cooldown(health.states[0], 5.0, "HTTP 429")
    got = indexed.plan("m", UNCONSTRAINED, health.states, clock.t, limit=3)
    assert _summary(got) == _summary(reference.plan("m", UNCONSTRAINED, health.states, clock.t, limit=3))
    assert {x.endpoint.id for x in got.excluded if x.kind == "cooling"} == {"e0", "e1", "e2", "e3"}
    assert {c.endpoint.id for c in got.candidates} == {"e4", "e5"}


def test_samples_that_age_past_staleness_between_re_reads_become_explorable() -> None:
    """Exploration's list (endpoints without a sample newer than 3 x decay_s) is kept
    as time passes, not rebuilt per plan: a sample that ages out between two re-reads
    of its row (its bound still holds) makes the row explorable on the next plan."""
    rng = random.Random(5)
    cat = _catalog(40, rng)
    policy = cat.policy({"strategy": "latency", "explore": 1.0, "recheck": 0.0})
    clock = Clock()
    health = Health(cat, policy, clock=clock)
    for i, s in enumerate(health.states):
        s.observe_ttft(20.0 + i, clock.t - i * 0.04)
    indexed, reference = Router(cat, policy), Router(cat, policy)
    indexed.index_from, reference.indexed = 1, False
    clock.t += 29.5  # every horizon has passed: every row is read again, all still fresh
    explored = set()
    while clock.t < 1031.7:
        kw: dict[str, Any] = {"seed": rng.random(), "limit": 3}
        got = indexed.plan("m", UNCONSTRAINED, health.states, clock.t, **kw)
        assert _summary(got) == _summary(reference.plan("m", UNCONSTRAINED, health.states, clock.t, **kw))
        explored |= {c.endpoint.id for c in got.candidates if c.note.startswith("exploration")}
        clock.t += 0.05
    assert len(explored) > 5  # rows aged into the list one by one, and were picked


def test_plans_from_many_threads_while_health_changes_stay_exact() -> None:
    """Sync requests plan on their callers' threads: the index, its score cache, its
    front and its last walk are read and grown under the index's lock (a thread that
    finds it taken scans), so plans made from many threads while another thread
    changes health never fail, never leave residency, and the index that comes out
    plans what the reference plans."""
    import threading

    rng = random.Random(11)
    cat = _catalog(60, rng)
    policy = cat.policy({"strategy": "balanced", "explore": 0.5, "recheck": 0.5})
    clock = Clock()
    health = Health(cat, policy, clock=clock)
    indexed, reference = Router(cat, policy), Router(cat, policy)
    indexed.index_from, reference.indexed = 1, False
    eu = UNCONSTRAINED.narrow("EU")
    failures: list[BaseException] = []
    stop = threading.Event()

    def planner(seed: int) -> None:
        r = random.Random(seed)
        try:
            for _ in range(300):
                c = r.choice([UNCONSTRAINED, eu])
                try:
                    got = indexed.plan("m", c, health.states, clock.t, seed=r.random(), limit=4)
                except Exception as exc:  # nothing compliant and usable: the reference's refusal too
                    if "RoutingError" not in type(exc).__name__:
                        raise
                    continue
                assert all(complies(x.endpoint, c) for x in got.candidates)
        except BaseException as exc:
            failures.append(exc)

    def changer() -> None:
        r = random.Random(12)
        try:
            while not stop.is_set():
                _change(r, health, clock)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=planner, args=(i,)) for i in range(6)]
    mover = threading.Thread(target=changer)
    mover.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    mover.join()
    assert not failures, failures
    for c in (UNCONSTRAINED, eu):  # quiescent: the index that lived through it is exact
        for seed in (0.1, 0.5, 0.9):
            try:
                want = reference.plan("m", c, health.states, clock.t, seed=seed, limit=4)
            except Exception:
                continue
            assert _summary(indexed.plan("m", c, health.states, clock.t, seed=seed, limit=4)) == _summary(want)


def _twins(n: int, pol: dict[str, Any]) -> tuple[Health, Router, Router, Clock]:
    rng = random.Random(n)
    cat = _catalog(n, rng)
    policy = cat.policy(pol)
    clock = Clock()
    health = Health(cat, policy, clock=clock)
    indexed, reference = Router(cat, policy), Router(cat, policy)
    indexed.index_from, reference.indexed = 1, False
    return health, indexed, reference, clock


def _same(health: Health, indexed: Router, reference: Router, t: float, seeds: int = 8) -> None:
    for i in range(seeds):
        kw: dict[str, Any] = {"seed": (i + 0.5) / seeds, "limit": 3}
        want = reference.plan("m", UNCONSTRAINED, health.states, t, **kw)
        assert _summary(indexed.plan("m", UNCONSTRAINED, health.states, t, **kw)) == _summary(want)


def test_a_row_read_again_before_its_horizon_is_still_read_at_its_new_one() -> None:
    """A row keeps one entry in the horizon heap, at its earliest horizon: when that
    passes and the row was read again meanwhile (its bound now holds longer), the
    entry goes back in at the new horizon; the row is read then, not never."""
    health, indexed, reference, clock = _twins(40, {"strategy": "latency", "explore": 0.0, "recheck": 0.0})
    for s in health.states:
        s.observe_ttft(400.0, clock.t)  # far above the baseline: the prediction decays
    _same(health, indexed, reference, clock.t)
    clock.t += 0.5
    for s in health.states:
        s.inflight = 0  # read again: a later horizon, the earlier entry stays
    _same(health, indexed, reference, clock.t)
    clock.t += 4.6  # some first horizons passed, their rows' new ones not yet
    _same(health, indexed, reference, clock.t)
    clock.t += 60.0  # every prediction is at its baseline now: the bounds must say so
    _same(health, indexed, reference, clock.t)


def test_a_newer_sample_keeps_its_row_out_of_exploration_until_it_is_stale_too() -> None:
    """One staleness entry per row, at its oldest sample time: when it ages out and the
    row has a newer sample, the row goes back in at that sample's time and becomes
    explorable when that one is stale."""
    health, indexed, reference, clock = _twins(40, {"strategy": "latency", "explore": 1.0, "recheck": 0.0})
    for s in health.states:
        s.observe_ttft(100.0, clock.t)
    _same(health, indexed, reference, clock.t)
    clock.t += 1.0
    for s in health.states:
        s.observe_ttft(100.0, clock.t)  # newer samples: the oldest entries stay
    _same(health, indexed, reference, clock.t)
    clock.t += 29.5  # the first samples are stale, the newer ones not yet
    _same(health, indexed, reference, clock.t)
    clock.t += 1.0  # now they are (no horizon re-read in between)
    _same(health, indexed, reference, clock.t)


@pytest.mark.parametrize("strategy", ["latency", "balanced"])
@pytest.mark.parametrize("n", [6, 12, 40])
def test_the_front_through_a_sample_and_a_load_change_before_every_plan(strategy: str, n: int) -> None:
    """What B1's churn rows do (a finished request's TTFT sample and a new in-flight
    count on two random endpoints before each plan): bounds jump both ways, so the
    front's limit is often an old bound of a row that moved; every plan stays exact."""
    rng = random.Random(n)
    eps = [
        {
            "id": f"e{i}",
            "provider": "aws",
            "region": rng.choice(REGIONS),
            "base_url": f"https://e{i}.example.invalid/v1",
            "models": ["m"],
            "pricing": {"input_per_mtok": 0.1 + 0.01 * (i % 7), "output_per_mtok": 0.3 + 0.02 * (i % 5)},
        }
        for i in range(n)
    ]
    cat = Catalog.load({"endpoints": eps})
    policy = cat.policy({"strategy": strategy})
    clock = Clock()
    health = Health(cat, policy, clock=clock)
    indexed, reference = Router(cat, policy), Router(cat, policy)
    indexed.index_from, reference.indexed = 1, False
    for s in health.states:
        s.observe_ttft(rng.uniform(20.0, 300.0), clock.t)
    for _ in range(600):
        for _ in range(2):
            s = rng.choice(health.states)
            s.observe_ttft(rng.uniform(20.0, 300.0), clock.t)
            s.inflight = rng.randrange(4)
        clock.t += rng.choice([0.00002, 0.00002, 0.00002, 0.003])  # mostly within one quantum
        kw: dict[str, Any] = {"seed": rng.random(), "limit": rng.choice([1, 3, 7])}
        want = reference.plan("m", UNCONSTRAINED, health.states, clock.t, **kw)
        assert _summary(indexed.plan("m", UNCONSTRAINED, health.states, clock.t, **kw)) == _summary(want)
