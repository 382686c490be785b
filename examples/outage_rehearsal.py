"""Rehearse a regional outage against your own code: take a region down mid-run.

Four threads act as EU users (residency EU, a mix of streamed and plain
requests) against the simulated fleet. After some normal traffic, the EU endpoint serving
most of them goes down (its port refuses connections); a moment later it comes
back. The script shows, per phase, where requests went; the breaker transitions
(``on_transition`` hook); and the final ``snapshot()`` — and asserts the claims:

* zero failed requests among those that started after the region died (a stream
  that was already mid-answer on it raises ``lmc.StreamInterrupted`` with the
  partial answer: never a silent truncation; see docs/hedging.md);
* once the breaker opened, the dead region got (almost) no more attempts;
* no attempt ever left the EU;
* after the region recovered, a half-open trial request closed the breaker.

The policy shortens the ejection time (2 s instead of 30 s) and the probe interval
so that the whole story fits in a few seconds. The same rehearsal runs against your
own application with ``llm-multicloud fleet CONFIG`` and its control API
(docs/operations.md).

Prerequisites: the ``fleet`` extra and the openai SDK — ``pip install '.[demo]'``.
Runs against the simulated fleet on 127.0.0.1; no credentials.

    python examples/outage_rehearsal.py
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from typing import Any

import openai

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet, demo_spec
from llm_multicloud.regions import expand_tag

MODEL = "llama-3.1-8b"
USERS = 4


def rehearse(
    fleet: Fleet,
    served: list[tuple[str, str]],
    transitions: list[lmc.Transition],
    phase: list[str],
    fault_at: list[float],
    t0: float,
) -> str:
    """The scenario, while the users run: normal traffic, outage, recovery. Returns the victim."""
    fleet.wait_for(lambda: len(served) >= 40, timeout=20)  # normal traffic first
    victim = collections.Counter(e for _, e in served).most_common(1)[0][0]
    print(f"t+{time.monotonic() - t0:4.1f}s  {victim} goes down (connections refused)")
    phase[0] = "outage"
    fault_at[0] = time.monotonic()
    fleet.set_fault(victim, mode="down")
    time.sleep(1.5)

    print(f"t+{time.monotonic() - t0:4.1f}s  {victim} is back")
    phase[0] = "recovery"
    fleet.set_fault(victim, mode="none")
    fleet.wait_for(lambda: any(t.endpoint == victim and t.new == "closed" for t in transitions), timeout=10)
    time.sleep(0.3)
    return victim


def main() -> int:
    audit: list[lmc.AttemptRecord] = []
    transitions: list[lmc.Transition] = []
    served: list[tuple[str, str]] = []  # (phase, endpoint) per successful request
    failures: list[tuple[float, BaseException]] = []  # (start time, exception) per failed request
    fault_at = [float("inf")]
    phase = ["normal"]
    stop = threading.Event()

    with Fleet(demo_spec()) as fleet:
        for rid in fleet.region_ids:  # fast, tail-free servers: many requests per second
            fleet.set_latency(rid, ttft_ms=4, ttft_jitter=0.2, itl_ms=1)
        policy: dict[str, Any] = {"breaker": {"base_ejection_s": 2.0}, "probe": {"interval_s": 0.5}}
        mc = lmc.MultiCloud(fleet.catalog(), policy, on_attempt=audit.append, on_transition=transitions.append)
        with mc:
            client = mc.wrap(openai.OpenAI(api_key="unused"))

            def user(i: int) -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    started = time.monotonic()
                    try:
                        with lmc.routing(residency="EU", near="eu-central-1"):
                            if n % 2:
                                stream = client.chat.completions.create(
                                    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
                                )
                                for _ in stream:
                                    pass
                                endpoint = stream.response.headers["x-llm-multicloud-endpoint"]
                            else:
                                raw = client.chat.completions.with_raw_response.create(
                                    model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
                                )
                                endpoint = raw.headers["x-llm-multicloud-endpoint"]
                        served.append((phase[0], endpoint))
                    except Exception as exc:  # a failed request
                        failures.append((started, exc))
                        time.sleep(0.01)

            threads = [threading.Thread(target=user, args=(i,)) for i in range(USERS)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            try:
                victim = rehearse(fleet, served, transitions, phase, fault_at, t0)
            finally:
                stop.set()
                for t in threads:
                    t.join()

            print("\nbreaker transitions (on_transition hook):")
            for tr in transitions:
                print(f"  t+{tr.at - t0:4.1f}s  {tr.endpoint}: {tr.old} -> {tr.new} ({tr.reason[:70]})")

            print("\nrequests served per phase:")
            for name in ("normal", "outage", "recovery"):
                counts = collections.Counter(e for p, e in served if p == name)
                print(f"  {name:<9} {dict(counts.most_common())}")

            snap = mc.snapshot()
            print("\nsnapshot():")
            for e in snap["endpoints"]:
                if e["requests"] or e["failures"]:
                    print(
                        f"  {e['id']:<12} state={e['state']:<9} requests={e['requests']:<5} failures={e['failures']:<3}"
                        f" ejections={e['ejections']} ttft={e['ttft_ms']} ms last_error={(e['last_error'] or '-')[:40]}"
                    )

    # The claims.
    opened = next(t for t in transitions if t.endpoint == victim and t.new == "open")
    closed = next(t for t in transitions if t.endpoint == victim and t.new == "closed")
    wall = time.time() - time.monotonic()  # monotonic -> wall clock (AttemptRecord times are wall clock)
    ejected = [a for a in audit if wall + opened.at < a.start_unix_nano / 1e9 < wall + closed.at]
    to_victim = [a for a in ejected if a.endpoint == victim]
    outside = [a for a in audit if not mc.catalog.get(a.endpoint).footprint <= expand_tag("EU")]
    in_flight = [e for t, e in failures if t < fault_at[0]]  # committed on the victim before it died
    after = [e for t, e in failures if t >= fault_at[0]]
    for exc in in_flight:
        if isinstance(exc, lmc.StreamInterrupted):
            print(f"\nmid-answer when {victim} died: StreamInterrupted, delivered so far {exc.delivered_text!r}")
    print(
        f"\n{len(served) + len(failures)} requests; failed after the outage began: {len(after)}; "
        f"while {victim} was ejected it got {len(to_victim)} of {len(ejected)} attempts (half-open trials); "
        f"attempts outside the EU: {len(outside)}"
    )
    assert not after, after[:3]
    assert all(isinstance(e, lmc.StreamInterrupted) and e.endpoint == victim for e in in_flight), in_flight
    assert len(to_victim) <= max(2, 0.01 * len(ejected)), to_victim
    assert not outside, outside[:3]
    assert any(p == "recovery" and e == victim for p, e in served), "traffic did not return after recovery"
    return 0


if __name__ == "__main__":
    sys.exit(main())
