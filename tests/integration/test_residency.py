"""Data residency through the real openai SDK on the fleet (issue 5, points 1-3, 5, 6).

The guarantee under test: under failover, hedging, breaker panic, resume or any
error, no byte of a pinned request goes to an endpoint outside its residency. Tests
judge from what the servers received (``fleet.received()``: region, path, key) and,
wherever attempts matter, from the audit hook too (one :class:`lmc.AttemptRecord`
per attempt); most run on the sync and the async client, streamed and not.

Fleet: ``aws-euc1`` (Frankfurt, DE), ``gcp-euw4`` (Eemshaven, NL), ``aws-use1``
(Virginia, US), ``azure-jpe`` (Tokyo, JP). Most tests put a non-EU endpoint *first*
in an ``ordered`` catalog, so that without the residency constraint the request
would go outside the EU: a test that passes is a test that the constraint decided.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import anyio.to_thread
import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.context import UNCONSTRAINED, current
from llm_multicloud.fleet import Fleet

from .conftest import MODEL, Audit, chat_records
from .drive import PLACEHOLDER_KEY, chat

pytestmark = pytest.mark.integration

EU_IDS = frozenset({"aws-euc1", "gcp-euw4"})
ALL_IDS = ("aws-euc1", "gcp-euw4", "aws-use1", "azure-jpe")
#: Unconstrained → aws-use1; EU → gcp-euw4; DE → aws-euc1; JP/APAC → azure-jpe.
US_FIRST = ("aws-use1", "azure-jpe", "gcp-euw4", "aws-euc1")
MSG = [{"role": "user", "content": "hello there"}]

KINDS = pytest.mark.parametrize("kind", ["sync", "async"])
STREAMS = pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])


# --------------------------------------------------------------------------- helpers


def catalog(
    fleet: Fleet, order: tuple[str, ...] | None = None, tags: dict[str, dict[str, str]] | None = None
) -> dict[str, Any]:
    """The fleet's catalog, endpoints in ``order``, with endpoint ``tags`` added."""
    cat = fleet.catalog()
    by_id = {e["id"]: e for e in cat["endpoints"]}
    if order is not None:
        cat["endpoints"] = [by_id[i] for i in order]
    for eid, t in (tags or {}).items():
        by_id[eid]["tags"] = dict(t)
    return cat


def multicloud(
    fleet: Fleet,
    policy: dict[str, Any] | None = None,
    *,
    order: tuple[str, ...] | None = US_FIRST,
    tags: dict[str, dict[str, str]] | None = None,
    **kw: Any,
) -> lmc.MultiCloud:
    """Like ``conftest.make_mc`` (ordered, no probes, no hedging unless asked) over a
    reordered / tagged catalog."""
    base: dict[str, Any] = {"strategy": "ordered", "probe": {"enabled": False}, "hedge": {"enabled": False}}
    for k, v in (policy or {}).items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return lmc.MultiCloud(catalog(fleet, order, tags), base, **kw)


def sync_client(mc: lmc.MultiCloud) -> openai.OpenAI:
    return mc.wrap(openai.OpenAI(api_key=PLACEHOLDER_KEY))


def served_by(client: openai.OpenAI, **kw: Any) -> str:
    """One non-streamed call with the sync client; the endpoint that answered."""
    r = client.chat.completions.with_raw_response.create(model=MODEL, messages=MSG, **kw)
    return r.headers["x-llm-multicloud-endpoint"]


async def aserved_by(client: openai.AsyncOpenAI, **kw: Any) -> str:
    r = await client.chat.completions.with_raw_response.create(model=MODEL, messages=MSG, **kw)
    return r.headers["x-llm-multicloud-endpoint"]


def chat_regions(fleet: Fleet) -> set[str]:
    return {r.region_id for r in chat_records(fleet)}


def assert_stayed_in(fleet: Fleet, audit: Audit | None, allowed: frozenset[str] | set[str]) -> None:
    """Nothing outside ``allowed`` received anything (any path), the audit hook agrees,
    and whatever a server received carried that server's own key and no routing header."""
    received = fleet.received()
    outside = [(r.region_id, r.path) for r in received if r.region_id not in allowed]
    assert not outside, f"requests reached endpoints outside {sorted(allowed)}: {outside}"
    for r in received:
        assert r.headers.get("authorization") == f"Bearer sk-{r.region_id}-secret"
        assert not [h for h in r.headers if h.startswith("x-llm-multicloud-")], r.headers
    if audit is not None:
        assert audit.records, "the audit hook saw no attempt"
        assert {a.endpoint for a in audit.records} <= set(allowed), [a.endpoint for a in audit.records]


def nothing_sent(fleet: Fleet) -> None:
    assert fleet.received() == []
    assert set(fleet.counts().values()) == {0}


def error_lines(exc: openai.APIStatusError) -> dict[str, str]:
    """The 503's message, one line per endpoint id (the first word of the line)."""
    body = exc.body
    assert isinstance(body, dict)
    msg = body["message"]
    out: dict[str, str] = {}
    for line in msg.splitlines()[1:]:
        word = line.strip().split(" ", 1)[0]
        if word in ALL_IDS:
            out[word] = line.strip()
    return out


# --------------------------------------------------------------------------- routing()


@KINDS
@STREAMS
def test_routing_context_reaches_only_eu_endpoints(clean: Fleet, kind: str, stream: bool) -> None:
    audit = Audit()
    with multicloud(clean, on_attempt=audit) as mc:
        # Control: unconstrained, the ordered catalog sends it to the US.
        assert chat(mc, kind, stream=stream).headers["x-llm-multicloud-endpoint"] == "aws-use1"
        clean.clear()
        audit.clear()
        with lmc.routing(residency="EU", near="eu-central-1"):
            answers = [chat(mc, kind, stream=stream) for _ in range(3)]
        for ans in answers:
            assert ans.headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
            assert ans.headers["x-llm-multicloud-provider"] == "gcp"
            assert ans.headers["x-llm-multicloud-region"] == "europe-west4"
            assert ans.text.startswith("[gcp-euw4]")
        assert_stayed_in(clean, audit, EU_IDS)
        assert len(chat_records(clean)) == 3
        assert [a.residency for a in audit.records] == ["EU"] * 3
        # the scope ends with the block
        clean.clear()
        assert chat(mc, kind, stream=stream).headers["x-llm-multicloud-endpoint"] == "aws-use1"


def test_routing_union_residency_and_country_codes(clean: Fleet) -> None:
    with multicloud(clean) as mc:
        client = sync_client(mc)
        with lmc.routing(residency="DE"):
            assert served_by(client) == "aws-euc1"
        with lmc.routing(residency=["NL", "DE"]):
            assert served_by(client) == "gcp-euw4"
        with lmc.routing(residency="APAC"):
            assert served_by(client) == "azure-jpe"
        with lmc.routing(residency="JP,DE"):
            assert served_by(client) == "azure-jpe"
        assert {r.region_id for r in chat_records(clean)} == {"aws-euc1", "gcp-euw4", "azure-jpe"}


# --------------------------------------------------------------------------- @residency


def test_residency_decorator_on_a_sync_function(clean: Fleet) -> None:
    audit = Audit()
    with multicloud(clean, on_attempt=audit) as mc:
        client = sync_client(mc)

        @lmc.residency("EU")
        def summarize(doc: str) -> str:
            return served_by(client)

        assert [summarize(f"doc{i}") for i in range(3)] == ["gcp-euw4"] * 3
        assert_stayed_in(clean, audit, EU_IDS)
        assert served_by(client) == "aws-use1"  # outside the decorated call: unconstrained


def test_residency_decorator_on_an_async_function(clean: Fleet) -> None:
    audit = Audit()
    with multicloud(clean, on_attempt=audit) as mc:

        @lmc.residency("EU")
        async def summarize(client: openai.AsyncOpenAI) -> str:
            return await aserved_by(client)

        async def main() -> tuple[list[str], str]:
            async with mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY)) as client:
                pinned = [await summarize(client) for _ in range(3)]
                return pinned, await aserved_by(client)

        pinned, free = anyio.run(main)
        assert pinned == ["gcp-euw4"] * 3
        assert free == "aws-use1"
        assert {a.endpoint for a in audit.records if a.residency == "EU"} == {"gcp-euw4"}


def test_residency_decorator_on_a_generator_pins_its_body_not_the_consumer(clean: Fleet) -> None:
    """The generator's requests (one per yielded item) stay in the EU; a request the
    consumer makes *between* two yields is not constrained by the decorator: with the
    US first in an ordered catalog, it goes to the US."""
    audit = Audit()
    with multicloud(clean, on_attempt=audit) as mc:
        client = sync_client(mc)

        @lmc.residency("EU")
        def answers(questions: list[str]) -> Iterator[str]:
            for q in questions:
                r = client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=[{"role": "user", "content": q}]
                )
                yield r.headers["x-llm-multicloud-endpoint"]

        pinned: list[str] = []
        between: list[str] = []
        for ep in answers(["a", "b", "c"]):
            pinned.append(ep)
            between.append(served_by(client))  # the consumer's own request
        assert pinned == ["gcp-euw4"] * 3
        assert between == ["aws-use1"] * 3
        assert [a.residency for a in audit.records] == ["EU", "any"] * 3


def test_residency_decorator_on_an_async_generator_pins_its_body_not_the_consumer(clean: Fleet) -> None:
    audit = Audit()
    with multicloud(clean, on_attempt=audit) as mc:

        async def main() -> tuple[list[str], list[str]]:
            async with mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY)) as client:

                @lmc.residency("EU")
                async def answers(questions: list[str]) -> AsyncIterator[str]:
                    for q in questions:
                        stream = await client.chat.completions.create(
                            model=MODEL, messages=[{"role": "user", "content": q}], stream=True
                        )
                        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
                        yield text.split("]")[0].lstrip("[")

                pinned: list[str] = []
                between: list[str] = []
                async for ep in answers(["a", "b", "c"]):
                    pinned.append(ep)
                    between.append(await aserved_by(client))
                return pinned, between

        pinned, between = anyio.run(main)
        assert pinned == ["gcp-euw4"] * 3
        assert between == ["aws-use1"] * 3
        assert [a.residency for a in audit.records] == ["EU", "any"] * 3


def test_residency_as_a_context_manager(clean: Fleet) -> None:
    with multicloud(clean) as mc:
        client = sync_client(mc)
        pin = lmc.residency("EU", near="europe-west4")
        with pin:
            assert served_by(client) == "gcp-euw4"
            with pin:  # re-entrant: the same instance nests (EU ∩ EU)
                assert served_by(client) == "gcp-euw4"
            assert served_by(client) == "gcp-euw4"
        assert served_by(client) == "aws-use1"


# --------------------------------------------------------------------------- nesting


@KINDS
@STREAMS
def test_nested_scopes_eu_then_de_reach_only_the_de_endpoint(clean: Fleet, kind: str, stream: bool) -> None:
    audit = Audit()
    with multicloud(clean, on_attempt=audit) as mc:
        with lmc.routing(residency="EU"):
            assert chat(mc, kind, stream=stream).headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
            with lmc.routing(residency="DE"):
                for _ in range(2):
                    assert chat(mc, kind, stream=stream).headers["x-llm-multicloud-endpoint"] == "aws-euc1"
        assert_stayed_in(clean, audit, EU_IDS)
        assert [a.endpoint for a in audit.records] == ["gcp-euw4", "aws-euc1", "aws-euc1"]
        assert audit.records[-1].residency == "EU ∩ DE"


def test_nested_decorator_inside_routing_narrows(clean: Fleet) -> None:
    with multicloud(clean) as mc:
        client = sync_client(mc)

        @lmc.residency("DE")
        def pinned() -> str:
            return served_by(client)

        with lmc.routing(residency="EU"):
            assert pinned() == "aws-euc1"
            assert served_by(client) == "gcp-euw4"  # the outer scope is back after the call
        assert chat_regions(clean) == EU_IDS


def test_an_inner_scope_cannot_widen(clean: Fleet) -> None:
    audit = Audit()
    with multicloud(clean, on_attempt=audit) as mc:
        client = sync_client(mc)
        with lmc.routing(residency="DE"), lmc.routing(residency="EU"):
            assert served_by(client) == "aws-euc1"  # DE ∩ EU = DE
        with lmc.routing(residency="EU"), lmc.routing(residency="EU,US"):
            assert served_by(client) == "gcp-euw4"  # EU ∩ (EU ∪ US) = EU, the US first in order
        with lmc.routing(residency="EU"), lmc.residency("US", "DE"):
            assert served_by(client) == "aws-euc1"
        assert_stayed_in(clean, audit, EU_IDS)


@KINDS
def test_empty_intersection_raises_residency_error_before_any_request(clean: Fleet, kind: str) -> None:
    with multicloud(clean) as mc:
        ran = False
        with lmc.routing(residency="EU"):
            with pytest.raises(lmc.ResidencyError, match="do not intersect"), lmc.routing(residency="US"):
                ran = True
                chat(mc, kind, stream=False)
            # the outer scope survives the failed inner one
            assert chat(mc, kind, stream=False).headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        assert not ran
        assert chat_regions(clean) == {"gcp-euw4"}


def test_empty_intersection_through_decorators_sends_nothing(clean: Fleet) -> None:
    with multicloud(clean) as mc:
        client = sync_client(mc)
        aclient = mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY))
        calls: list[str] = []

        @lmc.residency("US")
        def f() -> str:
            calls.append("f")
            return served_by(client)

        @lmc.residency("US")
        async def g() -> str:
            calls.append("g")
            return await aserved_by(aclient)

        @lmc.residency("US")
        def gen() -> Iterator[str]:
            calls.append("gen")
            yield served_by(client)

        @lmc.residency("US")
        async def agen() -> AsyncIterator[str]:
            calls.append("agen")
            yield await aserved_by(aclient)

        async def drain() -> list[str]:
            return [x async for x in agen()]

        with lmc.routing(residency="EU"):
            with pytest.raises(lmc.ResidencyError):
                f()
            with pytest.raises(lmc.ResidencyError):
                anyio.run(g)
            with pytest.raises(lmc.ResidencyError):
                next(gen())
            with pytest.raises(lmc.ResidencyError):
                anyio.run(drain)
        assert calls == []
        nothing_sent(clean)


def test_unknown_residency_code_is_an_error_not_a_silent_no_match(clean: Fleet) -> None:
    with pytest.raises(lmc.ResidencyError, match="unknown residency code"), lmc.routing(residency="XX"):
        pass
    with pytest.raises(lmc.ResidencyError):
        lmc.residency("EU", "ATLANTIS")
    with pytest.raises(lmc.ResidencyError, match="unknown location"), lmc.routing(residency="EU", near="atlantis-1"):
        pass
    nothing_sent(clean)


# --------------------------------------------------------------------------- headers


@KINDS
@STREAMS
def test_residency_header_alone_pins_the_request(clean: Fleet, kind: str, stream: bool) -> None:
    audit = Audit()
    with multicloud(clean, on_attempt=audit) as mc:
        ans = chat(mc, kind, stream=stream, extra_headers={"x-llm-multicloud-residency": "EU"})
        assert ans.headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        assert_stayed_in(clean, audit, EU_IDS)


@pytest.mark.parametrize(
    ("scope", "headers", "expected"),
    [
        ({"residency": "EU"}, {"x-llm-multicloud-residency": "EU,US"}, "gcp-euw4"),  # widening is narrowed
        ({"residency": "EU"}, {"x-llm-multicloud-residency": "US,EU"}, "gcp-euw4"),
        ({"residency": "EU"}, {"x-llm-multicloud-residency": "DE"}, "aws-euc1"),
        ({"residency": "DE"}, {"x-llm-multicloud-residency": "EU"}, "aws-euc1"),
        ({"residency": "EU"}, {"x-llm-multicloud-near": "us-east-1"}, "gcp-euw4"),  # near is no constraint
        ({"residency": "EU"}, {"x-llm-multicloud-tags": "tier=gold"}, "gcp-euw4"),
        ({"tags": {"tier": "gold"}}, {"x-llm-multicloud-residency": "EU"}, "gcp-euw4"),
        ({"tags": {"tier": "gold"}}, {"x-llm-multicloud-tags": "tier=gold, zone=b"}, "gcp-euw4"),
    ],
)
@KINDS
def test_headers_intersect_with_the_context(
    clean: Fleet, kind: str, scope: dict[str, Any], headers: dict[str, str], expected: str
) -> None:
    audit = Audit()
    tags = {
        "aws-use1": {"tier": "gold", "zone": "a"},
        "azure-jpe": {"tier": "silver", "zone": "b"},
        "gcp-euw4": {"tier": "gold", "zone": "b"},
        "aws-euc1": {"tier": "gold", "zone": "b"},
    }
    with multicloud(clean, on_attempt=audit, tags=tags) as mc:
        with lmc.routing(**scope):
            for stream in (False, True):
                ans = chat(mc, kind, stream=stream, extra_headers=headers)
                assert ans.headers["x-llm-multicloud-endpoint"] == expected
        assert chat_regions(clean) == {expected}
        assert_stayed_in(clean, audit, {expected})


@pytest.mark.parametrize(
    "headers",
    [
        {"x-llm-multicloud-residency": "XX"},
        {"x-llm-multicloud-residency": "EU,ATLANTIS"},
        {"x-llm-multicloud-residency": " , "},
        {"x-llm-multicloud-near": "atlantis-1"},
        {"x-llm-multicloud-tags": "tier"},
        {"x-llm-multicloud-tags": "=gold"},
        {"x-llm-multicloud-region": "EU"},  # unknown routing header: not silently ignored
        {"x-llm-multicloud-residency": "EU" * 300},
    ],
    ids=["unknown-code", "one-unknown-code", "empty", "bad-near", "tags-no-value", "tags-no-key", "unknown", "long"],
)
@KINDS
@STREAMS
def test_bad_routing_header_is_400_and_nothing_is_sent(
    clean: Fleet, kind: str, stream: bool, headers: dict[str, str]
) -> None:
    with multicloud(clean) as mc:
        with pytest.raises(openai.BadRequestError) as ei:
            chat(mc, kind, stream=stream, extra_headers=headers)
        assert ei.value.status_code == 400
        assert isinstance(ei.value.body, dict) and ei.value.body["code"] == "bad_routing_header"
        assert ei.value.response.headers["x-should-retry"] == "false"
        nothing_sent(clean)


@KINDS
def test_header_outside_the_context_is_400_and_nothing_is_sent(clean: Fleet, kind: str) -> None:
    with multicloud(clean, tags={"aws-use1": {"tier": "gold"}}) as mc:
        with lmc.routing(residency="EU"), pytest.raises(openai.BadRequestError, match="do not intersect"):
            chat(mc, kind, stream=False, extra_headers={"x-llm-multicloud-residency": "US"})
        with lmc.routing(tags={"tier": "gold"}), pytest.raises(openai.BadRequestError, match="tags do not intersect"):
            chat(mc, kind, stream=True, extra_headers={"x-llm-multicloud-tags": "tier=silver"})
        nothing_sent(clean)


# --------------------------------------------------------------------------- propagation


def test_context_follows_asyncio_gather_tasks(clean: Fleet) -> None:
    audit = Audit()
    with multicloud(clean, on_attempt=audit) as mc:

        async def main() -> tuple[list[str], str]:
            async with mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY)) as client:
                with lmc.routing(residency="EU"):
                    pinned = await asyncio.gather(*(aserved_by(client) for _ in range(6)))
                    # a task created inside the scope keeps it even if it runs after the block...
                    late = asyncio.ensure_future(aserved_by(client))
                # ...and one created outside has none
                free = await asyncio.ensure_future(aserved_by(client))
                return [*pinned, await late], free

        pinned, free = asyncio.run(main())
        assert pinned == ["gcp-euw4"] * 7
        assert free == "aws-use1"
        assert [a.residency for a in audit.records].count("EU") == 7


def test_context_follows_anyio_task_groups(clean: Fleet) -> None:
    with multicloud(clean) as mc:
        served: list[str] = []

        async def main() -> None:
            async with mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY)) as client:

                async def one() -> None:
                    served.append(await aserved_by(client))

                with lmc.routing(residency="EU"):
                    async with anyio.create_task_group() as tg:
                        for _ in range(5):
                            tg.start_soon(one)
                with lmc.routing(residency="DE"):
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(one)

        anyio.run(main)
        assert sorted(served) == ["aws-euc1"] + ["gcp-euw4"] * 5
        assert chat_regions(clean) == EU_IDS


def test_plain_thread_pool_submit_does_not_carry_the_scope_by_design(clean: Fleet) -> None:
    """Expected behaviour, not a bug: thread pools run work in the worker thread's own
    context, so ``ThreadPoolExecutor.submit(fn)`` inside ``routing()`` is *unconstrained*
    (context.py documents it). Carry the scope with ``contextvars.copy_context().run``
    (next test) or ``anyio.to_thread.run_sync``."""
    with multicloud(clean) as mc:
        client = sync_client(mc)
        with ThreadPoolExecutor(max_workers=2) as pool, lmc.routing(residency="EU"):
            assert pool.submit(served_by, client).result() == "aws-use1"
            assert pool.submit(current).result() == UNCONSTRAINED


def test_copy_context_run_carries_the_scope_into_a_thread_pool(clean: Fleet) -> None:
    audit = Audit()
    with multicloud(clean, on_attempt=audit) as mc:
        client = sync_client(mc)
        with ThreadPoolExecutor(max_workers=4) as pool:
            with lmc.routing(residency="EU"):
                futures = [pool.submit(contextvars.copy_context().run, served_by, client) for _ in range(6)]
            assert [f.result() for f in futures] == ["gcp-euw4"] * 6
        assert_stayed_in(clean, audit, EU_IDS)


def test_anyio_to_thread_run_sync_carries_the_scope(clean: Fleet) -> None:
    audit = Audit()
    with multicloud(clean, on_attempt=audit) as mc:
        client = sync_client(mc)

        async def main() -> list[str]:
            with lmc.routing(residency="EU"):
                return [await anyio.to_thread.run_sync(served_by, client) for _ in range(3)]

        assert anyio.run(main) == ["gcp-euw4"] * 3
        assert_stayed_in(clean, audit, EU_IDS)


def test_plain_thread_does_not_carry_the_scope_but_copy_context_does(clean: Fleet) -> None:
    """Same rule for bare threads: a new thread starts with an empty context."""
    with multicloud(clean) as mc:
        client = sync_client(mc)
        out: dict[str, str] = {}
        with lmc.routing(residency="EU"):
            ctx = contextvars.copy_context()
            t1 = threading.Thread(target=lambda: out.__setitem__("plain", served_by(client)))
            t2 = threading.Thread(target=lambda: out.__setitem__("copied", ctx.run(served_by, client)))
            t1.start()
            t2.start()
            t1.join()
            t2.join()
        assert out == {"plain": "aws-use1", "copied": "gcp-euw4"}


# --------------------------------------------------------------------------- failure paths

#: Primary EU endpoint first, the (healthy, fast) US endpoint second: a failover that
#: ignored residency would go to the US.
EU_US_EU = ("aws-euc1", "aws-use1", "gcp-euw4", "azure-jpe")

FAULTS = {
    "down": {"mode": "down"},
    "503": {"mode": "status", "status": 503},
    "500": {"mode": "status", "status": 500},
    "429": {"mode": "status", "status": 429, "retry_after": "30"},
    "401": {"mode": "status", "status": 401},
    "hang": {"mode": "hang"},
    "close": {"mode": "close_mid_stream", "after_chunks": 0},
    "malformed": {"mode": "malformed_sse", "after_chunks": 0},
}


@pytest.mark.parametrize("fault", list(FAULTS))
@KINDS
@STREAMS
def test_failover_from_a_failing_primary_stays_in_the_eu(clean: Fleet, kind: str, stream: bool, fault: str) -> None:
    if fault == "malformed" and not stream:
        pytest.skip("malformed_sse only affects streamed answers")
    audit = Audit()
    clean.set_fault("aws-euc1", **FAULTS[fault])
    with multicloud(
        clean, {"timeouts": {"first_token_s": 0.5, "response_s": 0.5}}, order=EU_US_EU, on_attempt=audit
    ) as mc:
        with lmc.routing(residency="EU"):
            ans = chat(mc, kind, stream=stream)
        assert ans.headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        assert ans.text.startswith("[gcp-euw4]")
        assert ans.headers["x-llm-multicloud-attempts"] == "2"
        assert [(a.endpoint, a.kind, a.outcome) for a in audit.records] == [
            ("aws-euc1", "primary", "failed"),
            ("gcp-euw4", "retry", "won"),
        ]
        assert_stayed_in(clean, audit, EU_IDS)


@pytest.mark.parametrize(
    ("f1", "f2"), [("down", "503"), ("hang", "500"), ("close", "429"), ("401", "down")], ids=lambda f: f
)
@KINDS
@STREAMS
def test_every_eu_endpoint_failing_is_503_and_nothing_leaves_the_eu(
    clean: Fleet, kind: str, stream: bool, f1: str, f2: str
) -> None:
    audit = Audit()
    clean.set_fault("aws-euc1", **FAULTS[f1])
    clean.set_fault("gcp-euw4", **FAULTS[f2])
    policy = {"timeouts": {"first_token_s": 0.5, "response_s": 0.5}, "retry": {"min_per_s": 1000}}
    with multicloud(clean, policy, order=EU_US_EU, on_attempt=audit) as mc:
        with lmc.routing(residency="EU"):
            for _ in range(2):
                with pytest.raises(openai.InternalServerError) as ei:
                    chat(mc, kind, stream=stream)
                assert ei.value.status_code == 503
                assert ei.value.response.headers["x-should-retry"] == "false"
        assert_stayed_in(clean, audit, EU_IDS)
        assert clean.counts()["aws-use1"] == 0 and clean.counts()["azure-jpe"] == 0
        assert all(a.outcome == "failed" for a in audit.records)


@pytest.mark.parametrize("slow", ["aws-euc1", "gcp-euw4"])
@KINDS
@STREAMS
def test_hedge_goes_to_the_other_eu_endpoint_never_the_faster_us_one(
    clean: Fleet, kind: str, stream: bool, slow: str
) -> None:
    other = ({"aws-euc1", "gcp-euw4"} - {slow}).pop()
    order = (slow, "aws-use1", other, "azure-jpe")
    clean.set_latency(slow, ttft_ms=400, ttft_jitter=0)
    clean.set_latency(other, ttft_ms=60, ttft_jitter=0)  # slower than the US (2 ms), still the hedge
    audit = Audit()
    policy = {"hedge": {"enabled": True, "delay_ms": 20, "budget": 1.0}}
    with multicloud(clean, policy, order=order, on_attempt=audit) as mc:
        with lmc.routing(residency="EU"):
            ans = chat(mc, kind, stream=stream)
        assert ans.headers["x-llm-multicloud-endpoint"] == other
        assert ans.headers["x-llm-multicloud-hedged"] == "true"
        assert ans.text.startswith(f"[{other}]")
        got = sorted((a.endpoint, a.kind, a.outcome) for a in audit.records)
        assert got == sorted([(slow, "primary", "cancelled"), (other, "hedge", "won")])
        assert_stayed_in(clean, audit, EU_IDS)
        if slow == "gcp-euw4":
            # Control: without the constraint, the hedge from gcp goes to the first
            # endpoint of another provider in plan order: the US one.
            clean.clear()
            audit.clear()
            ans = chat(mc, kind, stream=stream)
            assert {a.endpoint for a in audit.records if a.kind == "hedge"} == {"aws-use1"}


@KINDS
def test_panic_with_every_eu_endpoint_ejected_stays_in_the_eu(clean: Fleet, kind: str) -> None:
    audit = Audit()
    clean.set_fault("aws-euc1", mode="down")
    clean.set_fault("gcp-euw4", mode="status", status=503)
    policy = {
        "breaker": {"consecutive_failures": 1, "max_ejection_fraction": 1.0},
        "retry": {"min_per_s": 1000},
    }
    with multicloud(clean, policy, order=EU_US_EU, on_attempt=audit) as mc:
        with lmc.routing(residency="EU"):
            with pytest.raises(openai.InternalServerError):
                chat(mc, kind, stream=False)
            states = {e["id"]: e["state"] for e in mc.snapshot()["endpoints"]}
            assert states["aws-euc1"] == states["gcp-euw4"] == "open"
            plan = mc.explain(MODEL, residency="EU")
            assert plan.panic
            assert {c.endpoint.id for c in plan.candidates} == EU_IDS
            # panic, both still failing: 503 again, still nothing outside the EU
            with pytest.raises(openai.InternalServerError):
                chat(mc, kind, stream=True)
            # panic, one EU endpoint recovered: served, from the EU
            clean.set_fault("gcp-euw4", mode="none")
            for stream in (False, True):
                ans = chat(mc, kind, stream=stream)
                assert ans.headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        assert_stayed_in(clean, audit, EU_IDS)
        assert clean.counts()["aws-use1"] == 0


@KINDS
def test_429_cooldown_on_every_eu_endpoint_fails_closed_never_to_the_fast_us(clean: Fleet, kind: str) -> None:
    audit = Audit()
    for rid in EU_IDS:
        clean.set_fault(rid, mode="status", status=429, retry_after="30")
    with multicloud(clean, order=EU_US_EU, on_attempt=audit) as mc:
        with lmc.routing(residency="EU"):
            # (the caller's deadline is shorter than the cooldown: no point in waiting)
            with pytest.raises(openai.InternalServerError) as ei:
                chat(mc, kind, stream=False, timeout=2.0)
            assert "429" in ei.value.message
            n = len(clean.received())
            # both cooling: the next request fails at once, sending nothing at all
            with pytest.raises(openai.InternalServerError) as ei:
                chat(mc, kind, stream=True, timeout=2.0)
            lines = error_lines(ei.value)
            assert "cooling down" in lines["aws-euc1"] and "cooling down" in lines["gcp-euw4"]
            assert len(clean.received()) == n
        assert_stayed_in(clean, audit, EU_IDS)
        # the US was usable (and fast) all along: an unpinned request goes there
        assert chat(mc, kind, stream=False).headers["x-llm-multicloud-endpoint"] == "aws-use1"


@KINDS
def test_short_429_cooldown_on_every_eu_endpoint_waits_instead_of_leaving_the_eu(clean: Fleet, kind: str) -> None:
    """Both EU endpoints answer 429 with retry-after-ms 400 while the US is fast and free.
    The request waits for the EU cooldown (within its deadline) instead of leaving the EU."""
    audit = Audit()
    for rid in EU_IDS:
        clean.set_fault(rid, mode="status", status=429, retry_after_ms=400)

    def quota_back() -> None:  # the quota is back as soon as both refusals went out
        clean.wait_for(lambda: [r.outcome for r in chat_records(clean)] == ["fault:status"] * 2)
        for rid in EU_IDS:
            clean.set_fault(rid)

    helper = threading.Thread(target=quota_back)
    helper.start()
    with multicloud(clean, order=EU_US_EU, on_attempt=audit) as mc:
        with lmc.routing(residency="EU"):
            ans = chat(mc, kind, stream=True, timeout=5.0)
        helper.join()
        assert ans.headers["x-llm-multicloud-endpoint"] in EU_IDS
        assert [a.outcome for a in audit.records] == ["failed", "failed", "won"]
        first, _, last = chat_records(clean)
        assert last.time - first.time >= 0.35  # it waited for the announced cooldown
        assert_stayed_in(clean, audit, EU_IDS)


def test_503_names_the_constraint_and_why_each_endpoint_was_unusable(clean: Fleet) -> None:
    clean.set_fault("aws-euc1", mode="down")
    clean.set_fault("gcp-euw4", mode="status", status=429, retry_after="60")
    policy = {"breaker": {"consecutive_failures": 1}}
    with multicloud(clean, policy, order=EU_US_EU) as mc:
        client = sync_client(mc)
        with lmc.routing(residency="EU"):
            with pytest.raises(openai.InternalServerError) as ei:
                client.chat.completions.create(model=MODEL, messages=MSG)
            first = ei.value
            with pytest.raises(openai.InternalServerError) as ei:
                client.chat.completions.create(model=MODEL, messages=MSG)
            second = ei.value
        for err in (first, second):
            assert "residency EU" in err.message.splitlines()[0]
            lines = error_lines(err)
            assert set(lines) == set(ALL_IDS), err.message
            assert lines["aws-use1"].endswith("outside residency EU (in US)")
            assert lines["azure-jpe"].endswith("outside residency EU (in JP)")
        # first request: both tried, each with its own reason
        lines = error_lines(first)
        assert "failed: connect error" in lines["aws-euc1"]
        assert "failed: HTTP 429" in lines["gcp-euw4"]
        # second: aws-euc1 is ejected (tried anyway in panic), gcp-euw4 is cooling until later
        lines = error_lines(second)
        assert "failed" in lines["aws-euc1"] or "ejected" in lines["aws-euc1"]
        assert "cooling down for" in lines["gcp-euw4"] and "429" in lines["gcp-euw4"]
        assert chat_regions(clean) <= EU_IDS


def test_503_without_any_compliant_endpoint_lists_every_one_as_outside(clean: Fleet) -> None:
    with multicloud(clean) as mc:
        client = sync_client(mc)
        with lmc.routing(residency="FR"), pytest.raises(openai.InternalServerError) as ei:
            client.chat.completions.create(model=MODEL, messages=MSG)
        lines = error_lines(ei.value)
        assert set(lines) == set(ALL_IDS)
        assert all("outside residency FR" in line for line in lines.values())
        assert ei.value.body["code"] == "no_endpoint_available"  # type: ignore[index]
        nothing_sent(clean)


# --------------------------------------------------------------------------- tags

TAGS = {
    "aws-use1": {"tier": "gold"},
    "azure-jpe": {"tier": "gold", "compliance": "hipaa"},
    "gcp-euw4": {"tier": "gold", "compliance": "hipaa"},
    "aws-euc1": {"tier": "silver"},
}


@KINDS
@STREAMS
def test_request_tags_match_endpoint_tags(clean: Fleet, kind: str, stream: bool) -> None:
    audit = Audit()
    with multicloud(clean, tags=TAGS, on_attempt=audit) as mc:

        def ep() -> str:
            return chat(mc, kind, stream=stream).headers["x-llm-multicloud-endpoint"]

        with lmc.routing(tags={"tier": "gold"}):
            assert ep() == "aws-use1"
            with lmc.routing(tags={"compliance": "hipaa"}):  # nests: gold AND hipaa
                assert ep() == "azure-jpe"
                with lmc.routing(residency="EU"):
                    assert ep() == "gcp-euw4"
        with lmc.routing(residency="EU", tags={"tier": "silver"}):
            assert ep() == "aws-euc1"
        assert [a.endpoint for a in audit.records] == ["aws-use1", "azure-jpe", "gcp-euw4", "aws-euc1"]


def test_tags_nest_by_intersection_and_conflicts_fail_before_sending(clean: Fleet) -> None:
    with multicloud(clean, tags=TAGS) as mc:
        client = sync_client(mc)
        with lmc.routing(tags={"tier": "gold"}):
            with pytest.raises(lmc.ResidencyError, match="tags do not intersect"), lmc.routing(tags={"tier": "silver"}):
                pass
            with lmc.routing(tags={"tier": "gold"}):  # the same value again is fine
                assert served_by(client) == "aws-use1"

        @lmc.residency("EU", tags={"tier": "silver"})
        def silver() -> str:
            return served_by(client)

        assert silver() == "aws-euc1"
        with lmc.routing(tags={"tier": "gold"}), pytest.raises(lmc.ResidencyError):
            silver()
        assert chat_regions(clean) == {"aws-use1", "aws-euc1"}


@KINDS
def test_tagged_request_never_fails_over_to_an_untagged_or_foreign_endpoint(clean: Fleet, kind: str) -> None:
    """EU + gold = gcp-euw4 only. With it down: 503 — not the silver EU endpoint, not
    the gold US one."""
    audit = Audit()
    clean.set_fault("gcp-euw4", mode="down")
    with multicloud(clean, tags=TAGS, order=EU_US_EU, on_attempt=audit) as mc:
        with lmc.routing(residency="EU", tags={"tier": "gold"}), pytest.raises(openai.InternalServerError) as ei:
            chat(mc, kind, stream=True)
        lines = error_lines(ei.value)
        assert "tags do not match: tier=gold" in lines["aws-euc1"]
        assert "outside residency EU" in lines["aws-use1"]
        assert "failed" in lines["gcp-euw4"]
        # the only compliant endpoint is retried (a blip may pass), nothing else is tried
        assert {a.endpoint for a in audit.records} == {"gcp-euw4"}
        nothing_sent(clean)  # gcp-euw4 is down: it never accepted the connection


# --------------------------------------------------------------------------- audit


@KINDS
@STREAMS
def test_audit_hook_gets_one_record_per_attempt(clean: Fleet, kind: str, stream: bool) -> None:
    audit = Audit()
    clean.set_fault("aws-euc1", mode="status", status=503)
    with multicloud(clean, order=EU_US_EU, on_attempt=audit) as mc:
        with lmc.routing(residency="EU"):
            ans = chat(mc, kind, stream=stream)
        h = ans.headers
        assert (h["x-llm-multicloud-endpoint"], h["x-llm-multicloud-provider"], h["x-llm-multicloud-region"]) == (
            "gcp-euw4",
            "gcp",
            "europe-west4",
        )
        assert h["x-llm-multicloud-attempts"] == "2"
        first, second = audit.records
        assert first.request_id == second.request_id == h["x-llm-multicloud-request-id"]
        assert (first.attempt, first.kind, first.endpoint, first.provider, first.region) == (
            1,
            "primary",
            "aws-euc1",
            "aws",
            "eu-central-1",
        )
        assert (first.outcome, first.status) == ("failed", 503)
        assert first.reason and "503" in first.reason
        assert (second.attempt, second.kind, second.endpoint, second.provider, second.region) == (
            2,
            "retry",
            "gcp-euw4",
            "gcp",
            "europe-west4",
        )
        assert (second.outcome, second.status) == ("won", 200)
        for rec in audit.records:
            assert rec.residency == "EU"
            assert rec.model == MODEL
            assert rec.server_address == "127.0.0.1" and rec.server_port == clean.port(rec.endpoint)
            assert rec.start_unix_nano <= rec.end_unix_nano
        # the records match what the servers saw, attempt for attempt
        assert [r.region_id for r in chat_records(clean)] == [a.endpoint for a in audit.records]
        # a second request gets its own id
        audit.clear()
        clean.set_fault("aws-euc1")
        with lmc.routing(residency="DE"):
            chat(mc, kind, stream=stream)
        assert len(audit.records) == 1
        assert audit.records[0].request_id != first.request_id
        assert audit.records[0].residency == "DE"


def test_audit_of_an_unconstrained_request_says_any(clean: Fleet) -> None:
    audit = Audit()
    with multicloud(clean, on_attempt=audit) as mc:
        served_by(sync_client(mc))
    (rec,) = audit.records
    assert (rec.endpoint, rec.provider, rec.region, rec.residency, rec.kind, rec.outcome) == (
        "aws-use1",
        "aws",
        "us-east-1",
        "any",
        "primary",
        "won",
    )


# --------------------------------------------------------------------------- probes


def test_probes_carry_each_endpoint_key_only_to_that_endpoint(clean: Fleet) -> None:
    audit = Audit()
    policy = {"probe": {"enabled": True, "interval_s": 0.05}}
    with multicloud(clean, policy, on_attempt=audit) as mc:
        client = sync_client(mc)
        with lmc.routing(residency="EU"):
            assert served_by(client) == "gcp-euw4"  # the first request starts the prober

        def probes(rid: str) -> list[Any]:
            return [r for r in clean.received(rid) if r.path == "/v1/models"]

        clean.wait_for(lambda: all(len(probes(rid)) >= 3 for rid in ALL_IDS))
        for rid in ALL_IDS:
            for r in probes(rid):
                assert r.method == "GET"
                assert r.headers["authorization"] == f"Bearer sk-{rid}-secret"
                assert r.status == 200
        # probes generate nothing; the only inference request is the pinned one
        assert [r.region_id for r in chat_records(clean)] == ["gcp-euw4"]
        assert {a.endpoint for a in audit.records} == {"gcp-euw4"}


# --------------------------------------------------------------------------- other paths


@KINDS
def test_stream_resume_continues_only_on_a_compliant_endpoint(clean: Fleet, kind: str) -> None:
    """A stream that breaks after commit and is resumed (opt-in) is a new routed
    request: the continuation stays in the EU even with the US next in catalog order."""
    audit = Audit()
    clean.set_fault("aws-euc1", mode="close_mid_stream", after_chunks=3)
    with multicloud(clean, {"resume": {"enabled": True}}, order=EU_US_EU, on_attempt=audit) as mc:
        with lmc.routing(residency="EU"):
            ans = chat(mc, kind, stream=True, max_tokens=12)
        assert ans.text.startswith("[aws-euc1] w0 w1 w2")
        assert ans.text.rstrip().endswith("w11")
        assert [r.region_id for r in chat_records(clean)] == ["aws-euc1", "gcp-euw4"]
        assert_stayed_in(clean, audit, EU_IDS)


@KINDS
def test_embeddings_are_pinned_too(clean: Fleet, kind: str) -> None:
    audit = Audit()
    with multicloud(clean, on_attempt=audit) as mc:

        async def aembed() -> str:
            async with mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY)) as client:
                r = await client.embeddings.with_raw_response.create(model="embed-small", input="hello")
                return r.headers["x-llm-multicloud-endpoint"]

        def embed() -> str:
            if kind == "async":
                return anyio.run(aembed)
            r = sync_client(mc).embeddings.with_raw_response.create(model="embed-small", input="hello")
            return r.headers["x-llm-multicloud-endpoint"]

        with lmc.routing(residency="EU"):
            assert embed() == "gcp-euw4"
        with lmc.routing(residency="DE"):
            assert embed() == "aws-euc1"
        assert_stayed_in(clean, audit, EU_IDS)
        assert [r.model for r in clean.received()] == ["gcp-euw4-embed", "aws-euc1-embed"]


def test_models_list_under_a_pin_sends_nothing(clean: Fleet) -> None:
    with multicloud(clean) as mc:
        client = sync_client(mc)
        with lmc.routing(residency="EU"):
            assert MODEL in [m.id for m in client.models.list()]
        nothing_sent(clean)


def test_repeated_residency_headers_intersect_never_last_wins(clean: Fleet) -> None:
    """Two layers (say a proxy and the app) each add a residency header. Each is a scope:
    DE ∩ US is empty, so the request must fail (400) before anything is sent — it must
    never go to the US because the US header came last."""
    with multicloud(clean) as mc:
        http = mc.httpx_client()
        body = {"model": MODEL, "messages": MSG}
        for pair in (("DE", "US"), ("US", "DE")):
            r = http.post(
                "/chat/completions",
                json=body,
                headers=[("x-llm-multicloud-residency", pair[0]), ("x-llm-multicloud-residency", pair[1])],
            )
            assert r.status_code == 400, (pair, r.status_code, r.headers.get("x-llm-multicloud-endpoint"))
        # EU and DE: the intersection, DE
        r = http.post(
            "/chat/completions",
            json=body,
            headers=[("x-llm-multicloud-residency", "DE"), ("x-llm-multicloud-residency", "EU")],
        )
        assert r.headers["x-llm-multicloud-endpoint"] == "aws-euc1"
        assert chat_regions(clean) <= {"aws-euc1"}


class _AsyncCallable:
    """A callable object with an ``async __call__`` (not a coroutine *function*)."""

    def __init__(self, client: openai.AsyncOpenAI) -> None:
        self.client = client

    async def __call__(self) -> str:
        return await aserved_by(self.client)


@pytest.mark.parametrize("shape", ["sync-returns-coroutine", "async-callable-object"])
def test_decorated_callable_returning_an_awaitable_stays_pinned_or_refuses(clean: Fleet, shape: str) -> None:
    """``@residency("EU")`` on a plain function that returns ``client.chat.completions.create(...)``
    of an AsyncOpenAI client (a coroutine, awaited by the caller). The awaited request must stay in
    the EU — or the decorator must refuse the callable. It must never go to the US unpinned."""
    with multicloud(clean) as mc:

        async def main() -> str | None:
            async with mc.wrap(openai.AsyncOpenAI(api_key=PLACEHOLDER_KEY)) as client:
                if shape == "sync-returns-coroutine":

                    def ask() -> Any:
                        return aserved_by(client)

                    pinned = lmc.residency("EU")(ask)
                else:
                    pinned = lmc.residency("EU")(_AsyncCallable(client))
                try:
                    return await pinned()  # type: ignore[no-any-return]
                except (TypeError, lmc.ResidencyError):
                    return None  # refusing the callable is acceptable: fail closed

        served = anyio.run(main)
        assert served in (None, "gcp-euw4")
        assert chat_regions(clean) <= EU_IDS


def test_failover_closes_the_connection_of_the_failed_attempt(clean: Fleet) -> None:
    """aws-euc1 sends a malformed event before its first token, then keeps streaming slowly
    (300 ms per token). The request fails over to gcp-euw4 at once; the abandoned connection
    must be closed, so that the server stops generating — not stream its 10 tokens to the end."""
    clean.set_fault("aws-euc1", mode="malformed_sse", after_chunks=0)
    clean.set_latency("aws-euc1", ttft_ms=2, ttft_jitter=0, itl_ms=300)
    with multicloud(clean, order=EU_US_EU) as mc:
        with lmc.routing(residency="EU"):
            ans = chat(mc, "sync", stream=True, max_tokens=10)
        assert ans.headers["x-llm-multicloud-endpoint"] == "gcp-euw4"
        clean.wait_for(lambda: chat_records(clean, "aws-euc1")[0].end_time is not None)
        rec = chat_records(clean, "aws-euc1")[0]
        assert rec.outcome == "disconnected", (rec.outcome, rec.chunks_sent)
        assert rec.end_time is not None and rec.end_time - rec.time < 1.0
