"""Cost-aware routing and the cost ledger.

The demo fleet's prices come from per-region H100 prices (docs/cost.md); its
cheapest endpoint by far is an on-prem vLLM box, which this script makes slow
(300 ms to the first token). Two MultiClouds over the same catalog then show the
two price-aware strategies:

* ``cost``: the cheapest usable endpoint, however slow;
* ``balanced`` (the default): the cheapest among the endpoints whose predicted
  time to first token is within ``slack`` (25 %) + ``slack_ms`` (20 ms) of the
  fastest — it tries the on-prem box once (no measurement yet), sees 300 ms, and
  settles on the cheapest *fast* endpoint.

``explain()`` prints the numbers behind each choice. Then the ledger: the script
recomputes the cost of every request from the usage the servers reported times
the catalog's prices, and checks ``snapshot()`` and the per-request
``x-llm-multicloud-cost-usd`` header against it. Streams are counted too: the
library asked for ``stream_options.include_usage`` on the caller's behalf and
removed the usage chunk from what the caller saw. Hedging is off so that every
attempt has server-reported usage (cancelled hedge losers are billed by an
estimate, flagged as such: docs/cost.md).

Prerequisites: the ``fleet`` extra and the openai SDK — ``pip install '.[demo]'``.
Runs against the simulated fleet on 127.0.0.1; no credentials.

    python examples/cost_routing.py
"""

from __future__ import annotations

import collections
import sys
from typing import Any

import openai

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, demo_spec

MODEL = "llama-3.1-8b"
MESSAGES: Any = [{"role": "user", "content": "Summarise the quarterly report in one line."}]


def workload(mc: lmc.MultiCloud, n: int) -> tuple[list[str], list[float], int]:
    """n requests, alternating plain and streamed; returns who served, the cost headers, usage chunks seen."""
    client = mc.wrap(openai.OpenAI(api_key="unused"))
    served, headers, usage_chunks = [], [], 0
    for i in range(n):
        if i % 2:
            stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, stream=True)
            chunks = list(stream)
            usage_chunks += sum(1 for c in chunks if c.usage is not None)
            served.append(stream.response.headers["x-llm-multicloud-endpoint"])
        else:
            raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES, max_tokens=16)
            served.append(raw.headers["x-llm-multicloud-endpoint"])
            headers.append(float(raw.headers["x-llm-multicloud-cost-usd"]))  # non-streamed answers only
    return served, headers, usage_chunks


def main() -> int:
    with Fleet(demo_spec()) as fleet:
        for rid in fleet.region_ids:
            fleet.set_latency(rid, ttft_ms=300 if rid == "onprem-vllm" else 15, ttft_jitter=0.0, itl_ms=1)
        catalog = fleet.catalog()
        # no exploration draw (1 % of requests by default): the run shows the strategies alone
        common = {"hedge": {"enabled": False}, "explore": 0.0}

        results = {}
        for strategy in ("cost", "balanced"):
            fleet.clear()
            with lmc.MultiCloud(catalog, {**common, "strategy": strategy}) as mc:
                served, cost_headers, usage_chunks = workload(mc, 4 if strategy == "cost" else 16)
                print(f"strategy {strategy}: {dict(collections.Counter(served).most_common())}")
                print(mc.explain(MODEL, input_tokens=20, max_tokens=16).describe(), "\n")
                chats = [r for r in fleet.received() if r.path.endswith("/chat/completions")]  # not the probes
                results[strategy] = (served, mc.snapshot(), cost_headers, usage_chunks, chats)

        cost_served = results["cost"][0]
        balanced_served = results["balanced"][0]
        assert set(cost_served) == {"onprem-vllm"}, cost_served  # cheapest, however slow
        # balanced: the slow box at most while it was unmeasured, then the cheapest fast endpoints
        assert "onprem-vllm" not in balanced_served[2:], balanced_served
        assert collections.Counter(balanced_served).most_common(1)[0][0] != "onprem-vllm", balanced_served

        # The ledger, checked against what the servers reported.
        served, snap, cost_headers, usage_chunks, received = results["balanced"]
        prices = {e.id: e.price for e in lmc.Catalog.load(catalog).endpoints}
        expected: dict[str, float] = collections.defaultdict(float)
        per_request = []
        for rec in received:
            if rec.usage is None:
                continue
            p_in, p_out, _ = prices[rec.region_id]
            cost = (rec.usage["prompt_tokens"] * p_in + rec.usage["completion_tokens"] * p_out) / 1e6
            expected[rec.region_id] += cost
            if not rec.stream:
                per_request.append(cost)
        streams_asked = [r for r in received if r.stream]
        assert streams_asked and all(r.json["stream_options"]["include_usage"] for r in streams_asked)
        assert usage_chunks == 0, "the injected usage chunk reached the caller"

        print(f"ledger (balanced run): total ${snap['cost_usd']:.8f}")
        for e in snap["endpoints"]:
            if e["requests"]:
                print(
                    f"  {e['id']:<12} requests={e['requests']:<3} tokens in/out={e['input_tokens']}/"
                    f"{e['output_tokens']:<4} cost=${e['cost_usd']:.8f} (from server usage: "
                    f"${expected[e['id']]:.8f}) estimated={e['cost_estimated']}"
                )
                assert abs(e["cost_usd"] - expected[e["id"]]) < 1e-8, (e, expected[e["id"]])
        print(f"  per provider: { {k: v['cost_usd'] for k, v in snap['totals']['provider'].items() if v['requests']} }")
        assert all(abs(h - c) < 1e-8 for h, c in zip(cost_headers, per_request, strict=True))
        print(
            f"\nok: cost picked the cheapest endpoint, balanced the cheapest fast one; the ledger matches the "
            f"servers' usage to 1e-8 USD on {len(received)} requests ({len(streams_asked)} streamed)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
