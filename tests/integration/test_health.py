"""Endpoint health on the fleet: outages, 5xx, 429 + Retry-After, hangs, flapping,
half-open recovery, panic, probes. Through the real openai SDK, judged by what the
servers received and by the audit hook (one record per attempt)."""

from __future__ import annotations

import threading
from typing import Any

import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet

from .conftest import MODEL, Audit, OffsetClock, chat_records, make_mc
from .drive import PLACEHOLDER_KEY, chat

pytestmark = pytest.mark.integration
EU = {"x-llm-multicloud-residency": "EU"}


def _send(client: openai.OpenAI, n: int, **kw: Any) -> list[str]:
    served = []
    for i in range(n):
        r = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], extra_headers=EU, **kw
        )
        served.append(r.headers["x-llm-multicloud-endpoint"])
    return served


@pytest.mark.parametrize("fault", [{"mode": "down"}, {"mode": "status", "status": 503}], ids=["down", "503"])
def test_dead_region_costs_no_failed_request_and_is_ejected(clean: Fleet, fault: dict[str, Any]) -> None:
    audit = Audit()
    clean.set_fault("aws-euc1", **fault)
    with make_mc(clean, on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        served = _send(client, 200)  # any failure would raise
        assert set(served) == {"gcp-euw4"}
        dead = audit.to("aws-euc1")
        # detection takes `consecutive_failures` attempts, then nothing more (<= 1 %)
        assert len(dead) == mc.policy.breaker.consecutive_failures
        after = [r for r in audit.records[audit.records.index(dead[-1]) + 1 :] if r.endpoint == "aws-euc1"]
        assert len(after) / 200 <= 0.01
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
        assert snap["aws-euc1"]["state"] == "open"
        assert snap["aws-euc1"]["until"] is not None and snap["aws-euc1"]["reason"]
        assert all(r.endpoint in ("aws-euc1", "gcp-euw4") for r in audit.records)  # EU only


def test_429_retry_after_keeps_endpoint_out_until_then(clean: Fleet) -> None:
    clock = OffsetClock()
    clean.set_fault("aws-euc1", mode="status", status=429, retry_after="30")
    with make_mc(clean, clock=clock) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        assert _send(client, 20) == ["gcp-euw4"] * 20
        assert clean.counts()["aws-euc1"] == 1  # asked once, then left alone
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
        assert snap["aws-euc1"]["state"] == "cooling" and "429" in snap["aws-euc1"]["reason"]
        assert snap["aws-euc1"]["failures"] == 0  # quota faults do not feed the breaker
        clean.set_fault("aws-euc1", mode="none")
        remaining = mc.health.states[0].quota.until - clock()
        assert 25 < remaining <= 30
        clock.advance(remaining - 2)
        assert _send(client, 1) == ["gcp-euw4"]  # 2 s before the end: still out
        clock.advance(3)  # past the Retry-After: traffic returns
        assert _send(client, 1) == ["aws-euc1"]


def test_quota_domain_cools_down_together(clean: Fleet) -> None:
    cat = clean.catalog()
    for ep in cat["endpoints"]:
        if ep["id"] in ("aws-euc1", "aws-use1"):
            ep["quota_domain"] = "aws-account-1"
    clean.set_fault("aws-euc1", mode="status", status=429, retry_after_ms=60_000)
    with lmc.MultiCloud(cat, {"strategy": "ordered", "probe": {"enabled": False}, "hedge": {"enabled": False}}) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        r = client.chat.completions.with_raw_response.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
        assert r.headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        # aws-use1 shares the quota: it is cooling too, and explain() says why
        plan = mc.explain(MODEL, residency="US")
        assert not plan.candidates
        reasons = {x.endpoint.id: x.reason for x in plan.excluded}
        assert "cooling down" in reasons["aws-use1"] and "429" in reasons["aws-use1"]


def test_waits_for_a_short_cooldown_instead_of_failing(clean: Fleet) -> None:
    clean.set_fault("aws-euc1", mode="status", status=429, retry_after_ms=300)
    with make_mc(clean) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        # DE: a single candidate. Its 429 says "back in 0.3 s": longer than this
        # request's 0.2 s deadline, so it fails at once with the reason...
        with pytest.raises(openai.InternalServerError) as ei:
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "x"}],
                extra_headers={"x-llm-multicloud-residency": "DE"},
                timeout=0.2,
            )
        assert "cooling" in str(ei.value) or "429" in str(ei.value)
        # ...while the next request, with time to spare, waits for the cooldown to end.
        clean.set_fault("aws-euc1", mode="none")
        r2 = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-llm-multicloud-residency": "DE"},
            timeout=5.0,
        )
        assert r2.headers["x-llm-multicloud-endpoint"] == "aws-euc1"


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_hang_times_out_on_first_token_and_fails_over(clean: Fleet, kind: str, stream: bool) -> None:
    clean.set_fault("aws-euc1", mode="hang")
    with make_mc(clean, {"timeouts": {"first_token_s": 0.3, "response_s": 0.3}}) as mc:
        ans = chat(mc, kind, stream=stream, extra_headers=EU)
        assert ans.headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        assert ans.headers["x-llm-multicloud-attempts"] == "2"
    clean.wait_for(lambda: chat_records(clean, "aws-euc1")[0].outcome == "disconnected")


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_malformed_stream_before_first_token_fails_over(clean: Fleet, kind: str) -> None:
    clean.set_fault("aws-euc1", mode="malformed_sse", after_chunks=0)
    with make_mc(clean) as mc:
        ans = chat(mc, kind, stream=True, extra_headers=EU)
        assert ans.headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        assert ans.text.startswith("[gcp-euw4]")  # never a token of the broken attempt


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_stream_broken_after_commit_raises_with_what_was_delivered(clean: Fleet, kind: str) -> None:
    clean.set_fault("aws-euc1", mode="close_mid_stream", after_chunks=3)
    with make_mc(clean) as mc:
        with pytest.raises(lmc.StreamInterrupted) as ei:
            chat(mc, kind, stream=True, extra_headers=EU, max_tokens=50)
        err = ei.value
        assert err.endpoint == "aws-euc1"
        assert err.delivered_text.startswith("[aws-euc1]") and err.chunks >= 3
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
        assert snap["aws-euc1"]["failures"] == 1 and snap["aws-euc1"]["in_flight"] == 0


def test_flapping_endpoint_loses_no_request(clean: Fleet) -> None:
    clean.set_fault("aws-euc1", mode="status", status=502, probability=0.5)
    with make_mc(clean) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        served = _send(client, 60)
        assert len(served) == 60 and "gcp-euw4" in served
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
        assert snap["aws-euc1"]["failures"] >= 1


def test_recovery_through_half_open(clean: Fleet) -> None:
    clock = OffsetClock()
    transitions: list[lmc.Transition] = []
    clean.set_fault("aws-euc1", mode="down")
    with make_mc(clean, {"breaker": {"base_ejection_s": 10}}, clock=clock, on_transition=transitions.append) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        _send(client, 10)
        assert [t.new for t in transitions] == ["open"]
        clean.set_fault("aws-euc1", mode="none")
        assert _send(client, 3) == ["gcp-euw4"] * 3  # still ejected
        clock.advance(12)  # past base ejection (+ jitter)
        assert _send(client, 1) == ["aws-euc1"]  # the trial request
        assert [t.new for t in transitions] == ["open", "half_open", "closed"]
        assert transitions[2].reason == "trial request succeeded"
        assert _send(client, 2) == ["aws-euc1"] * 2
        # a second ejection lasts longer (base × ejections)
        clean.set_fault("aws-euc1", mode="down")
        _send(client, 6)
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
        assert snap["aws-euc1"]["state"] == "open" and snap["aws-euc1"]["ejections"] == 2
        clean.set_fault("aws-euc1", mode="none")
        clock.advance(12)
        assert _send(client, 1) == ["gcp-euw4"]  # 2 × 10 s not over yet
        clock.advance(10)
        assert _send(client, 1) == ["aws-euc1"]


@pytest.mark.parametrize("fraction", [0.5, 1.0])
def test_all_compliant_down_panic_then_clear_503(clean: Fleet, fraction: float) -> None:
    audit = Audit()
    clean.set_fault("aws-euc1", mode="down")
    clean.set_fault("gcp-euw4", mode="status", status=503)
    policy = {"retry": {"min_per_s": 1000}, "breaker": {"max_ejection_fraction": fraction}}
    clock = OffsetClock()
    with make_mc(clean, policy, on_attempt=audit, clock=clock) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        for _ in range(8):
            with pytest.raises(openai.InternalServerError) as ei:
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "x"}], extra_headers=EU
                )
        msg = str(ei.value)
        assert "aws-euc1" in msg and "gcp-euw4" in msg and "outside residency EU" in msg
        plan = mc.explain(MODEL, residency="EU")
        # Both are ejected. With the ejection cap at 50 % one of them is re-admitted;
        # with no cap, panic mode tries the least-bad ones anyway. Never none.
        assert plan.candidates and all(c.readmitted for c in plan.candidates)
        assert plan.panic == (fraction == 1.0)
        clean.set_fault("gcp-euw4", mode="none")
        if [c.endpoint.id for c in plan.candidates] == ["aws-euc1"]:
            # The cap re-admitted the dead one (earliest to recover, jitter decides) and
            # gcp-euw4 is still ejected: the request fails fast, with one attempt, not
            # three on the dead endpoint...
            n = len(audit.records)
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "x"}], extra_headers=EU
                )
            assert len(audit.records) == n + 1
            clock.advance(mc.policy.breaker.max_ejection_s)  # ...until its ejection ends
        r = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], extra_headers=EU
        )
        assert r.headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        # and never, in any of this, outside the EU
        assert {a.endpoint for a in audit.records} <= {"aws-euc1", "gcp-euw4"}


def test_probe_takes_out_an_endpoint_that_stops_listing_the_model(clean: Fleet) -> None:
    threads_before = set(threading.enumerate())
    with make_mc(clean, {"probe": {"enabled": True, "interval_s": 0.05}}) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        assert _send(client, 1) == ["aws-euc1"]  # first request starts the prober
        clean.wait_for(lambda: mc.snapshot()["endpoints"][0]["rtt_ms"] is not None)
        clean.set_models("aws-euc1", {"embed-small": "aws-euc1-embed"})
        clean.wait_for(lambda: MODEL in mc.snapshot()["endpoints"][0]["missing_models"])
        assert _send(client, 3) == ["gcp-euw4"] * 3
        reasons = {x.endpoint.id: x.reason for x in mc.explain(MODEL).excluded}
        assert "no longer lists" in reasons["aws-euc1"]
        # probes carry each endpoint's own key, to that endpoint only
        probes = [r for r in clean.received() if r.path.endswith("/models")]
        assert probes and all(r.headers["authorization"] == f"Bearer sk-{r.region_id}-secret" for r in probes)
        clean.set_models("aws-euc1", {MODEL: "meta-llama/Llama-3.1-8B-Instruct", "embed-small": "aws-euc1-embed"})
        clean.wait_for(lambda: not mc.snapshot()["endpoints"][0]["missing_models"])
        assert _send(client, 1) == ["aws-euc1"]
    # close() stopped the prober and its event-loop thread: nothing outlives the MultiCloud
    assert mc._portal_obj is None
    assert not [t for t in threading.enumerate() if t not in threads_before]


def test_caller_deadline_is_the_overall_deadline(clean: Fleet) -> None:
    for rid in clean.region_ids:
        clean.set_fault(rid, mode="hang")
    with make_mc(clean) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, timeout=0.5))
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])


def test_queue_depth_from_prometheus_metrics_steers_traffic(clean: Fleet) -> None:
    """vLLM's vllm:num_requests_waiting, read by the optional load probe, joins the
    router's load term: a deep queue loses the primary spot."""
    cat: dict[str, Any] = clean.catalog()
    for ep in cat["endpoints"]:
        ep["metrics_path"] = "/metrics"
    policy = {
        "strategy": "latency",
        "probe": {"enabled": True, "interval_s": 0.05, "metrics": True},
        # the queue depth alone decides here: no random exploration draw (1 % by default)
        "explore": 0.0,
        "recheck": 0.0,
    }
    clean.set_waiting("aws-euc1", 0)
    clean.set_waiting("gcp-euw4", 0)
    with lmc.MultiCloud(cat, {**policy, "hedge": {"enabled": False}}) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        _send(client, 1)  # starts the prober
        clean.set_waiting("aws-euc1", 500)
        clean.wait_for(lambda: mc.snapshot()["endpoints"][0]["queue_waiting"] == 500)
        assert mc.explain(MODEL, residency="EU").candidates[0].endpoint.id == "gcp-euw4"
        assert _send(client, 3) == ["gcp-euw4"] * 3


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_stream_that_stalls_after_commit_raises_after_the_chunk_gap(clean: Fleet, kind: str) -> None:
    clean.set_latency("aws-euc1", ttft_ms=2, ttft_jitter=0, itl_ms=3000)
    with make_mc(clean, {"timeouts": {"chunk_gap_s": 0.3}}) as mc:
        with pytest.raises(lmc.StreamInterrupted, match=r"no data for 0\.3s") as ei:
            chat(mc, kind, stream=True, extra_headers=EU, max_tokens=5)
        assert ei.value.delivered_text.startswith("[aws-euc1] w0")
    clean.wait_for(lambda: chat_records(clean, "aws-euc1")[0].outcome == "disconnected")


def test_retry_budget_keeps_a_wide_outage_from_multiplying_load(clean: Fleet) -> None:
    for rid in clean.region_ids:
        clean.set_fault(rid, mode="status", status=500)
    # breakers out of the way: this is about the budget alone
    policy = {
        "retry": {"max_attempts": 4, "budget": 0.2, "min_per_s": 0.5},
        "breaker": {"consecutive_failures": 10_000},
    }
    n = 60
    with make_mc(clean, policy) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        for i in range(n):
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"{i}"}])
    sent = sum(clean.counts().values())
    # without a budget: 4 attempts each = 240; with it: the requests, + 20 %, + the floor
    assert sent <= n + 0.2 * n + 0.5 * mc.policy.retry.window_s + 1
