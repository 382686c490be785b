"""B3 — streaming pass-through: chunks per second through llm_multicloud vs. direct.

One fleet region in a separate process streams a long answer (``max_tokens`` 2000,
itl 0, ttft 0: the server sends as fast as it can). The plain openai client straight
to the server and the same client wrapped by llm_multicloud (catalog: that one
endpoint) read the whole stream, alternately (ABAB..., the order flipped every
round), sync and async. Throughput = SDK chunks received / time from the call to
the end of the stream. Also reported: client CPU per chunk (process time, all
threads) and the time llm_multicloud adds per chunk.

Under load (issue 14): streams at concurrency 1, 64 and 512 (``--quick``: 1 and 8),
sync (threads) and async (tasks), for the direct client, llm_multicloud and LiteLLM's
Router side by side (variants alternate in rounds, :mod:`benchmarks.load`):
chunks/s over the whole run (answered streams × chunks per stream / wall time) and
the p50/p99 of a whole stream's time. The bar: ≥ 95 % of the direct client's chunk
throughput at every concurrency.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from . import common, load

NAME = "b3_streaming"
TITLE = "B3 — streaming pass-through (chunks/s through llm_multicloud vs. direct)"
BAR_SHARE = 0.95
LEVELS = (1, 64, 512)
QUICK_LEVELS = (1, 8)
#: streams per (level, variant, client kind): full / --quick
PER_LEVEL = {1: 40, 64: 384, 512: 1024}
QUICK_PER_LEVEL = {1: 4, 8: 16}
#: tokens per stream in the concurrency run (each one SDK chunk)
LOAD_TOKENS = 50
QUICK_LOAD_TOKENS = 40


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


def _load_section(fleet: Any, mc: Any, router: Any, runner: asyncio.Runner, quick: bool) -> dict[str, Any]:
    """Chunks/s and stream-time percentiles at each concurrency, every variant."""
    max_tokens = QUICK_LOAD_TOKENS if quick else LOAD_TOKENS
    kw: dict[str, Any] = {"messages": common.MESSAGES, "max_tokens": max_tokens, "stream": True}
    sync_f, async_f = load.chat_factories(fleet.url("r0"), fleet.api_key("r0"), mc, router, kw)
    chunks: dict[str, dict[str, int]] = {"sync": {}, "async": {}}
    for v, f in sync_f.items():  # chunks per stream, per variant (they differ by framing)
        call, close = f()
        try:
            chunks["sync"][v] = int(call())
        finally:
            close()

    async def count_async() -> None:
        for v, af in async_f.items():
            call, close = await af()
            try:
                chunks["async"][v] = int(await call())
            finally:
                await close()

    runner.run(count_async())
    out: dict[str, Any] = {"loadavg_start": common.loadavg(), "max_tokens": max_tokens, "chunks_per_stream": chunks}
    levels = QUICK_LEVELS if quick else LEVELS
    per_level = QUICK_PER_LEVEL if quick else PER_LEVEL
    conc = load.concurrency(sync_f, async_f, runner, levels, per_level, 1 if quick else 2)
    for kind in ("sync", "async"):
        for vs in conc[kind].values():
            for v, x in vs.items():
                rps = x["throughput_rps"]
                x["chunks_per_s"] = None if rps is None else rps * chunks[kind][v]
            d = vs["direct"]["chunks_per_s"]
            for x in vs.values():
                x["chunks_vs_direct"] = common.ratio(x["chunks_per_s"], d)
    out["concurrency"] = conc
    out["loadavg_end"] = common.loadavg()
    return out


def _load_bars(ld: dict[str, Any]) -> list[dict[str, Any]]:
    return load.ratio_bars(ld["concurrency"], "chunks_vs_direct", "streaming chunks/s vs direct", BAR_SHARE)


def run(*, quick: bool = False, out_dir: str | Path | None = None, litellm: bool | None = None) -> dict[str, Any]:
    """B3: chunks/s of a long stream, direct vs llm_multicloud, sync and async."""
    t_start = time.monotonic()
    import openai

    import llm_multicloud as lmc
    from llm_multicloud.fleet import Latency, start_fleet_process

    use_litellm, why_not = common.want_litellm(litellm)
    max_tokens = 200 if quick else 2000
    reps = 2 if quick else 12
    ld: dict[str, Any] = {}
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
            router = None
            if use_litellm:
                ll = common.load_litellm()
                router = ll.Router(model_list=common.litellm_deployments(fleet, ["r0"]), num_retries=0)
            ld = _load_section(fleet, mc, router, runner, quick)
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
            "litellm": "used" if use_litellm else why_not,
        },
        "results": {**results, "load": ld},
        "bars": bars + _load_bars(ld),
        "plots": [],
    }
    return common.finish(result, t_start)


def markdown(res: dict[str, Any]) -> str:
    rows = []
    for kind in ("sync", "async"):
        r = res["results"][kind]
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
            *_load_markdown(res["results"]["load"]),
            *common.markdown_tail(res, common.load_errors(res["results"]["load"]["concurrency"])),
        ]
    )


def _load_markdown(ld: dict[str, Any]) -> list[str]:
    rows = [
        (
            kind,
            c,
            v,
            x["requests"],
            x["errors"],
            x["chunks_per_s"],
            x["chunks_vs_direct"],
            x["latency_ms"]["p50"],
            x["latency_ms"]["p99"],
        )
        for kind in ("sync", "async")
        for c, vs in ld["concurrency"][kind].items()
        for v, x in vs.items()
    ]
    return [
        f"**Under load** ({ld['max_tokens']} tokens per stream, 1 endpoint; load average {ld['loadavg_start']} "
        f"before, {ld['loadavg_end']} after; the fleet runs in one separate process on the same cores):",
        "",
        common.md_table(
            ["client", "concurrency", "variant", "streams", "errors", "chunks/s", "vs direct", "p50 ms", "p99 ms"],
            rows,
        ),
    ]


if __name__ == "__main__":
    raise SystemExit(common.main_for(NAME, run, markdown))
