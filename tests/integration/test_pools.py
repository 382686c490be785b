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
from llm_multicloud.fleet import Fleet, Latency
from llm_multicloud.upstream import Upstream, UpstreamError

from .conftest import MODEL, Audit, fresh, make_mc

MSG = [{"role": "user", "content": "hi"}]

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


def _health(mc: lmc.MultiCloud) -> dict[str, tuple[str, int, int]]:
    return {e["id"]: (e["state"], e["failures"], e["ejections"]) for e in mc.snapshot()["endpoints"]}


def _limited_mc(fleet: Fleet, max_connections: int, timeouts: dict[str, float], audit: Audit) -> lmc.MultiCloud:
    lib = _lib(None)
    return make_mc(
        fleet,
        {"timeouts": timeouts},
        on_attempt=audit,
        http_options={"limits": lib.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)},
    )


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_waiting_for_a_pooled_connection_is_not_bounded_by_connect_s_nor_blamed(fleet: Fleet, kind: str) -> None:
    """Twelve requests through a pool of two connections, each answer taking 100 ms:
    the last ones wait ~0.5 s for a connection of *our* pool, longer than ``connect_s``
    (0.2 s). The wait is bounded by the attempt, not by the connect deadline: every
    request is answered by the first endpoint, none fails over, none is blamed (with
    the pool wait bounded by connect_s, they failed as the endpoint's timeouts)."""
    audit = Audit()
    with fresh(fleet, Latency(ttft_ms=100, ttft_jitter=0.0, itl_ms=0.0)):
        mc = _limited_mc(fleet, 2, {"connect_s": 0.2}, audit)

        async def run() -> list[str]:
            client = mc.wrap(openai.AsyncOpenAI(api_key="sk-placeholder", max_retries=0))
            got: list[str] = []
            try:

                async def one() -> None:
                    r = await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=2)
                    got.append(r.choices[0].message.content or "")

                async with anyio.create_task_group() as tg:
                    for _ in range(12):
                        tg.start_soon(one)
            finally:
                await client.close()
            return got

        def run_sync() -> list[str]:
            from concurrent.futures import ThreadPoolExecutor

            client = mc.wrap(openai.OpenAI(api_key="sk-placeholder", max_retries=0))
            try:

                def one(_: int) -> str:
                    r = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=2)
                    return r.choices[0].message.content or ""

                with ThreadPoolExecutor(12) as pool:
                    return list(pool.map(one, range(12)))
            finally:
                client.close()

        try:
            got = anyio.run(run) if kind == "async" else run_sync()
            assert len(got) == 12 and all(got)
            assert [(a.endpoint, a.outcome) for a in audit.records] == [("aws-euc1", "won")] * 12
            assert all(v == ("closed", 0, 0) for v in _health(mc).values()), _health(mc)
        finally:
            mc.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_pool_busy_past_the_attempts_deadline_is_a_local_error_that_blames_nobody(fleet: Fleet, kind: str) -> None:
    """The only connection of the pool is held by an open stream; a second stream waits
    for it until its attempt's deadline (``first_token_s`` 0.5 s). That is this
    process's queue, not the endpoint: a local error that names the pool limit, no
    failover to another endpoint, no penalty (it used to be "no first token within
    0.50s", blamed on the endpoint, and failed over)."""
    audit = Audit()
    with fresh(fleet, Latency(ttft_ms=1, ttft_jitter=0.0, itl_ms=20.0)):
        mc = _limited_mc(fleet, 1, {"first_token_s": 0.5}, audit)

        async def run() -> openai.InternalServerError:
            client = mc.wrap(openai.AsyncOpenAI(api_key="sk-placeholder", max_retries=0))
            try:
                held = await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=200, stream=True)
                try:
                    await held.__anext__()  # committed: the stream holds the pool's only connection
                    with pytest.raises(openai.InternalServerError) as info:
                        await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=2, stream=True)
                finally:
                    await held.close()
                return info.value
            finally:
                await client.close()

        def run_sync() -> openai.InternalServerError:
            client = mc.wrap(openai.OpenAI(api_key="sk-placeholder", max_retries=0))
            try:
                held = client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=200, stream=True)
                try:
                    next(iter(held))  # committed: the stream holds the pool's only connection
                    with pytest.raises(openai.InternalServerError) as info:
                        client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=2, stream=True)
                finally:
                    held.close()
                return info.value
            finally:
                client.close()

        try:
            err = anyio.run(run) if kind == "async" else run_sync()
            assert err.status_code == 500 and err.code == "local_error"
            assert "PoolTimeout" in err.message and "http_options" in err.message, err.message
            assert "no endpoint was penalised" in err.message
            assert [a.endpoint for a in audit.records] == ["aws-euc1", "aws-euc1"]  # no failover
            assert sorted(a.outcome for a in audit.records) == ["closed_by_caller", "local_error"]
            assert all(v == ("closed", 0, 0) for v in _health(mc).values()), _health(mc)
        finally:
            mc.close()


CONCURRENT = 512


def test_512_requests_started_at_once_are_all_answered_with_the_default_deadlines(clean: Fleet) -> None:
    """512 requests started at once on one event loop through the real SDK, default
    policy (no connect deadline set): all answered by the first endpoint, nothing
    blamed. Their connects queue behind the loop's own work (0.4-1.4 s measured for a
    loopback connect on a quiet machine, docs/health.md#deadlines); with the old 2 s
    ``connect_s`` a loaded machine failed hundreds of them as the endpoint's
    ConnectTimeout."""
    audit = Audit()
    mc = make_mc(clean, on_attempt=audit)

    async def run() -> int:
        client = mc.wrap(openai.AsyncOpenAI(api_key="sk-placeholder", max_retries=0))
        done = 0
        try:

            async def one() -> None:
                nonlocal done
                r = await client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=2)
                done += bool(r.choices[0].message.content)

            async with anyio.create_task_group() as tg:
                for _ in range(CONCURRENT):
                    tg.start_soon(one)
        finally:
            await client.close()
        return done

    try:
        assert anyio.run(run) == CONCURRENT
        assert {(a.endpoint, a.outcome) for a in audit.records} == {("aws-euc1", "won")}
        assert len(audit.records) == CONCURRENT
        assert all(v == ("closed", 0, 0) for v in _health(mc).values()), _health(mc)
    finally:
        mc.close()
