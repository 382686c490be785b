"""Compatibility: the committed stream lives in :mod:`llm_multicloud.engine.stream`."""

from __future__ import annotations

from .engine.stream import Passthrough

__all__ = ["Passthrough"]
