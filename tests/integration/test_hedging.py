"""Hedged requests and stream resume, through the real openai SDK on the fleet.

Judged by behaviour, never by timing: which attempt won, what the losers' servers
saw (a disconnect), what the caller received (one attempt's tokens, in order),
budgets and counters, and that nothing leaks.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import threading
from typing import Any

import anyio
import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet

from .conftest import MODEL, Audit, chat_records, make_mc
from .drive import PLACEHOLDER_KEY, chat

pytestmark = pytest.mark.integration
EU = {"x-llm-multicloud-residency": "EU"}
HEDGE = {"hedge": {"enabled": True, "delay_ms": 30, "budget": 1.0}}


def _words(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"\bw(\d+)\b", text)]


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_late_first_token_is_hedged_to_another_region_and_loser_disconnected(
    clean: Fleet, kind: str, stream: bool
) -> None:
    clean.set_latency("aws-euc1", ttft_ms=2000, ttft_jitter=0)  # primary (ordered) is stuck
    audit = Audit()
    with make_mc(clean, HEDGE, on_attempt=audit) as mc:
        ans = chat(mc, kind, stream=stream, extra_headers=EU, max_tokens=12)
        assert ans.headers["x-llm-multicloud-hedged"] == "true"
        assert ans.headers["x-llm-multicloud-winner"] == "2:hedge"
        assert ans.headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        # one attempt's tokens only, complete and in order
        assert ans.text.startswith("[gcp-euw4]") and "aws-euc1" not in ans.text
        assert _words(ans.text) == list(range(12))
        # the loser's connection was closed: its server saw the client go away
        clean.wait_for(lambda: chat_records(clean, "aws-euc1")[0].outcome == "disconnected")
        assert {(r.kind, r.endpoint, r.outcome) for r in audit.records} == {
            ("primary", "aws-euc1", "cancelled"),
            ("hedge", "gcp-euw4", "won"),
        }
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
        assert snap["gcp-euw4"]["hedges"] == 1 and snap["gcp-euw4"]["hedge_wins"] == 1
        assert snap["aws-euc1"]["wasted"] == 1 and snap["aws-euc1"]["in_flight"] == 0
        # the cancelled loser is accounted for, as an estimate
        loser = next(r for r in audit.records if r.outcome == "cancelled")
        assert loser.cost_usd > 0 and loser.cost_estimated
        assert snap["aws-euc1"]["cost_usd"] > 0 and snap["aws-euc1"]["cost_estimated"]


def test_primary_that_answers_first_wins_and_the_hedge_is_cancelled(clean: Fleet) -> None:
    # primary answers at ~200 ms, the hedge starts at 30 ms but needs 2 s
    clean.set_latency("aws-euc1", ttft_ms=200, ttft_jitter=0)
    clean.set_latency("gcp-euw4", ttft_ms=2000, ttft_jitter=0)
    with make_mc(clean, HEDGE) as mc:
        ans = chat(mc, "sync", stream=True, extra_headers=EU)
        assert ans.headers["x-llm-multicloud-winner"] == "1:primary"
        assert ans.headers["x-llm-multicloud-hedged"] == "true"
        assert ans.text.startswith("[aws-euc1]")
    clean.wait_for(lambda: chat_records(clean, "gcp-euw4")[0].outcome == "disconnected")


def test_hedge_goes_to_another_failure_domain_within_residency(clean: Fleet) -> None:
    """The US endpoint is the fastest, but a DE-pinned request may only hedge inside
    its residency; with a single DE endpoint there is nothing to hedge to."""
    clean.set_latency("aws-euc1", ttft_ms=150, ttft_jitter=0)
    with make_mc(clean, HEDGE) as mc:
        ans = chat(mc, "sync", stream=True, extra_headers={"x-llm-multicloud-residency": "DE"})
        assert ans.headers["x-llm-multicloud-hedged"] == "false"
        assert ans.headers["x-llm-multicloud-endpoint"] == "aws-euc1"
    assert not chat_records(clean, "aws-use1") and not chat_records(clean, "gcp-euw4")


def test_failure_before_commit_starts_the_next_attempt_at_once(clean: Fleet) -> None:
    clean.set_fault("aws-euc1", mode="status", status=503)
    audit = Audit()
    with make_mc(clean, {"hedge": {"enabled": True, "delay_ms": 1500, "budget": 1.0}}, on_attempt=audit) as mc:
        ans = chat(mc, "sync", stream=True, extra_headers=EU)
    assert ans.headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
    assert [r.kind for r in audit.records] == ["primary", "retry"]  # a retry, not a hedge after 1.5 s
    assert audit.records[1].start_unix_nano - audit.records[0].end_unix_nano < 1_000_000_000


def test_hedge_budget_holds_under_sustained_slowness(clean: Fleet) -> None:
    clean.set_latency("aws-euc1", ttft_ms=40, ttft_jitter=0)
    policy = {"hedge": {"enabled": True, "delay_ms": 5, "budget": 0.1}}
    n = 100
    with make_mc(clean, policy) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        hedged = 0
        for i in range(n):
            r = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], extra_headers=EU
            )
            hedged += r.headers["x-llm-multicloud-hedged"] == "true"
        hedges = sum(e["hedges"] for e in mc.snapshot()["endpoints"])
    # 10 % of the requests, plus the budget's floor (0.1/s over its 30 s window = 3)
    assert hedges == hedged
    assert 1 <= hedges <= n * 0.1 + 3
    upstream = sum(clean.counts().values())
    assert upstream - n == hedges


def test_hedging_cuts_the_tail(clean: Fleet) -> None:
    """Behavioural: whenever the primary drew a tail latency, the answer came from the
    hedge (unless the hedge drew one too). Timing bars are the benchmark's job."""
    for rid in ("aws-euc1", "gcp-euw4"):
        clean.set_latency(rid, ttft_ms=2, ttft_jitter=0, tail_prob=0.25, tail_ms=400)
    n = 40
    with make_mc(clean, {"hedge": {"enabled": True, "delay_ms": 40, "budget": 1.0}}) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        served = {}
        for i in range(n):
            r = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": f"tail-{i}"}], extra_headers=EU
            )
            served[f"tail-{i}"] = r.headers["x-llm-multicloud-endpoint"]
    by_req: dict[str, dict[str, float]] = {}
    for rec in chat_records(clean):
        by_req.setdefault(rec.json["messages"][0]["content"], {})[rec.region_id] = rec.ttft_ms
    tail_primaries = 0
    for q, ttfts in by_req.items():
        if ttfts.get("aws-euc1", 0) >= 400 and ttfts.get("gcp-euw4", 1e9) < 400:
            tail_primaries += 1
            assert served[q] == "gcp-euw4", f"{q}: a tail primary was not rescued by its hedge"
    assert tail_primaries >= 1  # the fleet did produce tails (seeded, P(none) ~ 1e-5)


@pytest.mark.anyio
async def test_no_task_connection_or_thread_outlives_a_thousand_hedged_requests(clean: Fleet) -> None:
    clean.set_latency("aws-euc1", ttft_ms=25, ttft_jitter=0)
    policy = {"hedge": {"enabled": True, "delay_ms": 2, "budget": 1.0, "min_delay_ms": 0}}
    threads_before = set(threading.enumerate())

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    with make_mc(clean, policy) as mc:
        client = mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY))
        loop = asyncio.get_running_loop()
        finalised: list[str] = []
        default_hook = sys.get_asyncgen_hooks().finalizer or loop._asyncgen_finalizer_hook  # type: ignore[attr-defined]

        def finaliser(agen: Any) -> None:
            finalised.append(f"{agen.ag_code.co_filename}:{agen.ag_code.co_qualname}")
            default_hook(agen)

        sys.set_asyncgen_hooks(finalizer=finaliser)
        fds_before = fds()
        sem = anyio.Semaphore(20)
        hedged = 0

        async def one(i: int) -> None:
            nonlocal hedged
            async with sem:
                if i % 2:
                    r = await client.chat.completions.with_raw_response.create(
                        model=MODEL, messages=[{"role": "user", "content": f"l{i}"}], extra_headers=EU
                    )
                    hedged += r.headers["x-llm-multicloud-hedged"] == "true"
                else:
                    s = await client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": f"l{i}"}], extra_headers=EU, stream=True
                    )
                    async for _ in s:
                        pass

        async with anyio.create_task_group() as tg:
            for i in range(1000):
                tg.start_soon(one, i)
        assert hedged >= 400
        snap = mc.snapshot()["endpoints"]
        assert all(e["in_flight"] == 0 for e in snap)
        assert sum(e["hedges"] for e in snap) >= 800
        # No task of ours is left, and no async generator of ours was abandoned to the
        # event loop's finaliser (the openai SDK leaves its own stream generators
        # there: those are not ours to close).
        current = asyncio.current_task()
        assert not [t for t in asyncio.all_tasks() if t is not current and "llm_multicloud" in repr(t.get_coro())]
        assert not [name for name in finalised if "llm_multicloud" in name]
        # losers' connections are closed, winners' go back to a bounded pool
        assert fds() - fds_before <= 2 * 20 + 5
        await client.close()
    # (blocking this loop is fine here: the fleet runs in its own thread)
    clean.wait_for(lambda: all(clean.in_flight(r) == 0 for r in clean.region_ids), timeout=10)
    # Threads named asyncio_N are this event loop's own executor (DNS lookups), not ours.
    new = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    assert not [t for t in new if not t.name.startswith("asyncio_")]


def _resume_policy(**extra: Any) -> dict[str, Any]:
    return {"resume": {"enabled": True, **extra}}


@pytest.mark.parametrize("mode", ["close_mid_stream", "stop_mid_stream"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_resume_continues_a_broken_stream_on_another_region(clean: Fleet, kind: str, mode: str) -> None:
    # stop_mid_stream: [DONE] with no finish_reason (llama.cpp's interrupt_requests)
    clean.set_fault("aws-euc1", mode=mode, after_chunks=3)
    audit = Audit()
    with make_mc(clean, _resume_policy(), on_attempt=audit) as mc:
        ans = chat(mc, kind, stream=True, extra_headers=EU, max_tokens=10)
    # one unbroken answer: the first 3 tokens from aws-euc1, the rest continued by
    # gcp-euw4 from the partial answer — no gap, no repeat, one role chunk, one finish
    assert ans.text.startswith("[aws-euc1] w0 w1 w2")
    assert _words(ans.text) == list(range(10))
    assert sum(1 for c in ans.chunks if c.choices and c.choices[0].delta.role) == 1
    assert sum(1 for c in ans.chunks if c.choices and c.choices[0].finish_reason) == 1
    [cont] = chat_records(clean, "gcp-euw4")
    assert cont.json["continue_final_message"] is True and cont.json["add_generation_prompt"] is False
    assert cont.json["messages"][-1] == {"role": "assistant", "content": "[aws-euc1] w0 w1 w2"}
    assert cont.json["max_tokens"] == 7
    assert [(r.endpoint, r.outcome) for r in audit.records] == [("aws-euc1", "resumed"), ("gcp-euw4", "won")]


def test_resume_stays_within_residency_or_raises(clean: Fleet) -> None:
    clean.set_fault("aws-euc1", mode="close_mid_stream", after_chunks=2)
    with make_mc(clean, _resume_policy()) as mc, pytest.raises(lmc.StreamInterrupted) as ei:
        # DE: the only DE endpoint broke; the US one must not continue a DE answer
        chat(mc, "sync", stream=True, extra_headers={"x-llm-multicloud-residency": "DE"}, max_tokens=10)
    assert ei.value.delivered_text == "[aws-euc1] w0 w1"
    assert not chat_records(clean, "aws-use1") and not chat_records(clean, "gcp-euw4")


def test_resume_is_refused_for_tool_calls_and_json_mode(clean: Fleet) -> None:
    clean.set_fault("aws-euc1", mode="close_mid_stream", after_chunks=2)
    with make_mc(clean, _resume_policy()) as mc:
        for extra in (
            {"response_format": {"type": "json_object"}},
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
        ):
            with pytest.raises(lmc.StreamInterrupted):
                chat(mc, "sync", stream=True, extra_headers=EU, max_tokens=10, **extra)
    assert not chat_records(clean, "gcp-euw4")


def test_resume_off_by_default(clean: Fleet) -> None:
    clean.set_fault("aws-euc1", mode="close_mid_stream", after_chunks=2)
    with make_mc(clean) as mc, pytest.raises(lmc.StreamInterrupted):
        chat(mc, "sync", stream=True, extra_headers=EU, max_tokens=10)
    assert not chat_records(clean, "gcp-euw4")
