"""Every catalog mistake a newcomer makes gets one line that says what to fix.

The messages come from one mechanism (:mod:`llm_multicloud.config_errors`) that
reads the models' own annotations, so these tests also cover fields added later.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import llm_multicloud as lmc
from llm_multicloud.fleet import FleetSpec

ROOT = Path(__file__).resolve().parents[2]


def ep(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "aws-euc1",
        "provider": "aws",
        "region": "eu-central-1",
        "base_url": "https://llm.example.com/v1",
        "api_key": "sk-1",
        "models": {"llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct"},
    }
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


def error_of(data: Any) -> str:
    with pytest.raises(lmc.CatalogError) as ei:
        lmc.Catalog.load(data)
    text = str(ei.value)
    assert "pydantic" not in text and "http" not in text.replace("https://llm.example.com", ""), text
    return text


def lines_of(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()[1:]]


def test_misspelt_field_is_one_line_with_the_fix() -> None:
    text = error_of({"endpoints": [ep(base_url=None, base_ulr="https://llm.example.com/v1")]})
    assert lines_of(text) == [
        "endpoints[0] (id='aws-euc1').base_ulr: unknown field 'base_ulr'; did you mean 'base_url'? "
        "('base_url' is required)"
    ]


def test_unknown_field_without_a_close_name_lists_the_allowed_ones() -> None:
    text = error_of({"endpoints": [ep(xyzzy="blue")]})
    assert "unknown field 'xyzzy' (allowed: id, provider, region, base_url" in text


def test_top_level_and_policy_keys_get_did_you_mean() -> None:
    text = error_of(
        {"modles": {}, "endpoints": [ep()], "policy": {"stratgy": "cost", "hedge": {"quantil": 0.5}, "retries": 2}}
    )
    assert "modles: unknown field 'modles'; did you mean 'models'?" in text
    assert "policy.stratgy: unknown field 'stratgy'; did you mean 'strategy'" in text
    assert "policy.hedge.quantil: unknown field 'quantil'; did you mean 'quantile'?" in text
    assert "policy.retries: unknown field 'retries'; did you mean 'retry'?" in text


def test_policy_override_errors_use_the_same_words() -> None:
    cat = lmc.Catalog.load({"endpoints": [ep()]})
    with pytest.raises(lmc.CatalogError) as ei:
        cat.policy({"strategy": "fastest", "timeouts": {"first_token": 3}})
    text = str(ei.value)
    assert text.startswith("policy is invalid:")
    assert "strategy: must be 'latency', 'cost', 'balanced', 'weighted' or 'ordered' (got 'fastest')" in text
    assert "timeouts.first_token: unknown field 'first_token'; did you mean 'first_token_s'?" in text


def test_type_errors_in_the_catalogs_own_words() -> None:
    text = error_of({"endpoints": [ep(models="llama-3.1-8b", weight="heavy", location=[50.1])]})
    assert "models: must be a mapping of logical name to served name" in text
    assert "or a list of names served as they are ([llama-3.1-8b]) (got 'llama-3.1-8b')" in text
    assert "weight: must be a number (got 'heavy')" in text
    assert "location: must be a list of 2 numbers ([latitude, longitude] in degrees) (got [50.1])" in text
    for internal in ("dict[str,str]", "list[str]", "Input should", "type=", "errors.pydantic.dev"):
        assert internal not in text


def test_a_mapping_with_a_bad_value_blames_the_value_not_the_list_branch() -> None:
    text = error_of({"endpoints": [ep(models={"llama-3.1-8b": 3})]})
    assert lines_of(text) == ["endpoints[0] (id='aws-euc1').models.llama-3.1-8b: must be a string (got 3)"]


@pytest.mark.parametrize(
    ("provider", "region", "first"),
    [
        ("aws", "eu-frankfurt-1", "eu-central-1"),  # OCI's Frankfurt code, given to AWS
        ("aws", "frankfurt", "eu-central-1"),  # a city
        ("gcp", "eu-central-1", "europe-west3"),  # AWS's Frankfurt, given to GCP
        ("azure", "eu-west-1", "northeurope"),  # AWS's Dublin, given to Azure
        ("oci", "tokyo", "ap-tokyo-1"),
        ("gcp", "germany", "europe-west3"),  # a country
        ("aws", "eu-wset-1", "eu-west-1"),  # a typo: by spelling
    ],
)
def test_region_suggestions_by_geography_and_spelling(provider: str, region: str, first: str) -> None:
    text = error_of({"endpoints": [ep(provider=provider, region=region)]})
    assert f".region: {region!r} is not a known {provider} region" in text
    assert f"did you mean: {first}," in text


def test_another_providers_region_is_named() -> None:
    text = error_of({"endpoints": [ep(region="eu-frankfurt-1")]})
    assert "(it is oci's Frankfurt)" in text


@pytest.mark.parametrize("literal", ["${MY_KEY}", "$MY_KEY", "%MY_KEY%", "env:MY_KEY"])
def test_variable_looking_literal_keys_are_refused(literal: str) -> None:
    text = error_of({"endpoints": [ep(api_key=literal)]})
    assert "does not expand variables" in text
    assert "write api_key_env: MY_KEY" in text


def test_every_error_of_a_broken_catalog_in_one_run_duplicates_included() -> None:
    text = error_of(
        {
            "endpoints": [
                ep(),
                ep(weight="x"),  # a pydantic error...
                ep(id="gcp", provider="gcp", region="europe-wset4"),  # ...a region error in a valid endpoint...
            ],
            "policy": {"strategy": "fastest"},
        }
    )
    found = lines_of(text)
    assert any(".weight: must be a number" in line for line in found), found
    assert any("'europe-wset4' is not a known gcp region" in line for line in found), found
    assert "endpoints[1].id: 'aws-euc1' is already used by endpoints[0]; ids must be unique" in found
    assert any(line.startswith("policy.strategy: must be") for line in found), found


def test_catalog_policy_section_is_checked_at_load() -> None:
    text = error_of({"endpoints": [ep()], "policy": {"hedge": {"budget": 2}}})
    assert "policy.hedge.budget: must be less than or equal to 1 (got 2)" in text


def test_secret_values_are_never_echoed() -> None:
    text = error_of({"endpoints": [ep(api_key=12345)]})
    assert "12345" not in text
    assert "value hidden" in text


def test_fleet_config_errors_in_the_same_words() -> None:
    with pytest.raises(ValueError) as ei:
        FleetSpec.from_data(
            {"regions": [{"id": "a", "provider": "aws", "region": "eu-central-1", "api_key": "k", "modles": {}}]}
        )
    text = str(ei.value)
    assert "regions[0] (id='a').modles: unknown field 'modles'; did you mean 'models'? ('models' is required)" in text
    assert "errors.pydantic.dev" not in text and "type=" not in text


def test_busy_port_is_named(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "fleet.yaml"
        config.write_text(
            "regions:\n"
            f"  - {{id: a, provider: aws, region: eu-central-1, api_key: k, models: {{m: m}}, port: {port}}}\n"
        )
        proc = subprocess.run(
            [sys.executable, "-m", "llm_multicloud.fleet", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr
    assert "Traceback" not in proc.stderr
