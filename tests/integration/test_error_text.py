"""Routing errors read as text on every openai line (1.x, 2.x and 3.x).

openai 1.x/2.x print a JSON error body as a dict repr (escaped newlines: the 503's
per-candidate lines run together); a wrapped client words the library's own error
responses as ``Error code: 503 - <message>`` on every line, keeping the SDK's
exception class, ``.code`` and ``.body``.
"""

from __future__ import annotations

import anyio
import openai
import pytest

import llm_multicloud as lmc
from llm_multicloud.fleet import Fleet

from .conftest import MODEL, make_mc

pytestmark = pytest.mark.integration
MSGS = [{"role": "user", "content": "hi"}]


def _check(exc: openai.APIStatusError) -> None:
    text = str(exc)
    assert text.startswith("Error code: 503 - no endpoint could serve 'llama-3.1-8b' (residency EU); per candidate:\n")
    assert "\n  aws-euc1 (aws eu-central-1): " in text  # one line per candidate
    assert "{'error'" not in text and "\\n" not in text
    assert exc.message == text
    assert exc.status_code == 503
    assert exc.code == "all_attempts_failed"
    assert isinstance(exc.body, dict) and exc.body["message"] in text


def test_503_is_text_sync_and_in_copies(clean: Fleet) -> None:
    for rid in ("aws-euc1", "gcp-euw4"):
        clean.set_fault(rid, mode="down")
    with make_mc(clean) as mc:
        client = mc.wrap(openai.OpenAI(api_key="unused"))
        for c in (client, client.with_options(timeout=30.0), client.copy()):
            with pytest.raises(openai.InternalServerError) as ei:
                c.chat.completions.create(
                    model=MODEL, messages=MSGS, extra_headers={"x-llm-multicloud-residency": "EU"}
                )  # type: ignore[arg-type]
            _check(ei.value)


def test_503_is_text_async_streaming(clean: Fleet) -> None:
    for rid in ("aws-euc1", "gcp-euw4"):
        clean.set_fault(rid, mode="down")

    async def main() -> None:
        async with make_mc(clean) as mc:
            client = mc.wrap(openai.AsyncOpenAI(api_key="unused"))
            with pytest.raises(openai.InternalServerError) as ei, lmc.routing(residency="EU"):
                await client.chat.completions.create(model=MODEL, messages=MSGS, stream=True)  # type: ignore[arg-type]
            _check(ei.value)
            await client.close()

    anyio.run(main)


def test_upstream_errors_are_left_as_the_sdk_words_them(clean: Fleet) -> None:
    # A 400 passed through from an endpoint is the endpoint's, not ours: untouched.
    with make_mc(clean) as mc:
        client = mc.wrap(openai.OpenAI(api_key="unused"))
        with pytest.raises(openai.BadRequestError) as ei:
            client.chat.completions.create(model=MODEL, messages=[])
        assert "x-llm-multicloud-error" not in ei.value.response.headers
