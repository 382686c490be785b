"""Shared state on a Redis Cluster, through a master failover.

Managed Redis often runs in cluster mode (ElastiCache, MemoryDB, Memorystore for
Redis Cluster). This script starts a throw-away cluster on 127.0.0.1 — 3 masters,
each with a replica (``llm_multicloud.fleet.redis_cluster.LocalRedisCluster``) —
and two app replicas (two MultiCloud instances) with
``policy.state: {backend: redis, cluster: true}``. Replica A meets a dead EU
region; replica B adopts the ejection from the cluster and never sends there.
Then the master that holds that endpoint's keys is killed: requests keep being
served while the cluster promotes its replica, and sharing resumes on the new
master — a second dead region found by A reaches B again.

Prerequisites: the ``fleet`` extra, the openai SDK and redis-py — ``pip install '.[demo,redis]'`` —
and ``redis-server`` + ``redis-cli`` on PATH (``apt-get install redis-server``); without them
the script says so in one line and exits 3. Runs on 127.0.0.1 only; no credentials.

    python examples/shared_state_cluster.py
"""

from __future__ import annotations

import shutil
import sys
import time
import uuid
from typing import Any

import openai

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, demo_spec

MODEL = "llama-3.1-8b"
EU = {"x-llm-multicloud-residency": "EU", "x-llm-multicloud-near": "eu-central-1"}


def wait_for(what: str, predicate: Any, timeout: float = 30.0) -> float:
    """Poll until ``predicate()`` holds; the seconds it took (bounded)."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.01)
    return time.monotonic() - t0


def state(mc: lmc.MultiCloud, eid: str) -> str:
    return str(next(e for e in mc.snapshot()["endpoints"] if e["id"] == eid)["state"])


def send(client: openai.OpenAI, n: int) -> list[str]:
    served = []
    for i in range(n):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"question {i}"}], max_tokens=4, extra_headers=EU
        )
        served.append(raw.headers["x-llm-multicloud-endpoint"])
    return served


def main() -> int:
    try:
        import redis  # noqa: F401  (the cluster client is redis-py's)
    except ImportError:
        print("examples/shared_state_cluster.py needs redis-py: pip install '.[redis]'", file=sys.stderr)
        return 3
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        print(
            "examples/shared_state_cluster.py needs redis-server and redis-cli on PATH "
            "(apt-get install redis-server; pip install '.[redis]' for the client)",
            file=sys.stderr,
        )
        return 3
    from llm_multicloud.fleet.redis_cluster import LocalRedisCluster

    with LocalRedisCluster(masters=3, replicas=1) as cluster:
        print(f"(started a 6-node Redis Cluster on 127.0.0.1, e.g. {cluster.url})")
        return run(cluster)


def run(cluster: Any) -> int:
    policy = {
        "state": {
            "backend": "redis",
            "cluster": True,  # hash-tagged keys, one MGET per slot, the cluster client
            "url": cluster.url,  # one node: the client discovers the others
            "prefix": f"example-cluster:{uuid.uuid4().hex[:8]}",
            "refresh_s": 0.5,
        },
        "probe": {"enabled": False},
        "hedge": {"enabled": False},
    }
    with Fleet(demo_spec()) as fleet:
        catalog = fleet.catalog()
        a, b = lmc.MultiCloud(catalog, policy), lmc.MultiCloud(catalog, policy)
        try:
            client_a = a.wrap(openai.OpenAI(api_key="sk-placeholder-never-sent"))
            client_b = b.wrap(openai.OpenAI(api_key="sk-placeholder-never-sent"))
            send(client_a, 1), send(client_b, 1)  # both replicas running
            first = a.explain(MODEL, residency="EU", near="eu-central-1").candidates[0].endpoint.id
            fleet.set_fault(first, mode="down")  # the EU region A prefers goes away
            print(f"A's first choice {first} is down; A fails over: {send(client_a, 5)}")
            took = wait_for("B adopts A's ejection", lambda: state(b, first) == "open")
            print(f"B adopted the ejection from the cluster after {took:.2f}s: {state(b, first)}")
            served = send(client_b, 5)
            assert first not in served, served
            print(f"B never tried {first}: {served}")

            shared = a._shared
            assert shared is not None
            key = next(k for k in shared._reads if k.endswith(f":eject:{first}"))
            master = cluster.master_of(key)
            print(f"killing the master 127.0.0.1:{master.port} that holds {key}")
            cluster.kill(master)
            during = send(client_a, 5) + send(client_b, 5)
            print(f"during the failover every request is served: {during}")
            t0 = time.monotonic()
            cluster.wait_healthy(30.0)  # bounded: raises if the replica was not promoted
            print(f"the cluster promoted its replica within {time.monotonic() - t0:.2f}s")
            rounds = b.snapshot()["shared_state"]["rounds"]
            wait_for(
                "sharing resumed",
                lambda: (
                    all(m.snapshot()["shared_state"]["status"] == "ok" for m in (a, b))
                    and b.snapshot()["shared_state"]["rounds"] > rounds + 2
                ),
            )
            ranked = [c.endpoint.id for c in a.explain(MODEL, residency="EU", near="eu-central-1").candidates]
            second = ranked[0]
            fleet.set_fault(second, mode="down")
            send(client_a, 5)
            took = wait_for("B adopts the second ejection", lambda: state(b, second) == "open")
            print(f"after the failover, B adopted A's ejection of {second} within {took:.2f}s")
        finally:
            a.close()
            b.close()
    print("ok: health shared on a Redis Cluster, across a master failover, with no failed request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
