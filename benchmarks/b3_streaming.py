"""B3 — streaming pass-through: chunks per second through llm_multicloud vs. direct.

One fleet region in a separate process streams a long answer (``max_tokens`` 2000,
itl 0, ttft 0: the server sends as fast as it can). The plain openai client straight
to the server and the same client wrapped by llm_multicloud (catalog: that one
endpoint) read the whole stream, alternately (ABAB..., the order flipped every
round), sync and async. Throughput = SDK chunks received / time from the call to
the end of the stream. Also reported: client CPU per chunk (process time, all
threads) and the time llm_multicloud adds per chunk.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from . import common

NAME = "b3_streaming"
TITLE = "B3 — streaming pass-through (chunks/s through llm_multicloud vs. direct)"
BAR_SHARE = 0.90


def _stats(runs: list[tuple[int, float, float]]) -> dict[str, Any]:
    rates = [n / t for n, t, _ in runs]
    chunks = sum(n for n, _, _ in runs)
    return {
        "runs": len(runs),
        "chunks_per_run": runs[0][0] if runs else 0,
        "chunks_per_s_median": common.percentile(rates, 0.5),
        "chunks_per_s_aggregate": chunks / sum(t for _, t, _ in runs),
        "cpu_us_per_chunk": sum(c for _, _, c in runs) / chunks * 1e6,
        "us_per_chunk_median": 1e6 / common.percentile(rates, 0.5),
    }


def run(*, quick: bool = False, out_dir: str | Path | None = None, litellm: bool | None = None) -> dict[str, Any]:
    """B3: chunks/s of a long stream, direct vs llm_multicloud, sync and async."""
    t_start = time.monotonic()
    import openai

    import llm_multicloud as lmc
    from llm_multicloud.fleet import Latency, start_fleet_process

    max_tokens = 200 if quick else 2000
    reps = 2 if quick else 12
    kw: dict[str, Any] = {"messages": common.MESSAGES, "max_tokens": max_tokens, "stream": True}
    fleet = start_fleet_process(common.region_specs(1, Latency(ttft_ms=0, ttft_jitter=0, itl_ms=0)))
    data: dict[str, dict[str, list[tuple[int, float, float]]]] = {
        "sync": {"direct": [], "lmc": []},
        "async": {"direct": [], "lmc": []},
    }
    try:
        mc = lmc.MultiCloud(common.catalog_for(fleet))
        url, key = fleet.url("r0"), fleet.api_key("r0")
        sc = {
            "direct": (openai.OpenAI(base_url=url, api_key=key, max_retries=0), common.SERVED),
            "lmc": (mc.wrap(openai.OpenAI(api_key=common.PLACEHOLDER_KEY)), common.MODEL),
        }

        def sync_once(v: str) -> tuple[int, float, float]:
            client, model = sc[v]
            c0, t0 = time.process_time(), time.perf_counter()
            n = 0
            for _ in client.chat.completions.create(model=model, **kw):
                n += 1
            return n, time.perf_counter() - t0, time.process_time() - c0

        with asyncio.Runner() as runner:

            async def make() -> dict[str, tuple[Any, str]]:
                return {
                    "direct": (openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0), common.SERVED),
                    "lmc": (mc.wrap(openai.AsyncOpenAI(api_key=common.PLACEHOLDER_KEY)), common.MODEL),
                }

            ac = runner.run(make())

            async def async_once(v: str) -> tuple[int, float, float]:
                client, model = ac[v]
                c0, t0 = time.process_time(), time.perf_counter()
                n = 0
                async for _ in await client.chat.completions.create(model=model, **kw):
                    n += 1
                return n, time.perf_counter() - t0, time.process_time() - c0

            for v in ("direct", "lmc"):  # warm-up
                sync_once(v)
                runner.run(async_once(v))
            for _, order in common.rotations(["direct", "lmc"], reps):
                for kind in ("sync", "async"):
                    for v in order:
                        r = sync_once(v) if kind == "sync" else runner.run(async_once(v))
                        data[kind][v].append(r)

            async def close() -> None:
                for c, _ in ac.values():
                    await c.close()

            runner.run(close())
        for c, _ in sc.values():
            c.close()
        mc.close()
    finally:
        fleet.stop()

    results: dict[str, Any] = {}
    bars = []
    for kind in ("sync", "async"):
        d = _stats(data[kind]["direct"])
        m = _stats(data[kind]["lmc"])
        pair = [(b[0] / b[1]) / (a[0] / a[1]) for a, b in zip(data[kind]["direct"], data[kind]["lmc"], strict=True)]
        share = common.percentile(pair, 0.5)
        results[kind] = {
            "direct": d,
            "lmc": m,
            "share_of_direct_median_of_pairs": share,
            "share_of_direct_aggregate": m["chunks_per_s_aggregate"] / d["chunks_per_s_aggregate"],
            "added_us_per_chunk": m["us_per_chunk_median"] - d["us_per_chunk_median"],
            "added_cpu_us_per_chunk": m["cpu_us_per_chunk"] - d["cpu_us_per_chunk"],
        }
        bars.append(
            common.bar(
                f"streaming throughput, {kind} (share of direct)",
                f"≥ {BAR_SHARE * 100:.0f} %",
                share * 100,
                share >= BAR_SHARE,
                f"median of {len(pair)} paired runs, {d['chunks_per_run']} chunks each; aggregate "
                f"{results[kind]['share_of_direct_aggregate'] * 100:.0f} %",
            )
        )
    result = {
        "name": NAME,
        "title": TITLE,
        "quick": quick,
        "params": {
            "max_tokens": max_tokens,
            "runs_per_variant_and_mode": reps,
            "fleet": "1 region in a separate process, ttft 0 / jitter 0 / itl 0",
            "policy": "llm_multicloud defaults",
        },
        "results": results,
        "bars": bars,
        "plots": [],
    }
    return common.finish(result, t_start)


def markdown(res: dict[str, Any]) -> str:
    rows = []
    for kind, r in res["results"].items():
        for v in ("direct", "lmc"):
            e = r[v]
            rows.append(
                (
                    kind,
                    "direct" if v == "direct" else "llm_multicloud",
                    e["chunks_per_s_median"],
                    e["us_per_chunk_median"],
                    e["cpu_us_per_chunk"],
                    f"{r['share_of_direct_median_of_pairs'] * 100:.0f} %" if v == "lmc" else "—",
                    f"{r['added_us_per_chunk']:.0f}" if v == "lmc" else "—",
                )
            )
    return "\n".join(
        [
            f"### {res['title']}",
            "",
            common.md_table(
                [
                    "mode",
                    "client",
                    "chunks/s (median)",
                    "µs/chunk",
                    "CPU µs/chunk",
                    "share of direct",
                    "added µs/chunk",
                ],
                rows,
            ),
            "",
            common.bars_table(res["bars"]),
        ]
    )


if __name__ == "__main__":
    raise SystemExit(common.main_for(NAME, run, markdown))
