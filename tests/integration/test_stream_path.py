"""The committed stream's fast path (issue 14, point 5), through the real openai SDK
against the fleet on 127.0.0.1.

After the commit point an identity-encoded event stream is read straight from the
transport's response stream, and a read that is one plain content event is passed on
after one scan (``sse.plain_event``). What must hold whatever path a read takes: every
event reaches the caller byte for byte and in order, the usage the server reported is
the usage the caller and the ledger see, a break still raises, and the connection goes
back to its endpoint's pool when the stream ends (no new connection per stream)."""

from __future__ import annotations

import gzip
from typing import Any

import anyio
import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.upstream import UpstreamResponse

from .conftest import MODEL, chat_records, make_mc

pytestmark = pytest.mark.integration

MSG = [{"role": "user", "content": "tell me a story"}]


def _origin(fleet: Any, rid: str) -> str:
    return f"http://{fleet.url_host}:{fleet.port(rid)}"


def test_async_streams_deliver_every_event_with_exact_usage_and_reuse_one_connection(clean: Any) -> None:
    fleet = clean

    async def run() -> tuple[list[tuple[str, int, Any]], dict[str, int], dict[str, Any]]:
        with make_mc(fleet) as mc:
            client = mc.wrap(openai.AsyncOpenAI(api_key="sk-placeholder-never-sent", max_retries=0))
            got = []
            for n in (1, 7, 24, 24, 3):
                text, chunks, usage = "", 0, None
                stream = await client.chat.completions.create(
                    model=MODEL, messages=MSG, max_tokens=n, stream=True, stream_options={"include_usage": True}
                )
                async for c in stream:
                    chunks += 1
                    if c.choices and c.choices[0].delta.content:
                        text += c.choices[0].delta.content
                    if c.usage is not None:
                        usage = c.usage.model_dump(exclude_none=True)
                got.append((text, chunks, usage))
            idle = client._client._transport._upstream_here().idle_connections()
            snap = mc.snapshot()
            await client.close()
            return got, idle, snap

    got, idle, snap = anyio.run(run)
    recs = chat_records(fleet, "aws-euc1")
    assert len(recs) == 5 and len(fleet.received()) == 5  # one HTTP request per stream, all to the first endpoint
    for (text, chunks, usage), rec, n in zip(got, recs, (1, 7, 24, 24, 3), strict=True):
        assert usage == {k: v for k, v in rec.usage.items() if v is not None}  # the server's own figures
        assert rec.usage["completion_tokens"] == n and text.strip()
        assert chunks == n + 3  # role preamble, n tokens, the finish chunk, the usage chunk
    # Every stream ended and gave its connection back: one idle connection, reused five times.
    assert idle == {_origin(fleet, "aws-euc1"): 1}
    ep = next(e for e in snap["endpoints"] if e["id"] == "aws-euc1")
    assert ep["output_tokens"] == sum(r.usage["completion_tokens"] for r in recs)  # the ledger's totals: exact
    assert ep["input_tokens"] == sum(r.usage["prompt_tokens"] for r in recs)


def test_a_break_after_plain_chunks_still_raises_and_blames_the_endpoint(clean: Any) -> None:
    """Plain content chunks take the fast path; the connection closing mid-stream after
    them is still a break (StreamInterrupted with what was delivered), never an end."""
    fleet = clean
    fleet.set_fault("aws-euc1", mode="close_mid_stream", after_chunks=5)

    async def run() -> tuple[str, Any]:
        with make_mc(fleet) as mc:
            client = mc.wrap(openai.AsyncOpenAI(api_key="sk-placeholder-never-sent", max_retries=0))
            text = ""
            try:
                with pytest.raises(lmc.StreamInterrupted) as ei:
                    stream = await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=30, stream=True)
                    async for c in stream:
                        if c.choices and c.choices[0].delta.content:
                            text += c.choices[0].delta.content
            finally:
                await client.close()
            return text, ei.value

    text, err = anyio.run(run)
    assert err.endpoint == "aws-euc1" and text and err.delivered_text == text and err.chunks >= 5


@pytest.mark.parametrize("lib_name", ["httpx2", "httpx"])
def test_an_encoded_event_stream_is_decoded_on_the_library_path(lib_name: str) -> None:
    """A compressed body (no fleet server compresses; built here from the HTTP
    library's own Response and stream classes) is not read raw: it goes through the
    library's decoder, so the events arrive decoded."""
    lib = pytest.importorskip(lib_name)
    events = b"".join(b'data: {"choices":[{"delta":{"content":"w%d"}}]}\n\n' % i for i in range(50))
    packed = gzip.compress(events)

    class Body(lib.AsyncByteStream):  # type: ignore[misc,name-defined]
        async def __aiter__(self) -> Any:
            for i in range(0, len(packed), 37):
                yield packed[i : i + 37]

    async def run() -> bytes:
        resp = UpstreamResponse(
            lib,
            lib.Response(
                200, headers=[("content-type", "text/event-stream"), ("content-encoding", "gzip")], stream=Body()
            ),
        )
        out = b"".join([c async for c in resp.chunks()])
        await resp.aclose()
        return out

    assert anyio.run(run) == events
