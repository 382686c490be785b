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

Cost: the executor's plans (``latency`` and ``balanced`` with a ``limit``) come
from a **health index** per (model, constraints, near) and ``states`` tuple
(:class:`_Index`): the kind of every compliant endpoint (usable,
full, ejected, cooling, out) and, for the usable ones, a lower bound of its score
that holds until the row's horizon (``decay_s / HORIZON_PER_DECAY``, staggered),
kept sorted. It is updated from the change log (:mod:`.changes`: every write of a
field the router reads appends the state), from the cooldown and breaker timers it
waits for (``next_event``), and when a row's horizon passes (a heap of expiries).
A plan computes exact scores (the one prediction, :func:`~.usable.predict_ttft_ms`)
only while a bound can still reach the first
``limit`` places, the near-equal group or the balanced window, then orders that
subset with the reference ordering. Predictions are made at ``now`` rounded down to
``decay_s / 256`` (:func:`predict_at`, reference and index alike): within that
quantum a score is a constant, so the index keeps the exact scores it read in a
sorted **front** (complete under a limit) that later plans bisect, re-reading only
the endpoints that changed, and reuses its last walk when nothing did.
Exploration and rechecks draw from maintained lists; exclusions cost what is
excluded. Endpoints with a capacity bucket
(``limits:``) are read on every plan (their room depends on the request's size).
An affinity key walks on to the score that bounds its window around the strategy's
choice. Everything else — ``explain`` (no limit), the ``cost``, ``weighted``
and ``ordered`` strategies, fewer than ``INDEX_FROM`` (32) compliant endpoints
(there one scan is cheaper), states that are not change-tracked, a plan racing
another thread on the same key — takes the reference scan (:meth:`Router._scan`):
one loop over the compliant endpoints that allocates nothing per endpoint, then
``_order_sorted`` (a full stable sort) or, for large limited sets, ``_order_top``
(what can reach the first places). Property tests hold the index and the top-k path
to the reference plan (tests/unit/test_router_index.py, test_router_topk.py);
docs/routing.md ("What a plan costs") has the figures.
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import compress
from typing import NamedTuple

from cachetools import LRUCache

from . import changes, hrw
from .catalog import Catalog, Endpoint
from .context import Constraints
from .errors import RoutingError
from .limits import DEFAULT_OUTPUT_TOKENS, Bucket, estimate_tokens
from .policy import Policy
from .regions import distance_km
from .usable import EndpointView, Unusable, predict_ttft_ms, unusable_now, unusable_reason
from .vocabulary import ExclusionKind


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
        #: the two LRU memos above are read and written under this lock: sync requests
        #: plan on their callers' threads, and an LRU's ``get`` reorders (an eviction by
        #: another thread between its check and its read raised KeyError from plan())
        self._memo_lock = threading.Lock()
        #: from this many usable endpoints on, a limited plan takes the top-k path
        self.top_k_from = TOP_K_FROM
        #: per (static key, near): the states it was built over, the static exclusions and
        #: the hot loop's rows. A plain dict (one lookup per plan, ~50 ns; an LRU's
        #: bookkeeping costs microseconds), emptied when it reaches ROWS_CACHE_SIZE.
        self._rows_cache: dict[_RowsKey, tuple[Sequence[EndpointView], tuple[Exclusion, ...], list[_Row]]] = {}
        #: per key as above: the health index (:class:`_Index`); ``indexed = False``
        #: plans every request with the reference scan (tests compare the two)
        self._index: dict[_RowsKey, _Index] = {}
        self.indexed = True
        #: from this many compliant endpoints on (below it the scan is cheaper)
        self.index_from = INDEX_FROM

    def _compliant(self, model: str, c: Constraints) -> tuple[tuple[Endpoint, ...], tuple[Exclusion, ...]]:
        key = (model, c.residency, c.tags, c.residency_label)
        with self._memo_lock:
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
        with self._memo_lock:
            self._static[key] = res
        return res

    def _rows(
        self, model: str, c: Constraints, states: Sequence[EndpointView]
    ) -> tuple[tuple[Exclusion, ...], list[_Row]]:
        """The static exclusions, and what the hot loop iterates: per compliant endpoint,
        its state and its static numbers (so that a request does not index three lists
        per endpoint). Memoised per key and per ``states`` object when that is a tuple
        (one catalog generation's states, immutable; any other sequence is rebuilt on
        every call)."""
        key = (model, c.residency, c.tags, c.residency_label, c.near)
        hit = self._rows_cache.get(key)
        if hit is not None and hit[0] is states:
            return hit[1], hit[2]
        compliant, static_out = self._compliant(model, c)
        geo = self._geo(c.near)
        rows = [(ep, states[ep.index], geo[ep.index], ep.max_concurrency) for ep in compliant]
        if type(states) is tuple:
            if len(self._rows_cache) >= ROWS_CACHE_SIZE:
                self._rows_cache.clear()
            self._rows_cache[key] = (states, static_out, rows)
        return static_out, rows

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
        with self._memo_lock:
            hit = self._geo_cache.get(near)
        if hit is not None:
            return hit
        d = self.policy.default_ttft_ms
        out = [
            distance_km(near, ep.location) / 100.0 + d * 0.25 if near is not None and ep.location is not None else d
            for ep in self.catalog.endpoints
        ]
        with self._memo_lock:
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
        static_out, rows = self._rows(model, constraints, states)
        excluded = list(static_out)
        window = context_window or self.catalog.models[model].context_window
        if window is not None and input_tokens + (max_tokens or 0) > window:
            raise RoutingError(
                400,
                "context_length_exceeded",
                f"the prompt (~{input_tokens} tokens) plus max_tokens ({max_tokens or 0}) exceeds the context "
                f"window of {model!r} ({window} tokens); shorten the prompt or lower max_tokens",
            )
        need = estimate_tokens(input_tokens, max_tokens)
        # Two independent draws from the same seed decide, before the scan, whether this
        # request explores or rechecks; only then are those lists collected.
        explore = (seed * 104729.0) % 1.0
        recheck = (seed * 7727.0) % 1.0
        steerable = p.strategy in ("latency", "balanced")
        draws = _Draws(steerable and explore < p.explore, steerable and recheck < p.recheck, explore, recheck)
        tq = predict_at(now, p.decay_s)
        scan: _Scan | None = None
        if self.indexed and steerable and limit is not None and type(states) is tuple and len(rows) >= self.index_from:
            reach = None
            if affinity is not None and p.affinity.enabled:
                out_tok = max_tokens if max_tokens is not None else DEFAULT_OUTPUT_TOKENS

                def reach(scores: list[float], preds: list[float], eps: list[Endpoint], n_usable: int) -> float:
                    ranked = self._rank(scores, preds, eps, seed, input_tokens, out_tok, limit, n_usable)
                    return self._affinity_reach(ranked[0]) if ranked else -math.inf

            scan = self._scan_indexed(model, constraints, states, rows, now, tq, need, limit, draws, reach)
        if scan is None:
            scan = self._scan(model, rows, now, tq, need, draws)
        scores, preds, ueps, n_usable, explore_pick, recheck_pick, dropped, full, ejected, cooling, limited = scan
        excluded += dropped
        notes: list[str] = []
        readmitted: list[tuple[Endpoint, EndpointView]] = []
        if full and not n_usable:
            # Everything compliant and healthy is at its concurrency limit: trying one
            # (its own queue or 429 will tell) beats failing outright.
            scores, preds, ueps = [t[0] for t in full], [t[1] for t in full], [t[2] for t in full]
            n_usable = len(full)
            full = []
            notes.append("every usable endpoint is at max_concurrency; trying them anyway")
        for _, _, ep in full:
            st = states[ep.index]
            excluded.append(
                Exclusion(ep, f"at max_concurrency ({st.inflight + st.remote_inflight}/{ep.max_concurrency})", "full")
            )
        n_ok = n_usable + len(ejected) + len(cooling) + len(limited)
        if ejected:
            ejected.sort(key=lambda es: es[1].open_until)
            cap = math.floor(p.breaker.max_ejection_fraction * n_ok)
            if len(ejected) > cap:
                k = len(ejected) - cap
                readmitted, ejected = ejected[:k], ejected[k:]
                if n_usable or cooling:
                    notes.append(
                        f"{k} ejected endpoint(s) re-admitted: at most "
                        f"{p.breaker.max_ejection_fraction:.0%} may be ejected"
                    )
        panic = False
        if not n_usable and not readmitted and ejected:
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
        if not n_usable and not readmitted and (cooling or limited):
            # Nothing can take it now: the earliest time one can (the executor waits
            # for it within the request's deadline, or says why it cannot).
            wait_until = min([st.quota.until for _, st in cooling] + [b.ready_at(now, need) for _, b in limited])

        out_tok = max_tokens if max_tokens is not None else DEFAULT_OUTPUT_TOKENS
        cands = self._rank(scores, preds, ueps, seed, input_tokens, out_tok, limit, n_usable)
        pinned = None
        if affinity is not None and n_usable > 1 and p.affinity.enabled and p.strategy != "ordered":
            cands, pinned = self._affine(cands, scores, preds, ueps, affinity, input_tokens, out_tok, limit)
        if pinned is None and explore_pick is not None and n_usable > 1:
            # Exploration: a small share of requests goes to an endpoint we know
            # nothing recent about, so that a recovered or never-tried region can
            # show it is fast (the prior alone would keep it out for ever).
            sc, pr, ep = explore_pick
            if cands and cands[0].endpoint is not ep:
                cands = [c for c in cands if c.endpoint is not ep]
                cands.insert(
                    0, Candidate(ep, pr, sc, _cost(ep, input_tokens, out_tok), "exploration: no recent TTFT sample")
                )
        # (an affinity pin is not moved for a recheck: its own traffic samples it)
        if pinned is None and recheck_pick is not None and n_usable > 1:
            # Recheck: one request to an endpoint whose estimate jumped on a single
            # sample, so that the next sample can tell an outlier from a slowdown.
            sc, pr, ep = recheck_pick
            if cands and cands[0].endpoint is not ep:
                cands = [c for c in cands if c.endpoint is not ep]
                cands.insert(
                    0,
                    Candidate(
                        ep, pr, sc, _cost(ep, input_tokens, out_tok), "recheck: its estimate jumped on one sample"
                    ),
                )
        geo = self._geo(constraints.near) if readmitted else []
        base_rtt = p.default_ttft_ms * 0.25
        for ep, st in readmitted:
            rtt = st.rtt_ms
            base = geo[ep.index] if rtt is None else rtt + base_rtt
            pred = predict_ttft_ms(st, base, tq, p.decay_s)
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

    def _scan(
        self,
        model: str,
        rows: list[_Row],
        now: float,
        tq: float,
        need: int,
        draws: _Draws,
    ) -> _Scan:
        """The reference scan: every compliant endpoint's health, read now (predictions
        at ``tq``, ``now`` rounded down to the prediction quantum: see predict_at)."""
        p = self.policy
        base_rtt = p.default_ttft_ms * 0.25
        tau = p.decay_s
        # One pass: health filter and prediction, each asked of its one definition in
        # usable.py (unusable_now, predict_ttft_ms: two calls per endpoint, measured in
        # B1), and no object per endpoint (floats are not tracked by the garbage
        # collector; a tuple per endpoint per request was a gen-2 collection every few
        # hundred plans at 10,000 endpoints). Usable endpoints go into three parallel
        # lists; the other lists hold positions into them.
        scores: list[float] = []
        preds: list[float] = []
        ueps: list[Endpoint] = []
        add_score, add_pred, add_ep = scores.append, preds.append, ueps.append
        unexplored: list[int] = []  # no TTFT sample, or a stale one
        rechecks: list[int] = []  # estimate jumped on one sample
        stale_after = 3.0 * tau
        dropped: list[Exclusion] = []
        full: list[tuple[float, float, Endpoint]] = []
        ejected: list[tuple[Endpoint, EndpointView]] = []
        cooling: list[tuple[Endpoint, EndpointView]] = []
        limited: list[tuple[Endpoint, Bucket]] = []
        want_explore, want_recheck, explore, recheck = draws
        collect = want_explore or want_recheck
        for ep, st, geo_ms, cap in rows:
            why = unusable_now(st, model, now)  # the one "usable now" rule (health.py)
            if why is not None:
                if why is ExclusionKind.COOLING:
                    cooling.append((ep, st))
                elif why is ExclusionKind.EJECTED:
                    ejected.append((ep, st))  # the ejection cap or panic may re-admit it
                else:  # drained, credential, missing model: never re-admitted
                    dropped.append(Exclusion(ep, unusable_reason(st, model, why, now), why))
                continue
            b = st.bucket
            if b is not None and not b.fits(now, need):
                limited.append((ep, b))
                continue
            rtt = st.rtt_ms
            base = geo_ms if rtt is None else rtt + base_rtt
            pred = predict_ttft_ms(st, base, tq, tau)  # the one prediction (usable.py)
            busy = st.inflight + st.remote_inflight
            if st.ttft_ms is None:
                if cap is not None and busy >= cap:
                    full.append((pred * (1.0 + busy + st.queue_waiting), pred, ep))
                    continue
                if want_explore:
                    unexplored.append(len(scores))
            else:
                at = st.ttft_at
                if cap is not None and busy >= cap:
                    full.append((pred * (1.0 + busy + st.queue_waiting), pred, ep))
                    continue
                if collect:  # only when this seed's draws can explore or recheck at all
                    if now - at > stale_after:
                        if want_explore:
                            unexplored.append(len(scores))
                    elif want_recheck and busy == 0 and st.ttft_before_jump is not None:
                        rechecks.append(len(scores))
            add_score(pred * (1.0 + busy + st.queue_waiting))
            add_pred(pred)
            add_ep(ep)
        j = -1
        if unexplored:
            j = unexplored[int(explore / p.explore * len(unexplored)) % len(unexplored)]
        explore_pick = (scores[j], preds[j], ueps[j]) if j >= 0 else None
        j = -1
        if rechecks:
            j = rechecks[int(recheck / p.recheck * len(rechecks)) % len(rechecks)]
        recheck_pick = (scores[j], preds[j], ueps[j]) if j >= 0 else None
        return scores, preds, ueps, len(scores), explore_pick, recheck_pick, dropped, full, ejected, cooling, limited

    def _scan_indexed(
        self,
        model: str,
        c: Constraints,
        states: Sequence[EndpointView],
        rows: list[_Row],
        now: float,
        tq: float,
        need: int,
        limit: int,
        draws: _Draws,
        reach: Callable[[list[float], list[float], list[Endpoint], int], float] | None,
    ) -> _Scan | None:
        """What :meth:`_scan` returns, from the key's health index: the usable endpoints
        that can reach the first ``limit`` places (a subset, in scan order) and the
        exact lists of the others. None when the index cannot serve (another thread
        holds it, or the states are not change-tracked): the caller scans."""
        key = (model, c.residency, c.tags, c.residency_label, c.near)
        ix = self._index.get(key)
        if ix is None or ix.states is not states or ix.policy is not self.policy:
            if not all(getattr(st, "tracked", False) for _, st, _, _ in rows):
                return None
            if len(self._index) >= ROWS_CACHE_SIZE:
                self._index.clear()
            ix = self._index[key] = _Index(model, states, rows, self.policy)
        if not ix.lock.acquire(blocking=False):
            return None
        try:
            ix.sync(now, tq)
            return ix.scan(now, tq, need, limit, draws, reach)
        finally:
            ix.lock.release()

    def _affine(
        self,
        ranked: list[Candidate],
        scores: list[float],
        preds: list[float],
        eps: list[Endpoint],
        affinity: tuple[int, str],
        input_tokens: int,
        out_tokens: int,
        limit: int | None,
    ) -> tuple[list[Candidate], str | None]:
        """Put the key's rendezvous pin first, among the usable endpoints near the
        strategy's first choice; the rest of the window follows in rendezvous order
        (where the key goes if its pin leaves), then the other ranked candidates.
        ``scores``/``preds``/``eps``: the usable endpoints, in scan order."""
        a = self.policy.affinity
        lead = ranked[0]
        inf = math.inf
        lead_cost = inf if lead.cost_usd is None else lead.cost_usd
        lat_lim, load_lim = self._affinity_limits(lead)
        cost_lim = lead_cost * (1.0 + a.cost_slack) + 1e-12
        window: list[tuple[float, float, Endpoint]] = []
        for item in zip(scores, preds, eps, strict=True):
            sc, pr, ep = item
            if pr > lat_lim or (pr > 0 and sc / pr > load_lim):
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
        k = len(eps) if limit is None else min(limit, len(eps))
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

    def _affinity_limits(self, lead: Candidate) -> tuple[float, float]:
        """The predicted TTFT and the load factor up to which an endpoint is in the
        affinity window around the strategy's first choice ``lead``."""
        a = self.policy.affinity
        # Load is compared apart from latency (score = TTFT x load factor): a pin whose
        # TTFT estimate peaked on one cache miss is not "overloaded".
        load_lim = (lead.score / lead.predicted_ms if lead.predicted_ms > 0 else 1.0) * a.overload + 1.0
        return lead.predicted_ms * (1.0 + a.slack) + a.slack_ms, load_lim

    def _affinity_reach(self, lead: Candidate) -> float:
        """A score above which no endpoint is in the affinity window (score = TTFT x
        load factor; a hair over, against rounding): how far the index walks."""
        lat_lim, load_lim = self._affinity_limits(lead)
        return lat_lim * max(load_lim, 1.0) * (1.0 + 1e-9)

    def _rank(
        self,
        scores: list[float],
        preds: list[float],
        eps: list[Endpoint],
        seed: float,
        input_tokens: int,
        out_tokens: int,
        limit: int | None,
        n_usable: int,
    ) -> list[Candidate]:
        """Order the usable endpoints (parallel lists, in scan order) by the strategy;
        Candidates for the first ``limit``.

        Small sets, and ``limit=None`` (explain), get :meth:`_order_sorted`, the
        reference: a stable sort of all of them. Large sets with a limit (the
        executor's case) get :meth:`_order_top`, which orders only the endpoints that
        can reach the first ``limit`` places or decide the power of two choices; a
        property test holds it to the same plan as the reference."""
        n = len(scores)
        if n == 0:
            return []
        if n_usable == 1:  # (the index passes a subset of the usable endpoints)
            ep = eps[0]
            return [Candidate(ep, preds[0], scores[0], _cost(ep, input_tokens, out_tokens), "only usable endpoint")]
        k = n if limit is None else min(limit, n)
        if limit is None or n < self.top_k_from:
            order, note = self._order_sorted(scores, eps, seed, input_tokens, out_tokens)
        else:
            order, note = self._order_top(scores, eps, seed, input_tokens, out_tokens, k)
        out = []
        for i in order[:k]:
            ep = eps[i]
            price = ep.price
            cost = None if price is None else (input_tokens * price[0] + out_tokens * price[1]) / 1e6
            out.append(Candidate(ep, preds[i], scores[i], cost))
        out[0].note = note
        return out

    def _order_sorted(
        self, scores: list[float], eps: list[Endpoint], seed: float, input_tokens: int, out_tokens: int
    ) -> tuple[list[int], str]:
        """Positions of every usable endpoint in plan order, by full stable sorts."""
        p = self.policy
        s = p.strategy
        n = len(scores)
        order = list(range(n))
        if s == "ordered":
            order.sort(key=lambda i: eps[i].index)
            return order, "first in catalog order"
        if s == "weighted":
            keys = _weighted_keys(eps, seed)
            order.sort(key=keys.__getitem__)
            return order, "weighted random pick"
        if s == "cost":
            costs = _costs(eps, input_tokens, out_tokens)
            order.sort(key=lambda i: (costs[i], scores[i]))
            return order, "cheapest usable endpoint"
        order.sort(key=scores.__getitem__)
        best = scores[order[0]]
        if s == "balanced":
            lim = p.slo_ms if p.slo_ms is not None else best * (1.0 + p.slack) + p.slack_ms
            m = 0
            while m < n and scores[order[m]] <= lim:
                m += 1
            m = max(m, 1)  # with an SLO nobody meets, the fastest is "near" itself
            near = order[:m]
            # the window's only (_cost_key, inlined: a call per endpoint cost more than it)
            wcost = {
                i: math.inf if (pr := eps[i].price) is None else input_tokens * pr[0] + out_tokens * pr[1] for i in near
            }
            near.sort(key=lambda i: (wcost[i], scores[i]))
            order[:m] = near
            note = self._balanced_note(lim)
            c0 = wcost[near[0]]
            top = scores[near[0]] * (1.0 + p.near_equal)
            g = 1
            while g < m and wcost[near[g]] == c0 and scores[near[g]] <= top:
                g += 1
        else:
            note = "lowest predicted TTFT × load"
            top = best * (1.0 + p.near_equal)
            g = 1
            while g < n and scores[order[g]] <= top:
                g += 1
        return order, note + _two_choices(order, g, scores, seed)

    def _order_top(
        self, scores: list[float], eps: list[Endpoint], seed: float, input_tokens: int, out_tokens: int, k: int
    ) -> tuple[list[int], str]:
        """The first ``k`` positions of :meth:`_order_sorted` (at least), without sorting
        everything: selections by threshold (C-level ``compress``) and ``heapq``, both
        stable, so ties keep scan order as the full stable sort does."""
        p = self.policy
        s = p.strategy
        n = len(scores)
        if s == "ordered":
            return heapq.nsmallest(k, range(n), key=lambda i: eps[i].index), "first in catalog order"
        if s == "weighted":
            keys = _weighted_keys(eps, seed)  # every draw, in scan order: the same keys as the full sort
            return heapq.nsmallest(k, range(n), key=keys.__getitem__), "weighted random pick"
        if s == "cost":
            costs = _costs(eps, input_tokens, out_tokens)
            return heapq.nsmallest(k, range(n), key=lambda i: (costs[i], scores[i])), "cheapest usable endpoint"
        best = min(scores)
        if s == "balanced":
            lim = p.slo_ms if p.slo_ms is not None else best * (1.0 + p.slack) + p.slack_ms
            window = list(compress(range(n), map(lim.__ge__, scores)))  # score <= lim, scan order
            if not window:
                window = [scores.index(best)]  # an SLO nobody meets: the fastest (first of equals)
            m = len(window)
            wcost = [_cost_key(eps[i], input_tokens, out_tokens) for i in window]
            c0 = min(wcost)
            s0 = min(scores[i] for i, c in zip(window, wcost, strict=True) if c == c0)
            top = s0 * (1.0 + p.near_equal)
            g = sum(1 for i, c in zip(window, wcost, strict=True) if c == c0 and scores[i] <= top)
            wkey = dict(zip(window, wcost, strict=True))
            order = heapq.nsmallest(max(k, g), window, key=lambda i: (wkey[i], scores[i]))
            if m < k:
                inside = set(window)
                rest = [i for i in range(n) if i not in inside]
                order += heapq.nsmallest(k - m, rest, key=scores.__getitem__)
            note = self._balanced_note(lim)
        else:
            top = best * (1.0 + p.near_equal)
            kth = heapq.nsmallest(k, scores)[-1]
            thr = kth if kth > top else top
            order = list(compress(range(n), map(thr.__ge__, scores)))
            order.sort(key=scores.__getitem__)
            g = 1
            while g < len(order) and scores[order[g]] <= top:
                g += 1
            note = "lowest predicted TTFT × load"
        return order, note + _two_choices(order, g, scores, seed)

    def _balanced_note(self, lim: float) -> str:
        slo = self.policy.slo_ms
        return f"cheapest within {f'SLO {slo:.0f} ms' if slo is not None else f'{lim:.0f} ms of the fastest'}"


ROWS_CACHE_SIZE = 1024
_RowsKey = tuple[str, frozenset[str] | None, tuple[tuple[str, str], ...], str, tuple[float, float] | None]
#: (endpoint, its health, its geographic prior TTFT for the request's ``near``, max_concurrency)
_Row = tuple[Endpoint, EndpointView, float, int | None]


class _Draws(NamedTuple):
    """This request's two seeded draws, and whether each can explore / recheck."""

    want_explore: bool
    want_recheck: bool
    explore: float
    recheck: float


#: The index's last walk: (version, prediction time, k, rows seen with their (score,
#: prediction), then scores, predictions and endpoints in scan order, the threshold).
_Walk = tuple[int, float, int, dict[int, tuple[float, float]], list[float], list[float], list[Endpoint], float]

#: What a scan hands to the rest of ``plan``: the usable endpoints' scores,
#: predictions and endpoints (parallel, scan order; the index gives the subset that
#: can matter), how many are usable, the exploration and recheck picks (score,
#: prediction, endpoint), and the excluded ones by kind.
_Scan = tuple[
    list[float],
    list[float],
    list[Endpoint],
    int,
    tuple[float, float, Endpoint] | None,
    tuple[float, float, Endpoint] | None,
    list[Exclusion],
    list[tuple[float, float, Endpoint]],
    list[tuple[Endpoint, EndpointView]],
    list[tuple[Endpoint, EndpointView]],
    list[tuple[Endpoint, Bucket]],
]

#: From this many compliant endpoints on, the executor's plans use the health index:
#: below it one scan of every endpoint costs less than the index's fixed work (B1: at
#: 10 endpoints the index was 0.55-0.7x the scan's speed, at 23 even, at 100 2.3x).
INDEX_FROM = 32
#: A usable row's score bound holds for ``decay_s / HORIZON_PER_DECAY`` (to twice
#: that, staggered); then the index reads the row again. Shorter: tighter bounds (a
#: shorter walk) for more re-reads (n x HORIZON_PER_DECAY / decay_s per second).
HORIZON_PER_DECAY = 4

#: Predictions are made at ``now`` rounded down to ``decay_s / PREDICT_QUANTA`` (a
#: power of two, so exact): see :func:`predict_at`. The first plan of a quantum reads
#: the front again (a ``balanced`` window holding most endpoints: all of them), so
#: longer quanta make that rarer; 1024 (7.8 ms) made it ~1 % of B1's plans at 10,000
#: endpoints, and every plan once a plan took longer than a quantum.
PREDICT_QUANTA = 256


def predict_at(now: float, decay_s: float) -> float:
    """The time a plan at ``now`` predicts TTFTs at: ``now`` rounded down to a power
    of two no larger than ``decay_s / PREDICT_QUANTA`` (39 ms with the default 10 s).

    Within one such quantum an endpoint's prediction, and so its score, is a constant:
    the health index reuses the exact scores it computed (and its last walk) until a
    row changes or the quantum moves on, and the reference scan predicts at the same
    time, so both plan alike. The price is bounded: over one quantum a prediction
    moves by less than 1/256 of its gap to its baseline (``1 - exp(-q / decay_s)``).
    Power-of-two rounding of a float is exact, so the time is the same everywhere."""
    q = _QUANTA.get(decay_s)
    if q is None:
        q = _QUANTA[decay_s] = math.ldexp(1.0, math.frexp(decay_s / PREDICT_QUANTA)[1] - 1)
    return math.floor(now / q) * q


#: decay_s -> its prediction quantum (a few policies in a process's life)
_QUANTA: dict[float, float] = {}


#: From this many usable endpoints on, a limited plan orders only what can reach its
#: first places (below it, one sort of everything is cheaper than the selections).
TOP_K_FROM = 500


# Row kinds in the index.
_USABLE, _FULL, _EJECTED, _COOLING, _OUT, _VOLATILE, _LIMITED = range(7)


class _Index:
    """The health index of one (model, constraints, near) key over one ``states`` tuple.

    Per compliant endpoint (row ``j``, scan order) it keeps what the reference scan
    would find: its kind (usable, full, ejected, cooling, out for good), and for the
    usable ones a **lower bound** of their score until a horizon ``h`` (the prediction
    moves monotonically from its value at classification toward its baseline, by at
    most ``exp(-h / decay_s)`` of the gap when above it), in a sorted list. A row is
    classified again only when its state changed (the change log, :mod:`.changes`),
    when a cooldown or breaker timer it waits for runs out (``next_event``), or when
    its horizon passes (``expiry``). Endpoints with a
    capacity bucket (``limits:``) depend on the request's size and on time: they are
    "volatile" and read on every plan, as the reference does.

    A plan walks the bounds in order and computes exact scores (the one prediction)
    only while a bound can still be at or under the threshold that decides the first
    ``limit`` places, the near-equal group and the balanced window; the subset then
    goes through the reference ordering. Exact, not approximate: a property test holds
    it to the reference scan under random health changes between plans.
    """

    __slots__ = (
        "ats",
        "dom_of",
        "domains",
        "due",
        "epoch",
        "eps",
        "excluded",
        "expiry",
        "flim",
        "fresh",
        "fresh_at",
        "front",
        "ftq",
        "hf",
        "hz",
        "infront",
        "jumpers",
        "kinds",
        "lbs",
        "lock",
        "memo",
        "model",
        "next_event",
        "now",
        "order",
        "policy",
        "pos",
        "rows",
        "sct",
        "scv",
        "stale",
        "stale_in",
        "states",
        "tq",
        "until",
        "version",
        "volatile",
        "waiting",
        "where",
        "whys",
    )

    def __init__(self, model: str, states: Sequence[EndpointView], rows: list[_Row], policy: Policy) -> None:
        self.model = model
        self.states = states
        self.rows = rows
        self.eps = [ep for ep, _, _, _ in rows]
        self.policy = policy
        #: per row, its horizon (staggered by a hash of the row) and exp(-horizon/decay_s)
        tau = policy.decay_s
        self.hz = [tau / HORIZON_PER_DECAY * (1.0 + ((j * 0x9E3779B1) & 0xFFFF) / 65536.0) for j in range(len(rows))]
        self.hf = [math.exp(-h / tau) for h in self.hz]
        self.lock = threading.Lock()
        self.where: dict[object, int] = {st: j for j, (_, st, _, _) in enumerate(rows)}
        #: the rows of each quota domain (a cooldown logs the domain: its rows change)
        self.domains: dict[object, list[int]] = {}
        self.dom_of: list[object] = [st.quota for _, st, _, _ in rows]
        for j, dom in enumerate(self.dom_of):
            self.domains.setdefault(dom, []).append(j)
        self.now = -math.inf
        self.tq = -math.inf
        #: grows whenever a row is classified again (what the walk's memo is valid for)
        self.version = 0
        #: per row, its exact (score, prediction) at the prediction time ``sct[j]``
        #: (nan: none); a row classified again drops it
        self.sct: list[float] = []
        self.scv: list[tuple[float, float]] = []
        #: the last plan's walk: (version, tq, k, seen, scores, preds, endpoints, the
        #: threshold it read the front to)
        self.memo: _Walk | None = None
        #: the front: (exact score at ``ftq``, row) of the usable rows read this
        #: quantum, sorted, holding every row whose bound is under ``flim``
        self.front: list[tuple[float, int]] = []
        self.flim = -math.inf
        self.ftq = -math.inf
        self.infront = bytearray()
        self.epoch = -1
        self.pos = 0
        self.kinds: list[int] = []
        self.whys: dict[int, Unusable] = {}
        self.lbs: list[tuple[float, int] | None] = []
        self.order: list[tuple[float, int]] = []
        self.ats: list[float] = []
        #: usable rows without a recent TTFT sample (exploration's list), in row order,
        #: kept as time passes: ``fresh`` is a heap of (sample time, row) of the usable
        #: rows with a recent one (``fresh_at``: the time of a row's live heap entry);
        #: ``stale_in`` marks the members of ``stale``
        self.stale: list[int] = []
        self.stale_in = bytearray()
        self.fresh: list[tuple[float, int]] = []
        self.fresh_at: list[float] = []
        self.jumpers: set[int] = set()
        self.volatile: set[int] = set()
        self.waiting: set[int] = set()  # cooling or ejected: a timer can make them usable
        self.excluded: set[int] = set()  # full, ejected, cooling or out (not volatile)
        #: per usable row, until when its bound holds; a heap of (until, row) to expire
        self.until: list[float] = []
        self.expiry: list[tuple[float, int]] = []
        #: per row, the time of its live entry in ``expiry`` (inf: none)
        self.due: list[float] = []
        self.next_event = math.inf

    def rebuild(self, now: float) -> None:
        n = len(self.rows)
        self.epoch = changes.EPOCH[0]
        self.pos = len(changes.ENTRIES)
        self.kinds = [_OUT] * n
        self.front = []
        self.flim = -math.inf
        self.ftq = self.tq
        self.infront = bytearray(n)
        self.version += 1
        self.sct = [math.nan] * n
        self.scv = [(math.nan, math.nan)] * n
        self.memo = None
        self.whys = {}
        self.lbs = [None] * n
        self.order = []
        self.ats = [math.inf] * n
        self.stale = []
        self.stale_in = bytearray(n)
        self.fresh = []
        self.fresh_at = [math.inf] * n
        self.jumpers = set()
        self.volatile = set()
        self.waiting = set()
        self.excluded = set()
        self.next_event = math.inf
        self.until = [math.inf] * n
        self.expiry = []
        self.due = [math.inf] * n
        order = self.order
        for j in range(n):
            self.classify(j, now, False)
            lb = self.lbs[j]
            if lb is not None:
                order.append(lb)
        order.sort()

    def sync(self, now: float, tq: float) -> None:
        """Bring the rows up to date with the change log, the timers and the clock
        (``tq``: the prediction time, see :func:`predict_at`)."""
        self.tq = tq
        if tq != self.ftq:
            self.reset_front(tq)
        if now < self.now or self.epoch != changes.EPOCH[0] or len(changes.ENTRIES) < self.pos:
            self.now = now
            self.rebuild(now)
            return
        self.now = now
        expiry = self.expiry
        until = self.until
        due = self.due
        while expiry and expiry[0][0] < now:
            # a usable row's bound holds until its horizon: read it again (one live
            # entry per row, at its earliest horizon; one that moved on goes back in)
            t, row = heapq.heappop(expiry)
            if due[row] == t:
                due[row] = math.inf
                u = until[row]
                if u < now:
                    self.classify(row, now, True)
                elif u != math.inf:
                    due[row] = u
                    heapq.heappush(expiry, (u, row))
        new = changes.ENTRIES[self.pos :]
        self.pos += len(new)
        if self.epoch != changes.EPOCH[0]:
            self.rebuild(now)
            return
        where = self.where
        for obj in set(new) if len(new) > 1 else new:
            j = where.get(obj)
            if j is not None:
                self.classify(j, now, True)
            else:
                for j in self.domains.get(obj, ()):
                    self.classify(j, now, True)
        if now >= self.next_event:
            self.next_event = math.inf
            for j in list(self.waiting):
                self.classify(j, now, True)

    def classify(self, j: int, now: float, update: bool) -> None:
        """Row ``j`` as the reference scan sees it now (buckets aside: volatile)."""
        if update:
            old = self.lbs[j]
            if old is not None:
                order = self.order
                del order[bisect.bisect_left(order, old)]
                self.lbs[j] = None
            self.jumpers.discard(j)
            self.volatile.discard(j)
            self.waiting.discard(j)
            self.excluded.discard(j)
            self.whys.pop(j, None)
            self.version += 1
            if self.infront[j]:  # (its entry holds the score cached for this quantum)
                front = self.front
                del front[bisect.bisect_left(front, (self.scv[j][0], j))]
                self.infront[j] = 0
            self.sct[j] = math.nan
            self.ats[j] = math.inf
            if self.stale_in[j]:
                stale = self.stale
                del stale[bisect.bisect_left(stale, j)]
                self.stale_in[j] = 0
            self.until[j] = math.inf
        _, st, geo_ms, cap = self.rows[j]
        dom = st.quota
        if dom is not self.dom_of[j]:  # moved to another quota domain
            self.domains[self.dom_of[j]].remove(j)
            self.domains.setdefault(dom, []).append(j)
            self.dom_of[j] = dom
        if st.bucket is not None:
            self.kinds[j] = _VOLATILE
            self.volatile.add(j)
            return
        why = unusable_now(st, self.model, now)
        if why is not None:
            self.excluded.add(j)
            if why is ExclusionKind.COOLING or why is ExclusionKind.EJECTED:
                self.kinds[j] = _COOLING if why is ExclusionKind.COOLING else _EJECTED
                self.waiting.add(j)
                until = st.quota.until if why is ExclusionKind.COOLING else st.open_until
                if until < self.next_event:
                    self.next_event = until
            else:
                self.kinds[j] = _OUT
                self.whys[j] = why
            return
        busy = st.inflight + st.remote_inflight
        if cap is not None and busy >= cap:
            self.kinds[j] = _FULL
            self.excluded.add(j)
            return
        self.kinds[j] = _USABLE
        p = self.policy
        rtt = st.rtt_ms
        base = geo_ms if rtt is None else rtt + p.default_ttft_ms * 0.25
        tau = p.decay_s
        tq = self.tq
        pred = predict_ttft_ms(st, base, tq, tau)
        # The score's floor until the row's horizon (a hair under, against rounding):
        # the prediction moves monotonically toward the baseline, by at most the
        # factor exp(-horizon / decay_s) of its gap to it when above it. Horizons are
        # staggered per row (1-2 x decay_s / HORIZON_PER_DECAY) so that rows read
        # together (a rebuild) do not all expire together.
        horizon = self.hz[j]
        floor = pred if pred <= base else base + (pred - base) * self.hf[j]
        load = 1.0 + busy + st.queue_waiting
        lb = (floor * load * (1.0 - 1e-9), j)
        # (its exact score for this quantum, as exact() computes it: kept, not redone)
        self.sct[j] = tq
        self.scv[j] = got = (pred * load, pred)
        self.lbs[j] = lb
        self.until[j] = t = tq + horizon  # (plans until then predict at tq + horizon at most)
        if t < self.due[j]:
            self.due[j] = t
            heapq.heappush(self.expiry, (t, j))
        if update:
            bisect.insort(self.order, lb)
            if lb[0] < self.flim:  # the front holds every row under flim
                bisect.insort(self.front, (got[0], j))
                self.infront[j] = 1
        if st.ttft_ms is not None:
            self.ats[j] = at = st.ttft_at
            if busy == 0 and st.ttft_before_jump is not None:
                self.jumpers.add(j)
            if now - at > 3.0 * tau:
                self.add_stale(j, update)
            elif at < self.fresh_at[j]:  # (else its entry, as early or earlier, is there)
                self.fresh_at[j] = at
                heapq.heappush(self.fresh, (at, j))
        else:
            self.ats[j] = -math.inf
            self.add_stale(j, update)

    def add_stale(self, j: int, update: bool) -> None:
        if update:
            bisect.insort(self.stale, j)
        else:  # (a rebuild classifies the rows in order)
            self.stale.append(j)
        self.stale_in[j] = 1

    def explorable(self, now: float, stale_after: float) -> list[int]:
        """The usable rows without a sample newer than ``stale_after`` s, in row order:
        what the reference scan finds, kept up to date as samples age (each row moves
        from ``fresh`` once, not every plan)."""
        fresh = self.fresh
        ats = self.ats
        fresh_at = self.fresh_at
        kinds = self.kinds
        while fresh and now - fresh[0][0] > stale_after:
            at, j = heapq.heappop(fresh)
            if fresh_at[j] == at:  # the row's live entry (one per row: no heap growth per sample)
                fresh_at[j] = math.inf
                if kinds[j] == _USABLE and not self.stale_in[j]:
                    a = ats[j]  # (a newer sample since: the row goes back, at its time)
                    if now - a > stale_after:
                        self.add_stale(j, True)
                    else:
                        fresh_at[j] = a
                        heapq.heappush(fresh, (a, j))
        return self.stale

    def exact(self, j: int, tq: float) -> tuple[float, float]:
        """(score, predicted TTFT) of row ``j`` at the prediction time ``tq``, computed
        as the reference scan does; kept until the row changes or ``tq`` moves on."""
        if self.sct[j] == tq:
            return self.scv[j]
        _, st, geo_ms, _ = self.rows[j]
        p = self.policy
        rtt = st.rtt_ms
        base = geo_ms if rtt is None else rtt + p.default_ttft_ms * 0.25
        pred = predict_ttft_ms(st, base, tq, p.decay_s)
        busy = st.inflight + st.remote_inflight
        self.sct[j] = tq
        self.scv[j] = got = (pred * (1.0 + busy + st.queue_waiting), pred)
        return got

    def scan(
        self,
        now: float,
        tq: float,
        need: int,
        limit: int,
        draws: _Draws,
        reach: Callable[[list[float], list[float], list[Endpoint], int], float] | None = None,
    ) -> _Scan:
        """``reach``: given the subset (and the number usable), a score up to which
        endpoints matter as well (affinity's window around the strategy's choice)."""
        want_explore, want_recheck, explore, recheck = draws
        p = self.policy
        rows = self.rows
        kinds = self.kinds
        stale_after = 3.0 * p.decay_s
        # volatile rows (capacity buckets): read now, like the reference scan
        vkinds: dict[int, int] = {}
        seen: dict[int, tuple[float, float]] = {}
        vstale: list[int] = []
        vjump: list[int] = []
        for j in self.volatile:
            ep, st, _, cap = rows[j]
            why = unusable_now(st, self.model, now)
            if why is not None:
                if why is ExclusionKind.COOLING:
                    vkinds[j] = _COOLING
                elif why is ExclusionKind.EJECTED:
                    vkinds[j] = _EJECTED
                else:
                    vkinds[j] = _OUT
                    self.whys[j] = why
                continue
            b = st.bucket
            if b is not None and not b.fits(now, need):
                vkinds[j] = _LIMITED
                continue
            busy = st.inflight + st.remote_inflight
            if cap is not None and busy >= cap:
                vkinds[j] = _FULL
                continue
            vkinds[j] = _USABLE
            seen[j] = self.exact(j, tq)
            if st.ttft_ms is None or now - st.ttft_at > stale_after:
                vstale.append(j)
            elif busy == 0 and st.ttft_before_jump is not None:
                vjump.append(j)
        order = self.order
        n_usable = len(order) + len(seen)
        # The walk: exact scores in bound order while a bound can still be at or under
        # the threshold (the k-th score, the near-equal group's and the balanced
        # window's limit; each only falls as more is seen, so a stale one is safe).
        k = max(1, min(limit, n_usable))
        no = len(order)
        exact = self.exact
        sct, scv = self.sct, self.scv
        slope = 1.0 + (p.slack if p.strategy == "balanced" else p.near_equal)
        shift = p.slack_ms if p.strategy == "balanced" else 0.0
        slo = p.slo_ms if p.strategy == "balanced" else None
        least = min(max(k, 2), no)  # two at least: "only usable endpoint" is a different note
        if not seen:
            # No volatile row is usable: the plan reads the front (exact scores in
            # order, complete below ``flim``), grown in bound order only as far as
            # what decides the plan needs; the same walk as below, kept for the quantum.
            memo = self.memo
            if memo is not None and memo[0] == self.version and memo[1] == tq and memo[2] == k:
                seen, scores, preds, ueps, thr = memo[3], memo[4], memo[5], memo[6], memo[7]
            else:
                thr = self.grow(k, least, slope, shift, slo) if no else -math.inf
                cut = max(bisect.bisect_right(self.front, (thr, math.inf)), least)
                scores, preds, ueps = self.prefix(cut)
                self.memo = (self.version, tq, k, seen, scores, preds, ueps, thr)
            if reach is not None and no:
                far = reach(scores, preds, ueps, n_usable)
                if far > thr:
                    self.grow_to(far)
                    cut = bisect.bisect_right(self.front, (far, math.inf))
                    if cut > len(scores):
                        scores, preds, ueps = self.prefix(cut)
        else:
            # the k smallest scores seen (negated: a max-heap) and the best one
            top = [-sc for sc, _ in seen.values()]
            heapq.heapify(top)
            while len(top) > k:
                heapq.heappop(top)
            best = -max(top) if top else math.inf
            i = 0
            while i < no:
                if i >= least:
                    # the score at or under which a row can still matter: the k-th place,
                    # the near-equal group's or the balanced window's limit (each only
                    # falls as more is seen, so the current one is safe)
                    kth = -top[0] if len(top) >= k else math.inf
                    near = slo if slo is not None else best * slope + shift
                    if order[i][0] > (kth if kth > near else near):
                        break
                j = order[i][1]
                seen[j] = got = scv[j] if sct[j] == tq else exact(j, tq)
                sc = got[0]
                if len(top) < k:
                    heapq.heappush(top, -sc)
                elif sc < -top[0]:
                    heapq.heapreplace(top, -sc)
                if sc < best:
                    best = sc
                i += 1
            scores, preds, ueps = self.subset(seen)
            if reach is not None and i < no:
                far = reach(scores, preds, ueps, n_usable)
                if order[i][0] <= far:
                    while i < no and order[i][0] <= far:
                        j = order[i][1]
                        seen[j] = exact(j, tq)
                        i += 1
                    scores, preds, ueps = self.subset(seen)

        def pick(cands: list[int], draw: float, share: float) -> tuple[float, float, Endpoint] | None:
            if not cands:
                return None
            j = cands[int(draw / share * len(cands)) % len(cands)]
            sc, pr = seen[j] if j in seen else self.exact(j, tq)
            return sc, pr, rows[j][0]

        explore_pick = recheck_pick = None
        if want_explore:
            stale = self.explorable(now, stale_after)
            if vstale:
                stale = sorted(stale + vstale)
            explore_pick = pick(stale, explore, p.explore)
        if want_recheck:
            ats = self.ats
            jumps = sorted([j for j in self.jumpers if not now - ats[j] > stale_after] + vjump)
            recheck_pick = pick(jumps, recheck, p.recheck)

        others = (
            sorted(self.excluded.union([j for j, kind in vkinds.items() if kind != _USABLE]))
            if self.excluded or vkinds
            else []
        )
        dropped: list[Exclusion] = []
        full: list[tuple[float, float, Endpoint]] = []
        ejected: list[tuple[Endpoint, EndpointView]] = []
        cooling: list[tuple[Endpoint, EndpointView]] = []
        limited: list[tuple[Endpoint, Bucket]] = []
        for j in others:
            ep, st, _, _ = rows[j]
            kind = vkinds.get(j, kinds[j])
            if kind == _OUT:
                why = self.whys[j]
                dropped.append(Exclusion(ep, unusable_reason(st, self.model, why, now), why))
            elif kind == _FULL:
                sc, pr = self.exact(j, tq)
                full.append((sc, pr, ep))
            elif kind == _EJECTED:
                ejected.append((ep, st))
            elif kind == _COOLING:
                cooling.append((ep, st))
            elif kind == _LIMITED:
                b = st.bucket
                assert b is not None
                limited.append((ep, b))
        return scores, preds, ueps, n_usable, explore_pick, recheck_pick, dropped, full, ejected, cooling, limited

    def grow(self, k: int, least: int, slope: float, shift: float, slo: float | None) -> float:
        """Grow the front in bound order until what decides the plan — the k-th score,
        the near-equal group's or the balanced window's limit — lies under ``flim``
        (then every row that can be at or under it is in the front); return it."""
        front = self.front
        order = self.order
        no = len(order)
        flim = self.flim
        p = bisect.bisect_left(order, (flim, -1))
        tq = self.tq
        sct, scv, exact, infront = self.sct, self.scv, self.exact, self.infront
        while True:
            if p >= no:  # every row is in the front (flim may be a row's old bound)
                flim = math.inf
            nf = len(front)
            if nf >= least:
                kth = front[k - 1][0] if nf >= k else math.inf
                near = slo if slo is not None else front[0][0] * slope + shift
                thr = kth if kth > near else near
                if thr < flim or p >= no:
                    break
            elif p >= no:  # (cannot be: least <= the rows, all in the front)
                thr = math.inf
                break
            j = order[p][1]
            if not infront[j]:
                got = scv[j] if sct[j] == tq else exact(j, tq)
                bisect.insort(front, (got[0], j))
                infront[j] = 1
            p += 1
            flim = order[p][0] if p < no else math.inf
        self.flim = flim
        return thr

    def grow_to(self, far: float) -> None:
        """Grow the front until every row whose bound is at or under ``far`` is in it."""
        front = self.front
        order = self.order
        no = len(order)
        flim = self.flim
        p = bisect.bisect_left(order, (flim, -1))
        tq = self.tq
        exact, infront = self.exact, self.infront
        while flim <= far and p < no:
            j = order[p][1]
            if not infront[j]:
                bisect.insort(front, (exact(j, tq)[0], j))
                infront[j] = 1
            p += 1
            flim = order[p][0] if p < no else math.inf
        self.flim = flim if p < no else math.inf

    def reset_front(self, tq: float) -> None:
        """A new prediction time: the front starts empty (its scores were for the last)."""
        infront = self.infront
        for _, j in self.front:
            infront[j] = 0
        self.front = []
        self.flim = -math.inf
        self.ftq = tq

    def prefix(self, cut: int) -> tuple[list[float], list[float], list[Endpoint]]:
        """Scores, predictions and endpoints of the front's first ``cut`` rows, in score
        order (ties in row order): what a stable sort of the scan-order subset gives,
        so every ordering downstream (stable sorts and selections, rendezvous) comes
        out the same, without sorting again."""
        head = self.front[:cut]
        scv, eps = self.scv, self.eps
        js = [j for _, j in head]
        return [sc for sc, _ in head], [scv[j][1] for j in js], list(map(eps.__getitem__, js))

    def subset(self, seen: dict[int, tuple[float, float]]) -> tuple[list[float], list[float], list[Endpoint]]:
        """Scores, predictions and endpoints of the rows seen, in scan order."""
        rows = self.rows
        js = sorted(seen)
        vals = [seen[j] for j in js]
        return [v[0] for v in vals], [v[1] for v in vals], [rows[j][0] for j in js]


def _two_choices(order: list[int], g: int, scores: list[float], seed: float) -> str:
    """Power of two choices among the ``g`` near-equal leaders: two distinct indices
    drawn from the seed, the less loaded one goes first (in place). Returns the note."""
    if g < 2:
        return ""
    i = int(seed * g) % g
    j = (i + 1 + int(seed * 7919.0 % 1.0 * (g - 1))) % g
    pick = i if scores[order[i]] <= scores[order[j]] else j
    if pick == 0:
        return ""
    order.insert(0, order.pop(pick))
    return " (power of two choices among near-equals)"


def _weighted_keys(eps: list[Endpoint], seed: float) -> list[float]:
    """Efraimidis–Spirakis keys (smallest first), one draw per endpoint in scan order."""
    draw = random.Random(seed).random
    log = math.log
    return [-log(max(draw(), 1e-12)) / ep.weight for ep in eps]


def _cost_key(ep: Endpoint, input_tokens: int, out_tokens: int) -> float:
    """Expected micro-USD of a request (inf: price unknown, ranked last)."""
    price = ep.price
    return math.inf if price is None else input_tokens * price[0] + out_tokens * price[1]


def _costs(eps: list[Endpoint], input_tokens: int, out_tokens: int) -> list[float]:
    return [_cost_key(ep, input_tokens, out_tokens) for ep in eps]


def _ident(item: tuple[float, float, Endpoint]) -> str:
    return item[2].id


def _weight(item: tuple[float, float, Endpoint]) -> float:
    return item[2].weight


def _cost(ep: Endpoint, input_tokens: int, out_tokens: int) -> float | None:
    """Expected USD of a request on an endpoint (None: price unknown)."""
    if ep.price is None:
        return None
    return (input_tokens * ep.price[0] + out_tokens * ep.price[1]) / 1e6
