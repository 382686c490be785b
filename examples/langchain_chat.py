"""LangChain (langchain-openai's ChatOpenAI) routed across regions: sync, async, streaming.

Prerequisites: the ``fleet`` extra and langchain-openai — ``pip install '.[langchain]'``
(works with openai 1.x, 2.x and 3.x). Runs against the simulated fleet on 127.0.0.1.

The settings that matter (docs/integrations.md#langchain):

* ``http_client`` / ``http_async_client``: the MultiCloud's routing clients, for the
  HTTP library the installed openai SDK runs on;
* ``base_url=lmc.PLACEHOLDER_BASE_URL``, any ``api_key`` (never sent);
* ``max_retries=0``: failover is the router's job; LangChain's retries would repeat
  whole routed requests;
* ``include_response_headers=True`` to see where each answer came from.

    python examples/langchain_chat.py
"""

from __future__ import annotations

import asyncio
import sys

try:
    from langchain_openai import ChatOpenAI
except ImportError:
    print("examples/langchain_chat.py needs langchain-openai: pip install '.[langchain]'", file=sys.stderr)
    raise SystemExit(3) from None  # 3: a prerequisite is missing (see the docstring)

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, demo_spec

EU_ENDPOINTS = {"aws-euc1", "gcp-euw4", "onprem-vllm"}


def main() -> None:
    requests: list[lmc.RequestRecord] = []
    with Fleet(demo_spec()) as fleet, lmc.MultiCloud(fleet.catalog(), on_request=requests.append) as mc:
        llm = ChatOpenAI(
            model="llama-3.1-8b",
            base_url=lmc.PLACEHOLDER_BASE_URL,
            api_key="unused",  # type: ignore[arg-type]  # never sent: each endpoint gets its own key
            http_client=mc.httpx_client(timeout=60.0),
            http_async_client=mc.async_httpx_client(timeout=60.0),
            max_retries=0,
            include_response_headers=True,
            max_tokens=8,  # type: ignore[call-arg]
        )

        # 1. sync, pinned to the EU for this block (contextvars: per user, per task)
        with lmc.routing(residency="EU", near="eu-central-1"):
            msg = llm.invoke("Hello from Frankfurt")
        served = msg.response_metadata["headers"]["x-llm-multicloud-endpoint"]
        print(f"sync:   {served:12} {msg.content}")
        assert served in EU_ENDPOINTS, served

        # 2. async
        async def ask() -> str:
            with lmc.routing(residency="US"):
                out = await llm.ainvoke("Hello from Virginia")
            return str(out.response_metadata["headers"]["x-llm-multicloud-endpoint"])

        served = asyncio.run(ask())
        print(f"async:  {served:12} (US residency)")
        assert served in {"aws-use1", "gcp-usc1"}, served

        # 3. streaming (per-call headers work too, through default_headers)
        eu = llm.with_config(tags=["eu"]).bind(extra_headers={"x-llm-multicloud-residency": "DE"})
        text = "".join(str(chunk.content) for chunk in eu.stream("Stream to me"))
        print(f"stream: {text}")
        assert text.startswith(("[aws-euc1]", "[onprem-vllm]")), text  # the German endpoints

        # Every LangChain call was one routed request: LangChain retried nothing.
        assert len(requests) == 3, len(requests)
        assert all(r.endpoint is not None for r in requests)
    print("ok: LangChain sync, async and streaming, residency kept, no framework retries")


if __name__ == "__main__":
    main()
