"""An app replica in its own process, for the shared-state tests.

``python -m tests.integration.replica`` prints ``{"event": "ready"}`` and then
serves one JSON command per stdin line, one JSON reply per stdout line. The
process outlives one test (importing openai is what costs): ``configure`` builds a
MultiCloud from ``{"catalog": ..., "policy": ...}`` (backend redis), wraps a real
``openai.OpenAI`` client and starts the shared-state loop at once (what the first
request would do); ``reset`` closes it. Then:

* ``load``: ``concurrency`` threads sending chat requests for ``duration_s``;
* ``send``: ``n`` chat requests (``headers``, ``interval_s``) → endpoints served, errors;
* ``hold`` / ``release``: open ``n`` streams and keep them open after the first
  content chunk (in flight) / close them;
* ``drain`` / ``undrain`` (``endpoint``, ``reason``), ``update_catalog`` (``catalog``);
* ``snapshot``, ``transitions`` (breaker/cooldown transitions with their monotonic
  time: CLOCK_MONOTONIC is system-wide on Linux, so comparable across processes),
  ``attempts`` (the audit hook: endpoint of every attempt), ``logs`` (records of
  ``llm_multicloud.shared``);
* ``wait``: poll the snapshot until an endpoint field has a value (bounded);
* ``quit``.

It exits when stdin closes, so a crashed test never leaves it behind.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import openai

import llm_multicloud as lmc

MODEL = "llama-3.1-8b"


class _Logs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"level": record.levelname, "message": record.getMessage()})


class Replica:
    def __init__(self, config: dict[str, Any]) -> None:
        self.attempts: list[str] = []
        self.transitions: list[dict[str, Any]] = []
        self.mc = lmc.MultiCloud(
            config["catalog"],
            config["policy"],
            on_attempt=lambda r: self.attempts.append(r.endpoint),
            on_transition=lambda t: self.transitions.append(
                {"endpoint": t.endpoint, "old": t.old, "new": t.new, "reason": t.reason, "at": t.at}
            ),
        )
        self.client = self.mc.wrap(openai.OpenAI(api_key="sk-placeholder-never-sent"))
        self.held: list[Any] = []
        self.mc._portal()  # starts the shared-state loop, as the first request would

    def handle(self, cmd: dict[str, Any]) -> Any:
        op = cmd["cmd"]
        if op == "send":
            served: list[str] = []
            errors: list[str] = []
            for i in range(int(cmd.get("n", 1))):
                try:
                    r = self.client.chat.completions.with_raw_response.create(
                        model=MODEL,
                        messages=[{"role": "user", "content": f"q{i}"}],
                        extra_headers=cmd.get("headers") or {},
                    )
                    r.parse()
                    served.append(r.headers["x-llm-multicloud-endpoint"])
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                if cmd.get("interval_s"):
                    time.sleep(float(cmd["interval_s"]))
            return {"served": served, "errors": errors}
        if op == "load":
            return self._load(cmd)
        if op == "hold":
            served = []
            for _ in range(int(cmd.get("n", 1))):
                stream = self.client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": "a long answer please"}],
                    stream=True,
                    extra_headers=cmd.get("headers") or {},
                )
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        break
                self.held.append(stream)
                served.append(stream.response.headers["x-llm-multicloud-endpoint"])
            return {"served": served}
        if op == "release":
            for s in self.held:
                s.close()
            n = len(self.held)
            self.held.clear()
            return {"released": n}
        if op == "drain":
            return self.mc.drain(cmd["endpoint"], reason=cmd["reason"])
        if op == "undrain":
            return self.mc.undrain(cmd["endpoint"])
        if op == "update_catalog":
            return self.mc.update_catalog(cmd["catalog"]).version
        if op == "snapshot":
            return self.mc.snapshot()
        if op == "transitions":
            return self.transitions
        if op == "attempts":
            return self.attempts
        if op == "logs":
            return _LOGS.records
        if op == "wait":
            deadline = time.monotonic() + float(cmd.get("timeout", 5.0))
            while True:
                eps = {e["id"]: e for e in self.mc.snapshot()["endpoints"]}
                # A state is set before its transition reaches the hooks (on the
                # background loop): for a state, wait for the transition record too.
                recorded = cmd["field"] != "state" or any(
                    t["endpoint"] == cmd["endpoint"] and t["new"] == cmd["value"] for t in self.transitions
                )
                if eps[cmd["endpoint"]][cmd["field"]] == cmd["value"] and recorded:
                    return {"ok": True, "at": time.monotonic()}
                if time.monotonic() >= deadline:
                    return {"ok": False, "entry": eps[cmd["endpoint"]]}
                time.sleep(0.005)
        raise ValueError(f"unknown command {op!r}")

    def _load(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """``concurrency`` threads send chat requests for ``duration_s``: counts, tokens."""
        import threading
        from concurrent.futures import ThreadPoolExecutor

        until = time.monotonic() + float(cmd["duration_s"])
        out: dict[str, Any] = {"ok": 0, "errors": 0, "tokens": 0, "first_errors": []}
        lock = threading.Lock()

        def worker(w: int) -> None:
            i = 0
            while time.monotonic() < until:
                i += 1
                try:
                    r = self.client.chat.completions.create(
                        model=MODEL, messages=[{"role": "user", "content": f"w{w} q{i}"}], max_tokens=cmd["max_tokens"]
                    )
                    with lock:
                        out["ok"] += 1
                        out["tokens"] += r.usage.total_tokens if r.usage else 0
                except Exception as exc:
                    with lock:
                        out["errors"] += 1
                        if len(out["first_errors"]) < 3:
                            out["first_errors"].append(f"{type(exc).__name__}: {exc}")

        with ThreadPoolExecutor(int(cmd["concurrency"])) as pool:
            list(pool.map(worker, range(int(cmd["concurrency"]))))
        out["shared_state"] = self.mc.snapshot()["shared_state"]
        out["limits"] = self.mc.snapshot()["limits"]
        return out

    def close(self) -> None:
        for s in self.held:
            s.close()
        self.held.clear()
        self.mc.close()


_LOGS = _Logs()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="replica %(process)d %(name)s: %(message)s")
    shared = logging.getLogger("llm_multicloud.shared")
    shared.setLevel(logging.INFO)
    shared.addHandler(_LOGS)
    rep: Replica | None = None
    print(json.dumps({"event": "ready"}), flush=True)
    try:
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["cmd"] == "quit":
                break
            reply: dict[str, Any]
            try:
                if cmd["cmd"] == "configure":
                    if rep is not None:
                        rep.close()
                    _LOGS.records.clear()
                    rep = Replica(cmd)
                    result: Any = {"replica_id": rep.mc._shared.id if rep.mc._shared else None}
                elif cmd["cmd"] == "reset":
                    if rep is not None:
                        rep.close()
                    rep = None
                    result = None
                elif rep is None:
                    raise RuntimeError("not configured")
                else:
                    result = rep.handle(cmd)
                reply = {"ok": True, "result": result}
            except Exception as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            reply["id"] = cmd.get("id")
            print(json.dumps(reply, default=str), flush=True)
    finally:
        if rep is not None:
            rep.close()


if __name__ == "__main__":
    main()
