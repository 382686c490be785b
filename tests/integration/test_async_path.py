"""The async path's per-request setup (issue 14), through the real openai SDK against
the fleet on 127.0.0.1: what is prepared once is prepared once, and still right."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from .conftest import MODEL, chat_records, make_mc

pytestmark = pytest.mark.integration

MSG = [{"role": "user", "content": "hi"}]


@pytest.mark.filterwarnings("ignore:`verify=<str>` is deprecated:DeprecationWarning")
def test_the_tls_context_is_built_once_for_every_loop_and_client(clean: Any, tmp_path: Any) -> None:
    """A wrapped async client makes a pool per event loop; the TLS context (the CA
    bundle read) is shared by all of them, and by another client with the same
    settings, instead of being built again on each loop's first request. Different
    TLS settings get their own context."""
    trustme = pytest.importorskip("trustme")
    ca_path = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_path))
    contexts: list[Any] = []

    with make_mc(clean) as mc, make_mc(clean) as other:
        with_ca = make_mc(clean, http_options={"verify": str(ca_path)})
        clients = [mc.wrap(openai.AsyncOpenAI(api_key="sk-placeholder-never-sent")) for _ in range(2)]
        clients.append(other.wrap(openai.AsyncOpenAI(api_key="sk-placeholder-never-sent")))
        clients.append(with_ca.wrap(openai.AsyncOpenAI(api_key="sk-placeholder-never-sent")))
        try:
            for _ in range(2):  # two asyncio.run calls: two loops, a pool on each

                async def run() -> None:
                    for c in clients:
                        r = await c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=2)
                        assert r.choices[0].message.content
                        contexts.append(c._client._transport._upstream_here()._options["verify"])

                asyncio.run(run())
        finally:
            with_ca.close()
    default = contexts[0]
    assert [c is default for c in contexts] == [True, True, True, False] * 2
    assert contexts[3] is contexts[7]  # the custom CA's context: also built once
    assert len(chat_records(clean)) == 8
