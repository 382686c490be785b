"""B5 — a region outage mid-run.

Three regions (aws, gcp, azure) in a separate process, TTFT 10 ms. An async client
sends a steady, open-loop stream of non-stream requests (40 per second, at most 32
in flight). A third of the way in, the region that carried the most traffic so far
goes ``down`` (its port refuses connections); two thirds in, it comes back. The same scenario runs for
llm_multicloud (default policy except a short breaker ejection: ``breaker.
base_ejection_s`` = 2 s instead of 30 s, because the ejection time bounds how fast
traffic returns after recovery) and for LiteLLM's Router (``num_retries`` 2,
``cooldown_time`` = the same 2 s, other settings default).

Measured: failed requests; latency before / during / after the outage; when the
library *detected* the outage (llm_multicloud: its breaker opened, from the
``on_transition`` hook; LiteLLM: the deployment entered cooldown, polled every
20 ms); the share of attempts sent to the dead region during the outage and after
detection (client-side attempt records: llm_multicloud's ``on_attempt`` hook,
LiteLLM's ``log_pre_api_call`` callback — a refused connection never reaches the
server, so the server's books cannot tell); and the time from recovery until the
first attempt reaches the region again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import common

NAME = "b5_outage"
TITLE = "B5 — region outage mid-run (failover, detection, recovery)"
RATE = 40.0
MAX_IN_FLIGHT = 32
TTFT_MS = 10.0


@dataclass
class _Run:
    t0: float = 0.0
    wall0_ns: int = 0
    t_down: float | None = None
    t_up: float | None = None
    t_detect: float | None = None
    t_closed: float | None = None
    dead: str | None = None
    requests: list[tuple[float, float, bool, str | None]] = field(default_factory=list)  # start, end, ok, error
    attempts: list[tuple[float, str, str]] = field(default_factory=list)  # start, region, outcome
    transitions: list[tuple[float, str, str, str]] = field(default_factory=list)
    skipped: int = 0
    cpu_s: float = 0.0


async def _scenario(
    run: _Run,
    call: Callable[[], Awaitable[None]],
    fleet: Any,
    duration: float,
    t_down: float,
    t_up: float,
    poll: Callable[[], bool] | None = None,
) -> None:
    """Open-loop load for ``duration`` s; the dead region goes down at ``t_down`` and up at ``t_up``."""
    in_flight = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        nonlocal in_flight
        start = time.monotonic() - run.t0
        err = None
        try:
            await call()
            ok = True
        except Exception as exc:
            ok = False
            err = f"{type(exc).__name__}: {str(exc)[:200]}"
        finally:
            in_flight -= 1
        run.requests.append((start, time.monotonic() - run.t0, ok, err))

    async def control() -> None:
        await asyncio.sleep(max(0.0, run.t0 + t_down - time.monotonic()))
        # take down the region that carries the most traffic (ties: the first)
        seen: dict[str, int] = dict.fromkeys(fleet.region_ids, 0)
        for _t, reg, _o in run.attempts:
            if reg in seen:
                seen[reg] += 1
        run.dead = max(seen, key=lambda r: seen[r])
        run.t_down = time.monotonic() - run.t0  # the outage window opens when we pull the plug
        await asyncio.to_thread(fleet.set_fault, run.dead, mode="down")
        await asyncio.sleep(max(0.0, run.t0 + t_up - time.monotonic()))
        await asyncio.to_thread(fleet.set_fault, run.dead)
        run.t_up = time.monotonic() - run.t0  # listening again

    async def poller() -> None:
        assert poll is not None
        while time.monotonic() - run.t0 < duration:
            if run.t_detect is None and run.t_down is not None and poll():
                run.t_detect = time.monotonic() - run.t0
            await asyncio.sleep(0.02)

    ctl = asyncio.create_task(control())
    pol = asyncio.create_task(poller()) if poll is not None else None
    c0 = time.process_time()
    n = int(duration * RATE)
    for i in range(n):
        due = run.t0 + i / RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if in_flight >= MAX_IN_FLIGHT:
            run.skipped += 1
            continue
        in_flight += 1
        t = asyncio.create_task(one())
        tasks.add(t)
        t.add_done_callback(tasks.discard)
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)
    await ctl
    if pol is not None:
        pol.cancel()
    run.cpu_s = time.process_time() - c0


def _analyze(run: _Run, duration: float, bucket: float, regions: list[str]) -> dict[str, Any]:
    t_down = run.t_down if run.t_down is not None else duration
    t_up = run.t_up if run.t_up is not None else duration
    dead = run.dead

    def lat(lo: float, hi: float) -> dict[str, Any]:
        xs = [(e - s) * 1e3 for s, e, ok, _ in run.requests if ok and lo <= s < hi]
        st = common.summarize(xs)
        return {"n": st["n"], "p50_ms": st.get("p50"), "p99_ms": st.get("p99")}

    before, during, after = lat(0, t_down), lat(t_down, t_up), lat(t_up, duration + 1)
    failed = [(s, err) for s, _, ok, err in run.requests if not ok]
    att_out = [a for a in run.attempts if t_down <= a[0] < t_up]
    dead_out = [a for a in att_out if a[1] == dead]
    att_before = [a for a in run.attempts if a[0] < t_down]
    res: dict[str, Any] = {
        "dead_region": dead,
        "traffic_share_before_outage": {
            r: sum(1 for a in att_before if a[1] == r) / len(att_before) if att_before else None for r in regions
        },
        "requests": len(run.requests),
        "skipped_at_cap": run.skipped,
        "failed": len(failed),
        "failed_during_outage": sum(1 for s, _ in failed if t_down <= s < t_up),
        "first_errors": [e for _, e in failed[:3]],
        "latency_before": before,
        "latency_during_outage": during,
        "latency_after": after,
        "added_p50_ms_during_outage": None
        if before["p50_ms"] is None or during["p50_ms"] is None
        else during["p50_ms"] - before["p50_ms"],
        "added_p99_ms_during_outage": None
        if before["p99_ms"] is None or during["p99_ms"] is None
        else during["p99_ms"] - before["p99_ms"],
        "dead_share_before_outage": (sum(1 for a in att_before if a[1] == dead) / len(att_before))
        if att_before
        else None,
        "attempts_during_outage": len(att_out),
        "attempts_to_dead_during_outage": len(dead_out),
        "dead_share_during_outage": len(dead_out) / len(att_out) if att_out else None,
        "t_down_s": run.t_down,
        "t_up_s": run.t_up,
        "detection_s": None if run.t_detect is None or run.t_down is None else run.t_detect - run.t_down,
        "client_cpu_share": run.cpu_s / duration,
    }
    if run.t_detect is not None:
        after_det = [a for a in att_out if a[0] >= run.t_detect]
        res["attempts_after_detection"] = len(after_det)
        res["attempts_to_dead_after_detection"] = sum(1 for a in after_det if a[1] == dead)
        res["dead_share_after_detection"] = (
            res["attempts_to_dead_after_detection"] / len(after_det) if after_det else None
        )
        res["latency_after_detection"] = lat(run.t_detect, t_up)
    else:
        res["attempts_after_detection"] = None
        res["attempts_to_dead_after_detection"] = None
        res["dead_share_after_detection"] = None
    back = [a[0] for a in run.attempts if a[1] == dead and a[0] >= t_up and a[2] != "failed"]
    res["traffic_returns_after_s"] = (min(back) - t_up) if back and run.t_up is not None else None
    res["observed_after_recovery_s"] = duration - t_up
    if run.t_closed is not None and run.t_up is not None:
        res["breaker_closed_after_recovery_s"] = run.t_closed - run.t_up
    n_b = int(duration / bucket) + 1
    series: dict[str, list[int]] = {r: [0] * n_b for r in regions}
    dead_failed = [0] * n_b
    for t, r, outcome in run.attempts:
        i = min(max(int(t / bucket), 0), n_b - 1)
        if r in series:
            series[r][i] += 1
        if r == dead and outcome == "failed":
            dead_failed[i] += 1
    res["timeline"] = {
        "bucket_s": bucket,
        "attempts_per_region": series,
        "failed_attempts_dead_region": dead_failed,
    }
    res["transitions"] = [
        {"t_s": t, "endpoint": ep, "old": old, "new": new} for t, ep, old, new in run.transitions[:20]
    ]
    return res


def run(*, quick: bool = False, out_dir: str | Path | None = None, litellm: bool | None = None) -> dict[str, Any]:
    """B5: region outage mid-run — failed requests, detection, traffic to the dead region, recovery."""
    t_start = time.monotonic()
    import openai

    import llm_multicloud as lmc
    from llm_multicloud.fleet import Latency, start_fleet_process

    out = common.out_dir_for(quick, out_dir)
    use_litellm, why_not = common.want_litellm(litellm)
    if quick:
        duration, t_down, t_up, ejection, bucket = 4.0, 1.0, 2.5, 0.5, 0.25
    else:
        duration, t_down, t_up, ejection, bucket = 30.0, 8.0, 20.0, 2.0, 0.5
    fleet = start_fleet_process(common.region_specs(3, Latency(ttft_ms=TTFT_MS, ttft_jitter=0.2)))
    regions = fleet.region_ids
    kw: dict[str, Any] = {"messages": common.MESSAGES, "max_tokens": 8}
    results: dict[str, Any] = {}
    runs: dict[str, _Run] = {}
    try:
        # ---- llm_multicloud
        r1 = _Run()
        runs["llm_multicloud"] = r1

        def on_attempt(a: Any) -> None:
            r1.attempts.append(((a.start_unix_nano - r1.wall0_ns) / 1e9, a.endpoint, a.outcome))

        def on_transition(t: Any) -> None:
            rel = t.at - r1.t0
            r1.transitions.append((rel, t.endpoint, t.old, t.new))
            if t.endpoint == r1.dead and t.new == "open" and r1.t_detect is None and r1.t_down is not None:
                r1.t_detect = rel
            if t.endpoint == r1.dead and t.new == "closed" and r1.t_up is not None and r1.t_closed is None:
                r1.t_closed = rel

        policy = {"breaker": {"base_ejection_s": ejection}}
        mc = lmc.MultiCloud(common.catalog_for(fleet), policy, on_attempt=on_attempt, on_transition=on_transition)

        async def lmc_main() -> None:
            client = mc.wrap(openai.AsyncOpenAI(api_key=common.PLACEHOLDER_KEY))

            async def call() -> None:
                await client.chat.completions.create(model=common.MODEL, **kw)

            for _ in range(20):
                await call()
            r1.attempts.clear()
            r1.t0 = time.monotonic()
            r1.wall0_ns = time.time_ns()
            await _scenario(r1, call, fleet, duration, t_down, t_up)
            await client.close()

        asyncio.run(lmc_main())
        mc.close()
        results["llm_multicloud"] = _analyze(r1, duration, bucket, regions)
        results["llm_multicloud"]["settings"] = f"default policy, breaker.base_ejection_s = {ejection:g} s"

        # ---- LiteLLM
        if use_litellm:
            fleet.reset()
            ll = common.load_litellm()
            from litellm.integrations.custom_logger import CustomLogger

            r2 = _Run()
            runs["litellm"] = r2
            by_base = {fleet.url(r).rstrip("/"): r for r in regions}

            def region_of(kwargs: dict[str, Any]) -> str:
                base = (kwargs.get("litellm_params") or {}).get("api_base") or kwargs.get("api_base") or ""
                return by_base.get(str(base).rstrip("/"), "?")

            class Attempts(CustomLogger):  # type: ignore[misc]
                def log_pre_api_call(self, model: Any, messages: Any, kwargs: Any) -> None:
                    r2.attempts.append((time.monotonic() - r2.t0, region_of(kwargs), "sent"))

            logger = Attempts()
            ll.callbacks = [logger]
            router = ll.Router(
                model_list=common.litellm_deployments(fleet, regions),
                num_retries=2,
                cooldown_time=ejection,
            )

            def in_cooldown() -> bool:
                try:
                    if r2.dead is None:
                        return False
                    return bool(router.health().cooldowns.get_active_cooldowns([r2.dead], None))
                except Exception:
                    return False

            async def ll_main() -> None:
                async def call() -> None:
                    await router.acompletion(model=common.MODEL, **kw)

                for _ in range(20):
                    await call()
                r2.attempts.clear()
                r2.t0 = time.monotonic()
                await _scenario(r2, call, fleet, duration, t_down, t_up, poll=in_cooldown)

            asyncio.run(ll_main())
            ll.callbacks = []
            results["litellm"] = _analyze(r2, duration, bucket, regions)
            results["litellm"]["settings"] = (
                f"Router(num_retries=2, cooldown_time={ejection:g}), other settings default"
            )
    finally:
        fleet.stop()

    m = results["llm_multicloud"]
    share = m["dead_share_after_detection"]
    if share is not None:
        how = (
            f"detection = breaker open, {m['detection_s'] * 1000:.0f} ms after the outage began; "
            f"{m['attempts_to_dead_after_detection']} of {m['attempts_after_detection']} attempts after it"
        )
    else:
        # The breaker never opened (the router had already steered away): judge the whole
        # outage instead, which is stricter than "after detection".
        share = m["dead_share_during_outage"]
        how = (
            "the breaker never opened during the outage, so this is the share over the whole outage "
            f"(stricter): {m['attempts_to_dead_during_outage']} of {m['attempts_during_outage']} attempts"
        )
    bars = [
        common.bar(
            "outage: failed requests (llm_multicloud)",
            "0",
            m["failed"],
            m["failed"] == 0,
            f"{m['requests']} requests, {m['failed_during_outage']} failed during the outage",
        ),
        common.bar(
            "outage: share of attempts to the dead region after detection (llm_multicloud, %)",
            "≤ 1 %",
            None if share is None else share * 100,
            None if share is None else share <= 0.01,
            how,
        ),
    ]
    bars += common.litellm_absent(use_litellm, why_not)
    result: dict[str, Any] = {
        "name": NAME,
        "title": TITLE,
        "quick": quick,
        "params": {
            "fleet": f"3 regions in a separate process, ttft {TTFT_MS:g} ms (jitter 0.2); the region with the most "
            "traffic so far goes down",
            "rate_per_s": RATE,
            "max_in_flight": MAX_IN_FLIGHT,
            "duration_s": duration,
            "outage_s": [t_down, t_up],
            "breaker_base_ejection_s": ejection,
            "litellm": "used" if use_litellm else why_not,
        },
        "results": results,
        "bars": bars,
        "plots": [],
    }

    plt = common.pyplot()
    if plt is not None:
        fig, axes = plt.subplots(len(results), 1, figsize=(10, 3.6 * len(results)), sharex=True, squeeze=False)
        for ax, (lib, r) in zip(axes[:, 0], results.items(), strict=True):
            tl = r["timeline"]
            xs = [i * tl["bucket_s"] for i in range(len(tl["failed_attempts_dead_region"]))]
            for reg, ys in tl["attempts_per_region"].items():
                ax.plot(
                    xs,
                    [y / tl["bucket_s"] for y in ys],
                    drawstyle="steps-post",
                    label=f"{reg}{' (goes down)' if reg == r['dead_region'] else ''}",
                )
            ax.plot(
                xs,
                [y / tl["bucket_s"] for y in tl["failed_attempts_dead_region"]],
                drawstyle="steps-post",
                color="red",
                linestyle=":",
                label=f"failed attempts to {r['dead_region']}",
            )
            if r["t_down_s"] is not None:
                ax.axvspan(r["t_down_s"], r["t_up_s"] or duration, color="grey", alpha=0.15, label="outage")
            if r["detection_s"] is not None and r["t_down_s"] is not None:
                ax.axvline(
                    r["t_down_s"] + r["detection_s"], color="black", linestyle="--", linewidth=1, label="detected"
                )
            ax.set_ylabel("attempts / s")
            ax.set_title(f"{lib}: {r['failed']} failed of {r['requests']}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, loc="upper right")
        axes[-1, 0].set_xlabel("time (s)")
        fig.suptitle(f"B5 region outage: attempts per region over time ({RATE:g} req/s)")
        common.save_plot(fig, out, "b5_outage_timeline.png", result)
    return common.finish(result, t_start)


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 1000:.0f} ms"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.2f} %"


def markdown(res: dict[str, Any]) -> str:
    libs = list(res["results"])
    R = res["results"]

    def row(label: str, f: Callable[[dict[str, Any]], str]) -> list[str]:
        return [label, *(f(R[lib]) for lib in libs)]

    rows = [
        row(
            "requests (failed / during outage)",
            lambda r: f"{r['requests']} ({r['failed']} / {r['failed_during_outage']})",
        ),
        row(
            "region taken down (its share of attempts before)",
            lambda r: f"{r['dead_region']} ({_pct(r['dead_share_before_outage'])})",
        ),
        row(
            "traffic share per region before the outage",
            lambda r: ", ".join(f"{k} {_pct(v)}" for k, v in r["traffic_share_before_outage"].items()),
        ),
        row(
            "detection after the outage began",
            lambda r: _ms(r["detection_s"]) if r["detection_s"] is not None else "never",
        ),
        row(
            "attempts to the dead region during the outage",
            lambda r: (
                f"{r['attempts_to_dead_during_outage']} of {r['attempts_during_outage']} "
                f"({_pct(r['dead_share_during_outage'])})"
            ),
        ),
        row(
            "attempts to the dead region after detection",
            lambda r: (
                "n/a"
                if r["attempts_after_detection"] is None
                else f"{r['attempts_to_dead_after_detection']} of {r['attempts_after_detection']} "
                f"({_pct(r['dead_share_after_detection'])})"
            ),
        ),
        row(
            "latency p50 before / during outage (ms)",
            lambda r: (
                f"{common.fmt(r['latency_before']['p50_ms'])} / {common.fmt(r['latency_during_outage']['p50_ms'])}"
            ),
        ),
        row(
            "latency p99 before / during outage (ms)",
            lambda r: (
                f"{common.fmt(r['latency_before']['p99_ms'])} / {common.fmt(r['latency_during_outage']['p99_ms'])}"
            ),
        ),
        row(
            "added p50 / p99 during outage (ms)",
            lambda r: f"{common.fmt(r['added_p50_ms_during_outage'])} / {common.fmt(r['added_p99_ms_during_outage'])}",
        ),
        row(
            "traffic returns to it after recovery",
            lambda r: (
                _ms(r["traffic_returns_after_s"])
                if r["traffic_returns_after_s"] is not None
                else f"not within the {r['observed_after_recovery_s']:.0f} s observed"
            ),
        ),
        row("settings", lambda r: r["settings"]),
    ]
    lines = [f"### {res['title']}", "", common.md_table(["", *libs], rows)]
    errs = [(lib, R[lib]["first_errors"][0]) for lib in libs if R[lib]["first_errors"]]
    if errs:
        lines += ["", "First failure: " + "; ".join(f"{lib}: `{e}`" for lib, e in errs)]
    lines += ["", common.bars_table(res["bars"])]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(common.main_for(NAME, run, markdown))
