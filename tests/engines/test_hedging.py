"""Hedging against engines that are genuinely slow: one configured with a 1-token
prefill batch (its first token comes late on a long prompt), and one loaded with
other work (llama.cpp answers one request at a time; the rest wait in its queue)."""

from __future__ import annotations

import threading
from typing import Any

import openai
import pytest

from tests.integration.drive import PLACEHOLDER_KEY

from .conftest import catalog, fresh, make_mc
from .harness import MODEL

pytestmark = pytest.mark.engines

#: A prompt of about 150 tokens: prefill is where n_batch=1 hurts.
LONG = (
    "Summarise in one sentence: The committee met on Tuesday to review the harbour "
    "project. Engineers reported that the new breakwater had reduced wave heights in the "
    "inner basin by almost half, that dredging of the northern channel was two weeks "
    "behind schedule because of a broken pump, and that the budget for the lighting of "
    "the quay would need another review after the supplier raised its prices. The mayor "
    "asked for a public meeting before the summer, and the fishermen's association asked "
    "that the old slipway be kept open during the works. The committee agreed to meet "
    "again in a month, after the contractor's revised plan arrives."
)


def _stream_first_token(client: openai.OpenAI, question: str) -> tuple[str, str, str]:
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=fresh(question), max_tokens=4, stream=True, temperature=0.0
    ) as raw:
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        return raw.headers["x-llm-multicloud-endpoint"], raw.headers["x-llm-multicloud-hedged"], text


def test_a_late_first_token_from_the_slow_engine_is_hedged_to_the_fast_one(suite: dict[str, Any]) -> None:
    slow, fast = suite["gcp-euw4-llama"], suite["aws-euc1-llama"]
    cat = catalog(slow.catalog_entry(), fast.catalog_entry())  # the slow one is the primary
    with make_mc(cat) as mc:
        plain = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        unhedged = [_stream_first_token(plain, LONG) for _ in range(2)]
    with make_mc(cat, {"hedge": {"enabled": True, "delay_ms": 300, "budget": 1.0}}) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        hedged = [_stream_first_token(client, LONG) for _ in range(4)]
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
    assert [ep for ep, _, _ in unhedged] == ["gcp-euw4-llama"] * 2
    assert all(text for _, _, text in unhedged + hedged)
    # the fast engine's first token beats the slow one's prefill every time
    assert [(ep, h) for ep, h, _ in hedged] == [("aws-euc1-llama", "true")] * 4
    assert snap["aws-euc1-llama"]["hedge_wins"] == 4
    assert snap["gcp-euw4-llama"]["wasted"] == 4  # the losers were cancelled


def test_an_engine_busy_with_other_work_is_hedged_around(suite: dict[str, Any]) -> None:
    fast, slow = suite["aws-euc1-llama"], suite["gcp-euw4-llama"]
    cat = catalog(fast.catalog_entry(), slow.catalog_entry())  # the fast one is the primary...
    busy = threading.Event()
    done = threading.Event()

    def load() -> None:  # ...but another client keeps it generating
        with openai.OpenAI(base_url=fast.base_url, api_key=fast.spec.api_key, max_retries=0) as direct:
            stream = direct.chat.completions.create(
                model="smollm2-135m-instruct",
                messages=fresh("Write a long story about a lighthouse keeper."),
                max_tokens=400,
                stream=True,
            )
            for c in stream:
                if c.choices and c.choices[0].delta.content:
                    busy.set()
                if done.is_set():
                    break
            stream.close()

    loader = threading.Thread(target=load)
    loader.start()
    try:
        assert busy.wait(120)
        with make_mc(cat, {"hedge": {"enabled": True, "delay_ms": 200, "budget": 1.0}}) as mc:
            client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
            got = [_stream_first_token(client, "Say hi.") for _ in range(3)]
    finally:
        done.set()
        loader.join(120)
    assert not loader.is_alive()
    assert [(ep, h) for ep, h, _ in got] == [("gcp-euw4-llama", "true")] * 3
