"""``links.consumers.write_now``: a BTP reply on the socket at once when nothing is queued,
and Twisted's own buffering, in order, otherwise."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from twisted.internet.protocol import Protocol
from twisted.internet.tcp import Server

from links.consumers import write_now


class _Reactor:
    """What ``tcp.Server`` asks of a reactor here: the poller's registrations (Twisted's
    method names)."""

    def __init__(self) -> None:
        self.readers: set[Any] = set()
        self.writers: set[Any] = set()

    def addReader(self, fd: Any) -> None:
        self.readers.add(fd)

    def removeReader(self, fd: Any) -> None:
        self.readers.discard(fd)

    def addWriter(self, fd: Any) -> None:
        self.writers.add(fd)

    def removeWriter(self, fd: Any) -> None:
        self.writers.discard(fd)


@pytest.fixture
def pair() -> Any:
    ours, peer = socket.socketpair()
    reactor = _Reactor()
    transport = Server(ours, Protocol(), ("127.0.0.1", 1), None, 1, reactor)
    peer.setblocking(False)
    yield transport, peer, reactor
    ours.close()
    peer.close()


def _read_all(peer: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


def test_nothing_queued_goes_now(pair: Any) -> None:
    transport, peer, reactor = pair
    write_now(transport, b"frame-1", Server)
    write_now(transport, b"frame-2", Server)
    assert _read_all(peer) == b"frame-1frame-2"
    assert not reactor.writers  # no poll round, nothing left for doWrite
    assert not transport.dataBuffer and not transport._tempDataBuffer


def test_behind_buffered_bytes_it_queues_in_order(pair: Any) -> None:
    transport, peer, reactor = pair
    transport.write(b"earlier")  # Twisted's buffer, waiting for doWrite
    write_now(transport, b"later", Server)
    assert _read_all(peer) == b""
    assert transport in reactor.writers
    transport.doWrite()
    assert _read_all(peer) == b"earlierlater"


def test_what_does_not_fit_waits_for_twisted(pair: Any) -> None:
    transport, peer, reactor = pair
    big = bytes(range(256)) * 40_000  # ~10 MB: more than the socket takes at once
    write_now(transport, big, Server)
    assert transport in reactor.writers  # the rest is Twisted's to send
    write_now(transport, b"tail", Server)  # behind the rest, not before it
    received = b""
    for _ in range(10_000):
        received += _read_all(peer)
        if not (transport.dataBuffer or transport._tempDataBuffer):
            break
        transport.doWrite()
    received += _read_all(peer)
    assert received == big + b"tail"


def test_other_transports_just_write() -> None:
    class Recording:
        def __init__(self) -> None:
            self.written: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.written.append(data)

    transport = Recording()
    write_now(transport, b"frame", Server)
    assert transport.written == [b"frame"]


def test_a_closed_connection_is_left_to_twisted(pair: Any) -> None:
    transport, peer, _reactor = pair
    transport.connected = False
    write_now(transport, b"frame", Server)  # Twisted drops writes once disconnected
    assert _read_all(peer) == b""
