"""Connection pools per endpoint (issue 14, point 3), against real fleet servers on 127.0.0.1.

A burst to one endpoint leaves at most ``max_keepalive`` idle connections in *its*
pool, and none in another endpoint's: the work a request does in its pool (the HTTP
library walks the pool and probes every idle socket) stays bounded per endpoint.
Timing is not asserted here (benchmarks/b2_overhead.py measures the post-burst cost);
the pool shapes that cause it are."""

from __future__ import annotations

import anyio
import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.client import _lib
from llm_multicloud.fleet import Fleet
from llm_multicloud.upstream import Upstream, UpstreamError

from .conftest import MODEL

pytestmark = pytest.mark.integration

BURST = 48


async def _get_models(up: Upstream, fleet: Fleet, rid: str) -> int:
    resp = await up.open(
        "GET",
        fleet.url(rid) + "/models",
        [("authorization", f"Bearer {fleet.api_key(rid)}")],
        None,
        connect_s=5.0,
        read_s=5.0,
    )
    try:
        await resp.read()
        return resp.status
    finally:
        await resp.aclose()


def _origin(fleet: Fleet, rid: str) -> str:
    return f"http://{fleet.url_host}:{fleet.port(rid)}"


def test_a_burst_leaves_bounded_idle_connections_in_its_own_pool(clean: Fleet) -> None:
    fleet = clean
    a, b = fleet.region_ids[0], fleet.region_ids[1]

    async def run() -> tuple[dict[str, int], dict[str, int], list[int]]:
        up = Upstream(_lib(None), max_keepalive=8)
        try:
            statuses: list[int] = []

            async def one(rid: str) -> None:
                statuses.append(await _get_models(up, fleet, rid))

            async with anyio.create_task_group() as tg:  # BURST requests in flight at once
                for _ in range(BURST):
                    tg.start_soon(one, a)
            after_burst = up.idle_connections()
            await one(b)
            await one(a)  # the pool still serves after the burst
            return after_burst, up.idle_connections(), statuses
        finally:
            await up.aclose()

    after_burst, after, statuses = anyio.run(run)
    assert statuses == [200] * (BURST + 2)
    assert list(after_burst) == [_origin(fleet, a)]  # one pool per origin, created on use
    assert 1 <= after_burst[_origin(fleet, a)] <= 8  # keep-alive bounded per endpoint
    assert after[_origin(fleet, b)] == 1  # b's pool holds b's connection only
    assert after[_origin(fleet, a)] <= 8


def test_limits_in_http_options_apply_per_endpoint(clean: Fleet) -> None:
    """``http_options={"limits": ...}`` bounds each endpoint's pool, through the real SDK."""
    fleet = clean
    lib = _lib(None)
    mc = lmc.MultiCloud(
        fleet.catalog(),
        {"probe": {"enabled": False}},
        http_options={"limits": lib.Limits(max_connections=100, max_keepalive_connections=2)},
    )

    async def run() -> dict[str, int]:
        client = mc.wrap(openai.AsyncOpenAI(api_key="sk-placeholder", max_retries=0))
        try:

            async def one() -> None:
                r = await client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
                )
                assert r.choices[0].message.content

            async with anyio.create_task_group() as tg:
                for _ in range(24):
                    tg.start_soon(one)
            (up,) = client._client._transport._upstreams.values()  # this loop's pools
            return up.idle_connections()
        finally:
            await client.close()

    try:
        idle = anyio.run(run)
    finally:
        mc.close()
    assert idle and all(n <= 2 for n in idle.values()), idle


def test_closed_pools_refuse_new_origins_as_a_local_error(clean: Fleet) -> None:
    fleet = clean

    async def run() -> UpstreamError:
        up = Upstream(_lib(None))
        await up.aclose()
        with pytest.raises(UpstreamError) as info:
            await _get_models(up, fleet, fleet.region_ids[0])
        return info.value

    err = anyio.run(run)
    assert err.kind == "local" and not err.endpoint_fault
