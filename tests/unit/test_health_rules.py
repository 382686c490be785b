"""One place for each rule (issue 13): the "usable now" predicate and the TTFT prediction
(usable.py), and what the router decides with them; Retry-After parsed and capped in
errors.py."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as hs

from llm_multicloud import errors, executor
from llm_multicloud.catalog import Catalog
from llm_multicloud.context import UNCONSTRAINED
from llm_multicloud.health import Health
from llm_multicloud.router import Router
from llm_multicloud.usable import predict_ttft_ms, unusable_now, unusable_reason

NOW = 1000.0
REGIONS = ["eu-west-1", "us-east-1", "ap-northeast-1", "eu-central-1", "us-west-2", "sa-east-1"]

state = hs.fixed_dictionaries(
    {
        "drained": hs.sampled_from([None, None, None, "maintenance"]),
        "credential": hs.sampled_from([None, None, None, "token endpoint down"]),
        "missing": hs.booleans(),
        "refused": hs.booleans(),
        "cool_s": hs.sampled_from([0.0, 0.0, -5.0, 30.0]),
        "breaker": hs.sampled_from(["closed", "closed", "open", "half_open"]),
        "open_s": hs.sampled_from([-1.0, 0.0, 20.0]),
        "ttft": hs.one_of(hs.none(), hs.floats(1.0, 5000.0)),
        "age_s": hs.floats(0.0, 120.0),
        "rtt": hs.one_of(hs.none(), hs.floats(0.5, 300.0)),
    }
)


def _setup(n: int) -> tuple[Catalog, Health, Router]:
    cat = Catalog.load(
        {
            "endpoints": [
                {
                    "id": f"e{i}",
                    "provider": "aws",
                    "region": REGIONS[i % len(REGIONS)],
                    "base_url": f"https://e{i}.example.invalid/v1",
                    "models": ["m"],
                }
                for i in range(n)
            ]
        }
    )
    policy = cat.policy({"explore": 0.0, "recheck": 0.0})
    return cat, Health(cat, policy, clock=lambda: NOW), Router(cat, policy)


def _apply(h: Health, i: int, s: dict[str, Any]) -> None:
    st = h.states[i]
    st.drained = s["drained"]
    st.endpoint.credential.unavailable = s["credential"]
    if s["missing"]:
        st.missing_models = frozenset({"m"})
        st.refused_models = frozenset({"m"}) if s["refused"] else frozenset()
    st.quota.until = NOW + s["cool_s"] if s["cool_s"] else 0.0
    st.quota.reason = "429"
    st.breaker, st.open_until, st.last_error = s["breaker"], NOW + s["open_s"], "HTTP 503"
    st.ttft_ms, st.ttft_at, st.rtt_ms = s["ttft"], NOW - s["age_s"], s["rtt"]


@settings(max_examples=150, deadline=None)
@given(hs.lists(state, min_size=1, max_size=6))
def test_the_router_excludes_exactly_what_unusable_now_says(states: list[dict[str, Any]]) -> None:
    cat, h, router = _setup(len(states))
    for i, s in enumerate(states):
        _apply(h, i, s)
    plan = router.plan("m", UNCONSTRAINED, h.states, NOW)
    excluded = {x.endpoint.id: x for x in plan.excluded}
    chosen = {c.endpoint.id: c for c in plan.candidates}
    for st in h.states:
        eid = st.endpoint.id
        why = unusable_now(st, "m", NOW)
        if why is None:
            assert eid in chosen and not chosen[eid].readmitted, (eid, excluded.get(eid))
            base = router.baseline_ms(st.endpoint, st.rtt_ms, UNCONSTRAINED)
            assert math.isclose(chosen[eid].predicted_ms, predict_ttft_ms(st, base, NOW, h.policy.decay_s))
        elif why == "ejected" and eid in chosen:
            assert chosen[eid].readmitted  # the ejection cap or panic took it back
        else:
            assert eid in excluded and excluded[eid].kind == why, (eid, why, excluded.get(eid), chosen.get(eid))
            assert excluded[eid].reason == unusable_reason(st, "m", why, NOW)
    for e in cat.endpoints:
        e.credential.unavailable = None


def test_the_predicate_reports_in_a_fixed_order() -> None:
    _, h, _ = _setup(1)
    st = h.states[0]
    assert unusable_now(st, "m", NOW) is None
    st.breaker, st.open_until = "open", NOW + 5
    assert unusable_now(st, "m", NOW) == "ejected"
    assert unusable_now(st, "m", NOW + 5) is None  # the ejection is over: a trial may go
    st.quota.until = NOW + 1
    assert unusable_now(st, "m", NOW) == "cooling"
    st.missing_models = frozenset({"m"})
    assert unusable_now(st, "m", NOW) == "missing_model"
    assert unusable_now(st, "other", NOW) == "cooling"  # only the missing model is out
    assert unusable_now(st, None, NOW) == "cooling"
    st.drained = "maintenance"
    assert unusable_now(st, "m", NOW) == "drained"


def test_the_prediction_decays_from_the_estimate_to_the_baseline() -> None:
    _, h, _ = _setup(1)
    st = h.states[0]
    assert predict_ttft_ms(st, 80.0, NOW, 10.0) == 80.0  # no sample: the baseline
    st.ttft_ms, st.ttft_at = 500.0, NOW
    assert predict_ttft_ms(st, 80.0, NOW, 10.0) == 500.0
    assert math.isclose(predict_ttft_ms(st, 80.0, NOW + 10.0, 10.0), 80.0 + 420.0 / math.e)
    assert abs(predict_ttft_ms(st, 80.0, NOW + 1000.0, 10.0) - 80.0) < 1e-9


def test_retry_after_is_parsed_and_capped_in_the_error_layer() -> None:
    assert executor.parse_retry_after is errors.parse_retry_after  # kept importable from executor
    assert errors.cooldown_s(errors.parse_retry_after([("retry-after", "86400")]), default_s=5, cap_s=300) == 300
    assert errors.cooldown_s(errors.parse_retry_after([("retry-after-ms", "1500")]), default_s=5, cap_s=300) == 1.5
    assert errors.cooldown_s(None, default_s=5, cap_s=300) == 5  # no header: the policy's default
    assert errors.cooldown_s(None, default_s=500, cap_s=300) == 300
    assert errors.cooldown_s(math.inf, default_s=5, cap_s=300) == 300
    assert errors.cooldown_s(math.nan, default_s=5, cap_s=300) == 0.0
    assert errors.cooldown_s(-3.0, default_s=5, cap_s=300) == 0.0


def test_health_cooldown_applies_the_rule(clock: Any) -> None:
    cat = Catalog.load(
        {
            "endpoints": [
                {
                    "id": "e",
                    "provider": "aws",
                    "region": "us-east-1",
                    "base_url": "https://e.x.invalid/v1",
                    "models": ["m"],
                }
            ]
        }
    )
    h = Health(cat, cat.policy({"default_cooldown_s": 7, "max_retry_after_s": 60}), clock=clock)
    st = h.states[0]
    h.cooldown(st, None, "HTTP 429 without Retry-After")
    assert st.quota.until == clock.now + 7
    h.cooldown(st, 3600.0, "HTTP 429, Retry-After: 3600")
    assert st.quota.until == clock.now + 60
