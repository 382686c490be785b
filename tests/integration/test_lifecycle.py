"""Lifecycle: a process that uses the library always exits, nothing on the library's
own loop thread waits for that loop, and async clients work across event loops.

The exit tests run real scripts (tests/integration/exit_script.py) in subprocesses
with a timeout, against the fleet of this test session, and read their exit code
and stderr: no hang, no traceback, no "Task exception was never retrieved".
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet

from .conftest import MODEL, make_mc
from .drive import PLACEHOLDER_KEY
from .test_sync_direct import Suspending

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("exit_script.py")
MSG = [{"role": "user", "content": "hi"}]

#: (kind, stream, probes, shared state, close) — every dimension, not every product.
SCENARIOS = [
    *[("sync", s, p, "off", "no") for s in ("none", "unread", "half") for p in ("off", "on")],
    ("sync", "gc", "off", "off", "no"),  # issue 12.1: collected on the loop's own thread
    ("sync", "unread", "on", "on", "no"),
    ("sync", "half", "off", "off", "yes"),
    *[("async", s, "off", "off", "no") for s in ("none", "unread", "half")],
    ("async", "half", "on", "off", "no"),
    ("async", "none", "off", "on", "no"),
    ("async-twice", "unread", "on", "off", "no"),
    ("httpx", "unread", "off", "off", "no"),
    ("httpx", "half", "on", "off", "no"),
    ("fork", "none", "off", "off", "no"),
]

#: The one line a script may print on stderr: the shared-state task's warning that
#: the (deliberately unreachable) Redis is down. Anything else is noise.
ALLOWED = ("shared state: Redis at",)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _run_script(sc: tuple[str, ...], catalog: str, redis_url: str) -> str | None:
    """Run one scenario; what is wrong with it, or None."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), catalog, *sc, redis_url],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Generous: a loaded CI machine imports slowly. A hang at exit never ends.
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        where = "at exit" if "script done" in out else "before the end of the script"
        return f"{sc}: hung {where} (killed after 300 s); stderr: {err[-500:]}"
    noise = [line for line in err.splitlines() if line.strip() and not line.startswith(ALLOWED)]
    if proc.returncode != 0 or "script done" not in out or noise:
        return f"{sc}: exit code {proc.returncode}, stdout {out[-200:]!r}, stderr:\n{err[-1500:]}"
    return None


def test_every_script_exits_promptly_and_silently(clean: Fleet) -> None:
    catalog = json.dumps(clean.catalog())
    redis_url = f"redis://127.0.0.1:{_closed_port()}/0"
    with ThreadPoolExecutor(max_workers=4) as pool:  # bounded: the machine has few cores
        results = list(pool.map(lambda sc: _run_script(sc, catalog, redis_url), SCENARIOS))
    problems = [r for r in results if r is not None]
    assert not problems, "\n".join(problems)


def _bounded(fn: Any, timeout: float = 30.0) -> Any:
    """Run ``fn`` in a daemon thread and fail (instead of hanging the suite) if it
    does not return within ``timeout``."""
    out: list[Any] = []
    t = threading.Thread(target=lambda: out.append(_outcome(fn)), daemon=True)
    t.start()
    t.join(timeout)
    assert out, f"{fn} did not return within {timeout} s (deadlock)"
    kind, value = out[0]
    if kind == "error":
        raise value
    return value


def _outcome(fn: Any) -> tuple[str, Any]:
    try:
        return "ok", fn()
    except BaseException as exc:
        return "error", exc


def test_run_sync_refuses_the_loop_thread(mc: lmc.MultiCloud) -> None:
    """A blocking call into the loop from the loop's own thread would wait for itself
    for ever: it is refused with a clear error, and the MultiCloud keeps working."""

    async def inner() -> int:
        return 1

    async def outer() -> int:
        return mc.run_sync(inner)

    with pytest.raises(RuntimeError, match="own thread"):
        _bounded(lambda: mc.run_sync(outer))
    assert _bounded(lambda: mc.run_sync(inner)) == 1


def test_a_hook_that_makes_a_sync_request_does_not_freeze_the_multicloud(clean: Fleet) -> None:
    """A sync request that needs no loop runs on its caller's thread, and so do its
    hooks: a request made from one simply runs (nested, on the same thread) — also
    one that may hedge (the thread race). A request that needed the loop (a
    credential that suspends) runs its hooks on the loop's thread: a sync request
    made from one is refused (the hook sees the error), and the outer one completes."""
    seen: list[BaseException | str] = []
    entered: list[bool] = []

    def hook(rec: lmc.AttemptRecord) -> None:
        if entered:
            return  # once: the nested request's own hook must not recurse
        entered.append(True)
        try:
            r = client.chat.completions.create(model=MODEL, messages=MSG)
            seen.append(r.choices[0].message.content or "")
        except Exception as exc:
            seen.append(exc)

    def ask() -> Any:
        return client.chat.completions.create(model=MODEL, messages=MSG)

    for policy in ({}, {"hedge": {"enabled": True, "budget": 1.0}}):
        seen.clear()
        entered.clear()
        with make_mc(clean, policy, on_attempt=hook) as mc:
            client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
            assert _bounded(ask).choices[0].message.content
            assert len(seen) == 1 and isinstance(seen[0], str) and seen[0]
    seen.clear()
    entered.clear()
    cat = clean.catalog()
    for e in cat["endpoints"]:
        e["auth"] = Suspending(e.pop("api_key"), lie=False)
    with lmc.MultiCloud(cat, {"probe": {"enabled": False}}, on_attempt=hook) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        r = _bounded(lambda: client.chat.completions.create(model=MODEL, messages=MSG))
        assert r.choices[0].message.content
        assert seen and isinstance(seen[0], BaseException)
        assert "own thread" in repr(seen[0].__cause__ or seen[0])


async def _requests(client: openai.AsyncOpenAI, n: int) -> list[str]:
    served = []
    for i in range(n):
        if i % 2:
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=[{"role": "user", "content": f"q{i}"}]
            )
            served.append(raw.headers["x-llm-multicloud-endpoint"])
        else:
            stream = await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"q{i}"}], stream=True
            )
            chunks = [c async for c in stream]
            served.append(chunks[0].id and stream.response.headers["x-llm-multicloud-endpoint"])
    return served


def test_an_async_client_survives_several_asyncio_run_calls(clean: Fleet) -> None:
    """Every sync web framework that calls async code with asyncio.run() does this:
    the pool of the first loop must not be reused on the second (it would raise
    "Event loop is closed" and penalise endpoints)."""
    with make_mc(clean) as mc:
        client = mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY))
        served = [ep for _ in range(4) for ep in asyncio.run(_requests(client, 6))]
        assert served == ["aws-euc1"] * 24  # ordered: the first endpoint, every time
        assert {e["id"]: e["failures"] for e in mc.snapshot()["endpoints"]} == dict.fromkeys(clean.region_ids, 0)
    assert len([r for r in clean.received() if r.outcome == "ok"]) == 24


def test_an_async_client_works_from_loops_in_several_threads(clean: Fleet) -> None:
    with make_mc(clean) as mc:
        client = mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY))
        results: list[list[str]] = []
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                for _ in range(2):
                    results.append(asyncio.run(_requests(client, 6)))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors
        assert sorted(ep for r in results for ep in r) == ["aws-euc1"] * 48
        assert all(e["failures"] == 0 for e in mc.snapshot()["endpoints"])
    assert len([r for r in clean.received() if r.outcome == "ok"]) == 48
