"""``python -m interledger_site.serve``: Daphne on uvloop's loop (or asyncio's), and Twisted's
reactor working on it. Each case runs in a child interpreter: which loop Daphne gets is decided
when ``daphne.server`` is first imported, once per process."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from interledger_site.serve import LoopChoiceError, loop_choice

ROOT = Path(__file__).resolve().parents[2]

# Makes ``import uvloop`` fail in the child, as on a machine without it.
NO_UVLOOP = "import sys; sys.modules['uvloop'] = None\n"


def child(code: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_loop_choice() -> None:
    assert loop_choice({}) == "auto"
    assert loop_choice({"ILP_EVENT_LOOP": ""}) == "auto"
    assert loop_choice({"ILP_EVENT_LOOP": " UVLOOP "}) == "uvloop"
    assert loop_choice({"ILP_EVENT_LOOP": "asyncio"}) == "asyncio"
    with pytest.raises(LoopChoiceError, match="ILP_EVENT_LOOP='libuv'"):
        loop_choice({"ILP_EVENT_LOOP": "libuv"})


WHICH_LOOP = """
    import asyncio
    from interledger_site.serve import import_daphne_server
    import os
    kind = import_daphne_server(os.environ)
    import daphne.server
    from twisted.internet import reactor
    assert reactor._asyncioEventloop is daphne.server.twisted_loop
    later = asyncio.new_event_loop()  # other code's loops: asyncio's own again
    print(kind, type(daphne.server.twisted_loop).__module__, type(later).__module__)
"""


@pytest.mark.parametrize(
    ("setting", "hidden", "expected"),
    [
        ("", False, "uvloop uvloop asyncio.unix_events"),
        ("uvloop", False, "uvloop uvloop asyncio.unix_events"),
        ("asyncio", False, "asyncio asyncio.unix_events asyncio.unix_events"),
        ("", True, "asyncio asyncio.unix_events asyncio.unix_events"),
        ("asyncio", True, "asyncio asyncio.unix_events asyncio.unix_events"),
    ],
)
def test_daphne_gets_the_loop_asked_for(setting: str, hidden: bool, expected: str) -> None:
    pytest.importorskip("uvloop")
    code = (NO_UVLOOP if hidden else "") + textwrap.dedent(WHICH_LOOP)
    assert child(code, {"ILP_EVENT_LOOP": setting}) == expected


def test_uvloop_required_but_missing_refuses_to_start() -> None:
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "ILP_EVENT_LOOP": "uvloop"}
    done = subprocess.run(
        [sys.executable, "-c", NO_UVLOOP + "from interledger_site.serve import main; main([])"],
        env=environ,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "ILP_EVENT_LOOP=uvloop but uvloop is not installed" in done.stderr


def test_too_late_to_choose_is_an_error() -> None:
    pytest.importorskip("uvloop")
    code = """
        import os
        import daphne.server  # asyncio's loop, made before the launcher could choose
        from interledger_site.serve import LoopChoiceError, import_daphne_server
        try:
            import_daphne_server({})
        except LoopChoiceError as exc:
            print(exc)
        print(import_daphne_server({"ILP_EVENT_LOOP": "asyncio"}))
    """
    assert child(code).splitlines() == [
        "daphne.server was imported already, on the asyncio loop",
        "asyncio",
    ]


# What the node asks of Twisted's reactor and of the loop under it: timers, calls from other
# threads, the thread pool and the loop's executor, TCP both ways (add_reader/add_writer), an
# asyncio task, and a "before shutdown" trigger waiting on a future.
REACTOR_CHECK = """
    import asyncio, os, threading
    from interledger_site.serve import import_daphne_server
    print(import_daphne_server(os.environ))
    from twisted.internet import defer, protocol, reactor, threads

    seen = []

    class Echo(protocol.Protocol):
        def dataReceived(self, data):
            self.transport.write(data.upper())

    class Client(protocol.Protocol):
        def connectionMade(self):
            self.got = b""
            self.transport.write(b"x" * 300_000)  # more than one write of the socket

        def dataReceived(self, data):
            self.got += data
            if len(self.got) == 300_000:
                seen.append("tcp " + str(self.got == b"X" * 300_000))
                self.transport.loseConnection()

    async def asyncio_side():
        loop = asyncio.get_running_loop()
        seen.append("executor " + str(await loop.run_in_executor(None, lambda: 6 * 7)))
        await asyncio.sleep(0.01)
        seen.append("sleep")

    def from_thread():
        reactor.callFromThread(seen.append, "callFromThread")

    def start():
        port = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
        protocol.ClientCreator(reactor, Client).connectTCP("127.0.0.1", port.getHost().port)
        reactor.callLater(0.01, seen.append, "callLater")
        threading.Thread(target=from_thread).start()
        threads.deferToThread(lambda: "deferToThread").addCallback(seen.append)
        asyncio.ensure_future(asyncio_side())
        reactor.callLater(1.0, reactor.stop)

    async def stopping():
        await asyncio.sleep(0.01)
        seen.append("before shutdown")

    asyncio.set_event_loop(reactor._asyncioEventloop)  # as Daphne's Server.run does
    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: defer.Deferred.fromFuture(asyncio.ensure_future(stopping()))
    )
    reactor.run(installSignalHandlers=False)
    print(sorted(seen))
"""


@pytest.mark.parametrize("setting", ["uvloop", "asyncio"])
def test_twisted_reactor_works_on_the_loop(setting: str) -> None:
    if setting == "uvloop":
        pytest.importorskip("uvloop")
    kind, seen = child(REACTOR_CHECK, {"ILP_EVENT_LOOP": setting}).splitlines()
    assert kind == setting
    assert seen == str(
        sorted(
            [
                "before shutdown",
                "callFromThread",
                "callLater",
                "deferToThread",
                "executor 42",
                "sleep",
                "tcp True",
            ]
        )
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["", "asyncio"])
def test_the_node_serves_btp_under_the_launcher_and_stops_on_sigterm(
    setting: str, tmp_path: Path
) -> None:
    """The whole node through ``python -m interledger_site.serve``: HTTP, a BTP session (auth,
    then an IL-DCP request answered with a Fulfill) and a clean stop on SIGTERM (the
    runtime's shutdown trigger ran)."""
    from websockets.sync.client import connect

    from ilp.btp import (
        BtpResponse,
        BtpType,
        auth_message,
        decode_btp,
        encode_btp,
        encode_ilp_frame,
        find_entry,
    )
    from ilp.conditions import PEER_CONDITION
    from ilp.packet import Fulfill, Prepare, decode_reply, encode_packet

    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update(
        {
            "DATABASE_URL": f"sqlite:///{tmp_path / 'node.sqlite3'}",
            "ILP_VAR_DIR": str(tmp_path),
            "ILP_ADDRESS": "test.serve",
            "PYTHONPATH": str(ROOT),
            "DJANGO_DEBUG": "0",
            "ILP_EVENT_LOOP": setting,
            "LOG_LEVEL": "INFO",
        }
    )
    for args in (
        ["migrate", "-v", "0"],
        ["add_peer", "alice", "--relation", "child", "--link", "btp-server", "--token", "tok"],
    ):
        subprocess.run(
            [sys.executable, "manage.py", *args], env=env, cwd=ROOT, check=True, timeout=120,
            capture_output=True,
        )  # fmt: skip
    port = free_port()
    node = subprocess.Popen(
        [sys.executable, "-m", "interledger_site.serve", "-b", "127.0.0.1", "-p", str(port),
         "interledger_site.asgi:application"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            assert node.poll() is None, node.stderr.read() if node.stderr else ""
            try:
                ws = connect(f"ws://127.0.0.1:{port}/btp", open_timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the node did not start"
                time.sleep(0.2)
        with ws:
            rid = random.getrandbits(32)
            ws.send(encode_btp(auth_message(rid, "alice", "tok")))
            assert isinstance(decode_btp(ws.recv(timeout=10)), BtpResponse)
            ildcp = Prepare(
                0, datetime.now(UTC) + timedelta(seconds=10), PEER_CONDITION, "peer.config"
            )
            ws.send(encode_ilp_frame(BtpType.MESSAGE, rid + 1 & 0xFFFFFFFF, encode_packet(ildcp)))
            reply = decode_btp(ws.recv(timeout=10))
            assert isinstance(reply, BtpResponse) and reply.request_id == rid + 1 & 0xFFFFFFFF
            entry = find_entry(reply, "ilp")
            assert entry is not None
            assert isinstance(decode_reply(entry.data), Fulfill)
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(20)
        except subprocess.TimeoutExpired:
            node.kill()
            raise
    err = node.stderr.read() if node.stderr else ""
    kind = "asyncio" if setting == "asyncio" else "uvloop"
    assert f"interledger_site.serve: Daphne on the {kind} event loop" in err
    assert re.search(r"node runtime \S+ stopped", err), err
