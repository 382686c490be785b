"""B7 — multi-turn conversations over a fleet with prefix caching, with and without affinity.

Four regions (three in the EU, one in the US) in a separate process, each with a
simulated prefix cache: a prompt token the region has not seen in this
conversation's leading messages costs ``PREFILL_MS`` of prefill before the first
token (TTFT 10 ms otherwise), and a region prefills ``PREFILL_LANES`` prompt at a
time (a GPU's compute is shared: uncached prompts queue). That is what makes the
scenario realistic: several equal EU endpoints under concurrent load, where a
router without affinity spreads the load — and with it each conversation, whose
cache then sits elsewhere. Cached input is billed at a tenth of the input price.
Conversations start at random times within ``START_SPREAD_S`` (the same for every
variant), and a user reads each answer for ``THINK_MS`` before the next question
(``--think-ms``). The conversations and the concurrency are shared by ``--processes``
client processes (default ``PROCESSES``), as a deployment runs replicas.

Why (profiled with py-spy, 2026-12-01): with no think time and one process, the 24
conversations form a closed loop that keeps the client process at 100 % CPU — about
15 ms of client CPU per request, 9 of them in the openai SDK's own request transform
and chunk parsing — so its TTFT was its run queue (≈ 24 × 15 ms / cores), the same
with or without affinity, not what the fleet did. ``--processes 1 --think-ms 0`` is
that earlier setup.
Every conversation has its own context document (~``CONTEXT_WORDS`` words, like a
RAG or agent session) and runs ``TURNS`` turns, each resending the whole history
(streamed, TTFT to the first content chunk), ``CONCURRENCY`` conversations at once,
all with residency EU. Variants:

* ``no_affinity`` — llm_multicloud, ``affinity.enabled: false`` (per-request power
  of two choices among the near-equal EU endpoints);
* ``affinity`` — llm_multicloud's default policy: the prompt's stable prefix is the
  affinity key, no code change;
* ``session`` — the same with an explicit ``x-llm-multicloud-session`` header;
* ``litellm`` — LiteLLM's Router over the three EU deployments (residency has to be
  done by hand: LiteLLM has no residency), ``simple-shuffle`` with
  ``optional_pre_call_checks=["prompt_caching"]``, its prompt-cache-aware routing.

Measured per variant: cache-hit rate (share of prompt tokens the fleet reported as
cached) against the ideal (every turn after the first hits all but its last two
messages), p50/p99 TTFT as the client saw it and the fleet's own TTFT per answer
(base + queued prefill: what caching and routing did, without the client's CPU
time), cost (USD from usage × pricing, cached tokens at the cached price),
residency compliance (share of requests served in the EU).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import multiprocessing
import random
import time
from pathlib import Path
from typing import Any

from . import common

NAME = "b7_affinity"
TITLE = "B7 — multi-turn conversations with prefix caching: affinity vs none vs LiteLLM"
TTFT_MS = 10.0
PREFILL_MS = 0.2
PREFILL_LANES = 1
#: Conversations start at random times within this many seconds (the same for every variant).
START_SPREAD_S = 2.0
CONTEXT_WORDS = 800
PRICE_IN, PRICE_OUT, PRICE_CACHED = 1.0, 2.0, 0.1  # USD per Mtok
BAR_HIT_OF_IDEAL = 0.9
BAR_P50_RATIO = 2.0
WHERE = (("aws", "eu-central-1"), ("gcp", "europe-west4"), ("azure", "westeurope"), ("aws", "us-east-1"))
EU = {"r0", "r1", "r2"}


def _words(n: int, rng: random.Random) -> str:
    return " ".join(f"w{rng.randrange(100000)}" for _ in range(n))


def _conversations(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"Context document {i}: " + _words(CONTEXT_WORDS, rng) for i in range(n)]


#: Client processes by default (see the module docs: one process driving every
#: conversation measured its own CPU queue; deployments run replicas).
PROCESSES = 4
#: A user's pause between an answer and the next question (ms).
THINK_MS = 1000.0
#: Seconds a client waits after it is built (probes give every endpoint an RTT baseline).
WARM_S = 1.0


def _new_data() -> dict[str, Any]:
    return {"ttft": [], "prompt": 0, "cached": 0, "ideal": 0, "cost": 0.0, "eu": 0, "n": 0, "failed": 0, "errors": []}


async def _run_variant(job: dict[str, Any]) -> dict[str, Any]:
    """One variant's share of the conversations in this process (the whole of them with
    one process), from a client built here; returns its raw figures."""
    import openai

    import llm_multicloud as lmc

    v, turns, d = job["variant"], job["turns"], _new_data()
    mc: Any = None
    router: Any = None
    client: Any = None
    if v == "litellm":
        router = common.load_litellm().Router(
            model_list=job["litellm_deployments"],
            routing_strategy="simple-shuffle",
            optional_pre_call_checks=["prompt_caching"],
        )
    else:
        # Probes on (as in production): every endpoint has an RTT baseline, so the
        # router sees them as near-equal rather than unknown.
        policy: dict[str, Any] = {"probe": {"enabled": True, "interval_s": 0.5}, "hedge": {"enabled": False}}
        if v == "no_affinity":
            policy["affinity"] = {"enabled": False}
        mc = lmc.MultiCloud(job["catalog"], policy)
        client = mc.wrap(openai.AsyncOpenAI(api_key=common.PLACEHOLDER_KEY))
    await asyncio.sleep(max(job["start_at"] - time.time(), WARM_S))

    async def converse(ci: int, context: str) -> None:
        history: list[dict[str, str]] = [{"role": "system", "content": context}]
        headers = {"x-llm-multicloud-residency": "EU"}
        if v == "session":
            headers["x-llm-multicloud-session"] = f"conversation-{ci}"
        for turn in range(turns):
            history.append({"role": "user", "content": f"question {turn} about document {ci}"})
            t0 = time.perf_counter()
            first = None
            usage = None
            text: list[str] = []
            served = None
            try:
                if router is not None:
                    stream = await router.acompletion(
                        model=common.MODEL,
                        messages=list(history),
                        max_tokens=8,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                    async for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            first = first or time.perf_counter() - t0
                            text.append(chunk.choices[0].delta.content)
                        if getattr(chunk, "usage", None):
                            usage = chunk.usage
                    served = "eu"  # only EU deployments were given to it
                else:
                    assert client is not None
                    raw = await client.chat.completions.with_raw_response.create(
                        model=common.MODEL,
                        messages=list(history),
                        max_tokens=8,
                        stream=True,
                        stream_options={"include_usage": True},
                        extra_headers=headers,
                    )
                    served = raw.headers.get("x-llm-multicloud-endpoint")
                    parsed = raw.parse()
                    stream = await parsed if inspect.isawaitable(parsed) else parsed
                    async for chunk in stream:
                        if chunk.choices and chunk.choices[0].delta.content:
                            first = first or time.perf_counter() - t0
                            text.append(chunk.choices[0].delta.content)
                        if chunk.usage:
                            usage = chunk.usage
            except Exception as exc:
                d["failed"] += 1
                if len(d["errors"]) < 3:
                    d["errors"].append(f"{type(exc).__name__}: {str(exc)[:160]}")
                history.pop()
                continue
            d["n"] += 1
            d["eu"] += served == "eu" or served in EU
            if first is not None:
                d["ttft"].append(first)
            if usage is not None:
                details = getattr(usage, "prompt_tokens_details", None)
                cached = (getattr(details, "cached_tokens", 0) or 0) if details else 0
                d["prompt"] += usage.prompt_tokens
                d["cached"] += cached
                d["cost"] += (
                    (usage.prompt_tokens - cached) * PRICE_IN
                    + cached * PRICE_CACHED
                    + usage.completion_tokens * PRICE_OUT
                ) / 1e6
                if turn > 0:  # ideal: all but the last answer and the new question were seen
                    d["ideal"] += usage.prompt_tokens - _last_two_words(history)
            history.append({"role": "assistant", "content": "".join(text)})
            if job["think_s"]:
                await asyncio.sleep(job["think_s"])  # the user reads the answer and types the next question

    sem = asyncio.Semaphore(job["concurrency"])
    t_begin = time.perf_counter()

    async def one(ci: int, ctx: str, start: float) -> None:
        await asyncio.sleep(start - (time.perf_counter() - t_begin))  # users do not all start at once
        async with sem:
            await converse(ci, ctx)

    try:
        await asyncio.gather(*(one(ci, ctx, start) for ci, ctx, start in job["conversations"]))
    finally:
        if client is not None:
            await client.close()
        if mc is not None:
            mc.close()
    return d


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    """A client process (spawned): runs its share of one variant."""
    return asyncio.run(_run_variant(job))


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out = _new_data()
    for p in parts:
        for k, v in p.items():
            out[k] = out[k] + v if k != "errors" else (out[k] + v)[:3]
    return out


def run(
    *,
    quick: bool = False,
    out_dir: str | Path | None = None,
    litellm: bool | None = None,
    processes: int | None = None,
    think_ms: float | None = None,
) -> dict[str, Any]:
    """B7: cache-hit rate, p50/p99 TTFT and cost of multi-turn conversations, with and without affinity."""
    t_start = time.monotonic()
    from concurrent.futures import ProcessPoolExecutor

    from llm_multicloud.fleet import Latency, PrefixCache, RegionSpec, start_fleet_process

    out = common.out_dir_for(quick, out_dir)
    use_litellm, why_not = common.want_litellm(litellm)
    n_conv = 6 if quick else 48
    turns = 4 if quick else 10
    concurrency = 6 if quick else 24
    procs = max(1, processes if processes is not None else (2 if quick else PROCESSES))
    think_ms = think_ms if think_ms is not None else (100.0 if quick else THINK_MS)
    # A cache holds ~40 % of what the active conversations need (prefixes: two per
    # turn), as a GPU's KV cache holds a share of a busy fleet's sessions: with
    # affinity an endpoint needs about a third of them, scattered it needs them all.
    max_entries = concurrency * 2 * turns * 2 // 5
    pricing = {"input_per_mtok": PRICE_IN, "output_per_mtok": PRICE_OUT, "cached_input_per_mtok": PRICE_CACHED}
    specs = [
        RegionSpec(
            id=f"r{i}",
            provider=p,
            region=r,
            models={common.MODEL: common.SERVED},
            api_key=f"sk-bench-r{i}",
            latency=Latency(ttft_ms=TTFT_MS, ttft_jitter=0.1),
            # One prefill at a time per region (a GPU's compute is shared): uncached
            # prompts queue, so sending everything to one region makes it slow, and a
            # router without affinity spreads the load — and the conversations with it.
            prefix_cache=PrefixCache(
                prefill_ms_per_token=PREFILL_MS, max_entries=max_entries, prefill_lanes=PREFILL_LANES
            ),
            pricing=pricing,
            seed=i,
        )
        for i, (p, r) in enumerate(WHERE)
    ]
    fleet = start_fleet_process(specs)
    variants = ["no_affinity", "affinity", "session"] + (["litellm"] if use_litellm else [])
    data: dict[str, dict[str, Any]] = {}
    try:
        contexts = _conversations(n_conv, seed=7)
        rng = random.Random(11)
        starts = [rng.uniform(0.0, START_SPREAD_S) for _ in contexts]
        pool = ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) if procs > 1 else None
        try:
            for v in variants:  # each variant its own conversations (fresh caches): contexts per variant
                salt = f"[{v}] "
                convs = [(ci, salt + ctx, starts[ci]) for ci, ctx in enumerate(contexts)]
                base_job = {
                    "variant": v,
                    "turns": turns,
                    "think_s": think_ms / 1e3,
                    "catalog": fleet.catalog(),
                    "litellm_deployments": common.litellm_deployments(fleet, sorted(EU)) if v == "litellm" else None,
                    # spawned processes import openai first: every share starts together
                    "start_at": time.time() + (WARM_S + 4.0 if pool is not None else WARM_S),
                }
                jobs = [
                    {**base_job, "conversations": convs[k::procs], "concurrency": max(1, concurrency // procs)}
                    for k in range(procs)
                ]
                if pool is None:
                    data[v] = asyncio.run(_run_variant({**jobs[0], "concurrency": concurrency}))
                else:
                    data[v] = _merge(list(pool.map(_worker, jobs)))
        finally:
            if pool is not None:
                pool.shutdown()
        # The fleet's own TTFT of each answer (base TTFT + the prefill, queued behind
        # the region's other prefills): what the caches and the routing did, without
        # the client's CPU time on a loaded machine.
        for rec in fleet.received():
            msgs = (rec.json or {}).get("messages") if isinstance(rec.json, dict) else None
            if rec.ttft_ms is None or not msgs or not isinstance(msgs[0].get("content"), str):
                continue
            for v in variants:
                if msgs[0]["content"].startswith(f"[{v}] "):
                    data[v].setdefault("server_ttft", []).append(rec.ttft_ms / 1e3)
    finally:
        fleet.stop()

    rows: dict[str, Any] = {}
    for v, d in data.items():
        s = common.summarize(d["ttft"], scale=1e3)
        srv = common.summarize(d.get("server_ttft", []), scale=1e3)
        hit = d["cached"] / d["prompt"] if d["prompt"] else None
        ideal = d["ideal"] / d["prompt"] if d["prompt"] else None
        rows[v] = {
            "requests": d["n"] + d["failed"],
            "failed": d["failed"],
            "errors": d["errors"],
            "cache_hit_rate": hit,
            "ideal_hit_rate": ideal,
            "hit_of_ideal": None if hit is None or not ideal else hit / ideal,
            "ttft_ms": {k: s.get(k) for k in ("p50", "p90", "p99", "mean")},
            "server_ttft_ms": {k: srv.get(k) for k in ("p50", "p99")},
            "cost_usd": d["cost"],
            "residency_compliance": d["eu"] / d["n"] if d["n"] else None,
        }
    off = rows["no_affinity"]
    bars = []
    for v in ("affinity", "session"):
        r = rows[v]
        ratio = common.ratio(off["ttft_ms"]["p50"], r["ttft_ms"]["p50"])
        bars += [
            common.bar(
                f"B7 ({v}): cache-hit rate / ideal",
                f"≥ {BAR_HIT_OF_IDEAL:.0%}",
                None if r["hit_of_ideal"] is None else r["hit_of_ideal"] * 100,
                None if r["hit_of_ideal"] is None else r["hit_of_ideal"] >= BAR_HIT_OF_IDEAL,
                f"hit {common.fmt(r['cache_hit_rate'])} vs ideal {common.fmt(r['ideal_hit_rate'])}; "
                f"without affinity {common.fmt(off['cache_hit_rate'])}",
            ),
            common.bar(
                f"B7 ({v}): p50 TTFT without / with affinity",
                f"≥ {BAR_P50_RATIO:g}×",
                ratio,
                None if ratio is None else ratio >= BAR_P50_RATIO,
                f"p50 {common.fmt(off['ttft_ms']['p50'])} ms → {common.fmt(r['ttft_ms']['p50'])} ms (the fleet's own "
                f"TTFT: {common.fmt(off['server_ttft_ms']['p50'])} → {common.fmt(r['server_ttft_ms']['p50'])} ms); "
                f"residency compliance {common.fmt(off['residency_compliance'])} vs "
                f"{common.fmt(r['residency_compliance'])}",
            ),
        ]
    bars += common.litellm_absent(use_litellm, why_not)
    result: dict[str, Any] = {
        "name": NAME,
        "title": TITLE,
        "quick": quick,
        "params": {
            "fleet": f"4 regions (3 EU, 1 US) in a separate process; ttft {TTFT_MS:g} ms, prefix cache "
            f"{PREFILL_MS:g} ms per uncached prompt token; pricing in/out/cached {PRICE_IN}/{PRICE_OUT}/{PRICE_CACHED} "
            "USD per Mtok",
            "conversations": n_conv,
            "turns": turns,
            "context_words": CONTEXT_WORDS,
            "concurrency": concurrency,
            "client_processes": procs,
            "think_ms": think_ms,
            "prefix_cache_entries": max_entries,
            "residency": "EU",
            "litellm": "simple-shuffle over the 3 EU deployments, optional_pre_call_checks=['prompt_caching']"
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
        names = list(rows)
        a1.bar(names, [(rows[v]["cache_hit_rate"] or 0) * 100 for v in names])
        a1.axhline((rows["affinity"]["ideal_hit_rate"] or 0) * 100, color="grey", linestyle=":", label="ideal")
        a1.set_ylabel("prompt tokens cached (%)")
        a1.set_title("cache-hit rate")
        a1.legend(fontsize=8)
        for v, d in data.items():
            xs = sorted(x * 1e3 for x in d["ttft"])
            if xs:
                a2.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=v, drawstyle="steps-post")
        a2.set_xscale("log")
        a2.set_xlabel("TTFT (ms)")
        a2.set_ylabel("CDF")
        a2.set_title("TTFT")
        a2.grid(True, which="both", alpha=0.3)
        a2.legend(fontsize=8)
        fig.suptitle(f"B7 affinity: {n_conv} conversations × {turns} turns, prefix cache {PREFILL_MS:g} ms/token")
        common.save_plot(fig, out, "b7_affinity.png", result)
    return common.finish(result, t_start)


def _last_two_words(history: list[dict[str, str]]) -> int:
    """Prompt tokens (fleet: words) of the last assistant answer and the new question."""
    return sum(len(m["content"].split()) for m in history[-2:])


def markdown(res: dict[str, Any]) -> str:
    rows = []
    for v, r in res["results"].items():
        t = r["ttft_ms"]
        rows.append(
            (
                v,
                r["requests"],
                r["failed"],
                "n/a" if r["cache_hit_rate"] is None else f"{r['cache_hit_rate'] * 100:.1f} %",
                "n/a" if r["hit_of_ideal"] is None else f"{r['hit_of_ideal'] * 100:.0f} %",
                t.get("p50"),
                t.get("p99"),
                r.get("server_ttft_ms", {}).get("p50"),
                f"{r['cost_usd']:.6f}",
                "n/a" if r["residency_compliance"] is None else f"{r['residency_compliance'] * 100:.0f} %",
            )
        )
    procs = res["params"].get("client_processes", 1)
    lines = [
        f"### {res['title']}",
        "",
        f"{res['params']['concurrency']} conversations at once from {procs} client process"
        f"{'es' if procs > 1 else ''}, {res['params'].get('think_ms', 0):g} ms between an answer and the next "
        "question.",
        "",
        common.md_table(
            [
                "variant",
                "requests",
                "failed",
                "cache hit",
                "of ideal",
                "p50 TTFT ms",
                "p99 TTFT ms",
                "server p50 ms",
                "cost USD",
                "EU",
            ],
            rows,
        ),
    ]
    return "\n".join(lines + common.markdown_tail(res))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--processes", type=int, default=None)
    p.add_argument("--think-ms", type=float, default=None)
    args, rest = p.parse_known_args(argv)

    def run_b7(**kw: Any) -> dict[str, Any]:
        return run(processes=args.processes, think_ms=args.think_ms, **kw)

    run_b7.__doc__ = (
        f"{run.__doc__} --processes N: client processes sharing the conversations and the "
        f"concurrency (default {PROCESSES}); --think-ms T: a user's pause between turns (default "
        f"{THINK_MS:g}); --processes 1 --think-ms 0 is the earlier setup."
    )
    return common.main_for(NAME, run_b7, markdown, rest)


if __name__ == "__main__":
    raise SystemExit(main())
