"""HTTP/2 through the library: a fleet region under granian over TLS (ALPN ``h2,
http/1.1``, a throwaway CA from trustme), reached by the real openai SDK wrapped with
``http_options={"http2": True}`` — sync and async, streamed and not.

What it proves (docs/http-clients.md, "Limits"): with ``http2`` the endpoint's
connection is negotiated to HTTP/2 and concurrent requests share one TCP connection
(the server sees one client port for all of them); without it the same server is
spoken to in HTTP/1.1 over several connections. The server's own ASGI scope says
which protocol and which client connection each request came over
(tests/integration/h2_region.py, ``GET /seen``).

Why granian and not hypercorn: under hypercorn 0.18 about one round in a hundred of
eight concurrent requests on a new HTTP/2 connection ended in "Server disconnected" —
also with the plain openai client, without this library (the server's h2 state
machine raised ``KeyError`` and closed the connection) — a flaky server is no test.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_multicloud as lmc

from .h2_region import KEY, MODEL, SERVED

pytest.importorskip("granian")
trustme = pytest.importorskip("trustme")
pytest.importorskip("h2")

#: concurrent requests per check: HTTP/1.1 needs a connection per request in flight
CONCURRENCY = 8
MESSAGES = [{"role": "user", "content": "hello over h2"}]
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _H2Server:
    """granian serving tests/integration/h2_region.py's region on 127.0.0.1 over TLS."""

    def __init__(self, ca: Any, certfile: str, keyfile: str) -> None:
        self.ca = ca
        self.port = _free_port()
        self._cmd = [
            sys.executable,
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--factory",
            "--http",
            "auto",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ssl-certificate",
            certfile,
            "--ssl-keyfile",
            keyfile,
            "--no-ws",
            "--log-level",
            "warning",
            "tests.integration.h2_region:app",
        ]
        self._proc: subprocess.Popen[bytes] | None = None

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def seen(self) -> list[tuple[str, tuple[str, int]]]:
        """The (HTTP version, client address) of every chat request since the last call."""
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self.context())
        )
        with opener.open(f"https://127.0.0.1:{self.port}/seen", timeout=10) as r:
            return [(v, (c[0], int(c[1]))) for v, c in json.loads(r.read())]

    def __enter__(self) -> _H2Server:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self._proc = subprocess.Popen(self._cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:  # bounded: the server listens, or it exited, or 30 s passed
            if self._proc.poll() is not None:
                out = self._proc.stdout.read().decode(errors="replace") if self._proc.stdout else ""
                raise RuntimeError(f"granian exited with {self._proc.returncode}: {out[-2000:]}")
            try:
                self.seen()
                return self
            except OSError:
                assert time.monotonic() < deadline, "granian did not listen within 30 s"
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(10)
        if self._proc.stdout:
            self._proc.stdout.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[_H2Server]:
    from cryptography.hazmat.primitives import serialization

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    d = tmp_path_factory.mktemp("h2tls")
    certfile, keyfile = str(d / "cert.pem"), str(d / "key.pem")
    cert.cert_chain_pems[0].write_to_path(certfile)
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(certfile, append=True)
    # granian reads PKCS#8 keys only
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    Path(keyfile).write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    with _H2Server(ca, certfile, keyfile) as s:
        yield s


def _mc(server: _H2Server, http2: bool) -> lmc.MultiCloud:
    ctx = server.context()
    catalog = {
        "endpoints": [
            {
                "id": "r0",
                "provider": "aws",
                "region": "us-east-1",
                "base_url": f"https://127.0.0.1:{server.port}/v1",
                "api_key": KEY,
                "models": {MODEL: SERVED},
            }
        ]
    }
    return lmc.MultiCloud(
        catalog,
        {"probe": {"enabled": False}, "hedge": {"enabled": False}},
        http_options={"http2": http2, "verify": ctx},
    )


def _check(seen: list[tuple[str, tuple[str, int]]], http2: bool) -> None:
    assert len(seen) == CONCURRENCY, seen
    versions = {v for v, _ in seen}
    clients = {c for _, c in seen}
    if http2:
        assert versions == {"2"}, versions
        assert len(clients) == 1, f"HTTP/2 requests came over {len(clients)} connections, expected one"
    else:
        assert versions == {"1.1"}, versions
        assert len(clients) > 1, "HTTP/1.1 at concurrency 8 should need more than one connection"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("http2", [True, False], ids=["h2", "h1"])
def test_sync_requests_over_http2_share_one_connection(server: _H2Server, http2: bool, stream: bool) -> None:
    mc = _mc(server, http2)
    client = mc.wrap(openai.OpenAI(api_key="sk-placeholder", max_retries=0))
    barrier = threading.Barrier(CONCURRENCY)

    def call(_: int) -> str:
        barrier.wait(10)
        if stream:
            chunks = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        r = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        return r.choices[0].message.content or ""

    try:
        server.seen()
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            texts = list(pool.map(call, range(CONCURRENCY)))
        assert all(texts), texts
        _check(server.seen(), http2)
        # HTTP/2 from threads goes through the one event loop (client.MultiCloud.needs_loop):
        # the sync libraries' h2 connections are not thread-safe; HTTP/1.1 stays direct
        assert (mc.background is not None) == http2
    finally:
        client.close()
        mc.close()


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("http2", [True, False], ids=["h2", "h1"])
def test_async_requests_over_http2_share_one_connection(server: _H2Server, http2: bool, stream: bool) -> None:
    mc = _mc(server, http2)

    async def main() -> list[str]:
        client = mc.wrap(openai.AsyncOpenAI(api_key="sk-placeholder", max_retries=0))

        async def call() -> str:
            if stream:
                chunks = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, stream=True)
                return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
            r = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
            return r.choices[0].message.content or ""

        try:
            return list(await asyncio.gather(*(call() for _ in range(CONCURRENCY))))
        finally:
            await client.close()

    try:
        server.seen()
        texts = asyncio.run(main())
        assert all(texts), texts
        _check(server.seen(), http2)
    finally:
        mc.close()
