"""Prompt-cache affinity: rendezvous hashing (hrw) and its place in the router."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_multicloud import hrw, regions
from llm_multicloud.context import UNCONSTRAINED
from llm_multicloud.intent import parse

from .test_router import _CONSTRAINT_TAGS, NOW, Setup, _build, _endpoint, _ep, _price, ids, where


def key(s: str) -> tuple[int, str]:
    return hrw.key_hash("session:" + s), "session"


# --------------------------------------------------------------------------- hrw


def test_rendezvous_spreads_keys_evenly_and_moves_only_the_departed_ones() -> None:
    names = [f"ep{i}" for i in range(5)]
    keys = [hrw.key_hash(f"user-{i}") for i in range(5000)]
    first = {k: hrw.rank(k, names, str)[0] for k in keys}
    share = Counter(first.values())
    assert all(800 <= n <= 1200 for n in share.values()), share
    # ep2 leaves: exactly its keys move, each to its own second choice; no other key moves
    rest = [n for n in names if n != "ep2"]
    for k in keys:
        after = hrw.rank(k, rest, str)[0]
        if first[k] != "ep2":
            assert after == first[k]
        else:
            assert after == hrw.rank(k, names, str)[1]
    moved = Counter(hrw.rank(k, rest, str)[0] for k in keys if first[k] == "ep2")
    assert len(moved) == 4 and min(moved.values()) > 150  # spread, not dumped on a neighbour


def test_rendezvous_weights_are_proportional_and_stable_across_processes() -> None:
    keys = [hrw.key_hash(f"k{i}") for i in range(6000)]
    w = {"a": 1.0, "b": 2.0, "c": 3.0}
    got = Counter(hrw.rank(k, list(w), str, w.__getitem__)[0] for k in keys)
    for name, weight in w.items():
        assert abs(got[name] / 6000 - weight / 6) < 0.03, got
    # a fixed value: the hash is blake2b + splitmix, not Python's per-process hash()
    assert hrw.key_hash("session:abc") == hrw.key_hash(b"session:abc")
    assert hrw.rank(hrw.key_hash("session:abc"), ["x", "y", "z"], str) == hrw.rank(
        hrw.key_hash("session:abc"), ["z", "y", "x"], str
    )


# --------------------------------------------------------------------------- router


def four(policy: dict[str, Any] | None = None, **kw: Any) -> Setup:
    s = Setup(
        [_ep(f"e{i}", "eu-central-1", pricing=_price(1.0)) for i in range(4)],
        {"strategy": "latency", **(policy or {})},
        **kw,
    )
    for i in range(4):
        s.measured(f"e{i}", 100 + i)  # near-equal
    return s


def test_a_session_keeps_its_endpoint_whatever_the_seed_and_sessions_spread() -> None:
    s = four()
    pins = {}
    for u in range(200):
        got = {ids(s.plan(seed=seed / 10, affinity=key(f"u{u}")))[0] for seed in range(10)}
        assert len(got) == 1, got  # the same pin for every request of the session
        pins[u] = got.pop()
    assert set(Counter(pins.values())) == {"e0", "e1", "e2", "e3"}
    plan = s.plan(affinity=key("u1"))
    assert plan.affinity == "session"
    assert plan.candidates[0].note.startswith("affinity: session pin (rendezvous among 4")
    assert "affinity" in plan.describe() and plan.to_dict()["affinity"] == "session"
    # without a key the power of two choices decides, and the plan says nothing of affinity
    assert s.plan().affinity is None


def test_the_pin_moves_when_ejected_cooling_or_overloaded_and_comes_back() -> None:
    s = four()
    k = key("conversation-7")
    pin, second = ids(s.plan(affinity=k))[:2]
    st = s.st(pin)
    st.breaker, st.open_until = "open", NOW + 30
    assert ids(s.plan(affinity=k))[0] == second  # the rendezvous second choice: the least move
    st.breaker, st.open_until = "closed", 0.0
    assert ids(s.plan(affinity=k))[0] == pin
    st.quota.until = NOW + 5
    assert ids(s.plan(affinity=k))[0] == second
    st.quota.until = 0.0
    st.inflight = 3  # busy, not overloaded: a load factor of 4 is within 3 x 1 + 1
    assert ids(s.plan(affinity=k))[0] == pin
    st.inflight = 4  # overloaded
    assert ids(s.plan(affinity=k))[0] == second


def test_affinity_never_bridges_a_large_latency_or_cost_gap() -> None:
    s = four()
    k = key("gap")
    pin = ids(s.plan(affinity=k))[0]
    s.measured(pin, 600)  # far outside 2 x 100 ms + 250 ms
    plan = s.plan(affinity=k)
    assert plan.candidates[0].endpoint.id != pin
    s.measured(pin, 400)  # within the slack
    assert ids(s.plan(affinity=k))[0] == pin
    # cost: a pin twice the price of the cheapest is out under strategy cost
    c = Setup(
        [_ep("cheap", pricing=_price(1.0)), _ep("dear", pricing=_price(2.0)), _ep("ok", pricing=_price(1.1))],
        {"strategy": "cost"},
    )
    chosen = {ids(c.plan(affinity=key(f"s{i}")))[0] for i in range(100)}
    assert chosen == {"cheap", "ok"}


def test_ordered_strategy_and_disabled_affinity_ignore_the_key() -> None:
    s = four({"strategy": "ordered"})
    assert all(ids(s.plan(affinity=key(f"s{i}")))[0] == "e0" for i in range(50))
    off = four({"affinity": {"enabled": False}})
    assert off.plan(affinity=key("x")).affinity is None


def test_intent_keys_on_session_header_context_or_the_stable_prefix() -> None:
    import json

    from llm_multicloud import routing

    system = {"role": "system", "content": "You are terse. " * 100}
    turn1 = [system, {"role": "user", "content": "first question"}]
    turn5 = [*turn1, {"role": "assistant", "content": "a"}, {"role": "user", "content": "fifth question"}]

    def intent(msgs: list[dict[str, str]], headers: list[tuple[str, str]] | None = None) -> Any:
        body = json.dumps({"model": "m", "messages": msgs}).encode()
        return parse("POST", "chat/completions", "", headers or [], body, None)

    a = intent(turn1).affinity_key(prefix=True, min_tokens=256)
    b = intent(turn5).affinity_key(prefix=True, min_tokens=256)
    assert a is not None and a == b and a[1] == "prefix"  # later turns repeat the prefix
    other = [system, {"role": "user", "content": "another conversation"}]
    assert intent(other).affinity_key(prefix=True, min_tokens=256) != a
    assert intent(turn1).affinity_key(prefix=True, min_tokens=10_000) is None  # too short to matter
    assert intent(turn1).affinity_key(prefix=False, min_tokens=0) is None
    h = intent(turn1, [("x-llm-multicloud-session", "conv-1")]).affinity_key(prefix=True, min_tokens=0)
    assert h == key("conv-1")
    with routing(session="conv-1"):
        assert intent(turn5).affinity_key(prefix=True, min_tokens=0) == key("conv-1")
        with routing(session="inner"):
            assert intent(turn5).affinity_key(prefix=True, min_tokens=0) == key("inner")


# --------------------------------------------------------------------------- property


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    specs=st.lists(_endpoint, min_size=1, max_size=8),
    residency=st.one_of(st.none(), st.lists(st.sampled_from(_CONSTRAINT_TAGS), min_size=1, max_size=3)),
    tier=st.sampled_from([None, "gold"]),
    strategy=st.sampled_from(["latency", "cost", "balanced", "weighted", "ordered"]),
    fraction=st.sampled_from([0.0, 0.5, 1.0]),
    session=st.text(min_size=1, max_size=12),
    seed=st.floats(0, 1),
)
def test_affinity_never_violates_residency_or_health(
    specs: list[dict[str, Any]],
    residency: list[str] | None,
    tier: str | None,
    strategy: str,
    fraction: float,
    session: str,
    seed: float,
) -> None:
    """Over random catalogs and health: a plan with an affinity key holds exactly the
    endpoints of the plan without one (affinity only reorders), every one compliant,
    and the pin is a healthy endpoint (never an ejected, cooling or missing one)."""
    s = _build(specs, strategy, fraction)
    if s.catalog.serving("m") is None:
        return
    c = UNCONSTRAINED.narrow(residency, None, {"tier": tier} if tier else None)
    plain = s.plan(c=c, seed=seed)
    pinned = s.plan(c=c, seed=seed, affinity=key(session))
    assert sorted(ids(pinned)) == sorted(ids(plain))
    assert {x.endpoint.id for x in pinned.excluded} == {x.endpoint.id for x in plain.excluded}
    for cd in pinned.candidates:
        e = cd.endpoint
        if c.residency is not None:
            assert e.footprint and e.footprint <= c.residency
        assert all(e.tags.get(k) == v for k, v in c.tags)
    if pinned.affinity is not None:
        first = pinned.candidates[0]
        h = s.health.states[first.endpoint.index]
        assert not first.readmitted
        assert h.quota.until <= NOW and not (h.breaker == "open" and h.open_until > NOW)
        assert "m" not in h.missing_models


def test_residency_binds_a_session_that_spans_scopes() -> None:
    s = Setup([_ep("us", "us-east-1"), _ep("de", "eu-central-1"), _ep("fr", "eu-west-3")], {"strategy": "latency"})
    for i in range(3):
        s.measured(["us", "de", "fr"][i], 100)
    for i in range(100):
        assert ids(s.plan(c=where("EU"), affinity=key(f"s{i}")))[0] in ("de", "fr")
    assert regions.expand_tag("EU")
