"""Capacity limits end to end: the fleet enforces rpm/tpm with 429 + Retry-After; the
library, told the same limits in the catalog, sends only what fits — skipping a
spent endpoint, waiting for room when nothing else can serve — and settles every
reservation with what was really used. Through the real openai SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, Latency, RateLimits, RegionSpec

from .conftest import Audit
from .drive import PLACEHOLDER_KEY

pytestmark = pytest.mark.integration
MODEL = "llama-3.1-8b"
MSG = [{"role": "user", "content": "one two three four"}]  # 4 words: 4 prompt tokens on the fleet


@pytest.fixture(scope="module")
def lfleet() -> Iterator[Fleet]:
    regions = [
        RegionSpec(
            id=rid,
            provider="aws",
            region=reg,
            models={MODEL: "served"},
            api_key=f"sk-{rid}",
            latency=Latency(ttft_ms=1, ttft_jitter=0.0, itl_ms=5),
            limits=RateLimits(rpm=120, burst_s=2),  # 2 req/s, bursts of 4
            seed=i,
        )
        for i, (rid, reg) in enumerate([("a", "eu-central-1"), ("b", "eu-west-1")])
    ]
    with Fleet(regions) as f:
        yield f


@pytest.fixture
def fleet(lfleet: Fleet) -> Iterator[Fleet]:
    lfleet.reset()
    yield lfleet
    lfleet.reset()


def _mc(fleet: Fleet, limits: dict[str, Any] | None, only: str | None = None, **kw: Any) -> lmc.MultiCloud:
    cat = fleet.catalog()
    if only is not None:
        cat["endpoints"] = [e for e in cat["endpoints"] if e["id"] == only]
    if limits is not None:
        for e in cat["endpoints"]:
            e["limits"] = limits
    policy = {"strategy": "ordered", "probe": {"enabled": False}, "hedge": {"enabled": False}, "explore": 0.0}
    policy.update(kw.pop("policy", {}))
    return lmc.MultiCloud(cat, policy, **kw)


def _status(fleet: Fleet, region: str) -> list[int | None]:
    return [r.status for r in fleet.received(region) if r.path.endswith("/chat/completions")]


def test_without_limits_in_the_catalog_the_fleet_answers_429(fleet: Fleet) -> None:
    """The control: the quota is real, and only 429s teach a library that does not know it."""
    with _mc(fleet, None, only="a", policy={"retry": {"max_attempts": 1}}) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
        with pytest.raises(openai.APIStatusError):
            for _ in range(8):
                client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=2)
    assert 429 in _status(fleet, "a")


def test_a_spent_endpoint_is_skipped_and_the_last_one_waits_for_room(fleet: Fleet) -> None:
    audit = Audit()
    with _mc(fleet, {"rpm": 120, "burst_s": 2}, on_attempt=audit) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        served = []
        for _ in range(12):  # a burst of ~4 fits on each; the rest waits for the refill
            r = client.chat.completions.with_raw_response.create(model=MODEL, messages=MSG, max_tokens=2)
            served.append(r.headers["x-llm-multicloud-endpoint"])
        # ordered: a until its bucket is spent, then b; then whichever refills first
        first_b = served.index("b")
        assert first_b >= 3 and served[:first_b] == ["a"] * first_b
        plan = mc.explain(MODEL, max_tokens=2)
        assert plan.candidates == [] and {x.kind for x in plan.excluded} == {"limited"}
        assert plan.wait_until is not None
        snap = {d["quota_domain"]: d for d in mc.snapshot()["limits"]}
        assert snap["endpoint:a"]["rpm"] == 120 and snap["endpoint:a"]["reserved_tokens"] == 0
    assert 429 not in _status(fleet, "a") + _status(fleet, "b")
    assert all(r.outcome == "won" for r in audit.records)  # nothing refused, nothing retried


def test_a_request_that_cannot_get_room_before_its_deadline_fails_clearly(fleet: Fleet) -> None:
    with _mc(fleet, {"rpm": 1, "burst_s": 60}, only="a") as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, timeout=2.0))
        client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=2)
        with pytest.raises(openai.InternalServerError, match="over its capacity limit") as e:
            client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=2)
        assert e.value.status_code == 503
    assert _status(fleet, "a") == [200]


def _bucket(mc: lmc.MultiCloud) -> dict[str, Any]:
    (b,) = [d for d in mc.snapshot()["limits"] if d["quota_domain"] == "endpoint:a"]
    return b


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_reservations_settle_exactly_for_complete_early_broken_and_cancelled_streams(fleet: Fleet, kind: str) -> None:
    # One attempt per request: a retry of the 503 below would meet the fleet's own rpm
    # burst of 4 (a 429, which stays charged: see the test of refused attempts).
    with _mc(fleet, {"tpm": 1_000_000}, only="a", policy={"retry": {"max_attempts": 1}}) as mc:
        est = 4 + len("one two three four") // 4  # the library's prompt estimate: 4 per message + chars / 4
        settled = 0

        def check(expected_used: int) -> None:
            nonlocal settled
            settled += expected_used
            b = _bucket(mc)
            assert b["reserved_tokens"] == 0
            assert b["settled_tokens"] == settled

        if kind == "sync":
            client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
            # complete: the usage the server reported (4 prompt + 20 completion)
            list(client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=20, stream=True))
            check(24)
            # ended early by the caller after 3 content chunks (only keep-alives follow
            # them: no 4th chunk can reach the caller's HTTP library before it closes)
            fleet.set_fault("a", mode="keepalive_only", after_chunks=3, interval_ms=50)
            with client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=20, stream=True) as s:
                got = 0
                for c in s:
                    got += bool(c.choices and c.choices[0].delta.content)
                    if got == 3:
                        break
            check(est + 3)
            # broken after 5 content chunks (the connection drops)
            fleet.set_fault("a", mode="close_mid_stream", after_chunks=5)
            with pytest.raises(lmc.StreamInterrupted):
                list(client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=20, stream=True))
            check(est + 5)
            fleet.set_fault("a", mode="none")
            # refused upstream (a 503 before any token): nothing used
            fleet.set_fault("a", mode="status", status=503)
            with pytest.raises(openai.APIStatusError):
                client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=20)
            check(0)
            return

        # After 3 content chunks only keep-alives arrive: the reader is waiting inside
        # the stream when its task is cancelled, whatever the machine's speed.
        fleet.set_fault("a", mode="keepalive_only", after_chunks=3, interval_ms=50)

        async def run() -> None:
            client = mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY))
            async with client:
                got = 0
                seen_three = anyio.Event()

                async def reader() -> None:
                    nonlocal got
                    s = await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=200, stream=True)
                    async for c in s:
                        got += bool(c.choices and c.choices[0].delta.content)
                        if got == 3:
                            seen_three.set()

                async with anyio.create_task_group() as tg:
                    tg.start_soon(reader)
                    await seen_three.wait()
                    tg.cancel_scope.cancel()  # the caller's task is cancelled mid-stream
            check(est + got)
            assert got == 3

        anyio.run(run)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_attempt_sent_but_never_answered_keeps_its_prompt_one_never_sent_gives_all_back(
    fleet: Fleet, kind: str
) -> None:
    """A request that reached the server but got no status line (here: the server
    hangs until the attempt's deadline) may have been counted by its quota: it keeps
    the prompt's estimate, never the whole reservation back (that under-count would
    be paid in 429s). One refused at connect never reached it: everything goes back."""
    policy = {"retry": {"max_attempts": 1}, "timeouts": {"response_s": 0.4, "total_s": 5.0}}
    with _mc(fleet, {"tpm": 1_000_000}, only="a", policy=policy) as mc:
        est = 4 + len("one two three four") // 4  # 4 per message + chars / 4

        def call() -> None:
            if kind == "sync":
                client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
                client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=50)
                return

            async def run() -> None:
                async with mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY, max_retries=0)) as client:
                    await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=50)

            anyio.run(run)

        fleet.set_fault("a", mode="hang")
        with pytest.raises(openai.APIStatusError):
            call()
        assert [r.fault for r in fleet.received("a")] == ["hang"]  # it did reach the server
        b = _bucket(mc)
        assert b["reserved_tokens"] == 0 and b["settled_tokens"] == est

        fleet.set_fault("a", mode="down")
        with pytest.raises(openai.APIStatusError):
            call()
        b = _bucket(mc)
        assert b["reserved_tokens"] == 0 and b["settled_tokens"] == est  # nothing more


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_an_attempt_refused_with_429_stays_charged_to_its_bucket(fleet: Fleet, kind: str) -> None:
    """The catalog's limit is higher than the server's real quota (as when another
    client shares the quota, or a replica partitioned from Redis refills its share on
    top of the others'): the server refuses with 429 where our bucket had room. The
    refused attempt keeps its whole reservation and its request: our bucket comes
    down by what the server refused, so refusals can never outnumber the overrun
    (given back, each cooldown's end sent the whole backlog again)."""
    policy = {"retry": {"max_attempts": 1}}
    with _mc(fleet, {"rpm": 6000, "tpm": 1_000_000}, only="a", policy=policy) as mc:  # the server: 4, then 2/s
        est = 4 + len("one two three four") // 4
        answered = 0
        n = 16  # sent back to back: more than the server's burst and refill let through

        def outcome(exc: openai.APIStatusError | None) -> None:
            nonlocal answered
            if exc is None:
                answered += 1
            else:
                assert exc.status_code in (429, 503), exc

        if kind == "sync":
            client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=0))
            for _ in range(n):
                try:
                    client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=10)
                except openai.APIStatusError as exc:
                    outcome(exc)
                else:
                    outcome(None)
        else:

            async def run() -> None:
                async with mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY, max_retries=0)) as client:
                    for _ in range(n):
                        try:
                            await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=10)
                        except openai.APIStatusError as exc:
                            outcome(exc)
                        else:
                            outcome(None)

            anyio.run(run)
        refused = _status(fleet, "a").count(429)
        assert refused >= 1 and answered >= 4, _status(fleet, "a")
        b = _bucket(mc)
        # answered: the fleet's usage (4 prompt + 10 completion); refused: the reservation
        assert b["reserved_tokens"] == 0
        assert b["settled_tokens"] == answered * (4 + 10) + refused * (est + 10)
        assert b["requests"] == answered + refused
