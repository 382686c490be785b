"""Compatibility: the engine lives in the :mod:`llm_multicloud.engine` package.

These names keep their old import path (``llm_multicloud.executor.AttemptRecord``
and friends); new code imports them from the engine's modules.
"""

from __future__ import annotations

from .engine.attempt import auth_refused
from .engine.executor import Executor
from .engine.ledger import AttemptRecord, Hook, RequestHook, RequestRecord
from .engine.stream import Result
from .errors import parse_retry_after  # lives with its cap (cooldown_s) in the error layer

__all__ = [
    "AttemptRecord",
    "Executor",
    "Hook",
    "RequestHook",
    "RequestRecord",
    "Result",
    "auth_refused",
    "parse_retry_after",
]
