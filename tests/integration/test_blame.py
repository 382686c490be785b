"""The blame rule, one test per fault: an endpoint's health changes only for its own
faults. The caller's faults (a 404 for a path or a served name the server does not
have), faults of this process (an exception that is not the HTTP library's) and
stream formats the library does not parse never penalise an endpoint and never fail
over. Through the real openai SDK (sync and async, streamed and not), judged from
what the fleet's servers received and from the health snapshot."""

from __future__ import annotations

from typing import Any

import anyio
import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet

from .conftest import MODEL, Audit, chat_records, make_mc
from .drive import PLACEHOLDER_KEY

pytestmark = pytest.mark.integration
KINDS = ["sync", "async"]
MSG = [{"role": "user", "content": "hi"}]


def health(mc: lmc.MultiCloud) -> dict[str, tuple[str, int, int]]:
    """What the blame rule protects: per endpoint, its state, failures and ejections."""
    return {e["id"]: (e["state"], e["failures"], e["ejections"]) for e in mc.snapshot()["endpoints"]}


HEALTHY = {rid: ("closed", 0, 0) for rid in ("aws-euc1", "gcp-euw4", "aws-use1", "azure-jpe")}


def call(mc: lmc.MultiCloud, kind: str, *, stream: bool = False, **kw: Any) -> None:
    """One chat call through a wrapped sync or async openai client, read to its end."""
    kw.setdefault("model", MODEL)
    kw.setdefault("messages", MSG)
    if kind == "sync":
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        if stream:
            list(client.chat.completions.create(stream=True, **kw))
        else:
            client.chat.completions.create(**kw)
        return

    async def run() -> None:
        async with mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY)) as c:
            if stream:
                [_ async for _ in await c.chat.completions.create(stream=True, **kw)]
            else:
                await c.chat.completions.create(**kw)

    anyio.run(run)


def legacy_completions(mc: lmc.MultiCloud, kind: str, stream: bool, n: int) -> list[type[BaseException]]:
    """``n`` legacy completions calls (the fleet serves no ``/v1/completions``)."""
    errors: list[type[BaseException]] = []
    if kind == "sync":
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        for i in range(n):
            try:
                out = client.completions.create(model=MODEL, prompt=f"p{i}", max_tokens=4, stream=stream)
                if stream:
                    list(out)  # type: ignore[call-overload]
            except openai.APIError as exc:
                errors.append(type(exc))
        return errors

    async def run() -> None:
        async with mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY)) as client:
            for i in range(n):
                try:
                    out = await client.completions.create(model=MODEL, prompt=f"p{i}", max_tokens=4, stream=stream)
                    if stream:
                        [_ async for _ in out]  # type: ignore[union-attr]
                except openai.APIError as exc:
                    errors.append(type(exc))

    anyio.run(run)
    return errors


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_100_requests_to_a_missing_route_eject_nothing(clean: Fleet, kind: str, stream: bool) -> None:
    """A path no server has (legacy completions on chat-only servers) is the caller's
    404: passed back at once, one request per call, and the fleet stays healthy."""
    with make_mc(clean) as mc:
        errors = legacy_completions(mc, kind, stream, 100)
        assert errors == [openai.NotFoundError] * 100
        received = clean.received()
        assert len(received) == 100  # no failover: one server asked per call
        assert {r.region_id for r in received} == {"aws-euc1"}  # ordered: the first one
        assert health(mc) == HEALTHY
        # chat traffic still goes to the first endpoint: nothing was ejected, no panic
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        r = client.chat.completions.with_raw_response.create(model=MODEL, messages=MSG)
        assert r.headers["x-llm-multicloud-endpoint"] == "aws-euc1"
        assert "panic" not in mc.explain(MODEL).describe()


@pytest.mark.parametrize("kind", KINDS)
def test_a_404_for_the_served_name_is_the_callers_without_probes(clean: Fleet, kind: str) -> None:
    """Without probes nothing says the endpoint lost the model: its 404 is handed
    back as the SDK's NotFoundError, and nobody is penalised."""
    clean.set_models("aws-euc1", {MODEL: "renamed-by-the-provider"})
    audit = Audit()
    with make_mc(clean, on_attempt=audit) as mc:
        for _ in range(10):
            with pytest.raises(openai.NotFoundError):
                call(mc, kind)
        assert [(a.endpoint, a.status, a.outcome) for a in audit.records] == [("aws-euc1", 404, "request_error")] * 10
        assert health(mc) == HEALTHY


def test_a_model_the_probes_show_missing_is_routed_around(clean: Fleet) -> None:
    """...but once the probes see the served name disappear from ``/models``, the
    router excludes that endpoint before sending anything."""
    with make_mc(clean, {"probe": {"enabled": True, "interval_s": 0.05}}) as mc:
        client = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))
        client.chat.completions.create(model=MODEL, messages=MSG)  # starts the probes
        clean.wait_for(lambda: all(e["rtt_ms"] is not None for e in mc.snapshot()["endpoints"]))
        clean.set_models("aws-euc1", {MODEL: "renamed-by-the-provider", "embed-small": "aws-euc1-embed"})
        clean.wait_for(lambda: mc.snapshot()["endpoints"][0]["missing_models"] == [MODEL])
        clean.clear()
        r = client.chat.completions.with_raw_response.create(model=MODEL, messages=MSG)
        assert r.headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        assert chat_records(clean, "aws-euc1") == []


def test_failover_on_is_a_policy_setting(clean: Fleet) -> None:
    """``failover_on`` says which statuses are the endpoint's fault: adding 404 brings
    failover on 404 back; leaving 503 out hands a 503 to the caller unpenalised."""
    clean.set_models("aws-euc1", {MODEL: "renamed-by-the-provider"})
    with make_mc(clean, {"failover_on": [404, "5xx"]}) as mc:
        r = mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY)).chat.completions.with_raw_response.create(
            model=MODEL, messages=MSG
        )
        assert r.headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        assert health(mc)["aws-euc1"][1] == 1
    clean.reset()
    clean.set_fault("aws-euc1", mode="status", status=503)
    with make_mc(clean, {"failover_on": [429, 500]}) as mc:
        with pytest.raises(openai.InternalServerError) as ei:
            mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY)).chat.completions.create(model=MODEL, messages=MSG)
        assert ei.value.status_code == 503 and ei.value.response.headers["x-llm-multicloud-endpoint"] == "aws-euc1"
        assert health(mc) == HEALTHY
    with pytest.raises(lmc.CatalogError, match="failover_on"):
        lmc.MultiCloud(clean.catalog(), {"failover_on": [200]})


def _bad_socket_options() -> dict[str, Any]:
    # A setting of this process that makes the HTTP library's socket code raise a
    # TypeError (not an HTTP library error) on every connection: our fault, not the
    # endpoints'. Stands for any bug or loop problem below the executor.
    return {"socket_options": [(0, 0)]}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("kind", KINDS)
def test_an_exception_that_is_not_the_http_librarys_penalises_nobody(clean: Fleet, kind: str, stream: bool) -> None:
    audit = Audit()
    with make_mc(clean, on_attempt=audit, http_options=_bad_socket_options()) as mc:
        for _ in range(20):
            with pytest.raises(openai.InternalServerError) as ei:
                call(mc, kind, stream=stream)
            assert ei.value.status_code == 500 and ei.value.code == "local_error"
            assert "TypeError" in ei.value.message and "no endpoint was penalised" in ei.value.message
        assert clean.received() == []  # nothing reached any server
        assert len(audit.records) == 20  # one attempt per call: no failover storm
        assert {a.outcome for a in audit.records} == {"local_error"}
        assert health(mc) == HEALTHY


@pytest.mark.parametrize("kind", KINDS)
def test_a_header_that_would_break_http_is_the_callers_400(clean: Fleet, kind: str) -> None:
    """A forwarded header with CR/LF cannot be sent: a 400 naming the header, before
    any byte leaves the process (it used to fail every endpoint in turn)."""
    with make_mc(clean) as mc:
        with pytest.raises(openai.BadRequestError, match="x-trace"):
            call(mc, kind, extra_headers={"x-trace": "a\r\nb"})
        assert clean.received() == []
        assert health(mc) == HEALTHY


def test_a_stream_format_we_do_not_parse_is_refused_before_sending(clean: Fleet) -> None:
    """Anthropic Messages streams through ``httpx_client()``: a clear 400 before any
    byte is sent, never "stream ended before the first token" charged to endpoints."""
    with make_mc(clean) as mc, mc.httpx_client(timeout=30.0) as http:
        body = {"model": MODEL, "max_tokens": 8, "messages": MSG, "stream": True}
        for path in ("/messages", "/v1/messages"):  # relative to the placeholder, and to its root
            r = http.post(path, json=body)
            assert r.status_code == 400, r.text
            assert r.headers["x-llm-multicloud-error"] == "stream_not_supported"
            assert "messages" in r.json()["error"]["message"] and "not supported" in r.json()["error"]["message"]
        assert clean.received() == []
        assert health(mc) == HEALTHY


def test_anthropic_sdk_streams_are_refused_clearly(clean: Fleet) -> None:
    anthropic = pytest.importorskip("anthropic")
    with make_mc(clean) as mc:
        client = anthropic.Anthropic(
            api_key="unused", base_url=lmc.PLACEHOLDER_ROOT_URL, http_client=mc.httpx_client(), max_retries=0
        )
        with (
            pytest.raises(anthropic.BadRequestError, match="not supported"),
            client.messages.stream(model=MODEL, max_tokens=8, messages=MSG) as s,
        ):
            list(s)
        assert clean.received() == []
        assert health(mc) == HEALTHY


@pytest.mark.parametrize("cls", ["AzureOpenAI", "AsyncAzureOpenAI"])
def test_wrap_refuses_azure_clients_saying_what_to_do(clean: Fleet, cls: str) -> None:
    """openai.AzureOpenAI rewrites every path per deployment: wrapped, each request
    would 404 everywhere. Refused before anything is sent, with the way to do it."""
    client = getattr(openai, cls)(api_key="unused", api_version="2024-10-21", azure_endpoint="https://x.invalid")
    with make_mc(clean) as mc:
        with pytest.raises(TypeError, match="preset: azure-openai") as ei:
            mc.wrap(client)
        assert cls in str(ei.value) and "openai.OpenAI" in str(ei.value)
    with pytest.raises(TypeError, match="preset: azure-openai"):
        lmc.wrap(client, catalog=clean.catalog())
    assert clean.received() == []


@pytest.mark.parametrize("entry", ["wrap", "httpx_client"])
def test_http_options_are_accepted_by_every_entry_point(clean: Fleet, entry: str) -> None:
    """``http_options`` reach the endpoint connections from wrap() and httpx_client()
    too: the socket options given here make every connection fail locally."""
    opts = _bad_socket_options()
    if entry == "wrap":
        client = lmc.wrap(
            openai.OpenAI(api_key=PLACEHOLDER_KEY),
            catalog=clean.catalog(),
            policy={"probe": {"enabled": False}},
            http_options=opts,
        )
        with client, pytest.raises(openai.InternalServerError, match="TypeError"):
            client.chat.completions.create(model=MODEL, messages=MSG)
    else:
        with lmc.httpx_client(clean.catalog(), policy={"probe": {"enabled": False}}, http_options=opts) as http:
            r = http.post("/chat/completions", json={"model": MODEL, "messages": MSG})
            assert r.status_code == 500 and r.headers["x-llm-multicloud-error"] == "local_error"
    assert clean.received() == []
    with make_mc(clean) as mc, pytest.raises(ValueError, match="http_options"):
        lmc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY), catalog=mc, http_options=opts)


@pytest.mark.parametrize("kind", KINDS)
def test_a_local_fault_after_commit_penalises_nobody(clean: Fleet, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A committed stream whose HTTP library raises something that is not one of its
    own errors mid-body (here ``RuntimeError: Event loop is closed``, as a pool whose
    loop is gone does) is interrupted for the caller — never truncated silently —
    but the endpoint is not charged and the stream is not resumed elsewhere."""
    from llm_multicloud import upstream as upstream_mod

    def patch(cls: Any) -> None:
        real_open = cls.open
        blocking = cls is upstream_mod.SyncUpstream  # a sync client's own-thread pools

        async def open_then_break(self: Any, *args: Any, **kw: Any) -> Any:
            resp = await real_open(self, *args, **kw)
            if type(self) is not cls:
                return resp
            if blocking:
                sinner = resp._resp.iter_bytes

                def sbody() -> Any:
                    contents = 0
                    for chunk in sinner():
                        yield chunk
                        contents += chunk.count(b'"delta":{"content":"')
                        if contents >= 3:
                            raise RuntimeError("Event loop is closed")

                resp._resp.iter_bytes = sbody
                return resp
            # The transport's response stream: what the async path reads an event stream from.
            inner = resp._resp.stream

            class Body(type(inner)):  # type: ignore[misc]
                def __init__(self) -> None:
                    pass

                async def __aiter__(self) -> Any:
                    contents = 0
                    async for chunk in inner:
                        yield chunk
                        contents += chunk.count(b'"delta":{"content":"')
                        if contents >= 3:
                            raise RuntimeError("Event loop is closed")

                async def aclose(self) -> None:
                    await inner.aclose()

            resp._resp.stream = Body()
            return resp

        monkeypatch.setattr(cls, "open", open_then_break)

    patch(upstream_mod.Upstream)
    patch(upstream_mod.SyncUpstream)
    clean.set_latency("aws-euc1", lmc.fleet.Latency(ttft_ms=5, ttft_jitter=0.0, itl_ms=40.0))
    audit = Audit()
    with make_mc(clean, {"resume": {"enabled": True}}, on_attempt=audit) as mc:
        with pytest.raises(lmc.StreamInterrupted, match="Event loop is closed") as ei:
            call(mc, kind, stream=True, max_tokens=20)
        assert ei.value.endpoint == "aws-euc1" and ei.value.delivered_text
        assert [(a.endpoint, a.outcome) for a in audit.records] == [("aws-euc1", "interrupted")]
        assert len(chat_records(clean, "aws-euc1")) == 1 and clean.received() == chat_records(clean, "aws-euc1")
        assert health(mc) == HEALTHY
