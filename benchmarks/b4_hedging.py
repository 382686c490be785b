"""B4 — hedged requests on a heavy-tailed fleet.

Three regions (different providers, so different failure domains) in a separate
process, each with a TTFT of 20 ms median (lognormal jitter σ 0.2) and a heavy tail:
5 % of requests get 1000 ms more. Async clients keep 4 requests in flight (at 8, the
client process itself — openai SDK + router — saturates this shared 2-core machine:
client-side TTFTs inflate, every request looks late and the hedge budget drains on
requests that were never in the server's tail). Variants:

* ``no_hedge`` — llm_multicloud with hedging off (the baseline);
* ``fixed``    — hedge after a fixed delay (``{"hedge": {"delay_ms": 50}}``);
* ``adaptive`` — the default policy (``hedge.quantile`` of the endpoint's recent TTFT
  times ``hedge.headroom``, at least ``min_delay_ms``, hedge budget 10 %);
* ``litellm``  — LiteLLM's closest equivalent: ``latency-based-routing`` with
  ``timeout`` = the fixed hedge delay and ``num_retries`` 2, non-stream (its stream
  timeouts are not retried: see ``litellm_stream``);
* ``litellm_stream`` — the same with ``stream=True`` and ``stream_timeout`` (a quarter
  of the requests: it is there to show what happens to streams).

TTFT is measured by the client: to the first chunk with content for streams, to the
full answer for non-stream calls (8 tokens at itl 0 arrive with the first one).
Extra upstream requests = what the fleet received (its books, cleared before each
block) minus the logical requests made; the fleet's records also tell which upstream
requests drew a tail TTFT and whether they were cut off (a hedge won or the client
timed out) — i.e. whether the extra requests went where the tail was. Variants run in
interleaved blocks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import common

NAME = "b4_hedging"
TITLE = "B4 — hedging on a heavy-tailed fleet (TTFT and extra upstream requests)"
BAR_P99_RATIO = 4.0
BAR_EXTRA = 0.10
FIXED_DELAY_MS = 50.0
TTFT_MS = 20.0
TAIL_PROB = 0.05
TAIL_MS = 1000.0
CONCURRENCY = 4


async def _drive(call: Callable[[], Awaitable[float]], n: int, concurrency: int) -> tuple[list[float], int, list[str]]:
    """``n`` calls, ``concurrency`` in flight. Returns TTFTs (s), failures, a few error texts."""
    ttfts: list[float] = []
    errors: list[str] = []
    failed = 0
    left = n

    async def worker() -> None:
        nonlocal left, failed
        while left > 0:
            left -= 1
            try:
                ttfts.append(await call())
            except Exception as exc:
                failed += 1
                if len(errors) < 3:
                    errors.append(f"{type(exc).__name__}: {str(exc)[:160]}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ttfts, failed, errors


def run(*, quick: bool = False, out_dir: str | Path | None = None, litellm: bool | None = None) -> dict[str, Any]:
    """B4: p50/p99/p99.9 TTFT and extra upstream requests, no hedging vs fixed vs adaptive vs LiteLLM."""
    t_start = time.monotonic()
    import openai

    import llm_multicloud as lmc
    from llm_multicloud.fleet import Latency, start_fleet_process

    out = common.out_dir_for(quick, out_dir)
    use_litellm, why_not = common.want_litellm(litellm)
    n_total = 60 if quick else 2000
    blocks = 1 if quick else 4
    warmup = 10 if quick else 60
    per_block = n_total // blocks
    latency = Latency(ttft_ms=TTFT_MS, ttft_jitter=0.2, tail_prob=TAIL_PROB, tail_ms=TAIL_MS)
    fleet = start_fleet_process(common.region_specs(3, latency))
    policies: dict[str, dict[str, Any]] = {
        "no_hedge": {"hedge": {"enabled": False}},
        "fixed": {"hedge": {"enabled": True, "delay_ms": FIXED_DELAY_MS}},
        "adaptive": {"hedge": {"enabled": True}},
    }
    data: dict[str, dict[str, Any]] = {}
    snapshots: dict[str, Any] = {}
    try:
        mcs = {v: lmc.MultiCloud(common.catalog_for(fleet), p) for v, p in policies.items()}
        kw: dict[str, Any] = {"messages": common.MESSAGES, "max_tokens": 8}

        async def main() -> None:
            calls: dict[str, Callable[[], Awaitable[float]]] = {}
            clients = []
            for v, mc in mcs.items():
                client = mc.wrap(openai.AsyncOpenAI(api_key=common.PLACEHOLDER_KEY))
                clients.append(client)

                async def call(client: Any = client) -> float:
                    t0 = time.perf_counter()
                    first = None
                    async for chunk in await client.chat.completions.create(model=common.MODEL, stream=True, **kw):
                        if first is None and chunk.choices and chunk.choices[0].delta.content:
                            first = time.perf_counter() - t0
                    if first is None:
                        raise RuntimeError("stream without content")
                    return first

                calls[v] = call
            if use_litellm:
                ll = common.load_litellm()
                deployments = common.litellm_deployments(fleet, fleet.region_ids)
                router = ll.Router(
                    model_list=deployments,
                    routing_strategy="latency-based-routing",
                    num_retries=2,
                    timeout=FIXED_DELAY_MS / 1000.0,
                )
                srouter = ll.Router(
                    model_list=deployments,
                    routing_strategy="latency-based-routing",
                    num_retries=2,
                    stream_timeout=FIXED_DELAY_MS / 1000.0,
                )

                async def lcall() -> float:
                    t0 = time.perf_counter()
                    await router.acompletion(model=common.MODEL, **kw)
                    return time.perf_counter() - t0

                async def lscall() -> float:
                    t0 = time.perf_counter()
                    first = None
                    async for chunk in await srouter.acompletion(model=common.MODEL, stream=True, **kw):
                        if first is None and chunk.choices and chunk.choices[0].delta.content:
                            first = time.perf_counter() - t0
                    if first is None:
                        raise RuntimeError("stream without content")
                    return first

                calls["litellm"] = lcall
                calls["litellm_stream"] = lscall
            for v in calls:
                data[v] = {
                    "ttft": [],
                    "failed": 0,
                    "errors": [],
                    "upstream": 0,
                    "logical": 0,
                    "cpu": 0.0,
                    "wall": 0.0,
                    "tail": 0,
                    "tail_cut": 0,
                }
            for call in calls.values():  # warm-up: pools, latency estimates, TTFT histograms
                await _drive(call, warmup, CONCURRENCY)
            for _, order in common.rotations(list(calls), blocks):
                for v in order:
                    await asyncio.to_thread(fleet.clear)
                    c0, w0 = time.process_time(), time.perf_counter()
                    n_block = per_block // 4 if v == "litellm_stream" else per_block
                    ttfts, failed, errors = await _drive(calls[v], n_block, CONCURRENCY)
                    d = data[v]
                    d["cpu"] += time.process_time() - c0
                    d["wall"] += time.perf_counter() - w0
                    await asyncio.sleep(0.05)  # let cancelled hedge losers reach the server's books
                    recs = [r for r in await asyncio.to_thread(fleet.received) if r.path.endswith("/chat/completions")]
                    # the server's view: which upstream requests drew a tail TTFT, and were cut off
                    # (a hedge won, or the client timed out and retried) instead of waiting it out
                    tail = [r for r in recs if r.ttft_ms is not None and r.ttft_ms >= TAIL_MS / 2]
                    d["tail"] += len(tail)
                    d["tail_cut"] += sum(1 for r in tail if r.outcome != "ok")
                    d["ttft"].extend(ttfts)
                    d["failed"] += failed
                    d["errors"].extend(errors[: max(0, 3 - len(d["errors"]))])
                    d["upstream"] += len(recs)
                    d["logical"] += n_block
            for c in clients:
                await c.close()

        asyncio.run(main())
        for v, mc in mcs.items():
            snap = mc.snapshot()
            snapshots[v] = {
                "hedges": sum(e["hedges"] for e in snap["endpoints"]),
                "hedge_wins": sum(e["hedge_wins"] for e in snap["endpoints"]),
                "wasted": sum(e["wasted"] for e in snap["endpoints"]),
                "hedge_budget_balance": snap["budgets"]["hedge_balance"],
            }
            mc.close()
    finally:
        fleet.stop()

    rows: dict[str, Any] = {}
    for v, d in data.items():
        s = common.summarize(d["ttft"], scale=1e3)
        rows[v] = {
            "requests": d["logical"],
            "ok": len(d["ttft"]),
            "failed": d["failed"],
            "errors": d["errors"],
            "ttft_ms": {k: s.get(k) for k in ("p50", "p90", "p99", "p999", "max", "mean")},
            "upstream_requests": d["upstream"],
            "extra_share": (d["upstream"] - d["logical"]) / d["logical"] if d["logical"] else None,
            "client_cpu_share": d["cpu"] / d["wall"] if d["wall"] else None,
            "upstream_tail_requests": d["tail"],
            "upstream_tail_requests_cut_off": d["tail_cut"],
            "extra_spent_outside_the_tail": (
                max(0.0, (d["upstream"] - d["logical"] - d["tail_cut"]) / (d["upstream"] - d["logical"]))
                if d["upstream"] > d["logical"]
                else None
            ),
            **({"snapshot": snapshots[v]} if v in snapshots else {}),
        }
    base = rows["no_hedge"]["ttft_ms"]["p99"]
    for r in rows.values():
        r["p99_reduction_vs_no_hedge"] = common.ratio(base, r["ttft_ms"]["p99"])

    def hedge_bars(v: str) -> list[dict[str, Any]]:
        r = rows[v]
        red, extra = r["p99_reduction_vs_no_hedge"], r["extra_share"]
        return [
            common.bar(
                f"hedging ({v}): p99 TTFT no-hedge / hedged",
                f"≥ {BAR_P99_RATIO:g}×",
                red,
                None if red is None else red >= BAR_P99_RATIO,
                f"p99 {base:.0f} ms → {r['ttft_ms']['p99']:.0f} ms",
            ),
            common.bar(
                f"hedging ({v}): extra upstream requests",
                f"≤ {BAR_EXTRA * 100:.0f} %",
                None if extra is None else extra * 100,
                None if extra is None else extra <= BAR_EXTRA,
                f"{r['upstream_requests']} upstream for {r['requests']} logical; failed {r['failed']}",
            ),
        ]

    bars = hedge_bars("adaptive") + hedge_bars("fixed")
    bars += common.litellm_absent(use_litellm, why_not)
    result: dict[str, Any] = {
        "name": NAME,
        "title": TITLE,
        "quick": quick,
        "params": {
            "fleet": f"3 regions (aws, gcp, azure) in a separate process; ttft {TTFT_MS:g} ms median, jitter 0.2, "
            f"tail_prob {TAIL_PROB}, tail_ms {TAIL_MS:g}, itl 0; max_tokens 8",
            "concurrency": CONCURRENCY,
            "requests_per_variant": per_block * blocks,
            "blocks": blocks,
            "warmup_per_variant": warmup,
            "fixed_delay_ms": FIXED_DELAY_MS,
            "litellm": "latency-based-routing, num_retries 2, timeout (non-stream) / stream_timeout (stream) = "
            f"{FIXED_DELAY_MS / 1000:g} s"
            if use_litellm
            else why_not,
        },
        "results": rows,
        "bars": bars,
        "plots": [],
    }

    plt = common.pyplot()
    if plt is not None:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5))
        for v, d in data.items():
            xs = sorted(x * 1e3 for x in d["ttft"])
            if not xs:
                continue
            n = len(xs)
            ys = [(i + 1) / n for i in range(n)]
            a1.plot(xs, ys, label=v, drawstyle="steps-post")
            a2.plot(xs, [max(1.0 - y, 0.5 / n) for y in ys], label=v, drawstyle="steps-post")
        a1.set_xscale("log")
        a1.set_xlabel("TTFT (ms)")
        a1.set_ylabel("CDF")
        a1.set_title("TTFT distribution")
        a1.grid(True, which="both", alpha=0.3)
        a1.legend(fontsize=8)
        a2.set_xscale("log")
        a2.set_yscale("log")
        a2.set_xlabel("TTFT (ms)")
        a2.set_ylabel("P(TTFT > x)")
        a2.set_title("tail (complementary CDF)")
        a2.axhline(0.01, color="grey", linestyle=":", linewidth=1)
        a2.axhline(0.001, color="grey", linestyle=":", linewidth=1)
        a2.grid(True, which="both", alpha=0.3)
        fig.suptitle(f"B4 hedging: {TAIL_PROB:.0%} of requests +{TAIL_MS:g} ms, {CONCURRENCY} in flight")
        common.save_plot(fig, out, "b4_hedging_ttft.png", result)
    return common.finish(result, t_start)


def markdown(res: dict[str, Any]) -> str:
    rows = []
    for v, r in res["results"].items():
        t = r["ttft_ms"]
        rows.append(
            (
                v,
                r["requests"],
                r["failed"],
                t["p50"],
                t["p90"],
                t["p99"],
                t["p999"],
                "n/a" if r["extra_share"] is None else f"{r['extra_share'] * 100:.1f} %",
                "n/a" if r["p99_reduction_vs_no_hedge"] is None else f"{r['p99_reduction_vs_no_hedge']:.1f}×",
                f"{r.get('upstream_tail_requests_cut_off', 0)} of {r.get('upstream_tail_requests', 0)}",
                "n/a" if r.get("client_cpu_share") is None else f"{r['client_cpu_share'] * 100:.0f} %",
            )
        )
    lines = [
        f"### {res['title']}",
        "",
        common.md_table(
            [
                "variant",
                "requests",
                "failed",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p99.9 ms",
                "extra upstream",
                "p99 vs no-hedge",
                "tail requests cut off",
                "client CPU",
            ],
            rows,
        ),
    ]
    return "\n".join(lines + common.markdown_tail(res))


if __name__ == "__main__":
    raise SystemExit(common.main_for(NAME, run, markdown))
