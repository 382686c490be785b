"""B1 — routing decision time: ``MultiCloud.router.plan(...)`` per call.

For catalogs of 10, 100, 1,000 and 10,000 endpoints (10,000 is left out of ``--quick``: building
its warmed MultiCloud alone takes seconds; spread over the real AWS, GCP and Azure
regions of the built-in table, so ``EU`` keeps about a third of them), strategies
``balanced`` and ``latency``, with and without a residency constraint. The health
states are the MultiCloud's own (``mc.health.states``), warmed with TTFT samples and
some in-flight load so that ranking does real work; ``now`` comes from the
MultiCloud's clock; each call gets a fresh random seed and the same ``limit`` (number
of candidates to build) as the executor gives it. Since the router keeps a health index
(router.py ``_Index``: it re-reads only the endpoints whose state changed), a second
row per size and strategy ("churn 2") changes two endpoints' health between plans,
outside the timing — one TTFT sample and one in-flight count each, what a finished
request and a new one do — so that the incremental update is part of the figure.

Every call is timed alone with ``time.perf_counter_ns`` (the timer's own cost is
reported); the configurations are interleaved in rounds. Garbage collections that ran
inside timed calls are counted per configuration (the p99 at 10,000 endpoints used to be
gen-2 collections), and the tail is attributed: the share of the calls at or over the
p99 that had a collection inside (``gc.callbacks``), and the p99 of the calls that had
none (what is left: the router's own slow plans, and the scheduler's preemption on a
loaded machine). When a bar (≤ 20 µs median at 100 endpoints; ≤ 1 ms median at
10,000 with p99 ≤ 2× the median) is missed, the plan is profiled with cProfile and the
top costs are part of the result.
"""

from __future__ import annotations

import cProfile
import gc
import pstats
import random
import re
import time
import timeit
from pathlib import Path
from typing import Any

from . import common

NAME = "b1_routing"
TITLE = "B1 — routing decision time (Router.plan)"
BAR_US = 20.0
BAR_10K_US = 1000.0
BAR_P99_RATIO = 2.0
SIZES = (10, 100, 1000, 10000)
QUICK_SIZES = (10, 100, 1000)
STRATEGIES = ("balanced", "latency")
RESIDENCIES = (None, "EU")
#: health changes between two timed plans (0: none; 2: one request ending, one starting)
CHURN = 2


def build_catalog(n: int) -> dict[str, Any]:
    """A catalog of ``n`` endpoints over real public-cloud regions (no sovereign ones)."""
    from llm_multicloud.regions import all_regions

    regions = [r for r in all_regions() if r.provider in ("aws", "gcp", "azure") and not r.sovereign]
    eps = []
    for i in range(n):
        r = regions[(i * 7) % len(regions)]  # stride: neighbours differ in provider and continent
        eps.append(
            {
                "id": f"ep{i}",
                "provider": r.provider,
                "region": r.code,
                "base_url": f"http://127.0.0.1:{20000 + i}/v1",
                "api_key": f"sk-{i}",
                "models": {common.MODEL: common.SERVED},
                "pricing": {"input_per_mtok": 0.10 + 0.01 * (i % 7), "output_per_mtok": 0.30 + 0.02 * (i % 5)},
            }
        )
    return {"models": {common.MODEL: {"context_window": 131072}}, "endpoints": eps}


def make_mc(n: int, strategy: str, rng: random.Random) -> Any:
    import llm_multicloud as lmc

    mc = lmc.MultiCloud(build_catalog(n), {"strategy": strategy, "probe": {"enabled": False}}, telemetry=False)
    now = mc.clock()
    for st in mc.health.states:
        base = rng.uniform(20.0, 300.0)
        for _ in range(5):
            st.observe_ttft(base * rng.uniform(0.8, 1.3), now - rng.uniform(0.0, 5.0))
        st.inflight = rng.randrange(0, 4)
    return mc


def timer_overhead_ns(n: int = 20000) -> float:
    pc = time.perf_counter_ns
    ts = []
    for _ in range(n):
        a = pc()
        b = pc()
        ts.append(b - a)
    return common.percentile(ts, 0.5)


def plan_kwargs(mc: Any) -> dict[str, Any]:
    """The keyword arguments the executor passes besides the seed: since the router
    learnt ``limit`` (build only the first few candidates), the executor asks for
    ``retry.max_attempts + hedge.max_in_flight + 2`` of them (executor.py, ``plan``)."""
    import inspect

    if "limit" in inspect.signature(mc.router.plan).parameters:
        p = mc.policy
        return {"limit": p.retry.max_attempts + p.hedge.max_in_flight + 2}
    return {}


def _gc_collections() -> list[int]:
    return [g["collections"] for g in gc.get_stats()]


#: collections started so far (a gc.callbacks counter: which timed calls had one inside)
_GC_STARTS = [0]


def _count_gc(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _GC_STARTS[0] += 1


def _time_calls(
    mc: Any,
    constraints: Any,
    seeds: list[float],
    gcs: list[int] | None = None,
    churn: int = 0,
    hit: list[bool] | None = None,
) -> list[int]:
    """Per call, ns; ``gcs`` (per generation) gets the collections that ran meanwhile,
    ``hit`` per call whether a collection ran inside it (gc.callbacks).
    ``churn``: endpoints whose health changes before each call (not timed)."""
    plan = mc.router.plan
    states = mc.health.states
    clock = mc.clock
    model = common.MODEL
    kw = plan_kwargs(mc)
    pc = time.perf_counter_ns
    out = []
    before = _gc_collections()
    rng = random.Random(len(seeds))
    for s in seeds:
        for _ in range(churn):
            st = states[rng.randrange(len(states))]
            st.observe_ttft(rng.uniform(20.0, 300.0), clock())
            st.inflight = rng.randrange(0, 4)
        now = clock()
        g0 = _GC_STARTS[0]
        t0 = pc()
        plan(model, constraints, states, now, seed=s, **kw)
        out.append(pc() - t0)
        if hit is not None:
            hit.append(_GC_STARTS[0] != g0)
    if gcs is not None:
        for i, (a, b) in enumerate(zip(before, _gc_collections(), strict=True)):
            gcs[i] += b - a
    return out


def profile_plan(mc: Any, constraints: Any, calls: int) -> list[dict[str, Any]]:
    """Top costs of ``plan`` by own time, per plan call."""
    rng = random.Random(7)
    seeds = [rng.random() for _ in range(calls)]
    plan = mc.router.plan
    states = mc.health.states
    now = mc.clock()
    kw = plan_kwargs(mc)
    prof = cProfile.Profile()
    prof.enable()
    for s in seeds:
        plan(common.MODEL, constraints, states, now, seed=s, **kw)
    prof.disable()
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    rows = []
    for (file, line, func), (_cc, nc, tt, ct, _callers) in stats.items():
        short = file.split("/llm_multicloud/")[-1] if "/llm_multicloud/" in file else Path(file).name
        where = f"llm_multicloud/{short}:{line}({func})" if "/llm_multicloud/" in file else f"{short}:{line}({func})"
        rows.append(
            {
                "function": where,
                "calls_per_plan": nc / calls,
                "own_share": tt / total if total else 0.0,
                "own_us_per_plan_profiled": tt / calls * 1e6,
                "cum_us_per_plan_profiled": ct / calls * 1e6,
            }
        )
    rows.sort(key=lambda r: -r["own_share"])
    return rows[:12]


def _label(row: dict[str, Any]) -> str:
    churn = f" churn {row['changes_between_plans']}" if row["changes_between_plans"] else ""
    return f"{row['strategy']}/{row['residency']}{churn}"


def _source_lines(pattern: str) -> list[str]:
    """file:line of a pattern in llm_multicloud/router.py (evidence for the notes)."""
    import llm_multicloud.router as router

    src = Path(router.__file__)
    return [
        f"llm_multicloud/router.py:{i}"
        for i, line in enumerate(src.read_text().splitlines(), 1)
        if re.search(pattern, line)
    ]


def run(*, quick: bool = False, out_dir: str | Path | None = None, litellm: bool | None = None) -> dict[str, Any]:
    """B1: Router.plan time for 10/100/1000/10000 endpoints, balanced and latency, with and without residency."""
    t_start = time.monotonic()
    from llm_multicloud.context import UNCONSTRAINED

    out = common.out_dir_for(quick, out_dir)
    rng = random.Random(42)
    budget_s = 0.03 if quick else 1.0  # measured time per configuration
    rounds = 2 if quick else 10
    lo, hi = (20, 2000) if quick else (300, 40000)

    configs: list[tuple[str, int, str, str | None, int]] = []
    mcs: dict[tuple[int, str], Any] = {}
    cons = {None: UNCONSTRAINED, "EU": UNCONSTRAINED.narrow("EU")}
    sizes = QUICK_SIZES if quick else SIZES
    for n in sizes:
        for s in STRATEGIES:
            mcs[(n, s)] = make_mc(n, s, rng)
            for r in RESIDENCIES:
                configs.append((f"{n}/{s}/{r or 'any'}", n, s, r, 0))
            configs.append((f"{n}/{s}/any/churn", n, s, None, CHURN))

    # calibrate: iterations per configuration from a short trial
    iters: dict[str, int] = {}
    compliant: dict[str, int] = {}
    for key, n, s, r, ch in configs:
        mc = mcs[(n, s)]
        trial = _time_calls(mc, cons[r], [rng.random() for _ in range(20)], churn=ch)
        est = max(common.percentile(trial, 0.5), 100) / 1e9
        iters[key] = max(lo, min(hi, int(budget_s / est)))
        compliant[key] = len(mc.router.plan(common.MODEL, cons[r], mc.health.states, mc.clock()).candidates)

    samples: dict[str, list[int]] = {k: [] for k, *_ in configs}
    hits: dict[str, list[bool]] = {k: [] for k, *_ in configs}
    gcs: dict[str, list[int]] = {k: [0, 0, 0] for k, *_ in configs}
    keys = [k for k, *_ in configs]
    by_key = {k: (n, s, r, ch) for k, n, s, r, ch in configs}
    gc.collect()
    gc.callbacks.append(_count_gc)
    try:
        for _, order in common.rotations(keys, rounds):
            for key in order:
                n, s, r, ch = by_key[key]
                per_round = max(1, iters[key] // rounds)
                seeds = [rng.random() for _ in range(per_round)]
                samples[key].extend(_time_calls(mcs[(n, s)], cons[r], seeds, gcs[key], ch, hits[key]))
    finally:
        gc.callbacks.remove(_count_gc)

    overhead = timer_overhead_ns()
    rows = []
    for key, n, s, r, ch in configs:
        st = common.summarize(samples[key], scale=1e-3)  # ns -> µs
        # what the tail is: the calls at or over the p99 that had a collection inside,
        # and the p99 of the calls that had none (the router's own tail, and the machine's)
        slow = [h for t, h in zip(samples[key], hits[key], strict=True) if t * 1e-3 >= st["p99"]]
        calm = [t for t, h in zip(samples[key], hits[key], strict=True) if not h]
        rows.append(
            {
                "endpoints": n,
                "strategy": s,
                "residency": r or "any",
                "changes_between_plans": ch,
                "candidates": compliant[key],
                "calls": st["n"],
                "median_us": st["p50"],
                "p99_us": st["p99"],
                "mean_us": st["mean"],
                "min_us": st["min"],
                "p99_over_median": st["p99"] / st["p50"] if st["p50"] else None,
                "gc_collections": gcs[key],
                "p99_calls_with_gc": sum(slow) / len(slow) if slow else 0.0,
                "p99_without_gc_us": common.percentile(calm, 0.99) * 1e-3 if calm else None,
            }
        )

    def med(n: int, s: str, r: str) -> float:
        return next(
            x["median_us"]
            for x in rows
            if x["endpoints"] == n and x["strategy"] == s and x["residency"] == r and not x["changes_between_plans"]
        )

    at100 = [x for x in rows if x["endpoints"] == 100]
    worst = max(x["median_us"] for x in at100)
    met = worst <= BAR_US
    per_endpoint = {s: (med(1000, s, "any") - med(100, s, "any")) / 900.0 for s in STRATEGIES}
    at10k = [x for x in rows if x["endpoints"] == 10000]
    worst10k = max((x["median_us"] for x in at10k), default=None)
    tail10k = max((x["p99_over_median"] for x in at10k), default=None)
    met10k = None if worst10k is None or tail10k is None else worst10k <= BAR_10K_US and tail10k <= BAR_P99_RATIO
    result: dict[str, Any] = {
        "name": NAME,
        "title": TITLE,
        "quick": quick,
        "params": {
            "sizes": list(sizes),
            "strategies": list(STRATEGIES),
            "residencies": [r or "any" for r in RESIDENCIES],
            "rounds": rounds,
            "budget_s_per_config": budget_s,
            "timer_overhead_ns": overhead,
            "plan_kwargs": plan_kwargs(next(iter(mcs.values()))),
            "note": "called as the executor calls it (same limit); each call timed alone with perf_counter_ns "
            "(timer overhead not subtracted); configurations interleaved in rounds; gc enabled",
        },
        "results": {
            "rows": rows,
            "us_per_extra_endpoint": per_endpoint,
        },
        "bars": [
            common.bar(
                "routing decision, 100 endpoints (median)",
                f"≤ {BAR_US:g} µs",
                worst,
                met,
                "worst of balanced/latency × any/EU/any with churn at 100 endpoints: "
                + ", ".join(f"{_label(x)} {x['median_us']:.1f} µs" for x in at100),
            ),
            common.bar(
                "routing decision, 10,000 endpoints (median; p99 ≤ 2× median)",
                f"≤ {BAR_10K_US:g} µs, p99/median ≤ {BAR_P99_RATIO:g}",
                worst10k,
                met10k,
                "not measured in --quick"
                if not at10k
                else f"worst p99/median {tail10k:.2f}; "
                + ", ".join(f"{_label(x)} {x['median_us']:.0f} µs (p99 {x['p99_us']:.0f})" for x in at10k),
            ),
        ],
        "plots": [],
    }

    if not met or met10k is False:
        mc100 = mcs[(100, "balanced")]
        calls = 300 if quick else 3000
        result["results"]["profile"] = {
            "config": "100 endpoints, balanced, no residency",
            "calls": calls,
            "top_own_time": profile_plan(mc100, cons[None], calls),
            "top_own_time_latency": profile_plan(mcs[(100, "latency")], cons[None], calls)[:6],
        }
        if (10000, "balanced") in mcs:
            result["results"]["profile_10000"] = {
                "config": "10,000 endpoints, balanced, no residency",
                "calls": 30,
                "top_own_time": profile_plan(mcs[(10000, "balanced")], cons[None], 30),
            }
        seeded = timeit.timeit("R(0.123456789)", setup="import random; R = random.Random", number=20000) / 20000
        unseeded = timeit.timeit("r.random()", setup="import random; r = random.Random(1)", number=20000) / 20000
        result["results"]["micro"] = {
            "random_Random_seeded_construct_us": seeded * 1e6,
            "random_draw_us": unseeded * 1e6,
            "random_Random_sites": _source_lines(r"random\.Random\(seed\)"),
            "candidate_sites": _source_lines(r"def _candidate|cands = \[self\._candidate"),
        }

    plt = common.pyplot()
    if plt is not None:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for s in STRATEGIES:
            for r in ("any", "EU"):
                pts = sorted(
                    (x["endpoints"], x["median_us"], x["p99_us"])
                    for x in rows
                    if x["strategy"] == s and x["residency"] == r and not x["changes_between_plans"]
                )
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{s}, residency {r} (median)")
        ax.axhline(BAR_US, color="red", linestyle="--", linewidth=1, label=f"bar {BAR_US:g} µs")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("endpoints in catalog")
        ax.set_ylabel("µs per Router.plan call")
        ax.set_title("B1 routing decision time (median)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        common.save_plot(fig, out, "b1_routing.png", result)
    return common.finish(result, t_start)


def markdown(res: dict[str, Any]) -> str:
    r = res["results"]
    lines = [f"### {res['title']}", ""]
    lines.append(
        common.md_table(
            [
                "endpoints",
                "strategy",
                "residency",
                "changes between plans",
                "compliant",
                "calls",
                "median µs",
                "p99 µs",
                "p99/median",
                "gc runs (gen 0/1/2)",
                "calls ≥ p99 with a gc",
                "p99 µs, calls without gc",
            ],
            [
                (
                    x["endpoints"],
                    x["strategy"],
                    x["residency"],
                    x["changes_between_plans"],
                    x["candidates"],
                    x["calls"],
                    x["median_us"],
                    x["p99_us"],
                    x["p99_over_median"],
                    "/".join(str(g) for g in x["gc_collections"]),
                    f"{x['p99_calls_with_gc'] * 100:.0f} %",
                    x["p99_without_gc_us"],
                )
                for x in r["rows"]
            ],
        )
    )
    lines.append("")
    lines.append(
        f"Timer overhead (perf_counter_ns pair, not subtracted): {res['params']['timer_overhead_ns']:.0f} ns. "
        "Marginal cost per extra endpoint (100 → 1000, no residency): "
        + ", ".join(f"{s} {v:.2f} µs" for s, v in r["us_per_extra_endpoint"].items())
        + "."
    )
    for prof in (r.get("profile"), r.get("profile_10000")):
        if not prof:
            continue
        lines += ["", f"Profile ({prof['config']}, {prof['calls']} calls under cProfile; own time share):", ""]
        lines.append(
            common.md_table(
                ["function", "calls/plan", "own share"],
                [
                    (p["function"], p["calls_per_plan"], f"{p['own_share'] * 100:.1f} %")
                    for p in prof["top_own_time"][:8]
                ],
            )
        )
    micro = r.get("micro")
    if micro and micro["random_Random_sites"]:
        lines += [
            "",
            f"`random.Random(seed)` costs {micro['random_Random_seeded_construct_us']:.1f} µs per construction "
            f"(a draw from an existing generator: {micro['random_draw_us']:.2f} µs); the router builds one per plan "
            "where this line runs: " + ", ".join(micro["random_Random_sites"]) + ".",
        ]
    lines += ["", common.bars_table(res["bars"])]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(common.main_for(NAME, run, markdown))
