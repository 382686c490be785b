"""Credentials that refresh and sign, verified by the clouds' own libraries, offline.

One fleet (127.0.0.1) with three regions whose servers check credentials the way
the clouds do: ``aws-*`` recompute SigV4 with botocore over the bytes that arrived,
``gcp-euw4`` accepts only unexpired tokens issued by a local OAuth token endpoint
to a google-auth service-account credential (freshly generated RSA key, token_uri
on 127.0.0.1), ``azure-swc`` only unexpired tokens issued to an azure-core
``TokenCredential`` (client credentials). Tokens live two seconds, so a few seconds
of traffic cross many token lifetimes. Everything goes through the real openai SDK.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.auth import OutgoingRequest
from llm_multicloud.client import _lib
from llm_multicloud.fleet import Fleet, Latency, RegionSpec
from llm_multicloud.fleet.identity import EntraLikeCredential, TokenAuthority, rsa_service_account, sigv4_verifier

pytest.importorskip("botocore")
pytest.importorskip("google.auth")
pytest.importorskip("azure.core")
httpx_lib = _lib(None)  # httpx2 with openai 3.x, httpx with 2.x

MODEL = "llama-3.1-8b"
FAST = Latency(ttft_ms=1, ttft_jitter=0.0, itl_ms=0.0)
AKID, SECRET = "AKIDLMCTEST00000001", "lmc-test-aws-secret-key-0000000000000000"
TTL_S = 2.0
REGIONS = {
    "aws-euc1": ("aws", "eu-central-1", "meta.llama3-1-8b-instruct-v1:0"),
    "aws-use1": ("aws", "us-east-1", "meta.llama3-1-8b-instruct-v1:0"),
    "gcp-euw4": ("gcp", "europe-west4", "meta/llama-3.1-8b-instruct-maas"),
    "azure-swc": ("azure", "swedencentral", "llama-31-8b"),
}


@pytest.fixture(scope="module")
def authority() -> Iterator[TokenAuthority]:
    a = TokenAuthority(ttl_s=TTL_S)
    yield a
    a.close()


@pytest.fixture(scope="module")
def entra() -> Iterator[TokenAuthority]:
    """A Microsoft Entra-style authority over TLS (throwaway CA) for the real ClientSecretCredential."""
    pytest.importorskip("trustme")
    a = TokenAuthority(ttl_s=TTL_S, tls=True)
    yield a
    a.close()


@pytest.fixture(scope="module")
def fleet(authority: TokenAuthority) -> Iterator[Fleet]:
    specs = [
        RegionSpec(id=rid, provider=p, region=r, models={MODEL: served}, api_key="unused-" + rid, latency=FAST, seed=i)
        for i, (rid, (p, r, served)) in enumerate(REGIONS.items())
    ]
    with Fleet(specs) as f:
        yield f


@pytest.fixture
def clouds(fleet: Fleet, authority: TokenAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    """Each region verifies its cloud's scheme; AWS credentials in the environment
    (botocore's chain); a service-account key file for google-auth."""
    fleet.reset()
    for rid, (_, region, _) in REGIONS.items():
        if rid.startswith("aws-"):
            fleet.set_authorizer(rid, sigv4_verifier(AKID, SECRET, region))
    fleet.set_authorizer("gcp-euw4", authority.bearer_authorizer())
    fleet.set_authorizer("azure-swc", authority.bearer_authorizer())
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AKID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield fleet
    for rid in REGIONS:
        fleet.set_authorizer(rid, None)
    fleet.reset()


def sa_file(authority: TokenAuthority, tmp_path: Path, name: str = "sa.json") -> str:
    info = rsa_service_account(authority.url, email=f"{name.split('.')[0]}@lmc-test-project.iam.gserviceaccount.com")
    authority.add_service_account(info)
    path = tmp_path / name
    path.write_text(json.dumps({k: v for k, v in info.items() if not k.startswith("_")}), encoding="utf-8")
    return str(path)


def endpoint(fleet: Fleet, rid: str, **kw: Any) -> dict[str, Any]:
    p, region, served = REGIONS[rid]
    return {"id": rid, "provider": p, "region": region, "base_url": fleet.url(rid), "models": {MODEL: served}, **kw}


def multicloud(eps: list[dict[str, Any]], **policy: Any) -> lmc.MultiCloud:
    base: dict[str, Any] = {"strategy": "ordered", "probe": {"enabled": False}, "hedge": {"enabled": False}}
    base.update(policy)
    return lmc.MultiCloud({"endpoints": eps}, base)


def chat(client: openai.OpenAI, **kw: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, **kw
    )


def statuses(fleet: Fleet, rid: str) -> list[int | None]:
    return [r.status for r in fleet.received(rid) if r.path.endswith("/chat/completions")]


# ---------------------------------------------------------------------------- SigV4


def test_sigv4_is_verified_by_botocore_sync_and_async_stream_and_not(clouds: Fleet) -> None:
    with multicloud([endpoint(clouds, "aws-euc1", auth={"kind": "aws"})]) as mc:
        client = mc.wrap(openai.OpenAI(api_key="placeholder"))
        raw = chat(client)
        assert raw.headers["x-llm-multicloud-endpoint"] == "aws-euc1"
        assert raw.parse().choices[0].message.content
        text = "".join(
            c.choices[0].delta.content or ""
            for c in client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
            )
            if c.choices
        )
        assert text

        async def run() -> None:
            aclient = mc.wrap(openai.AsyncOpenAI(api_key="placeholder"))
            r = await aclient.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}])
            assert r.choices[0].message.content
            stream = await aclient.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "b"}], stream=True
            )
            assert [c async for c in stream]

        asyncio.run(run())
    assert statuses(clouds, "aws-euc1") == [200, 200, 200, 200]
    auth = [r.headers["authorization"] for r in clouds.received("aws-euc1")]
    assert all(a.startswith(f"AWS4-HMAC-SHA256 Credential={AKID}/") and "/eu-central-1/bedrock/" in a for a in auth)
    assert SECRET not in json.dumps(mc.snapshot())


def test_sigv4_tampered_body_is_rejected(clouds: Fleet) -> None:
    """Sign a request with the library's credential, change one byte of the body: 401."""
    cred = lmc.auth.aws(region="eu-central-1")
    url = clouds.url("aws-euc1") + "/chat/completions"
    body = json.dumps({"model": REGIONS["aws-euc1"][2], "messages": [{"role": "user", "content": "pay 10"}]}).encode()
    req = OutgoingRequest("POST", url, [("content-type", "application/json")], body)
    asyncio.run(cred.apply(req))  # type: ignore[arg-type]
    with httpx_lib.Client() as h:
        ok = h.post(url, headers=req.headers, content=body)
        tampered = h.post(url, headers=req.headers, content=body.replace(b"pay 10", b"pay 99"))
        other_path = h.post(clouds.url("aws-euc1") + "/embeddings", headers=req.headers, content=body)
    assert ok.status_code == 200
    assert tampered.status_code == 401
    assert other_path.status_code == 401


def test_retry_is_signed_again_for_the_other_region(clouds: Fleet) -> None:
    """The primary fails (500): the retry goes to us-east-1 and is signed for us-east-1."""
    clouds.set_fault("aws-euc1", mode="status", status=500)
    eps = [endpoint(clouds, "aws-euc1", auth={"kind": "aws"}), endpoint(clouds, "aws-use1", auth={"kind": "aws"})]
    with multicloud(eps) as mc:
        raw = chat(mc.wrap(openai.OpenAI(api_key="placeholder")))
        assert raw.headers["x-llm-multicloud-endpoint"] == "aws-use1"
        assert raw.headers["x-llm-multicloud-attempts"] == "2"
    assert statuses(clouds, "aws-use1") == [200]
    assert "/us-east-1/bedrock/" in clouds.received("aws-use1")[0].headers["authorization"]


def test_hedge_is_signed_for_its_own_endpoint(clouds: Fleet) -> None:
    clouds.set_latency("aws-euc1", Latency(ttft_ms=400, ttft_jitter=0.0))
    eps = [endpoint(clouds, "aws-euc1", auth={"kind": "aws"}), endpoint(clouds, "aws-use1", auth={"kind": "aws"})]
    with multicloud(eps, hedge={"enabled": True, "delay_ms": 20, "budget": 1.0}) as mc:
        raw = chat(mc.wrap(openai.OpenAI(api_key="placeholder")), stream=True)
        assert raw.headers["x-llm-multicloud-hedged"] == "true"
        assert raw.headers["x-llm-multicloud-endpoint"] == "aws-use1"
        assert list(raw.parse())
    assert statuses(clouds, "aws-use1") == [200]
    assert 401 not in statuses(clouds, "aws-euc1")
    clouds.set_latency("aws-euc1", FAST)


def test_resumed_stream_is_signed_for_its_new_body(clouds: Fleet) -> None:
    """A stream breaks after commit on eu-central-1; the continuation (another body: the
    partial answer appended) goes to us-east-1 and passes its SigV4 check."""
    clouds.set_fault("aws-euc1", mode="close_mid_stream", after_chunks=3)
    eps = [endpoint(clouds, "aws-euc1", auth={"kind": "aws"}), endpoint(clouds, "aws-use1", auth={"kind": "aws"})]
    with multicloud(eps, resume={"enabled": True}) as mc:
        stream = mc.wrap(openai.OpenAI(api_key="placeholder")).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=10, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("[aws-euc1]")
    (cont,) = [r for r in clouds.received("aws-use1") if r.path.endswith("/chat/completions")]
    assert cont.status == 200 and cont.json["messages"][-1]["role"] == "assistant"
    assert "/us-east-1/bedrock/" in cont.headers["authorization"]


def test_probes_are_signed_too(clouds: Fleet) -> None:
    with multicloud(
        [endpoint(clouds, "aws-euc1", auth={"kind": "aws"})], probe={"enabled": True, "interval_s": 0.2}
    ) as mc:
        mc.wrap(openai.OpenAI(api_key="placeholder"))
        mc._portal()  # the background loop (and so the prober) starts with the first request or this
        clouds.wait_for(lambda: any(r.path.endswith("/models") for r in clouds.received("aws-euc1")), timeout=10)
    probes = [r for r in clouds.received("aws-euc1") if r.path.endswith("/models")]
    assert probes and all(r.status == 200 for r in probes)
    assert probes[0].headers["authorization"].startswith("AWS4-HMAC-SHA256 ")


# ---------------------------------------------------------------------------- tokens


def test_sustained_run_across_many_token_lifetimes(
    clouds: Fleet, authority: TokenAuthority, entra: TokenAuthority, tmp_path: Path
) -> None:
    """Bedrock (SigV4), Vertex (google-auth service account) and Azure (azure.identity's
    own ClientSecretCredential against a local Entra-style authority over TLS) in one
    catalog, traffic over ~4 token lifetimes: no error reaches the caller, no endpoint
    is penalised, and tokens were refreshed ahead of expiry."""
    from azure.identity import ClientSecretCredential

    entra.add_client("lmc-azure-app", "azure-client-secret-value")
    clouds.set_authorizer("azure-swc", entra.bearer_authorizer())
    azure_cred = ClientSecretCredential(
        "lmc-tenant",
        "lmc-azure-app",
        "azure-client-secret-value",
        authority=entra.authority_url,
        disable_instance_discovery=True,
        connection_verify=entra.ca_path,
    )
    eps = [
        endpoint(clouds, "aws-euc1", auth={"kind": "aws"}),
        endpoint(clouds, "gcp-euw4", auth={"kind": "gcp", "credentials_file": sa_file(authority, tmp_path)}),
        endpoint(clouds, "azure-swc", auth=lmc.auth.azure(azure_cred)),
    ]
    issued0 = {**authority.issued, **entra.issued}
    with multicloud(eps, strategy="weighted") as mc:
        client = mc.wrap(openai.OpenAI(api_key="placeholder"))
        aclient = mc.wrap(openai.AsyncOpenAI(api_key="placeholder"))
        served: dict[str, int] = {}
        errors: list[BaseException] = []
        # two token lifetimes of sync traffic, then two of async traffic (one event loop)
        end = time.monotonic() + 2 * TTL_S
        n = 0
        while time.monotonic() < end and n < 2000:
            n += 1
            try:
                raw = chat(client, stream=n % 2 == 0)
                if n % 2 == 0:
                    assert list(raw.parse())
                who = raw.headers["x-llm-multicloud-endpoint"]
                served[who] = served.get(who, 0) + 1
            except openai.APIError as exc:  # pragma: no cover - what the test forbids
                errors.append(exc)
            time.sleep(0.01)

        async def async_traffic() -> None:
            end = time.monotonic() + 2 * TTL_S
            k = 0
            while time.monotonic() < end and k < 2000:
                k += 1
                try:
                    r = await aclient.chat.completions.with_raw_response.create(
                        model=MODEL, messages=[{"role": "user", "content": "x"}], stream=k % 2 == 0
                    )
                    if k % 2 == 0:
                        assert [c async for c in r.parse()]
                    who = r.headers["x-llm-multicloud-endpoint"]
                    served[who] = served.get(who, 0) + 1
                except openai.APIError as exc:  # pragma: no cover - what the test forbids
                    errors.append(exc)
                await asyncio.sleep(0.01)

        asyncio.run(async_traffic())
        snap = mc.snapshot()
    assert errors == []
    assert set(served) == {"aws-euc1", "gcp-euw4", "azure-swc"}, served
    for e in snap["endpoints"]:
        assert e["failures"] == 0 and e["state"] == "closed", e
    # each token credential fetched several times (every ~1-1.6 s of a 2 s lifetime)
    issued = {**authority.issued, **entra.issued}
    grown = {
        s: issued.get(s, 0) - issued0.get(s, 0)
        for s in ("lmc-azure-app", "sa@lmc-test-project.iam.gserviceaccount.com")
    }
    assert all(v >= 3 for v in grown.values()), grown
    assert entra.scopes_seen == {"https://cognitiveservices.azure.com/.default"}
    azure_cred.close()


def test_expired_token_is_rejected_by_the_server(clouds: Fleet, authority: TokenAuthority) -> None:
    tok, _ = authority.issue("someone", ttl_s=-1.0)
    fresh, _ = authority.issue("someone")
    with httpx_lib.Client() as h:
        url = clouds.url("gcp-euw4") + "/models"
        assert h.get(url, headers={"authorization": f"Bearer {tok}"}).status_code == 401
        assert h.get(url, headers={"authorization": f"Bearer {fresh}"}).status_code == 200


def test_401_refreshes_and_retries_the_same_endpoint_once(clouds: Fleet, authority: TokenAuthority) -> None:
    """The server forgets every token (as after a key rollover): the request still
    succeeds on the same endpoint, with one refresh, no failover, no penalty."""
    authority.add_client("app-401", "s3cret-401")
    cred = EntraLikeCredential(authority.url, "app-401", "s3cret-401")
    eps = [endpoint(clouds, "azure-swc", auth=lmc.auth.azure(cred)), endpoint(clouds, "gcp-euw4", api_key="x")]
    with multicloud(eps) as mc:
        client = mc.wrap(openai.OpenAI(api_key="placeholder"))
        assert chat(client).headers["x-llm-multicloud-endpoint"] == "azure-swc"
        calls = cred.calls
        authority.revoke("app-401")  # tokens forgotten ...
        authority.revoked.discard("app-401")  # ... but the app may get new ones
        raw = chat(client)
        assert raw.headers["x-llm-multicloud-endpoint"] == "azure-swc"
        assert raw.headers["x-llm-multicloud-attempts"] == "1"
        assert cred.calls == calls + 1
        st = next(e for e in mc.snapshot()["endpoints"] if e["id"] == "azure-swc")
        assert st["failures"] == 0 and st["state"] == "closed"
    assert statuses(clouds, "azure-swc") == [200, 401, 200]
    assert statuses(clouds, "gcp-euw4") == []


def test_revoked_credential_cools_only_its_endpoint(clouds: Fleet, authority: TokenAuthority, tmp_path: Path) -> None:
    """Azure's app is revoked: its endpoint is excluded with the reason (explain and
    the next plans), the Vertex endpoint keeps serving; nothing leaks the secret."""
    authority.add_client("app-revoked", "revoked-app-secret")
    cred = EntraLikeCredential(authority.url, "app-revoked", "revoked-app-secret")
    eps = [
        endpoint(clouds, "azure-swc", auth=lmc.auth.azure(cred)),
        endpoint(clouds, "gcp-euw4", auth={"kind": "gcp", "credentials_file": sa_file(authority, tmp_path, "rv.json")}),
    ]
    with multicloud(eps) as mc:
        client = mc.wrap(openai.OpenAI(api_key="placeholder"))
        assert chat(client).headers["x-llm-multicloud-endpoint"] == "azure-swc"
        authority.revoke("app-revoked")
        raw = chat(client)
        assert raw.headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        plan = mc.explain(MODEL)
        assert [c.endpoint.id for c in plan.candidates] == ["gcp-euw4"]
        (x,) = plan.excluded
        assert x.endpoint.id == "azure-swc" and "credential unavailable" in x.reason and "azure" in x.reason
        assert chat(client).headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        snap = mc.snapshot()
        az = next(e for e in snap["endpoints"] if e["id"] == "azure-swc")
        assert az["state"] == "closed" and az["failures"] == 0  # no breaker penalty: the endpoint is fine
        text = json.dumps(snap) + plan.describe() + repr(mc.catalog.endpoints)
        assert "revoked-app-secret" not in text and "at-" not in text


def test_persisting_401_is_an_account_fault_naming_endpoint_and_kind(clouds: Fleet) -> None:
    """The server refuses whatever the provider returns: one refresh, then a cooldown of
    that endpoint only, and a failover; the message names the endpoint and the kind."""
    calls = []

    def bad_token() -> str:
        calls.append(1)
        return f"wrong-token-{len(calls)}"

    clouds.set_authorizer("gcp-euw4", lambda req: False)
    eps = [endpoint(clouds, "gcp-euw4", auth=lmc.auth.provider(bad_token)), endpoint(clouds, "azure-swc", api_key="k")]
    clouds.set_authorizer("azure-swc", lambda req: req.headers.get("authorization") == "Bearer k")
    with multicloud(eps) as mc:
        raw = chat(mc.wrap(openai.OpenAI(api_key="placeholder")))
        assert raw.headers["x-llm-multicloud-endpoint"] == "azure-swc"
        plan = mc.explain(MODEL)
        (x,) = plan.excluded
        assert x.endpoint.id == "gcp-euw4" and x.kind == "cooling"
        assert "HTTP 401 from gcp-euw4: credential provider (" in x.reason and "after a refresh" in x.reason
        assert "wrong-token" not in x.reason
    assert statuses(clouds, "gcp-euw4") == [401, 401]
    assert len(calls) == 2


def test_unobtainable_credentials_give_a_503_with_the_reasons(clouds: Fleet, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")

    def broken() -> str:
        raise RuntimeError("vault is sealed")

    eps = [
        endpoint(clouds, "aws-euc1", auth={"kind": "aws"}),
        endpoint(clouds, "gcp-euw4", auth=lmc.auth.provider(broken)),
    ]
    with multicloud(eps) as mc:
        client = mc.wrap(openai.OpenAI(api_key="placeholder"))
        with pytest.raises(openai.InternalServerError) as ei:
            chat(client)
        msg = str(ei.value)
        assert ei.value.status_code == 503
        assert "aws-euc1" in msg and "no AWS credentials found" in msg
        assert "gcp-euw4" in msg and "vault is sealed" in msg
    assert clouds.received("aws-euc1") == [] and clouds.received("gcp-euw4") == []


# ---------------------------------------------------------------------------- static and provider


def test_key_rotation_through_a_mounted_file(clouds: Fleet, tmp_path: Path) -> None:
    """A Kubernetes-style secret mount (a symlink swapped to a new directory): the
    server rotates the key, the client follows without a failed request."""
    current = {"key": "key-one"}
    clouds.set_authorizer("gcp-euw4", lambda req: req.headers.get("authorization") == f"Bearer {current['key']}")
    mount = tmp_path / "mount"
    mount.mkdir()

    def publish(key: str, gen: int) -> None:
        d = mount / f"..{gen}"
        d.mkdir()
        (d / "key").write_text(key + "\n", encoding="utf-8")
        tmp = mount / "..data_tmp"
        tmp.symlink_to(d.name)
        os.replace(tmp, mount / "..data")

    publish("key-one", 1)
    (mount / "key").symlink_to("..data/key")
    with multicloud([endpoint(clouds, "gcp-euw4", api_key_file=str(mount / "key"))]) as mc:
        client = mc.wrap(openai.OpenAI(api_key="placeholder"))
        assert chat(client).headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        publish("key-two", 2)
        current["key"] = "key-two"
        for _ in range(3):
            assert chat(client).headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        (st,) = mc.snapshot()["endpoints"]
        assert st["failures"] == 0 and st["state"] == "closed"
        assert "key-two" not in json.dumps(mc.snapshot()) and "key-two" not in repr(mc.catalog.endpoints[0])
    # the first request after the rotation may meet the old key once (401), then re-reads
    assert statuses(clouds, "gcp-euw4").count(200) == 4


@pytest.mark.anyio
async def test_async_provider_single_flight(clouds: Fleet) -> None:
    """Thirty concurrent requests on a cold async provider: one call, all succeed."""
    calls = []

    async def token() -> tuple[str, float]:
        calls.append(1)
        await asyncio.sleep(0.05)
        return "tok-async", time.time() + 60

    clouds.set_authorizer("gcp-euw4", lambda req: req.headers.get("authorization") == "Bearer tok-async")
    mc = multicloud([endpoint(clouds, "gcp-euw4", auth=lmc.auth.provider(token))])
    try:
        aclient = mc.wrap(openai.AsyncOpenAI(api_key="placeholder"))
        outs = await asyncio.gather(
            *(
                aclient.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "q"}])
                for _ in range(30)
            )
        )
        assert len(outs) == 30 and all(o.choices for o in outs)
    finally:
        await mc.aclose()
    assert len(calls) == 1


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
