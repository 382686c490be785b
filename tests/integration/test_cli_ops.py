"""The command line as an operator and a CI job use it: inference smoke tests, whole
errors, quiet pipes, offline validation, --version, python -m, explain's verdict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import llm_multicloud as lmc
from llm_multicloud.cli import main
from llm_multicloud.fleet import Fleet

from .conftest import chat_records

pytestmark = pytest.mark.integration


def run(*args: str, module: str = "llm_multicloud.cli", env: dict[str, str] | None = None) -> Any:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.fixture
def catalog_file(clean: Fleet, tmp_path: Path) -> Path:
    p = tmp_path / "catalog.yaml"
    p.write_text(yaml.safe_dump(clean.catalog(policy={"timeouts": {"first_token_s": 1.0, "connect_s": 1.0}})))
    return p


def test_status_smoke_reports_inference_health_not_only_models(clean: Fleet, catalog_file: Path) -> None:
    # /models answers everywhere; inference fails on two endpoints.
    clean.set_fault("gcp-euw4", mode="status", status=503)
    clean.set_fault("azure-jpe", mode="hang")
    r = run("status", str(catalog_file), "--smoke", "--model", "llama-3.1-8b", "--json")
    assert r.returncode == 1, r.stderr
    rows = {row["id"]: row for row in json.loads(r.stdout)}
    assert rows["aws-euc1"]["state"] == "up" and rows["aws-euc1"]["inference"]["ok"] is True
    assert rows["gcp-euw4"]["error"] is None  # the probe alone would call it up
    assert rows["gcp-euw4"]["state"] == "down"
    assert rows["gcp-euw4"]["inference"]["error"] == (
        "HTTP 503: The server is overloaded or not ready yet. (simulated by fleet region gcp-euw4)"
    )
    assert rows["azure-jpe"]["state"] == "down"
    assert "no answer within 2s" in rows["azure-jpe"]["inference"]["error"]
    # one one-token request per endpoint, each with its own key and served name
    for rid in ("aws-euc1", "gcp-euw4", "aws-use1"):
        (rec,) = chat_records(clean, rid)
        assert rec.json["max_tokens"] == 1 and rec.headers["authorization"] == f"Bearer sk-{rid}-secret"
        assert (
            rec.json["model"]
            == clean.catalog()["endpoints"][["aws-euc1", "gcp-euw4", "aws-use1"].index(rid)]["models"]["llama-3.1-8b"]
        )

    # the table: errors in full under it, no key anywhere
    clean.clear()
    t = run("status", str(catalog_file), "--smoke", "--model", "llama-3.1-8b")
    assert t.returncode == 1
    assert (
        "gcp-euw4: inference: HTTP 503: The server is overloaded or not ready yet. (simulated by fleet region gcp-euw4)"
    ) in t.stdout
    assert "ok " in t.stdout and "failed" in t.stdout and "sk-" not in t.stdout
    bad = run("status", str(catalog_file), "--smoke", "--model", "nope")
    assert bad.returncode == 2 and "--model 'nope': not in the catalog" in bad.stderr


def test_probe_errors_are_shown_whole(clean: Fleet, catalog_file: Path) -> None:
    clean.set_fault("azure-jpe", mode="down")
    r = run("status", str(catalog_file))
    line = next(x for x in r.stdout.splitlines() if x.startswith("azure-jpe: /models probe:"))
    assert line.endswith(("All connection attempts failed", "Connection refused")) or "connect" in line
    rows = {row["id"]: row for row in json.loads(run("status", str(catalog_file), "--json").stdout)}
    assert line == f"azure-jpe: /models probe: {rows['azure-jpe']['error']}"


def _big_catalog(path: Path, n: int = 600) -> Path:
    eps = [
        {
            "id": f"ep{i}",
            "provider": "aws",
            "region": "us-east-1",
            "base_url": "http://127.0.0.1:9/v1",  # discard port: refused at once
            "models": ["m"],
        }
        for i in range(n)
    ]
    path.write_text(yaml.safe_dump({"endpoints": eps, "policy": {"probe": {"timeout_s": 2}}}))
    return path


@pytest.mark.parametrize("cmd", ["explain", "status"])
def test_json_piped_into_head_exits_quietly(tmp_path: Path, cmd: str) -> None:
    cat = _big_catalog(tmp_path / "big.yaml")
    args = ["explain", str(cat), "--model", "m", "--json"] if cmd == "explain" else ["status", str(cat), "--json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_multicloud", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # what `| head -1` reads before it goes away
    proc.stdout.close()
    err = proc.stderr.read().decode()
    rc = proc.wait(timeout=60)
    assert first.strip() in (b"{", b"[")
    assert err == ""  # no BrokenPipeError traceback, no "Exception ignored"
    assert rc == (0 if cmd == "explain" else 1)  # the command's own verdict (status: all down)


def test_validate_offline_needs_no_secrets(tmp_path: Path) -> None:
    cat = tmp_path / "catalog.yaml"
    cat.write_text(
        yaml.safe_dump(
            {
                "endpoints": [
                    {
                        "id": "a",
                        "provider": "aws",
                        "region": "eu-central-1",
                        "base_url": "https://a.example.invalid/v1",
                        "api_key_env": "LMC_TEST_UNSET_KEY_A",
                        "models": ["m"],
                    },
                    {
                        "id": "b",
                        "provider": "gcp",
                        "region": "europe-west4",
                        "base_url": "https://b.example.invalid/v1",
                        "api_key_env": "LMC_TEST_UNSET_KEY_B",
                        "models": ["m"],
                    },
                ]
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMC_TEST_")}
    online = run("validate", str(cat), env=env)
    assert online.returncode == 2 and "LMC_TEST_UNSET_KEY_A" in online.stderr
    offline = run("validate", str(cat), "--offline", env=env)
    assert offline.returncode == 0, offline.stderr
    assert "warning: environment variable 'LMC_TEST_UNSET_KEY_A' is not set" in offline.stdout
    assert "warning: environment variable 'LMC_TEST_UNSET_KEY_B' is not set" in offline.stdout
    assert "ok: 2 endpoints" in offline.stdout
    # a real mistake still fails offline
    data = yaml.safe_load(cat.read_text())
    data["endpoints"][1]["region"] = "europe-wset4"
    cat.write_text(yaml.safe_dump(data))
    broken = run("validate", str(cat), "--offline", env=env)
    assert broken.returncode == 2 and "'europe-wset4' is not a known gcp region" in broken.stderr
    assert "--offline and --probe" in run("validate", str(cat), "--offline", "--probe", env=env).stderr


def test_version_and_python_m() -> None:
    for module in ("llm_multicloud", "llm_multicloud.cli"):
        r = run("--version", module=module)
        assert r.returncode == 0 and r.stdout.strip() == f"llm-multicloud {lmc.__version__}"
    h = run("--help", module="llm_multicloud")
    assert h.returncode == 0 and "usage: llm-multicloud" in h.stdout


def test_explain_says_when_a_request_would_get_a_503(catalog_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(catalog_file), "--model", "llama-3.1-8b", "--residency", "CH"]) == 1
    out, err = capsys.readouterr()
    assert "this request would get a 503" in err
    assert "aws-euc1 (aws eu-central-1): excluded: outside residency CH" in out
    assert main(["explain", str(catalog_file), "--model", "llama-3.1-8b", "--residency", "CH", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["candidates"] == []
    assert main(["explain", str(catalog_file), "--model", "llama-3.1-8b", "--residency", "EU"]) == 0


def test_flag_errors_name_the_flag(catalog_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        ("--near", "mars"): "error: --near 'mars': unknown location 'mars'",
        ("--residency", "NOPE"): "error: --residency 'NOPE': unknown residency code 'NOPE'",
        ("--tags", "foo"): "error: --tags 'foo': 'foo' is not key=value",
    }
    for (flag, value), expected in cases.items():
        assert main(["explain", str(catalog_file), "--model", "llama-3.1-8b", flag, value]) == 2
        err = capsys.readouterr().err
        assert err.startswith(expected), err
        assert "x-llm-multicloud" not in err and "near=" not in err
