"""Hostile and broken servers: nothing leaks, nothing freezes, nothing passes as success.

Each test drives the real openai SDK (sync and async, streamed and not) against fleet
servers on 127.0.0.1 that misbehave on purpose — redirects, 200s that are not
answers, garbage, drips, keep-alives, 50 MB events and bodies, keys echoed back —
and judges from the server side where it can (who received what, how many bytes
left the server, whether the client hung up).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, Latency, RegionSpec
from llm_multicloud.probe import Prober
from llm_multicloud.redaction import Redactor
from llm_multicloud.upstream import Upstream

from .conftest import fresh, make_mc
from .drive import PLACEHOLDER_KEY, chat
from .test_telemetry import Otel

pytestmark = pytest.mark.integration

MODEL = "llama-3.1-8b"
KINDS = ["sync", "async"]
# Keys with characters that every printed form escapes differently.
KEY_A = "sk-live-7Qd9/Zx+fT2mWq8Lp0Ab=kR4s"
KEY_B = "sk-live-Hn5%Vc3&Jw6-Ty1!Ue8~Io2p"
EU = {"x-llm-multicloud-residency": "EU"}
DE = {"x-llm-multicloud-residency": "DE"}  # only eu-a can serve
FAST = Latency(ttft_ms=1, ttft_jitter=0.0)


@pytest.fixture(scope="module")
def hostile() -> Iterator[Fleet]:
    regions = [
        RegionSpec(id="eu-a", provider="aws", region="eu-central-1", models={MODEL: "m-a"}, api_key=KEY_A, seed=1),
        RegionSpec(id="eu-b", provider="gcp", region="europe-west4", models={MODEL: "m-b"}, api_key=KEY_B, seed=2),
    ]
    with Fleet(regions) as f:
        yield f


@pytest.fixture
def fleet(hostile: Fleet) -> Iterator[Fleet]:
    with fresh(hostile, FAST):
        yield hostile


def _mc(fleet: Fleet, policy: dict[str, Any] | None = None, **kw: Any) -> lmc.MultiCloud:
    return make_mc(fleet, policy, **kw)


def _chats(fleet: Fleet, region: str) -> list[Any]:
    return [r for r in fleet.received(region) if r.path.endswith("/chat/completions")]


def _state(mc: lmc.MultiCloud, endpoint: str) -> dict[str, Any]:
    return next(e for e in mc.snapshot()["endpoints"] if e["id"] == endpoint)


def assert_no_key(text: str) -> None:
    """No key in any printed form, and no 12 consecutive characters of one."""
    assert Redactor([KEY_A, KEY_B])(text) == text, text
    for key in (KEY_A, KEY_B):
        for i in range(len(key) - 11):
            assert key[i : i + 12] not in text, text


# --------------------------------------------------------------- 3xx and 2xx that lie


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_redirect_is_an_endpoint_fault_never_followed_never_an_answer(fleet: Fleet, kind: str, stream: bool) -> None:
    # The Location points at the other region: following it would hand eu-a's key to eu-b.
    fleet.set_fault("eu-a", mode="redirect", status=302, location=fleet.url("eu-b") + "/chat/completions")
    with _mc(fleet) as mc:
        ans = chat(mc, kind, stream=stream, extra_headers=EU)
        assert ans.headers["x-llm-multicloud-endpoint"] == "eu-b" and ans.text.startswith("[eu-b] w0")
        assert len(_chats(fleet, "eu-a")) == 1
        (to_b,) = _chats(fleet, "eu-b")
        assert to_b.headers["authorization"] == f"Bearer {KEY_B}"  # our failover, not a followed redirect
        st = _state(mc, "eu-a")
        assert st["failures"] == 1 and "redirect" in st["last_error"]
        # Nothing else can serve: a clear 503, not the redirect handed over as an answer.
        with pytest.raises(openai.InternalServerError) as ei:
            chat(mc, kind, stream=stream, extra_headers=DE)
        assert "HTTP 302 redirect to" in str(ei.value) and "redirects are not followed" in str(ei.value)
        assert len(_chats(fleet, "eu-b")) == 1


@pytest.mark.parametrize(
    ("mode", "says"),
    [("html_200", "not JSON"), ("error_200", "no 'choices' list")],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_200_that_is_not_an_answer_fails_over_and_is_penalised(
    fleet: Fleet, kind: str, stream: bool, mode: str, says: str
) -> None:
    fleet.set_fault("eu-a", mode=mode)
    with _mc(fleet) as mc:
        ans = chat(mc, kind, stream=stream, extra_headers=EU)
        assert ans.headers["x-llm-multicloud-endpoint"] == "eu-b" and ans.text.startswith("[eu-b] w0")
        assert _state(mc, "eu-a")["failures"] == 1
        with pytest.raises(openai.InternalServerError) as ei:
            chat(mc, kind, stream=stream, extra_headers=DE)
        msg = str(ei.value)
        assert "eu-a" in msg and ("expected an event stream" in msg if stream else says in msg), msg
        if mode == "error_200" and not stream:
            assert "it carries an error: upstream failure" in msg


def _raw(mc: lmc.MultiCloud, kind: str, api: str, **kw: Any) -> Any:
    """``client.<api>.with_raw_response.create(**kw)`` through a sync or an async client."""

    async def run() -> Any:
        async with mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY)) as c:
            return await getattr(c, api).with_raw_response.create(**kw)

    if kind == "sync":
        return getattr(mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY)), api).with_raw_response.create(**kw)
    return anyio.run(run)


@pytest.mark.parametrize("kind", KINDS)
def test_embeddings_200_with_an_error_object_is_not_an_answer(fleet: Fleet, kind: str) -> None:
    fleet.set_fault("eu-a", mode="error_200")
    with _mc(fleet) as mc:
        raw = _raw(mc, kind, "embeddings", model=MODEL, input="x", extra_headers=EU)
        assert raw.headers["x-llm-multicloud-endpoint"] == "eu-b" and raw.parse().data
        assert _state(mc, "eu-a")["failures"] == 1


@pytest.mark.parametrize("mode", ["html_200", "error_200"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_responses_api_200_that_is_not_a_response_fails_over(fleet: Fleet, kind: str, mode: str) -> None:
    fleet.set_fault("eu-a", mode=mode)
    with _mc(fleet) as mc:
        raw = _raw(mc, kind, "responses", model=MODEL, input="x", extra_headers=EU)
        assert raw.headers["x-llm-multicloud-endpoint"] == "eu-b"
        assert raw.parse().output_text.startswith("[eu-b] w0")
        assert _state(mc, "eu-a")["failures"] == 1


# --------------------------------------------------------------- broken streams after commit


@pytest.mark.parametrize("kind", KINDS)
def test_garbage_mid_stream_raises_stream_interrupted_with_what_was_delivered(fleet: Fleet, kind: str) -> None:
    fleet.set_fault("eu-a", mode="garbage_mid_stream", after_chunks=2)
    with _mc(fleet) as mc:
        with pytest.raises(lmc.StreamInterrupted, match="malformed event mid-stream") as ei:
            chat(mc, kind, stream=True, extra_headers=DE, stream_options={"include_usage": True})
        assert ei.value.delivered_text == "[eu-a] w0 w1" and ei.value.chunks == 3
        assert ei.value.endpoint == "eu-a"
        assert _state(mc, "eu-a")["failures"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_done_without_a_finish_reason_is_a_break_not_an_answer(fleet: Fleet, kind: str) -> None:
    # llama.cpp's `interrupt_requests` (and a worker killed behind a proxy) ends the
    # stream with [DONE] although no choice ever got a finish_reason: half an answer.
    fleet.set_fault("eu-a", mode="stop_mid_stream", after_chunks=2)
    with _mc(fleet) as mc:
        with pytest.raises(lmc.StreamInterrupted, match="before any choice had a finish_reason") as ei:
            chat(mc, kind, stream=True, extra_headers=DE, stream_options={"include_usage": True})
        assert ei.value.delivered_text == "[eu-a] w0 w1" and ei.value.endpoint == "eu-a"
        assert _state(mc, "eu-a")["failures"] == 1  # the endpoint stopped mid-answer: its fault
    # (with resume on, another endpoint continues it: test_hedging's resume tests)


@pytest.mark.parametrize("mode", ["drip", "keepalive_only"])
@pytest.mark.parametrize("kind", KINDS)
def test_drips_and_keepalives_do_not_keep_a_dead_stream_alive(fleet: Fleet, kind: str, mode: str) -> None:
    # A byte (or a keep-alive comment) every 50 ms: the connection is never silent for
    # the 0.4 s gap, but no data event arrives, so the stream must break.
    fleet.set_fault("eu-a", mode=mode, after_chunks=2, interval_ms=50)
    with _mc(fleet, {"timeouts": {"chunk_gap_s": 0.4}}) as mc:
        with pytest.raises(lmc.StreamInterrupted, match=r"no data for 0\.4s") as ei:
            chat(mc, kind, stream=True, extra_headers=DE)
        assert ei.value.delivered_text == "[eu-a] w0 w1"
    fleet.wait_for(lambda: _chats(fleet, "eu-a")[0].outcome == "disconnected")
    rec = _chats(fleet, "eu-a")[0]
    assert rec.fault == mode and rec.chunks_sent == 2
    if mode == "drip":
        assert 0 < rec.bytes_sent < 100  # the client left long before the drip ended


@pytest.mark.parametrize("kind", KINDS)
def test_a_committed_stream_has_a_total_deadline(fleet: Fleet, kind: str) -> None:
    fleet.set_latency("eu-a", ttft_ms=1, ttft_jitter=0.0, itl_ms=50)  # steady data, 40 tokens = 2 s
    with _mc(fleet, {"timeouts": {"stream_total_s": 0.5}}) as mc:
        with pytest.raises(lmc.StreamInterrupted, match=r"still running 0\.5s after the request started") as ei:
            chat(mc, kind, stream=True, extra_headers=DE, max_tokens=40)
        assert ei.value.delivered_text.startswith("[eu-a] w0 w1")
    fleet.wait_for(lambda: _chats(fleet, "eu-a")[0].outcome == "disconnected")
    assert _chats(fleet, "eu-a")[0].chunks_sent < 40


# --------------------------------------------------------------- limits while reading


@pytest.mark.parametrize("kind", KINDS)
def test_a_huge_event_breaks_the_stream_and_is_not_read_to_the_end(fleet: Fleet, kind: str) -> None:
    fleet.set_fault("eu-a", mode="huge_event", after_chunks=2, size=50 << 20)
    with _mc(fleet, {"read_limits": {"event_bytes": 1 << 20}}) as mc:
        with pytest.raises(lmc.StreamInterrupted, match=r"exceeded 1048576 bytes") as ei:
            chat(mc, kind, stream=True, extra_headers=DE)
        assert ei.value.delivered_text == "[eu-a] w0 w1"
        fleet.wait_for(lambda: _chats(fleet, "eu-a")[0].outcome == "disconnected")
        assert _chats(fleet, "eu-a")[0].bytes_sent < 16 << 20  # of 50 MiB
        # Before the first token, the same event is an endpoint fault: failover.
        fleet.set_fault("eu-a", mode="huge_event", after_chunks=0, size=50 << 20)
        ans = chat(mc, kind, stream=True, extra_headers=EU)
        assert ans.headers["x-llm-multicloud-endpoint"] == "eu-b"


@pytest.mark.parametrize("status", [200, 500], ids=["answer", "error"])
@pytest.mark.parametrize("kind", KINDS)
def test_huge_bodies_are_cut_off_when_the_limit_is_crossed(fleet: Fleet, kind: str, status: int) -> None:
    fleet.set_fault("eu-a", mode="huge_body", status=status, size=50 << 20)
    with _mc(fleet, {"read_limits": {"answer_body_bytes": 1 << 20}}) as mc:
        ans = chat(mc, kind, stream=False, extra_headers=EU)
        assert ans.headers["x-llm-multicloud-endpoint"] == "eu-b"
        assert _state(mc, "eu-a")["failures"] == 1
    fleet.wait_for(lambda: _chats(fleet, "eu-a")[0].outcome == "disconnected")
    assert _chats(fleet, "eu-a")[0].bytes_sent < 16 << 20  # of 50 MiB: not read to the end


def test_a_huge_probe_reply_fails_the_probe_and_is_not_read_to_the_end(fleet: Fleet) -> None:
    fleet.set_fault("eu-a", mode="huge_body", size=50 << 20)
    with _mc(fleet, {"read_limits": {"probe_body_bytes": 1 << 20}}) as mc:

        async def run() -> Any:
            from llm_multicloud.client import _lib

            up = Upstream(_lib(None))
            try:
                return await Prober(mc).probe(up, mc.health.states[0])
            finally:
                await up.aclose()

        result = anyio.run(run)
        assert not result.ok and "1048576-byte limit" in (result.error or "")

    def listing() -> Any:
        (rec,) = [r for r in fleet.received("eu-a") if r.path.endswith("/models")]
        return rec

    fleet.wait_for(lambda: listing().outcome == "disconnected")
    assert listing().bytes_sent < 16 << 20


# --------------------------------------------------------------- secrets


@pytest.mark.parametrize("kind", KINDS)
def test_a_key_echoed_after_commit_leaks_nowhere(fleet: Fleet, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    fleet.set_fault("eu-a", mode="key_echo", after_chunks=2)
    otel = Otel()
    records: list[lmc.AttemptRecord] = []
    caplog.set_level(logging.DEBUG, logger="llm_multicloud")
    try:
        policy = {"breaker": {"consecutive_failures": 1}}
        with otel.attach(_mc(fleet, policy, on_attempt=records.append, telemetry=False)) as mc:
            with pytest.raises(lmc.StreamInterrupted, match="error event mid-stream: invalid api key") as ei:
                chat(mc, kind, stream=True, extra_headers=DE)
            assert ei.value.delivered_text == "[eu-a] w0 w1"
            assert_no_key(str(ei.value))
            assert _state(mc, "eu-a")["state"] == "open"  # the breaker's log line is emitted
            assert "invalid api key ***" in _state(mc, "eu-a")["last_error"]
            assert_no_key(json.dumps(mc.snapshot()))
            assert_no_key(str(mc.explain(MODEL, residency="EU")))
            assert_no_key(" ".join(str(r.reason) for r in records))
        spans = otel.finished()
        assert spans and any(s.status.description for s in spans)
        for s in spans:
            assert_no_key(str(s.status.description) + json.dumps(dict(s.attributes or {}), default=str))
        assert "invalid api key" in caplog.text
        assert_no_key(caplog.text)
    finally:
        otel.close()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_key_echoed_before_commit_leaks_nowhere(
    fleet: Fleet, kind: str, stream: bool, caplog: pytest.LogCaptureFixture
) -> None:
    fleet.set_fault("eu-a", mode="key_echo", after_chunks=0, status=500)
    caplog.set_level(logging.DEBUG, logger="llm_multicloud")
    with _mc(fleet, {"breaker": {"consecutive_failures": 1}}) as mc:
        with pytest.raises(openai.InternalServerError) as ei:
            chat(mc, kind, stream=stream, extra_headers=DE)
        assert "invalid api key ***" in str(ei.value)
        assert_no_key(str(ei.value) + json.dumps(ei.value.body))
        assert_no_key(json.dumps(mc.snapshot()) + str(mc.explain(MODEL, residency="DE")))
    assert_no_key(caplog.text)


@pytest.mark.parametrize("kind", KINDS)
def test_a_key_with_a_trailing_newline_is_cleaned_at_load(fleet: Fleet, kind: str) -> None:
    cat = fleet.catalog()
    for ep in cat["endpoints"]:
        ep["api_key"] = f"{ep['api_key']}\n"  # as read from a mounted secret file
    base = {"strategy": "ordered", "probe": {"enabled": False}, "hedge": {"enabled": False}}
    with lmc.MultiCloud(cat, base) as mc:
        for stream in (False, True):
            ans = chat(mc, kind, stream=stream, extra_headers=DE)
            assert ans.text.startswith("[eu-a] w0")
    assert [r.headers["authorization"] for r in _chats(fleet, "eu-a")] == [f"Bearer {KEY_A}"] * 2


# --------------------------------------------------------------- 503 texts


@pytest.mark.parametrize("kind", KINDS)
def test_the_503_says_the_attempts_ran_out_not_that_a_cooldown_outlasts_the_deadline(fleet: Fleet, kind: str) -> None:
    for rid in fleet.region_ids:
        fleet.set_fault(rid, mode="status", status=429, retry_after="0.5")
    with _mc(fleet, {"retry": {"max_attempts": 2}}) as mc, pytest.raises(openai.InternalServerError) as ei:
        chat(mc, kind, stream=False, extra_headers=EU, timeout=30)
    msg = str(ei.value)
    assert "stopped: all 2 attempts were used (policy.retry.max_attempts)" in msg, msg
    assert "after the request's deadline" not in msg
    assert len(_chats(fleet, "eu-a")) == len(_chats(fleet, "eu-b")) == 1


@pytest.mark.parametrize("kind", KINDS)
def test_the_503_says_when_a_cooldown_really_outlasts_the_deadline(fleet: Fleet, kind: str) -> None:
    fleet.set_fault("eu-a", mode="status", status=429, retry_after="60")
    with _mc(fleet) as mc:
        with pytest.raises(openai.InternalServerError):
            chat(mc, kind, stream=False, extra_headers=DE, timeout=5)
        with pytest.raises(openai.InternalServerError) as ei:  # now it is cooling: nothing to try
            chat(mc, kind, stream=False, extra_headers=DE, timeout=5)
    msg = str(ei.value)
    assert "after the request's deadline" in msg and "attempts were used" not in msg, msg
