"""Per-call routing headers: ``x-llm-multicloud-residency``, ``-near`` and ``-tags``.

For code that cannot hold a Python scope around the call (a request handler that
builds kwargs, a proxy, a client shared by tenants), the same constraints as
``lmc.routing()`` travel as ``extra_headers`` on the call, or as
``default_headers`` of a client copy. They are read and stripped by the
library: the script checks that no routing header ever reached a server.

Probes are off here so that ``near`` visibly acts as what it is: a geographic
prior for endpoints with no measurement yet (see docs/routing.md).

Prerequisites: the ``fleet`` extra and the openai SDK — ``pip install '.[demo]'``.
Runs against the simulated fleet on 127.0.0.1; no credentials.

    python examples/per_call_headers.py
"""

from __future__ import annotations

import sys
from typing import Any

import openai

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, demo_spec

MODEL = "llama-3.1-8b"
MESSAGES: Any = [{"role": "user", "content": "hi"}]
GOLD = {"aws-euc1", "gcp-usc1"}


def detail(exc: openai.APIStatusError) -> str:
    """The library's message (``exc.body`` is the OpenAI-style error object on every openai line)."""
    return str(exc.body["message"]) if isinstance(exc.body, dict) else exc.message


def main() -> int:
    with Fleet(demo_spec()) as fleet:
        catalog = fleet.catalog()
        for ep in catalog["endpoints"]:  # endpoint tags: arbitrary key=value pairs
            ep["tags"] = {"tier": "gold" if ep["id"] in GOLD else "standard"}
        with lmc.MultiCloud(catalog, {"probe": {"enabled": False}, "hedge": {"enabled": False}}) as mc:
            client = mc.wrap(openai.OpenAI(api_key="unused"))

            def call(headers: dict[str, str], c: openai.OpenAI = client) -> str:
                raw = c.chat.completions.with_raw_response.create(
                    model=MODEL, messages=MESSAGES, max_tokens=4, extra_headers=headers
                )
                return f"{raw.headers['x-llm-multicloud-endpoint']} ({raw.headers['x-llm-multicloud-region']})"

            # near: a cold start for a Tokyo user goes to Tokyo, not to whichever is first.
            tokyo = call({"x-llm-multicloud-near": "ap-northeast-1"})
            print("near=ap-northeast-1             ->", tokyo)
            assert tokyo.startswith("azure-jpe"), tokyo

            # residency: a bloc (EU), countries (DE,FR = either), or one country.
            eu = call({"x-llm-multicloud-residency": "EU", "x-llm-multicloud-near": "eu-central-1"})
            de = call({"x-llm-multicloud-residency": "DE"})
            print("residency=EU, near=eu-central-1 ->", eu)
            print("residency=DE                    ->", de)
            assert eu.split()[0] in {"aws-euc1", "gcp-euw4", "onprem-vllm"}, eu
            assert de.split()[0] in {"aws-euc1", "onprem-vllm"}, de

            # tags: every requested tag must match the endpoint's tags.
            gold = {call({"x-llm-multicloud-tags": "tier=gold"}).split()[0] for _ in range(6)}
            gold_eu = call({"x-llm-multicloud-tags": "tier=gold", "x-llm-multicloud-residency": "EU"})
            print("tags=tier=gold                  ->", sorted(gold))
            print("tags=tier=gold, residency=EU    ->", gold_eu)
            assert gold <= GOLD and gold_eu.startswith("aws-euc1"), (gold, gold_eu)

            # A pinned client: a copy whose every request carries the header.
            eu_client = client.with_options(default_headers={"x-llm-multicloud-residency": "EU"})
            pinned = {call({}, eu_client).split()[0] for _ in range(4)}
            print("with_options(default_headers)   ->", sorted(pinned))
            assert pinned <= {"aws-euc1", "gcp-euw4", "onprem-vllm"}, pinned

            # Headers are the innermost scope: they narrow a routing() scope, never widen it.
            with lmc.routing(residency="EU"):
                narrowed = call({"x-llm-multicloud-residency": "DE"})
                print("routing(EU) + header DE         ->", narrowed)
                try:
                    call({"x-llm-multicloud-residency": "US"})
                    raise AssertionError("expected a 400")
                except openai.BadRequestError as exc:  # an empty intersection: nothing was sent
                    print("routing(EU) + header US         -> 400:", detail(exc).split(".")[0])

            # Bad header values are the caller's error: 400, never a silent no-match.
            for bad in ({"x-llm-multicloud-residency": "Europe"}, {"x-llm-multicloud-tags": "gold"}):
                try:
                    call(bad)
                    raise AssertionError("expected a 400")
                except openai.BadRequestError as exc:
                    print(f"{bad} -> 400 {exc.code}: {detail(exc)[:60]}...")

        leaked = [r for r in fleet.received() if any(h.startswith("x-llm-multicloud-") for h in r.headers)]
        print(f"\nok: {len(fleet.received())} upstream requests, {len(leaked)} carried a routing header")
        assert not leaked
    return 0


if __name__ == "__main__":
    sys.exit(main())
