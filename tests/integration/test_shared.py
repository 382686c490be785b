"""Shared health across app replicas, through a real redis-server.

Several replicas run as separate processes (``tests/integration/replica.py``) next
to this test process, which is a replica too; all drive the real openai SDK
against the simulated fleet. What each replica did is judged from its audit hook,
its transitions and its snapshot, and from what the fleet's servers received.
Every wait is a bounded poll of a state, never a sleep-and-hope.

Redis: ``LLM_MULTICLOUD_TEST_REDIS_URL`` (``.ci/run`` starts one); without it the
module starts its own ``redis-server`` on a free 127.0.0.1 port, and skips when
there is none. The Redis-outage test always starts its own server (it kills it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet

from .conftest import FAST, MODEL, Audit, chat_records
from .drive import PLACEHOLDER_KEY

redis = pytest.importorskip("redis", reason="redis-py is not installed: pip install 'llm-multicloud[redis]'")

ENV = "LLM_MULTICLOUD_TEST_REDIS_URL"
if not os.environ.get(ENV) and shutil.which("redis-server") is None:
    pytest.skip(
        f"shared-state tests need Redis: set {ENV}=redis://127.0.0.1:PORT/0 or install redis-server "
        "(apt-get install redis-server)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EU = {"x-llm-multicloud-residency": "EU"}
REFRESH = 0.25
TIMEOUT = 0.25
#: Scheduling slack on a loaded 2-core CI machine, on top of the staleness bound.
SLACK = 0.5


# -- Redis ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server of our own on 127.0.0.1 (no persistence), that a test may pause,
    kill and restart on the same port."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen([*cmd, "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10.0
        while not _pings(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}")
            time.sleep(0.02)
        return self

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGCONT)
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    url = os.environ.get(ENV)
    if url:
        yield url
        return
    srv = RedisServer().start()
    try:
        yield srv.url
    finally:
        srv.stop()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own: tests (and CI runs) never see each other's keys."""
    p = f"lmc-test:{uuid.uuid4().hex[:10]}"
    yield p
    with contextlib.suppress(Exception), redis.Redis.from_url(redis_url, socket_timeout=2) as r:
        keys = list(r.scan_iter(match=f"{p}:*"))
        if keys:
            r.delete(*keys)


# -- replicas -----------------------------------------------------------------------------
class ReplicaProc:
    """A replica process (see replica.py): one JSON command per line, one JSON reply."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.replica"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._id = 0
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._drain, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    def _drain(self, stream: IO[bytes]) -> None:
        for line in iter(stream.readline, b""):
            self._lines.put(line)
        self._lines.put(None)

    def _next(self, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise TimeoutError(f"replica {self.proc.pid} did not answer within {timeout} s") from None
            if line is None:
                raise RuntimeError(f"replica {self.proc.pid} exited with {self.proc.wait()}")
            with contextlib.suppress(ValueError):
                return json.loads(line)

    def wait_ready(self, timeout: float = 30.0) -> None:
        msg = self._next(timeout)
        assert msg.get("event") == "ready", msg

    def send(self, cmd: dict[str, Any]) -> int:
        """Send a command; its id, for :meth:`reply`."""
        self._id += 1
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({**cmd, "id": self._id}).encode() + b"\n")
        self.proc.stdin.flush()
        return self._id

    def reply(self, cid: int, timeout: float = 20.0) -> Any:
        """The reply to command ``cid`` (replies to earlier commands, say of a test that
        failed before reading them, are skipped)."""
        while True:
            msg = self._next(timeout)
            if msg.get("id") == cid:
                assert msg["ok"], msg.get("error")
                return msg["result"]

    def call(self, cmd: dict[str, Any], timeout: float = 20.0) -> Any:
        return self.reply(self.send(cmd), timeout)

    def snapshot(self) -> dict[str, Any]:
        result: dict[str, Any] = self.call({"cmd": "snapshot"})
        return result

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.send({"cmd": "quit"})
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._reader.join(2)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


Spawn = Callable[..., list[ReplicaProc]]


@contextlib.contextmanager
def replica_processes(n: int) -> Iterator[list[ReplicaProc]]:
    """``n`` replica processes, started in parallel (importing openai is what costs)
    and closed whatever happens."""
    procs = [ReplicaProc() for _ in range(n)]
    try:
        for p in procs:
            p.wait_ready()
        yield procs
    finally:
        for p in procs:
            p.close()


@pytest.fixture(scope="module")
def processes() -> Iterator[list[ReplicaProc]]:
    """Two replica processes for the whole module; each test configures the ones it needs."""
    with replica_processes(2) as procs:
        yield procs


@pytest.fixture
def spawn(processes: list[ReplicaProc]) -> Iterator[Spawn]:
    """Configure ``n`` replica processes as replicas with this catalog and policy; each
    is reset (its MultiCloud closed: nothing keeps running) after the test."""
    used: list[ReplicaProc] = []

    def start(catalog: dict[str, Any], policy: dict[str, Any], n: int = 1) -> list[ReplicaProc]:
        new = processes[len(used) : len(used) + n]
        assert len(new) == n, "not enough replica processes"
        for p in new:
            p.call({"cmd": "configure", "catalog": catalog, "policy": policy})
        used.extend(new)
        return new

    yield start
    for p in used:
        p.call({"cmd": "reset"})


# -- helpers -----------------------------------------------------------------------------
def _policy(url: str, prefix: str, strategy: str = "ordered", **state: Any) -> dict[str, Any]:
    return {
        "strategy": strategy,
        "probe": {"enabled": False},
        "hedge": {"enabled": False},
        "state": {"backend": "redis", "url": url, "prefix": prefix, "refresh_s": REFRESH, "timeout_s": TIMEOUT} | state,
    }


def _start(mc: lmc.MultiCloud) -> None:
    mc._portal()  # starts the shared-state loop now, as the first request would


def _eps(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in snap["endpoints"]}


def _wait(pred: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def _send(client: openai.OpenAI, n: int, headers: dict[str, str] | None = None) -> list[str]:
    out = []
    for i in range(n):
        r = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], extra_headers=headers or {}
        )
        r.parse()
        out.append(r.headers["x-llm-multicloud-endpoint"])
    return out


def _client(mc: lmc.MultiCloud) -> openai.OpenAI:
    return mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))


def _all_see(replicas: list[ReplicaProc], mc: lmc.MultiCloud, n: int) -> None:
    _wait(lambda: mc.snapshot()["shared_state"]["replicas"] == n, f"{n} replicas seen here")
    for r in replicas:
        _wait(lambda: r.snapshot()["shared_state"]["replicas"] == n, f"{n} replicas seen by each")  # noqa: B023


def _opened(transitions: list[dict[str, Any]], endpoint: str) -> list[dict[str, Any]]:
    return [t for t in transitions if t["endpoint"] == endpoint and t["new"] == "open"]


# -- tests ---------------------------------------------------------------------------------
def test_ejection_by_one_replica_steers_the_others_within_a_refresh(
    clean: Fleet, redis_url: str, prefix: str, spawn: Spawn
) -> None:
    cat = clean.catalog()
    policy = _policy(redis_url, prefix)
    a, b = spawn(cat, policy, n=2)
    audit = Audit()
    seen: list[lmc.Transition] = []
    with lmc.MultiCloud(cat, policy, on_attempt=audit, on_transition=seen.append) as c:
        _start(c)
        _all_see([a, b], c, 3)
        clean.set_fault("aws-euc1", mode="down")

        out = a.call({"cmd": "send", "n": 10, "headers": EU})
        assert out["errors"] == [] and set(out["served"]) == {"gcp-euw4"}
        (opened,) = _opened(a.call({"cmd": "transitions"}), "aws-euc1")

        # The others learn it, each by its own bounded poll...
        assert b.call({"cmd": "wait", "endpoint": "aws-euc1", "field": "state", "value": "open", "timeout": 5})["ok"]
        _wait(lambda: _eps(c.snapshot())["aws-euc1"]["state"] == "open", "ejection seen here")
        # ...within one refresh period (plus the Redis round trips), judged from the
        # transition times (CLOCK_MONOTONIC is system-wide).
        bound = c.snapshot()["shared_state"]["staleness_bound_s"]
        assert bound == pytest.approx(REFRESH + 2 * TIMEOUT)
        (b_open,) = _opened(b.call({"cmd": "transitions"}), "aws-euc1")
        (c_open,) = [t for t in seen if t.endpoint == "aws-euc1" and t.new == "open"]
        assert "another replica" in b_open["reason"] and "another replica" in c_open.reason
        assert 0 <= b_open["at"] - opened["at"] <= bound + SLACK
        assert 0 <= c_open.at - opened["at"] <= bound + SLACK
        entry = _eps(c.snapshot())["aws-euc1"]
        assert entry["reason"].startswith("shared: ") and entry["until"] > time.time()

        # ...and stop sending there without ever having sent a request there themselves.
        out = b.call({"cmd": "send", "n": 20, "headers": EU})
        assert out["errors"] == [] and set(out["served"]) == {"gcp-euw4"}
        assert _send(_client(c), 20, EU) == ["gcp-euw4"] * 20
        assert "aws-euc1" not in b.call({"cmd": "attempts"})
        assert audit.to("aws-euc1") == []


def test_429_retry_after_cools_the_quota_domain_on_every_replica_until_its_deadline(
    clean: Fleet, redis_url: str, prefix: str, spawn: Spawn
) -> None:
    cat = clean.catalog()
    for ep in cat["endpoints"]:
        if ep["id"] in ("aws-euc1", "aws-use1"):
            ep["quota_domain"] = "aws-account"
    policy = _policy(redis_url, prefix)
    (a,) = spawn(cat, policy)
    with lmc.MultiCloud(cat, policy) as c:
        _start(c)
        _all_see([a], c, 2)
        clean.set_fault("aws-euc1", mode="status", status=429, retry_after="2")
        out = a.call({"cmd": "send", "n": 1})
        assert out == {"served": ["gcp-euw4"], "errors": []}
        a_until = _eps(a.snapshot())["aws-euc1"]["until"]

        _wait(lambda: _eps(c.snapshot())["aws-euc1"]["state"] == "cooling", "cooldown seen here")
        eps = _eps(c.snapshot())
        assert eps["aws-euc1"]["until"] == pytest.approx(a_until, abs=0.5)  # same deadline
        assert eps["aws-use1"]["state"] == "cooling"  # the whole quota domain
        assert "429" in eps["aws-euc1"]["reason"]

        # In Redis: an absolute deadline that is also the key's TTL (PXAT)...
        key = f"{prefix}:v2:{{d:aws-account}}:cool"
        with redis.Redis.from_url(redis_url) as r:
            pttl = r.pttl(key)
            value = json.loads(r.get(key))
            assert 0 < pttl <= 2000 and value["v"] == 2 and value["until"] > 0
            assert set(value) == {"v", "until", "reason", "by"}
            # ...that only moves forward: a shorter deadline written the same way loses.
            from llm_multicloud.shared import _FORWARD_ONLY

            assert r.eval(_FORWARD_ONLY, 1, key, "300", '{"v":2,"reason":"short","by":"test"', "2") == 0
            assert json.loads(r.get(key)) == value and r.pttl(key) > 300

        assert _send(_client(c), 5) == ["gcp-euw4"] * 5  # kept away...
        counts = clean.counts()
        assert counts["aws-euc1"] == 1 and counts["aws-use1"] == 0  # one 429, seen by one replica
        clean.set_fault("aws-euc1", mode="none")
        _wait(lambda: _eps(c.snapshot())["aws-euc1"]["state"] != "cooling", "cooldown over", timeout=5)
        assert time.time() >= a_until - 0.05  # ...until that deadline, not before
        assert _send(_client(c), 1) == ["aws-euc1"]


def test_fresh_replica_adopts_latency_estimates_and_routes_well_at_once(
    clean: Fleet, redis_url: str, prefix: str, spawn: Spawn
) -> None:
    # 400 ms against 2 ms: a scheduling stall of a loaded machine (measured client-side,
    # as a real caller would) must not pass for the slow region's latency
    clean.set_latency("aws-euc1", ttft_ms=400, ttft_jitter=0.0)
    clean.set_latency("gcp-euw4", ttft_ms=2, ttft_jitter=0.0)
    cat = clean.catalog()
    policy = _policy(redis_url, prefix, strategy="latency")
    near = {**EU, "x-llm-multicloud-near": "eu-central-1"}
    (a,) = spawn(cat, policy)
    out = [a.call({"cmd": "send", "n": 4, "headers": {"x-llm-multicloud-residency": r}}) for r in ("DE", "NL")]
    assert [o["served"] for o in out] == [["aws-euc1"] * 4, ["gcp-euw4"] * 4]
    a_eps = _eps(a.snapshot())
    assert a_eps["aws-euc1"]["ttft_ms"] > 350 > 150 > a_eps["gcp-euw4"]["ttft_ms"]

    # Control: alone, a new replica near Frankfurt ranks by the geographic prior.
    with lmc.MultiCloud(cat, {**policy, "state": {"backend": "memory"}}) as alone:
        plan = alone.explain(MODEL, residency="EU", near="eu-central-1")
        assert plan.candidates[0].endpoint.id == "aws-euc1"

    audit = Audit()
    with lmc.MultiCloud(cat, policy, on_attempt=audit) as c:
        _start(c)
        _wait(
            lambda: all(_eps(c.snapshot())[e]["ttft_ms"] is not None for e in ("aws-euc1", "gcp-euw4")),
            "estimates adopted",
        )
        eps = _eps(c.snapshot())
        for e in ("aws-euc1", "gcp-euw4"):
            assert eps[e]["samples"] == 0  # not measured here: adopted
            assert eps[e]["ttft_ms"] == pytest.approx(a_eps[e]["ttft_ms"], rel=0.05)
        plan = c.explain(MODEL, residency="EU", near="eu-central-1")
        assert plan.candidates[0].endpoint.id == "gcp-euw4"
        assert _send(_client(c), 3, near) == ["gcp-euw4"] * 3
        assert audit.to("aws-euc1") == []
        # An adopted estimate is not published back as this replica's own.
        with redis.Redis.from_url(redis_url) as r:
            mine = json.loads(r.hget(f"{prefix}:v2:replicas", c._shared.id))
        assert "aws-euc1" not in mine["ttft"]


def test_max_concurrency_holds_across_replicas(clean: Fleet, redis_url: str, prefix: str, spawn: Spawn) -> None:
    clean.set_latency("aws-euc1", ttft_ms=2, ttft_jitter=0.0, itl_ms=1000)  # streams stay open
    cat = clean.catalog()
    for ep in cat["endpoints"]:
        if ep["id"] == "aws-euc1":
            ep["max_concurrency"] = 2
    policy = _policy(redis_url, prefix)
    a, b = spawn(cat, policy, n=2)
    held: list[Any] = []
    with lmc.MultiCloud(cat, policy) as c:
        _start(c)
        _all_see([a, b], c, 3)
        client = _client(c)
        try:
            # Replica A holds one slow stream on aws-euc1, this one holds another: the
            # limit of 2 is reached across replicas, each holding 1 < 2 itself.
            assert a.call({"cmd": "hold", "n": 1, "headers": EU})["served"] == ["aws-euc1"]
            _wait(lambda: _eps(c.snapshot())["aws-euc1"]["remote_in_flight"] == 1, "A's stream seen here")
            stream = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "long"}], stream=True, extra_headers=EU
            )
            held.append(stream)
            next(ch for ch in stream if ch.choices and ch.choices[0].delta.content)
            assert stream.response.headers["x-llm-multicloud-endpoint"] == "aws-euc1"

            # A third request, on any replica, goes elsewhere.
            for r in (a, b):
                assert r.call(
                    {"cmd": "wait", "endpoint": "aws-euc1", "field": "remote_in_flight", "value": 2 if r is b else 1}
                )["ok"]
            assert b.call({"cmd": "send", "n": 1, "headers": EU})["served"] == ["gcp-euw4"]
            assert a.call({"cmd": "send", "n": 1, "headers": EU})["served"] == ["gcp-euw4"]
            assert _send(client, 1, EU) == ["gcp-euw4"]
            assert clean.in_flight("aws-euc1") == 2
            assert len(chat_records(clean, "aws-euc1")) == 2
            plan = c.explain(MODEL, residency="EU")
            assert any(x.kind == "full" and "2/2" in x.reason for x in plan.excluded)
        finally:
            for s in held:
                s.close()
            a.call({"cmd": "release"})
        # Released: the shared count drops and aws-euc1 takes traffic again.
        clean.set_latency("aws-euc1", FAST)
        assert b.call({"cmd": "wait", "endpoint": "aws-euc1", "field": "remote_in_flight", "value": 0})["ok"]
        assert b.call({"cmd": "send", "n": 1, "headers": EU})["served"] == ["aws-euc1"]


def test_redis_slow_or_killed_costs_no_request_and_the_shared_view_resumes(
    clean: Fleet, spawn: Spawn, caplog: pytest.LogCaptureFixture
) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("this test kills and restarts its own redis-server: not on PATH")
    caplog.set_level(logging.INFO, logger="llm_multicloud.shared")
    srv = RedisServer().start()
    prefix = f"lmc-test:{uuid.uuid4().hex[:10]}"
    timeout = 0.5
    policy = _policy(srv.url, prefix, timeout_s=timeout)
    cat = clean.catalog()

    def logs(level: int) -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "llm_multicloud.shared" and r.levelno == level]

    def status(mc: lmc.MultiCloud) -> dict[str, Any]:
        result: dict[str, Any] = mc.snapshot()["shared_state"]
        return result

    try:
        (a,) = spawn(cat, policy)
        with lmc.MultiCloud(cat, policy) as c:
            _start(c)
            _all_see([a], c, 2)
            client = _client(c)
            _send(client, 2, EU)  # warm (first-request set-up is not what is measured below)

            # 1. Slow (stopped, connections hang): no request waits for it.
            srv.pause()
            took = []
            for _ in range(15):
                t0 = time.monotonic()
                _send(client, 1, EU)
                took.append(time.monotonic() - t0)
                time.sleep(0.02)
            _wait(lambda: status(c)["status"] == "degraded", "degraded while Redis hangs")
            assert max(took) < timeout  # nobody waited for a Redis timeout
            failed = status(c)["failed_rounds"]
            _wait(lambda: status(c)["failed_rounds"] >= failed + 2, "more failed rounds")
            assert len(logs(logging.WARNING)) == 1  # once, not once per round
            assert "TimeoutError" in status(c)["last_error"]
            # close() is prompt even while the loop hangs on the stopped Redis, and
            # nothing of it keeps running after.
            d = lmc.MultiCloud(cat, policy)
            _start(d)
            _wait(lambda: status(d)["failed_rounds"] >= 1, "a replica started while Redis hangs")
            t0 = time.monotonic()
            d.close()
            assert time.monotonic() - t0 < timeout
            assert d._shared is not None and d._shared._scope is None  # its loop has ended
            warned = len(logs(logging.WARNING))  # D's own warning included
            srv.resume()
            _wait(lambda: status(c)["status"] == "ok", "ok once Redis answers again")
            assert len(logs(logging.INFO)) == 1

            # 2. Killed mid-run, with traffic on both replicas: no failed request.
            background = a.send({"cmd": "send", "n": 40, "interval_s": 0.02, "headers": EU})
            srv.stop()
            served = []
            for _ in range(20):
                served += _send(client, 1, EU)
                time.sleep(0.02)
            _wait(lambda: status(c)["status"] == "degraded", "degraded once Redis is gone")
            failed = status(c)["failed_rounds"]
            _wait(lambda: status(c)["failed_rounds"] >= failed + 3, "more failed rounds")
            out = a.reply(background)
            assert out["errors"] == [] and len(out["served"]) == 40
            assert len(served) == 20
            assert len(logs(logging.WARNING)) == warned + 1  # one per outage
            assert status(c)["last_ok"] is not None
            assert all(e["remote_in_flight"] == 0 for e in c.snapshot()["endpoints"])
            _wait(lambda: a.snapshot()["shared_state"]["status"] == "degraded", "A degraded too")
            a_logs = a.call({"cmd": "logs"})
            assert [x["level"] for x in a_logs].count("WARNING") == 2

            # 3. Back on the same port (empty: no persistence): the shared view resumes.
            srv.start()
            _wait(lambda: status(c)["status"] == "ok", "ok again here")
            _wait(lambda: a.snapshot()["shared_state"]["status"] == "ok", "ok again in A")
            _all_see([a], c, 2)
            assert len(logs(logging.INFO)) == 2
            clean.set_fault("aws-euc1", mode="down")
            assert a.call({"cmd": "send", "n": 8, "headers": EU})["errors"] == []
            _wait(lambda: _eps(c.snapshot())["aws-euc1"]["state"] == "open", "an ejection shared again")
    finally:
        srv.stop()


def test_malformed_keys_are_ignored_with_one_warning_each(
    clean: Fleet, redis_url: str, prefix: str, spawn: Spawn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llm_multicloud.shared")
    p = f"{prefix}:v2"
    with redis.Redis.from_url(redis_url) as r:
        now_ms = int(r.time()[0]) * 1000
        far = str(now_ms + 60_000)
        bad = {
            f"{p}:{{d:endpoint:aws-euc1}}:eject:aws-euc1": b"{not json",
            f"{p}:{{d:endpoint:gcp-euw4}}:eject:gcp-euw4": json.dumps({"v": 2, "until": "soon", "reason": 5, "by": 1}),
            # another schema version
            f"{p}:{{d:endpoint:aws-euc1}}:cool": json.dumps({"v": 1, "until": now_ms + 60_000, "by": "y"}),
            f"{p}:{{d:endpoint:gcp-euw4}}:cool": b"\xff\xfe\x00",
            f"{p}:{{d:endpoint:aws-use1}}:cool": "[1, 2, 3]",
        }
        for k, v in bad.items():
            r.set(k, v, pxat=int(far))
        r.hset(f"{p}:replicas", "evil", json.dumps({"v": 2, "at": "yesterday", "ttl": 1}))
        r.hset(f"{p}:replicas", "binary", b"\x80\x81")
        r.hset(
            f"{p}:replicas",
            "confused",
            json.dumps(
                {
                    "v": 2,
                    "at": now_ms + 30_000,
                    "ttl": 60_000,
                    "inflight": {"aws-euc1": "lots", "gcp-euw4": -5, "nowhere": 3},
                    "ttft": {"aws-euc1": ["x", 1, 2], "gcp-euw4": [1, 2]},
                }
            ),
        )
    cat = clean.catalog()
    policy = _policy(redis_url, prefix)
    (a,) = spawn(cat, policy)
    with lmc.MultiCloud(cat, policy) as c:
        _start(c)
        _wait(lambda: c.snapshot()["shared_state"]["rounds"] >= 5, "a few rounds over bad data")
        shared = c.snapshot()["shared_state"]
        assert shared["status"] == "ok" and shared["replicas"] == 3  # A, this one, and "confused"
        warned = [m for r in caplog.records if "ignoring Redis key" in (m := r.getMessage())]
        bad_keys = [*bad, *(f"{p}:replicas[{f}]" for f in ("evil", "binary", "confused"))]
        for k in bad_keys:
            assert sum(f"key {k}:" in m for m in warned) == 1, (k, warned)  # once per key
        assert len(warned) == len(bad_keys)
        eps = _eps(c.snapshot())
        assert eps["aws-euc1"]["state"] == "closed" and eps["gcp-euw4"]["state"] == "closed"
        assert all(e["remote_in_flight"] == 0 and e["ttft_ms"] is None for e in eps.values())
        # Routing is unaffected, here and in the other process.
        assert _send(_client(c), 3, EU) == ["aws-euc1"] * 3
        assert a.call({"cmd": "send", "n": 3, "headers": EU}) == {"served": ["aws-euc1"] * 3, "errors": []}
        assert a.snapshot()["shared_state"]["status"] == "ok"
        assert sum("ignoring Redis key" in x["message"] for x in a.call({"cmd": "logs"})) == len(bad_keys)
        # A good fact replaces the garbage and is shared as usual.
        clean.set_fault("aws-euc1", mode="down")
        assert a.call({"cmd": "send", "n": 8, "headers": EU})["errors"] == []
        _wait(lambda: _eps(c.snapshot())["aws-euc1"]["state"] == "open", "the ejection shared over garbage")
