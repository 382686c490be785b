"""upstream.Interrupt over real sockets (a socketpair, the sync network backend of the
installed HTTP library): what the thread race relies on.

* a cancel from another thread ends a read blocked on the attempt's socket at once;
* the timer runs in the middle of a read, which then goes on and gets its data;
* a connection the pool has taken back (it probes ``is_readable`` before reuse) is
  never shut down by a late cancel of the attempt that used it before.
"""

from __future__ import annotations

import importlib
import socket
import threading
import time
from typing import Any

import pytest

from llm_multicloud.upstream import Cancelled, Interrupt, Interruptible, _BoundedBackend, _BoundedStream


def _core() -> Any:
    for name in ("httpcore2", "httpcore"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    pytest.skip("no httpcore")


def _pair() -> tuple[_BoundedStream, socket.socket]:
    core = _core()
    ours, theirs = socket.socketpair()
    backend = _BoundedBackend(core.SyncBackend())
    return _BoundedStream(core._backends.sync.SyncStream(ours), *backend._kind), theirs


def test_a_cancel_from_another_thread_ends_a_blocked_read_at_once() -> None:
    stream, peer = _pair()
    h = Interrupt()
    got: list[BaseException] = []
    reading = threading.Event()

    def read() -> None:
        with Interruptible(h, fresh=True):
            reading.set()
            try:
                stream.read(1024, timeout=30.0)
            except BaseException as exc:
                got.append(exc)

    t = threading.Thread(target=read)
    t.start()
    assert reading.wait(5)
    while h.stream is None:  # the read registered its stream
        time.sleep(0.001)
    h.cancel()
    t.join(5)
    assert not t.is_alive()  # well before the read's own 30 s
    assert len(got) == 1 and isinstance(got[0], Cancelled)
    assert peer.recv(16) == b""  # the peer saw the disconnect
    peer.close()


def test_the_timer_runs_in_the_middle_of_a_read_that_then_gets_its_data() -> None:
    stream, peer = _pair()
    h = Interrupt()
    fired: list[float] = []

    def on_timer() -> None:
        fired.append(time.monotonic())
        peer.sendall(b"after the timer")  # what a hedge's start would do meanwhile

    h.on_timer = on_timer
    h.at = time.monotonic() + 0.05
    with Interruptible(h):
        data = stream.read(1024, timeout=10.0)
    assert data == b"after the timer" and len(fired) == 1
    assert h.at == float("inf")  # a timer runs once, until someone arms it again
    peer.close()


def test_a_connection_the_pool_took_back_is_never_shut_down_by_a_late_cancel() -> None:
    stream, peer = _pair()
    h = Interrupt()
    peer.sendall(b"x")
    with Interruptible(h):
        assert stream.read(1, timeout=5.0) == b"x"
    assert stream.get_extra_info("is_readable") is False  # the pool's probe before reuse
    h.cancel()  # too late: the connection is someone else's now
    peer.sendall(b"still open")
    assert stream.read(1024, timeout=5.0) == b"still open"
    # without the probe, the same late cancel does shut it down
    h2 = Interrupt()
    with Interruptible(h2):
        stream.write(b"ping", timeout=5.0)
    assert peer.recv(16) == b"ping"
    h2.cancel()
    assert peer.recv(16) == b""
    peer.close()
