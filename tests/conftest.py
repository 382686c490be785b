"""Suite-wide collection rule: ``tests/engines`` needs real llama.cpp servers, so a
plain ``pytest`` leaves it out; ``nox -s engines`` (or ``pytest tests/engines``) runs it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_ENGINES = Path(__file__).parent / "engines"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path != _ENGINES:
        return None
    if os.environ.get("LLM_MULTICLOUD_ENGINES"):
        return False
    named = any(Path(str(a).split("::")[0]).resolve().is_relative_to(_ENGINES) for a in config.args)
    return not named
