"""Server-sent events: splitting a byte stream into events, and what each event means."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llm_multicloud.sse import (
    EventKind,
    EventSplitter,
    EventTooLarge,
    classify,
    data_of,
    kind_of,
    looks_like_json_object,
    needs_parse,
    plain_event,
    text_of,
)


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **top: Any) -> bytes:
    obj: dict[str, Any] = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}],
        **top,
    }
    return f"data: {json.dumps(obj)}\n\n".encode()


ROLE = chunk({"role": "assistant", "content": ""})
HELLO = chunk({"content": "Hel"})
LO = chunk({"content": "lo"})
STOP = chunk({}, "stop")
USAGE = b'data: {"id":"c1","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n'
DONE = b"data: [DONE]\n\n"
STREAM = [ROLE, HELLO, LO, STOP, USAGE, DONE]


def kind(event: bytes) -> EventKind:
    return classify(data_of(event))[0]


# --------------------------------------------------------------------------- splitting


def test_one_event_per_feed() -> None:
    s = EventSplitter()
    assert [s.feed(e) for e in STREAM] == [[e] for e in STREAM]
    assert s.pending == b""


def test_multiple_events_in_one_chunk() -> None:
    s = EventSplitter()
    assert s.feed(b"".join(STREAM)) == STREAM
    assert s.pending == b""


def test_event_split_over_chunks_and_pending_bytes() -> None:
    s = EventSplitter()
    assert s.feed(HELLO[:7]) == []
    assert s.pending == HELLO[:7]
    assert s.feed(HELLO[7:-1]) == []  # everything but the final newline
    assert s.feed(HELLO[-1:] + LO[:5]) == [HELLO]
    assert s.pending == LO[:5]  # a truncated stream leaves bytes pending
    assert s.feed(LO[5:]) == [LO]
    assert s.pending == b""


def test_crlf_line_endings_are_normalised() -> None:
    s = EventSplitter()
    raw = b'data: {"a":1}\r\n\r\ndata: [DONE]\r\n\r\n'
    assert s.feed(raw) == [b'data: {"a":1}\n\n', DONE]
    assert s.pending == b""


def test_crlf_event_split_between_events() -> None:
    s = EventSplitter()
    assert s.feed(b"data: x\r\n") == []
    assert s.feed(b"\r\ndata: y\r\n\r\n") == [b"data: x\n\n", b"data: y\n\n"]


def test_crlf_split_inside_the_line_ending() -> None:
    s = EventSplitter()
    out = s.feed(b"data: x\r\n\r") + s.feed(b"\ndata: y\r\n\r\n")
    assert out == [b"data: x\n\n", b"data: y\n\n"]


def test_comments_and_keepalives_are_events_of_kind_other() -> None:
    s = EventSplitter()
    events = s.feed(b": keep-alive\n\n" + HELLO)
    assert events == [b": keep-alive\n\n", HELLO]
    assert data_of(events[0]) is None
    assert kind(events[0]) is EventKind.OTHER


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def _split_all(chunks: list[bytes]) -> tuple[list[bytes], bytes]:
    s = EventSplitter()
    events: list[bytes] = []
    for c in chunks:
        events.extend(s.feed(c))
    return events, s.pending


_texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
_event = st.one_of(
    _texts.map(lambda t: chunk({"content": t})),
    st.just(ROLE),
    st.just(STOP),
    st.just(USAGE),
    st.just(b": ping\n\n"),
    st.lists(st.text(alphabet='abc{}"', max_size=6), min_size=2, max_size=3).map(
        lambda lines: b"".join(b"data: " + ln.encode() + b"\n" for ln in lines) + b"\n"
    ),
    st.just(b'event: error\ndata: {"error": {"message": "x"}}\n\n'),
)


@settings(max_examples=200, deadline=None, database=None)
@given(events=st.lists(_event, max_size=12), cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_any_split_yields_the_same_events(events: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(events) + DONE
    whole, _ = _split_all([stream])
    assert whole == [*events, DONE]
    split, pending = _split_all(_splits(stream, cuts))
    assert split == whole
    assert pending == b""
    # byte-for-byte pass-through: re-joining the events gives the stream back
    assert b"".join(split) == stream


@settings(max_examples=100, deadline=None, database=None)
@given(events=st.lists(_event, min_size=1, max_size=8), cut=st.integers(1, 10_000))
def test_truncated_stream_leaves_pending_bytes(events: list[bytes], cut: int) -> None:
    stream = b"".join(events)
    cut = cut % len(stream)
    if cut == 0:
        cut = 1
    head = stream[:-cut]
    got, pending = _split_all([head])
    complete = []
    size = 0
    for e in events:
        if size + len(e) <= len(head):
            complete.append(e)
            size += len(e)
        else:
            break
    assert got == complete
    assert pending == head[size:]


@settings(max_examples=200, deadline=None, database=None)
@given(events=st.lists(_event, min_size=1, max_size=8), cuts=st.lists(st.integers(0, 10_000), max_size=20))
@example(events=[HELLO, LO], cuts=[len(HELLO.replace(b"\n", b"\r\n")) - 1])
def test_any_split_of_a_crlf_stream_yields_the_same_events(events: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(events).replace(b"\n", b"\r\n")
    split, pending = _split_all(_splits(stream, cuts))
    assert split == events
    assert pending == b""


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_splitter_work_is_linear_in_the_bytes_received(piece: int, crlf: bool) -> None:
    # One big event dripped in small pieces, then ordinary events: the splitter's work
    # (bytes examined or copied) stays a small multiple of the bytes fed. The old
    # splitter re-joined and re-searched the whole pending buffer on every feed.
    big = b"data: " + b"x" * (1 << 20 if piece > 1 else 1 << 17) + b"\n\n"
    stream = big + HELLO * 50 + DONE
    if crlf:
        stream = stream.replace(b"\n", b"\r\n")
    s = EventSplitter()
    events: list[bytes] = []
    for i in range(0, len(stream), piece):
        events.extend(s.feed(stream[i : i + piece]))
    assert len(events) == 52 and s.pending == b""
    assert s.work <= 6 * len(stream), (s.work, len(stream))


def test_an_event_over_the_cap_raises_a_clear_error() -> None:
    s = EventSplitter(max_event_bytes=1000)
    assert s.feed(HELLO) == [HELLO]
    with pytest.raises(EventTooLarge, match=r"exceeded 1000 bytes.*read_limits\.event_bytes"):
        for _ in range(100):
            s.feed(b"data: " + b"y" * 50)
    s = EventSplitter(max_event_bytes=1000)  # a whole oversized event in one chunk
    with pytest.raises(EventTooLarge):
        s.feed(HELLO + b"data: " + b"z" * 2000 + b"\n\n")
    s = EventSplitter(max_event_bytes=1000)  # exactly at the cap is fine
    ev = b"data: " + b"z" * 994 + b"\n\n"
    assert s.feed(ev) == [ev]


# --------------------------------------------------------------------------- data_of


def test_data_of_single_and_multi_line() -> None:
    assert data_of(b"data: hello\n\n") == b"hello"
    assert data_of(b"data:hello\n\n") == b"hello"  # the space after the colon is optional
    assert data_of(b"data:  two spaces\n\n") == b" two spaces"  # only one space is stripped
    assert data_of(b"data: a\ndata: b\n\n") == b"a\nb"
    assert data_of(b"event: x\nid: 3\ndata: {}\n\n") == b"{}"
    assert data_of(b": comment\n\n") is None
    assert data_of(b"event: ping\n\n") is None


# --------------------------------------------------------------------------- classify


def test_role_only_chunk_is_preamble() -> None:
    assert kind(ROLE) is EventKind.PREAMBLE
    assert kind(chunk({})) is EventKind.PREAMBLE  # empty delta, no finish reason
    assert kind(chunk({"content": None})) is EventKind.PREAMBLE


def test_content_chunk_is_content() -> None:
    k, obj = classify(data_of(HELLO))
    assert k is EventKind.CONTENT
    assert obj is not None and obj["choices"][0]["delta"]["content"] == "Hel"
    assert kind(chunk({"content": " "})) is EventKind.CONTENT  # a space is a token


def test_tool_calls_chunk_is_content() -> None:
    tc = [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}}]
    assert kind(chunk({"role": "assistant", "tool_calls": tc})) is EventKind.CONTENT


@pytest.mark.parametrize("field", ["reasoning_content", "refusal"])
def test_reasoning_and_refusal_are_content(field: str) -> None:
    assert kind(chunk({field: "thinking"})) is EventKind.CONTENT


def test_finish_reason_is_content() -> None:
    assert kind(STOP) is EventKind.CONTENT
    assert kind(chunk({}, "length")) is EventKind.CONTENT


def test_legacy_completion_text_is_content() -> None:
    assert kind(b'data: {"choices":[{"text":"hi","index":0,"finish_reason":null}]}\n\n') is EventKind.CONTENT
    assert kind(b'data: {"choices":[{"text":"","index":0,"finish_reason":null}]}\n\n') is EventKind.PREAMBLE


def test_done() -> None:
    assert classify(data_of(DONE)) == (EventKind.DONE, None)
    assert classify(b" [DONE] ")[0] is EventKind.DONE


def test_usage_only_chunk_is_usage() -> None:
    k, obj = classify(data_of(USAGE))
    assert k is EventKind.USAGE
    assert obj is not None and obj["usage"]["total_tokens"] == 5
    assert classify(b'{"usage": {"total_tokens": 1}}')[0] is EventKind.USAGE  # no choices key at all


def test_usage_on_a_content_chunk_is_content() -> None:
    k, _ = classify(data_of(chunk({"content": "x"}, usage={"total_tokens": 1})))
    assert k is EventKind.CONTENT


def test_error_event() -> None:
    k, obj = classify(b'{"error": {"message": "overloaded", "code": 503}}')
    assert k is EventKind.ERROR
    assert obj is not None and obj["error"]["message"] == "overloaded"


@pytest.mark.parametrize(
    "data",
    [b"{not json", b"[1, 2]", b'"a string"', b"42", b"", b'{"choices": ["not a dict"]}'],
)
def test_malformed(data: bytes) -> None:
    assert classify(data)[0] is EventKind.MALFORMED


def test_no_data_is_other() -> None:
    assert classify(None) == (EventKind.OTHER, None)


def test_looks_like_json_object() -> None:
    assert looks_like_json_object(b' {"a": 1} ')
    assert looks_like_json_object(b"[DONE]")
    assert not looks_like_json_object(b'{"a": 1')
    assert not looks_like_json_object(b"oops")


# --------------------------------------------------------------------------- text_of


def test_text_of_concatenates_content_only() -> None:
    events = [ROLE, HELLO, b": ping\n\n", LO, chunk({"content": " wörld ✓"}), STOP, USAGE, DONE]
    assert text_of(events) == "Hello wörld ✓"


def test_text_of_legacy_completions_and_tool_calls() -> None:
    legacy = b'data: {"choices":[{"text":"abc","index":0}]}\n\n'
    tool = chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]})
    assert text_of([legacy, tool, legacy]) == "abcabc"
    assert text_of([]) == ""
    assert text_of([b"data: {broken\n\n"]) == ""


def test_responses_api_events() -> None:
    """The Responses API streams typed events and ends at response.completed (no [DONE])."""
    assert classify(b'{"type":"response.created","response":{"id":"r"}}')[0] is EventKind.PREAMBLE
    assert classify(b'{"type":"response.output_text.delta","delta":"Hi"}')[0] is EventKind.CONTENT
    kind, obj = classify(b'{"type":"response.completed","response":{"usage":{"input_tokens":3,"output_tokens":2}}}')
    assert kind is EventKind.DONE and obj is not None and obj["response"]["usage"]["output_tokens"] == 2
    assert classify(b'{"type":"response.failed","response":{"error":{"message":"x"}}}')[0] is EventKind.ERROR
    assert classify(b'{"type":"error","message":"boom"}')[0] is EventKind.ERROR


# ----------------------------------------------------- after commit: parse only what matters

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@st.composite
def _chat_chunks(draw: Any) -> dict[str, Any]:
    """A chat chunk as servers send it (any text, often ``"usage": null`` / ``"finish_reason": null``)."""
    obj: dict[str, Any] = {"id": draw(_text), "object": "chat.completion.chunk"}
    n = draw(st.integers(0, 2))
    obj["choices"] = [
        {
            "index": i,
            "delta": draw(st.sampled_from([{}, {"role": "assistant", "content": ""}]))
            | {"content": draw(st.one_of(st.none(), _text))},
            "finish_reason": draw(st.one_of(st.none(), st.sampled_from(["stop", "length"]))),
        }
        for i in range(n)
    ]
    if draw(st.booleans()):
        obj["usage"] = draw(st.one_of(st.none(), st.just({"prompt_tokens": 1, "completion_tokens": 2})))
    if draw(st.integers(0, 9)) == 0:
        obj["error"] = draw(st.one_of(st.none(), st.just({"message": "overloaded"})))
    return obj


@given(_chat_chunks(), st.booleans(), st.booleans())
@settings(max_examples=400, deadline=None)
def test_an_event_passed_without_a_parse_is_one_the_library_need_not_parse(
    obj: dict[str, Any], compact: bool, ascii_only: bool
) -> None:
    """Whatever the text, an event that ``needs_parse`` lets through unparsed carries no
    usage, no error, no finish_reason and is not an end: parsing it would change nothing."""
    sep = (",", ":") if compact else (", ", ": ")
    data = json.dumps(obj, separators=sep, ensure_ascii=ascii_only).encode()
    if needs_parse(data):
        return
    assert kind_of(obj) in (EventKind.CONTENT, EventKind.PREAMBLE)
    assert not obj.get("usage") and not obj.get("error")
    assert not any(c.get("finish_reason") for c in obj["choices"])


@given(_chat_chunks(), st.data())
@settings(max_examples=300, deadline=None)
def test_a_truncated_event_is_always_parsed(obj: dict[str, Any], data: Any) -> None:
    """A cut-off event (a server that died mid-write, a proxy that truncated it) is never
    passed on unparsed, whatever its text, unless the cut lands inside a string that holds
    brackets — then the SDK's own parse raises (documented in docs/errors.md)."""
    raw = json.dumps(obj, separators=(",", ":")).encode()
    cut = data.draw(st.integers(1, len(raw) - 1))
    part = raw[:cut]
    text = "".join(str(c["delta"].get("content") or "") for c in obj["choices"]) + str(obj["id"])
    if not any(b in text for b in "{}[]"):
        assert needs_parse(part)


@pytest.mark.parametrize(
    ("data", "needed"),
    [
        (b'{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}', False),
        (b'{"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": null}], "usage": null}', False),
        (b'{"choices":[{"index":0,"delta":{"content":"the \\"usage\\": {} key"},"finish_reason":null}]}', False),
        (b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}', True),
        (b'{"choices":[],"usage":{"total_tokens":3}}', True),
        (b'{"error":{"message":"boom"}}', True),
        (b'{"type":"response.output_text.delta","delta":"Hi"}', False),
        (b'{"type":"response.completed","response":{"usage":{"output_tokens":2}}}', True),
        (b'{"type": "error", "message": "boom"}', True),
        (b'{"choices":[{"index":0,"delta":{"content":"x"}}]]}', True),  # the hostile server's garbage
        (b"{not json", True),
        (b"oops", True),
        (b'{"choices":[{"delta":{"content":"{"}}]}', True),  # a brace token: parsed, found sound
    ],
)
def test_needs_parse(data: bytes, needed: bool) -> None:
    assert needs_parse(data) is needed


@given(
    _chat_chunks(),
    st.booleans(),
    st.sampled_from([b"data: ", b"data:", b": ping\n\ndata: ", b"event: x\ndata: "]),
    st.sampled_from([b"\n\n", b"\n", b"\r\n\r\n", b"\n\ndata: {}\n\n", b""]),
    st.data(),
)
@settings(max_examples=400, deadline=None)
def test_the_fast_path_decides_as_the_event_by_event_path(
    obj: dict[str, Any], compact: bool, prefix: bytes, end: bytes, data: Any
) -> None:
    """``plain_event`` (the committed stream's fast path over a whole read) is true only for
    a read that is exactly one data event the event-by-event path would pass on unparsed:
    one event, ``data: {``, and ``needs_parse`` false for its data. Reads of other shapes
    (two events, a comment first, a partial event, CRLF, a truncated event) take the
    event-by-event path."""
    sep = (",", ":") if compact else (", ", ": ")
    raw = json.dumps(obj, separators=sep).encode()
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]  # truncated
    read = prefix + raw + end
    one_event = prefix == b"data: " and end == b"\n\n" and raw.startswith(b"{") and b"\n" not in raw
    expected = one_event and data_of(read) == raw and not needs_parse(raw)
    assert plain_event(read) is expected


def test_plain_event_cases() -> None:
    assert plain_event(HELLO)
    for read in (ROLE + HELLO, STOP, USAGE, DONE, b": ping\n\n", HELLO[:-1], HELLO + b"data: {", b"data: {}\r\n\r\n"):
        assert not plain_event(read), read
