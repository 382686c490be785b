"""``llm-multicloud demo``: the product in 20 seconds, with no cloud credentials.

Starts the simulated fleet (:func:`llm_multicloud.fleet.demo_spec`: AWS, GCP,
Azure and an on-prem vLLM, in US, EU and APAC regions, priced from public H100
prices) on loopback, and drives it through the real ``openai`` SDK:

1. a mixed workload — EU, US and APAC users; streaming and not; sync and async;
2. the EU's preferred region goes down: EU traffic fails over inside the EU with
   zero failed requests, and the audit log proves no EU request left the EU;
3. the per-endpoint snapshot (state, latency, requests, cost).

On a terminal the view is live (rich): traffic per region as it happens, breaker
states changing in place, the last requests with their full answers. Piped or
redirected (or with ``plain=True``) it prints the same facts as plain lines, each
when it happens. After each phase, one line per user group says why the traffic
went where it went ("onprem-vllm ranked first but its first token was late →
aws-euc1").
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

from .executor import AttemptRecord, RequestRecord
from .health import Transition

USERS = [
    ("eu-user", "EU", "eu-central-1"),
    ("us-user", None, "us-east-1"),
    ("apac-user", None, "ap-northeast-1"),
]
MODEL = "llama-3.1-8b"
MAX_REQUESTS = 1000
HEADER = ("#", "user", "residency", "mode", "served by", "region", "attempts", "hedged", "ms", "answer")


class _Row:
    __slots__ = (
        "answer", "attempts", "endpoint", "hedged", "i", "mode", "ms", "plan", "region", "residency", "user",
    )  # fmt: skip

    def __init__(self, i: int, user: str, residency: str, mode: str, plan: Any) -> None:
        self.i, self.user, self.residency, self.mode = i, user, residency, mode
        self.endpoint = self.region = self.attempts = self.hedged = self.answer = ""
        self.ms = 0.0
        self.plan = plan  # the router's plan just before this request was sent

    def cells(self) -> tuple[str, ...]:
        return (
            str(self.i),
            self.user,
            self.residency,
            self.mode,
            self.endpoint,
            self.region,
            self.attempts,
            self.hedged,
            f"{self.ms:.0f}",
            self.answer,
        )


class _State:
    """What the views show, fed by the MultiCloud's hooks (from its event-loop thread)."""

    def __init__(self, endpoints: Sequence[Any]) -> None:
        self.lock = threading.Lock()
        self.endpoints = list(endpoints)
        self.breaker = {e.id: "closed" for e in endpoints}
        self.phase_attempts: list[AttemptRecord] = []
        self.phase_requests: list[RequestRecord] = []
        self.audit: list[AttemptRecord] = []
        self.events: deque[str] = deque(maxlen=6)
        self.rows: deque[_Row] = deque(maxlen=8)
        self.title = ""
        self.done = 0
        self.total = 0
        self.listeners: list[Callable[[str], None]] = []

    def on_attempt(self, a: AttemptRecord) -> None:
        with self.lock:
            self.audit.append(a)
            self.phase_attempts.append(a)

    def on_request(self, r: RequestRecord) -> None:
        with self.lock:
            self.phase_requests.append(r)

    def on_transition(self, t: Transition) -> None:
        line = f"{t.endpoint}: breaker {t.old} → {t.new} ({t.reason})"
        with self.lock:
            self.breaker[t.endpoint] = t.new
            self.events.append(line)
        for fn in self.listeners:
            fn(line)

    def new_phase(self, title: str, total: int) -> None:
        with self.lock:
            self.title, self.total, self.done = title, total, 0
            self.phase_attempts, self.phase_requests = [], []
            self.rows.clear()
            self.events.clear()

    def traffic(self) -> list[tuple[Any, str, int, int, int, float | None]]:
        """Per endpoint, this phase: (endpoint, breaker, served, failed, hedges, TTFT ms)."""
        with self.lock:
            attempts = list(self.phase_attempts)
            breaker = dict(self.breaker)
        out = []
        for e in self.endpoints:
            mine = [a for a in attempts if a.endpoint == e.id]
            won = [a for a in mine if a.outcome == "won"]
            ttfts = [a.ttft_ms for a in won if a.ttft_ms is not None]
            out.append(
                (
                    e,
                    breaker[e.id],
                    len(won),
                    sum(a.outcome == "failed" for a in mine),
                    sum(a.kind == "hedge" for a in mine),
                    sum(ttfts) / len(ttfts) if ttfts else None,
                )
            )
        return out


# ------------------------------------------------------------------------------ views


def _line(c: Sequence[str]) -> str:
    """One request as a plain line (the answer last and whole)."""
    return (
        f"  {c[0]:>3}  {c[1]:<9}  {c[2]:<9}  {c[3]:<6}  {c[4]:<11}  {c[5]:<12}  {c[6]:>8}  {c[7]:<6}  {c[8]:>5}  {c[9]}"
    )


class _PlainView:
    """Plain lines, each printed when it happens (pipes, files, CI logs)."""

    def __init__(self, state: _State, out: Any) -> None:
        self.state = state
        self.out = out
        state.listeners.append(lambda line: self.print(f"  ! {line}"))

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def table(self, rows: Sequence[Sequence[object]]) -> None:
        from .tables import format_table

        self.print(format_table(rows))

    def start_phase(self, title: str) -> None:
        self.print()
        self.print(title)
        self.print(_line(HEADER))

    def request(self, row: _Row) -> None:
        self.print(_line(row.cells()))

    def end_phase(self) -> None:
        self.print("  traffic this phase:")
        for e, breaker, served, failed, hedges, ttft in self.state.traffic():
            if served or failed or hedges:
                t = "-" if ttft is None else f"{ttft:.0f} ms"
                self.print(
                    f"    {e.id:<12} {e.region:<13} breaker {breaker:<9} served {served:>3}  "
                    f"failed {failed:>2}  hedges {hedges:>2}  TTFT {t}"
                )

    def close(self) -> None:
        pass


class _LiveView(_PlainView):
    """A live rich view: per-region traffic as it happens, breakers in place."""

    def __init__(self, state: _State, out: Any) -> None:
        from rich.console import Console

        self.state = state
        self.out = out
        self.console = Console(file=out, highlight=False)
        self.live: Any = None

    def print(self, text: str = "") -> None:
        self.console.print(text, markup=False, soft_wrap=True)

    def table(self, rows: Sequence[Sequence[object]]) -> None:
        from rich.table import Table
        from rich.text import Text

        t = Table(*[str(c) for c in rows[0]], box=None, pad_edge=False, header_style="bold")
        for r in rows[1:]:
            t.add_row(*[Text(str(c)) for c in r])
        self.console.print(t)

    def start_phase(self, title: str) -> None:
        from rich.live import Live

        self.console.print()
        self.console.rule(title, align="left")
        self.live = Live(get_renderable=self._render, console=self.console, refresh_per_second=12, transient=False)
        self.live.start()

    def request(self, row: _Row) -> None:
        with self.state.lock:
            self.state.rows.append(row)
            self.state.done += 1
        if self.live is not None:
            self.live.refresh()

    def end_phase(self) -> None:
        if self.live is not None:
            self.live.refresh()
            self.live.stop()
            self.live = None

    def close(self) -> None:
        self.end_phase()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        st = self.state
        traffic = st.traffic()
        most = max((served for _, _, served, _, _, _ in traffic), default=0) or 1
        t = Table(
            "endpoint", "region", "breaker", "served", "", "failed", "hedges", "TTFT ms",
            box=None, pad_edge=False, header_style="bold", title_justify="left",
            title=f"traffic per region — {st.done}/{st.total} requests",
        )  # fmt: skip
        for e, breaker, served, failed, hedges, ttft in traffic:
            colour = {"closed": "green", "open": "bold red", "half_open": "yellow"}.get(breaker, "cyan")
            t.add_row(
                Text(e.id),
                Text(e.region),
                Text(breaker, style=colour),
                str(served),
                Text("█" * round(24 * served / most), style="cyan"),
                Text(str(failed), style="red" if failed else ""),
                str(hedges),
                "-" if ttft is None else f"{ttft:.0f}",
            )
        with st.lock:
            rows = list(st.rows)
            events = list(st.events)
        recent = Table(
            *HEADER, box=None, pad_edge=False, header_style="bold", title="last requests", title_justify="left"
        )
        for r in rows:
            recent.add_row(*[Text(c) for c in r.cells()])  # Text: "[aws-euc1]" is not markup
        parts: list[Any] = [t, Text(""), recent]
        if events:
            parts += [Text(""), Text("\n".join(f"! {e}" for e in events), style="yellow")]
        return Group(*parts)


# ------------------------------------------------------------------------------ the demo


def run_demo(requests: int = 24, *, plain: bool | None = None, out: Any = None) -> int:
    """Run the three phases; ``plain=None`` picks the live view when ``out`` is a terminal."""
    out = sys.stdout if out is None else out
    if not isinstance(requests, int) or isinstance(requests, bool) or not 1 <= requests <= MAX_REQUESTS:
        print(f"error: --requests must be a whole number from 1 to {MAX_REQUESTS} (got {requests!r})", file=sys.stderr)
        return 2
    try:
        import openai
    except ImportError:
        print("the demo needs the openai SDK: pip install '.[demo]'", file=sys.stderr)
        return 2
    live = (out.isatty() if hasattr(out, "isatty") else False) if plain is None else not plain
    if live:
        try:
            import rich  # noqa: F401
        except ImportError:
            live = False  # the plain view says the same things

    # The view shows breaker changes itself; without a handler of the user's, the
    # library's warnings would print them a second time (logging's last resort).
    log = logging.getLogger("llm_multicloud")
    quiet = logging.NullHandler()
    if not log.handlers:
        log.addHandler(quiet)
    try:
        return _run(requests, live, out, openai)
    finally:
        log.removeHandler(quiet)


def _run(requests: int, live: bool, out: Any, openai: Any) -> int:
    from . import MultiCloud, routing
    from .fleet import Fleet, demo_spec

    t_start = time.perf_counter()
    with Fleet(demo_spec()) as fleet:
        catalog = fleet.catalog()
        mc = MultiCloud(catalog, {"strategy": "balanced"})
        state = _State(mc.catalog.endpoints)
        mc.hooks.append(state.on_attempt)
        mc.request_hooks.append(state.on_request)
        mc.health.listeners.append(state.on_transition)
        view: _PlainView = _LiveView(state, out) if live else _PlainView(state, out)
        with mc:
            client = mc.wrap(openai.OpenAI(api_key="unused-placeholder"))
            view.print("llm_multicloud demo: a simulated fleet on 127.0.0.1")
            view.table(
                [("endpoint", "provider", "region", "residency", "price in/out $/Mtok")]
                + [
                    (
                        e.id,
                        e.provider,
                        e.region,
                        ",".join(e.residency) or "-",
                        "unknown" if e.price is None else f"{e.price[0]:.3f} / {e.price[1]:.3f}",
                    )
                    for e in mc.catalog.endpoints
                ]
            )
            view.print()
            view.print("The plan for an EU user before any traffic (mc.explain):")
            view.print(mc.explain(MODEL, residency="EU", near="eu-central-1").describe())

            failures = 0

            def one(i: int, user: str, res: str | None, near: str, stream: bool) -> _Row:
                nonlocal failures
                plan = mc.explain(MODEL, residency=res, near=near)
                row = _Row(i, user, res or "any", "stream" if stream else "json", plan)
                t0 = time.perf_counter()
                try:
                    with routing(residency=res, near=near):
                        if stream:
                            with client.chat.completions.with_streaming_response.create(
                                model=MODEL,
                                messages=[{"role": "user", "content": f"request {i}"}],
                                stream=True,
                                max_tokens=8,
                            ) as raw:
                                headers = raw.headers
                                text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
                        else:
                            resp = client.chat.completions.with_raw_response.create(
                                model=MODEL, messages=[{"role": "user", "content": f"request {i}"}], max_tokens=8
                            )
                            headers = resp.headers
                            text = resp.parse().choices[0].message.content or ""
                except openai.APIError as exc:
                    failures += 1
                    row.endpoint, row.answer = "FAILED", str(exc).splitlines()[0]
                else:
                    row.endpoint = headers["x-llm-multicloud-endpoint"]
                    row.region = headers["x-llm-multicloud-region"]
                    row.attempts = headers["x-llm-multicloud-attempts"]
                    row.hedged = headers["x-llm-multicloud-hedged"]
                    row.answer = text
                row.ms = (time.perf_counter() - t0) * 1000
                view.request(row)
                return row

            # -- phase 1
            plans = {u: mc.explain(MODEL, residency=r, near=n) for u, r, n in USERS}
            title = f"Phase 1: {requests} requests from EU, US and APAC users (sync, streaming and not)"
            state.new_phase(title, requests)
            view.start_phase(title)
            rows = []
            for i in range(requests):
                user, res, near = USERS[i % 3]
                rows.append(one(i, user, res, near, stream=i % 2 == 0))
            n_async = asyncio.run(_async_burst(mc, openai))
            view.end_phase()
            view.print(f"  + {n_async} concurrent async requests through openai.AsyncOpenAI: all answered")
            for line in _decisions(mc, plans, rows, state):
                view.print(f"  why: {line}")

            # -- phase 2
            plans = {u: mc.explain(MODEL, residency=r, near=n) for u, r, n in USERS[:1]}
            down = plans["eu-user"].candidates[0].endpoint.id  # the EU users' first choice now
            title = f"Phase 2: region {down} goes down (connections refused); EU users keep working"
            fleet.set_fault(down, mode="down")
            before = len(state.audit)
            state.new_phase(title, requests)
            view.start_phase(title)
            rows = [one(i, "eu-user", "EU", "eu-central-1", stream=i % 2 == 0) for i in range(requests)]
            view.end_phase()
            eu_attempts = [a for a in state.audit[before:] if a.residency != "any"]
            outside = [a for a in eu_attempts if not _in_eu(mc, a.endpoint)]
            to_dead = [a for a in eu_attempts if a.endpoint == down]
            view.print(
                f"  failed requests: {failures}; EU attempts: {len(eu_attempts)}, "
                f"sent outside the EU: {len(outside)}; attempts that hit the dead region: {len(to_dead)}"
                + (" (then its breaker opened)" if state.breaker[down] != "closed" else "")
            )
            for line in _decisions(mc, plans, rows, state, down=down):
                view.print(f"  why: {line}")
            fleet.set_fault(down, mode="none")

            # -- phase 3
            view.print()
            view.print("Phase 3: snapshot")
            snap = mc.snapshot()
            view.table(
                [("endpoint", "state", "TTFT ms", "requests", "failures", "hedges", "cost USD")]
                + [
                    (
                        e["id"],
                        e["state"],
                        "-" if e["ttft_ms"] is None else f"{e['ttft_ms']:.0f}",
                        e["requests"],
                        e["failures"],
                        e["hedges"],
                        "unknown" if e["cost_usd"] is None else f"{e['cost_usd']:.6f}",
                    )
                    for e in snap["endpoints"]
                ]
            )
            view.print()
            view.print(f"total cost: ${snap['cost_usd']:.6f}; demo took {time.perf_counter() - t_start:.1f}s")
            view.close()
            if failures or outside:
                return 1
    return 0


def _decisions(mc: Any, plans: dict[str, Any], rows: list[_Row], state: _State, down: str | None = None) -> list[str]:
    """One line per user group: the plan's first choice, and why traffic went elsewhere."""
    lines = []
    with state.lock:
        attempts = list(state.phase_attempts)
    for user, plan in plans.items():
        served = Counter(r.endpoint for r in rows if r.user == user and r.endpoint != "FAILED")
        total = sum(1 for r in rows if r.user == user)
        if not plan.candidates or not served:
            continue
        first = plan.candidates[0]
        top, n = served.most_common(1)[0]
        why_first = first.note or f"predicted TTFT {first.predicted_ms:.0f} ms"
        if top == first.endpoint.id:
            lines.append(f"{user}: {top} ranked first ({why_first}) and served {n} of {total}")
            continue
        mine = [a for a in attempts if a.endpoint == first.endpoint.id]
        if first.endpoint.id == down:
            because = "its region went down: attempts failed and its breaker opened"
        elif any(a.outcome == "failed" for a in mine):
            reason = next(a.reason for a in mine if a.outcome == "failed")
            because = f"its attempts failed ({reason})"
        elif any(a.outcome == "cancelled" for a in mine):
            because = "its first token was late: a hedge to another region won"
        else:
            # the plan that first sent this user's traffic to `top`
            moved = next((r.plan for r in rows if r.user == user and r.endpoint == top), None)
            pred = {c.endpoint.id: c for c in moved.candidates} if moved is not None else {}
            a, b = pred.get(first.endpoint.id), pred.get(top)
            because = (
                f"after the first measurements {top} was predicted {b.predicted_ms:.0f} ms"
                + (f" ({b.note})" if b.note else "")
                + f" against {a.predicted_ms:.0f} ms for it"
                if a is not None and b is not None
                else "the measurements that followed ranked it lower"
            )
        lines.append(
            f"{user}: {first.endpoint.id} ranked first ({why_first}) but {because} → {top} served {n} of {total}"
        )
    return lines


def _in_eu(mc: Any, endpoint_id: str) -> bool:
    from .regions import expand_tag

    fp: frozenset[str] = mc.catalog.get(endpoint_id).footprint
    return bool(fp) and fp <= expand_tag("EU")


async def _async_burst(mc: Any, openai: Any) -> int:
    aclient = mc.wrap(openai.AsyncOpenAI(api_key="unused-placeholder"))
    async with aclient:
        results = await asyncio.gather(
            *[
                aclient.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"async {i}"}], max_tokens=4
                )
                for i in range(12)
            ]
        )
    return len(results)
