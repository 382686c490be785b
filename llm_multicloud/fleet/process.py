"""A fleet in a separate process, driven over its HTTP control API.

Benchmarks measure a client library's added overhead (~0.1 ms); with the
servers in the same process they would share the GIL with the client under
test and pollute the measurement. ``start_fleet_process`` runs
``python -m llm_multicloud.fleet CONFIG --json`` and returns a handle with the
same surface as the in-process :class:`~llm_multicloud.fleet.Fleet`.

Only the stdlib is used on this side (urllib with proxies disabled: an
``HTTP_PROXY`` in the environment must not capture loopback control calls).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Self

from .fleet import FleetBase, _build_fault, _build_latency, _coerce_spec
from .records import Received
from .spec import Fault, FleetSpec, Latency, RegionSpec

__all__ = ["FleetProcess", "start_fleet_process"]

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory that contains llm_multicloud/


class FleetProcess(FleetBase):
    """Handle on a fleet running in a child process (see :func:`start_fleet_process`)."""

    def __init__(
        self,
        spec: FleetSpec,
        proc: subprocess.Popen[bytes],
        ready: dict[str, Any],
        reader: threading.Thread | None = None,
    ) -> None:
        self.spec = spec
        self.proc = proc
        self._reader = reader
        self.control_url: str = ready["control_url"]
        self._ports: dict[str, int] = {rid: int(r["port"]) for rid, r in ready["regions"].items()}
        self._urls: dict[str, str] = {rid: str(r["url"]) for rid, r in ready["regions"].items()}

    @property
    def pid(self) -> int:
        return self.proc.pid

    def port(self, region_id: str) -> int:
        try:
            return self._ports[region_id]
        except KeyError:
            raise KeyError(f"unknown region {region_id!r}; known: {list(self._ports)}") from None

    def url(self, region_id: str) -> str:
        self.port(region_id)
        return self._urls[region_id]

    # -- HTTP control ---------------------------------------------------------------------

    def _call(self, method: str, path: str, *, region: str | None = None, body: Any = None) -> Any:
        query = f"?{urllib.parse.urlencode({'region': region})}" if region is not None else ""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.control_url}/_fleet/{path}{query}",
            data=data,
            method=method,
            headers={"content-type": "application/json"} if data is not None else {},
        )
        try:
            with _OPENER.open(request, timeout=10.0) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise RuntimeError(f"fleet control {method} {path} failed: {exc.code} {detail}") from None

    def state(self, region_id: str | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "state", region=region_id)["regions"]
        return result[region_id] if region_id is not None else result

    def set_fault(self, region_id: str, fault: Fault | None = None, **kw: Any) -> None:
        self.port(region_id)
        self._call("POST", "fault", region=region_id, body=_build_fault(fault, kw).model_dump())

    def set_latency(self, region_id: str, latency: Latency | None = None, **kw: Any) -> None:
        self.port(region_id)
        self._call("POST", "latency", region=region_id, body=_build_latency(latency, kw).model_dump())

    def set_models(self, region_id: str, models: dict[str, str]) -> None:
        self._call("POST", "models", region=region_id, body={"models": dict(models)})

    def set_waiting(self, region_id: str, n: int) -> None:
        self._call("POST", "waiting", region=region_id, body={"n": n})

    def received(self, region_id: str | None = None) -> list[Received]:
        records = self._call("GET", "log", region=region_id)["records"]
        return [Received.from_dict(r) for r in records]

    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self._call("GET", "counts").items()}

    def clear(self) -> None:
        self._call("POST", "reset", body={"config": False})

    def reset(self) -> None:
        self._call("POST", "reset", body={"config": True})

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        """Already started by :func:`start_fleet_process`; present for the shared context-manager API."""
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the child to exit (stdin EOF, then SIGTERM, then SIGKILL). Idempotent."""
        proc = self.proc
        if proc.poll() is None and proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
        _close_pipes(proc, self._reader)


def _close_pipes(proc: subprocess.Popen[bytes], reader: threading.Thread | None) -> None:
    # The child is gone, so the reader thread hits EOF at once; join it before
    # closing the pipe it reads, then close ours (no ResourceWarning later).
    if reader is not None:
        reader.join(2.0)
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def _drain(stream: IO[bytes], lines: queue.Queue[bytes | None]) -> None:
    # Keeps reading after "ready" so the child never blocks on a full stdout pipe.
    for line in iter(stream.readline, b""):
        lines.put(line)
    lines.put(None)


def start_fleet_process(
    spec: FleetSpec | Sequence[RegionSpec | dict[str, Any]],
    *,
    timeout: float = 30.0,
    python: str | None = None,
    env: dict[str, str] | None = None,
) -> FleetProcess:
    """Start a fleet in a child Python process and return once every region accepts.

    ``python`` defaults to this interpreter. The child gets this package's
    source directory prepended to ``PYTHONPATH`` so it works from a checkout
    without installation. The child exits when the handle is stopped or when
    this process dies (it watches its stdin for EOF).
    """
    fleet_spec = _coerce_spec(spec)
    fd, path = tempfile.mkstemp(prefix="llm-multicloud-fleet-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(fleet_spec.model_dump_json())
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), child_env.get("PYTHONPATH", "")) if p)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [python or sys.executable, "-m", "llm_multicloud.fleet", path, "--json", "--exit-on-stdin-eof"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env)
    assert proc.stdout is not None
    lines: queue.Queue[bytes | None] = queue.Queue()
    reader = threading.Thread(target=_drain, args=(proc.stdout, lines), name="fleet-stdout", daemon=True)
    reader.start()
    handle: FleetProcess | None = None
    try:
        deadline = time.monotonic() + timeout
        while handle is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"fleet process did not become ready within {timeout} s")
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                code = proc.wait()
                raise RuntimeError(f"fleet process exited with code {code} before it was ready (see its stderr)")
            try:
                info = json.loads(line)
            except ValueError:
                continue
            if isinstance(info, dict) and info.get("event") == "ready":
                handle = FleetProcess(fleet_spec, proc, info, reader)
        return handle
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _close_pipes(proc, reader)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
