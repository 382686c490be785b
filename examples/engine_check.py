"""Check your own engines (vLLM, llama.cpp, SGLang, TGI, ...) the way the engine suite
checks llama.cpp: every endpoint of a catalog, one at a time, through the real
openai SDK wrapped by llm_multicloud.

Prerequisites: the openai SDK, and the ``fleet`` extra for the simulated fleet —
``pip install '.[demo]'``; your engines reachable (or none: see below).

    python examples/engine_check.py my-catalog.yaml --model llama-3.1-8b

Per endpoint: chat sync and async, streamed and not (real text back); legacy
completions (``/completions``; "not served" is fine); whether the engine's own
``/models`` lists the served name (a mismatch is a warning: llama.cpp lists its
alias or file path and still answers); usage numbers in plain and streamed answers
(without them cost is estimated). Exit 1 if any chat check fails.

With no catalog it checks a simulated two-region fleet on 127.0.0.1, so that it
runs anywhere (and in the test suite); ``nox -s engines`` runs it against real
llama.cpp servers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import openai

import llm_multicloud as lmc

POLICY = {"probe": {"enabled": False}, "hedge": {"enabled": False}, "retry": {"max_attempts": 1}}
MESSAGES = [{"role": "user", "content": "Reply with one short sentence."}]


def check_endpoint(catalog: lmc.Catalog, endpoint_id: str, model: str) -> dict[str, str]:
    """Every check against one endpoint (the catalog narrowed to it)."""
    ep = next(e for e in catalog.endpoints if e.id == endpoint_id)
    results: dict[str, str] = {}
    data = catalog.spec.model_dump(exclude_none=True, by_alias=True)
    data["endpoints"] = [e for e in data["endpoints"] if e["id"] == endpoint_id]
    with lmc.MultiCloud(data, POLICY) as mc:
        client = mc.wrap(openai.OpenAI(api_key="unused", max_retries=0))
        kw: dict[str, Any] = {"model": model, "messages": MESSAGES, "max_tokens": 16}
        for name, fn in {
            "chat sync": lambda: client.chat.completions.create(**kw).choices[0].message.content,
            "chat sync stream": lambda: "".join(
                c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw) if c.choices
            ),
            "chat async": lambda: asyncio.run(_async(mc, kw, stream=False)),
            "chat async stream": lambda: asyncio.run(_async(mc, kw, stream=True)),
        }.items():
            try:
                text = fn()
                results[name] = "ok" if text and text.strip() else "FAIL: empty answer"
            except Exception as exc:
                results[name] = f"FAIL: {type(exc).__name__}: {str(exc)[:120]}"
        usage = client.chat.completions.create(**kw).usage
        results["usage (plain)"] = "ok" if usage and usage.completion_tokens else "none: cost estimated"
        chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
        results["usage (stream)"] = "ok" if any(c.usage for c in chunks) else "none: cost estimated"
        listed = _listing(mc)
        served = ep.models[model]
        if listed is None:
            results["/models"] = "no model list"
        elif served in listed or model in listed:
            results["/models"] = "lists the served name"
        else:
            results["/models"] = f"warning: lists {listed[:3]}, not {served!r} (requests decide)"
    # last, on a MultiCloud of its own: an engine without /completions answers 404
    with lmc.MultiCloud(data, POLICY) as mc:
        client = mc.wrap(openai.OpenAI(api_key="unused", max_retries=0))
        try:
            r = client.completions.create(model=model, prompt="The sky is", max_tokens=4)
            results["completions"] = "ok" if r.choices and r.choices[0].text else "FAIL: empty answer"
        except openai.NotFoundError:
            results["completions"] = "not served"
        except openai.APIError as exc:
            results["completions"] = f"not served? {type(exc).__name__}: {str(exc)[:100]}"
    return results


async def _async(mc: lmc.MultiCloud, kw: dict[str, Any], *, stream: bool) -> str:
    async with mc.wrap(openai.AsyncOpenAI(api_key="unused", max_retries=0)) as client:
        if stream:
            stream = await client.chat.completions.create(stream=True, **kw)
            return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        r = await client.chat.completions.create(**kw)
        return r.choices[0].message.content or ""


def _listing(mc: lmc.MultiCloud) -> list[str] | None:
    import anyio

    from llm_multicloud.client import _lib
    from llm_multicloud.probe import Prober
    from llm_multicloud.upstream import Upstream

    async def once() -> list[str] | None:
        up = Upstream(_lib(None))
        try:
            (res,) = await Prober(mc).probe_all(up)
            return res.models_listed
        finally:
            await up.aclose()

    return anyio.run(once)


@contextlib.contextmanager
def simulated() -> Iterator[tuple[lmc.Catalog, str]]:
    from llm_multicloud.fleet import Fleet, Latency, RegionSpec

    fast = Latency(ttft_ms=2, ttft_jitter=0.0, itl_ms=0.0)
    regions = [
        RegionSpec(id="aws-euc1", provider="aws", region="eu-central-1", models={"m": "served-m"}, api_key="k1",
                   latency=fast),
        # lists its model file, as llama.cpp does without an alias, and answers the served name
        RegionSpec(id="onprem-fra", provider="onprem", region="eu-central-1", models={"m": "served-m"},
                   listed=["/models/model.gguf"], api_key="k2", latency=fast),
    ]  # fmt: skip
    with Fleet(regions) as fleet:
        yield lmc.Catalog.load(fleet.catalog()), "m"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("catalog", nargs="?", help="your catalog (default: a simulated fleet)")
    p.add_argument("--model", help="logical model to check (default: the catalog's first)")
    args = p.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.catalog:
            catalog = lmc.Catalog.load(args.catalog)
            model = args.model or sorted(catalog.models)[0]
        else:
            catalog, model = stack.enter_context(simulated())
        failed = False
        for ep in catalog.endpoints:
            if model not in ep.models:
                continue
            print(f"{ep.id} ({ep.provider} {ep.region}) serving {model!r} as {ep.models[model]!r}")
            for name, verdict in check_endpoint(catalog, ep.id, model).items():
                print(f"  {name:<18} {verdict}")
                failed = failed or (name.startswith("chat") and verdict.startswith("FAIL"))
    print("FAILED" if failed else "all chat checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
