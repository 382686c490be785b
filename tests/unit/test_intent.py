"""Intent: parsing one SDK request once (routing headers, forwardable headers, body)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_multicloud import regions
from llm_multicloud.context import routing
from llm_multicloud.errors import RoutingError
from llm_multicloud.intent import Intent, parse


def _body(**kw: Any) -> bytes:
    obj = {"model": "llama-3.1-8b", "messages": [{"role": "user", "content": "hi"}], **kw}
    return json.dumps(obj).encode()


def _parse(headers: list[tuple[str, str]] | None = None, body: bytes | None = None, **kw: Any) -> Intent:
    return parse(
        kw.pop("method", "post"),
        kw.pop("path", "/chat/completions"),
        kw.pop("query", ""),
        headers or [],
        _body() if body is None else body,
        kw.pop("timeout_s", 60.0),
    )


def _names(intent: Intent) -> set[str]:
    return {k for k, _ in intent.headers}


# --------------------------------------------------------------------------- basics


def test_basic_chat_request() -> None:
    it = _parse(body=_body(stream=True, temperature=0.2), timeout_s=12.5)
    assert it.method == "POST"
    assert it.path == "chat/completions"
    assert it.operation == "chat"
    assert it.model == "llama-3.1-8b"
    assert it.stream is True
    assert it.wants_usage is False
    assert it.timeout_s == 12.5
    assert it.constraints.residency is None
    assert it.input_tokens > 0


@pytest.mark.parametrize(
    ("path", "op"),
    [
        ("/embeddings", "embeddings"),
        ("completions", "text_completion"),
        ("responses", "responses"),
        ("models", "models"),
    ],
)
def test_operations(path: str, op: str) -> None:
    assert _parse(path=path).operation == op


def test_non_json_body_is_passed_as_is() -> None:
    it = _parse(body=b"\x00\x01 not json", path="audio/transcriptions")
    assert it.body is None
    assert it.model is None
    assert it.body_for("served", add_usage=True) == b"\x00\x01 not json"


def test_model_must_be_a_string() -> None:
    with pytest.raises(RoutingError) as ei:
        _parse(body=json.dumps({"model": 42}).encode())
    assert ei.value.status == 400
    assert "'model' must be a string" in ei.value.message


def test_input_token_estimate_grows_with_prompt() -> None:
    short = _parse(body=json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 40}]}).encode())
    long = _parse(body=json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 40_000}]}).encode())
    assert long.input_tokens > short.input_tokens
    assert 9_000 <= long.input_tokens <= 11_000  # ~4 characters per token
    emb = _parse(path="embeddings", body=json.dumps({"model": "m", "input": "y" * 400}).encode())
    assert 90 <= emb.input_tokens <= 110


# --------------------------------------------------------------------------- headers


def test_routing_headers_parsed_and_stripped() -> None:
    it = _parse(
        [
            ("X-LLM-Multicloud-Residency", "EU"),
            ("x-llm-multicloud-near", "eu-west-1"),
            ("x-llm-multicloud-tags", "tier=gold, team = ml"),
            ("Content-Type", "application/json"),
            ("X-Request-Id", "abc"),
        ]
    )
    assert it.constraints.residency == regions.BLOCS["EU"]
    assert it.constraints.near == regions.locate("eu-west-1")
    assert dict(it.constraints.tags) == {"tier": "gold", "team": "ml"}
    assert not any(k.startswith("x-llm-multicloud-") for k in _names(it))
    assert ("content-type", "application/json") in it.headers
    assert ("x-request-id", "abc") in it.headers


@pytest.mark.parametrize(
    "name",
    [
        "Authorization",
        "api-key",
        "x-api-key",
        "OpenAI-Organization",
        "openai-project",
        "Host",
        "content-length",
        "Cookie",
        "Connection",
        "Proxy-Authorization",
    ],
)
def test_credentials_and_hop_by_hop_headers_dropped(name: str) -> None:
    it = _parse([(name, "secret-value"), ("user-agent", "OpenAI/Python")])
    assert name.lower() not in _names(it)
    assert all(v != "secret-value" for _, v in it.headers)
    assert ("user-agent", "OpenAI/Python") in it.headers


def test_bad_residency_header_is_400_with_message() -> None:
    with pytest.raises(RoutingError) as ei:
        _parse([("x-llm-multicloud-residency", "ATLANTIS")])
    assert ei.value.status == 400
    assert ei.value.code == "bad_routing_header"
    assert "ATLANTIS" in ei.value.message
    assert "ISO 3166-1" in ei.value.message


def test_bad_near_header_is_400() -> None:
    with pytest.raises(RoutingError) as ei:
        _parse([("x-llm-multicloud-near", "the-moon-1")])
    assert ei.value.status == 400
    assert "the-moon-1" in ei.value.message


def test_unknown_routing_header_is_400() -> None:
    with pytest.raises(RoutingError) as ei:
        _parse([("x-llm-multicloud-residencey", "EU")])
    assert ei.value.status == 400
    assert "x-llm-multicloud-residencey" in ei.value.message
    assert "x-llm-multicloud-residency" in ei.value.message  # says what is known


def test_over_long_routing_header_is_400() -> None:
    with pytest.raises(RoutingError) as ei:
        _parse([("x-llm-multicloud-residency", "EU," * 300)])
    assert ei.value.status == 400
    assert "too long" in ei.value.message


def test_control_characters_in_routing_header_are_400() -> None:
    with pytest.raises(RoutingError):
        _parse([("x-llm-multicloud-residency", "EU\x00")])


@pytest.mark.parametrize("bad", ["tier", "tier=", "=gold", "tier=gold,oops"])
def test_bad_tags_header_is_400(bad: str) -> None:
    with pytest.raises(RoutingError) as ei:
        _parse([("x-llm-multicloud-tags", bad)])
    assert ei.value.status == 400
    assert "key=value" in ei.value.message


def test_tags_header_ignores_empty_items() -> None:
    it = _parse([("x-llm-multicloud-tags", " tier=gold ,, ")])
    assert dict(it.constraints.tags) == {"tier": "gold"}


def test_context_and_header_intersect() -> None:
    with routing(residency="EU", near="eu-central-1"):
        it = _parse([("x-llm-multicloud-residency", "DE")])
        assert it.constraints.residency == frozenset({"DE"})
        assert it.constraints.near == regions.locate("eu-central-1")  # kept from the context
        near = _parse([("x-llm-multicloud-near", "eu-west-1")])
        assert near.constraints.residency == regions.BLOCS["EU"]
        assert near.constraints.near == regions.locate("eu-west-1")  # the header is innermost
        with pytest.raises(RoutingError) as ei:
            _parse([("x-llm-multicloud-residency", "US")])  # a header cannot widen the scope
        assert ei.value.status == 400
        assert "do not intersect" in ei.value.message
        # without headers, the context applies as it is
        assert _parse().constraints.residency == regions.BLOCS["EU"]


def test_context_and_header_tags_conflict() -> None:
    with routing(tags={"tier": "gold"}), pytest.raises(RoutingError):
        _parse([("x-llm-multicloud-tags", "tier=silver")])


# --------------------------------------------------------------------------- bodies


def test_body_for_replaces_model_and_keeps_other_fields() -> None:
    it = _parse(body=_body(temperature=0.3, tools=[{"type": "function"}], user="u1"))
    out = json.loads(it.body_for("meta-llama/Llama-3.1-8B-Instruct", add_usage=True))
    assert out["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert out["temperature"] == 0.3
    assert out["tools"] == [{"type": "function"}]
    assert out["user"] == "u1"
    assert out["messages"] == [{"role": "user", "content": "hi"}]
    assert "stream_options" not in out  # not a stream
    assert it.body is not None and it.body["model"] == "llama-3.1-8b"  # the intent is not mutated


def test_body_for_adds_include_usage_to_streams() -> None:
    it = _parse(body=_body(stream=True))
    out = json.loads(it.body_for("served", add_usage=True))
    assert out["stream_options"] == {"include_usage": True}
    assert "stream_options" not in json.loads(it.body_for("served", add_usage=False))


def test_body_for_keeps_other_stream_options() -> None:
    it = _parse(body=_body(stream=True, stream_options={"continuous_usage_stats": True}))
    out = json.loads(it.body_for("served", add_usage=True))
    assert out["stream_options"] == {"continuous_usage_stats": True, "include_usage": True}


def test_body_for_when_caller_asked_for_usage() -> None:
    it = _parse(body=_body(stream=True, stream_options={"include_usage": True}))
    assert it.wants_usage is True
    out = json.loads(it.body_for("served", add_usage=True))
    assert out["stream_options"] == {"include_usage": True}


def test_body_for_embeddings_stream_flag_ignored() -> None:
    it = _parse(path="embeddings", body=json.dumps({"model": "m", "input": "x", "stream": True}).encode())
    assert "stream_options" not in json.loads(it.body_for("served", add_usage=True))


def test_body_for_keeps_unicode() -> None:
    it = _parse(body=json.dumps({"model": "m", "messages": [{"role": "user", "content": "größe ✓"}]}).encode())
    out = it.body_for("served", add_usage=False)
    assert json.loads(out)["messages"][0]["content"] == "größe ✓"


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["a", "model", "x"]), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(
    st.dictionaries(st.sampled_from(["temperature", "tools", "metadata", "user"]), _json_values, max_size=4),
    st.sampled_from(["llama", "größe-7b", 'odd"name']),
    st.booleans(),
    st.booleans(),
    st.one_of(st.none(), st.just({"continuous_usage_stats": True}), st.just({"include_usage": True})),
)
@settings(max_examples=300, deadline=None)
def test_body_for_is_the_parsed_body_with_the_served_name(
    extra: dict[str, Any], model: str, ascii_only: bool, stream: bool, opts: dict[str, Any] | None
) -> None:
    """Spliced in place or re-serialised (nested "model" keys, other spellings), the body
    sent is the caller's, with the served name and, for streams, include_usage."""
    obj: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    if stream:
        obj["stream"] = True
    if opts is not None:
        obj["stream_options"] = opts
    it = _parse(body=json.dumps(obj, ensure_ascii=ascii_only).encode())
    out = json.loads(it.body_for("served/Model-8B", add_usage=True))
    want = {**obj, "model": "served/Model-8B"}
    if stream:
        want["stream_options"] = {**(opts or {}), "include_usage": True}
    assert out == want
    assert it.body_for("served/Model-8B", add_usage=True) is it.body_for("served/Model-8B", add_usage=True)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"max_tokens": 100}, 100),
        ({"max_completion_tokens": 200}, 200),
        ({"max_output_tokens": 300}, 300),
        ({"max_completion_tokens": 200, "max_tokens": 100}, 200),  # the newer name wins
        ({"max_tokens": 0}, None),
        ({"max_tokens": -5}, None),
        ({"max_tokens": "100"}, None),
        ({}, None),
    ],
)
def test_max_tokens_variants(fields: dict[str, Any], expected: int | None) -> None:
    assert _parse(body=_body(**fields)).max_tokens == expected
