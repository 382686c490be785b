"""B2 — latency added per request, against the plain openai client sent straight to
the same local server, and against LiteLLM's Router.

One fleet of 6 OpenAI-compatible servers runs in a separate process (no GIL sharing)
with a zero latency profile (ttft 0, jitter 0, itl 0), so the server's time is as
small as it gets and the differences are the client libraries' own cost. Variants:

* ``direct``   — ``openai.OpenAI`` / ``AsyncOpenAI`` with ``base_url`` = region r0;
* ``lmc_1ep``  — the same call through ``llm_multicloud`` (catalog: r0 only);
* ``lmc_6ep``  — through ``llm_multicloud`` with all 6 regions in the catalog;
* ``litellm``  — ``litellm.Router`` with one deployment (r0): ``router.completion`` /
  ``await router.acompletion``.

Modes: non-stream and stream (time to the last chunk), sync and async. Every round
runs each variant once, in a fresh random order, with a 1 ms pause after every call
(so that work a library leaves behind — LiteLLM's logging tasks and thread — is not
billed to whichever variant runs next), and the added latency of a variant is its
time minus the direct call's time *in the same round*; we report the median and p99
of those paired differences. The modes are interleaved in blocks. Client CPU per
request (process time, all threads, pause included but idle) is reported too.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from . import common, load

NAME = "b2_overhead"
TITLE = "B2 — added latency per request (vs. direct openai, vs. LiteLLM Router)"
#: issue 14: added latency per request, median, streamed and not
BAR_ADDED_MS = {"sync": 0.5, "async": 0.3}
BAR_RATIO = 10.0
MODES = (("sync", False), ("sync", True), ("async", False), ("async", True))
MAX_TOKENS = 8


def _mode_name(kind: str, stream: bool) -> str:
    return f"{kind} {'stream' if stream else 'non-stream'}"


def _sync_callers(clients: dict[str, Any], router: Any) -> dict[str, dict[bool, Callable[[], Any]]]:
    kw: dict[str, Any] = {"messages": common.MESSAGES, "max_tokens": MAX_TOKENS}

    def openai_call(client: Any, model: str) -> dict[bool, Callable[[], Any]]:
        def plain() -> Any:
            return client.chat.completions.create(model=model, **kw)

        def stream() -> Any:
            n = 0
            for _ in client.chat.completions.create(model=model, stream=True, **kw):
                n += 1
            return n

        return {False: plain, True: stream}

    out = {
        "direct": openai_call(clients["direct"], common.SERVED),
        "lmc_1ep": openai_call(clients["lmc_1ep"], common.MODEL),
        "lmc_6ep": openai_call(clients["lmc_6ep"], common.MODEL),
    }
    if router is not None:

        def lplain() -> Any:
            return router.completion(model=common.MODEL, **kw)

        def lstream() -> Any:
            n = 0
            for _ in router.completion(model=common.MODEL, stream=True, **kw):
                n += 1
            return n

        out["litellm"] = {False: lplain, True: lstream}
    return out


def _async_callers(clients: dict[str, Any], router: Any) -> dict[str, dict[bool, Callable[[], Awaitable[Any]]]]:
    kw: dict[str, Any] = {"messages": common.MESSAGES, "max_tokens": MAX_TOKENS}

    def openai_call(client: Any, model: str) -> dict[bool, Callable[[], Awaitable[Any]]]:
        async def plain() -> Any:
            return await client.chat.completions.create(model=model, **kw)

        async def stream() -> Any:
            n = 0
            async for _ in await client.chat.completions.create(model=model, stream=True, **kw):
                n += 1
            return n

        return {False: plain, True: stream}

    out = {
        "direct": openai_call(clients["direct"], common.SERVED),
        "lmc_1ep": openai_call(clients["lmc_1ep"], common.MODEL),
        "lmc_6ep": openai_call(clients["lmc_6ep"], common.MODEL),
    }
    if router is not None:

        async def lplain() -> Any:
            return await router.acompletion(model=common.MODEL, **kw)

        async def lstream() -> Any:
            n = 0
            async for _ in await router.acompletion(model=common.MODEL, stream=True, **kw):
                n += 1
            return n

        out["litellm"] = {False: lplain, True: lstream}
    return out


class _Samples:
    def __init__(self, variants: list[str]) -> None:
        self.lat: dict[str, list[int]] = {v: [] for v in variants}
        self.cpu: dict[str, float] = dict.fromkeys(variants, 0.0)


#: Pause after every call (all variants alike), so that work a library leaves behind
#: (LiteLLM's logging tasks and thread) does not run inside the next variant's timing.
SETTLE_S = 0.001


def _sync_rounds(
    callers: dict[str, dict[bool, Callable[[], Any]]], stream: bool, rounds: int, s: _Samples, seed: int
) -> None:
    pc = time.perf_counter_ns
    cpu = time.process_time
    for _, order in common.shuffled_rounds(list(callers), rounds, seed):
        for v in order:
            fn = callers[v][stream]
            c0 = cpu()
            t0 = pc()
            fn()
            dt = pc() - t0
            time.sleep(SETTLE_S)
            s.cpu[v] += cpu() - c0
            s.lat[v].append(dt)


async def _async_rounds(
    callers: dict[str, dict[bool, Callable[[], Awaitable[Any]]]], stream: bool, rounds: int, s: _Samples, seed: int
) -> None:
    pc = time.perf_counter_ns
    cpu = time.process_time
    for _, order in common.shuffled_rounds(list(callers), rounds, seed):
        for v in order:
            fn = callers[v][stream]
            c0 = cpu()
            t0 = pc()
            await fn()
            dt = pc() - t0
            await asyncio.sleep(SETTLE_S)
            s.cpu[v] += cpu() - c0
            s.lat[v].append(dt)


def _mode_result(s: _Samples) -> dict[str, Any]:
    direct = s.lat["direct"]
    out: dict[str, Any] = {}
    for v, lat in s.lat.items():
        entry: dict[str, Any] = {
            "latency_us": common.summarize(lat, scale=1e-3),
            "cpu_us_per_request": s.cpu[v] / len(lat) * 1e6 if lat else None,
        }
        if v != "direct":
            diffs = [b - a for a, b in zip(direct, lat, strict=True)]
            d = common.summarize(diffs, scale=1e-3)
            entry["added_us"] = {k: d[k] for k in ("n", "mean", "p50", "p90", "p99")}
            entry["added_cpu_us_per_request"] = entry["cpu_us_per_request"] - s.cpu["direct"] / len(direct) * 1e6
        out[v] = entry
    return out


# ----------------------------------------------------------------------------- profiling


_GROUPS = (
    ("/llm_multicloud/", "llm_multicloud"),
    ("/httpx2/", "httpx2/httpcore2"),
    ("/httpcore2/", "httpx2/httpcore2"),
    ("/httpx/", "httpx/httpcore"),
    ("/httpcore/", "httpx/httpcore"),
    ("/h11/", "h11"),
    ("/anyio/", "anyio"),
    ("/sniffio/", "anyio"),
    ("/asyncio/", "asyncio"),
    ("/openai/", "openai"),
    ("/json/", "json"),
)


def _group(file: str) -> str:
    for needle, name in _GROUPS:
        if needle in file:
            return name
    return "builtins/other" if file.startswith("~") else Path(file).name


def _short(file: str, line: int, func: str) -> str:
    for marker in ("/site-packages/", "/work/main/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    if "/llm_multicloud/" in f"/{file}":
        file = "llm_multicloud/" + file.split("llm_multicloud/", 1)[1]
    return f"{file}:{line}({func})"


async def _profile_async(call: Callable[[], Awaitable[Any]], n: int) -> dict[Any, Any]:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        await call()
    prof.disable()
    return pstats.Stats(prof).stats  # type: ignore[attr-defined,no-any-return]


_OWN_GROUPS_MIN = 0.03


def _profile_diff(base: dict[Any, Any], other: dict[Any, Any], n: int) -> dict[str, Any]:
    """Where the extra CPU of ``other`` (through llm_multicloud) over ``base`` (direct) goes,
    by *own* time (cumulative times of coroutines spread over several tasks do not add up)."""
    total_base = sum(v[2] for v in base.values()) / n * 1e6
    total_other = sum(v[2] for v in other.values()) / n * 1e6
    extra = total_other - total_base
    groups: dict[str, float] = {}
    for k in set(base) | set(other):
        d = (other.get(k, (0, 0, 0.0, 0.0))[2] - base.get(k, (0, 0, 0.0, 0.0))[2]) / n * 1e6
        g = _group(k[0])
        groups[g] = groups.get(g, 0.0) + d
    own_lmc = sorted(
        ((v[2] / n * 1e6, v[1] / n, k) for k, v in other.items() if "/llm_multicloud/" in k[0]), key=lambda r: -r[0]
    )
    lmc_total = sum(r[0] for r in own_lmc)
    return {
        "requests": n,
        "note": "CPU under cProfile (inflated several times over; compare shares, not absolute values)",
        "profiled_us_per_request": {"direct": total_base, "lmc_1ep": total_other, "extra": extra},
        "extra_own_time_by_package": {
            g: v / extra
            for g, v in sorted(groups.items(), key=lambda kv: -kv[1])
            if extra > 0 and abs(v / extra) >= _OWN_GROUPS_MIN
        },
        "lmc_own_share_of_extra": lmc_total / extra if extra > 0 else None,
        "top_lmc_own_time": [
            {"function": _short(*k), "calls_per_request": c, "share_of_lmc_own": us / lmc_total if lmc_total else None}
            for us, c, k in own_lmc[:10]
        ],
    }


# ----------------------------------------------------------------------------- decomposition


_CANNED = (
    b'{"id":"chatcmpl-stub","object":"chat.completion","created":1700000000,"model":"served-llama",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"[r0] w0 w1 w2 w3 w4 w5 w6 w7"},'
    b'"logprobs":null,"finish_reason":"length"}],'
    b'"usage":{"prompt_tokens":2,"completion_tokens":8,"total_tokens":10}}'
)
_CANNED_HEADERS = [("content-type", "application/json"), ("content-length", str(len(_CANNED)))]


class _StubResponse:
    """Stands in for llm_multicloud's UpstreamResponse: a canned 200, no I/O."""

    status = 200

    def __init__(self) -> None:
        self.headers = list(_CANNED_HEADERS)

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    async def chunks(self) -> Any:
        yield _CANNED

    async def read(self, limit: int = 1 << 26) -> bytes:
        return _CANNED

    async def aclose(self) -> None:
        return None


class _StubUpstream:
    """Stands in for llm_multicloud's Upstream (its inner HTTP client). ``sync``: the
    sync clients' own-thread pools (``SyncUpstream``: the stub's methods never suspend)."""

    def __init__(self, *, sync: bool = False) -> None:
        from llm_multicloud import upstream

        self.io = getattr(upstream, "SYNC_IO" if sync else "ASYNC_IO", None)

    def close(self) -> None:
        return None

    async def open(self, *args: Any, **kwargs: Any) -> _StubResponse:
        return _StubResponse()

    async def aclose(self) -> None:
        return None


def _decompose(runner: Any, rounds: int) -> dict[str, Any]:
    """llm_multicloud's own cost without any network and without its inner HTTP client:
    the SDK on a mock transport (canned reply) vs. the SDK wrapped by llm_multicloud whose
    upstream client is replaced by a stub giving the same canned reply. Paired, interleaved.
    Uses llm_multicloud internals (``transport._upstream``): reports the error if they moved."""
    import openai

    import llm_multicloud as lmc
    from llm_multicloud.client import _lib

    lib = _lib(None)

    def handler(request: Any) -> Any:
        return lib.Response(200, headers=_CANNED_HEADERS, content=_CANNED)

    cat = {
        "models": {common.MODEL: {}},
        "endpoints": [
            {
                "id": "stub",
                "provider": "aws",
                "region": "us-east-1",
                "base_url": "http://stub.invalid/v1",
                "api_key": "sk-stub",
                "models": {common.MODEL: common.SERVED},
            }
        ],
    }
    kw: dict[str, Any] = {"messages": common.MESSAGES, "max_tokens": MAX_TOKENS}
    out: dict[str, Any] = {}
    mc = lmc.MultiCloud(cat, {"probe": {"enabled": False}})
    try:
        # sync
        sd = openai.OpenAI(
            base_url="http://stub.invalid/v1",
            api_key="sk",
            max_retries=0,
            http_client=lib.Client(transport=lib.MockTransport(handler)),
        )
        sw = mc.wrap(openai.OpenAI(api_key=common.PLACEHOLDER_KEY))
        sw._client._transport._upstream = _StubUpstream()  # requests that need the loop
        sw._client._transport._direct = _StubUpstream(sync=True)  # the others, on this thread

        # async
        async def make() -> tuple[Any, Any]:
            ad = openai.AsyncOpenAI(
                base_url="http://stub.invalid/v1",
                api_key="sk",
                max_retries=0,
                http_client=lib.AsyncClient(transport=lib.MockTransport(handler)),
            )
            aw = mc.wrap(openai.AsyncOpenAI(api_key=common.PLACEHOLDER_KEY))
            aw._client._transport._upstream = _StubUpstream()
            return ad, aw

        ad, aw = runner.run(make())
        pc = time.perf_counter_ns
        for kind in ("sync", "async"):
            lat: dict[str, list[int]] = {"sdk_on_mock_transport": [], "sdk_via_lmc_stub_upstream": []}
            if kind == "sync":
                calls = {
                    "sdk_on_mock_transport": lambda: sd.chat.completions.create(model=common.SERVED, **kw),
                    "sdk_via_lmc_stub_upstream": lambda: sw.chat.completions.create(model=common.MODEL, **kw),
                }
                for fn in calls.values():
                    for _ in range(20):
                        fn()
                for _, order in common.rotations(list(calls), rounds):
                    for v in order:
                        t0 = pc()
                        calls[v]()
                        lat[v].append(pc() - t0)
            else:
                acalls = {
                    "sdk_on_mock_transport": lambda: ad.chat.completions.create(model=common.SERVED, **kw),
                    "sdk_via_lmc_stub_upstream": lambda: aw.chat.completions.create(model=common.MODEL, **kw),
                }

                async def go(acalls: dict[str, Any], lat: dict[str, list[int]]) -> None:
                    for fn in acalls.values():
                        for _ in range(20):
                            await fn()
                    for _, order in common.rotations(list(acalls), rounds):
                        for v in order:
                            t0 = pc()
                            await acalls[v]()
                            lat[v].append(pc() - t0)

                runner.run(go(acalls, lat))
            diffs = [b - a for a, b in zip(lat["sdk_on_mock_transport"], lat["sdk_via_lmc_stub_upstream"], strict=True)]
            out[kind] = {
                "sdk_on_mock_transport_us": common.summarize(lat["sdk_on_mock_transport"], scale=1e-3)["p50"],
                "sdk_via_lmc_stub_upstream_us": common.summarize(lat["sdk_via_lmc_stub_upstream"], scale=1e-3)["p50"],
                "lmc_own_us": {
                    k: v for k, v in common.summarize(diffs, scale=1e-3).items() if k in ("n", "p50", "p90", "p99")
                },
            }

        async def close() -> None:
            await ad.close()
            await aw.close()

        runner.run(close())
        sd.close()
        sw.close()
    except Exception as exc:  # internals moved: say so rather than fail the whole benchmark
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        mc.close()
    return out


def _sync_hop(mc: Any, n: int) -> tuple[float, str]:
    """One round trip caller thread -> MultiCloud's background loop -> caller (a no-op),
    through the mechanism the sync transport uses: ``MultiCloud.run_sync`` where it
    exists, else the anyio blocking portal. Returns (median µs, mechanism)."""

    async def noop() -> None:
        return None

    run = getattr(mc, "run_sync", None)
    how = "MultiCloud.run_sync"
    if run is None:
        run = mc._portal().call
        how = "BlockingPortal.call"
    for _ in range(20):
        run(noop)
    ts = []
    pc = time.perf_counter_ns
    for _ in range(n):
        t0 = pc()
        run(noop)
        ts.append(pc() - t0)
    return common.percentile(ts, 0.5) / 1e3, how


# ----------------------------------------------------------------------------- run


LEVELS = (1, 64, 512)
QUICK_LEVELS = (1, 8)
BAR_THROUGHPUT = 0.9
BAR_MEMORY = 1.5
SLOW_REGION = "r5"  # the memory run holds requests in flight on it (ttft raised, then restored)


def _factories(
    fleet: Any, region: str, mc: Any, router: Any
) -> tuple[dict[str, load.SyncFactory], dict[str, load.AsyncFactory]]:
    """``make() -> (call, close)`` per variant, non-streamed, for :mod:`benchmarks.load`."""
    kw: dict[str, Any] = {"messages": common.MESSAGES, "max_tokens": MAX_TOKENS}
    return load.chat_factories(fleet.url(region), fleet.api_key(region), mc, router, kw)


def _load_section(fleet: Any, mc1: Any, router: Any, runner: asyncio.Runner, quick: bool) -> dict[str, Any]:
    """Throughput/p99 at concurrency 1/64/512, memory per in-flight request, post-burst."""
    import llm_multicloud as lmc
    from llm_multicloud.fleet import Latency

    levels = QUICK_LEVELS if quick else LEVELS
    per_level = {1: 20, 8: 40} if quick else {1: 400, 64: 3000, 512: 4000}
    sync_f, async_f = _factories(fleet, "r0", mc1, router)
    out: dict[str, Any] = {
        "loadavg_start": common.loadavg(),
        "concurrency": load.concurrency(sync_f, async_f, runner, levels, per_level, 1 if quick else 2),
    }
    out["post_burst"] = load.post_burst(sync_f, async_f, runner, 16 if quick else 512, 10 if quick else 300)
    fleet.set_latency(SLOW_REGION, Latency(ttft_ms=400 if quick else 1500, ttft_jitter=0, itl_ms=0))
    # Hedging off (one endpoint): the requests only wait for the slow region.
    mc_slow = lmc.MultiCloud(common.catalog_for(fleet, [SLOW_REGION]), {"hedge": {"enabled": False}})
    router_slow = None
    if router is not None:  # LiteLLM's Router over the same slow region, beside direct and ours
        router_slow = common.load_litellm().Router(
            model_list=common.litellm_deployments(fleet, [SLOW_REGION]), num_retries=0
        )
    try:
        ms, ma = _factories(fleet, SLOW_REGION, mc_slow, router_slow)

        def held() -> int:
            st = fleet.state(SLOW_REGION)
            return int(st.get("in_flight", 0))

        out["memory"] = load.memory(ms, ma, runner, held, 8 if quick else 256, 4 if quick else 64)
    finally:
        mc_slow.close()
        fleet.set_latency(SLOW_REGION, Latency(ttft_ms=0, ttft_jitter=0, itl_ms=0))
    out["loadavg_end"] = common.loadavg()
    return out


def run(*, quick: bool = False, out_dir: str | Path | None = None, litellm: bool | None = None) -> dict[str, Any]:
    """B2: added latency per request, direct vs llm_multicloud (1 and 6 endpoints) vs LiteLLM Router."""
    t_start = time.monotonic()
    import openai

    import llm_multicloud as lmc
    from llm_multicloud.fleet import Latency, start_fleet_process

    out = common.out_dir_for(quick, out_dir)
    use_litellm, why_not = common.want_litellm(litellm)
    rounds = 20 if quick else 800
    blocks = 1 if quick else 5
    warmup = 3 if quick else 40
    profile_n = 10 if quick else 400

    fleet = start_fleet_process(common.region_specs(6, Latency(ttft_ms=0, ttft_jitter=0, itl_ms=0)))
    results: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    try:
        url, key = fleet.url("r0"), fleet.api_key("r0")
        mc1 = lmc.MultiCloud(common.catalog_for(fleet, ["r0"]))
        mc6 = lmc.MultiCloud(common.catalog_for(fleet))
        router = None
        if use_litellm:
            ll = common.load_litellm()
            router = ll.Router(model_list=common.litellm_deployments(fleet, ["r0"]), num_retries=0)
        sync_clients = {
            "direct": openai.OpenAI(base_url=url, api_key=key, max_retries=0),
            "lmc_1ep": mc1.wrap(openai.OpenAI(api_key=common.PLACEHOLDER_KEY)),
            "lmc_6ep": mc6.wrap(openai.OpenAI(api_key=common.PLACEHOLDER_KEY)),
        }
        scallers = _sync_callers(sync_clients, router)
        variants = list(scallers)
        samples = {_mode_name(k, s): _Samples(variants) for k, s in MODES}

        with asyncio.Runner() as runner:

            async def make_async() -> dict[str, Any]:
                return {
                    "direct": openai.AsyncOpenAI(base_url=url, api_key=key, max_retries=0),
                    "lmc_1ep": mc1.wrap(openai.AsyncOpenAI(api_key=common.PLACEHOLDER_KEY)),
                    "lmc_6ep": mc6.wrap(openai.AsyncOpenAI(api_key=common.PLACEHOLDER_KEY)),
                }

            async_clients = runner.run(make_async())
            acallers = _async_callers(async_clients, router)
            try:
                # warm-up: connections, pools, the MultiCloud's background loop, LiteLLM's caches
                for kind, stream in MODES:
                    for v in variants:
                        for _ in range(warmup):
                            if kind == "sync":
                                scallers[v][stream]()
                            else:
                                runner.run(acallers[v][stream]())
                per_block = max(1, rounds // blocks)
                for b in range(blocks):
                    for m, (kind, stream) in enumerate(MODES):
                        s = samples[_mode_name(kind, stream)]
                        seed = 1000 * b + m
                        if kind == "sync":
                            _sync_rounds(scallers, stream, per_block, s, seed)
                        else:
                            runner.run(_async_rounds(acallers, stream, per_block, s, seed))
                # where the extra time goes: async non-stream under cProfile (same core as sync),
                # and the sync transport's thread hop
                base = runner.run(_profile_async(acallers["direct"][False], profile_n))
                other = runner.run(_profile_async(acallers["lmc_1ep"][False], profile_n))
                extra["profile_async_non_stream"] = _profile_diff(base, other, profile_n)
                extra["decomposition"] = _decompose(runner, 30 if quick else 1000)
                hop, how = _sync_hop(mc1, 100 if quick else 2000)
                extra["sync_hop_us"] = hop
                extra["sync_hop_mechanism"] = how
                extra["load"] = _load_section(fleet, mc1, router, runner, quick)
            finally:

                async def close_async() -> None:
                    for c in async_clients.values():
                        await c.close()

                runner.run(close_async())
        for c in sync_clients.values():
            c.close()
        mc1.close()
        mc6.close()
        upstream = fleet.counts()
    finally:
        fleet.stop()

    for name, s in samples.items():
        results[name] = _mode_result(s)

    def added(mode: str, v: str, q: str = "p50") -> float | None:
        e = results[mode].get(v)
        return None if e is None else e["added_us"][q] / 1000.0

    bars = []
    for kind in ("sync", "async"):
        modes = [_mode_name(kind, s) for s in (False, True)]
        vals = [added(m, "lmc_1ep") for m in modes]
        worst = max(v for v in vals if v is not None)
        bars.append(
            common.bar(
                f"added latency, {kind} (median, ms)",
                f"≤ {BAR_ADDED_MS[kind]} ms",
                worst,
                worst <= BAR_ADDED_MS[kind],
                "1 endpoint; worst of non-stream / stream: "
                + ", ".join(f"{m}: {v:.3f} ms" for m, v in zip(modes, vals, strict=True)),
            )
        )
    ratios: dict[str, float | None] = {}
    for kind in ("sync", "async"):
        modes = [_mode_name(kind, s) for s in (False, True)]
        if router is None:
            bars.append(
                common.bar(
                    f"LiteLLM added / llm_multicloud added, {kind}", f"≥ {BAR_RATIO:g}×", None, None, why_not or ""
                )
            )
            continue
        rs = []
        for m in modes:
            r = common.ratio(added(m, "litellm"), added(m, "lmc_1ep"))
            ratios[m] = r
            rs.append(r)
        worst_r = min((r for r in rs if r is not None), default=None)
        bars.append(
            common.bar(
                f"LiteLLM added / llm_multicloud added, {kind}",
                f"≥ {BAR_RATIO:g}×",
                worst_r,
                None if worst_r is None else worst_r >= BAR_RATIO,
                "median added latency ratio, worst of non-stream / stream: "
                + ", ".join(f"{m}: {'n/a' if r is None else f'{r:.1f}×'}" for m, r in zip(modes, rs, strict=True)),
            )
        )

    bars += _load_bars(extra.get("load"))
    result: dict[str, Any] = {
        "name": NAME,
        "title": TITLE,
        "quick": quick,
        "params": {
            "fleet": "6 regions in a separate process, latency ttft 0 / jitter 0 / itl 0",
            "max_tokens": MAX_TOKENS,
            "rounds_per_mode": per_block * blocks,
            "blocks": blocks,
            "warmup_per_variant_and_mode": warmup,
            "variants": variants,
            "litellm": "used" if router is not None else why_not,
            "policy": "llm_multicloud defaults (hedging and probes on)",
            "upstream_requests": upstream,
        },
        "results": {"modes": results, "litellm_ratio": ratios, **extra},
        "bars": bars,
        "plots": [],
    }

    plt = common.pyplot()
    if plt is not None:
        import numpy as np

        mode_names = [_mode_name(k, s) for k, s in MODES]
        shown = [v for v in variants if v != "direct"]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        width = 0.8 / len(shown)
        x = np.arange(len(mode_names))
        for i, v in enumerate(shown):
            med = [max(results[m][v]["added_us"]["p50"] / 1000.0, 1e-3) for m in mode_names]
            p99 = [max(results[m][v]["added_us"]["p99"] / 1000.0, 1e-3) for m in mode_names]
            ax.bar(x + i * width, med, width, label=f"{v} (median)")
            ax.scatter(x + i * width, p99, marker="_", s=200, color="black", zorder=3, label="p99" if i == 0 else None)
        for kind, style in (("sync", "--"), ("async", ":")):
            ms = BAR_ADDED_MS[kind]
            ax.axhline(ms, color="red", linestyle=style, linewidth=1, label=f"bar {kind} {ms} ms")
        ax.set_xticks(x + width * (len(shown) - 1) / 2, mode_names)
        ax.set_yscale("log")
        ax.set_ylabel("added latency vs. direct openai (ms)")
        ax.set_title("B2 added latency per request (paired with the direct call)")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", which="both", alpha=0.3)
        common.save_plot(fig, out, "b2_overhead.png", result)
    return common.finish(result, t_start)


def markdown(res: dict[str, Any]) -> str:
    r = res["results"]
    lines = [f"### {res['title']}", ""]
    rows = []
    for mode, vs in r["modes"].items():
        d = vs["direct"]
        rows.append(
            (
                mode,
                "direct",
                d["latency_us"]["p50"] / 1e3,
                d["latency_us"]["p99"] / 1e3,
                "—",
                "—",
                d["cpu_us_per_request"] / 1e3,
                "—",
            )
        )
        for v, e in vs.items():
            if v == "direct":
                continue
            rows.append(
                (
                    mode,
                    v,
                    e["latency_us"]["p50"] / 1e3,
                    e["latency_us"]["p99"] / 1e3,
                    f"{e['added_us']['p50'] / 1e3:.3f}",
                    f"{e['added_us']['p99'] / 1e3:.3f}",
                    e["cpu_us_per_request"] / 1e3,
                    f"{e['added_cpu_us_per_request'] / 1e3:.3f}",
                )
            )
    lines.append(
        common.md_table(
            [
                "mode",
                "variant",
                "median ms",
                "p99 ms",
                "added median ms",
                "added p99 ms",
                "CPU ms/req",
                "added CPU ms/req",
            ],
            rows,
        )
    )
    dec = r.get("decomposition")
    if dec and "error" not in dec:
        lines += [
            "",
            "Decomposition (no network at all: the SDK on a mock transport vs. the SDK through llm_multicloud whose "
            "inner HTTP client is replaced by a stub with the same canned reply; paired medians):",
            "",
            common.md_table(
                [
                    "client",
                    "SDK alone µs",
                    "SDK + llm_multicloud (no inner HTTP client) µs",
                    "llm_multicloud own, median µs",
                    "p99 µs",
                ],
                [
                    (
                        k,
                        d["sdk_on_mock_transport_us"],
                        d["sdk_via_lmc_stub_upstream_us"],
                        d["lmc_own_us"]["p50"],
                        d["lmc_own_us"]["p99"],
                    )
                    for k, d in dec.items()
                ],
            ),
            "",
            "The rest of the added latency is the inner HTTP client (a second httpx2/httpx request, response and "
            "connection pool per call) and, for streams, the per-chunk pass-through.",
        ]
    elif dec:
        lines += ["", f"Decomposition not available: {dec['error']}"]
    p = r.get("profile_async_non_stream")
    if p:
        pr = p["profiled_us_per_request"]
        lines += [
            "",
            f"cProfile, async non-stream ({p['requests']} requests each; profiling inflates CPU several times, read "
            f"shares): CPU per request direct {pr['direct'] / 1e3:.2f} ms, through llm_multicloud "
            f"{pr['lmc_1ep'] / 1e3:.2f} ms. Extra own time by package: "
            + ", ".join(f"{g} {v * 100:.0f} %" for g, v in p["extra_own_time_by_package"].items())
            + ". Top llm_multicloud functions by own time:",
            "",
            common.md_table(
                ["function", "calls/request", "share of llm_multicloud's own time"],
                [
                    (
                        t["function"],
                        t["calls_per_request"],
                        "n/a" if t["share_of_lmc_own"] is None else f"{t['share_of_lmc_own'] * 100:.0f} %",
                    )
                    for t in p["top_lmc_own_time"][:8]
                ],
            ),
        ]
    if r.get("sync_hop_us") is not None:
        lines += [
            "",
            f"Sync transport: one round trip to the MultiCloud's background event loop (`{r['sync_hop_mechanism']}` "
            f"of a no-op) costs {r['sync_hop_us']:.0f} µs median here; the sync client pays it once per request "
            "and once per stream read.",
        ]
    if r.get("load"):
        lines += ["", *load_markdown(r["load"])]
    errors = common.load_errors(r["load"]["concurrency"]) if r.get("load") else {}
    return "\n".join(lines + common.markdown_tail(res, errors))


def _load_bars(ld: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Throughput at 64 and 512 (≥ 0.9× direct) and memory per in-flight request (≤ 1.5×)."""
    if not ld:
        return []
    bars = load.ratio_bars(ld["concurrency"], "throughput_vs_direct", "throughput vs direct", BAR_THROUGHPUT, above=1)
    for kind in ("sync", "async"):
        m = ld["memory"][kind]
        v = m["lmc"]["vs_direct"]
        bars.append(
            common.bar(
                f"memory per in-flight request vs direct, {kind}",
                f"≤ {BAR_MEMORY}×",
                v,
                None if v is None else v <= BAR_MEMORY,
                f"{m['lmc']['bytes_per_request'] / 1024:.1f} KiB vs {m['direct']['bytes_per_request'] / 1024:.1f} KiB "
                f"({m['lmc']['in_flight']} in flight, Python heap by tracemalloc)"
                + (
                    f"; LiteLLM {m['litellm']['bytes_per_request'] / 1024:.1f} KiB "
                    f"({common.fmt(m['litellm']['vs_direct'])}×)"
                    if "litellm" in m
                    else ""
                ),
            )
        )
    return bars


def load_markdown(ld: dict[str, Any]) -> list[str]:
    conc, mem, pb = ld["concurrency"], ld["memory"], ld["post_burst"]
    rows = []
    for kind in ("sync", "async"):
        for c, vs in conc[kind].items():
            for v, x in vs.items():
                rows.append(
                    (
                        kind,
                        c,
                        v,
                        x["requests"],
                        x["errors"],
                        x["throughput_rps"],
                        x["throughput_vs_direct"],
                        x["latency_ms"]["p50"],
                        x["latency_ms"]["p99"],
                    )
                )
    lines = [
        f"**Under load** (non-stream, 1 endpoint; load average {ld['loadavg_start']} before, {ld['loadavg_end']} "
        "after; the fleet runs in one separate process on the same 2 cores, so at high concurrency the server "
        "is part of what is measured):",
        "",
        common.md_table(
            ["client", "concurrency", "variant", "requests", "errors", "req/s", "vs direct", "p50 ms", "p99 ms"],
            rows,
        ),
        "",
        "**Memory per in-flight request** (Python heap, tracemalloc, while the server holds them all):",
        "",
        common.md_table(
            ["client", "variant", "in flight", "errors", "KiB per request", "vs direct"],
            [
                (kind, v, x["in_flight"], x["errors"], x["bytes_per_request"] / 1024, x["vs_direct"])
                for kind in ("sync", "async")
                for v, x in mem[kind].items()
            ],
        ),
        "",
        "**After a burst** (sequential latency before and right after a burst of concurrent requests that "
        "leaves idle keep-alive connections; fresh clients per variant):",
        "",
        common.md_table(
            ["client", "variant", "median before ms", "median after ms", "added ms", "p99 after ms"],
            [
                (
                    kind,
                    v,
                    x["before_ms"]["p50"],
                    x["after_ms"]["p50"],
                    x["added_median_ms"],
                    x["after_ms"]["p99"],
                )
                for kind in ("sync", "async")
                for v, x in pb[kind].items()
            ],
        ),
    ]
    return lines


if __name__ == "__main__":
    raise SystemExit(common.main_for(NAME, run, markdown))
