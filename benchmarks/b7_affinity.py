"""B7 — multi-turn conversations over a fleet with prefix caching, with and without affinity.

Four regions (three in the EU, one in the US; ``--eu-endpoints`` for more EU ones) in a
separate process, each with a simulated prefix cache: a prompt token the region has
not seen in this conversation's leading messages costs ``PREFILL_MS`` of prefill
before the first token (TTFT 10 ms otherwise), and a region prefills
``PREFILL_LANES`` prompt at a time (a GPU's compute is shared: uncached prompts
queue). That is what makes the scenario realistic: several equal EU endpoints under
concurrent load, where a router without affinity spreads the load — and with it each
conversation, whose cache then sits elsewhere. Cached input is billed at a tenth of
the input price.

The cache's size is its GPU's KV memory, counted in tokens (``PrefixCache.kv_tokens``,
least recently used prefixes evicted by their token cost), and sized by a stated
model rather than tuned: an endpoint holds its fair share of the active
conversations with ``KV_SHARE`` (1.25×) headroom — ``KV_SHARE × concurrency /
EU endpoints × the tokens of a whole conversation`` (its context document and every
question and answer). That is a busy fleet, whose active sessions together need more
KV memory than one GPU has (a Llama-3-8B-class model holds about 0.5 M tokens in the
KV cache of an 80 GB GPU; a few hundred sessions of a few thousand tokens exceed
that): with affinity each endpoint needs its own conversations' share and holds it;
scattered, each needs every conversation, and least recently used eviction keeps
only the last few. ``--kv-share`` changes the multiple (a sweep: how the gain
depends on the cache's size); the earlier cache counted entries (one per message,
an 800-word document costing what a 5-word question costs), so scattered
conversations stayed cached everywhere.
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
import itertools
import math
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
#: EU places of the EU endpoints (the first ``eu_endpoints`` of them), then one US endpoint.
EU_WHERE = (
    ("aws", "eu-central-1"),
    ("gcp", "europe-west4"),
    ("azure", "westeurope"),
    ("aws", "eu-west-1"),
    ("gcp", "europe-west1"),
    ("azure", "northeurope"),
)
US_WHERE = ("aws", "us-east-1")
EU_ENDPOINTS = 3
#: Each endpoint's KV cache holds this multiple of its fair share of the active conversations.
KV_SHARE = 1.25
MAX_TOKENS = 8
HEADING = "Context document {i}: "
QUESTION = "question {turn} about document {ci}"


def _words(n: int, rng: random.Random) -> str:
    return " ".join(f"w{rng.randrange(100000)}" for _ in range(n))


def _conversations(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [HEADING.format(i=i) + _words(CONTEXT_WORDS, rng) for i in range(n)]


#: Client processes by default (see the module docs: one process driving every
#: conversation measured its own CPU queue; deployments run replicas).
PROCESSES = 4
#: A user's pause between an answer and the next question (ms).
THINK_MS = 1000.0
#: Seconds a client waits after it is built (probes give every endpoint an RTT baseline).
WARM_S = 1.0


def _new_data() -> dict[str, Any]:
    return {
        "ttft": [],
        "prompt": 0,
        "cached": 0,
        "ideal": 0,
        "cost": 0.0,
        "eu": 0,
        "n": 0,
        "failed": 0,
        "errors": [],
        "turns": [],  # (conversation, turn, endpoint, cached, ideal) of each answer
    }


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
            history.append({"role": "user", "content": QUESTION.format(turn=turn, ci=ci)})
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
                        max_tokens=MAX_TOKENS,
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
                        max_tokens=MAX_TOKENS,
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
            d["eu"] += served == "eu" or served in job["eu"]
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
                ideal = usage.prompt_tokens - _last_two_words(history) if turn > 0 else 0
                d["ideal"] += ideal  # ideal: all but the last answer and the new question were seen
                d["turns"].append((ci, turn, served, cached, ideal))
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
    eu_endpoints: int | None = None,
    kv_share: float | None = None,
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
    n_eu = max(1, eu_endpoints if eu_endpoints is not None else EU_ENDPOINTS)
    share = kv_share if kv_share is not None else KV_SHARE
    # The KV cache model (module docs): an endpoint holds its fair share of the active
    # conversations (concurrency / EU endpoints), whole, times the headroom.
    conv_tokens = conversation_tokens(turns)
    kv_tokens = math.ceil(share * concurrency / n_eu * conv_tokens)
    where = [*EU_WHERE[:n_eu], US_WHERE] if n_eu <= len(EU_WHERE) else None
    if where is None:
        raise ValueError(f"at most {len(EU_WHERE)} EU endpoints")
    eu = {f"r{i}" for i in range(n_eu)}
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
            prefix_cache=PrefixCache(prefill_ms_per_token=PREFILL_MS, kv_tokens=kv_tokens, prefill_lanes=PREFILL_LANES),
            pricing=pricing,
            seed=i,
        )
        for i, (p, r) in enumerate(where)
    ]
    fleet = start_fleet_process(specs)
    variants = ["no_affinity", "affinity", "session"] + (["litellm"] if use_litellm else [])
    data: dict[str, dict[str, Any]] = {}
    evicted: dict[str, dict[str, int]] = {}  # variant -> region -> tokens evicted during it
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
                    "eu": eu,
                    "litellm_deployments": common.litellm_deployments(fleet, sorted(eu)) if v == "litellm" else None,
                    # spawned processes import openai first: every share starts together
                    "start_at": time.time() + (WARM_S + 4.0 if pool is not None else WARM_S),
                }
                jobs = [
                    {**base_job, "conversations": convs[k::procs], "concurrency": max(1, concurrency // procs)}
                    for k in range(procs)
                ]
                before = _evicted_tokens(fleet, eu)
                if pool is None:
                    data[v] = asyncio.run(_run_variant({**jobs[0], "concurrency": concurrency}))
                else:
                    data[v] = _merge(list(pool.map(_worker, jobs)))
                after = _evicted_tokens(fleet, eu)
                evicted[v] = {r: after[r] - before[r] for r in sorted(eu)}
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
            "where_hits_were_lost": _losses(d["turns"], evicted.get(v, {})),
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
            "fleet": f"{n_eu + 1} regions ({n_eu} EU, 1 US) in a separate process; ttft {TTFT_MS:g} ms, prefix "
            f"cache {PREFILL_MS:g} ms per uncached prompt token; pricing in/out/cached {PRICE_IN}/{PRICE_OUT}/"
            f"{PRICE_CACHED} USD per Mtok",
            "eu_endpoints": n_eu,
            "conversations": n_conv,
            "turns": turns,
            "context_words": CONTEXT_WORDS,
            "concurrency": concurrency,
            "client_processes": procs,
            "think_ms": think_ms,
            "kv_tokens_per_endpoint": kv_tokens,
            "kv_share": share,
            "kv_model": f"{share:g} × ({concurrency} active conversations / {n_eu} EU endpoints) × {conv_tokens} "
            "tokens of a whole conversation",
            "residency": "EU",
            "litellm": f"simple-shuffle over the {n_eu} EU deployments, optional_pre_call_checks=['prompt_caching']"
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


def conversation_tokens(turns: int) -> int:
    """Prompt tokens (fleet: words) a whole conversation holds in a KV cache at its last
    turn: the context document with its heading, every question and every answer (an
    answer is ``MAX_TOKENS`` words plus the region's tag)."""
    heading = len(("[variant] " + HEADING.format(i=0)).split())  # the variant's salt, then the heading
    question = len(QUESTION.format(turn=0, ci=0).split())
    return CONTEXT_WORDS + heading + turns * (question + MAX_TOKENS + 1)


def _evicted_tokens(fleet: Any, regions: set[str]) -> dict[str, int]:
    return {r: int((fleet.state(r).get("prefix_cache") or {}).get("evicted_tokens", 0)) for r in regions}


def _losses(turns: list[Any], evicted: dict[str, int]) -> dict[str, Any]:
    """Where a variant's cache hits went (the evidence for its hit rate): turns that
    moved to another endpoint than the conversation's previous turn, turns that stayed
    and still found less than the ideal cached (evicted meanwhile), the conversations'
    first endpoints (the load of the pins), and the tokens each endpoint's cache
    evicted during the variant."""
    by_conv: dict[int, list[Any]] = {}
    for t in sorted(turns, key=lambda t: (t[0], t[1])):
        by_conv.setdefault(t[0], []).append(t)
    moved = moved_missed = stayed_missed = stayed = 0
    ideal_lost_moved = ideal_lost_stayed = 0
    first: dict[str, int] = {}
    for conv in by_conv.values():
        first[str(conv[0][2])] = first.get(str(conv[0][2]), 0) + 1
        for prev, cur in itertools.pairwise(conv):
            lost = max(cur[4] - cur[3], 0)
            if cur[2] != prev[2]:
                moved += 1
                moved_missed += lost > 0
                ideal_lost_moved += lost
            else:
                stayed += 1
                stayed_missed += lost > 0
                ideal_lost_stayed += lost
    return {
        "turns_moved": moved,
        "turns_moved_short": moved_missed,
        "turns_stayed": stayed,
        "turns_stayed_short": stayed_missed,
        "ideal_tokens_lost_by_moves": ideal_lost_moved,
        "ideal_tokens_lost_on_the_same_endpoint": ideal_lost_stayed,
        "conversations_by_first_endpoint": dict(sorted(first.items())),
        "evicted_tokens_by_endpoint": evicted,
    }


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
    losses = [
        (
            v,
            w["turns_moved"],
            w["turns_stayed_short"],
            w["ideal_tokens_lost_by_moves"],
            w["ideal_tokens_lost_on_the_same_endpoint"],
            " / ".join(f"{k} {n}" for k, n in w["conversations_by_first_endpoint"].items()),
            sum(w["evicted_tokens_by_endpoint"].values()),
        )
        for v, r in res["results"].items()
        if (w := r.get("where_hits_were_lost")) and v != "litellm"
    ]
    if losses:
        lines += [
            "",
            f"Where the hits were lost (KV cache {res['params'].get('kv_tokens_per_endpoint')} tokens per endpoint: "
            f"{res['params'].get('kv_model')}):",
            "",
            common.md_table(
                [
                    "variant",
                    "turns moved",
                    "stayed, found less",
                    "ideal tokens lost by moves",
                    "lost on the same endpoint",
                    "conversations by first endpoint",
                    "tokens evicted",
                ],
                losses,
            ),
        ]
    return "\n".join(lines + common.markdown_tail(res))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--processes", type=int, default=None)
    p.add_argument("--think-ms", type=float, default=None)
    p.add_argument("--eu-endpoints", type=int, default=None)
    p.add_argument("--kv-share", type=float, default=None)
    args, rest = p.parse_known_args(argv)

    def run_b7(**kw: Any) -> dict[str, Any]:
        return run(
            processes=args.processes,
            think_ms=args.think_ms,
            eu_endpoints=args.eu_endpoints,
            kv_share=args.kv_share,
            **kw,
        )

    run_b7.__doc__ = (
        f"{run.__doc__} --processes N: client processes sharing the conversations and the "
        f"concurrency (default {PROCESSES}); --think-ms T: a user's pause between turns (default "
        f"{THINK_MS:g}); --processes 1 --think-ms 0 is the earlier setup; --eu-endpoints N: EU endpoints "
        f"(default {EU_ENDPOINTS}, at most {len(EU_WHERE)}); --kv-share X: each endpoint's KV cache as a multiple of "
        f"its fair share of the active conversations (default {KV_SHARE:g})."
    )
    return common.main_for(NAME, run_b7, markdown, rest)


if __name__ == "__main__":
    raise SystemExit(main())
