"""Cost-aware routing and the cost ledger, through the real openai SDK on the fleet.

Prices per million tokens in the test fleet (conftest): output 1.0 (aws-use1),
2.0 (aws-euc1), 3.0 (gcp-euw4), 4.0 (azure-jpe); input a quarter of that.
"""

from __future__ import annotations

import math
from typing import Any

import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet

from .conftest import MODEL, Audit, chat_records, make_mc
from .drive import PLACEHOLDER_KEY, chat

pytestmark = pytest.mark.integration
PRICE = {"aws-use1": 1.0, "aws-euc1": 2.0, "gcp-euw4": 3.0, "azure-jpe": 4.0}


def _usd(usage: dict[str, int], region: str) -> float:
    out = PRICE[region]
    return (usage["prompt_tokens"] * out / 4 + usage["completion_tokens"] * out) / 1e6


def test_cost_strategy_picks_the_cheapest_usable_endpoint(clean: Fleet) -> None:
    with make_mc(clean, {"strategy": "cost"}) as mc:
        assert chat(mc, "sync", stream=False).headers["x-llm-multicloud-endpoint"] == "aws-use1"
        eu = chat(mc, "sync", stream=False, extra_headers={"x-llm-multicloud-residency": "EU"})
        assert eu.headers["x-llm-multicloud-endpoint"] == "aws-euc1"
        clean.set_fault("aws-use1", mode="status", status=503)
        # the cheapest fails: the next cheapest serves, and is what explain() ranks next
        assert chat(mc, "sync", stream=False).headers["x-llm-multicloud-endpoint"] == "aws-euc1"
        order = [c.endpoint.id for c in mc.explain(MODEL, max_tokens=100).candidates]
        assert order == ["aws-use1", "aws-euc1", "gcp-euw4", "azure-jpe"]


def test_balanced_is_cheapest_within_the_latency_slack(clean: Fleet) -> None:
    clean.set_latency("aws-use1", ttft_ms=300, ttft_jitter=0)  # cheapest, but slow
    with make_mc(clean, {"strategy": "balanced"}) as mc:
        served = [chat(mc, "sync", stream=True).headers["x-llm-multicloud-endpoint"] for _ in range(8)]
        # it is tried once (no data yet: everything looks alike, so the cheapest goes),
        # measured slow, and from then on the cheapest *fast* endpoint serves
        assert served[0] == "aws-use1"
        assert served[-4:] == ["aws-euc1"] * 4
        plan = mc.explain(MODEL)
        first = plan.candidates[0]
        assert first.endpoint.id == "aws-euc1" and "cheapest within" in first.note
        slow = next(c for c in plan.candidates if c.endpoint.id == "aws-use1")
        window = first.score * (1 + mc.policy.slack) + mc.policy.slack_ms
        assert slow.score > window  # outside the slack: excluded from the cheapest-pick
    with make_mc(clean, {"strategy": "balanced", "slo_ms": 1000}) as mc:
        # an SLO everybody meets: the cheapest wins whatever its latency
        for _ in range(3):
            chat(mc, "sync", stream=True)
        assert mc.explain(MODEL).candidates[0].endpoint.id == "aws-use1"


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_ledger_matches_the_usage_the_fleet_reported(clean: Fleet, kind: str) -> None:
    with make_mc(clean, {"strategy": "weighted"}) as mc:
        headers = []
        for i in range(12):
            ans = chat(mc, kind, stream=i % 2 == 0, max_tokens=5 + i)
            headers.append(ans.headers)
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
    expected: dict[str, float] = {}
    for rec in chat_records(clean):
        assert rec.usage is not None  # include_usage was requested for streams too
        expected[rec.region_id] = expected.get(rec.region_id, 0.0) + _usd(rec.usage, rec.region_id)
    for rid, e in snap.items():
        assert math.isclose(e["cost_usd"], round(expected.get(rid, 0.0), 8), abs_tol=1e-8), rid
        assert e["cost_estimated"] is False
    tokens = sum(r.usage["completion_tokens"] for r in chat_records(clean))
    assert sum(e["output_tokens"] for e in snap.values()) == tokens
    # non-streamed answers carry their own cost in a header
    header_total = sum(float(h["x-llm-multicloud-cost-usd"]) for h in headers[1::2])
    fleet_total = sum(_usd(r.usage, r.region_id) for r in chat_records(clean) if not r.stream)
    assert math.isclose(header_total, fleet_total, abs_tol=1e-7)


def test_ledger_counts_hedge_losers_as_flagged_estimates(clean: Fleet) -> None:
    clean.set_latency("aws-euc1", ttft_ms=2000, ttft_jitter=0)
    audit = Audit()
    policy = {"hedge": {"enabled": True, "delay_ms": 20, "budget": 1.0}}
    with make_mc(clean, policy, on_attempt=audit) as mc:
        ans = chat(mc, "sync", stream=False, extra_headers={"x-llm-multicloud-residency": "EU"})
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
    [won] = [r for r in chat_records(clean) if r.region_id == "gcp-euw4"]
    [lost] = [r for r in chat_records(clean) if r.region_id == "aws-euc1"]
    assert lost.usage is None  # cancelled before it answered: no usage reported
    # the winner to the exact usage; the loser as an estimate of its prompt, flagged
    assert math.isclose(snap["gcp-euw4"]["cost_usd"], round(_usd(won.usage, "gcp-euw4"), 8), abs_tol=1e-8)
    assert snap["aws-euc1"]["cost_estimated"] is True
    prompt_usd = won.usage["prompt_tokens"] * PRICE["aws-euc1"] / 4 / 1e6
    assert abs(snap["aws-euc1"]["cost_usd"] - prompt_usd) < 0.01  # to the cent
    total = float(ans.headers["x-llm-multicloud-cost-usd"])
    assert math.isclose(total, sum(r.cost_usd for r in audit.records), abs_tol=1e-8)


@pytest.mark.parametrize("listening", [False, True])
def test_records_are_built_only_for_listeners_and_totals_stay_exact(
    clean: Fleet, listening: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No hook and telemetry without an OpenTelemetry SDK: no attempt or request record
    is built, yet the cost header, the endpoints' cost and token counters are the same."""
    from llm_multicloud.engine import ledger

    built: list[str] = []
    real_attempt, real_request = ledger.AttemptRecord, ledger.RequestRecord

    def attempt_record(**kw: Any) -> Any:
        built.append("attempt")
        return real_attempt(**kw)

    def request_record(**kw: Any) -> Any:
        built.append("request")
        return real_request(**kw)

    monkeypatch.setattr(ledger, "AttemptRecord", attempt_record)
    monkeypatch.setattr(ledger, "RequestRecord", request_record)
    audit = Audit()
    eu = {"x-llm-multicloud-residency": "EU"}
    with make_mc(clean, **({"on_attempt": audit} if listening else {})) as mc:
        assert mc.telemetry is not None
        streamed = chat(mc, "async", stream=True, extra_headers=eu)
        clean.set_fault("aws-euc1", mode="status", status=503)  # a failed attempt, then gcp-euw4
        ans = chat(mc, "sync", stream=False, extra_headers=eu)
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
    assert streamed.headers["x-llm-multicloud-endpoint"] == "aws-euc1"
    assert ans.headers["x-llm-multicloud-endpoint"] == "gcp-euw4" and ans.headers["x-llm-multicloud-attempts"] == "2"
    first = next(r for r in chat_records(clean) if r.region_id == "aws-euc1")
    [won] = [r for r in chat_records(clean) if r.region_id == "gcp-euw4"]
    assert math.isclose(float(ans.headers["x-llm-multicloud-cost-usd"]), _usd(won.usage, "gcp-euw4"), abs_tol=1e-8)
    for rid, rec in (("aws-euc1", first), ("gcp-euw4", won)):
        assert math.isclose(snap[rid]["cost_usd"], round(_usd(rec.usage, rid), 8), abs_tol=1e-8)
        assert snap[rid]["output_tokens"] == rec.usage["completion_tokens"]
        assert snap[rid]["cost_estimated"] is False
    if listening:
        assert built.count("attempt") == len(audit.records) == 3
    elif not mc.telemetry.recording:  # (another test may have installed an SDK provider)
        assert built == []


def test_unknown_price_is_unknown_not_zero(clean: Fleet) -> None:
    cat: dict[str, Any] = clean.catalog()
    for ep in cat["endpoints"]:
        if ep["id"] == "aws-use1":
            del ep["pricing"]
        if ep["id"] == "azure-jpe":
            ep["pricing"] = {"gpu_hour": 3.6, "tokens_per_s": 1000}  # self-hosted: $1/Mtok output
    policy = {"strategy": "cost", "probe": {"enabled": False}, "hedge": {"enabled": False}}
    with lmc.MultiCloud(cat, policy) as mc:
        order = [c.endpoint.id for c in mc.explain(MODEL, max_tokens=100).candidates]
        assert order[-1] == "aws-use1"  # unknown price ranks last, never as free
        assert "price unknown" in mc.explain(MODEL).describe()
        azure = mc.catalog.get("azure-jpe")
        assert azure.price is not None and math.isclose(azure.price[1], 1.0)
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], extra_headers={"x-llm-multicloud-residency": "US"}
        )
        snap = mc.snapshot()
        use1 = next(e for e in snap["endpoints"] if e["id"] == "aws-use1")
        assert use1["cost_usd"] is None and use1["price_known"] is False
        assert snap["unpriced_requests"] == 1


def test_bad_pricing_is_rejected_with_the_field(clean: Fleet) -> None:
    cat: dict[str, Any] = clean.catalog()
    cat["endpoints"][0]["pricing"] = {"input_per_mtok": -1, "output_per_mtok": 1}
    with pytest.raises(lmc.CatalogError, match=r"endpoints\[0\].*pricing.input_per_mtok"):
        lmc.MultiCloud(cat)
    cat["endpoints"][0]["pricing"] = {"input_per_mtok": 1, "output_per_mtok": 1, "currency": "EUR"}
    with pytest.raises(lmc.CatalogError, match="unknown field"):
        lmc.MultiCloud(cat)


def test_cost_header_says_unknown_for_an_unpriced_endpoint(clean: Fleet) -> None:
    cat: dict[str, Any] = clean.catalog()
    del cat["endpoints"][0]["pricing"]  # aws-euc1, first in order
    with lmc.MultiCloud(cat, {"strategy": "ordered", "probe": {"enabled": False}}) as mc:
        r = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY)).chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}]
        )
        assert r.headers["x-llm-multicloud-endpoint"] == "aws-euc1"
        assert r.headers["x-llm-multicloud-cost-usd"] == "unknown"
        e = next(e for e in mc.snapshot()["endpoints"] if e["id"] == "aws-euc1")
        assert e["cost_usd"] is None and e["output_tokens"] > 0  # tokens counted all the same
