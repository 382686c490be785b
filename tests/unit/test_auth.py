"""Credential kinds, presets and what reaches which endpoint, without a network.

The refresh rules (single flight, ahead of expiry, no stall while a token is valid)
are checked on :class:`TokenCredential` with a controllable wall clock; requests
through the real SDK are in tests/integration/test_auth.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import llm_multicloud as lmc
from llm_multicloud.auth import OutgoingRequest, Token, TokenCredential
from llm_multicloud.errors import CatalogError

MODELS = {"m": "served-m"}


def load(*eps: dict[str, Any]) -> lmc.Catalog:
    return lmc.Catalog.load({"endpoints": list(eps)})


def ep(id: str = "x", **kw: Any) -> dict[str, Any]:
    base = {"id": id, "provider": "onprem", "region": "local", "country": "DE", "base_url": "http://127.0.0.1:9/v1"}
    base["models"] = dict(MODELS)
    base.update(kw)
    return base


def req(url: str = "http://127.0.0.1:9/v1/chat/completions") -> OutgoingRequest:
    return OutgoingRequest("POST", url, [("content-type", "application/json")], b"{}")


# ---------------------------------------------------------------------------- presets


def test_bedrock_preset_expands_to_runtime_url_and_sigv4() -> None:
    pytest.importorskip("botocore")
    cat = load({"id": "b", "preset": "bedrock", "region": "eu-central-1", "models": {"m": "meta.llama3-1-8b-v1:0"}})
    (e,) = cat.endpoints
    assert e.base_url == "https://bedrock-runtime.eu-central-1.amazonaws.com/openai/v1"
    assert (e.provider, e.credential.kind, e.footprint) == ("aws", "aws", frozenset({"DE"}))
    assert "eu-central-1" in e.credential.describe()


def test_bedrock_preset_with_api_key_is_bearer_and_geo_profile_widens_residency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BEDROCK_KEY", "bedrock-api-key-value")
    cat = load(
        {
            "id": "b",
            "preset": "bedrock",
            "region": "eu-west-1",
            "api_key_env": "BEDROCK_KEY",
            "models": {"m": "eu.meta.llama3-1-8b-v1:0"},
        }
    )
    (e,) = cat.endpoints
    assert e.credential.kind == "aws-api-key"
    r = req()
    asyncio.run(e.credential.apply(r))
    assert ("authorization", "Bearer bedrock-api-key-value") in r.headers
    # an eu. inference profile processes anywhere in the EU: not only in Ireland
    assert e.residency == ("EU",) and "DE" in e.footprint and "IE" in e.footprint


@pytest.mark.parametrize(
    ("endpoint", "fix"),
    [
        ({"preset": "vertex", "region": "eu-central-1", "project": "my-project"}, "is a aws region"),
        ({"preset": "bedrock", "region": "europe-west4"}, "is a gcp region"),
        ({"preset": "vertex", "region": "europe-west4"}, "needs project"),
        ({"preset": "azure-openai", "region": "swedencentral"}, "needs resource"),
        ({"preset": "azure-openai", "resource": "res"}, "needs region"),
        ({"preset": "bedrock", "region": "us-east-1", "base_url": "https://x/v1"}, "remove base_url"),
        ({"preset": "bedrock", "region": "us-east-1", "provider": "gcp"}, "remove provider"),
        ({"preset": "gke", "region": "us-east-1"}, "not a preset"),
        (
            {"region": "us-east-1", "provider": "aws", "base_url": "https://x/v1", "project": "p"},
            "only go with a preset",
        ),
    ],
)
def test_wrong_preset_combinations_fail_at_load_with_the_fix(endpoint: dict[str, Any], fix: str) -> None:
    with pytest.raises(CatalogError) as ei:
        load({"id": "e", "models": {"m": "a.b"}, **endpoint})
    assert fix in str(ei.value)


def test_bedrock_model_ids_and_profiles_are_checked() -> None:
    with pytest.raises(CatalogError, match="not a Bedrock model id"):
        load({"id": "b", "preset": "bedrock", "region": "us-east-1", "models": {"m": "llama"}, "api_key": "k1234"})
    with pytest.raises(CatalogError, match="not available from us-east-1"):
        load({"id": "b", "preset": "bedrock", "region": "us-east-1", "models": {"m": "eu.x.y"}, "api_key": "k1234"})
    cat = load({"id": "b", "preset": "bedrock", "region": "us-east-1", "models": {"m": "global.x.y"}, "api_key": "k1"})
    assert cat.endpoints[0].footprint == frozenset()  # global: serves only unconstrained requests


def test_vertex_preset_regional_multiregion_and_global_hosts() -> None:
    pytest.importorskip("google.auth")
    m = {"m": "meta/llama-3.1-8b-instruct-maas"}
    cat = load(
        {"id": "r", "preset": "vertex", "region": "europe-west4", "project": "proj-123", "models": m},
        {"id": "eu", "preset": "vertex", "region": "eu", "project": "proj-123", "models": m},
        {"id": "us", "preset": "vertex", "region": "us", "project": "proj-123", "models": m},
        {"id": "g", "preset": "vertex", "region": "global", "project": "proj-123", "models": m},
    )
    r, eu, us, g = cat.endpoints
    tail = "/v1/projects/proj-123/locations/{}/endpoints/openapi"
    assert r.base_url == "https://europe-west4-aiplatform.googleapis.com" + tail.format("europe-west4")
    assert eu.base_url == "https://aiplatform.eu.rep.googleapis.com" + tail.format("eu")
    assert us.base_url == "https://aiplatform.us.rep.googleapis.com" + tail.format("us")
    assert g.base_url == "https://aiplatform.googleapis.com" + tail.format("global")
    assert r.footprint == {"NL"} and eu.residency == ("EU",) and us.residency == ("US",) and g.footprint == set()
    assert {e.credential.kind for e in cat.endpoints} == {"gcp"}
    # one ADC credential for all four (one token, one refresh); quotas are per region
    assert len({id(e.credential) for e in cat.endpoints}) == 1
    assert len({e.quota_domain for e in cat.endpoints}) == 4
    with pytest.raises(CatalogError, match="publisher/model"):
        load({"id": "v", "preset": "vertex", "region": "europe-west4", "project": "proj-123", "models": {"m": "x"}})


def test_azure_preset_entra_by_default_key_header_with_a_key_and_data_zone() -> None:
    pytest.importorskip("azure.identity")
    cat = load(
        {"id": "a", "preset": "azure-openai", "resource": "my-res", "region": "swedencentral", "models": {"m": "dep"}},
        {
            "id": "k",
            "preset": "azure-openai",
            "resource": "my-res2",
            "region": "westeurope",
            "api_key": "azure-key-1234",
            "deployment": "datazone",
            "models": {"m": "dep"},
        },
    )
    a, k = cat.endpoints
    assert a.base_url == "https://my-res.openai.azure.com/openai/v1" and a.credential.kind == "azure"
    assert "cognitiveservices.azure.com/.default" in a.credential.describe()
    r = req()
    asyncio.run(k.credential.apply(r))
    assert ("api-key", "azure-key-1234") in r.headers and not any(n == "authorization" for n, _ in r.headers)
    assert k.residency == ("EU",)


def test_missing_extra_is_named_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for mod in ("botocore", "botocore.auth", "botocore.session", "botocore.awsrequest"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(CatalogError) as ei:
        load(ep(auth={"kind": "aws"}))
    assert "pip install 'llm-multicloud[aws]'" in str(ei.value)


def test_auth_field_errors_name_the_fix() -> None:
    with pytest.raises(CatalogError, match="not a credential kind"):
        load(ep(auth={"kind": "kerberos"}))
    with pytest.raises(CatalogError, match=r"unknown field\(s\) \['scope'\] for kind gcp"):
        load(ep(auth={"kind": "gcp", "scope": "x"}))
    with pytest.raises(CatalogError, match=r"lmc\.auth\.provider"):
        load(ep(auth={"kind": "provider"}))
    with pytest.raises(CatalogError, match="not both"):
        load(ep(api_key="k1234", auth=lmc.auth.provider(lambda: "t")))


# ---------------------------------------------------------------------------- what goes where


def test_caller_query_and_headers_never_leak_endpoint_owned_names() -> None:
    cat = load(
        ep("az", query={"api-version": "2024-10-21"}, headers={"x-tenant": "t1"}, api_key="k-az-1234"),
        ep("other", api_key="k-other-1234"),
    )
    az, other = cat.endpoints
    q = "api-version=1999-01-01&foo=bar&X-Amz-Signature=abc&key=google-key"
    hdrs = [("x-tenant", "caller"), ("x-goog-user-project", "p"), ("x-amz-security-token", "t"), ("accept", "a")]
    url, h = cat.request_for(az, "chat/completions", q, hdrs)
    assert url == "http://127.0.0.1:9/v1/chat/completions?foo=bar&api-version=2024-10-21"
    assert h == [("accept", "a"), ("x-tenant", "t1")]
    url, h = cat.request_for(other, "chat/completions", q, hdrs)
    assert url == "http://127.0.0.1:9/v1/chat/completions?foo=bar"
    assert h == [("accept", "a")]


def test_endpoints_sharing_a_key_share_a_quota_domain() -> None:
    cat = load(ep("a", api_key="same-key-1234"), ep("b", api_key="same-key-1234"), ep("c", api_key="other-1234"))
    a, b, c = cat.endpoints
    assert a.quota_domain == b.quota_domain != c.quota_domain
    assert c.quota_domain == "endpoint:c"
    assert "same-key" not in a.quota_domain


def test_secrets_stay_out_of_reprs_and_errors(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("file-secret-value\n")
    cat = load(ep("f", api_key_file=str(key)), ep("p", auth=lmc.auth.provider(lambda: "provider-secret-value")))
    text = repr(cat.endpoints) + repr([e.credential for e in cat.endpoints]) + repr(cat)
    assert "file-secret-value" not in text and "provider-secret-value" not in text
    with lmc.MultiCloud(cat, {"probe": {"enabled": False}}) as mc:
        out = repr(mc.snapshot()) + mc.explain("m").describe() + repr(mc.explain("m").to_dict())
    assert "file-secret-value" not in out and "provider-secret-value" not in out


def test_missing_key_file_is_a_load_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the file"):
        load(ep(api_key_file=str(tmp_path / "absent")))


def test_import_stays_lazy() -> None:
    code = (
        "import sys, llm_multicloud as lmc; lmc.auth.provider(lambda: 't'); "
        "bad = [m for m in ('botocore', 'google.auth', 'azure.identity', 'anyio', 'pydantic') if m in sys.modules]; "
        "assert bad == ['anyio'] or bad == [], bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- refresh rules


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


class Counting(TokenCredential):
    kind = "test"

    def __init__(self, clock: Clock, life: float = 100.0) -> None:
        super().__init__("test", clock=clock)
        self.calls = 0
        self.life = life
        self.gate = threading.Event()
        self.gate.set()

    def fetch(self) -> Token:
        self.gate.wait(5)
        self.calls += 1
        return Token(f"tok-{self.calls}", self._clock() + self.life)


def test_single_flight_and_no_stall_while_valid() -> None:
    clock = Clock()
    cred = Counting(clock)

    async def run() -> None:
        cred.gate.clear()
        waiters = [asyncio.ensure_future(cred.token()) for _ in range(50)]
        await asyncio.sleep(0.05)
        cred.gate.set()
        toks = await asyncio.gather(*waiters)
        assert {t.value for t in toks} == {"tok-1"} and cred.calls == 1
        # inside the refresh window (half the lifetime, with jitter): the current token
        # is returned at once while one refresh runs in the background
        clock.t += 70.0
        cred.gate.clear()
        t = await asyncio.wait_for(cred.token(), 0.5)
        assert t.value == "tok-1"
        assert (await cred.token()).value == "tok-1"
        cred.gate.set()
        for _ in range(100):
            if cred.calls == 2:
                break
            await asyncio.sleep(0.01)
        assert cred.calls == 2 and (await cred.token()).value == "tok-2"
        # invalidating an old token (a late 401) does not throw away the new one
        cred.invalidate(t)
        assert (await cred.token()).value == "tok-2" and cred.calls == 2

    asyncio.run(run())


def test_failure_is_reported_secret_free_and_retried_with_backoff() -> None:
    clock = Clock()

    class Broken(TokenCredential):
        kind = "test"

        def fetch(self) -> Token:
            raise RuntimeError("-----BEGIN PRIVATE KEY----- leaked")

    cred = Broken("x", clock=clock)

    async def run() -> None:
        with pytest.raises(lmc.auth.CredentialUnavailable) as ei:
            await cred.token()
        assert "PRIVATE KEY" not in str(ei.value) and "RuntimeError" in str(ei.value)

    asyncio.run(run())
    assert cred.unavailable is not None and "PRIVATE" not in cred.unavailable
    due = cred.next_refresh(clock.t)
    assert due is not None and due > clock.t  # backoff, not a hot loop
