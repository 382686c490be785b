"""The command line: status, explain, validate, fleet and the demo, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_multicloud.fleet import Fleet

pytestmark = pytest.mark.integration


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_multicloud.cli", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def catalog_file(clean: Fleet, tmp_path: Path) -> Path:
    p = tmp_path / "catalog.yaml"
    p.write_text(yaml.safe_dump(clean.catalog()))
    return p


def test_status_probes_every_endpoint(clean: Fleet, catalog_file: Path) -> None:
    clean.set_fault("azure-jpe", mode="down")
    clean.set_models("gcp-euw4", {"embed-small": "gcp-euw4-embed"})
    r = run("status", str(catalog_file), "--json")
    assert r.returncode == 1  # not everything is up
    rows = {row["id"]: row for row in json.loads(r.stdout)}
    assert rows["aws-euc1"]["state"] == "up" and rows["aws-euc1"]["rtt_ms"] > 0
    assert rows["aws-euc1"]["residency"].split(",")[:1] == ["DE"]
    assert rows["azure-jpe"]["state"] == "down" and "connect" in rows["azure-jpe"]["error"]
    assert rows["gcp-euw4"]["models"]["llama-3.1-8b"] is False  # no longer listed
    assert rows["aws-use1"]["price_per_mtok"].startswith("$")
    # each probe carried its own endpoint's key
    probes = [x for x in clean.received() if x.path.endswith("/models")]
    assert {p.region_id for p in probes} == {"aws-euc1", "gcp-euw4", "aws-use1"}
    assert all(p.headers["authorization"] == f"Bearer sk-{p.region_id}-secret" for p in probes)
    table = run("status", str(catalog_file)).stdout
    assert "azure-jpe" in table and "down" in table and "(not listed)" in table
    assert "sk-" not in table  # keys never printed


def test_explain_prints_the_plan_with_reasons(catalog_file: Path) -> None:
    r = run("explain", str(catalog_file), "--model", "llama-3.1-8b", "--residency", "EU", "--near", "eu-west-1")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "residency EU" in out and "near eu-west-1" in out
    assert "aws-use1 (aws us-east-1): excluded: outside residency EU (in US)" in out
    j = json.loads(run("explain", str(catalog_file), "--model", "llama-3.1-8b", "--json").stdout)
    assert {c["endpoint"] for c in j["candidates"]} == {"aws-euc1", "gcp-euw4", "aws-use1", "azure-jpe"}
    bad = run("explain", str(catalog_file), "--model", "nope")
    assert bad.returncode == 2 and "unknown model 'nope'" in bad.stderr


def test_validate_reports_what_to_fix(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("endpoints:\n  - {id: x, provider: aws, region: us-est-1, base_url: 'ftp://h', models: {m: m}}\n")
    r = run("validate", str(p))
    assert r.returncode == 2
    assert "us-est-1" in r.stderr and "us-east-1" in r.stderr and "base_url" in r.stderr


def test_fleet_command_runs_a_rehearsal_fleet(tmp_path: Path) -> None:
    spec = tmp_path / "fleet.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"regions": [{"id": "r1", "provider": "aws", "region": "us-east-1", "models": {"m": "M"}, "api_key": "k1"}]}
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_multicloud.cli", "fleet", str(spec), "--json"],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        ready = json.loads(line)
        assert "r1" in json.dumps(ready)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_demo_runs_and_shows_failover_without_credentials() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "llm_multicloud.cli", "demo", "--requests", "9"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    out = r.stdout
    assert "Phase 2" in out and "goes down" in out
    assert "failed requests: 0" in out and "sent outside the EU: 0" in out
