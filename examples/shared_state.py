"""Two app replicas share one picture of the fleet through Redis.

Two MultiCloud instances in this process stand for two replicas of an app (in
production: two processes or pods, each with its own wrapped client), both with
``policy.state.backend: redis``. Replica A meets a dead EU region: its breaker
opens after a few failed attempts (each one failed over: no request fails).
Replica B never sends a single request there: within one refresh period it
adopts A's ejection from Redis and routes around the outage.

Redis: ``LLM_MULTICLOUD_TEST_REDIS_URL`` if set, else a throw-away
``redis-server`` on a free 127.0.0.1 port (no persistence) if one is installed;
without either (or without redis-py: ``pip install '.[redis]'``) the script says
so in one line and exits 3 (a prerequisite is missing: nothing was shown). Its
keys live under a prefix of their own and are deleted at the end.

Prerequisites: the ``fleet`` extra, the openai SDK and redis-py — ``pip install '.[demo,redis]'`` — and a Redis (below).
Runs against the simulated fleet on 127.0.0.1; no credentials.

    python examples/shared_state.py
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, demo_spec

MODEL = "llama-3.1-8b"
EU = {"x-llm-multicloud-residency": "EU", "x-llm-multicloud-near": "eu-central-1"}


@contextlib.contextmanager
def redis_url() -> Iterator[str | None]:
    """The Redis to use, or None when there is none to be had."""
    url = os.environ.get("LLM_MULTICLOUD_TEST_REDIS_URL")
    if url:
        yield url
        return
    if shutil.which("redis-server") is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                yield None
                return
            time.sleep(0.05)
        print(f"(started a throw-away redis-server on 127.0.0.1:{port})")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def wait_for(what: str, predicate: Any, timeout: float = 5.0) -> float:
    """Poll until ``predicate()`` holds; the seconds it took (bounded, never sleep-and-hope)."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.005)
    return time.monotonic() - t0


def endpoint(mc: lmc.MultiCloud, eid: str) -> dict[str, Any]:
    return next(e for e in mc.snapshot()["endpoints"] if e["id"] == eid)


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
        import redis
    except ImportError:
        print("examples/shared_state.py needs redis-py: pip install '.[redis]'", file=sys.stderr)
        return 3
    with redis_url() as url:
        if url is None:
            print(
                "examples/shared_state.py needs a Redis: install redis-server (apt-get install redis-server) "
                "or set LLM_MULTICLOUD_TEST_REDIS_URL=redis://host:port/0",
                file=sys.stderr,
            )
            return 3
        try:
            with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2) as r:
                r.ping()
        except redis.RedisError as exc:
            print(
                f"examples/shared_state.py needs a Redis: {url.rpartition('@')[2]} does not answer ({exc})",
                file=sys.stderr,
            )
            return 3
        prefix = f"example-shared:{uuid.uuid4().hex[:8]}"
        try:
            return run(url, prefix)
        finally:
            with contextlib.suppress(Exception), redis.Redis.from_url(url, socket_timeout=2) as r:
                keys = list(r.scan_iter(match=f"{prefix}:*"))
                if keys:
                    r.delete(*keys)


def run(url: str, prefix: str) -> int:
    policy = {
        # refresh_s is the staleness bound's main term: 1 s by default, shorter here.
        "state": {"backend": "redis", "url": url, "prefix": prefix, "refresh_s": 0.5},
        # Only real traffic detects the outage here, so that B cannot learn it itself.
        "probe": {"enabled": False},
        "hedge": {"enabled": False},
    }
    with Fleet(demo_spec()) as fleet:
        for rid in fleet.region_ids:
            fleet.set_latency(rid, ttft_ms=4, ttft_jitter=0.1)
        catalog = fleet.catalog()
        audit_b: list[lmc.AttemptRecord] = []
        with (
            lmc.MultiCloud(catalog, policy) as replica_a,
            lmc.MultiCloud(catalog, policy, on_attempt=audit_b.append) as replica_b,
        ):
            a = replica_a.wrap(openai.OpenAI(api_key="unused"))
            b = replica_b.wrap(openai.OpenAI(api_key="unused"))
            # The first request of each replica starts its shared-state loop.
            victim = send(a, 1)[0]
            send(b, 1)
            wait_for("both replicas registered", lambda: replica_b.snapshot()["shared_state"]["replicas"] == 2)
            print(f"replica A and B share state: {replica_b.snapshot()['shared_state']}")

            print(f"\n{victim} goes down (connections refused); replica A keeps sending")
            fleet.set_fault(victim, mode="down")
            audit_b.clear()
            served_a = send(a, 10)  # failed over: no request fails
            opened = endpoint(replica_a, victim)
            print(f"  A: served by {sorted(set(served_a))}; {victim} is {opened['state']} ({opened['reason']})")

            took = wait_for("B adopts the ejection", lambda: endpoint(replica_b, victim)["state"] == "open")
            seen = endpoint(replica_b, victim)
            print(f"  B: {victim} is {seen['state']} after {took:.2f} s, without a request of its own")
            print(f"     reason: {seen['reason']}")

            served_b = send(b, 10)
            to_victim = [r for r in audit_b if r.endpoint == victim]
            print(f"  B: 10 requests served by {sorted(set(served_b))}; attempts on {victim}: {len(to_victim)}")
            bound = replica_b.snapshot()["shared_state"]["staleness_bound_s"]
            print(f"\nstaleness bound: {bound} s (refresh_s + 2 x timeout_s); B took {took:.2f} s")
            # (a timing, so printed rather than asserted: tests/integration/test_shared.py
            # checks the bound from the servers' side)

    assert victim not in served_a and victim not in served_b
    assert not to_victim, to_victim
    return 0


if __name__ == "__main__":
    sys.exit(main())
