"""The OpenAI Agents SDK routed across regions: Responses API, streaming, a function tool.

Prerequisites: the ``fleet`` extra and the Agents SDK — ``pip install '.[agents]'``
(openai-agents; with openai 3.x: its MCP dependency imports httpx2). Runs against the
simulated fleet on 127.0.0.1, whose scripted model calls the first tool it is given
and then answers quoting the tool's output.

The settings that matter (docs/integrations.md#openai-agents-sdk):

* ``OpenAIResponsesModel(model=..., openai_client=mc.wrap(openai.AsyncOpenAI(...)))``:
  a wrapped client, so every model call (and every tool round trip) is routed;
* ``set_tracing_disabled(True)`` (or your own trace processor): the SDK's default
  exporter would send traces to api.openai.com with the placeholder key;
* leave ``ModelSettings(retry=...)`` unset: the Agents runner's retries are opt-in,
  and the wrapped client's ``max_retries`` is already 0.

    python examples/agents_sdk.py
"""

from __future__ import annotations

import asyncio
import sys

try:
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
except ImportError:
    print("examples/agents_sdk.py needs the OpenAI Agents SDK: pip install '.[agents]'", file=sys.stderr)
    raise SystemExit(3) from None  # 3: a prerequisite is missing (see the docstring)

import openai

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, demo_spec
from llm_multicloud.regions import expand_tag

calls: list[str] = []


@function_tool
def shout(text: str) -> str:
    """Repeat the text in capitals."""
    calls.append(text)
    return text.upper()


async def main() -> None:
    set_tracing_disabled(True)
    attempts: list[lmc.AttemptRecord] = []
    requests: list[lmc.RequestRecord] = []
    with (
        Fleet(demo_spec()) as fleet,
        lmc.MultiCloud(fleet.catalog(), on_attempt=attempts.append, on_request=requests.append) as mc,
    ):
        client = mc.wrap(openai.AsyncOpenAI(api_key="unused"))  # this key is never sent
        model = OpenAIResponsesModel(model="llama-3.1-8b", openai_client=client)
        agent = Agent(name="assistant", instructions="Use the tool.", model=model, tools=[shout])

        # 1. a run with a tool call: two model calls (tool call, then the answer), both routed in the EU
        with lmc.routing(residency="EU", near="eu-central-1"):
            result = await Runner.run(agent, "hello from frankfurt")
        print("run:   ", result.final_output)
        assert calls == ["hello from frankfurt"], calls
        assert "tool said: HELLO FROM FRANKFURT" in result.final_output, result.final_output

        # 2. streamed: text deltas arrive as they are generated
        with lmc.routing(residency="EU"):
            streamed = Runner.run_streamed(agent, "stream please")
            deltas = [
                ev.data.delta
                async for ev in streamed.stream_events()
                if ev.type == "raw_response_event" and ev.data.type == "response.output_text.delta"
            ]
        print("stream:", "".join(deltas))
        assert deltas and "tool said: STREAM PLEASE" in str(streamed.final_output)

        # Four model calls, four routed requests (the SDK retried nothing); every
        # attempt, hedges included, stayed in the EU.
        eu = expand_tag("EU")
        assert len(requests) == 4, [r.endpoint for r in requests]
        assert all(mc.catalog.get(a.endpoint).footprint <= eu for a in attempts)
        await client.close()
    print("ok: Agents SDK run, stream and tool calls routed in the EU, no SDK retries")


if __name__ == "__main__":
    asyncio.run(main())
