"""Catalog loading, validation, residency resolution, secrets and policy merging."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llm_multicloud import regions
from llm_multicloud.catalog import Catalog
from llm_multicloud.errors import CatalogError
from llm_multicloud.policy import Policy

SECRET = "sk-very-secret-0123456789abcdef"

YAML_TEXT = """\
models:
  llama-3.1-8b: {context_window: 131072}
endpoints:
  - id: aws-euc1
    provider: aws
    region: eu-central-1
    base_url: https://euc1.example.invalid/v1/
    api_key: sk-yaml
    models: {llama-3.1-8b: meta-llama/Llama-3.1-8B-Instruct}
    pricing: {input_per_mtok: 0.10, output_per_mtok: 0.30}
  - id: aws-use1
    provider: aws
    region: us-east-1
    base_url: https://use1.example.invalid:8443/v1
    api_key: sk-yaml-2
    models: [llama-3.1-8b]
policy:
  strategy: latency
"""


def _check_two_endpoint_catalog(cat: Catalog) -> None:
    assert [e.id for e in cat.endpoints] == ["aws-euc1", "aws-use1"]
    assert cat.models["llama-3.1-8b"].context_window == 131072
    euc1, use1 = cat.endpoints
    assert euc1.models == {"llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct"}
    assert use1.models == {"llama-3.1-8b": "llama-3.1-8b"}  # a list maps names to themselves
    assert euc1.footprint == frozenset({"DE"})
    assert use1.footprint == frozenset({"US"})
    assert cat.serving("llama-3.1-8b") == (euc1, use1)
    assert cat.serving("nope") is None
    assert cat.policy().strategy == "latency"


# --------------------------------------------------------------------------- sources


def test_load_from_yaml_file(tmp_path: Path) -> None:
    p = tmp_path / "catalog.yaml"
    p.write_text(YAML_TEXT)
    _check_two_endpoint_catalog(Catalog.load(p))
    # str paths and .yml work too
    q = tmp_path / "catalog.yml"
    q.write_text(YAML_TEXT)
    _check_two_endpoint_catalog(Catalog.load(str(q)))


def _as_dict() -> dict[str, Any]:
    import yaml

    return yaml.safe_load(YAML_TEXT)


def test_load_from_dict_and_catalog_passthrough() -> None:
    cat = Catalog.load(_as_dict())
    _check_two_endpoint_catalog(cat)
    assert Catalog.load(cat) is cat


def test_load_from_json_file(tmp_path: Path) -> None:
    p = tmp_path / "catalog.json"
    p.write_text(json.dumps(_as_dict()))
    _check_two_endpoint_catalog(Catalog.load(p))


def test_load_from_toml_file(tmp_path: Path) -> None:
    p = tmp_path / "catalog.toml"
    p.write_text(
        """\
[policy]
strategy = "latency"

[models."llama-3.1-8b"]
context_window = 131072

[[endpoints]]
id = "aws-euc1"
provider = "aws"
region = "eu-central-1"
base_url = "https://euc1.example.invalid/v1/"
api_key = "sk-toml"
models = { "llama-3.1-8b" = "meta-llama/Llama-3.1-8B-Instruct" }

[[endpoints]]
id = "aws-use1"
provider = "aws"
region = "us-east-1"
base_url = "https://use1.example.invalid/v1"
api_key = "sk-toml-2"
models = ["llama-3.1-8b"]
"""
    )
    _check_two_endpoint_catalog(Catalog.load(p))


def test_url_parts_are_resolved_once() -> None:
    cat = Catalog.load(_as_dict())
    euc1, use1 = cat.endpoints
    assert euc1.base_url == "https://euc1.example.invalid/v1"  # trailing slash removed
    assert (euc1.scheme, euc1.host, euc1.port, euc1.path_prefix) == ("https", "euc1.example.invalid", 443, "/v1")
    assert use1.port == 8443


def test_unreadable_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read catalog"):
        Catalog.load(tmp_path / "missing.yaml")
    p = tmp_path / "catalog.ini"
    p.write_text("x=1")
    with pytest.raises(CatalogError, match=r"unknown catalog format '\.ini'"):
        Catalog.load(p)


def test_yaml_syntax_error_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "broken.yaml"
    p.write_text("endpoints:\n  - id: [unclosed\n")
    with pytest.raises(CatalogError) as ei:
        Catalog.load(p)
    assert str(p) in str(ei.value)
    assert "not valid YAML" in str(ei.value)


def test_json_syntax_error_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "broken.json"
    p.write_text('{"endpoints": [')
    with pytest.raises(CatalogError, match="not valid JSON") as ei:
        Catalog.load(p)
    assert str(p) in str(ei.value)


@pytest.mark.parametrize("top", [["a", "b"], "just a string", 42])
def test_non_mapping_top_level(tmp_path: Path, top: Any) -> None:
    p = tmp_path / "c.json"
    p.write_text(json.dumps(top))
    with pytest.raises(CatalogError, match="top level must be a mapping") as ei:
        Catalog.load(p)
    assert type(top).__name__ in str(ei.value)


# --------------------------------------------------------------------------- residency


def test_residency_derived_from_region_table(ep: Any) -> None:
    cat = Catalog.load({"endpoints": [ep("x", "eu-central-1")]})
    e = cat.endpoints[0]
    assert e.footprint == frozenset({"DE"})
    assert {"DE", "EU", "EEA"} <= set(e.residency)
    assert "US" not in e.residency
    frankfurt = regions.lookup("aws", "eu-central-1")
    assert frankfurt is not None
    assert e.location == (frankfurt.lat, frankfurt.lon)
    assert e.failure_domain == "aws/eu-central-1"
    assert e.quota_domain == "endpoint:x"


def test_residency_override_on_prem(ep: Any) -> None:
    cat = Catalog.load({"endpoints": [ep("dc", "fra-dc1", provider="onprem", residency=["EU"])]})
    e = cat.endpoints[0]
    # Somewhere in the EU: the whole EU is its footprint (fail-closed for narrower constraints).
    assert e.footprint == regions.BLOCS["EU"]
    assert e.residency == ("EU",)


def test_residency_override_intersection_narrows(ep: Any) -> None:
    cat = Catalog.load({"endpoints": [ep("dc", "fra-dc1", provider="onprem", residency=["eu", "DE"])]})
    assert cat.endpoints[0].footprint == frozenset({"DE"})


def test_on_prem_country_gives_footprint_and_location(ep: Any) -> None:
    cat = Catalog.load({"endpoints": [ep("dc", "fra-dc1", provider="onprem", country="de")]})
    e = cat.endpoints[0]
    assert e.footprint == frozenset({"DE"})
    assert "EU" in e.residency
    assert e.location == regions.locate("DE")


def test_on_prem_without_country_has_unknown_footprint(ep: Any) -> None:
    cat = Catalog.load({"endpoints": [ep("dc", "rack-7", provider="onprem")]})
    assert cat.endpoints[0].footprint == frozenset()
    assert cat.endpoints[0].location is None


def test_residency_override_contradicting_region(ep: Any) -> None:
    with pytest.raises(CatalogError) as ei:
        Catalog.load({"endpoints": [ep("x", "us-east-1", residency=["EU"])]})
    msg = str(ei.value)
    assert "endpoints[0] (id='x').residency" in msg
    assert "contradicts region 'us-east-1'" in msg
    assert "US" in msg


def test_residency_override_unknown_tag(ep: Any) -> None:
    with pytest.raises(CatalogError, match=r"residency: .*unknown tags \['ATLANTIS'\]"):
        Catalog.load({"endpoints": [ep("dc", "x", provider="onprem", residency=["EU", "ATLANTIS"])]})


def test_residency_override_empty_intersection(ep: Any) -> None:
    with pytest.raises(CatalogError, match="no country in common"):
        Catalog.load({"endpoints": [ep("dc", "x", provider="onprem", residency=["DE", "FR"])]})


def test_country_contradicting_region(ep: Any) -> None:
    with pytest.raises(CatalogError, match=r"\.country: 'FR' contradicts region 'eu-central-1'"):
        Catalog.load({"endpoints": [ep("x", "eu-central-1", country="FR")]})


def test_bad_location(ep: Any) -> None:
    with pytest.raises(CatalogError, match=r"\.location: .*latitude, longitude"):
        Catalog.load({"endpoints": [ep("dc", "x", provider="onprem", location=[95.0, 10.0])]})


# --------------------------------------------------------------------------- validation errors


def test_unknown_region_names_path_value_and_suggestion(ep: Any) -> None:
    with pytest.raises(CatalogError) as ei:
        Catalog.load({"endpoints": [ep("x", "eu-centrl-1")]})
    msg = str(ei.value)
    assert "endpoints[0] (id='x').region" in msg
    assert "'eu-centrl-1'" in msg
    assert "did you mean" in msg
    assert "eu-central-1" in msg.split("did you mean", 1)[1]


def test_unknown_region_of_unlisted_provider_is_fine(ep: Any) -> None:
    # Only the four tabled providers have a closed region list.
    cat = Catalog.load({"endpoints": [ep("t", "whatever-1", provider="together")]})
    assert cat.endpoints[0].provider == "together"


def test_every_problem_reported_on_its_own_line(ep: Any) -> None:
    with pytest.raises(CatalogError) as ei:
        Catalog.load({"endpoints": [ep("a", "eu-centrl-1"), ep("b", "us-eats-1")]})
    lines = str(ei.value).splitlines()
    assert any("endpoints[0] (id='a').region" in ln for ln in lines)
    assert any("endpoints[1] (id='b').region" in ln for ln in lines)


def test_unknown_field(ep: Any) -> None:
    with pytest.raises(CatalogError) as ei:
        Catalog.load({"endpoints": [ep("x", weigth=2.0)]})
    msg = str(ei.value)
    assert "endpoints[0] (id='x').weigth" in msg
    assert "unknown field" in msg


def test_unknown_top_level_field(ep: Any) -> None:
    with pytest.raises(CatalogError, match=r"endpoint: unknown field"):
        Catalog.load({"endpoints": [ep("x")], "endpoint": []})


def test_missing_field(ep: Any) -> None:
    d = ep("x")
    del d["base_url"]
    with pytest.raises(CatalogError) as ei:
        Catalog.load({"endpoints": [d]})
    assert "endpoints[0] (id='x').base_url: required field is missing" in str(ei.value)


def test_no_endpoints() -> None:
    with pytest.raises(CatalogError, match="endpoints"):
        Catalog.load({"endpoints": []})
    with pytest.raises(CatalogError, match="endpoints: required field is missing"):
        Catalog.load({"models": {}})


def test_duplicate_ids(ep: Any) -> None:
    with pytest.raises(CatalogError) as ei:
        Catalog.load({"endpoints": [ep("dup"), ep("other"), ep("dup", "eu-west-1")]})
    msg = str(ei.value)
    assert "endpoints[2].id: 'dup' is already used by endpoints[0]" in msg


@pytest.mark.parametrize("bad_id", ["", "has space", "-leading-dash", "x" * 65])
def test_bad_id(ep: Any, bad_id: str) -> None:
    with pytest.raises(CatalogError, match=r"\.id: .*1-64 characters"):
        Catalog.load({"endpoints": [ep(bad_id)]})


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://host/v1", "absolute http"),
        ("example.com/v1", "absolute http"),
        ("https:///v1", "absolute http"),
        ("https://host/v1?key=abc", "query string"),
    ],
)
def test_bad_base_url(ep: Any, url: str, why: str) -> None:
    with pytest.raises(CatalogError) as ei:
        Catalog.load({"endpoints": [ep("x", base_url=url)]})
    msg = str(ei.value)
    assert "endpoints[0] (id='x').base_url" in msg
    assert why in msg


def test_model_not_declared_in_top_level_models(ep: Any) -> None:
    with pytest.raises(CatalogError, match=r"\.models: 'typo' is not declared under top-level models"):
        Catalog.load({"models": {"m": {}}, "endpoints": [ep("x", models=["m", "typo"])]})


def test_endpoint_without_models(ep: Any) -> None:
    with pytest.raises(CatalogError, match="lists no model"):
        Catalog.load({"endpoints": [ep("x", models={})]})


def test_probe_path_must_be_absolute(ep: Any) -> None:
    with pytest.raises(CatalogError, match=r"probe_path: 'models' must start with '/'"):
        Catalog.load({"endpoints": [ep("x", probe_path="models")]})


def test_endpoint_timeouts_validated(ep: Any) -> None:
    with pytest.raises(CatalogError, match=r"timeouts.*first_token_s"):
        Catalog.load({"endpoints": [ep("x", timeouts={"first_token_s": -1})]})
    cat = Catalog.load({"endpoints": [ep("x", timeouts={"first_token_s": 60})]})
    assert cat.endpoints[0].timeouts == {"first_token_s": 60}


# --------------------------------------------------------------------------- credentials


def test_api_key_env_read_from_environment(ep: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMC_TEST_KEY", SECRET)
    cat = Catalog.load({"endpoints": [ep("x", api_key_env="LMC_TEST_KEY")]})
    assert cat.endpoints[0].secret() == SECRET
    assert cat.endpoints[0].has_key
    assert cat.secrets() == [SECRET]


@pytest.mark.parametrize("value", [None, ""])
def test_api_key_env_not_set(ep: Any, monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("LMC_TEST_UNSET_KEY", raising=False)
    else:
        monkeypatch.setenv("LMC_TEST_UNSET_KEY", value)
    with pytest.raises(CatalogError) as ei:
        Catalog.load({"endpoints": [ep("x", api_key_env="LMC_TEST_UNSET_KEY")]})
    msg = str(ei.value)
    assert "endpoints[0] (id='x').api_key_env" in msg
    assert "'LMC_TEST_UNSET_KEY' is not set" in msg


def test_api_key_and_api_key_env_both(ep: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMC_TEST_KEY", SECRET)
    with pytest.raises(CatalogError, match="not both") as ei:
        Catalog.load({"endpoints": [ep("x", api_key=SECRET, api_key_env="LMC_TEST_KEY")]})
    assert SECRET not in str(ei.value)


def test_endpoint_without_key() -> None:
    cat = Catalog.load(
        {"endpoints": [{"id": "x", "provider": "p", "region": "r", "base_url": "http://h", "models": ["m"]}]}
    )
    assert not cat.endpoints[0].has_key
    assert cat.secrets() == []


def test_api_key_never_in_repr_or_str(ep: Any) -> None:
    cat = Catalog.load({"endpoints": [ep("x", api_key=SECRET)]})
    e = cat.endpoints[0]
    assert e.secret() == SECRET
    for text in (repr(cat), str(cat), repr(e), str(e), repr(cat.endpoints), repr(cat.spec), str(cat.spec)):
        assert SECRET not in text
    assert "x" in repr(e)


@pytest.mark.parametrize(
    "broken",
    [
        {"region": "eu-centrl-1"},
        {"weight": -1},
        {"unknown_field": 1},
        {"residency": ["EU"]},  # contradicts us-east-1
        {"base_url": "ftp://nope"},
    ],
)
def test_api_key_never_in_catalog_error(ep: Any, broken: dict[str, Any]) -> None:
    with pytest.raises(CatalogError) as ei:
        Catalog.load({"endpoints": [ep("x", api_key=SECRET, **broken)]})
    assert SECRET not in str(ei.value)
    assert SECRET not in repr(ei.value)


def test_api_key_of_wrong_type_never_in_catalog_error(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text(
        "endpoints:\n"
        "  - {id: x, provider: aws, region: us-east-1, base_url: 'https://h/v1',\n"
        "     api_key: 80231947560913475612, models: [m]}\n"
    )
    with pytest.raises(CatalogError) as ei:
        Catalog.load(p)
    assert "api_key" in str(ei.value)
    assert "80231947560913475612" not in str(ei.value)


# --------------------------------------------------------------------------- pricing


def test_pricing_per_mtok(ep: Any) -> None:
    cat = Catalog.load(
        {
            "endpoints": [
                ep("a", pricing={"input_per_mtok": 0.1, "output_per_mtok": 0.3}),
                ep("b", pricing={"input_per_mtok": 1.0, "output_per_mtok": 2.0, "cached_input_per_mtok": 0.25}),
                ep("d"),
            ]
        }
    )
    a, b, d = cat.endpoints
    assert a.price == (0.1, 0.3, 0.1)  # cached input defaults to the input price
    assert b.price == (1.0, 2.0, 0.25)
    assert d.price is None  # no price: unknown, never zero
    # half a price is an error, not a silently unknown price
    with pytest.raises(CatalogError, match=r"endpoints\[0\].*pricing.*both input_per_mtok and output_per_mtok"):
        Catalog.load({"endpoints": [ep("c", pricing={"input_per_mtok": 1.0})]})


def test_pricing_gpu_hour_conversion(ep: Any) -> None:
    # 2 GPUs at $3.60/h each = $7.20/h = $0.002/s; 1000 output tokens/s
    # -> $0.002 per 1000 tokens = $2 per million output tokens; prompt tokens at a tenth.
    cat = Catalog.load({"endpoints": [ep("gpu", pricing={"gpu_hour": 3.6, "gpus": 2, "tokens_per_s": 1000})]})
    price = cat.endpoints[0].price
    assert price is not None
    assert price == pytest.approx((0.2, 2.0, 0.2))


def test_negative_price_rejected(ep: Any) -> None:
    with pytest.raises(CatalogError, match=r"pricing\.input_per_mtok"):
        Catalog.load({"endpoints": [ep("x", pricing={"input_per_mtok": -1, "output_per_mtok": 1})]})


# --------------------------------------------------------------------------- policy


def test_policy_defaults_without_section(ep: Any) -> None:
    pol = Catalog.load({"endpoints": [ep("x")]}).policy()
    assert pol == Policy()


def test_policy_merges_dict_overrides_key_by_key(ep: Any) -> None:
    cat = Catalog.load(
        {
            "endpoints": [ep("x")],
            "policy": {"strategy": "cost", "hedge": {"enabled": False, "budget": 0.05}},
        }
    )
    pol = cat.policy({"hedge": {"budget": 0.3}, "retry": {"max_attempts": 5}})
    assert pol.strategy == "cost"  # from the catalog
    assert pol.hedge.enabled is False  # from the catalog, not reset by the override
    assert pol.hedge.budget == 0.3  # from the override
    assert pol.retry.max_attempts == 5
    assert pol.retry.budget == Policy().retry.budget  # default
    # a Policy object replaces everything
    explicit = Policy(strategy="ordered")
    assert cat.policy(explicit) is explicit
    # the catalog's own data is not mutated by merging
    assert cat.policy().hedge.budget == 0.05


def test_policy_rejects_unknown_keys_with_path(ep: Any) -> None:
    cat = Catalog.load({"endpoints": [ep("x")]})
    with pytest.raises(CatalogError) as ei:
        cat.policy({"hedge": {"budgte": 0.2}})
    assert "hedge.budgte: unknown field" in str(ei.value)
    with pytest.raises(CatalogError, match=r"strategy: .*'fastest'"):
        cat.policy({"strategy": "fastest"})


def test_policy_cross_field_check(ep: Any) -> None:
    cat = Catalog.load({"endpoints": [ep("x")]})
    with pytest.raises(CatalogError, match="min_delay_ms must not exceed"):
        cat.policy({"hedge": {"min_delay_ms": 500, "max_delay_ms": 100}})
