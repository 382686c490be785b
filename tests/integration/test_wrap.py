"""The foundation through the real openai SDK: routing, rewriting, secrets, pass-through.

Each scenario runs on the sync and the async client, streaming and not, and is
judged from what the fleet's servers received.
"""

from __future__ import annotations

import importlib.util

import anyio
import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet

from .conftest import MODEL, SERVED, chat_records, make_mc
from .drive import PLACEHOLDER_KEY, chat

KINDS = ["sync", "async"]
pytestmark = pytest.mark.integration


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_routes_rewrites_model_and_key(mc: lmc.MultiCloud, clean: Fleet, kind: str, stream: bool) -> None:
    ans = chat(mc, kind, stream=stream, extra_headers={"x-llm-multicloud-residency": "EU", "x-custom": "kept"})
    # ordered strategy, EU: the first EU endpoint of the catalog serves
    assert ans.headers["x-llm-multicloud-endpoint"] == "aws-euc1"
    assert ans.headers["x-llm-multicloud-attempts"] == "1"
    assert ans.headers["x-llm-multicloud-hedged"] == "false"
    assert ans.text.startswith("[aws-euc1]")
    [rec] = chat_records(clean)
    assert rec.region_id == "aws-euc1"
    assert rec.model == SERVED["aws-euc1"]  # logical -> served name
    assert rec.headers["authorization"] == "Bearer sk-aws-euc1-secret"  # its own key only
    assert rec.headers.get("x-custom") == "kept"
    assert not [h for h in rec.headers if h.startswith("x-llm-multicloud")]  # routing headers stripped
    assert PLACEHOLDER_KEY not in str(rec.headers)


@pytest.mark.parametrize("kind", KINDS)
def test_stream_usage_requested_for_ledger_but_hidden(mc: lmc.MultiCloud, clean: Fleet, kind: str) -> None:
    ans = chat(mc, kind, stream=True)
    [rec] = chat_records(clean)
    assert rec.json["stream_options"] == {"include_usage": True}  # asked on the caller's behalf...
    assert ans.usage is None  # ...and the usage chunk removed from what the caller sees
    assert all(c.choices for c in ans.chunks)
    assert ans.text.split()[1:] == [f"w{i}" for i in range(len(ans.text.split()) - 1)]
    snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
    assert snap["aws-euc1"]["output_tokens"] == rec.usage["completion_tokens"]


@pytest.mark.parametrize("kind", KINDS)
def test_stream_usage_kept_when_caller_asks(mc: lmc.MultiCloud, clean: Fleet, kind: str) -> None:
    ans = chat(mc, kind, stream=True, stream_options={"include_usage": True})
    [rec] = chat_records(clean)
    assert ans.usage is not None
    assert ans.usage.completion_tokens == rec.usage["completion_tokens"]


def test_role_chunk_and_done_pass_through(mc: lmc.MultiCloud, clean: Fleet) -> None:
    client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_embeddings_and_models(mc: lmc.MultiCloud, clean: Fleet) -> None:
    client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
    emb = client.embeddings.create(model="embed-small", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
    [rec] = [r for r in clean.received() if r.path.endswith("/embeddings")]
    assert rec.model == "aws-euc1-embed"
    ids = [m.id for m in client.models.list()]
    assert ids == ["embed-small", MODEL]  # logical names, answered locally
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    assert not [r for r in clean.received() if r.path.endswith("/models")]


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_model_is_404_listing_models(mc: lmc.MultiCloud, clean: Fleet, kind: str) -> None:
    with pytest.raises(openai.NotFoundError) as ei:
        chat(mc, kind, stream=False, model="gpt-9")
    assert "llama-3.1-8b" in str(ei.value) and "gpt-9" in str(ei.value)
    assert not any(clean.counts().values())


@pytest.mark.parametrize(
    "header,value",
    [
        ("x-llm-multicloud-residency", "XX"),
        ("x-llm-multicloud-near", "mars-1"),
        ("x-llm-multicloud-tags", "no-equals-sign"),
        ("x-llm-multicloud-bogus", "1"),
        ("x-llm-multicloud-residency", "E" * 600),
    ],
)
def test_bad_routing_header_is_400(mc: lmc.MultiCloud, clean: Fleet, header: str, value: str) -> None:
    client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
    with pytest.raises(openai.BadRequestError) as ei:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], extra_headers={header: value}
        )
    assert header in str(ei.value) or "residency" in str(ei.value) or "location" in str(ei.value)
    assert not any(clean.counts().values())


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_usable_is_503_with_reasons_and_no_sdk_retry(clean: Fleet, kind: str) -> None:
    for rid in ("aws-euc1", "gcp-euw4"):
        clean.set_fault(rid, mode="status", status=500)
    with make_mc(clean, {"retry": {"max_attempts": 5}}) as mc, pytest.raises(openai.InternalServerError) as ei:
        chat(mc, kind, stream=False, extra_headers={"x-llm-multicloud-residency": "EU"})
    err = ei.value
    assert err.status_code == 503
    assert err.response.headers["x-should-retry"] == "false"
    msg = str(err)
    for line in ("aws-euc1", "gcp-euw4", "HTTP 500", "aws-use1 (aws us-east-1): outside residency EU"):
        assert line in msg
    # one attempt per EU endpoint, none by the SDK's own retry loop, nothing outside the EU
    counts = clean.counts()
    assert counts["aws-euc1"] == 1 and counts["gcp-euw4"] == 1
    assert counts["aws-use1"] == 0 and counts["azure-jpe"] == 0


def test_wrap_keeps_class_and_disables_sdk_retries(mc: lmc.MultiCloud) -> None:
    raw = openai.OpenAI(api_key=PLACEHOLDER_KEY, max_retries=7)
    wrapped = mc.wrap(raw)
    assert type(wrapped) is type(raw)
    assert wrapped.max_retries == 0
    assert lmc.multicloud_of(wrapped) is mc
    araw = openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY)
    assert type(mc.wrap(araw)) is type(araw)


def test_module_level_wrap_owns_its_multicloud(clean: Fleet) -> None:
    client = lmc.wrap(
        openai.OpenAI(api_key=PLACEHOLDER_KEY), catalog=clean.catalog(), policy={"probe": {"enabled": False}}
    )
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content
    mc = lmc.multicloud_of(client)
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        mc._portal()


def test_wrap_rejects_non_openai_objects(mc: lmc.MultiCloud) -> None:
    with pytest.raises(TypeError, match="openai client"):
        mc.wrap(object())


def test_http_library_matches_the_openai_line(mc: lmc.MultiCloud) -> None:
    """openai 3.x must be driven through httpx2, openai 2.x through legacy httpx."""
    wrapped = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
    lib = type(wrapped._client).__module__.split(".")[0]
    major = int(openai.__version__.split(".")[0])
    assert lib == ("httpx2" if major >= 3 else "httpx")


@pytest.mark.parametrize("lib", ["httpx2", "httpx"])
def test_httpx_clients_for_other_sdks(mc: lmc.MultiCloud, clean: Fleet, lib: str) -> None:
    if importlib.util.find_spec(lib) is None:
        pytest.skip(f"{lib} is not installed on this openai line")
    with mc.httpx_client(lib=lib) as http:
        r = http.post("/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].startswith("[aws-euc1]")

    async def run() -> str:
        async with mc.async_httpx_client(lib=lib) as ahttp:
            r = await ahttp.post("/embeddings", json={"model": "embed-small", "input": "x"})
            return str(r.headers["x-llm-multicloud-endpoint"])

    assert anyio.run(run) == "aws-euc1"


def test_sync_stream_closed_early_disconnects_upstream(mc: lmc.MultiCloud, clean: Fleet) -> None:
    clean.set_latency("aws-euc1", ttft_ms=2, ttft_jitter=0, itl_ms=20)
    client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True, max_tokens=200
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    clean.wait_for(lambda: chat_records(clean)[0].outcome == "disconnected")
    snap = {e["id"]: e for e in mc.snapshot()["endpoints"]}
    assert snap["aws-euc1"]["in_flight"] == 0


@pytest.mark.anyio
async def test_async_stream_closed_early_disconnects_upstream(mc: lmc.MultiCloud, clean: Fleet) -> None:
    clean.set_latency("aws-euc1", ttft_ms=2, ttft_jitter=0, itl_ms=20)
    client = mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY))
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], stream=True, max_tokens=200
    )
    n = 0
    async for _ in stream:
        n += 1
        if n == 3:
            break
    await stream.close()
    await anyio.to_thread.run_sync(lambda: clean.wait_for(lambda: chat_records(clean)[0].outcome == "disconnected"))
    await client.close()


def test_malformed_catalog_error_names_field_and_fix(tmp_path: object) -> None:
    import pathlib

    p = pathlib.Path(str(tmp_path)) / "catalog.yaml"
    p.write_text(
        "endpoints:\n"
        "  - id: gcp-x\n    provider: gcp\n    region: europe-wset4\n    base_url: https://h/v1\n"
        "    api_key: sk-very-secret-key\n    models: {m: m}\n"
    )
    with pytest.raises(lmc.CatalogError) as ei:
        lmc.MultiCloud(str(p))
    msg = str(ei.value)
    assert "endpoints[0] (id='gcp-x').region" in msg and "europe-wset4" in msg and "europe-west4" in msg
    assert "sk-very-secret-key" not in msg


def test_http_options_reach_the_endpoint_connections(clean: Fleet) -> None:
    """TLS and proxy settings for endpoint connections: here, an unusable proxy makes
    every attempt fail, which shows the option is applied (nothing leaves loopback)."""
    mc = make_mc(clean, http_options={"proxy": "http://127.0.0.1:9"})
    with mc, pytest.raises(openai.InternalServerError, match="connect"):
        mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY)).chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}]
        )
    assert not any(clean.counts().values())
