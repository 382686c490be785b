"""The router: a pure function of (model, constraints, health, policy, now, seed) -> Plan."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_multicloud import regions
from llm_multicloud.catalog import Catalog
from llm_multicloud.context import UNCONSTRAINED, Constraints
from llm_multicloud.errors import RoutingError
from llm_multicloud.health import Health
from llm_multicloud.router import Plan, Router, complies

NOW = 1000.0


def _ep(id: str, region: str = "us-east-1", provider: str = "aws", **kw: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "id": id,
        "provider": provider,
        "region": region,
        "base_url": f"https://{id}.example.invalid/v1",
        "models": ["m"],
    }
    d.update(kw)
    return d


def _price(inp: float, out: float | None = None) -> dict[str, float]:
    return {"input_per_mtok": inp, "output_per_mtok": inp if out is None else out}


class Setup:
    """A catalog, its health (on a fixed clock) and a router, for one test."""

    def __init__(self, endpoints: list[dict[str, Any]], policy: dict[str, Any] | None = None, **top: Any) -> None:
        self.catalog = Catalog.load({"endpoints": endpoints, **top})
        self.policy = self.catalog.policy(policy)
        self.health = Health(self.catalog, self.policy, clock=lambda: NOW)
        self.router = Router(self.catalog, self.policy)

    def st(self, endpoint_id: str) -> Any:
        return self.health.states[self.catalog.get(endpoint_id).index]

    def measured(self, endpoint_id: str, ttft_ms: float) -> None:
        """A fresh TTFT measurement: the prediction equals it exactly at NOW."""
        s = self.st(endpoint_id)
        s.ttft_ms, s.ttft_at = ttft_ms, NOW

    def plan(self, model: str = "m", c: Constraints = UNCONSTRAINED, **kw: Any) -> Plan:
        return self.router.plan(model, c, self.health.states, kw.pop("now", NOW), **kw)


def ids(plan: Plan) -> list[str]:
    return [c.endpoint.id for c in plan.candidates]


def excluded(plan: Plan) -> dict[str, str]:
    return {x.endpoint.id: x.reason for x in plan.excluded}


def where(residency: str | None = None, near: str | None = None, tags: dict[str, str] | None = None) -> Constraints:
    return UNCONSTRAINED.narrow(residency, near, tags)


# --------------------------------------------------------------------------- strategies


def test_latency_strategy_orders_by_predicted_ttft() -> None:
    s = Setup([_ep("a"), _ep("b"), _ep("c")], {"strategy": "latency"})
    s.measured("a", 300)
    s.measured("b", 100)
    s.measured("c", 200)
    plan = s.plan()
    assert ids(plan) == ["b", "c", "a"]
    assert [c.predicted_ms for c in plan.candidates] == pytest.approx([100, 200, 300])
    assert plan.strategy == "latency"


def test_cost_strategy_orders_by_expected_cost_unknown_price_last() -> None:
    s = Setup(
        [
            _ep("pricey", pricing=_price(5)),
            _ep("free"),
            _ep("cheap", pricing=_price(0.1)),
            _ep("mid", pricing=_price(1)),
        ],
        {"strategy": "cost"},
    )
    plan = s.plan(input_tokens=1000, max_tokens=1000)
    assert ids(plan) == ["cheap", "mid", "pricey", "free"]
    # (1000 in + 1000 out) tokens at $0.1/Mtok each = $0.0002
    assert plan.candidates[0].cost_usd == pytest.approx(0.0002)
    assert plan.candidates[-1].cost_usd is None


def test_cost_uses_input_and_output_prices_separately() -> None:
    s = Setup(
        [_ep("cheap_in", pricing=_price(0.1, 10)), _ep("cheap_out", pricing=_price(10, 0.1))], {"strategy": "cost"}
    )
    # long prompt, short answer: cheap input wins
    assert ids(s.plan(input_tokens=100_000, max_tokens=10))[0] == "cheap_in"
    # short prompt, long answer: cheap output wins
    assert ids(s.plan(input_tokens=10, max_tokens=100_000))[0] == "cheap_out"


def test_balanced_picks_cheapest_within_slack_of_fastest() -> None:
    # slack 25% + 20 ms of the fastest (100 ms) -> window 145 ms
    s = Setup(
        [
            _ep("fast", pricing=_price(3)),
            _ep("near", pricing=_price(1)),
            _ep("slow_cheapest", pricing=_price(0.1)),
        ],
        {"strategy": "balanced", "slack": 0.25, "slack_ms": 20},
    )
    s.measured("fast", 100)
    s.measured("near", 140)
    s.measured("slow_cheapest", 300)
    plan = s.plan()
    assert ids(plan) == ["near", "fast", "slow_cheapest"]
    assert "cheapest within" in plan.candidates[0].note


def test_balanced_slo_replaces_the_window() -> None:
    eps = [_ep("fast", pricing=_price(3)), _ep("near", pricing=_price(1)), _ep("slow_cheapest", pricing=_price(0.1))]
    s = Setup(eps, {"strategy": "balanced", "slo_ms": 400})
    s.measured("fast", 100)
    s.measured("near", 140)
    s.measured("slow_cheapest", 300)
    assert ids(s.plan())[0] == "slow_cheapest"  # 300 ms meets the 400 ms SLO and is cheapest
    s2 = Setup(eps, {"strategy": "balanced", "slo_ms": 120})
    s2.measured("fast", 100)
    s2.measured("near", 140)
    s2.measured("slow_cheapest", 300)
    assert ids(s2.plan())[0] == "fast"  # only "fast" meets 120 ms


def test_balanced_slo_met_by_nobody_still_plans_fastest_first() -> None:
    s = Setup([_ep("fast", pricing=_price(3)), _ep("slow", pricing=_price(1))], {"strategy": "balanced", "slo_ms": 50})
    s.measured("fast", 100)
    s.measured("slow", 300)
    plan = s.plan()
    assert sorted(ids(plan)) == ["fast", "slow"]
    assert ids(plan)[0] == "fast"


def test_weighted_is_deterministic_for_a_seed() -> None:
    s = Setup([_ep("a", weight=1), _ep("b", weight=2), _ep("c", weight=3)], {"strategy": "weighted"})
    for seed in (0.1, 0.5, 0.77, 12345):
        assert ids(s.plan(seed=seed)) == ids(s.plan(seed=seed))
    # different seeds do give different orders (it is random, not fixed)
    assert len({tuple(ids(s.plan(seed=i / 50))) for i in range(50)}) > 1


def test_weighted_first_pick_is_roughly_proportional_to_weight() -> None:
    s = Setup([_ep("light", weight=1), _ep("heavy", weight=3)], {"strategy": "weighted"})
    n = 4000
    firsts = Counter(ids(s.plan(seed=i))[0] for i in range(n))
    # P(heavy first) = 3 / (1 + 3) = 0.75; 4000 draws: sd ~ 0.007
    assert firsts["heavy"] / n == pytest.approx(0.75, abs=0.04)


def test_ordered_follows_catalog_order_whatever_the_latency() -> None:
    s = Setup([_ep("first"), _ep("second"), _ep("third")], {"strategy": "ordered"})
    s.measured("first", 900)
    s.measured("second", 10)
    s.measured("third", 500)
    assert ids(s.plan()) == ["first", "second", "third"]


def test_single_candidate() -> None:
    s = Setup([_ep("only")])
    plan = s.plan()
    assert ids(plan) == ["only"]
    assert plan.candidates[0].note


# --------------------------------------------------------------------------- errors


def test_unknown_model_is_404_listing_known_models() -> None:
    s = Setup([_ep("a", models=["llama", "qwen"])])
    with pytest.raises(RoutingError) as ei:
        s.plan("gpt-5")
    assert ei.value.status == 404
    assert ei.value.code == "model_not_found"
    assert "'gpt-5'" in ei.value.message
    assert "llama" in ei.value.message
    assert "qwen" in ei.value.message


def test_context_window_exceeded_is_400() -> None:
    s = Setup([_ep("a")], models={"m": {"context_window": 8192}})
    assert ids(s.plan(input_tokens=4000, max_tokens=4000)) == ["a"]  # 8000 fits
    with pytest.raises(RoutingError) as ei:
        s.plan(input_tokens=8000, max_tokens=500)
    assert ei.value.status == 400
    assert ei.value.code == "context_length_exceeded"
    assert "8192" in ei.value.message
    # an explicit window overrides the catalog's
    with pytest.raises(RoutingError):
        s.plan(input_tokens=100, max_tokens=100, context_window=150)


# --------------------------------------------------------------------------- residency and tags


def test_residency_excludes_with_reason() -> None:
    s = Setup([_ep("us", "us-east-1"), _ep("de", "eu-central-1"), _ep("ie", "eu-west-1")])
    plan = s.plan(c=where("DE"))
    assert ids(plan) == ["de"]
    out = excluded(plan)
    assert set(out) == {"us", "ie"}
    assert "outside residency DE" in out["us"]
    assert "(in US)" in out["us"]
    assert "(in IE)" in out["ie"]
    eu = s.plan(c=where("EU"))
    assert sorted(ids(eu)) == ["de", "ie"]
    assert set(excluded(eu)) == {"us"}


def test_residency_is_fail_closed_for_vague_and_unknown_footprints() -> None:
    s = Setup(
        [
            _ep("somewhere-eu", "fra-dc1", provider="onprem", residency=["EU"]),
            _ep("nowhere", "rack-7", provider="onprem"),
            _ep("de", "eu-central-1"),
        ]
    )
    assert sorted(ids(s.plan(c=where("EU")))) == ["de", "somewhere-eu"]
    de = s.plan(c=where("DE"))
    assert ids(de) == ["de"]  # "somewhere in the EU" may not be Germany
    assert "(in EU)" in excluded(de)["somewhere-eu"]
    assert "unknown location" in excluded(de)["nowhere"]
    # with no residency constraint, everyone is fine
    assert sorted(ids(s.plan())) == ["de", "nowhere", "somewhere-eu"]


def test_tags_filter() -> None:
    s = Setup([_ep("gold", tags={"tier": "gold"}), _ep("silver", tags={"tier": "silver"}), _ep("plain")])
    plan = s.plan(c=where(tags={"tier": "gold"}))
    assert ids(plan) == ["gold"]
    assert "tags do not match: tier=gold" in excluded(plan)["silver"]
    assert "tier=gold" in excluded(plan)["plain"]


def test_exclusion_reason_names_this_requests_constraint() -> None:
    s = Setup([_ep("us", "us-east-1"), _ep("de", "eu-central-1")])
    s.plan(c=where("EU").narrow("DE"))  # label "EU ∩ DE", allowed {DE}
    plan = s.plan(c=where("DE"))  # same set, label "DE"
    assert excluded(plan)["us"].startswith("outside residency DE ")


def test_complies_helper() -> None:
    s = Setup([_ep("de", "eu-central-1", tags={"tier": "gold"}), _ep("nowhere", "x", provider="onprem")])
    de, nowhere = s.catalog.endpoints
    assert complies(de, where("EU", tags={"tier": "gold"}))
    assert not complies(de, where("US"))
    assert not complies(de, where(tags={"tier": "silver"}))
    assert complies(nowhere, UNCONSTRAINED)
    assert not complies(nowhere, where("EU"))


# --------------------------------------------------------------------------- health filter


def test_cooling_endpoint_excluded_with_reason() -> None:
    s = Setup([_ep("a"), _ep("b")])
    s.st("a").quota.until = NOW + 12
    s.st("a").quota.reason = "429 Too Many Requests"
    plan = s.plan()
    assert ids(plan) == ["b"]
    assert "cooling down for 12.0s more: 429 Too Many Requests" in excluded(plan)["a"]
    assert plan.wait_until is None
    # once the deadline passes, it is back
    assert sorted(ids(s.plan(now=NOW + 12.5))) == ["a", "b"]


def test_all_cooling_gives_wait_until_earliest() -> None:
    s = Setup([_ep("a"), _ep("b")])
    s.st("a").quota.until = NOW + 30
    s.st("b").quota.until = NOW + 5
    plan = s.plan()
    assert plan.candidates == []
    assert plan.wait_until == NOW + 5
    assert set(excluded(plan)) == {"a", "b"}


def test_shared_quota_domain_cools_both_in_the_plan() -> None:
    s = Setup([_ep("a", quota_domain="acct"), _ep("b", quota_domain="acct"), _ep("c")])
    s.health.cooldown(s.st("a"), 20, "429")
    plan = s.plan()
    assert ids(plan) == ["c"]
    assert set(excluded(plan)) == {"a", "b"}


def test_open_breaker_excluded_with_reason() -> None:
    s = Setup([_ep("a"), _ep("b"), _ep("c")])
    st_a = s.st("a")
    st_a.breaker, st_a.open_until, st_a.last_error = "open", NOW + 8, "connect refused"
    plan = s.plan()
    assert sorted(ids(plan)) == ["b", "c"]
    assert "ejected (breaker open for 8.0s more): connect refused" in excluded(plan)["a"]
    # an expired ejection is usable again (the breaker goes half-open on admit)
    assert "a" in ids(s.plan(now=NOW + 9))


def test_half_open_endpoint_is_usable() -> None:
    s = Setup([_ep("a"), _ep("b")])
    s.st("a").breaker = "half_open"
    assert sorted(ids(s.plan())) == ["a", "b"]


def test_max_ejection_fraction_readmits_earliest_to_recover() -> None:
    # 4 compliant endpoints, fraction 0.5 -> at most 2 ejected; 3 are open -> 1 re-admitted.
    s = Setup([_ep("ok"), _ep("e1"), _ep("e2"), _ep("e3")], {"breaker": {"max_ejection_fraction": 0.5}})
    for name, until in (("e1", 50), ("e2", 10), ("e3", 30)):
        st_ = s.st(name)
        st_.breaker, st_.open_until, st_.last_error = "open", NOW + until, "boom"
    plan = s.plan()
    assert ids(plan) == ["ok", "e2"]  # usable first, then the re-admitted one
    assert "re-admitted" in plan.candidates[1].note
    assert set(excluded(plan)) == {"e1", "e3"}
    assert not plan.panic
    assert any("re-admitted" in n for n in plan.notes)


def test_max_ejection_fraction_zero_readmits_everyone() -> None:
    s = Setup([_ep("a"), _ep("b")], {"breaker": {"max_ejection_fraction": 0.0}})
    s.st("a").breaker, s.st("a").open_until = "open", NOW + 10
    assert ids(s.plan()) == ["b", "a"]


def test_panic_when_everything_is_ejected_stays_compliant() -> None:
    s = Setup(
        [_ep("us", "us-east-1"), _ep("de", "eu-central-1"), _ep("fr", "eu-west-3")],
        {"breaker": {"max_ejection_fraction": 1.0}},
    )
    for name, until in (("us", 5), ("de", 20), ("fr", 10)):
        st_ = s.st(name)
        st_.breaker, st_.open_until, st_.last_error = "open", NOW + until, "500"
    plan = s.plan(c=where("EU"))
    assert plan.panic
    assert ids(plan) == ["fr", "de"]  # least-bad first; the US endpoint is never tried
    assert "us" in excluded(plan)
    assert all("panic" in c.note for c in plan.candidates)
    assert any("panic" in n for n in plan.notes)


def test_all_ejected_with_default_cap_still_plans_compliant_only() -> None:
    s = Setup([_ep("us", "us-east-1"), _ep("de", "eu-central-1"), _ep("fr", "eu-west-3"), _ep("ie", "eu-west-1")])
    for name in ("us", "de", "fr", "ie"):
        st_ = s.st(name)
        st_.breaker, st_.open_until = "open", NOW + 10 + len(name)
    plan = s.plan(c=where("EU"))
    assert plan.candidates, "an all-ejected compliant set must still be tried"
    assert all(c.endpoint.footprint <= regions.BLOCS["EU"] for c in plan.candidates)
    assert "us" not in ids(plan)


def test_model_missing_from_models_listing_excluded() -> None:
    s = Setup([_ep("a", models={"m": "org/served-m"}), _ep("b")])
    s.health.set_model_presence(s.st("a"), frozenset({"m"}))
    plan = s.plan()
    assert ids(plan) == ["b"]
    assert "/models no longer lists 'org/served-m'" in excluded(plan)["a"]


def test_missing_model_is_per_model() -> None:
    s = Setup([_ep("a", models=["m", "n"]), _ep("b", models=["m", "n"])])
    s.st("a").missing_models = frozenset({"n"})
    assert sorted(ids(s.plan("m"))) == ["a", "b"]
    assert ids(s.plan("n")) == ["b"]


# --------------------------------------------------------------------------- prediction


def test_geographic_prior_ranks_nearby_region_first() -> None:
    s = Setup([_ep("oregon", "us-west-2"), _ep("frankfurt", "eu-central-1")], {"strategy": "latency"})
    plan = s.plan(c=where(near="eu-central-1"))
    assert ids(plan) == ["frankfurt", "oregon"]
    fra, ore = plan.candidates
    assert fra.predicted_ms < ore.predicted_ms
    # Frankfurt -> Oregon is ~8,500 km: ~85 ms more than a same-city endpoint
    assert ore.predicted_ms - fra.predicted_ms == pytest.approx(85, abs=10)
    # and from Oregon, the opposite
    assert ids(s.plan(c=where(near="us-west-2"))) == ["oregon", "frankfurt"]


def test_without_near_no_location_preference() -> None:
    s = Setup([_ep("oregon", "us-west-2"), _ep("frankfurt", "eu-central-1")], {"strategy": "latency"})
    plan = s.plan()
    assert [c.predicted_ms for c in plan.candidates] == [s.policy.default_ttft_ms] * 2


def test_measured_ttft_beats_the_prior() -> None:
    s = Setup([_ep("oregon", "us-west-2"), _ep("frankfurt", "eu-central-1")], {"strategy": "latency"})
    s.measured("frankfurt", 900)  # Frankfurt is near but currently slow
    assert ids(s.plan(c=where(near="eu-central-1"))) == ["oregon", "frankfurt"]


def test_measurement_decays_toward_baseline() -> None:
    s = Setup([_ep("a")], {"decay_s": 10})
    st_a = s.st("a")
    st_a.ttft_ms, st_a.ttft_at = 1000.0, NOW
    base = s.policy.default_ttft_ms
    fresh = s.plan().candidates[0].predicted_ms
    later = s.plan(now=NOW + 10).candidates[0].predicted_ms
    much_later = s.plan(now=NOW + 1000).candidates[0].predicted_ms
    assert fresh == pytest.approx(1000.0)
    assert base < later < fresh
    assert much_later == pytest.approx(base)


def test_probe_rtt_is_the_baseline_over_the_prior() -> None:
    s = Setup([_ep("near-but-slow-rtt", "eu-central-1"), _ep("far", "us-west-2")], {"strategy": "latency"})
    s.st("near-but-slow-rtt").rtt_ms = 400.0
    assert ids(s.plan(c=where(near="eu-central-1"))) == ["far", "near-but-slow-rtt"]


def test_load_lowers_rank() -> None:
    s = Setup([_ep("a"), _ep("b")], {"strategy": "latency"})
    s.measured("a", 100)
    s.measured("b", 150)
    assert ids(s.plan()) == ["a", "b"]
    s.st("a").inflight = 2  # score 100 × 3 = 300 > 150
    plan = s.plan()
    assert ids(plan) == ["b", "a"]
    assert plan.candidates[1].score == pytest.approx(300)
    s.st("a").inflight = 0
    s.st("a").queue_waiting = 4.0  # server-side queue counts as load too
    assert ids(s.plan()) == ["b", "a"]


def test_power_of_two_choices_spreads_near_equal_leaders() -> None:
    # Four identical endpoints: the leader must not be the same for every seed (no herding).
    s = Setup([_ep(f"e{i}") for i in range(4)], {"strategy": "latency"})
    for i in range(4):
        s.measured(f"e{i}", 100)
    leaders = Counter(ids(s.plan(seed=i / 100))[0] for i in range(100))
    assert len(leaders) >= 3


# --------------------------------------------------------------------------- describe


def test_describe_mentions_every_endpoint() -> None:
    s = Setup(
        [
            _ep("use1", "us-east-1", pricing=_price(1)),
            _ep("euc1", "eu-central-1"),
            _ep("euw1", "eu-west-1"),
            _ep("cool", "eu-west-3"),
        ]
    )
    s.st("cool").quota.until = NOW + 3
    plan = s.plan(c=where("EU", near="eu-west-1"))
    text = plan.describe()
    for name in ("use1", "euc1", "euw1", "cool"):
        assert name in text
    assert "residency EU" in text
    assert "near eu-west-1" in text
    assert "excluded" in text
    d = plan.to_dict()
    assert d["model"] == "m"
    assert [c["endpoint"] for c in d["candidates"]] == ids(plan)  # type: ignore[attr-defined]
    assert {x["endpoint"] for x in d["excluded"]} == {"use1", "cool"}  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- properties

# Regions of a few providers, spanning several blocs, plus on-prem endpoints.
_REGION_POOL = [
    ("aws", "us-east-1"),
    ("aws", "us-west-2"),
    ("aws", "eu-central-1"),
    ("aws", "eu-west-1"),
    ("aws", "eu-west-2"),
    ("aws", "eu-central-2"),
    ("aws", "ap-southeast-2"),
    ("aws", "sa-east-1"),
    ("gcp", "europe-west4"),
    ("gcp", "asia-northeast1"),
    ("azure", "westeurope"),
    ("azure", "germanywestcentral"),
    ("onprem", "dc-eu"),  # residency: [EU]
    ("onprem", "dc-de"),  # country: DE
    ("onprem", "dc-unknown"),  # unknown footprint
]
_CONSTRAINT_TAGS = ["EU", "EEA", "US", "DE", "FR", "IE", "NL", "GB", "CH", "APAC", "AMER", "EMEA", "JP", "AU"]

_endpoint = st.fixed_dictionaries(
    {
        "where": st.sampled_from(_REGION_POOL),
        "models": st.sets(st.sampled_from(["m", "other"]), min_size=1),
        "tier": st.sampled_from([None, "gold", "silver"]),
        "health": st.sampled_from(["ok", "ok", "ok", "cooling", "open", "expired-open", "missing", "half_open"]),
        "ttft": st.one_of(st.none(), st.floats(1, 5000)),
        "inflight": st.integers(0, 5),
        "price": st.one_of(st.none(), st.floats(0, 20)),
    }
)


def _build(specs: list[dict[str, Any]], strategy: str, fraction: float) -> Setup:
    eps = []
    for i, sp in enumerate(specs):
        provider, region = sp["where"]
        extra: dict[str, Any] = {}
        if region == "dc-eu":
            extra["residency"] = ["EU"]
        elif region == "dc-de":
            extra["country"] = "DE"
        if sp["tier"]:
            extra["tags"] = {"tier": sp["tier"]}
        if sp["price"] is not None:
            extra["pricing"] = _price(sp["price"])
        eps.append(_ep(f"e{i}", region, provider=provider, models=sorted(sp["models"]), **extra))
    s = Setup(eps, {"strategy": strategy, "breaker": {"max_ejection_fraction": fraction}})
    for i, sp in enumerate(specs):
        h = s.health.states[i]
        h.ttft_ms, h.ttft_at, h.inflight = sp["ttft"], NOW - 1, sp["inflight"]
        if sp["health"] == "cooling":
            h.quota.until = NOW + 5 + i
        elif sp["health"] == "open":
            h.breaker, h.open_until = "open", NOW + 5 + i
        elif sp["health"] == "expired-open":
            h.breaker, h.open_until = "open", NOW - 1
        elif sp["health"] == "half_open":
            h.breaker = "half_open"
        elif sp["health"] == "missing":
            h.missing_models = frozenset({"m"})
    return s


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(_endpoint, min_size=1, max_size=8),
    residency=st.one_of(st.none(), st.lists(st.sampled_from(_CONSTRAINT_TAGS), min_size=1, max_size=3)),
    narrow=st.one_of(st.none(), st.sampled_from(_CONSTRAINT_TAGS)),
    tier=st.sampled_from([None, "gold"]),
    near=st.sampled_from([None, "eu-central-1", "us-east-1", "ap-southeast-2"]),
    strategy=st.sampled_from(["latency", "cost", "balanced", "weighted", "ordered"]),
    fraction=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.floats(0, 1),
)
def test_plan_invariants(
    specs: list[dict[str, Any]],
    residency: list[str] | None,
    narrow: str | None,
    tier: str | None,
    near: str | None,
    strategy: str,
    fraction: float,
    seed: float,
) -> None:
    s = _build(specs, strategy, fraction)
    c = UNCONSTRAINED.narrow(residency, near, {"tier": tier} if tier else None)
    if narrow is not None and c.residency is not None and not (c.residency & regions.expand_tag(narrow)):
        narrow = None  # an empty intersection is an error (tested in test_context)
    c = c.narrow(narrow)
    serving = s.catalog.serving("m")
    if serving is None:
        with pytest.raises(RoutingError):
            s.plan(c=c, seed=seed)
        return
    plan = s.plan(c=c, seed=seed)

    cand = ids(plan)
    # no duplicates
    assert len(cand) == len(set(cand))
    # excluded + candidates = every endpoint serving the model, each exactly once
    assert sorted(cand + [x.endpoint.id for x in plan.excluded]) == sorted(e.id for e in serving)

    def compliant(e: Any) -> bool:
        if c.residency is not None and (not e.footprint or not e.footprint <= c.residency):
            return False
        return all(e.tags.get(k) == v for k, v in c.tags)

    # every planned candidate complies: its footprint lies inside the allowed countries
    for cd in plan.candidates:
        e = cd.endpoint
        assert compliant(e), f"{e.id} planned but not compliant with {c}"
        if c.residency is not None:
            assert e.footprint and e.footprint <= c.residency
    # every compliant and healthy endpoint is planned
    for e in serving:
        h = s.health.states[e.index]
        healthy = (
            "m" not in h.missing_models and h.quota.until <= NOW and not (h.breaker == "open" and h.open_until > NOW)
        )
        if compliant(e) and healthy:
            assert e.id in cand, f"{e.id} is compliant and healthy but not planned: {plan.describe(NOW)}"
    # wait_until only when nothing is planned
    if plan.wait_until is not None:
        assert plan.candidates == []
        assert plan.wait_until > NOW


def test_exploration_sends_a_share_to_endpoints_without_recent_samples() -> None:
    """An endpoint with no recent TTFT sample would never win on its prior alone;
    `explore` sends it a small share of requests so that it gets measured."""
    import time as _time

    from llm_multicloud.catalog import Catalog as _Catalog
    from llm_multicloud.context import UNCONSTRAINED
    from llm_multicloud.health import Health
    from llm_multicloud.router import Router

    def endpoint(i: str, region: str) -> dict[str, Any]:
        return {
            "id": i,
            "provider": "aws",
            "region": region,
            "base_url": f"http://{i}.test/v1",
            "api_key": "k",
            "models": ["m"],
        }

    cat = _Catalog.load({"endpoints": [endpoint("fast", "eu-west-1"), endpoint("new", "eu-central-1")]})
    for share, expect in ((0.0, 0), (0.25, None), (1.0, 400)):
        policy = cat.policy({"strategy": "latency", "explore": share})
        health = Health(cat, policy)
        now = _time.monotonic()
        health.states[0].ttft_ms, health.states[0].ttft_at = 10.0, now  # measured, fast
        router = Router(cat, policy)
        first = [router.plan("m", UNCONSTRAINED, health.states, now, seed=i / 400).candidates[0] for i in range(400)]
        explored = [c for c in first if c.endpoint.id == "new"]
        assert all("exploration" in c.note for c in explored)
        if expect is None:
            assert 0.15 * 400 <= len(explored) <= 0.35 * 400
        else:
            assert len(explored) == expect


def test_planning_from_many_threads_while_the_memos_evict_raises_nothing() -> None:
    """Sync requests plan on their callers' threads. The router's LRU memos reorder on
    every read; with evictions racing between threads an unlocked memo raised KeyError
    out of plan(). Tiny memos force an eviction on almost every plan."""
    import sys
    import threading

    from cachetools import LRUCache

    s = Setup([_ep("virginia", "us-east-1"), _ep("frankfurt", "eu-central-1"), _ep("oregon", "us-west-2")])
    s.router._static = LRUCache(maxsize=1)
    s.router._geo_cache = LRUCache(maxsize=1)
    nears = ["eu-central-1", "us-west-2", "us-east-1", "ap-south-1"]
    errors: list[BaseException] = []
    plans: list[int] = []

    def worker(k: int) -> None:
        try:
            for i in range(400):
                c = where(near=nears[(i + k) % len(nears)])
                s.router._rows_cache.clear()  # every plan reaches the LRU memos
                plans.append(len(s.plan(c=c, seed=0.5).candidates))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        sys.setswitchinterval(switch)
    assert not errors, errors[:1]
    assert len(plans) == 6 * 400 and set(plans) == {3}
