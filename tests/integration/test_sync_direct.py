"""Issue 14, point 1: a sync client's request runs on the caller's thread, over the
sync HTTP library, without the background event loop — unless a credential of the
caller's own may suspend. (Sync requests that may hedge: test_sync_hedge.py.)

Proof of "on the caller's thread": the audit hook (called by the engine when an
attempt ends) records ``threading.get_ident()``; the MultiCloud's background loop is
never even started (``mc.background is None``) when nothing needs it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable
from typing import Any

import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.auth import Credential, OutgoingRequest
from llm_multicloud.fleet import Fleet
from llm_multicloud.upstream import drive

from .conftest import MODEL, Audit, chat_records, make_mc
from .drive import PLACEHOLDER_KEY

MSG = [{"role": "user", "content": "hello"}]
EU = {"x-llm-multicloud-residency": "EU"}


class ThreadAudit(Audit):
    """The audit hook, plus the thread each record was made on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def __call__(self, rec: lmc.AttemptRecord) -> None:
        self.threads.append(threading.get_ident())
        super().__call__(rec)


def _ask(client: openai.OpenAI, *, stream: bool, **kw: Any) -> tuple[str, dict[str, str]]:
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=MSG, stream=True, max_tokens=6, **kw
        ) as raw:
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
            return text, dict(raw.headers)
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MSG, max_tokens=6, **kw)
    return raw.parse().choices[0].message.content or "", dict(raw.headers)


@pytest.mark.parametrize("stream", [False, True])
def test_a_sync_request_runs_on_the_callers_thread_without_the_background_loop(clean: Fleet, stream: bool) -> None:
    audit = ThreadAudit()
    with make_mc(clean, on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        texts = [_ask(client, stream=stream)[0] for _ in range(3)]
        assert all(texts)
        assert mc.background is None  # no loop thread was ever started
        assert audit.threads == [threading.get_ident()] * 3
        assert [r.outcome for r in audit.records] == ["won"] * 3
        # ... and from other threads: each request on its own caller's thread
        seen: dict[int, str] = {}
        together = threading.Barrier(4, timeout=30)  # all alive at once: four distinct idents

        def worker() -> None:
            together.wait()
            seen[threading.get_ident()] = _ask(client, stream=stream)[0]
            together.wait()

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(seen) == 4 and all(seen.values())
        assert sorted(audit.threads[3:]) == sorted(seen)
        assert mc.background is None


@pytest.mark.parametrize("stream", [False, True])
def test_sync_direct_fails_over_on_the_callers_thread(clean: Fleet, stream: bool) -> None:
    audit = ThreadAudit()
    clean.set_fault("aws-euc1", mode="status", status=503)
    with make_mc(clean, on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        text, headers = _ask(client, stream=stream, extra_headers=EU)
        assert text and headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        assert [(r.endpoint, r.outcome) for r in audit.records] == [("aws-euc1", "failed"), ("gcp-euw4", "won")]
        assert audit.threads == [threading.get_ident()] * 2 and mc.background is None


def test_a_sync_request_ignores_hedging_when_the_model_has_one_endpoint(clean: Fleet) -> None:
    audit = ThreadAudit()
    cat = clean.catalog()
    cat["endpoints"] = [e for e in cat["endpoints"] if e["id"] == "aws-euc1"]
    policy = {"strategy": "ordered", "probe": {"enabled": False}, "hedge": {"enabled": True, "delay_ms": 1}}
    with lmc.MultiCloud(cat, policy, on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        assert _ask(client, stream=True)[0]
        assert audit.threads == [threading.get_ident()] and mc.background is None


def test_sync_direct_first_token_deadline_holds_against_a_trickle_of_keepalives(clean: Fleet) -> None:
    """Keep-alive comments before the first token are not progress: the attempt times
    out at first_token_s (every socket read is bounded by the deadline) and fails over."""
    audit = ThreadAudit()
    clean.set_fault("aws-euc1", mode="keepalive_only", after_chunks=0, interval_ms=50)
    with make_mc(clean, {"timeouts": {"first_token_s": 0.4}}, on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        text, headers = _ask(client, stream=True, extra_headers=EU)
        assert text and headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        first = audit.records[0]
        assert (first.endpoint, first.error_type) == ("aws-euc1", "timeout")
        assert first.reason is not None and "no first token within 0.40s" in first.reason
        assert audit.threads == [threading.get_ident()] * 2 and mc.background is None


def test_sync_direct_chunk_gap_after_commit_raises_on_the_callers_thread(clean: Fleet) -> None:
    audit = ThreadAudit()
    clean.set_fault("aws-euc1", mode="keepalive_only", after_chunks=2, interval_ms=50)
    with make_mc(clean, {"timeouts": {"chunk_gap_s": 0.3}}, on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        got: list[str] = []
        with pytest.raises(lmc.StreamInterrupted, match=r"no data for 0\.3s") as ei:
            for c in client.chat.completions.create(model=MODEL, messages=MSG, stream=True, max_tokens=20):
                got.extend(ch.delta.content or "" for ch in c.choices)
        assert ei.value.endpoint == "aws-euc1" and "".join(got)
        assert [(r.endpoint, r.outcome) for r in audit.records] == [("aws-euc1", "interrupted")]
        assert audit.threads == [threading.get_ident()] and mc.background is None


def test_a_request_whose_io_suspends_is_refused_as_a_bug() -> None:
    """The sync driver completes a coroutine in one step; one that awaits an event loop
    is a bug: closed (its finally blocks run) and reported, never left hanging."""
    closed: list[bool] = []

    async def suspends() -> int:
        try:
            await asyncio.sleep(0)
            return 1
        finally:
            closed.append(True)

    with pytest.raises(RuntimeError, match="suspended"):
        drive(suspends())
    assert closed == [True]

    async def blocks() -> int:
        return 7

    assert drive(blocks()) == 7


class Suspending(Credential):
    """A credential of the caller's own whose apply() genuinely awaits the loop."""

    kind = "test"

    def __init__(self, key: str, lie: bool) -> None:
        super().__init__(None)
        self._key = key
        self.never_suspends = lie  # lie=True: claims it never suspends

    async def apply(self, req: OutgoingRequest) -> object:
        await asyncio.sleep(0)
        req.set_header("authorization", f"Bearer {self._key}")
        return self._key

    def secrets(self) -> Iterable[str]:
        return (self._key,)


def test_a_credential_that_suspends_runs_on_the_loop_and_one_that_lies_is_caught(clean: Fleet) -> None:
    cat = clean.catalog()
    cat["endpoints"] = [e for e in cat["endpoints"] if e["id"] == "aws-euc1"]
    key = cat["endpoints"][0].pop("api_key")
    policy = {"probe": {"enabled": False}, "hedge": {"enabled": False}}
    cat["endpoints"][0]["auth"] = Suspending(key, lie=False)
    mc = lmc.MultiCloud(cat, policy)
    try:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        assert _ask(client, stream=False)[0]
        assert mc.background is not None  # it needed the loop, and got it
    finally:
        mc.close()
    cat["endpoints"][0]["auth"] = Suspending(key, lie=True)
    before = len(chat_records(clean))
    mc = lmc.MultiCloud(cat, policy)
    try:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        with pytest.raises((openai.APIConnectionError, RuntimeError)) as ei:  # wrapped or not, by openai version
            _ask(client, stream=False)
        assert "suspended" in repr(ei.value.__cause__ or ei.value)
        assert len(chat_records(clean)) == before  # nothing was sent
    finally:
        mc.close()
