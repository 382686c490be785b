"""Quickstart: wrap the openai SDK once; every request is routed across clouds.

Starts a simulated fleet on 127.0.0.1 (six OpenAI-compatible servers shaped like
AWS, GCP, Azure and an on-prem vLLM box; no cloud credentials), writes a catalog
for it, and sends a sync, an async and a streamed request through the *unchanged*
openai API. Then it checks, from what the servers received, the library's basic
promise: each endpoint got its own key and its own served model name, and neither
the placeholder key nor any x-llm-multicloud-* header ever left the process.

Prerequisites: the ``fleet`` extra and the openai SDK — ``pip install '.[demo]'``.
Runs against the simulated fleet on 127.0.0.1; no credentials.

    python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import openai
import yaml

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, demo_spec

MODEL = "llama-3.1-8b"  # the *logical* name; each endpoint maps it to its own served name
PLACEHOLDER_KEY = "sk-placeholder-never-sent"
MESSAGES: Any = [{"role": "user", "content": "Say hello."}]


def where(headers: Any) -> str:
    """Every routed response says where it was served."""
    return (
        f"{headers['x-llm-multicloud-endpoint']} ({headers['x-llm-multicloud-provider']} "
        f"{headers['x-llm-multicloud-region']}), attempts={headers['x-llm-multicloud-attempts']}, "
        f"hedged={headers['x-llm-multicloud-hedged']}"
    )


async def async_part(mc: lmc.MultiCloud) -> list[str]:
    # An AsyncOpenAI client wrapped on the same MultiCloud shares its picture of the
    # fleet (health, latency estimates, budgets, cost ledger) with the sync client.
    aclient = mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY))
    async with aclient:  # closes this client's connections, not the shared MultiCloud
        raws = await asyncio.gather(
            *[aclient.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES) for _ in range(3)]
        )
    return [r.headers["x-llm-multicloud-endpoint"] for r in raws]


def main() -> int:
    with Fleet(demo_spec()) as fleet, tempfile.TemporaryDirectory() as tmp:
        # fleet.catalog() is a catalog dict pointing at the local servers; a real
        # deployment keeps a YAML file like examples/catalog.yaml.
        path = Path(tmp, "catalog.yaml")
        path.write_text(yaml.safe_dump(fleet.catalog()), encoding="utf-8")

        # 1. Wrap. The result is an openai.OpenAI like any other; its own key is a
        #    placeholder that is never sent (each endpoint gets its own credentials).
        client = lmc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY), catalog=str(path))
        with client:  # closing the client closes the MultiCloud it owns (probes included)
            # 2. A sync request, typed objects and all.
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=8)
            completion = raw.parse()
            print(f"sync:   {completion.choices[0].message.content!r}\n        served by {where(raw.headers)}")
            assert completion.choices[0].message.content.startswith(f"[{raw.headers['x-llm-multicloud-endpoint']}]")

            # 3. Async requests through openai.AsyncOpenAI, sharing the same state.
            mc = lmc.multicloud_of(client)
            served = asyncio.run(async_part(mc))
            print(f"async:  3 concurrent requests served by {served}")

            # 4. A stream: chunks pass through byte for byte; the stream ends at [DONE].
            stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            print(f"stream: {text!r}\n        served by {where(stream.response.headers)}")
            assert text.startswith(f"[{stream.response.headers['x-llm-multicloud-endpoint']}]")

            # 5. models.list() is answered from the catalog: the logical names.
            print(f"models: {[m.id for m in client.models.list()]}")

        # What the servers saw: each endpoint's own key and served model name; no
        # placeholder key, no routing header.
        spec = {r.id: r for r in fleet.spec.regions}
        chats = [r for r in fleet.received() if r.path.endswith("/chat/completions")]
        assert len(chats) >= 5, chats
        for rec in chats:
            region = spec[rec.region_id]
            assert rec.headers.get("authorization") == f"Bearer {region.api_key}", rec.headers
            assert rec.model == region.models[MODEL], rec.model
            assert PLACEHOLDER_KEY not in str(rec.headers)
            assert not [h for h in rec.headers if h.startswith("x-llm-multicloud-")]
        print(
            f"\nok: {len(chats)} upstream requests, each with its endpoint's own key and served model name; "
            "the placeholder key and the routing headers never left the process"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
