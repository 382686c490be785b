"""An engine process killed mid-run and mid-stream: zero failed requests while another
compliant engine runs; a broken stream raises ``StreamInterrupted`` (llama.cpp cannot
continue an assistant message, so its endpoints are ``resume: none``)."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import openai
import pytest

import llm_multicloud as lmc
from tests.integration.drive import PLACEHOLDER_KEY

from .conftest import catalog, fresh, make_mc
from .harness import MODEL, Engine, EngineSpec

pytestmark = pytest.mark.engines
EU = {"x-llm-multicloud-residency": "EU"}


def _victim(spawn: Any, **kw: Any) -> Engine:
    spec = EngineSpec(
        id="oci-fra-llama", provider="oci", region="eu-frankfurt-1", api_key="sk-engine-victim", alias="victim", **kw
    )
    return spawn(spec)


def test_sync_traffic_survives_an_engine_killed_mid_run(suite: dict[str, Any], spawn: Any) -> None:
    victim = _victim(spawn)
    slow, us = suite["gcp-euw4-llama"], suite["azure-eus-llama"]
    cat = catalog(victim.catalog_entry(), slow.catalog_entry(), us.catalog_entry())
    served: list[str] = []
    with make_mc(cat) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        for i in range(16):
            if i == 5:
                victim.kill()
            r = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=fresh("Say yes."), max_tokens=3, extra_headers=EU
            )
            assert r.parse().choices[0].message.content is not None  # every request answered
            served.append(r.headers["x-llm-multicloud-endpoint"])
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
    assert served[:5] == ["oci-fra-llama"] * 5
    assert served[5:] == ["gcp-euw4-llama"] * 11  # the other EU engine, never the US one
    assert snap["oci-fra-llama"]["state"] == "open"  # ejected after its connect failures
    assert snap["oci-fra-llama"]["failures"] <= mc.policy.breaker.consecutive_failures


def test_async_requests_in_flight_when_the_engine_dies_fail_over(suite: dict[str, Any], spawn: Any) -> None:
    victim = _victim(spawn)
    slow = suite["gcp-euw4-llama"]
    cat = catalog(victim.catalog_entry(), slow.catalog_entry())
    results: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    async def run(mc: lmc.MultiCloud) -> None:
        first = anyio.Event()
        async with mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY)) as client:

            async def one(i: int) -> None:
                try:
                    r = await client.chat.completions.with_raw_response.create(
                        model=MODEL, messages=fresh("Count to five."), max_tokens=16, extra_headers=EU
                    )
                    results.append((r.headers["x-llm-multicloud-endpoint"], r.parse().choices[0].message.content or ""))
                    first.set()
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)
                    first.set()

            async with anyio.create_task_group() as tg:
                for i in range(6):  # llama.cpp answers one at a time: the rest queue on the victim
                    tg.start_soon(one, i)
                # kill once the first answer is back, with the others waiting in its queue
                with anyio.fail_after(120):
                    await first.wait()
                victim.kill()

    with make_mc(cat) as mc:
        anyio.run(run, mc)
    assert errors == []
    assert len(results) == 6 and all(text for _, text in results)
    assert {ep for ep, _ in results} == {"oci-fra-llama", "gcp-euw4-llama"}


@pytest.mark.parametrize("resume", [False, True], ids=["resume-off", "resume-on"])
def test_an_engine_killed_mid_stream_raises_stream_interrupted(suite: dict[str, Any], spawn: Any, resume: bool) -> None:
    victim = _victim(spawn)
    slow = suite["gcp-euw4-llama"]
    cat = catalog(victim.catalog_entry(), slow.catalog_entry())
    with make_mc(cat, {"resume": {"enabled": resume}}) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        stream = client.chat.completions.create(
            model=MODEL, messages=fresh("Write a long story about a dragon."), max_tokens=200, stream=True
        )
        got: list[str] = []
        with pytest.raises(lmc.StreamInterrupted) as caught:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    got.append(chunk.choices[0].delta.content)
                    if len(got) == 3:
                        victim.kill()  # the host dies three tokens into the answer
        # what the caller saw is exactly what the exception says was delivered
        assert "".join(got) == caught.value.delivered_text
        assert caught.value.endpoint == "oci-fra-llama"
        assert len(got) >= 3
        # and the next request goes to the engine that is still up, without an error
        r = client.chat.completions.with_raw_response.create(model=MODEL, messages=fresh("Say yes."), max_tokens=3)
        assert r.headers["x-llm-multicloud-endpoint"] == "gcp-euw4-llama"


def test_a_stream_open_on_another_thread_is_not_lost_when_its_engine_dies(suite: dict[str, Any], spawn: Any) -> None:
    """Killed while a sync stream is being read on a worker thread: the reader gets an
    exception, never a silently short answer."""
    victim = _victim(spawn)
    cat = catalog(victim.catalog_entry(), suite["gcp-euw4-llama"].catalog_entry())
    outcome: list[Any] = []
    first = threading.Event()
    with make_mc(cat) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))

        def reader() -> None:
            try:
                stream = client.chat.completions.create(
                    model=MODEL, messages=fresh("Tell me about the sea."), max_tokens=200, stream=True
                )
                n = 0
                for c in stream:
                    if c.choices and c.choices[0].delta.content:
                        n += 1
                        first.set()
                outcome.append(("completed", n))
            except lmc.StreamInterrupted as exc:
                outcome.append(("interrupted", exc))

        t = threading.Thread(target=reader)
        t.start()
        assert first.wait(120)
        victim.kill()
        t.join(120)
    assert not t.is_alive()
    assert [kind for kind, _ in outcome] == ["interrupted"]


def test_a_stream_cut_short_by_interrupt_requests_raises_instead_of_passing_as_complete(
    suite: dict[str, Any], spawn: Any
) -> None:
    """llama-cpp-python's default ``interrupt_requests: true`` ends the stream in
    progress with ``[DONE]`` (and no finish_reason) as soon as another request
    arrives: half an answer that looks complete. The caller must get an exception."""
    victim = _victim(spawn, interrupt_requests=True)
    cat = catalog(victim.catalog_entry(), suite["gcp-euw4-llama"].catalog_entry())
    direct = openai.OpenAI(api_key=victim.spec.api_key, base_url=victim.base_url)
    other: list[str] = []

    def intruder() -> None:  # another client of the same engine, not through the library
        r = direct.chat.completions.create(model="victim", messages=fresh("Say yes."), max_tokens=2)
        other.append(r.choices[0].message.content or "")

    t = threading.Thread(target=intruder)
    with make_mc(cat) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        stream = client.chat.completions.create(
            model=MODEL, messages=fresh("Write a long story about a dragon."), max_tokens=200, stream=True
        )
        got: list[str] = []
        with pytest.raises(lmc.StreamInterrupted, match="finish_reason") as caught:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    got.append(chunk.choices[0].delta.content)
                    if len(got) == 3:
                        t.start()  # the intruder's request ends this stream early
        assert "".join(got) == caught.value.delivered_text and caught.value.endpoint == "oci-fra-llama"
    t.join(120)
    assert not t.is_alive() and other != []
