"""Run one chat call the same way through the sync and the async openai client.

Tests parametrize over ``kind`` ("sync" / "async") and ``stream`` and call
:func:`chat`, so every scenario is exercised on both clients and both modes with
one body of assertions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
import openai

import llm_multicloud as lmc

MODEL = "llama-3.1-8b"
PLACEHOLDER_KEY = "sk-placeholder-never-sent"


@dataclass
class Answer:
    headers: dict[str, str]
    text: str
    chunks: list[Any] = field(default_factory=list)
    usage: Any = None


def chat(mc: lmc.MultiCloud, kind: str, *, stream: bool, **kw: Any) -> Answer:
    kw.setdefault("model", MODEL)
    kw.setdefault("messages", [{"role": "user", "content": "hello there"}])
    if kind == "sync":
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        if stream:
            with client.chat.completions.with_streaming_response.create(stream=True, **kw) as raw:
                chunks = list(raw.parse())
                return _stream_answer(dict(raw.headers), chunks)
        resp = client.chat.completions.with_raw_response.create(**kw)
        c = resp.parse()
        return Answer(dict(resp.headers), c.choices[0].message.content or "", usage=c.usage)

    async def run() -> Answer:
        client = mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY))
        async with client:
            if stream:
                async with client.chat.completions.with_streaming_response.create(stream=True, **kw) as raw:
                    chunks = [c async for c in await raw.parse()]
                    return _stream_answer(dict(raw.headers), chunks)
            resp = await client.chat.completions.with_raw_response.create(**kw)
            c = resp.parse()
            return Answer(dict(resp.headers), c.choices[0].message.content or "", usage=c.usage)

    return anyio.run(run)


def _stream_answer(headers: dict[str, str], chunks: list[Any]) -> Answer:
    text = "".join((c.choices[0].delta.content or "") for c in chunks if c.choices)
    usage = next((c.usage for c in chunks if c.usage is not None), None)
    return Answer(headers, text, chunks, usage)
