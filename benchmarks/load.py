"""B2 under load: throughput and p99 at several concurrencies, memory per in-flight
request, and latency after a burst has left idle connections behind.

Each figure is measured for sync and async clients and for every variant side by side
in one run (the variants alternate in rounds), so ratios share the machine's state.
Variants are given as *factories*: ``make() -> (call, close)``, where ``call`` sends
one non-streamed chat completion (``await``-able for async factories). Everything
talks to the fleet on 127.0.0.1, and every loop is bounded by a request count.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from . import common

SyncFactory = Callable[[], tuple[Callable[[], Any], Callable[[], None]]]
AsyncFactory = Callable[[], Awaitable[tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[None]]]]]


def chat_factories(
    url: str, key: str, mc: Any, router: Any, kw: dict[str, Any]
) -> tuple[dict[str, SyncFactory], dict[str, AsyncFactory]]:
    """Factories of one chat completion per call (``kw``: messages, max_tokens, stream)
    for each variant: ``direct`` (the openai client straight to ``url``), ``lmc`` (the
    same client wrapped by ``mc``) and, with a LiteLLM ``router``, ``litellm``. A
    streamed call reads the whole stream and returns its number of chunks."""
    import openai

    stream = bool(kw.get("stream"))

    def read_sync(resp: Any) -> Any:
        return sum(1 for _ in resp) if stream else resp

    async def read_async(resp: Any) -> Any:
        if not stream:
            return resp
        n = 0
        async for _ in resp:
            n += 1
        return n

    def sync_openai(direct: bool) -> SyncFactory:
        def make() -> tuple[Callable[[], Any], Callable[[], None]]:
            if direct:
                c, model = openai.OpenAI(base_url=url, api_key=key, max_retries=0), common.SERVED
            else:
                c, model = mc.wrap(openai.OpenAI(api_key=common.PLACEHOLDER_KEY, max_retries=0)), common.MODEL
            return (lambda: read_sync(c.chat.completions.create(model=model, **kw))), c.close

        return make

    def async_openai(direct: bool) -> AsyncFactory:
        async def make() -> tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[None]]]:
            if direct:
                c, model = openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0), common.SERVED
            else:
                c, model = mc.wrap(openai.AsyncOpenAI(api_key=common.PLACEHOLDER_KEY, max_retries=0)), common.MODEL

            async def call() -> Any:
                return await read_async(await c.chat.completions.create(model=model, **kw))

            return call, c.close

        return make

    sync_f: dict[str, SyncFactory] = {"direct": sync_openai(True), "lmc": sync_openai(False)}
    async_f: dict[str, AsyncFactory] = {"direct": async_openai(True), "lmc": async_openai(False)}
    if router is not None:
        sync_f["litellm"] = lambda: ((lambda: read_sync(router.completion(model=common.MODEL, **kw))), lambda: None)

        async def make_ll() -> tuple[Callable[[], Awaitable[Any]], Callable[[], Awaitable[None]]]:
            async def call() -> Any:
                return await read_async(await router.acompletion(model=common.MODEL, **kw))

            async def noop() -> None:
                return None

            return call, noop

        async_f["litellm"] = make_ll
    return sync_f, async_f


#: per call: latencies (ns), wall seconds, errors, the first error (a benchmark that
#: hides its failures measures the wrong thing)
Drive = tuple[list[int], float, int, str | None]


def _first(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


def _figures(lat_ns: list[int], wall_s: float, errors: int, first_error: str | None) -> dict[str, Any]:
    """Throughput counts answered requests only (a fast failure is not throughput)."""
    return {
        "requests": len(lat_ns),
        "errors": errors,
        "first_error": first_error,
        "throughput_rps": (len(lat_ns) - errors) / wall_s if wall_s > 0 else None,
        "latency_ms": common.summarize(lat_ns, scale=1e-6),
    }


def drive_sync(call: Callable[[], Any], total: int, concurrency: int) -> Drive:
    """``total`` calls from ``concurrency`` threads (see :data:`Drive`)."""
    lat: list[int] = []
    errors = [0]
    first: list[str] = []
    counter = itertools.count()
    lock = threading.Lock()
    pc = time.perf_counter_ns

    def worker() -> None:
        mine: list[int] = []
        bad = 0
        while next(counter) < total:
            t0 = pc()
            try:
                call()
            except Exception as exc:
                bad += 1
                if not first:
                    first.append(_first(exc))
            mine.append(pc() - t0)
        with lock:
            lat.extend(mine)
            errors[0] += bad

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(worker) for _ in range(concurrency)]:
            f.result()
    return lat, time.perf_counter() - t0, errors[0], first[0] if first else None


async def drive_async(call: Callable[[], Awaitable[Any]], total: int, concurrency: int) -> Drive:
    """``total`` calls from ``concurrency`` tasks (see :data:`Drive`)."""
    lat: list[int] = []
    errors = 0
    first: str | None = None
    counter = itertools.count()
    pc = time.perf_counter_ns

    async def worker() -> None:
        nonlocal errors, first
        while next(counter) < total:
            t0 = pc()
            try:
                await call()
            except Exception as exc:
                errors += 1
                first = first or _first(exc)
            lat.append(pc() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat, time.perf_counter() - t0, errors, first


def concurrency(
    sync_f: dict[str, SyncFactory],
    async_f: dict[str, AsyncFactory],
    runner: asyncio.Runner,
    levels: tuple[int, ...],
    per_level: dict[int, int],
    rounds: int,
) -> dict[str, Any]:
    """Throughput and latency percentiles per (sync|async, concurrency, variant)."""
    out: dict[str, Any] = {"sync": {}, "async": {}}
    scalls = {v: f() for v, f in sync_f.items()}

    async def make_all() -> dict[str, Any]:
        return {v: await f() for v, f in async_f.items()}

    acalls = runner.run(make_all())

    async def warm_all() -> None:
        for call, _ in acalls.values():
            with contextlib.suppress(Exception):
                await call()

    try:
        # One untimed call per variant first, every variant alike: the first connection
        # and whatever a client builds on first use are not throughput (a fresh client
        # at concurrency 1 and 20 requests paid it in the timed run, on either side).
        for call, _ in scalls.values():
            with contextlib.suppress(Exception):
                call()
        runner.run(warm_all())
        for c in levels:
            for kind in ("sync", "async"):
                acc: dict[str, Drive] = {v: ([], 0.0, 0, None) for v in sync_f}
                n = max(c, per_level[c] // rounds)
                for _, order in common.rotations(list(sync_f), rounds):
                    for v in order:
                        if kind == "sync":
                            got = drive_sync(scalls[v][0], n, c)
                        else:
                            got = runner.run(drive_async(acalls[v][0], n, c))
                        lat, wall, err, first = acc[v]
                        acc[v] = (lat + got[0], wall + got[1], err + got[2], first or got[3])
                out[kind][str(c)] = {v: _figures(*acc[v]) for v in acc}
    finally:
        for call_close in scalls.values():
            call_close[1]()

        async def close_all() -> None:
            for _, close in acalls.values():
                await close()

        runner.run(close_all())
    for kind in ("sync", "async"):
        for vs in out[kind].values():
            d = vs["direct"]["throughput_rps"] if "direct" in vs else None
            for x in vs.values():
                x["throughput_vs_direct"] = common.ratio(x["throughput_rps"], d)
    return out


def ratio_bars(conc: dict[str, Any], key: str, label: str, target: float, *, above: int = 0) -> list[dict[str, Any]]:
    """One bar per client kind: llm_multicloud's worst ``key`` (a ratio to the direct
    client) over the concurrency levels above ``above``, at least ``target``."""
    bars = []
    for kind in ("sync", "async"):
        vals = {c: vs["lmc"][key] for c, vs in conc[kind].items() if int(c) > above}
        worst = min((v for v in vals.values() if v is not None), default=None)
        bars.append(
            common.bar(
                f"{label}, {kind}, concurrency {'/'.join(vals)}",
                f"≥ {target}×",
                worst,
                None if worst is None else worst >= target,
                ", ".join(f"{c}: {common.fmt(v)}×" for c, v in vals.items()),
            )
        )
    return bars


def memory(
    sync_f: dict[str, SyncFactory],
    async_f: dict[str, AsyncFactory],
    runner: asyncio.Runner,
    in_flight: Callable[[], int],
    n_async: int,
    n_sync: int,
    timeout_s: float = 30.0,
) -> dict[str, Any]:
    """Python heap (tracemalloc) per request while ``n`` requests are in flight to a slow
    endpoint: traced memory at the moment the server holds them all, minus before
    (clients built and warmed). ``in_flight()`` says how many the server holds."""
    out: dict[str, Any] = {"sync": {}, "async": {}}

    def wait_for(n: int, base: int) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if in_flight() - base >= n:
                return True
            time.sleep(0.01)
        return False

    for v, f in sync_f.items():
        call, close = f()
        try:
            call()  # warm: imports, pools, background loop
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            base = in_flight()
            with ThreadPoolExecutor(n_sync) as pool:
                futs = [pool.submit(call) for _ in range(n_sync)]
                held = wait_for(n_sync, base)
                during = tracemalloc.get_traced_memory()[0]
                errors = sum(1 for fut in futs if fut.exception() is not None)
            tracemalloc.stop()
        finally:
            close()
        out["sync"][v] = {
            "in_flight": n_sync,
            "all_held": held,
            "errors": errors,
            "bytes_per_request": (during - before) / n_sync,
        }

    async def one_async(f: AsyncFactory) -> dict[str, Any]:
        call, close = await f()
        try:
            await call()
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            base = in_flight()
            tasks = [asyncio.ensure_future(call()) for _ in range(n_async)]
            held = await asyncio.to_thread(wait_for, n_async, base)
            during = tracemalloc.get_traced_memory()[0]
            done = await asyncio.gather(*tasks, return_exceptions=True)
            tracemalloc.stop()
        finally:
            await close()
        errors = sum(1 for d in done if isinstance(d, BaseException))
        return {
            "in_flight": n_async,
            "all_held": held,
            "errors": errors,
            "bytes_per_request": (during - before) / n_async,
        }

    for v, af in async_f.items():
        out["async"][v] = runner.run(one_async(af))
    for kind in ("sync", "async"):
        d = out[kind].get("direct", {}).get("bytes_per_request")
        for x in out[kind].values():
            x["vs_direct"] = common.ratio(x["bytes_per_request"], d)
    return out


def post_burst(
    sync_f: dict[str, SyncFactory],
    async_f: dict[str, AsyncFactory],
    runner: asyncio.Runner,
    burst: int,
    sequential: int,
) -> dict[str, Any]:
    """Sequential latency before and right after a burst of ``burst`` concurrent
    requests (which leaves up to that many idle keep-alive connections), per variant,
    each on fresh clients."""
    out: dict[str, Any] = {"sync": {}, "async": {}}
    pc = time.perf_counter_ns

    def seq_sync(call: Callable[[], Any]) -> list[int]:
        ts = []
        for _ in range(sequential):
            t0 = pc()
            call()
            ts.append(pc() - t0)
        return ts

    async def seq_async(call: Callable[[], Awaitable[Any]]) -> list[int]:
        ts = []
        for _ in range(sequential):
            t0 = pc()
            await call()
            ts.append(pc() - t0)
        return ts

    def summary(before: list[int], after: list[int]) -> dict[str, Any]:
        b, a = common.summarize(before, scale=1e-6), common.summarize(after, scale=1e-6)
        return {"before_ms": b, "after_ms": a, "added_median_ms": a["p50"] - b["p50"]}

    for v, f in sync_f.items():
        call, close = f()
        try:
            before = seq_sync(call)
            drive_sync(call, burst, burst)
            out["sync"][v] = summary(before, seq_sync(call))
        finally:
            close()

    async def one(af: AsyncFactory) -> dict[str, Any]:
        call, close = await af()
        try:
            before = await seq_async(call)
            await drive_async(call, burst, burst)
            return summary(before, await seq_async(call))
        finally:
            await close()

    for v, af in async_f.items():
        out["async"][v] = runner.run(one(af))
    return out
