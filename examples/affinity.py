"""Prompt-cache affinity: a conversation returns to the endpoint that caches it.

Starts three simulated EU regions on 127.0.0.1 whose servers keep a prefix cache
(an uncached prompt token costs 0.05 ms of prefill; cached tokens are reported in
``usage.prompt_tokens_details.cached_tokens``), then holds two 8-turn
conversations through the unchanged openai SDK: one keyed by
``lmc.routing(session=...)``, one keyed automatically by its long system prompt.
Each stays on one endpoint and hits that endpoint's cache from its second turn;
when the first conversation's endpoint goes down it moves once, to its rendezvous
second choice, and stays there.

Prerequisites: the ``fleet`` extra and the openai SDK — ``pip install '.[demo]'``.
Runs against the simulated fleet on 127.0.0.1; no credentials.

    python examples/affinity.py
"""

from __future__ import annotations

import sys
from typing import Any

import openai

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, Latency, PrefixCache, RegionSpec

MODEL = "llama-3.1-8b"
SYSTEM = {"role": "system", "content": "You answer in one careful sentence. " * 60}


def converse(client: openai.OpenAI, turns: int, *, label: str, fleet: Fleet | None = None) -> list[str]:
    history: list[Any] = [SYSTEM]
    served = []
    for turn in range(turns):
        if fleet is not None and turn == turns // 2:
            print(f"  -- {served[0]} goes down --")
            fleet.set_fault(served[0], mode="down")
        history.append({"role": "user", "content": f"{label} question {turn}"})
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=history, max_tokens=8)
        answer = raw.parse()
        where = raw.headers["x-llm-multicloud-endpoint"]
        details = answer.usage.prompt_tokens_details if answer.usage else None
        cached = details.cached_tokens if details else 0
        print(f"  {label} turn {turn + 1}: {where}, cached prompt tokens {cached}")
        served.append(where)
        history.append({"role": "assistant", "content": answer.choices[0].message.content or ""})
    return served


def main() -> int:
    regions = [
        RegionSpec(
            id=f"eu-{i}",
            provider=p,
            region=r,
            models={MODEL: "served-llama"},
            api_key=f"sk-eu-{i}",
            latency=Latency(ttft_ms=5, ttft_jitter=0.0),
            prefix_cache=PrefixCache(prefill_ms_per_token=0.05),
        )
        for i, (p, r) in enumerate([("aws", "eu-central-1"), ("gcp", "europe-west4"), ("azure", "westeurope")])
    ]
    policy = {"strategy": "latency", "probe": {"enabled": False}, "explore": 0.0}
    with Fleet(regions) as fleet, lmc.MultiCloud(fleet.catalog(), policy) as mc:
        client = mc.wrap(openai.OpenAI(api_key="sk-placeholder-never-sent"))
        for st in mc.health.states:  # as if probed: all three near-equal
            st.observe_ttft(10.0, mc.clock())
        print(mc.explain(MODEL, session="support-ticket-1881").describe())
        print("conversation keyed by its system prompt:")
        auto = converse(client, 8, label="B")
        print("conversation keyed by routing(session=...):")
        with lmc.routing(session="support-ticket-1881"):
            pinned = converse(client, 8, label="A", fleet=fleet)
    ok = len(set(auto)) == 1 and len(set(pinned[:4])) == 1 and len(set(pinned[4:])) == 1 and pinned[0] != pinned[4]
    print("each conversation stayed on one endpoint and moved once when it died:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
