"""The routing engine: from a plan to exactly one answer. One module, one idea:

=================  ====================================================================
``executor.py``    the composition: a request's rounds of races, re-planning, the result
``ledger.py``      the one owner of a request's bookkeeping: attempts, cost, records
``race.py``        every decision of a race, sans-I/O: events in, actions out
``driver.py``      the async I/O driver of a race (direct, or anyio task group)
``attempt.py``     one attempt's I/O up to the commit point, faults classified once
``placement.py``   placing an attempt on a candidate right before it starts (residency lock)
``hedge.py``       the hedging policy: when, whether, to whom; its budget
``retry.py``       the retry policy: whether, where; its budget
``stream.py``      the committed stream: pass-through, breaks, resume
=================  ====================================================================

Dependencies point one way: ``executor`` → ``driver`` → ``race`` → policies,
``placement``, ``ledger``, ``attempt``; ``stream`` reports to ``ledger``.
"""

from __future__ import annotations

from .executor import Executor
from .ledger import AttemptRecord, Ledger, RequestRecord
from .stream import Result

__all__ = ["AttemptRecord", "Executor", "Ledger", "RequestRecord", "Result"]
