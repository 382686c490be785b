"""Keys are masked in every form they take when printed, before any truncation."""

from __future__ import annotations

import base64
import html
import json
from urllib.parse import quote, quote_plus

import pytest

from llm_multicloud.errors import redact
from llm_multicloud.redaction import Redactor

KEY = "sk-proj-Ab3/x+Yz=9_kLmNoPqRsT"


@pytest.mark.parametrize(
    "printed",
    [
        KEY,
        json.dumps({"error": {"message": f"bad key {KEY}"}}),
        json.dumps(KEY + "é"),
        repr(KEY),
        repr(KEY.encode()),
        repr(f"Bearer {KEY}".encode()),
        quote(KEY, safe=""),
        quote(KEY),
        quote_plus(KEY),
        html.escape(KEY),
        KEY.encode().hex(),
        base64.b64encode(KEY.encode()).decode(),
        base64.b64encode(f"user:{KEY}".encode()).decode(),  # Basic credentials, any alignment
        base64.b64encode(f"u:{KEY}".encode()).decode(),
        base64.b64encode(f"us:{KEY}".encode()).decode(),
        base64.urlsafe_b64encode(f"x{KEY}".encode()).decode(),
        f"invalid key {KEY[:12]}...",  # cut short by the server
        f"{KEY[:13]}",
        "".join(f"\\u{ord(c):04x}" if i % 3 == 0 else c for i, c in enumerate(KEY)),  # escaped by hand
        "".join(f"%{ord(c):02X}" if i % 2 else c for i, c in enumerate(KEY)),
    ],
)
def test_every_printed_form_is_masked(printed: str) -> None:
    out = Redactor([KEY])(f"upstream said: {printed} (end)")
    assert "***" in out
    for i in range(len(KEY) - 8):
        assert KEY[i : i + 8] not in out, out  # no 8 consecutive characters of the key
    assert out.startswith("upstream said: ") and out.endswith(" (end)")


def test_other_text_is_left_alone_and_short_secrets_are_ignored() -> None:
    r = Redactor([KEY, "abc", None, ""])
    assert r("sk-proj- is the prefix of every project key; abc") == "sk-proj- is the prefix of every project key; abc"
    assert not Redactor([]) and Redactor([])("x") == "x"


def test_the_legacy_helper_uses_the_same_rules() -> None:
    assert redact(quote(KEY, safe=""), [KEY]) == "***"


def test_health_learns_credentials_fetched_at_run_time() -> None:
    from llm_multicloud.catalog import Catalog
    from llm_multicloud.health import Health
    from llm_multicloud.policy import Policy

    cat = Catalog.load(
        {
            "endpoints": [
                {
                    "id": "a",
                    "provider": "onprem",
                    "region": "x",
                    "country": "DE",
                    "base_url": "http://127.0.0.1:1/v1",
                    "api_key": KEY,
                    "models": ["m"],
                }
            ]
        }
    )
    health = Health(cat, Policy())
    token = "ya29.a0AfH6SMBx-fetched-at-run-time"
    assert health.redact(f"{KEY} {token}") == f"*** {token}"
    health.learn_secret(token)
    health.learn_secret(token)  # known: nothing rebuilt
    assert health.redact(f"{KEY} {token}") == "*** ***"
    health.endpoint_fault(health.states[0], f"upstream echoed {token}")
    assert health.states[0].last_error == "upstream echoed ***"
