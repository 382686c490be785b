"""B9 — on real engines (llama-cpp-python servers with SmolLM2-135M on 127.0.0.1):

* **added latency**: the wrapped openai client against the plain one sent straight
  to the *same* engine (catalog: that engine only), sync, non-streamed (one token)
  and streamed (four tokens, time to the last chunk). Rounds run both variants in
  a fresh random order; a variant's added latency is its time minus the direct
  call's time in the same round (median and p90 of those paired differences).
  The prompt repeats, so llama.cpp reuses its KV cache and the engine's own time
  is as small and steady as it gets.
* **TTFT when one engine is loaded**: two engines, the primary kept busy by another
  client (a loop of direct 64-token generations: llama.cpp answers one request at a
  time, so ours wait in its queue). Streamed requests, ``ordered`` strategy,
  interleaved: no hedging vs hedging (policy defaults: adaptive delay, 10 % budget)
  vs hedging with the whole budget (``budget: 1.0``). Same run, same load.

Needs the engines: ``nox -s engines`` runs it (``--quick`` there; ``nox -s engines
-- bench`` at full size) with the engines it started; by hand, with llama-cpp-python
installed, it starts its own. Not part of ``run_all`` (which needs no engine).
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import common

NAME = "b9_engines"
TITLE = "B9 — real engines: added latency vs the direct call, TTFT with one engine loaded"
BAR_SYNC_MS = 0.5
PROMPT = [{"role": "user", "content": "Say hello."}]


@contextlib.contextmanager
def _engines() -> Iterator[dict[str, Any]]:
    from tests.engines import harness

    described = harness.load_described()
    if described is not None:
        yield {e.spec.id: e for e in described}
        return
    gguf = harness.cached_gguf()
    if gguf is None:
        raise SystemExit("no SmolLM2 GGUF in the cache: run `nox -s engines` once")
    with harness.engines(harness.SUITE, gguf) as started:
        yield {e.spec.id: e for e in started}


def _catalog(*entries: dict[str, Any]) -> dict[str, Any]:
    from tests.engines.harness import MODEL

    return {"models": {MODEL: {}}, "endpoints": list(entries)}


def _overhead(engine: Any, rounds: int) -> dict[str, Any]:
    import openai

    import llm_multicloud as lmc
    from tests.engines.harness import MODEL

    served = engine.spec.alias
    policy = {"probe": {"enabled": False}, "hedge": {"enabled": False}, "explore": 0.0}
    direct = openai.OpenAI(base_url=engine.base_url, api_key=engine.spec.api_key, max_retries=0)
    mc = lmc.MultiCloud(_catalog(engine.catalog_entry()), policy)
    wrapped = mc.wrap(openai.OpenAI(api_key=common.PLACEHOLDER_KEY, max_retries=0))
    out: dict[str, Any] = {}
    try:
        for stream in (False, True):
            kw: dict[str, Any] = {"messages": PROMPT, "max_tokens": 4 if stream else 1, "temperature": 0.0}

            def call(client: Any, model: str, kw: dict[str, Any] = kw, stream: bool = stream) -> float:
                t0 = time.perf_counter()
                if stream:
                    for _ in client.chat.completions.create(model=model, stream=True, **kw):
                        pass
                else:
                    client.chat.completions.create(model=model, **kw)
                return time.perf_counter() - t0

            calls: dict[str, Callable[[], float]] = {
                "direct": lambda: call(direct, served),
                "wrapped": lambda: call(wrapped, MODEL),
            }
            for c in calls.values():  # warm-up: connections, the engine's KV cache
                for _ in range(3):
                    c()
            times: dict[str, list[float]] = {v: [] for v in calls}
            added: list[float] = []
            rng = random.Random(9)
            for _ in range(rounds):
                order = list(calls)
                rng.shuffle(order)
                got = {v: calls[v]() for v in order}
                for v, t in got.items():
                    times[v].append(t)
                added.append(got["wrapped"] - got["direct"])
            out["stream" if stream else "non_stream"] = {
                "direct_ms": common.summarize(times["direct"], scale=1000.0),
                "wrapped_ms": common.summarize(times["wrapped"], scale=1000.0),
                "added_ms": common.summarize(added, scale=1000.0),
            }
    finally:
        direct.close()
        wrapped.close()
        mc.close()
    return out


def _loaded_ttft(loaded: Any, other: Any, n: int) -> dict[str, Any]:
    import openai

    import llm_multicloud as lmc
    from tests.engines.harness import MODEL

    base = {"strategy": "ordered", "probe": {"enabled": False}, "explore": 0.0, "timeouts": {"first_token_s": 60}}
    policies: dict[str, dict[str, Any]] = {
        "no_hedge": {**base, "hedge": {"enabled": False}},
        "hedge_default": {**base, "hedge": {"enabled": True}},
        "hedge_budget_1": {**base, "hedge": {"enabled": True, "budget": 1.0}},
    }
    cat = _catalog(loaded.catalog_entry(), other.catalog_entry())
    mcs = {v: lmc.MultiCloud(cat, p) for v, p in policies.items()}
    clients = {v: mc.wrap(openai.OpenAI(api_key=common.PLACEHOLDER_KEY, max_retries=0)) for v, mc in mcs.items()}
    stop = threading.Event()
    load_requests = [0]

    def load() -> None:
        with openai.OpenAI(base_url=loaded.base_url, api_key=loaded.spec.api_key, max_retries=0) as c:
            i = 0
            while not stop.is_set():
                i += 1
                stream = c.chat.completions.create(
                    model=loaded.spec.alias,
                    messages=[{"role": "user", "content": f"[load {i}] Write a story about a ship."}],
                    max_tokens=64,
                    stream=True,
                )
                for _ in stream:
                    if stop.is_set():
                        break
                stream.close()
                load_requests[0] += 1

    ttft: dict[str, list[float]] = {v: [] for v in clients}
    served: dict[str, dict[str, int]] = {v: {} for v in clients}
    hedged: dict[str, int] = dict.fromkeys(clients, 0)
    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        time.sleep(0.5)  # the load is running before the first measured request
        rng = random.Random(9)
        for i in range(n):
            order = list(clients)
            rng.shuffle(order)
            for v in order:
                t0 = time.perf_counter()
                first = None
                with clients[v].chat.completions.with_streaming_response.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"[{v} {i}] Say hi."}],
                    max_tokens=4,
                    stream=True,
                ) as raw:
                    for chunk in raw.parse():
                        if first is None and chunk.choices and chunk.choices[0].delta.content:
                            first = time.perf_counter() - t0
                    ep = raw.headers["x-llm-multicloud-endpoint"]
                    hedged[v] += raw.headers["x-llm-multicloud-hedged"] == "true"
                if first is not None:
                    ttft[v].append(first)
                served[v][ep] = served[v].get(ep, 0) + 1
    finally:
        stop.set()
        loader.join(120)
        for c in clients.values():
            c.close()
        snaps = {v: mc.snapshot() for v, mc in mcs.items()}
        for mc in mcs.values():
            mc.close()
    out: dict[str, Any] = {}
    for v in clients:
        upstream = sum(e["requests"] for e in snaps[v]["endpoints"])
        out[v] = {
            "requests": n,
            "ttft_ms": common.summarize(ttft[v], scale=1000.0),
            "served_by": served[v],
            "hedged": hedged[v],
            "extra_share": (upstream - n) / n if n else None,
        }
    out["load_requests"] = load_requests[0]
    return out


def run(*, quick: bool = False, out_dir: str | Path | None = None, litellm: bool | None = None) -> dict[str, Any]:
    """B9: added latency over the direct call to the same real engine; TTFT with one engine loaded."""
    t0 = time.monotonic()
    rounds = 10 if quick else 60
    n = 4 if quick else 24
    with _engines() as eng:
        overhead = _overhead(eng["aws-euc1-llama"], rounds)
        loaded = _loaded_ttft(eng["aws-euc1-llama"], eng["azure-eus-llama"], n)
        specs = {k: dataclasses.asdict(e.spec) for k, e in eng.items()}
    sync_added = overhead["non_stream"]["added_ms"]["p50"]
    no, yes = loaded["no_hedge"]["ttft_ms"], loaded["hedge_budget_1"]["ttft_ms"]
    result: dict[str, Any] = {
        "name": NAME,
        "title": TITLE,
        "quick": quick,
        "params": {"overhead_rounds": rounds, "loaded_requests_per_variant": n, "engines": specs},
        "results": {"overhead": overhead, "loaded": loaded},
        "bars": [
            common.bar(
                "sync added latency, non-streamed (median)",
                f"≤ {BAR_SYNC_MS} ms",
                sync_added,
                None if quick else sync_added <= BAR_SYNC_MS,
                "paired with the direct call to the same engine",
            ),
            common.bar(
                "p90 TTFT, hedging (budget 1.0) vs none, one engine loaded",
                "lower",
                None if not no.get("n") or not yes.get("n") else common.ratio(no["p90"], yes["p90"]),
                None if quick or not no.get("n") or not yes.get("n") else yes["p90"] < no["p90"],
                "ratio no-hedge / hedge",
            ),
        ],
        "plots": [],
    }
    return common.finish(result, t0)


def markdown(res: dict[str, Any]) -> str:
    o = res["results"]["overhead"]
    rows = [
        (
            mode.replace("_", "-"),
            r["direct_ms"]["p50"],
            r["wrapped_ms"]["p50"],
            r["added_ms"]["p50"],
            r["added_ms"]["p90"],
        )
        for mode, r in o.items()
    ]
    lr = res["results"]["loaded"]
    rows2 = [
        (
            v,
            r["requests"],
            r["ttft_ms"].get("p50"),
            r["ttft_ms"].get("p90"),
            r["ttft_ms"].get("max"),
            r["hedged"],
            ", ".join(f"{k}: {c}" for k, c in sorted(r["served_by"].items())),
        )
        for v, r in lr.items()
        if isinstance(r, dict)
    ]
    return "\n".join(
        [
            f"### {res['title']}",
            "",
            "Added latency, sync, one engine (aws-euc1-llama):",
            "",
            common.md_table(["mode", "direct p50 ms", "wrapped p50 ms", "added p50 ms", "added p90 ms"], rows),
            "",
            f"TTFT with aws-euc1-llama loaded ({lr['load_requests']} background generations), azure-eus-llama idle:",
            "",
            common.md_table(["variant", "requests", "p50 ms", "p90 ms", "max ms", "hedged", "served by"], rows2),
            "",
            common.bars_table(res["bars"]),
        ]
    )


if __name__ == "__main__":
    raise SystemExit(common.main_for(NAME, run, markdown))
