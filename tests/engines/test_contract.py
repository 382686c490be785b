"""The drop-in contract against real llama.cpp servers: chat (sync/async, streamed and
not), legacy completions, embeddings, residency pins, usage and cost from the
engine's own numbers."""

from __future__ import annotations

import math
from typing import Any

import anyio
import openai
import pytest

import llm_multicloud as lmc
from tests.integration.drive import PLACEHOLDER_KEY, chat

from .conftest import EMBED_MODEL, catalog, fresh, make_mc
from .harness import MODEL

pytestmark = pytest.mark.engines

QUESTION = "What is the capital of France? Answer in one word."


def _direct(engine: Any, served: str, messages: list[dict[str, str]], **kw: Any) -> str:
    """The same request with the plain openai client straight to the engine."""
    with openai.OpenAI(base_url=engine.base_url, api_key=engine.spec.api_key, max_retries=0) as c:
        r = c.chat.completions.create(model=served, messages=messages, **kw)
    return r.choices[0].message.content or ""


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_chat_is_a_drop_in(suite: dict[str, Any], kind: str, stream: bool) -> None:
    fast, slow, us = suite["aws-euc1-llama"], suite["gcp-euw4-llama"], suite["azure-eus-llama"]
    cat = catalog(fast.catalog_entry(), slow.catalog_entry(), us.catalog_entry())
    messages = fresh(QUESTION)
    kw: dict[str, Any] = {"max_tokens": 12, "temperature": 0.0, "seed": 7}
    with make_mc(cat) as mc:
        a = chat(mc, kind, stream=stream, model=MODEL, messages=messages, **kw)
        snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
    assert a.headers["x-llm-multicloud-endpoint"] == "aws-euc1-llama"
    assert a.headers["x-llm-multicloud-attempts"] == "1"
    # real generated text, the engine's own: greedy decoding gives the direct call's answer
    assert a.text.strip()
    assert a.text == _direct(fast, "smollm2-135m-instruct", messages, **kw)
    assert "paris" in a.text.lower()
    assert snap["aws-euc1-llama"]["successes"] == 1
    assert snap["gcp-euw4-llama"]["requests"] == snap["azure-eus-llama"]["requests"] == 0
    if stream:
        assert len(a.chunks) > 2 and a.chunks[-1].choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_legacy_completions(suite: dict[str, Any], kind: str, stream: bool) -> None:
    fast, slow = suite["aws-euc1-llama"], suite["gcp-euw4-llama"]
    kw: dict[str, Any] = {
        "model": MODEL,
        "prompt": f"[c{kind}{stream}] The three primary colours are",
        "max_tokens": 8,
        "temperature": 0.0,
    }
    with make_mc(catalog(slow.catalog_entry(), fast.catalog_entry())) as mc:
        if kind == "sync":
            client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
            if stream:
                with client.completions.with_streaming_response.create(stream=True, **kw) as raw:
                    chunks = list(raw.parse())
                    served = raw.headers["x-llm-multicloud-endpoint"]
                text = "".join(c.choices[0].text for c in chunks if c.choices)
            else:
                r = client.completions.with_raw_response.create(**kw)
                served, text = r.headers["x-llm-multicloud-endpoint"], r.parse().choices[0].text
        else:

            async def run() -> tuple[str, str]:
                client = mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY))
                async with client:
                    if stream:
                        async with client.completions.with_streaming_response.create(stream=True, **kw) as raw:
                            chunks = [c async for c in await raw.parse()]
                            text = "".join(c.choices[0].text for c in chunks if c.choices)
                            return raw.headers["x-llm-multicloud-endpoint"], text
                    r = await client.completions.with_raw_response.create(**kw)
                    return r.headers["x-llm-multicloud-endpoint"], r.parse().choices[0].text

            served, text = anyio.run(run)
    assert served == "gcp-euw4-llama"
    assert text.strip()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_embeddings_from_the_engine_that_serves_them(suite: dict[str, Any], kind: str) -> None:
    us = suite["azure-eus-llama"]
    entry = us.catalog_entry()
    entry["models"][EMBED_MODEL] = "smollm2-135m-instruct"
    cat = catalog(suite["aws-euc1-llama"].catalog_entry(), entry)
    cat["models"][EMBED_MODEL] = {}
    inputs = ["The cat sat on the mat.", "Quarterly revenue grew by four percent."]
    with make_mc(cat) as mc:
        if kind == "sync":
            r = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY)).embeddings.with_raw_response.create(
                model=EMBED_MODEL, input=inputs
            )
            served, parsed = r.headers["x-llm-multicloud-endpoint"], r.parse()
        else:

            async def run() -> tuple[str, Any]:
                async with mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY)) as client:
                    r = await client.embeddings.with_raw_response.create(model=EMBED_MODEL, input=inputs)
                    return r.headers["x-llm-multicloud-endpoint"], r.parse()

            served, parsed = anyio.run(run)
        snap = mc.snapshot()["endpoints"][1]
    assert served == "azure-eus-llama"  # the only endpoint declared for the embedding model
    # SmolLM2 is a causal LM without a pooling layer: llama.cpp returns one 576-d vector
    # (its hidden size) per input token, and counts those tokens as the usage
    a, b = (d.embedding for d in parsed.data)
    assert parsed.usage.prompt_tokens == len(a) + len(b) > 2
    rows: list[list[float]] = [*a, *b]  # type: ignore[list-item]
    assert all(len(row) == 576 and all(math.isfinite(x) for x in row) for row in rows)
    assert a[0] != b[0]
    assert snap["input_tokens"] == parsed.usage.prompt_tokens and snap["cost_estimated"] is False


def test_residency_pins_with_real_traffic(suite: dict[str, Any]) -> None:
    fast, slow, us = suite["aws-euc1-llama"], suite["gcp-euw4-llama"], suite["azure-eus-llama"]
    # cost order: gcp (EU) 0.05/0.10, aws (EU) 0.10/0.20, azure (US) 0.20/0.40
    cat = catalog(us.catalog_entry(), fast.catalog_entry(), slow.catalog_entry())
    served: dict[str, list[str]] = {"EU": [], "US": []}
    with make_mc(cat, {"strategy": "cost"}) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        for i in range(6):
            bloc = "EU" if i % 2 else "US"
            with lmc.routing(residency=bloc):
                r = client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=fresh("Say hi."), max_tokens=3, temperature=0.0
                )
            assert r.parse().choices[0].message.content
            served[bloc].append(r.headers["x-llm-multicloud-endpoint"])
        # the header route too, and an EU pin that may only fail over inside the EU
        r = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=fresh("Say hi."),
            max_tokens=3,
            extra_headers={"x-llm-multicloud-residency": "US"},
        )
        served["US"].append(r.headers["x-llm-multicloud-endpoint"])
    assert set(served["US"]) == {"azure-eus-llama"}
    assert set(served["EU"]) <= {"gcp-euw4-llama", "aws-euc1-llama"} and served["EU"]


def test_usage_and_cost_come_from_the_engines_numbers(suite: dict[str, Any]) -> None:
    fast = suite["aws-euc1-llama"]
    price_in, price_out = fast.spec.pricing
    with make_mc(catalog(fast.catalog_entry())) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        usages = []
        for _ in range(3):
            r = client.chat.completions.create(model=MODEL, messages=fresh("Name a colour."), max_tokens=6)
            assert r.usage is not None and r.usage.prompt_tokens > 5 and 0 < r.usage.completion_tokens <= 6
            assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
            usages.append(r.usage)
        ep = mc.snapshot()["endpoints"][0]
        prompt = sum(u.prompt_tokens for u in usages)
        completion = sum(u.completion_tokens for u in usages)
        assert (ep["input_tokens"], ep["output_tokens"]) == (prompt, completion)
        assert ep["cost_usd"] == pytest.approx((prompt * price_in + completion * price_out) / 1e6, rel=1e-6)
        assert ep["cost_estimated"] is False
        cost_before = ep["cost_usd"]
        # llama-cpp-python sends no usage chunk in streams (stream_options is ignored): the
        # ledger then estimates, and says so, rather than billing zero
        stream = client.chat.completions.create(
            model=MODEL,
            messages=fresh("Name a fruit."),
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert all(c.usage is None for c in chunks)
        ep = mc.snapshot()["endpoints"][0]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        # token counts hold only what the engine reported; the cost of the stream is an estimate
        assert (ep["input_tokens"], ep["output_tokens"]) == (prompt, completion)
        assert ep["cost_usd"] > cost_before and ep["cost_estimated"] is True
