"""The router: a pure function from (request, catalog, health, policy) to a plan.

No I/O and no clock reads: the current time and a random seed are arguments, so a
decision is reproducible in a unit test and costs microseconds. The plan is an
ordered list of candidates (the executor tries them in order, hedges to the first
one in another failure domain) plus every excluded endpoint with the reason.

Steps:

1. **Static filter**, memoised per (model, residency, tags) in an LRU cache:
   endpoints that serve the logical model and whose residency footprint lies inside
   the request's allowed countries and whose tags match. Residency is decided here
   and only here; the executor re-checks it before sending as a second lock.
2. **Health filter**: the model still listed by ``/models``; not cooling down
   (429/401/403, per quota domain); breaker not open. At most
   ``max_ejection_fraction`` of the compliant endpoints stay ejected: the rest are
   re-admitted, earliest-to-recover first. If nothing is left, *panic*: the
   least-bad ejected endpoints are tried anyway (still only compliant ones), and if
   everything is cooling the plan says until when (``wait_until``).
3. **Prediction**: time to first token = the peak-EWMA of observed TTFT, decaying
   toward a baseline (probe RTT + a processing guess, else the geographic prior:
   ~1 ms per 100 km of great-circle distance between the user's ``near`` and the
   region, else a default), times ``1 + in-flight + queue depth`` (the load term of
   peak-EWMA balancing).
4. **Ranking** by strategy: ``latency`` (predicted), ``cost`` (expected USD from
   prompt size and max tokens), ``balanced`` (cheapest among those within a slack
   of the fastest, or under an SLO), ``weighted`` (weighted random order,
   Efraimidis–Spirakis), ``ordered`` (catalog order). Near-equal leaders are broken
   by the *power of two choices* (Mitzenmacher 2001) on in-flight load, so that a
   fleet of clients with the same view does not herd onto one endpoint.
5. **Affinity** (a session key, or a hash of the prompt's stable prefix): among the
   ranked usable endpoints whose predicted TTFT, expected cost and load are within
   ``policy.affinity``'s slack of the strategy's first choice, rendezvous hashing
   (:mod:`.hrw`) picks the key's pin and orders the failovers, so a conversation
   returns to the endpoint that holds its prompt cache. It acts only after steps
   1-2: it never reaches a non-compliant, ejected, cooling or full endpoint, and a
   large latency or cost gap or an overloaded pin takes it out of the window.
"""

from __future__ import annotations

import math
import operator
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from cachetools import LRUCache

from . import hrw
from .catalog import Catalog, Endpoint
from .context import Constraints
from .errors import RoutingError
from .limits import DEFAULT_OUTPUT_TOKENS, Bucket, estimate_tokens
from .policy import Policy
from .regions import distance_km


class QuotaView(Protocol):
    until: float
    reason: str


class EndpointView(Protocol):
    """What the router reads of an endpoint's health (see :class:`health.EndpointState`)."""

    @property
    def endpoint(self) -> Endpoint: ...
    @property
    def ttft_ms(self) -> float | None: ...
    @property
    def ttft_at(self) -> float: ...
    @property
    def ttft_before_jump(self) -> float | None: ...
    @property
    def rtt_ms(self) -> float | None: ...
    @property
    def inflight(self) -> int: ...
    @property
    def remote_inflight(self) -> int: ...
    @property
    def queue_waiting(self) -> float: ...
    @property
    def breaker(self) -> str: ...
    @property
    def open_until(self) -> float: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def missing_models(self) -> frozenset[str]: ...
    @property
    def refused_models(self) -> frozenset[str]: ...
    @property
    def quota(self) -> QuotaView: ...
    @property
    def drained(self) -> str | None: ...
    @property
    def bucket(self) -> Bucket | None: ...


@dataclass(slots=True)
class Candidate:
    endpoint: Endpoint
    predicted_ms: float
    score: float
    cost_usd: float | None
    note: str = ""
    #: An ejected endpoint tried anyway (ejection cap or panic).
    readmitted: bool = False


@dataclass(slots=True)
class Exclusion:
    endpoint: Endpoint
    reason: str
    #: residency | tags | missing_model | cooling | ejected | full | drained | limited
    kind: str = "residency"


@dataclass(slots=True)
class Plan:
    """The ordered candidates for one request, and why the others are out."""

    model: str
    strategy: str
    candidates: list[Candidate]
    excluded: list[Exclusion]
    constraints: Constraints
    #: Everything compliant is cooling down: the earliest time one is usable again.
    wait_until: float | None = None
    panic: bool = False
    notes: list[str] = field(default_factory=list)
    #: How affinity decided the first candidate ("session" / "prefix" pin), or None.
    affinity: str | None = None

    def describe(self, now: float | None = None) -> str:
        """One line per endpoint: rank and reason, or why it is excluded."""
        lines = [f"model {self.model!r}, strategy {self.strategy}, {_describe_constraints(self.constraints)}"]
        lines += [f"  note: {n}" for n in self.notes]
        for i, c in enumerate(self.candidates, 1):
            cost = "price unknown" if c.cost_usd is None else f"~${c.cost_usd:.6f}"
            lines.append(
                f"  {i}. {c.endpoint.id} ({c.endpoint.provider} {c.endpoint.region}): predicted TTFT "
                f"{c.predicted_ms:.0f} ms, {cost}{' — ' + c.note if c.note else ''}"
            )
        for x in self.excluded:
            lines.append(f"  -  {x.endpoint.id} ({x.endpoint.provider} {x.endpoint.region}): excluded: {x.reason}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, object]:
        return {
            "model": self.model,
            "strategy": self.strategy,
            "constraints": _describe_constraints(self.constraints),
            "panic": self.panic,
            "affinity": self.affinity,
            "notes": list(self.notes),
            "candidates": [
                {
                    "rank": i,
                    "endpoint": c.endpoint.id,
                    "provider": c.endpoint.provider,
                    "region": c.endpoint.region,
                    "predicted_ttft_ms": round(c.predicted_ms, 3),
                    "expected_cost_usd": None if c.cost_usd is None else round(c.cost_usd, 9),
                    "reason": c.note,
                }
                for i, c in enumerate(self.candidates, 1)
            ],
            "excluded": [{"endpoint": x.endpoint.id, "reason": x.reason} for x in self.excluded],
        }


def _describe_constraints(c: Constraints) -> str:
    parts = [f"residency {c.residency_label}" if c.residency is not None else "residency any"]
    if c.near_label:
        parts.append(f"near {c.near_label}")
    if c.tags:
        parts.append("tags " + ",".join(f"{k}={v}" for k, v in c.tags))
    return ", ".join(parts)


def complies(ep: Endpoint, c: Constraints) -> bool:
    """Does an endpoint satisfy a request's hard constraints (residency and tags)?"""
    if c.residency is not None and (not ep.footprint or not ep.footprint <= c.residency):
        return False
    return all(ep.tags.get(k) == v for k, v in c.tags)


class Router:
    """Plans requests for one catalog and policy. Stateless apart from a memo cache."""

    def __init__(self, catalog: Catalog, policy: Policy) -> None:
        self.catalog = catalog
        self.policy = policy
        self._static: LRUCache[
            tuple[str, frozenset[str] | None, tuple[tuple[str, str], ...], str],
            tuple[tuple[Endpoint, ...], tuple[Exclusion, ...]],
        ] = LRUCache(maxsize=4096)
        self._geo_cache: LRUCache[tuple[float, float] | None, list[float]] = LRUCache(maxsize=1024)

    def _compliant(self, model: str, c: Constraints) -> tuple[tuple[Endpoint, ...], tuple[Exclusion, ...]]:
        key = (model, c.residency, c.tags, c.residency_label)
        hit = self._static.get(key)
        if hit is not None:
            return hit
        serving = self.catalog.serving(model)
        if serving is None:
            known = ", ".join(sorted(self.catalog.models)) or "none"
            raise RoutingError(404, "model_not_found", f"unknown model {model!r}; this catalog serves: {known}")
        ok: list[Endpoint] = []
        out: list[Exclusion] = []
        for ep in serving:
            if c.residency is not None and (not ep.footprint or not ep.footprint <= c.residency):
                where = ",".join(sorted(ep.footprint)) if ep.footprint else "unknown location"
                if len(ep.footprint) > 3:
                    where = ",".join(ep.residency)
                out.append(Exclusion(ep, f"outside residency {c.residency_label} (in {where})"))
                continue
            bad = [f"{k}={v}" for k, v in c.tags if ep.tags.get(k) != v]
            if bad:
                out.append(Exclusion(ep, f"tags do not match: {', '.join(bad)}", "tags"))
                continue
            ok.append(ep)
        res = (tuple(ok), tuple(out))
        self._static[key] = res
        return res

    def baseline_ms(self, ep: Endpoint, rtt_ms: float | None, c: Constraints) -> float:
        """What we expect of an endpoint with no recent TTFT sample."""
        if rtt_ms is not None:
            return rtt_ms + self.policy.default_ttft_ms * 0.25
        return self._geo(c.near)[ep.index]

    def _geo(self, near: tuple[float, float] | None) -> list[float]:
        """Per endpoint, the prior TTFT without measurements: ~1 ms of round trip per
        100 km of great-circle distance from the user (fibre at 2/3 c, indirect
        routes) plus a fixed processing guess; the default without a location.
        Memoised per location: distances are static."""
        hit = self._geo_cache.get(near)
        if hit is not None:
            return hit
        d = self.policy.default_ttft_ms
        out = [
            distance_km(near, ep.location) / 100.0 + d * 0.25 if near is not None and ep.location is not None else d
            for ep in self.catalog.endpoints
        ]
        self._geo_cache[near] = out
        return out

    def plan(
        self,
        model: str,
        constraints: Constraints,
        states: Sequence[EndpointView],
        now: float,
        *,
        input_tokens: int = 0,
        max_tokens: int | None = None,
        seed: float = 0.5,
        context_window: int | None = None,
        limit: int | None = None,
        affinity: tuple[int, str] | None = None,
    ) -> Plan:
        """Rank the endpoints for one request. ``states`` is indexed like ``catalog.endpoints``.

        ``limit``: build only the first ``limit`` candidates (the executor needs a
        handful: primary, hedges, failovers); ``None`` ranks them all (explain).
        ``affinity``: (64-bit key hash, "session" | "prefix") for prompt-cache affinity."""
        p = self.policy
        compliant, static_out = self._compliant(model, constraints)
        excluded = list(static_out)
        window = context_window or self.catalog.models[model].context_window
        if window is not None and input_tokens + (max_tokens or 0) > window:
            raise RoutingError(
                400,
                "context_length_exceeded",
                f"the prompt (~{input_tokens} tokens) plus max_tokens ({max_tokens or 0}) exceeds the context "
                f"window of {model!r} ({window} tokens); shorten the prompt or lower max_tokens",
            )
        geo = self._geo(constraints.near)
        base_rtt = p.default_ttft_ms * 0.25
        tau = p.decay_s
        exp = math.exp
        # One pass: health filter and prediction. Hot loop: no calls but exp().
        usable: list[tuple[float, float, Endpoint]] = []  # (score, predicted, endpoint)
        unexplored: list[tuple[float, float, Endpoint]] = []  # no TTFT sample, or a stale one
        rechecks: list[tuple[float, float, Endpoint]] = []  # estimate jumped on one sample
        stale_after = 3.0 * tau
        full: list[tuple[float, float, Endpoint]] = []
        ejected: list[tuple[Endpoint, EndpointView]] = []
        cooling: list[tuple[Endpoint, EndpointView]] = []
        limited: list[tuple[Endpoint, Bucket]] = []
        need = estimate_tokens(input_tokens, max_tokens)
        for ep in compliant:
            st = states[ep.index]
            if st.drained is not None:  # an operator's drain: never re-admitted, not even in panic
                excluded.append(Exclusion(ep, f"drained: {st.drained}", "drained"))
                continue
            if ep.credential.unavailable is not None:
                excluded.append(Exclusion(ep, f"credential unavailable: {ep.credential.unavailable}", "credential"))
                continue
            if st.missing_models and model in st.missing_models:
                why = (
                    f"404 for {ep.models[model]!r}, a served name its /models has never listed"
                    if model in st.refused_models
                    else f"/models no longer lists {ep.models[model]!r}"
                )
                excluded.append(Exclusion(ep, why, "missing_model"))
                continue
            if st.quota.until > now:
                cooling.append((ep, st))
                continue
            if st.breaker == "open" and st.open_until > now:
                ejected.append((ep, st))
                continue
            b = st.bucket
            if b is not None and not b.fits(now, need):
                limited.append((ep, b))
                continue
            rtt = st.rtt_ms
            base = geo[ep.index] if rtt is None else rtt + base_rtt
            est = st.ttft_ms
            pred = base if est is None else base + (est - base) * exp((st.ttft_at - now) / tau)
            busy = st.inflight + st.remote_inflight
            item = (pred * (1.0 + busy + st.queue_waiting), pred, ep)
            if ep.max_concurrency is not None and busy >= ep.max_concurrency:
                full.append(item)
            else:
                usable.append(item)
                if est is None or now - st.ttft_at > stale_after:
                    unexplored.append(item)
                elif st.ttft_before_jump is not None and busy == 0:
                    rechecks.append(item)
        notes: list[str] = []
        readmitted: list[tuple[Endpoint, EndpointView]] = []
        if full and not usable:
            # Everything compliant and healthy is at its concurrency limit: trying one
            # (its own queue or 429 will tell) beats failing outright.
            usable, full = full, []
            notes.append("every usable endpoint is at max_concurrency; trying them anyway")
        for _, _, ep in full:
            st = states[ep.index]
            excluded.append(
                Exclusion(ep, f"at max_concurrency ({st.inflight + st.remote_inflight}/{ep.max_concurrency})", "full")
            )
        n_ok = len(usable) + len(ejected) + len(cooling) + len(limited)
        if ejected:
            ejected.sort(key=lambda es: es[1].open_until)
            cap = math.floor(p.breaker.max_ejection_fraction * n_ok)
            if len(ejected) > cap:
                k = len(ejected) - cap
                readmitted, ejected = ejected[:k], ejected[k:]
                if usable or cooling:
                    notes.append(
                        f"{k} ejected endpoint(s) re-admitted: at most "
                        f"{p.breaker.max_ejection_fraction:.0%} may be ejected"
                    )
        panic = False
        if not usable and not readmitted and ejected:
            # Panic: every compliant endpoint is out. Try the least-bad ones anyway,
            # residency still binding (they are all compliant).
            readmitted, ejected = ejected, []
            panic = True
            notes.append("panic: every compliant endpoint is ejected; trying the least-bad ones")
        for ep, st in ejected:
            excluded.append(
                Exclusion(ep, f"ejected (breaker open for {st.open_until - now:.1f}s more): {st.last_error}", "ejected")
            )
        wait_until = None
        for ep, st in cooling:
            excluded.append(
                Exclusion(ep, f"cooling down for {st.quota.until - now:.1f}s more: {st.quota.reason}", "cooling")
            )
        for ep, b in limited:
            excluded.append(Exclusion(ep, f"over its capacity limit: {b.describe(now, need)}", "limited"))
        if not usable and not readmitted and (cooling or limited):
            # Nothing can take it now: the earliest time one can (the executor waits
            # for it within the request's deadline, or says why it cannot).
            wait_until = min([st.quota.until for _, st in cooling] + [b.ready_at(now, need) for _, b in limited])

        out_tok = max_tokens if max_tokens is not None else DEFAULT_OUTPUT_TOKENS
        cands = self._rank(usable, seed, input_tokens, out_tok, limit)
        pinned = None
        if affinity is not None and len(usable) > 1 and p.affinity.enabled and p.strategy != "ordered":
            cands, pinned = self._affine(cands, usable, affinity, input_tokens, out_tok, limit)
        explore = (seed * 104729.0) % 1.0  # an independent draw from the same seed
        if (
            pinned is None
            and unexplored
            and len(usable) > 1
            and explore < p.explore
            and p.strategy in ("latency", "balanced")
        ):
            # Exploration: a small share of requests goes to an endpoint we know
            # nothing recent about, so that a recovered or never-tried region can
            # show it is fast (the prior alone would keep it out for ever).
            sc, pr, ep = unexplored[int(explore / p.explore * len(unexplored)) % len(unexplored)]
            if cands and cands[0].endpoint is not ep:
                cands = [c for c in cands if c.endpoint is not ep]
                cands.insert(
                    0, Candidate(ep, pr, sc, _cost(ep, input_tokens, out_tok), "exploration: no recent TTFT sample")
                )
        recheck = (seed * 7727.0) % 1.0  # another independent draw
        if (
            pinned is None  # an affinity pin is not moved for a recheck: its own traffic samples it
            and rechecks
            and len(usable) > 1
            and recheck < p.recheck
            and p.strategy in ("latency", "balanced")
        ):
            # Recheck: one request to an endpoint whose estimate jumped on a single
            # sample, so that the next sample can tell an outlier from a slowdown.
            sc, pr, ep = rechecks[int(recheck / p.recheck * len(rechecks)) % len(rechecks)]
            if cands and cands[0].endpoint is not ep:
                cands = [c for c in cands if c.endpoint is not ep]
                cands.insert(
                    0,
                    Candidate(
                        ep, pr, sc, _cost(ep, input_tokens, out_tok), "recheck: its estimate jumped on one sample"
                    ),
                )
        for ep, st in readmitted:
            rtt = st.rtt_ms
            base = geo[ep.index] if rtt is None else rtt + base_rtt
            est = st.ttft_ms
            pred = base if est is None else base + (est - base) * exp((st.ttft_at - now) / tau)
            cands.append(
                Candidate(
                    ep,
                    pred,
                    pred,
                    _cost(ep, input_tokens, out_tok),
                    "panic: least-bad ejected endpoint" if panic else "re-admitted (ejection cap)",
                    readmitted=True,
                )
            )
        return Plan(model, p.strategy, cands, excluded, constraints, wait_until, panic, notes, pinned)

    def _affine(
        self,
        ranked: list[Candidate],
        usable: list[tuple[float, float, Endpoint]],
        affinity: tuple[int, str],
        input_tokens: int,
        out_tokens: int,
        limit: int | None,
    ) -> tuple[list[Candidate], str | None]:
        """Put the key's rendezvous pin first, among the usable endpoints near the
        strategy's first choice; the rest of the window follows in rendezvous order
        (where the key goes if its pin leaves), then the other ranked candidates."""
        a = self.policy.affinity
        lead = ranked[0]
        inf = math.inf
        lead_cost = inf if lead.cost_usd is None else lead.cost_usd
        lat_lim = lead.predicted_ms * (1.0 + a.slack) + a.slack_ms
        load_lim = lead.score * a.overload + a.slack_ms
        cost_lim = lead_cost * (1.0 + a.cost_slack) + 1e-12
        window: list[tuple[float, float, Endpoint]] = []
        for item in usable:
            sc, pr, ep = item
            if pr > lat_lim or sc > load_lim:
                continue
            if ep.price is not None:
                if (input_tokens * ep.price[0] + out_tokens * ep.price[1]) / 1e6 > cost_lim:
                    continue
            elif lead_cost != inf:
                continue  # unknown price against a priced first choice: not "near" it
            window.append(item)
        if len(window) < 2:
            return ranked, None  # nothing else is near the first choice: nothing to decide
        kh, source = affinity
        uniform = hrw.uniform_weights([ep.weight for _, _, ep in window])
        order = hrw.rank(kh, window, _ident, None if uniform else _weight)
        k = len(usable) if limit is None else min(limit, len(usable))
        chosen = {ep.index for _, _, ep in order}
        out = [Candidate(ep, pr, sc, _cost(ep, input_tokens, out_tokens)) for sc, pr, ep in order[:k]]
        for c in ranked:
            if len(out) >= k:
                break
            if c.endpoint.index not in chosen:
                c.note = ""
                out.append(c)
        pin = out[0]
        same = pin.endpoint is lead.endpoint
        pin.note = f"affinity: {source} pin (rendezvous among {len(window)} within slack of " + (
            "the strategy's choice, which it is)" if same else f"{lead.endpoint.id}: {lead.note})"
        )
        return out, source

    def _rank(
        self,
        items: list[tuple[float, float, Endpoint]],
        seed: float,
        input_tokens: int,
        out_tokens: int,
        limit: int | None,
    ) -> list[Candidate]:
        """Order (score, predicted, endpoint) items by the strategy; Candidates for the
        first ``limit``."""
        n = len(items)
        k = n if limit is None else min(limit, n)
        if n == 0:
            return []
        if n == 1:
            sc, pr, ep = items[0]
            return [Candidate(ep, pr, sc, _cost(ep, input_tokens, out_tokens), "only usable endpoint")]
        p = self.policy
        s = p.strategy
        inf = math.inf

        def cost_of(ep: Endpoint) -> float:
            return inf if ep.price is None else input_tokens * ep.price[0] + out_tokens * ep.price[1]

        note = ""
        if s == "ordered":
            items.sort(key=lambda t: t[2].index)
            note = "first in catalog order"
        elif s == "weighted":
            rng = random.Random(seed)
            items.sort(key=lambda t: -math.log(max(rng.random(), 1e-12)) / t[2].weight)
            note = "weighted random pick"
        elif s == "cost":
            items.sort(key=lambda t: (cost_of(t[2]), t[0]))
            note = "cheapest usable endpoint"
        else:
            items.sort(key=_score)
            best = items[0][0]
            if s == "balanced":
                lim = p.slo_ms if p.slo_ms is not None else best * (1.0 + p.slack) + p.slack_ms
                m = 0
                while m < n and items[m][0] <= lim:
                    m += 1
                m = max(m, 1)  # with an SLO nobody meets, the fastest is "near" itself
                near = items[:m]
                near.sort(key=lambda t: (cost_of(t[2]), t[0]))
                items[:m] = near
                window = f"SLO {p.slo_ms:.0f} ms" if p.slo_ms is not None else f"{lim:.0f} ms of the fastest"
                note = f"cheapest within {window}"
                c0 = cost_of(items[0][2])
                top = items[0][0] * (1.0 + p.near_equal)
                g = 1
                while g < m and cost_of(items[g][2]) == c0 and items[g][0] <= top:
                    g += 1
            else:
                note = "lowest predicted TTFT × load"
                top = best * (1.0 + p.near_equal)
                g = 1
                while g < n and items[g][0] <= top:
                    g += 1
            if g >= 2:
                # Power of two choices among the g near-equal leaders: two distinct
                # indices drawn from the seed, the less loaded one goes first.
                i = int(seed * g) % g
                j = (i + 1 + int(seed * 7919.0 % 1.0 * (g - 1))) % g
                pick = i if items[i][0] <= items[j][0] else j
                if pick != 0:
                    items.insert(0, items.pop(pick))
                    note += " (power of two choices among near-equals)"
        out = [Candidate(ep, pr, sc, None if ep.price is None else cost_of(ep) / 1e6) for sc, pr, ep in items[:k]]
        out[0].note = note
        return out


_score = operator.itemgetter(0)


def _ident(item: tuple[float, float, Endpoint]) -> str:
    return item[2].id


def _weight(item: tuple[float, float, Endpoint]) -> float:
    return item[2].weight


def _cost(ep: Endpoint, input_tokens: int, out_tokens: int) -> float | None:
    """Expected USD of a request on an endpoint (None: price unknown)."""
    if ep.price is None:
        return None
    return (input_tokens * ep.price[0] + out_tokens * ep.price[1]) / 1e6
