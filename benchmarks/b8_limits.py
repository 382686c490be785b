"""B8 — four app replicas against rpm/tpm quotas.

Two deployments (aws eu-central-1, azure westeurope) in a separate process, each
enforcing ``TPM`` tokens and ``RPM`` requests per minute (token buckets holding
``BURST_S`` seconds' worth) and answering 429 + Retry-After past them. Four replica
processes, each with ``CONCURRENCY`` async workers sending chat requests
(``MAX_TOKENS`` tokens each) as fast as they are answered for ``DURATION_S``. Variants:

* ``blind`` — llm_multicloud without ``limits:`` in the catalog (learns from 429s:
  cooldowns and failover);
* ``local`` — ``limits:`` in the catalog, no shared state: each replica thinks it
  has the whole quota;
* ``shared`` — ``limits:`` and the Redis shared state: one bucket per deployment in
  Redis, leased to the replicas;
* ``litellm`` — LiteLLM's Router in each replica with the same ``rpm``/``tpm`` per
  deployment, ``routing_strategy="usage-based-routing-v2"`` and the same Redis
  (its shared usage counters), ``num_retries`` 2.

Measured: upstream requests and the share answered 429 (the fleet's books),
requests that failed for the caller, and the capacity used: tokens the fleet
admitted over what the quotas allowed in the run (their burst plus the refill).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from . import common

NAME = "b8_limits"
TITLE = "B8 — four replicas against rpm/tpm quotas: 429s, capacity used, failures"
TPM = 24_000.0
RPM = 900.0
BURST_S = 2.0
MAX_TOKENS = 40
CONCURRENCY = 8
REPLICAS = 4
BAR_429 = 0.01
BAR_USED = 0.9
WHERE = (("aws", "eu-central-1"), ("azure", "westeurope"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Redis:
    def __init__(self) -> None:
        self.port = _free_port()
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _spawn(cfg: dict[str, Any]) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    root = str(common.REPO_ROOT)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.b8_worker"],
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(cfg).encode() + b"\n")
    proc.stdin.flush()
    return proc


def _line(stream: IO[bytes] | None, timeout: float) -> Any:
    assert stream is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            raise RuntimeError("worker exited")
        with contextlib.suppress(ValueError):
            return json.loads(line)
    raise TimeoutError("worker did not answer")


def _variant(cfgs: list[dict[str, Any]], fleet: Any, duration: float) -> dict[str, Any]:
    procs = [_spawn(c) for c in cfgs]
    try:
        for p in procs:
            msg = _line(p.stdout, 120)
            assert msg.get("event") == "ready", msg
        fleet.reset()  # fresh quotas and books, right before the run
        time.sleep(0.5)  # shared state: every replica has leased and seen the others
        t0 = time.monotonic()
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(b"go\n")
            p.stdin.flush()
        results = [_line(p.stdout, duration + 120) for p in procs]
        took = time.monotonic() - t0
    finally:
        for p in procs:
            with contextlib.suppress(OSError):
                assert p.stdin is not None
                p.stdin.close()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    recs = [r for r in fleet.received() if r.path.endswith("/chat/completions")]
    admitted = sum((fleet.state(rid)["limits"] or {}).get("tokens", 0) for rid in fleet.region_ids)
    # The configured capacity: the quotas' rate over the run. (What the servers would
    # have admitted is that plus one burst each: reported beside it.)
    configured = len(fleet.region_ids) * TPM / 60.0 * took
    possible = len(fleet.region_ids) * TPM / 60.0 * (BURST_S + took)
    return {
        "replicas": len(cfgs),
        "logical_ok": sum(r["ok"] for r in results),
        "failed": sum(r["failed"] for r in results),
        "errors": [e for r in results for e in r["errors"]][:3],
        "upstream_requests": len(recs),
        "upstream_429": sum(1 for r in recs if r.status == 429),
        "share_429": (sum(1 for r in recs if r.status == 429) / len(recs)) if recs else None,
        "tokens_admitted": admitted,
        "tokens_configured": configured,
        "tokens_possible": possible,
        "capacity_used": admitted / configured if configured else None,
        "capacity_used_with_burst": admitted / possible if possible else None,
        "seconds": took,
    }


def run(*, quick: bool = False, out_dir: str | Path | None = None, litellm: bool | None = None) -> dict[str, Any]:
    """B8: 429s, capacity used and failures of 4 replicas under rpm/tpm quotas."""
    t_start = time.monotonic()
    from llm_multicloud.fleet import Latency, RateLimits, RegionSpec, start_fleet_process

    common.out_dir_for(quick, out_dir)
    use_litellm, why_not = common.want_litellm(litellm)
    duration = 2.0 if quick else 20.0
    replicas = 2 if quick else REPLICAS
    has_redis = shutil.which("redis-server") is not None
    specs = [
        RegionSpec(
            id=f"r{i}",
            provider=p,
            region=r,
            models={common.MODEL: common.SERVED},
            api_key=f"sk-bench-r{i}",
            latency=Latency(ttft_ms=5.0, ttft_jitter=0.1),
            limits=RateLimits(rpm=RPM, tpm=TPM, burst_s=BURST_S),
            seed=i,
        )
        for i, (p, r) in enumerate(WHERE)
    ]
    fleet = start_fleet_process(specs)
    redis = _Redis() if has_redis else None
    rows: dict[str, Any] = {}
    try:
        blind = fleet.catalog()
        limited = fleet.catalog()
        for e in limited["endpoints"]:
            e["limits"] = {"rpm": RPM, "tpm": TPM, "burst_s": BURST_S}
        base = {"probe": {"enabled": False}, "hedge": {"enabled": False}}
        common_cfg = {
            "model": common.MODEL,
            "max_tokens": MAX_TOKENS,
            "concurrency": CONCURRENCY,
            "duration_s": duration,
        }
        plans: dict[str, list[dict[str, Any]]] = {
            "blind": [{**common_cfg, "catalog": blind, "policy": base}] * replicas,
            "local": [{**common_cfg, "catalog": limited, "policy": base}] * replicas,
        }
        if redis is not None:
            state = {"backend": "redis", "url": redis.url, "refresh_s": 0.25, "timeout_s": 0.25}
            shared = {**base, "state": {**state, "prefix": "b8"}}
            plans["shared"] = [{**common_cfg, "catalog": limited, "policy": shared}] * replicas
        if use_litellm and redis is not None:
            model_list = [
                {**d, "litellm_params": {**d["litellm_params"], "rpm": int(RPM), "tpm": int(TPM)}}
                for d in common.litellm_deployments(fleet, fleet.region_ids)
            ]
            router = {
                "routing_strategy": "usage-based-routing-v2",
                "redis_host": "127.0.0.1",
                "redis_port": redis.port,
                "num_retries": 2,
            }
            plans["litellm"] = [{**common_cfg, "litellm": {"model_list": model_list, "router": router}}] * replicas
        for v, cfgs in plans.items():
            rows[v] = _variant(cfgs, fleet, duration)
    finally:
        if redis is not None:
            redis.stop()
        fleet.stop()

    bars = []
    s = rows.get("shared")
    if s is not None:
        bars += [
            common.bar(
                "B8 (shared): upstream requests answered 429",
                f"≤ {BAR_429:.0%}",
                None if s["share_429"] is None else s["share_429"] * 100,
                None if s["share_429"] is None else s["share_429"] <= BAR_429,
                f"{s['upstream_429']} of {s['upstream_requests']}; failed {s['failed']}",
            ),
            common.bar(
                "B8 (shared): configured capacity used",
                f"≥ {BAR_USED:.0%}",
                None if s["capacity_used"] is None else s["capacity_used"] * 100,
                None if s["capacity_used"] is None else s["capacity_used"] >= BAR_USED,
                f"{s['tokens_admitted']:.0f} of {s['tokens_configured']:.0f} tokens (the quotas' rate over "
                f"{s['seconds']:.1f} s); {common.fmt((s['capacity_used_with_burst'] or 0) * 100)} % of that "
                "plus one burst per deployment",
            ),
        ]
    else:
        bars.append(common.bar("B8 shared", "—", None, None, "redis-server not installed"))
    bars += common.litellm_absent(use_litellm, why_not)
    result: dict[str, Any] = {
        "name": NAME,
        "title": TITLE,
        "quick": quick,
        "params": {
            "fleet": f"2 deployments in a separate process, each rpm {RPM:g}, tpm {TPM:g}, burst {BURST_S:g} s; "
            "ttft 5 ms",
            "replicas": replicas,
            "concurrency_per_replica": CONCURRENCY,
            "max_tokens": MAX_TOKENS,
            "duration_s": duration,
            "litellm": "usage-based-routing-v2, deployment rpm/tpm, shared Redis, num_retries 2"
            if use_litellm
            else why_not,
        },
        "results": rows,
        "bars": bars,
        "plots": [],
    }
    return common.finish(result, t_start)


def markdown(res: dict[str, Any]) -> str:
    rows = [
        (
            v,
            r["replicas"],
            r["logical_ok"],
            r["failed"],
            r["upstream_requests"],
            r["upstream_429"],
            "n/a" if r["share_429"] is None else f"{r['share_429'] * 100:.2f} %",
            "n/a" if r["capacity_used"] is None else f"{r['capacity_used'] * 100:.0f} %",
            "n/a" if r["capacity_used_with_burst"] is None else f"{r['capacity_used_with_burst'] * 100:.0f} %",
        )
        for v, r in res["results"].items()
    ]
    lines = [
        f"### {res['title']}",
        "",
        common.md_table(
            [
                "variant",
                "replicas",
                "answered",
                "failed",
                "upstream",
                "429s",
                "429 share",
                "capacity used",
                "of rate + burst",
            ],
            rows,
        ),
    ]
    return "\n".join(lines + common.markdown_tail(res))


def main() -> int:
    return common.main_for(NAME, run, markdown)


if __name__ == "__main__":
    raise SystemExit(main())
