"""Shared state on a real Redis Cluster: 3 masters with a replica each, started on
127.0.0.1 by the test (``redis-server --cluster-enabled yes`` x6 + ``redis-cli
--cluster create``). Health, pins and capacity buckets work unchanged
(``policy.state.cluster: true``): keys hash-tagged per quota domain, reads batched
per slot across the masters; and a master killed during traffic through the real
openai SDK fails no request — the replicas keep routing on their held state, the
cluster promotes the master's replica, and shared state resumes on the new master
(even when the URL named the node that died).

Every wait is a bounded poll of a state."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, Latency, RateLimits, RegionSpec

pytest.importorskip("redis", reason="redis-py is not installed: pip install 'llm-multicloud[redis]'")
if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
    pytest.skip("needs redis-server and redis-cli on PATH (apt-get install redis-server)", allow_module_level=True)

from llm_multicloud.fleet.redis_cluster import LocalRedisCluster

from .test_shared_limits import assert_pins_agree_and_move_together

pytestmark = pytest.mark.integration
MODEL = "llama-3.1-8b"
REFRESH = 0.25
TPM = 600_000.0  # 10k tokens/s: the traffic here is far below it, yet leased


@pytest.fixture
def cluster() -> Iterator[LocalRedisCluster]:
    with LocalRedisCluster(masters=3, replicas=1) as c:
        yield c


def _fleet(n: int = 4) -> Fleet:
    regions = ["eu-central-1", "eu-west-1", "eu-west-3", "eu-north-1"][:n]
    return Fleet(
        [
            RegionSpec(
                id=f"e{i}",
                provider="aws",
                region=r,
                models={MODEL: "served"},
                api_key=f"sk-e{i}",
                latency=Latency(ttft_ms=2, ttft_jitter=0.0),
                limits=RateLimits(tpm=TPM, burst_s=2.0),
            )
            for i, r in enumerate(regions)
        ]
    )


def _catalog(fleet: Fleet) -> dict[str, Any]:
    cat = fleet.catalog()
    for ep in cat["endpoints"]:
        ep["limits"] = {"tpm": TPM, "burst_s": 2.0}
    return cat


def _policy(url: str, prefix: str, **kw: Any) -> dict[str, Any]:
    return {
        "strategy": "latency",
        "probe": {"enabled": False},
        "hedge": {"enabled": False},
        "state": {"backend": "redis", "cluster": True, "url": url, "prefix": prefix, "refresh_s": REFRESH} | kw,
    }


def _until(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)


def _shared(mc: lmc.MultiCloud) -> dict[str, Any]:
    s: dict[str, Any] = mc.snapshot()["shared_state"]
    return s


def _modes(mc: lmc.MultiCloud) -> set[str]:
    return {b["mode"] for b in mc.snapshot()["limits"]}


def test_health_pins_and_buckets_work_unchanged_on_a_cluster(cluster: LocalRedisCluster) -> None:
    prefix = f"lmc-test:cluster:{time.monotonic_ns()}"
    with _fleet() as fleet:
        cat = _catalog(fleet)
        a = lmc.MultiCloud(cat, _policy(cluster.url, prefix))
        b = lmc.MultiCloud(cat, _policy(cluster.url, prefix))
        try:
            for mc in (a, b):
                mc._portal()  # starts the shared-state loop, as the first request would
                for st in mc.health.states:
                    st.observe_ttft(20.0, mc.clock())
            _until(lambda: all(_shared(m)["status"] == "ok" and _shared(m)["replicas"] == 2 for m in (a, b)), "ok")
            _until(lambda: _modes(a) == {"shared"} and _modes(b) == {"shared"}, "every bucket leased")
            # The keys really are spread over the cluster, and read with one MGET per slot.
            assert a._shared is not None
            reads = a._shared._reads
            masters = {cluster.master_of(k).port for k in reads}
            assert len(masters) >= 2, masters
            assert len(a._shared._read_groups) == len(cat["endpoints"])  # one slot per quota domain
            for ep in cat["endpoints"]:
                domain = f"endpoint:{ep['id']}"
                tagged = [k for k in reads if f"{{d:{domain}}}" in k]
                assert len({cluster.slot_of(k) for k in tagged}) == 1  # ejection + cooldown: one slot
                assert cluster.slot_of(a._shared._limits.key(domain)) == cluster.slot_of(tagged[0])  # type: ignore[union-attr]

            # Requests through the real SDK, from both replicas, under the shared buckets.
            for mc in (a, b):
                client = mc.wrap(openai.OpenAI(api_key="sk-placeholder-never-sent"))
                for i in range(5):
                    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"q{i}"}])

            # Pins agree, and one replica's ejection moves the other's pins the same way.
            assert_pins_agree_and_move_together(a, b, _until)
            limited = [r for e in cat["endpoints"] for r in fleet.received(e["id"]) if r.status == 429]
            assert limited == []
        finally:
            a.close()
            b.close()


def test_a_master_killed_during_traffic_fails_no_request(cluster: LocalRedisCluster) -> None:
    """The URL names the very master that dies (the one holding the traffic's bucket
    and health keys): the client finds the cluster again through the nodes it saw."""
    prefix = f"lmc-test:failover:{time.monotonic_ns()}"
    with _fleet(2) as fleet:
        cat = _catalog(fleet)
        probe = lmc.MultiCloud(cat, _policy(cluster.url, prefix))  # only to compute key names
        assert probe._shared is None
        domain = "endpoint:e0"
        victim = cluster.master_of(f"{prefix}:v2:{{d:{domain}}}:bucket")
        url = f"redis://127.0.0.1:{victim.port}"
        probe.close()
        mc = lmc.MultiCloud(cat, _policy(url, prefix))
        client = mc.wrap(openai.OpenAI(api_key="sk-placeholder-never-sent"))
        served: list[str] = []
        errors: list[str] = []
        stop = threading.Event()

        def traffic() -> None:
            i = 0
            while not stop.is_set() and i < 5000:
                i += 1
                try:
                    r = client.chat.completions.with_raw_response.create(
                        model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], max_tokens=8
                    )
                    r.parse()
                    served.append(r.headers["x-llm-multicloud-endpoint"])
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.01)

        worker = threading.Thread(target=traffic)
        try:
            mc._portal()
            _until(lambda: _shared(mc)["status"] == "ok" and _modes(mc) == {"shared"}, "leased on the cluster")
            worker.start()
            _until(lambda: len(served) >= 20, "traffic flows")
            rounds = _shared(mc)["rounds"]
            cluster.kill(victim)
            cluster.wait_healthy(timeout=30.0)  # its replica promoted
            assert cluster.master_of(f"{prefix}:v2:{{d:{domain}}}:bucket").port != victim.port
            _until(
                lambda: _shared(mc)["status"] == "ok" and _shared(mc)["rounds"] > rounds + 3,
                "shared state resumed on the new master",
                timeout=20.0,
            )
            _until(lambda: _modes(mc) == {"shared"}, "leased again", timeout=10.0)
            n = len(served)
            _until(lambda: len(served) >= n + 20, "traffic flows after the failover")
            # Health still shared after the failover: an ejection reaches a new replica.
            other = lmc.MultiCloud(cat, _policy(cluster.url, prefix))
            try:
                other._portal()
                st = mc.health.states[0]
                for _ in range(mc.policy.breaker.consecutive_failures):
                    mc.health.endpoint_fault(st, "connect error: refused")
                _until(lambda: other.snapshot()["endpoints"][0]["state"] == "open", "ejection seen after failover")
            finally:
                other.close()
        finally:
            stop.set()
            if worker.is_alive():
                worker.join(30)
            mc.close()
        assert errors == [], errors[:3]
        assert len(served) > 40
        limited = [r for e in cat["endpoints"] for r in fleet.received(e["id"]) if r.status == 429]
        assert limited == []
        assert _shared(mc)["failed_rounds"] >= 1  # the failover was seen, and survived
