"""The Responses API through wrapped openai clients, streamed and not (issue 11,
point 7: the docs said streaming was not supported; it is). Judged from the fleet:
which region served, with which served name, and what the ledger counted."""

from __future__ import annotations

import anyio
import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet

from .conftest import MODEL, SERVED
from .drive import PLACEHOLDER_KEY

pytestmark = pytest.mark.integration


def _responses(mc: lmc.MultiCloud, kind: str, stream: bool) -> tuple[str, str, int | None]:
    """(text, endpoint, output tokens seen by the caller) of one responses.create call."""
    kw = {"model": MODEL, "input": "say something", "max_output_tokens": 6}
    if kind == "sync":
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        if not stream:
            raw = client.responses.with_raw_response.create(**kw)
            r = raw.parse()
            return r.output_text, raw.headers["x-llm-multicloud-endpoint"], r.usage and r.usage.output_tokens
        s = client.responses.create(stream=True, **kw)
        events = list(s)
        done = events[-1]
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert done.type == "response.completed" and done.response.output_text == text
        return text, s.response.headers["x-llm-multicloud-endpoint"], done.response.usage.output_tokens

    async def run() -> tuple[str, str, int | None]:
        async with mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY)) as client:
            if not stream:
                raw = await client.responses.with_raw_response.create(**kw)
                r = raw.parse()
                return r.output_text, raw.headers["x-llm-multicloud-endpoint"], r.usage and r.usage.output_tokens
            s = await client.responses.create(stream=True, **kw)
            events = [e async for e in s]
            text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
            assert events[-1].type == "response.completed"
            return text, s.response.headers["x-llm-multicloud-endpoint"], events[-1].response.usage.output_tokens

    return anyio.run(run)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_responses_api_is_routed_streamed_and_not(mc: lmc.MultiCloud, clean: Fleet, kind: str, stream: bool) -> None:
    text, endpoint, out_tokens = _responses(mc, kind, stream)
    assert endpoint == "aws-euc1" and text == "[aws-euc1] w0 w1 w2 w3 w4 w5"
    [rec] = [r for r in clean.received() if r.path == "/v1/responses"]
    assert rec.region_id == "aws-euc1" and rec.model == SERVED["aws-euc1"] and rec.stream is stream
    assert rec.outcome == "ok" and out_tokens == 6
    snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
    assert snap["aws-euc1"]["output_tokens"] == 6  # the ledger read the usage (streams: in response.completed)
    assert all(e["failures"] == 0 for e in snap.values())
