"""Issue 14, points 1 and 2: a sync request that may hedge runs on the caller's thread
(engine/threads.py drives the same Race as the async driver). A thread joins only
when a hedge really starts; the background event loop never does.

Through the real ``openai.OpenAI`` against the fleet on 127.0.0.1. What proves what:
``mc.background is None`` (the loop was never created); ``threads.threads_started()``
(attempt threads this process ever started); the audit hook's thread idents; the
fleet's own records (a cancelled loser is "disconnected" on the server, before it
would have answered); the snapshot's counters (blame, hedges, in flight).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.engine.threads import threads_started
from llm_multicloud.fleet import Fleet, Latency

from .conftest import chat_records, make_mc
from .drive import PLACEHOLDER_KEY
from .test_sync_direct import EU, Suspending, ThreadAudit, _ask

SLOW = Latency(ttft_ms=3000, ttft_jitter=0.0, itl_ms=0.0)


def _hedging(delay_ms: float, budget: float = 1.0, **extra: Any) -> dict[str, Any]:
    return {"hedge": {"enabled": True, "delay_ms": delay_ms, "budget": budget}, **extra}


def _endpoint(mc: lmc.MultiCloud, eid: str) -> dict[str, Any]:
    return next(dict(e) for e in mc.snapshot()["endpoints"] if e["id"] == eid)


def _no_attempt_threads_left(fleet: Fleet) -> None:
    fleet.wait_for(lambda: not [t for t in threading.enumerate() if t.name == "llm-multicloud attempt"])


@pytest.mark.parametrize("stream", [False, True])
def test_a_sync_hedge_wins_from_the_second_endpoint_without_the_background_loop(clean: Fleet, stream: bool) -> None:
    audit = ThreadAudit()
    clean.set_latency("aws-euc1", SLOW)
    with make_mc(clean, _hedging(30), on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        before = threads_started()
        text, headers = _ask(client, stream=stream, extra_headers=EU)
        assert text and headers["x-llm-multicloud-hedged"] == "true"
        assert headers["x-llm-multicloud-winner"] == "2:hedge"
        assert headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        assert {(r.kind, r.endpoint, r.outcome) for r in audit.records} == {
            ("primary", "aws-euc1", "cancelled"),
            ("hedge", "gcp-euw4", "won"),
        }
        assert mc.background is None  # the event loop was never created
        assert threads_started() - before == 1  # one worker: the hedge's
        # the winner's answer (a stream: read to its end) is accounted on the caller's thread
        won = next(i for i, r in enumerate(audit.records) if r.outcome == "won")
        assert audit.threads[won] == threading.get_ident()
        # the loser was cancelled: its server saw the disconnect long before its answer
        clean.wait_for(lambda: [r.outcome for r in chat_records(clean, "aws-euc1")] == ["disconnected"])
        rec = chat_records(clean, "aws-euc1")[0]
        assert rec.end_time is not None and rec.end_time - rec.time < SLOW.ttft_ms / 1000.0
        # ... and not blamed for it; counted once
        euc1, euw4 = _endpoint(mc, "aws-euc1"), _endpoint(mc, "gcp-euw4")
        assert (euc1["failures"], euc1["state"], euc1["in_flight"]) == (0, "closed", 0)
        assert (euw4["hedges"], euw4["in_flight"]) == (1, 0)
        _no_attempt_threads_left(clean)


@pytest.mark.parametrize("stream", [False, True])
def test_a_sync_request_whose_hedge_never_fires_costs_no_thread(clean: Fleet, stream: bool) -> None:
    audit = ThreadAudit()
    with make_mc(clean, _hedging(5000), on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        alive = set(threading.enumerate())
        before = threads_started()
        for _ in range(3):
            text, headers = _ask(client, stream=stream, extra_headers=EU)
            assert text and headers["x-llm-multicloud-hedged"] == "false"
        assert threads_started() == before
        assert set(threading.enumerate()) == alive  # not one thread more, not even the loop's
        assert mc.background is None
        assert audit.threads == [threading.get_ident()] * 3


@pytest.mark.parametrize("stream", [False, True])
def test_a_sync_hedge_that_loses_is_cancelled_and_the_primary_streams_on(clean: Fleet, stream: bool) -> None:
    audit = ThreadAudit()
    clean.set_latency("aws-euc1", Latency(ttft_ms=300, ttft_jitter=0.0, itl_ms=0.0))
    clean.set_latency("gcp-euw4", SLOW)
    with make_mc(clean, _hedging(30), on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        text, headers = _ask(client, stream=stream, extra_headers=EU)
        assert text and headers["x-llm-multicloud-winner"] == "1:primary"
        assert headers["x-llm-multicloud-hedged"] == "true"
        assert {(r.kind, r.endpoint, r.outcome) for r in audit.records} == {
            ("primary", "aws-euc1", "won"),
            ("hedge", "gcp-euw4", "cancelled"),
        }
        # the primary ran on the caller's thread all along, the hedge's timer fired in its read
        assert all(t == threading.get_ident() for t in audit.threads)
        clean.wait_for(lambda: [r.outcome for r in chat_records(clean, "gcp-euw4")] == ["disconnected"])
        rec = chat_records(clean, "gcp-euw4")[0]
        assert rec.end_time is not None and rec.end_time - rec.time < SLOW.ttft_ms / 1000.0
        euw4 = _endpoint(mc, "gcp-euw4")
        assert (euw4["failures"], euw4["state"], euw4["in_flight"], euw4["hedges"]) == (0, "closed", 0, 1)
        assert mc.background is None
        _no_attempt_threads_left(clean)


@pytest.mark.parametrize("stream", [False, True])
def test_sync_failover_with_hedging_on_runs_on_the_callers_thread(clean: Fleet, stream: bool) -> None:
    audit = ThreadAudit()
    clean.set_fault("aws-euc1", mode="status", status=503)
    with make_mc(clean, _hedging(5000), on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        before = threads_started()
        text, headers = _ask(client, stream=stream, extra_headers=EU)
        assert text and headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        assert headers["x-llm-multicloud-winner"] == "2:retry"
        assert [(r.endpoint, r.outcome) for r in audit.records] == [("aws-euc1", "failed"), ("gcp-euw4", "won")]
        assert audit.threads == [threading.get_ident()] * 2  # the retry too: the caller's thread was free
        assert threads_started() == before and mc.background is None
        assert _endpoint(mc, "aws-euc1")["failures"] == 1  # its own fault: blamed


def test_a_failed_sync_hedge_is_blamed_and_the_primary_still_wins(clean: Fleet) -> None:
    audit = ThreadAudit()
    clean.set_latency("aws-euc1", Latency(ttft_ms=300, ttft_jitter=0.0, itl_ms=0.0))
    clean.set_fault("gcp-euw4", mode="status", status=503)
    policy = _hedging(30, retry={"max_attempts": 2})
    with make_mc(clean, policy, on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        text, headers = _ask(client, stream=True, extra_headers=EU)
        assert text and headers["x-llm-multicloud-winner"] == "1:primary"
        assert [(r.kind, r.endpoint, r.outcome) for r in audit.records] == [
            ("hedge", "gcp-euw4", "failed"),
            ("primary", "aws-euc1", "won"),
        ]
        assert _endpoint(mc, "gcp-euw4")["failures"] == 1 and _endpoint(mc, "aws-euc1")["failures"] == 0
        assert mc.background is None


def test_the_sync_request_deadline_holds_while_a_hedge_runs(clean: Fleet) -> None:
    """Every endpoint slower than the caller's timeout: APITimeoutError at the timeout,
    both attempts cancelled (the caller's deadline is nobody's fault)."""
    audit = ThreadAudit()
    for rid in ("aws-euc1", "gcp-euw4"):
        clean.set_latency(rid, SLOW)
    with make_mc(clean, _hedging(30), on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0, timeout=0.5))
        t0 = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            _ask(client, stream=True, extra_headers=EU)
        assert time.monotonic() - t0 < SLOW.ttft_ms / 1000.0  # the deadline, not an endpoint, ended it
        assert sorted((r.kind, r.outcome) for r in audit.records) == [("hedge", "cancelled"), ("primary", "cancelled")]
        for rid in ("aws-euc1", "gcp-euw4"):
            e = _endpoint(mc, rid)
            assert (e["failures"], e["state"], e["in_flight"]) == (0, "closed", 0)
        assert mc.background is None
        _no_attempt_threads_left(clean)


def test_the_hedge_budget_is_spent_exactly_once_per_sync_hedge(clean: Fleet) -> None:
    """budget 0: only the floor (0.1/s over 30 s: 3 hedges). Three requests hedge,
    each on one worker thread; the fourth cannot, and waits for its primary."""
    audit = ThreadAudit()
    clean.set_latency("aws-euc1", Latency(ttft_ms=400, ttft_jitter=0.0, itl_ms=0.0))
    with make_mc(clean, _hedging(30, budget=0.0), on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        before = threads_started()
        winners = [_ask(client, stream=False, extra_headers=EU)[1]["x-llm-multicloud-winner"] for _ in range(4)]
        assert winners == ["2:hedge", "2:hedge", "2:hedge", "1:primary"]
        assert threads_started() - before == 3
        snap = mc.snapshot()
        assert sum(e["hedges"] for e in snap["endpoints"]) == 3
        assert snap["budgets"]["hedge_balance"] == 0.0
        assert [r.outcome for r in audit.records].count("cancelled") == 3
        assert all(e["in_flight"] == 0 for e in snap["endpoints"])
        assert mc.background is None


def test_a_residency_pinned_request_with_one_compliant_endpoint_runs_direct(clean: Fleet) -> None:
    """Point 2: hedging on, four endpoints serve the model, but only one is in the US:
    no hedge can happen, so no race machinery (and no thread) is built."""
    audit = ThreadAudit()
    clean.set_latency("aws-use1", Latency(ttft_ms=200, ttft_jitter=0.0, itl_ms=0.0))
    with make_mc(clean, _hedging(10), on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        before = threads_started()
        text, headers = _ask(client, stream=True, extra_headers={"x-llm-multicloud-residency": "US"})
        assert text and headers["x-llm-multicloud-endpoint"] == "aws-use1"
        assert headers["x-llm-multicloud-hedged"] == "false"  # 200 ms > the 10 ms delay: nothing to hedge to
        assert threads_started() == before and mc.background is None


def test_needs_loop_counts_only_the_endpoints_a_request_may_use(clean: Fleet) -> None:
    """Point 2: a suspending credential on the Japanese endpoint sends unpinned
    requests through the loop, but not EU-pinned ones (it cannot serve them); a
    catalog update that replaces it is seen at once (the memo is per generation)."""
    cat = clean.catalog()
    jpe = next(e for e in cat["endpoints"] if e["id"] == "azure-jpe")
    jpe["auth"] = Suspending(jpe.pop("api_key"), lie=False)
    policy = {"strategy": "ordered", "probe": {"enabled": False}, "hedge": {"enabled": False}, "explore": 0.0}
    with lmc.MultiCloud(cat, policy) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        assert _ask(client, stream=False, extra_headers=EU)[0]
        assert mc.background is None  # EU: the suspending credential is not a candidate
        assert _ask(client, stream=False)[0]
        assert mc.background is not None  # unpinned: it may be, so the loop runs it
    cat = clean.catalog()  # the same fleet, plain keys everywhere
    with lmc.MultiCloud(cat, policy) as mc:
        jp_cat = clean.catalog()
        jp = next(e for e in jp_cat["endpoints"] if e["id"] == "azure-jpe")
        jp["auth"] = Suspending(jp.pop("api_key"), lie=False)
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        assert _ask(client, stream=False)[0] and mc.background is None
        mc.update_catalog(jp_cat)
        assert _ask(client, stream=False)[0]
        assert mc.background is not None  # the new generation's credential is seen


def test_sync_hedges_from_many_threads_count_exactly(clean: Fleet) -> None:
    """Eight caller threads, each hedging: every hedge wins, every loser is cancelled
    once, nothing is left in flight, and no loop was started."""
    audit = ThreadAudit()
    clean.set_latency("aws-euc1", SLOW)
    with make_mc(clean, _hedging(30, budget=1.0), on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        results: list[str] = []
        together = threading.Barrier(8, timeout=30)

        def worker(i: int) -> None:
            together.wait()
            results.append(_ask(client, stream=i % 2 == 0, extra_headers=EU)[1]["x-llm-multicloud-winner"])

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == ["2:hedge"] * 8
        outcomes = sorted((r.kind, r.outcome) for r in audit.records)
        assert outcomes == [("hedge", "won")] * 8 + [("primary", "cancelled")] * 8
        snap = mc.snapshot()["endpoints"]
        assert all(e["in_flight"] == 0 and e["failures"] == 0 for e in snap)
        assert sum(e["hedges"] for e in snap) == 8
        assert mc.background is None
        clean.wait_for(lambda: [r.outcome for r in chat_records(clean, "aws-euc1")] == ["disconnected"] * 8)
        _no_attempt_threads_left(clean)
