"""examples/engine_check.py — the check a user runs against their own engines — run
against the real llama.cpp servers, as a user would, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import catalog
from .harness import MODEL

pytestmark = pytest.mark.engines
ROOT = Path(__file__).resolve().parents[2]


def test_engine_check_against_real_engines(suite: dict[str, Any], tmp_path: Path) -> None:
    fast, slow = suite["aws-euc1-llama"], suite["gcp-euw4-llama"]
    p = tmp_path / "catalog.yaml"
    p.write_text(yaml.safe_dump(catalog(fast.catalog_entry(), slow.catalog_entry())))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run(
        [sys.executable, "examples/engine_check.py", str(p), "--model", MODEL],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    blocks = r.stdout.split("\n" + "gcp-euw4-llama")
    aws, gcp = blocks[0], blocks[1]
    for block in (aws, gcp):
        for check in ("chat sync", "chat sync stream", "chat async", "chat async stream", "usage (plain)"):
            assert f"  {check:<18} ok" in block, block
        assert f"  {'completions':<18} ok" in block  # llama.cpp serves /v1/completions
        assert f"  {'usage (stream)':<18} none: cost estimated" in block  # no usage chunk in its streams
    assert "lists the served name" in aws
    assert "warning: lists" in gcp and slow.gguf.name in gcp  # no alias: it lists its file
    assert r.stdout.rstrip().endswith("all chat checks passed")
