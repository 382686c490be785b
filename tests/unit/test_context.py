"""Routing scopes: nesting by intersection, near, tags, the residency decorator, propagation."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Iterator

import anyio
import anyio.lowlevel
import pytest

from llm_multicloud import regions
from llm_multicloud.context import UNCONSTRAINED, Constraints, current, parse_residency, residency, routing
from llm_multicloud.errors import ResidencyError

EU = regions.BLOCS["EU"]
DE = frozenset({"DE"})


def test_unconstrained_by_default() -> None:
    assert current() == UNCONSTRAINED
    assert current().residency is None


def test_routing_sets_and_restores() -> None:
    with routing(residency="EU") as c:
        assert current() is c
        assert c.residency == EU
        assert c.residency_label == "EU"
    assert current() == UNCONSTRAINED


def test_nesting_narrows_by_intersection() -> None:
    with routing(residency="EU"), routing(residency="DE") as inner:
        assert inner.residency == DE
        assert "EU" in inner.residency_label
        assert "DE" in inner.residency_label
    # an inner scope cannot widen the outer one
    with routing(residency="DE"), routing(residency="EU") as inner:
        assert inner.residency == DE


def test_empty_intersection_raises_before_the_body_runs() -> None:
    ran = False
    with routing(residency="EU"):
        with pytest.raises(ResidencyError, match="do not intersect"), routing(residency="US"):
            ran = True
        # the outer scope is intact after the failed inner one
        assert current().residency == EU
    assert not ran
    assert current() == UNCONSTRAINED


def test_union_within_one_scope() -> None:
    allowed, label = parse_residency("DE, fr")
    assert allowed == frozenset({"DE", "FR"})
    assert label == "DE|FR"
    assert parse_residency(["US", "GB"])[0] == frozenset({"US", "GB"})
    with routing(residency=["DE", "US"]), routing(residency="EU") as c:
        assert c.residency == DE


@pytest.mark.parametrize("bad", ["XX", "EU,ATLANTIS", "", " , "])
def test_unknown_or_empty_code_is_an_error(bad: str) -> None:
    with pytest.raises(ResidencyError), routing(residency=bad):
        pass
    assert current() == UNCONSTRAINED


def test_unknown_code_message_says_what_to_use() -> None:
    with pytest.raises(ResidencyError) as ei:
        parse_residency("XX")
    assert "'XX'" in str(ei.value)
    assert "ISO 3166-1" in str(ei.value)


def test_near_innermost_wins_and_outer_is_restored() -> None:
    fra = regions.locate("eu-central-1")
    dub = regions.locate("eu-west-1")
    with routing(near="eu-central-1") as outer:
        assert outer.near == fra
        with routing(near="eu-west-1") as inner:
            assert inner.near == dub
            assert inner.near_label == "eu-west-1"
        with routing(residency="EU") as keeps:
            assert keeps.near == fra  # a scope without near keeps the outer one
        assert current().near == fra


def test_unknown_near_is_an_error() -> None:
    with pytest.raises(ResidencyError, match="unknown location 'mars-1'"), routing(near="mars-1"):
        pass


def test_tags_merge_and_conflict() -> None:
    with routing(tags={"tier": "gold"}), routing(tags={"team": "ml"}) as c:
        assert dict(c.tags) == {"tier": "gold", "team": "ml"}
        with routing(tags={"tier": "gold"}) as same:  # repeating a tag is fine
            assert dict(same.tags) == {"tier": "gold", "team": "ml"}
        with pytest.raises(ResidencyError, match="tier"), routing(tags={"tier": "silver"}):
            pass


def test_constraints_are_hashable_values() -> None:
    a = UNCONSTRAINED.narrow("EU", "eu-west-1", {"b": "2", "a": "1"})
    b = UNCONSTRAINED.narrow("EU", "eu-west-1", {"a": "1", "b": "2"})
    assert a == b
    assert hash(a) == hash(b)
    assert isinstance(a, Constraints)


# --------------------------------------------------------------------------- the decorator


def test_decorator_needs_a_valid_code_at_decoration_time() -> None:
    with pytest.raises(ResidencyError):
        residency()
    with pytest.raises(ResidencyError):
        residency("NOPE")


def test_decorator_on_sync_function() -> None:
    @residency("EU")
    def f(x: int) -> tuple[int, frozenset[str] | None]:
        return x * 2, current().residency

    assert f.__name__ == "f"
    assert f(21) == (42, EU)
    assert current() == UNCONSTRAINED


def test_decorator_restores_on_exception() -> None:
    @residency("DE")
    def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        boom()
    assert current() == UNCONSTRAINED


def test_decorator_nests_with_outer_scope() -> None:
    @residency("DE")
    def inner() -> frozenset[str] | None:
        return current().residency

    with routing(residency="EU"):
        assert inner() == DE

    @residency("US")
    def conflicting() -> None:
        raise AssertionError("must not run")

    with routing(residency="EU"), pytest.raises(ResidencyError):
        conflicting()


def test_decorator_on_async_function() -> None:
    @residency("EU", near="eu-west-1")
    async def f() -> Constraints:
        await anyio.lowlevel.checkpoint()
        return current()

    async def main() -> tuple[Constraints, Constraints]:
        inside = await f()
        return inside, current()

    inside, after = anyio.run(main)
    assert inside.residency == EU
    assert inside.near == regions.locate("eu-west-1")
    assert after == UNCONSTRAINED


def test_decorator_on_generator_scope_does_not_leak_to_consumer() -> None:
    @residency("DE")
    def gen(n: int) -> Iterator[frozenset[str] | None]:
        for _ in range(n):
            yield current().residency

    seen_by_consumer = []
    inside = []
    for value in gen(3):
        inside.append(value)
        seen_by_consumer.append(current().residency)
    assert inside == [DE, DE, DE]
    assert seen_by_consumer == [None, None, None]


def test_decorated_generator_send_throw_and_return_value() -> None:
    @residency("DE")
    def echo() -> Iterator[object]:
        got = yield "ready"
        while True:
            try:
                got = yield (got, current().residency)
            except ValueError as e:
                got = f"caught {e} in {sorted(current().residency or ())}"
            if got == "stop":
                return

    g = echo()
    assert next(g) == "ready"
    assert g.send("a") == ("a", DE)
    assert current().residency is None
    assert g.throw(ValueError("v")) == ("caught v in ['DE']", DE)
    with pytest.raises(StopIteration):
        g.send("stop")


def test_decorated_generator_return_value_is_kept() -> None:
    @residency("EU")
    def sub() -> Iterator[int]:
        yield 1
        return "done"  # type: ignore[return-value]

    def outer() -> Iterator[int]:
        result = yield from sub()
        assert result == "done"
        yield 2

    assert list(outer()) == [1, 2]


def test_decorated_generator_cleanup_runs_inside_the_scope() -> None:
    cleanup: list[frozenset[str] | None] = []

    @residency("DE")
    def gen() -> Iterator[int]:
        try:
            yield 1
            yield 2
        finally:
            cleanup.append(current().residency)

    g = gen()
    assert next(g) == 1
    g.close()  # the consumer stops early
    assert cleanup == [DE]


def test_decorator_on_async_generator_scope_does_not_leak_to_consumer() -> None:
    @residency("DE")
    async def agen(n: int) -> AsyncIterator[frozenset[str] | None]:
        for _ in range(n):
            await asyncio.sleep(0)
            yield current().residency

    async def main() -> tuple[list[frozenset[str] | None], list[frozenset[str] | None]]:
        inside, outside = [], []
        async for value in agen(3):
            inside.append(value)
            outside.append(current().residency)
        return inside, outside

    inside, outside = asyncio.run(main())
    assert inside == [DE, DE, DE]
    assert outside == [None, None, None]


def test_decorated_async_generator_asend_and_athrow() -> None:
    @residency("EU")
    async def agen() -> AsyncIterator[object]:
        got = yield "ready"
        try:
            yield (got, current().residency)
        except KeyError:
            yield ("caught", current().residency)

    async def main() -> list[object]:
        g = agen()
        out = [await g.asend(None), await g.asend("x"), await g.athrow(KeyError("k"))]
        await g.aclose()
        return out

    assert asyncio.run(main()) == ["ready", ("x", EU), ("caught", EU)]


def test_decorated_async_generator_cleanup_runs_inside_the_scope() -> None:
    cleanup: list[frozenset[str] | None] = []

    @residency("DE")
    async def agen() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            cleanup.append(current().residency)

    async def main() -> None:
        g = agen()
        assert await g.__anext__() == 1
        await g.aclose()

    asyncio.run(main())
    assert cleanup == [DE]


def test_residency_as_context_manager_and_reentrant() -> None:
    pin = residency("EU")
    with pin as c:
        assert c.residency == EU
        with pin as again:  # the same object, nested
            assert again.residency == EU
        assert current().residency == EU
    assert current() == UNCONSTRAINED


def test_shared_residency_instance_in_concurrent_tasks() -> None:
    pin = residency("EU")

    async def task(entered: asyncio.Event, go: asyncio.Event) -> frozenset[str] | None:
        with pin:
            entered.set()
            await go.wait()
            return current().residency

    async def main() -> list[frozenset[str] | None]:
        e1, g1, e2, g2 = asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event()
        t1 = asyncio.create_task(task(e1, g1))
        await e1.wait()
        t2 = asyncio.create_task(task(e2, g2))
        await e2.wait()
        g1.set()
        r1 = await t1
        g2.set()
        return [r1, await t2]

    assert asyncio.run(main()) == [EU, EU]


# --------------------------------------------------------------------------- propagation


def test_context_propagates_into_asyncio_tasks() -> None:
    async def child() -> frozenset[str] | None:
        await asyncio.sleep(0)
        return current().residency

    async def main() -> tuple[frozenset[str] | None, frozenset[str] | None]:
        with routing(residency="DE"):
            task = asyncio.create_task(child())
        # the task copied the context at creation, even though the scope has ended
        inside = await task
        return inside, current().residency

    inside, after = asyncio.run(main())
    assert inside == DE
    assert after is None


def test_context_propagates_into_anyio_task_groups() -> None:
    results: list[frozenset[str] | None] = []

    async def child() -> None:
        await anyio.lowlevel.checkpoint()
        results.append(current().residency)

    async def main() -> None:
        with routing(residency="EU"):
            async with anyio.create_task_group() as tg:
                tg.start_soon(child)
                tg.start_soon(child)

    anyio.run(main)
    assert results == [EU, EU]


def test_tasks_do_not_see_each_others_scopes() -> None:
    async def worker(code: str, started: asyncio.Event, other: asyncio.Event) -> frozenset[str] | None:
        with routing(residency=code):
            started.set()
            await other.wait()  # the other task enters its own scope meanwhile
            return current().residency

    async def main() -> list[frozenset[str] | None]:
        a, b = asyncio.Event(), asyncio.Event()
        return list(await asyncio.gather(worker("DE", a, b), worker("US", b, a)))

    assert asyncio.run(main()) == [DE, frozenset({"US"})]


def test_threads_do_not_inherit_but_copy_context_does() -> None:
    seen: dict[str, frozenset[str] | None] = {}

    def probe(name: str) -> None:
        seen[name] = current().residency

    with routing(residency="DE"):
        t = threading.Thread(target=probe, args=("plain",))
        t.start()
        t.join()
        ctx = contextvars.copy_context()
        t2 = threading.Thread(target=ctx.run, args=(probe, "copied"))
        t2.start()
        t2.join()
    assert seen == {"plain": None, "copied": DE}
