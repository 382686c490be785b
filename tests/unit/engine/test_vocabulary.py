"""The typed vocabulary: enum members are their strings (old comparisons and JSON keep
working), and the engine's records carry members, not bare strings."""

from __future__ import annotations

import json

from llm_multicloud.vocabulary import (
    FAILED_ATTEMPT_OUTCOMES,
    OK_REQUEST_OUTCOMES,
    AttemptKind,
    AttemptOutcome,
    RequestOutcome,
)


def test_members_compare_and_serialise_as_their_strings() -> None:
    assert AttemptKind.HEDGE == "hedge"
    assert AttemptOutcome.WON == "won"
    assert f"{RequestOutcome.CLOSED_BY_CALLER}" == "closed_by_caller"
    assert json.dumps({"kind": AttemptKind.RETRY}) == '{"kind": "retry"}'
    assert AttemptOutcome("cancelled") is AttemptOutcome.CANCELLED


def test_groupings() -> None:
    assert "ok" in OK_REQUEST_OUTCOMES and "closed_by_caller" in OK_REQUEST_OUTCOMES
    assert RequestOutcome.FAILED not in OK_REQUEST_OUTCOMES
    assert {"failed", "request_error", "interrupted"} == set(FAILED_ATTEMPT_OUTCOMES)
    assert AttemptOutcome.CANCELLED not in FAILED_ATTEMPT_OUTCOMES
