"""The simulated fleet, driven by the real openai SDK.

These tests pin down the behaviour the rest of the integration suite relies on
when it judges routing from what each server received: OpenAI-exact wire
format, faults that look like real outages, and records that say what
happened (including "the client went away").
"""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

try:  # openai 3.x runs on httpx2, 2.x on httpx: use whichever this line has
    import httpx2 as http_lib
except ImportError:  # pragma: no cover - the openai 2.x test line
    import httpx as http_lib  # type: ignore[no-redef]
import openai
import pytest

from llm_multicloud.fleet import (
    Fault,
    Fleet,
    FleetSpec,
    Latency,
    RegionSpec,
    demo_spec,
    start_fleet_process,
)

pytestmark = pytest.mark.integration

MODEL = "llama-3.1-8b"
SERVED = "meta-llama/Llama-3.1-8B-Instruct"
EMBED_SERVED = "BAAI/bge-m3"
FAST = Latency(ttft_ms=2, ttft_jitter=0)


def _spec() -> FleetSpec:
    return FleetSpec(
        regions=[
            RegionSpec(
                id="aws-use1",
                provider="aws",
                region="us-east-1",
                api_key="key-aws",
                models={MODEL: SERVED, "bge-m3": EMBED_SERVED},
                latency=FAST,
                pricing={"input_per_mtok": 0.02, "output_per_mtok": 0.2},
            ),
            RegionSpec(
                id="gcp-euw4",
                provider="gcp",
                region="europe-west4",
                api_key="key-gcp",
                models={MODEL: "llama-3.1-8b-instruct"},
                latency=FAST,
            ),
            # Slow enough per token that a client can leave in the middle of a stream.
            RegionSpec(
                id="onprem",
                api_key="key-onprem",
                models={MODEL: SERVED},
                latency=Latency(ttft_ms=2, ttft_jitter=0, itl_ms=15),
            ),
        ]
    )


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with Fleet(_spec()) as f:
        yield f


@pytest.fixture(autouse=True)
def _fresh(fleet: Fleet) -> None:
    fleet.reset()  # configured faults/latency/models back, records and counters cleared


def client(fleet: Fleet, region: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=fleet.url(region), api_key=fleet.api_key(region), max_retries=0, **kw)


def chat(c: openai.OpenAI, model: str = SERVED, **kw: Any) -> Any:
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": "say hello"}], **kw)


def only_chat(fleet: Fleet, region: str) -> list[Any]:
    return [r for r in fleet.received(region) if r.path == "/v1/chat/completions"]


# ---------------------------------------------------------------- happy paths


def test_non_stream_names_region_and_counts_usage(fleet: Fleet) -> None:
    c = client(fleet, "aws-use1")
    r = c.chat.completions.create(
        model=SERVED,
        max_tokens=5,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "one two three"}],
    )
    assert r.object == "chat.completion"
    assert r.model == SERVED
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "[aws-use1] w0 w1 w2 w3 w4"
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 5, 10)

    assert (
        chat(client(fleet, "gcp-euw4"), model="llama-3.1-8b-instruct")
        .choices[0]
        .message.content.startswith("[gcp-euw4] ")
    )
    (rec,) = only_chat(fleet, "aws-use1")
    assert rec.outcome == "ok" and rec.status == 200 and rec.model == SERVED and not rec.stream
    assert rec.headers["authorization"] == "Bearer key-aws"
    assert rec.json["max_tokens"] == 5
    assert fleet.counts() == {"aws-use1": 1, "gcp-euw4": 1, "onprem": 0}


def test_stream_role_chunk_then_content_then_done_with_usage(fleet: Fleet) -> None:
    stream = chat(client(fleet, "aws-use1"), stream=True, max_tokens=4, stream_options={"include_usage": True})
    chunks = list(stream)  # ends cleanly at [DONE]
    ids = {ch.id for ch in chunks}
    assert len(ids) == 1 and all(ch.object == "chat.completion.chunk" for ch in chunks)
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == ""
    content = [ch.choices[0].delta.content for ch in chunks[1:5]]
    assert content == ["[aws-use1] w0", " w1", " w2", " w3"]
    assert chunks[5].choices[0].finish_reason == "length"
    assert chunks[6].choices == [] and chunks[6].usage is not None
    assert chunks[6].usage.completion_tokens == 4 and chunks[6].usage.prompt_tokens == 2
    assert len(chunks) == 7

    rec = only_chat(fleet, "aws-use1")[-1]
    assert (
        rec.stream
        and rec.outcome == "ok"
        and rec.chunks_sent == 4
        and rec.usage == chunks[6].usage.model_dump(exclude_none=True)
    )

    # Without include_usage there is no usage chunk.
    assert all(ch.usage is None for ch in chat(client(fleet, "aws-use1"), stream=True))


def test_ttft_comes_after_headers_and_role_chunk(fleet: Fleet) -> None:
    fleet.set_latency("aws-use1", ttft_ms=300, ttft_jitter=0)
    body = {"model": SERVED, "stream": True, "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
    with http_lib.Client() as http:
        t0 = time.monotonic()
        with http.stream(
            "POST", fleet.url("aws-use1") + "/chat/completions", json=body, headers={"authorization": "Bearer key-aws"}
        ) as resp:
            t_headers = time.monotonic() - t0
            events = []
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    events.append((time.monotonic() - t0, line))
    assert t_headers < 0.15
    role_t, role = events[0]
    assert '"role":"assistant"' in role and role_t < 0.15
    content_t, content = events[1]
    assert '"content":"[aws-use1] w0"' in content and content_t >= 0.28
    assert events[-1][1] == "data: [DONE]"


def test_continue_final_message_continues_the_word_sequence(fleet: Fleet) -> None:
    c = client(fleet, "gcp-euw4")
    r = c.chat.completions.create(
        model="llama-3.1-8b-instruct",
        max_tokens=3,
        messages=[{"role": "user", "content": "go"}, {"role": "assistant", "content": "[aws-use1] w0 w1"}],
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    assert r.choices[0].message.content == " w2 w3 w4"
    # vLLM rejects continue_final_message with the (default) generation prompt.
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(
            model="llama-3.1-8b-instruct",
            messages=[{"role": "user", "content": "go"}, {"role": "assistant", "content": "w0"}],
            extra_body={"continue_final_message": True},
        )


def test_embeddings_float_and_base64(fleet: Fleet) -> None:
    c = client(fleet, "aws-use1")
    as_float = c.embeddings.create(model=EMBED_SERVED, input=["hello world", "bye"], encoding_format="float")
    default = c.embeddings.create(model=EMBED_SERVED, input=["hello world", "bye"])  # SDK asks for base64
    assert [d.index for d in as_float.data] == [0, 1]
    assert all(len(d.embedding) == 8 for d in as_float.data)
    assert as_float.data[0].embedding != as_float.data[1].embedding
    for a, b in zip(as_float.data, default.data, strict=True):
        assert a.embedding == pytest.approx(b.embedding, abs=1e-6)
    assert as_float.usage.prompt_tokens == 3 and as_float.usage.total_tokens == 3
    assert c.embeddings.create(model=EMBED_SERVED, input="single").data[0].embedding == pytest.approx(
        c.embeddings.create(model=EMBED_SERVED, input=["single"]).data[0].embedding
    )
    assert fleet.counts()["aws-use1"] == 4


def test_models_list_and_set_models(fleet: Fleet) -> None:
    c = client(fleet, "aws-use1")
    assert sorted(m.id for m in c.models.list()) == sorted([SERVED, EMBED_SERVED])
    fleet.set_models("aws-use1", {"bge-m3": EMBED_SERVED})
    assert [m.id for m in c.models.list()] == [EMBED_SERVED]
    with pytest.raises(openai.NotFoundError):
        chat(c)
    assert fleet.counts()["aws-use1"] == 1  # /v1/models is not an inference request


def test_metrics_exposes_vllm_gauges(fleet: Fleet) -> None:
    fleet.set_waiting("aws-use1", 7)
    text = urllib.request.urlopen(fleet.url("aws-use1").removesuffix("/v1") + "/metrics", timeout=5).read().decode()
    assert "# TYPE vllm:num_requests_running gauge" in text
    assert f'vllm:num_requests_running{{model_name="{SERVED}"}} 0.0' in text
    assert f'vllm:num_requests_waiting{{model_name="{SERVED}"}} 7.0' in text
    assert "vllm:gpu_cache_usage_perc{" in text


# ---------------------------------------------------------------- errors


def test_wrong_key_is_401_and_the_record_shows_the_key(fleet: Fleet) -> None:
    c = openai.OpenAI(base_url=fleet.url("aws-use1"), api_key="key-gcp", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        chat(c)
    assert info.value.status_code == 401
    assert info.value.code == "invalid_api_key"
    (rec,) = only_chat(fleet, "aws-use1")
    assert rec.headers["authorization"] == "Bearer key-gcp" and rec.outcome == "error:401"


def test_unknown_model_is_404_model_not_found(fleet: Fleet) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        chat(client(fleet, "aws-use1"), model=MODEL)  # the logical name is not a served name
    assert info.value.code == "model_not_found"
    assert info.value.body["type"] == "invalid_request_error"  # type: ignore[index]


def test_invalid_json_is_400(fleet: Fleet) -> None:
    resp = http_lib.post(
        fleet.url("aws-use1") + "/chat/completions",
        content=b"{nope",
        headers={"authorization": "Bearer key-aws", "content-type": "application/json"},
    )
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------- faults


def test_status_fault_429_with_retry_after(fleet: Fleet) -> None:
    fleet.set_fault("aws-use1", mode="status", status=429, retry_after="2", retry_after_ms=1500)
    with pytest.raises(openai.RateLimitError) as info:
        chat(client(fleet, "aws-use1"))
    assert info.value.response.headers["retry-after"] == "2"
    assert info.value.response.headers["retry-after-ms"] == "1500"
    assert info.value.code == "rate_limit_exceeded"
    assert only_chat(fleet, "aws-use1")[-1].outcome == "fault:status"
    fleet.set_fault("aws-use1")
    assert chat(client(fleet, "aws-use1")).choices[0].message.content


def test_status_fault_custom_body_applies_to_streams_too(fleet: Fleet) -> None:
    fleet.set_fault("aws-use1", Fault(mode="status", status=503, body='{"error":{"message":"maintenance"}}'))
    with pytest.raises(openai.InternalServerError) as info:
        chat(client(fleet, "aws-use1"), stream=True)
    assert info.value.status_code == 503 and "maintenance" in info.value.message


def test_close_mid_stream_is_an_error_not_a_clean_end(fleet: Fleet) -> None:
    fleet.set_fault("aws-use1", mode="close_mid_stream", after_chunks=2)
    got: list[str] = []
    # openai 3.x reports the incomplete chunked body as a connection error; 2.x lets
    # the HTTP library's RemoteProtocolError through. Either way: an error, not an end.
    with pytest.raises((openai.APIConnectionError, http_lib.RemoteProtocolError)) as info:
        for ch in chat(client(fleet, "aws-use1"), stream=True, max_tokens=6):
            if ch.choices and ch.choices[0].delta.content:
                got.append(ch.choices[0].delta.content)
    assert "incomplete" in str(info.value.__cause__ or info.value)
    assert got == ["[aws-use1] w0", " w1"]
    rec = only_chat(fleet, "aws-use1")[-1]
    assert rec.outcome == "fault:close_mid_stream" and rec.chunks_sent == 2

    # Non-stream: the body is cut short, the SDK sees a broken response.
    with pytest.raises(openai.APIConnectionError):
        chat(client(fleet, "aws-use1"))


def test_malformed_sse_event_breaks_json_decoding(fleet: Fleet) -> None:
    fleet.set_fault("aws-use1", mode="malformed_sse", after_chunks=1)
    with pytest.raises(ValueError):  # json.JSONDecodeError
        list(chat(client(fleet, "aws-use1"), stream=True))
    assert only_chat(fleet, "aws-use1")[-1].fault == "malformed_sse"


def test_down_refuses_connections_and_recovers_on_the_same_port(fleet: Fleet) -> None:
    c = client(fleet, "aws-use1")
    port = fleet.port("aws-use1")
    assert chat(c).choices  # leaves a pooled keep-alive connection behind
    fleet.set_fault("aws-use1", mode="down")
    with pytest.raises(openai.APIConnectionError):
        chat(c)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert fleet.state("aws-use1")["listening"] is False
    assert fleet.counts()["aws-use1"] == 1  # the refused request never reached the server

    fleet.set_fault("aws-use1")  # recover
    assert fleet.port("aws-use1") == port
    assert chat(c).choices[0].message.content.startswith("[aws-use1]")
    assert chat(client(fleet, "gcp-euw4"), model="llama-3.1-8b-instruct").choices  # others never noticed


def test_hang_times_out_and_is_recorded_as_disconnected(fleet: Fleet) -> None:
    fleet.set_fault("aws-use1", mode="hang")
    c = client(fleet, "aws-use1", timeout=0.4)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            chat(c)
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=call)
    t.start()
    # While hanging the request is in flight and /metrics says so.
    fleet.wait_for(lambda: fleet.in_flight("aws-use1") == 1)
    metrics = urllib.request.urlopen(fleet.url("aws-use1").removesuffix("/v1") + "/metrics", timeout=5).read()
    assert f'vllm:num_requests_running{{model_name="{SERVED}"}} 1.0'.encode() in metrics
    t.join(5)
    assert len(errors) == 1 and isinstance(errors[0], openai.APITimeoutError)
    fleet.wait_for(lambda: only_chat(fleet, "aws-use1")[-1].outcome == "disconnected")
    rec = only_chat(fleet, "aws-use1")[-1]
    assert rec.fault == "hang" and rec.status is None and fleet.disconnects("aws-use1") == 1
    fleet.wait_for(lambda: fleet.in_flight("aws-use1") == 0)


def test_client_closing_a_stream_early_is_recorded_as_disconnected(fleet: Fleet) -> None:
    stream = chat(client(fleet, "onprem"), stream=True, max_tokens=200)
    it = iter(stream)
    for _ in range(3):
        next(it)
    stream.close()
    fleet.wait_for(lambda: only_chat(fleet, "onprem")[-1].outcome == "disconnected")
    rec = only_chat(fleet, "onprem")[-1]
    assert 2 <= rec.chunks_sent < 200
    assert fleet.disconnects("onprem") == 1


def test_slow_fault_multiplies_ttft(fleet: Fleet) -> None:
    fleet.set_fault("aws-use1", mode="slow")  # 2 ms * 20
    t0 = time.monotonic()
    chat(client(fleet, "aws-use1"))
    assert time.monotonic() - t0 >= 0.035
    rec = only_chat(fleet, "aws-use1")[-1]
    assert rec.outcome == "fault:slow" and rec.ttft_ms == pytest.approx(40.0)


def test_fault_probability_flaps_deterministically(fleet: Fleet) -> None:
    fleet.set_fault("gcp-euw4", mode="status", status=503, probability=0.5)
    c = client(fleet, "gcp-euw4")
    outcomes = []
    for _ in range(30):
        try:
            chat(c, model="llama-3.1-8b-instruct")
            outcomes.append("ok")
        except openai.InternalServerError:
            outcomes.append("503")
    assert 5 <= outcomes.count("503") <= 25
    assert [r.outcome for r in only_chat(fleet, "gcp-euw4")] == [
        "ok" if o == "ok" else "fault:status" for o in outcomes
    ]


# ---------------------------------------------------------------- catalog, demo, process


def test_catalog_points_at_the_fleet(fleet: Fleet) -> None:
    cat = fleet.catalog(models={MODEL: {"context_window": 8192}, "extra": {}}, policy={"strategy": "latency"})
    assert cat["models"][MODEL] == {"context_window": 8192}
    assert cat["models"]["bge-m3"] == {"context_window": 131072} and "extra" in cat["models"]
    assert cat["policy"] == {"strategy": "latency"}
    aws = next(e for e in cat["endpoints"] if e["id"] == "aws-use1")
    assert aws == {
        "id": "aws-use1",
        "provider": "aws",
        "region": "us-east-1",
        "base_url": fleet.url("aws-use1"),
        "api_key": "key-aws",
        "models": {MODEL: SERVED, "bge-m3": EMBED_SERVED},
        "pricing": {"input_per_mtok": 0.02, "output_per_mtok": 0.2},
    }
    assert "pricing" not in next(e for e in cat["endpoints"] if e["id"] == "onprem")


def test_demo_spec_is_three_clouds_with_regional_prices() -> None:
    spec = demo_spec()
    assert {r.provider for r in spec.regions} >= {"aws", "gcp", "azure", "onprem"}
    prices = {r.id: r.pricing["output_per_mtok"] for r in spec.regions if r.pricing}
    assert len(set(prices.values())) == len(prices)
    assert all(20 <= r.latency.ttft_ms <= 80 for r in spec.regions)


def test_fleet_process_is_driven_over_http() -> None:
    spec = FleetSpec(regions=[RegionSpec(id="solo", api_key="k", models={MODEL: SERVED}, latency=FAST)])
    with start_fleet_process(spec) as proc:
        c = openai.OpenAI(base_url=proc.url("solo"), api_key="k", max_retries=0)
        assert chat(c).choices[0].message.content.startswith("[solo]")

        proc.set_fault("solo", mode="status", status=503)
        with pytest.raises(openai.InternalServerError):
            chat(c)
        proc.set_fault("solo", mode="down")  # through the control server, which stays up
        with pytest.raises(openai.APIConnectionError):
            chat(c)
        proc.set_fault("solo")
        assert chat(c).choices

        records = proc.received("solo")
        assert [r.outcome for r in records] == ["ok", "fault:status", "ok"]
        assert records[0].region_id == "solo" and records[0].headers["authorization"] == "Bearer k"
        assert proc.counts() == {"solo": 3}
        proc.clear()
        assert proc.received() == []
        assert proc.catalog()["endpoints"][0]["base_url"] == proc.url("solo")
    assert proc.proc.poll() is not None
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(proc.control_url + "/_fleet/state", timeout=2)
