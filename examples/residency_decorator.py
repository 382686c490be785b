"""Residency-pinned code with ``@lmc.residency("EU")``: a function, a generator and
an async function whose every request stays in the EU — even when the EU's
preferred region goes down and a faster, cheaper US region is right there.

The fleet is rigged against the guarantee: the US and Japan endpoints are made
the fastest, the strategy is ``latency``, and mid-run the EU endpoint that served
most EU requests is taken down. An audit hook (``on_attempt``) records every
attempt — first tries, retries, failovers, hedges — and the script asserts that
every attempt of a pinned call went to an endpoint located in the EU.

Prerequisites: the ``fleet`` extra and the openai SDK — ``pip install '.[demo]'``.
Runs against the simulated fleet on 127.0.0.1; no credentials.

    python examples/residency_decorator.py
"""

from __future__ import annotations

import asyncio
import collections
import logging
import sys
from collections.abc import Iterator
from typing import Any

import openai

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, demo_spec
from llm_multicloud.regions import expand_tag

MODEL = "llama-3.1-8b"
EU_COUNTRIES = expand_tag("EU")  # the 27 member states
audit: list[lmc.AttemptRecord] = []  # one record per attempt: where the data went


def main() -> int:
    # Breaker transitions are logged by "llm_multicloud.health" (WARNING when one opens).
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="  log: %(name)s: %(message)s")
    with Fleet(demo_spec()) as fleet:
        # Make the non-EU endpoints the fastest by far: unpinned traffic goes there.
        for rid in fleet.region_ids:
            fast = fleet.spec.region(rid).region in ("us-east-1", "us-central1", "japaneast")
            fleet.set_latency(rid, ttft_ms=2 if fast else 40, ttft_jitter=0.0, itl_ms=1)
        mc = lmc.MultiCloud(fleet.catalog(), {"strategy": "latency"}, on_attempt=audit.append)
        with mc:
            client = mc.wrap(openai.OpenAI(api_key="unused"))

            def ask(text: str) -> Any:
                return client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=4
                )

            @lmc.residency("EU")
            def summarize(doc: str) -> str:
                """A sync function: every request made while it runs is pinned to the EU."""
                return str(ask(doc).headers["x-llm-multicloud-endpoint"])

            @lmc.residency("EU")
            def summarize_stream(doc: str) -> Iterator[str]:
                """A generator: the scope applies while *its* code runs, resumption by
                resumption — never to the consumer's code between two yields."""
                stream = client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": doc}], max_tokens=4, stream=True
                )
                yield f"<{stream.response.headers['x-llm-multicloud-endpoint']}>"
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content

            @lmc.residency("EU")
            async def asummarize(aclient: openai.AsyncOpenAI, doc: str) -> str:
                """An async function: the scope follows the coroutine (contextvars)."""
                raw = await aclient.chat.completions.with_raw_response.create(
                    model=MODEL, messages=[{"role": "user", "content": doc}], max_tokens=4
                )
                return str(raw.headers["x-llm-multicloud-endpoint"])

            unpinned = [ask("hello").headers["x-llm-multicloud-endpoint"] for _ in range(6)]
            print("unpinned requests ->", unpinned, "(free to go anywhere; the fastest are outside the EU)")
            served = [summarize(f"doc {i}") for i in range(6)]
            print("@residency sync   ->", served)

            # The EU's busiest endpoint goes down. Pinned calls fail over — inside the EU.
            down = collections.Counter(served).most_common(1)[0][0]
            fleet.set_fault(down, mode="down")
            print(f"--- {down} is down (connections refused) ---")

            pieces = []
            for piece in summarize_stream("a generator"):
                pieces.append(piece)
                if len(pieces) == 2:
                    # Between two yields the consumer is *not* pinned: this request may go anywhere.
                    between = ask("consumer code between two yields").headers["x-llm-multicloud-endpoint"]
            print("@residency gen    ->", "".join(pieces), f"(consumer's own request between yields -> {between})")

            async def many() -> list[str]:
                # An async client belongs to one event loop: create and close it inside it.
                async with mc.wrap(openai.AsyncOpenAI(api_key="unused")) as aclient:
                    return await asyncio.gather(*[asummarize(aclient, f"async doc {i}") for i in range(6)])

            served_async = asyncio.run(many())
            print("@residency async  ->", served_async)

            # Scopes nest by intersection: inside a DE scope, EU narrows to Germany only...
            with lmc.routing(residency="DE"):
                in_de = [summarize("only Germany") for _ in range(3)]
            print("DE scope ∩ EU     ->", in_de)
            # ...and an empty intersection fails before any byte is sent.
            try:
                with lmc.routing(residency="US"):
                    summarize("never sent")
                raise AssertionError("expected ResidencyError")
            except lmc.ResidencyError as exc:
                print("US scope ∩ EU     -> ResidencyError:", str(exc).split(".")[0])
            fleet.set_fault(down, mode="none")

        # The claim: every attempt of a pinned call went to an endpoint in the EU.
        pinned = [a for a in audit if a.residency != "any"]
        outside = [a for a in pinned if not mc.catalog.get(a.endpoint).footprint <= EU_COUNTRIES]
        failed = [a for a in pinned if a.outcome == "failed"]
        german = {mc.catalog.get(e).footprint for e in in_de}
        print(
            f"\naudit: {len(pinned)} pinned attempts ({len(failed)} failed on the dead region and were retried "
            f"inside the EU), {len(outside)} outside the EU"
        )
        for a in failed[:3]:
            print(f"  attempt {a.attempt} ({a.kind}) on {a.endpoint}: {a.reason}")
        assert pinned and not outside, outside
        assert german == {frozenset({"DE"})}, german
        assert down not in [*served_async, pieces[0].strip("<>")], "a request was served by the dead region"
    return 0


if __name__ == "__main__":
    sys.exit(main())
