"""LlamaIndex (``OpenAILike``) routed across regions: complete, chat, stream, async.

Prerequisites: the ``fleet`` extra and llama-index-llms-openai-like —
``pip install '.[llamaindex]'``. LlamaIndex's OpenAI integration requires
openai < 3, so this runs with openai 1.x/2.x (on httpx). Runs against the simulated
fleet on 127.0.0.1.

The settings that matter (docs/integrations.md#llamaindex):

* ``OpenAILike``, not ``OpenAI``: LlamaIndex's ``OpenAI`` class rejects model names
  it does not know (``llama-3.1-8b`` is a logical name of your catalog);
  ``is_chat_model=True`` sends chat requests, ``context_window`` is yours to state;
* ``http_client`` / ``async_http_client``: the MultiCloud's routing clients;
* ``api_base=lmc.PLACEHOLDER_BASE_URL``, any ``api_key`` (never sent);
* ``max_retries=0``: LlamaIndex's retry decorator is skipped entirely.

    python examples/llamaindex_openailike.py
"""

from __future__ import annotations

import asyncio
import sys

try:
    from llama_index.core.llms import ChatMessage
    from llama_index.llms.openai_like import OpenAILike
except ImportError:
    print(
        "examples/llamaindex_openailike.py needs llama-index-llms-openai-like: pip install '.[llamaindex]'",
        file=sys.stderr,
    )
    raise SystemExit(3) from None  # 3: a prerequisite is missing (see the docstring)

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, demo_spec
from llm_multicloud.regions import expand_tag


def main() -> None:
    requests: list[lmc.RequestRecord] = []
    with Fleet(demo_spec()) as fleet, lmc.MultiCloud(fleet.catalog(), on_request=requests.append) as mc:
        llm = OpenAILike(
            model="llama-3.1-8b",
            api_base=lmc.PLACEHOLDER_BASE_URL,
            api_key="unused",  # never sent: each endpoint gets its own key
            is_chat_model=True,
            context_window=131072,
            max_tokens=8,
            max_retries=0,
            http_client=mc.httpx_client(timeout=60.0),
            async_http_client=mc.async_httpx_client(timeout=60.0),
        )
        with lmc.routing(residency="EU", near="eu-central-1"):
            done = llm.complete("Hello from Frankfurt")
            chat = llm.chat([ChatMessage(role="user", content="Hi")])
            streamed = "".join(r.delta or "" for r in llm.stream_complete("Stream to me"))
        print("complete:", done.text)
        print("chat:    ", chat.message.content)
        print("stream:  ", streamed)

        async def ask() -> str:
            with lmc.routing(residency="US"):
                return (await llm.acomplete("Hello from Virginia")).text

        us = asyncio.run(ask())
        print("async:   ", us)

        assert len(requests) == 4, [r.endpoint for r in requests]  # one routed request per call: no retries
        eu, usa = expand_tag("EU"), expand_tag("US")
        assert all(mc.catalog.get(r.endpoint or "").footprint <= eu for r in requests[:3])
        assert mc.catalog.get(requests[3].endpoint or "").footprint <= usa
        assert streamed.startswith("[") and us.startswith(("[aws-use1]", "[gcp-usc1]"))
    print("ok: LlamaIndex complete, chat, stream and async, residency kept, no framework retries")


if __name__ == "__main__":
    main()
