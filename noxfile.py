"""Developer tasks. `nox -s tests` runs the suite once per openai line:
openai 3.x (httpx2) and the last openai 2.x (legacy httpx)."""

from __future__ import annotations

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
