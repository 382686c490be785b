"""Client-side capacity limits: no 429s instead of handled 429s.

Starts a simulated deployment on 127.0.0.1 that enforces 300 requests per minute
(5/s, bursts of 10) with 429 + Retry-After, and sends it a burst of 30 requests (10 at a
time, from threads) through the unchanged openai SDK twice: once with a catalog that does not know the quota
(the fleet answers 429s; the library cools down and waits), once with
``limits: {rpm: 300, burst_s: 2}`` in the catalog (the library paces itself: no
429 at all). Then it prints the bucket from ``snapshot()["limits"]``.

Prerequisites: the ``fleet`` extra and the openai SDK — ``pip install '.[demo]'``.
Runs against the simulated fleet on 127.0.0.1; no credentials.

    python examples/capacity_limits.py
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openai

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, Latency, RateLimits, RegionSpec

MODEL = "llama-3.1-8b"


def burst(fleet: Fleet, limits: dict[str, float] | None) -> tuple[int, int, float]:
    fleet.reset()
    catalog = fleet.catalog()
    if limits is not None:
        catalog["endpoints"][0]["limits"] = limits
    policy = {"probe": {"enabled": False}}
    with lmc.MultiCloud(catalog, policy) as mc:
        client = mc.wrap(openai.OpenAI(api_key="sk-placeholder-never-sent", timeout=20))
        t0 = time.monotonic()

        # 10 callers at once: a burst reaches the deployment faster than it refills,
        # however fast or slow this machine answers one request
        def one(i: int) -> bool:
            try:
                client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], max_tokens=4
                )
                return True
            except openai.APIStatusError:
                return False  # 429s on every attempt: the burst outran the quota

        with ThreadPoolExecutor(max_workers=10) as pool:
            failed = sum(not ok for ok in pool.map(one, range(30)))
        took = time.monotonic() - t0
        if limits is not None:
            print("  bucket:", mc.snapshot()["limits"][0])
    refused = sum(1 for r in fleet.received("deploy") if r.status == 429)
    return refused, failed, took


def main() -> int:
    region = RegionSpec(
        id="deploy",
        provider="azure",
        region="swedencentral",
        models={MODEL: "served"},
        api_key="sk-deploy",
        latency=Latency(ttft_ms=2, ttft_jitter=0.0),
        limits=RateLimits(rpm=300, burst_s=2),
    )
    with Fleet([region]) as fleet:
        blind, blind_failed, t_blind = burst(fleet, None)
        print(
            f"without limits in the catalog: {blind} requests answered 429, "
            f"{30 - blind_failed} of 30 served in {t_blind:.1f}s"
        )
        paced, paced_failed, t_paced = burst(fleet, {"rpm": 300, "burst_s": 2})
        print(
            f"with limits in the catalog:    {paced} requests answered 429, "
            f"{30 - paced_failed} of 30 served in {t_paced:.1f}s"
        )
    ok = blind > 0 and paced == 0 and paced_failed == 0
    print("the quota was respected without a single 429:", ok)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
