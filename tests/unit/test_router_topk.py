"""The router's top-k path chooses exactly what its reference, a full stable sort, chooses.

``Router._order_top`` (large usable sets with a ``limit``: the executor's case) orders
only what can reach the first places or decide the power of two choices;
``Router._order_sorted`` sorts everything (small sets, and ``explain``). Scores and
prices are drawn from small sets so that ties, where a careless selection differs
from a stable sort, are common."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_multicloud.catalog import Catalog
from llm_multicloud.context import UNCONSTRAINED
from llm_multicloud.health import Health
from llm_multicloud.router import Plan, Router

STRATEGIES = ["latency", "balanced", "cost", "weighted", "ordered"]


def _endpoints(n: int, rng: random.Random) -> list[dict[str, Any]]:
    eps: list[dict[str, Any]] = []
    for i in range(n):
        e: dict[str, Any] = {
            "id": f"e{i}",
            "provider": "aws",
            "region": rng.choice(["us-east-1", "eu-west-1", "eu-central-1"]),
            "base_url": f"https://e{i}.example.invalid/v1",
            "models": ["m"],
            "weight": rng.choice([1.0, 2.0]),
        }
        if rng.random() < 0.8:  # some endpoints have no price (ranked last by cost)
            price = rng.choice([0.1, 0.2, 0.5])
            e["pricing"] = {"input_per_mtok": price, "output_per_mtok": price * 2}
        if rng.random() < 0.15:
            e["max_concurrency"] = 2
        eps.append(e)
    return eps


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    pol: dict[str, Any] = {
        "strategy": draw(st.sampled_from(STRATEGIES)),
        "near_equal": draw(st.sampled_from([0.0, 0.1, 0.5])),
        "slack": draw(st.sampled_from([0.0, 0.25, 1.0])),
        "slack_ms": draw(st.sampled_from([0.0, 20.0])),
    }
    if draw(st.booleans()):
        pol["slo_ms"] = draw(st.sampled_from([5.0, 50.0, 150.0]))  # 5 ms: an SLO nobody meets
    return pol


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    policies(),
    st.integers(2, 60),
    st.integers(1, 10),
    st.floats(0.0, 1.0, exclude_max=True),
    st.integers(0, 5000),
    st.integers(0, 2**32),
)
def test_top_k_order_equals_full_stable_sort(
    pol: dict[str, Any], n: int, k: int, seed: float, input_tokens: int, salt: int
) -> None:
    rng = random.Random(salt)
    cat = Catalog.load({"endpoints": _endpoints(n, rng)})
    router = Router(cat, cat.policy(pol))
    eps = list(cat.endpoints)
    rng.shuffle(eps)  # scan order need not be catalog order
    scores = [rng.choice([10.0, 20.0, 21.0, 40.0, 100.0]) * rng.choice([1.0, 2.0, 3.0]) for _ in eps]
    want, want_note = router._order_sorted(scores, eps, seed, input_tokens, 100)
    got, got_note = router._order_top(scores, eps, seed, input_tokens, 100, min(k, n))
    assert len(got) >= min(k, n)
    assert got[:k] == want[:k]
    assert got_note == want_note


def _summary(plan: Plan) -> tuple[Any, ...]:
    return (
        [(c.endpoint.id, c.predicted_ms, c.score, c.cost_usd, c.note, c.readmitted) for c in plan.candidates],
        [(x.endpoint.id, x.reason, x.kind) for x in plan.excluded],
        plan.notes,
        plan.panic,
        plan.wait_until,
        plan.affinity,
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), st.integers(2, 40), st.integers(1, 8), st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 2**32))
def test_fast_plan_is_the_reference_plan(pol: dict[str, Any], n: int, limit: int, seed: float, salt: int) -> None:
    """Through ``plan`` with random health (samples fresh, stale and jumped, load, full
    endpoints, open breakers, drains, affinity, exploration and rechecks): the top-k
    path gives the reference path's plan, and a limited plan is the first candidates of
    the unlimited (``explain``) one with the same exclusions."""
    rng = random.Random(salt)
    cat = Catalog.load({"endpoints": _endpoints(n, rng)})
    pol = {**pol, "explore": rng.choice([0.0, 0.5, 1.0]), "recheck": rng.choice([0.0, 0.5, 1.0])}
    policy = cat.policy(pol)
    health = Health(cat, policy, clock=lambda: 1000.0)
    for s in health.states:
        if rng.random() < 0.7:
            s.ttft_ms, s.ttft_at = rng.choice([20.0, 22.0, 50.0]), 1000.0 - rng.choice([0.1, 1.0, 100.0])
            if rng.random() < 0.3:
                s.ttft_before_jump = 10.0
        if rng.random() < 0.3:
            s.rtt_ms = rng.choice([5.0, 30.0])
        s.inflight = rng.randrange(3)
        if rng.random() < 0.15:
            s.breaker, s.open_until = "open", 1000.0 + rng.choice([5.0, 10.0])
        if rng.random() < 0.05:
            s.drained = "maintenance"
    c = UNCONSTRAINED if rng.random() < 0.5 else UNCONSTRAINED.narrow("EU")
    kw: dict[str, Any] = {
        "seed": seed,
        "affinity": (rng.getrandbits(64), "session") if rng.random() < 0.4 else None,
        "input_tokens": rng.randrange(1000),
    }
    fast, reference = Router(cat, policy), Router(cat, policy)
    fast.top_k_from = 2
    reference.top_k_from = 10**9
    try:
        want = reference.plan("m", c, health.states, 1000.0, limit=limit, **kw)
    except Exception as exc:  # nothing compliant: both paths must refuse the same way
        try:
            fast.plan("m", c, health.states, 1000.0, limit=limit, **kw)
        except Exception as exc2:
            assert repr(exc2) == repr(exc)
            return
        raise AssertionError(f"the reference refused ({exc!r}), the fast path planned") from exc
    got = fast.plan("m", c, health.states, 1000.0, limit=limit, **kw)
    assert _summary(got) == _summary(want)

    full = reference.plan("m", c, health.states, 1000.0, **kw)

    def ranked(plan: Plan) -> list[tuple[str, float, str]]:
        return [(x.endpoint.id, x.predicted_ms, x.note) for x in plan.candidates if not x.readmitted]

    assert ranked(got) == ranked(full)[: len(ranked(got))]
    assert len(ranked(got)) >= min(limit, len(ranked(full)))
    assert [x.reason for x in got.excluded] == [x.reason for x in full.excluded]
