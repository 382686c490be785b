"""``llm-multicloud demo``: the product in 20 seconds, with no cloud credentials.

Starts the simulated fleet (:func:`llm_multicloud.fleet.demo_spec`: AWS, GCP,
Azure and an on-prem vLLM, in US, EU and APAC regions, priced from public H100
prices) on loopback, and drives it through the real ``openai`` SDK:

1. a mixed workload — EU, US and APAC users; streaming and not; sync and async —
   with a table of where each request went and why;
2. the EU's preferred region goes down: EU traffic fails over inside the EU with
   zero failed requests, and the audit log proves no EU request left the EU;
3. the per-endpoint snapshot (state, latency, requests, cost).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .cli import format_table
from .executor import AttemptRecord

USERS = [
    ("eu-user", "EU", "eu-central-1"),
    ("us-user", None, "us-east-1"),
    ("apac-user", None, "ap-northeast-1"),
]


def run_demo(requests: int = 24) -> int:
    try:
        import openai
    except ImportError:
        print("the demo needs the openai SDK: pip install openai")
        return 2
    from . import MultiCloud, routing
    from .fleet import Fleet, demo_spec

    t_start = time.perf_counter()
    audit: list[AttemptRecord] = []
    with Fleet(demo_spec()) as fleet:
        catalog = fleet.catalog()
        mc = MultiCloud(catalog, {"strategy": "balanced"}, on_attempt=audit.append)
        with mc:
            client = mc.wrap(openai.OpenAI(api_key="unused-placeholder"))
            print("llm_multicloud demo: a simulated fleet on 127.0.0.1")
            print(
                format_table(
                    [("endpoint", "provider", "region", "residency", "price in/out $/Mtok")]
                    + [
                        (
                            e.id,
                            e.provider,
                            e.region,
                            ",".join(e.residency) or "-",
                            "unknown" if e.price is None else f"{e.price[0]:.3f} / {e.price[1]:.3f}",
                        )
                        for e in mc.catalog.endpoints
                    ]
                )
            )
            print()
            print(mc.explain("llama-3.1-8b", residency="EU", near="eu-central-1").describe())
            print()

            rows: list[tuple[Any, ...]] = []
            failures = 0

            def one(i: int, user: str, res: str | None, near: str, stream: bool) -> None:
                nonlocal failures
                t0 = time.perf_counter()
                try:
                    with routing(residency=res, near=near):
                        if stream:
                            with client.chat.completions.with_streaming_response.create(
                                model="llama-3.1-8b",
                                messages=[{"role": "user", "content": f"request {i}"}],
                                stream=True,
                                max_tokens=8,
                            ) as raw:
                                headers = raw.headers
                                text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
                        else:
                            resp = client.chat.completions.with_raw_response.create(
                                model="llama-3.1-8b",
                                messages=[{"role": "user", "content": f"request {i}"}],
                                max_tokens=8,
                            )
                            headers = resp.headers
                            text = resp.parse().choices[0].message.content or ""
                except openai.APIError as exc:
                    failures += 1
                    rows.append(
                        (i, user, res or "any", "stream" if stream else "json", "FAILED", "", "", "", str(exc)[:40])
                    )
                    return
                ms = (time.perf_counter() - t0) * 1000
                rows.append(
                    (
                        i,
                        user,
                        res or "any",
                        "stream" if stream else "json",
                        headers["x-llm-multicloud-endpoint"],
                        headers["x-llm-multicloud-region"],
                        headers["x-llm-multicloud-attempts"],
                        headers["x-llm-multicloud-hedged"],
                        f"{ms:.0f}",
                        text[:24],
                    )
                )

            header = ("#", "user", "residency", "mode", "served by", "region", "attempts", "hedged", "ms", "answer")
            print(f"Phase 1: {requests} requests from EU, US and APAC users (sync, streaming and not)")
            for i in range(requests):
                user, res, near = USERS[i % 3]
                one(i, user, res, near, stream=i % 2 == 0)
            print(format_table([header, *rows]))
            n_async = asyncio.run(_async_burst(mc, openai))
            print(f"\n  + {n_async} concurrent async requests through openai.AsyncOpenAI: all answered")

            down = _preferred(rows, "eu-user")
            print(f"\nPhase 2: region {down} goes down (connections refused); EU users keep working")
            fleet.set_fault(down, mode="down")
            rows.clear()
            before = len(audit)
            for i in range(requests):
                one(i, "eu-user", "EU", "eu-central-1", stream=i % 2 == 0)
            print(format_table([header, *rows]))
            eu_attempts = [a for a in audit[before:] if a.residency != "any"]
            outside = [a for a in eu_attempts if not _in_eu(mc, a.endpoint)]
            to_dead = [a for a in eu_attempts if a.endpoint == down]
            print(
                f"\n  failed requests: {failures}; EU attempts: {len(eu_attempts)}, "
                f"sent outside the EU: {len(outside)};"
                f" attempts that hit the dead region: {len(to_dead)} (then its breaker opened)"
            )
            fleet.set_fault(down, mode="none")

            print("\nPhase 3: snapshot")
            snap = mc.snapshot()
            print(
                format_table(
                    [("endpoint", "state", "TTFT ms", "requests", "failures", "hedges", "cost USD")]
                    + [
                        (
                            e["id"],
                            e["state"],
                            "-" if e["ttft_ms"] is None else f"{e['ttft_ms']:.0f}",
                            e["requests"],
                            e["failures"],
                            e["hedges"],
                            "unknown" if e["cost_usd"] is None else f"{e['cost_usd']:.6f}",
                        )
                        for e in snap["endpoints"]
                    ]
                )
            )
            print(f"\ntotal cost: ${snap['cost_usd']:.6f}; demo took {time.perf_counter() - t_start:.1f}s")
            if failures or outside:
                return 1
    return 0


def _preferred(rows: list[tuple[Any, ...]], user: str) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        if r[1] == user and r[4] != "FAILED":
            counts[r[4]] = counts.get(r[4], 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else "aws-euc1"


def _in_eu(mc: Any, endpoint_id: str) -> bool:
    from .regions import expand_tag

    fp: frozenset[str] = mc.catalog.get(endpoint_id).footprint
    return bool(fp) and fp <= expand_tag("EU")


async def _async_burst(mc: Any, openai: Any) -> int:
    aclient = mc.wrap(openai.AsyncOpenAI(api_key="unused-placeholder"))
    async with aclient:
        results = await asyncio.gather(
            *[
                aclient.chat.completions.create(
                    model="llama-3.1-8b", messages=[{"role": "user", "content": f"async {i}"}], max_tokens=4
                )
                for i in range(12)
            ]
        )
    return len(results)
