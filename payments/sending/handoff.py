"""Handing an outgoing payment to the serving process (``manage.py pay``, ``pay_api``).

With eager Celery (the embedded default: SQLite or Postgres, no Redis) there is no
worker: the serving process (Daphne) is the only one with the node's links (its parent's
``btp-client`` connection, BTP children that dialled in). A command that ran a payment
in its own process would have no link to the parent, and ``--via`` would dial a second
connection as the same account, knocking the node's own link off. So the command hands
the payment over:

1. **The row is the truth.** The command creates the outgoing payment in its own process
   (``outgoing_payment_create(start=False)``: validation, reservation, the row), as
   always. Nothing about the payment travels over the wake-up but its id.
2. **The wake-up.** The serving process's runtime (``interledger_site.runtime``) runs a
   :class:`HandoffListener`: a Unix socket in ``ILP_VAR_DIR`` (:func:`socket_path`,
   named after the node's database, mode 0600). The command connects, says ``hello``,
   then ``run <id>``; the listener starts ``outgoing_payment_run`` on the serving loop
   (the payment's lease makes a second runner impossible), answers ``started``, and
   ``done`` with the final status when the run ends. The command follows the row in the
   database meanwhile (progress lines), woken early by ``done``.
3. **If the serving process goes away mid-run** (the connection closes without
   ``done``), the command says so and exits 1: the payment keeps its lease and chunk
   rows, and the node's recovery sweep resumes it when it serves again
   (``payments.recovery``). A command interrupted by the user leaves the run going.

**Whether a node is serving** is decided by connecting, never by the file alone: no file,
or a file nobody listens on (a node killed with ``kill -9`` leaves one; connecting is
refused) means no node serves this database, and the command runs the payment in its
own process (it can still pay our own receivers, or ``--via`` a peer nobody else has
dialled) after saying so on stderr. A socket that accepts but does not answer
``hello`` within :data:`ANSWER_TIMEOUT_S` (a stopped or wedged process) is an error
(:class:`NodeNotAnswering`), reported before any payment is created; the command never
waits on it forever. A node that starts while a live listener holds the path (a second
``make run`` on the same database) leaves it to that one; one that finds a stale file
replaces it.

With a Celery worker (Redis, not eager) no listener runs: commands queue
``payments.send_outgoing_payment`` and the worker reaches the links through their owners
(``links.ownership.RemoteLink``).

The protocol, one JSON object per line: ``{"op": "hello"}`` → ``{"ok": true, "node":
name, "pid": pid}``; ``{"op": "run", "payment": id}`` → ``{"ok": true, "started": true}``
(or ``{"ok": false, "error": ...}``), later ``{"done": status}`` (``null`` when another
runner held the payment; with ``"error"`` when the run stopped on an error of the node's,
the row then stays active for the recovery sweep). One run per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import connections

if TYPE_CHECKING:
    from payments.models_outgoing import OutgoingPayment

__all__ = [
    "ANSWER_TIMEOUT_S",
    "HandoffListener",
    "NoNodeServing",
    "NodeConnection",
    "NodeGone",
    "NodeNotAnswering",
    "RunStopped",
    "connect",
    "follow",
    "handoff_wanted",
    "serving_node",
    "socket_path",
]

log = logging.getLogger(__name__)

ANSWER_TIMEOUT_S = 5.0
FOLLOW_EVERY_S = 0.5
# sun_path is 108 bytes on Linux (104 on the BSDs) including the NUL.
MAX_SOCKET_PATH = 100
MAX_LINE = 4096


class NoNodeServing(Exception):
    """No serving process listens for this database (the reason says why)."""


class NodeNotAnswering(Exception):
    """Something accepted the connection but did not answer in time, or answered
    something that is not the handoff protocol."""


class NodeGone(Exception):
    """The serving process closed the connection before the run ended."""


class RunStopped(Exception):
    """The node's run stopped on an error of the node's (database, ledger writer): the
    payment stays active, for its recovery sweep."""


def handoff_wanted() -> bool:
    """Whether a serving process should listen: only where it is the payments' runner
    (eager Celery, no worker)."""
    from payments.sending.tasks import send_outgoing_payment

    return bool(send_outgoing_payment.app.conf.task_always_eager)


def _database_identity() -> str:
    """What names the node: its database (``ILP_VAR_DIR`` may be shared by nodes on
    different databases, as the test database and ``make run`` are)."""
    db = connections["default"].settings_dict
    name = str(db.get("NAME") or "")
    if "sqlite" in str(db.get("ENGINE", "")) and name and not name.startswith(":"):
        name = os.path.realpath(name)
    return "|".join(str(db.get(key) or "") for key in ("ENGINE", "HOST", "PORT")) + "|" + name


def socket_path() -> Path:
    """``<ILP_VAR_DIR>/node-<hash of the database>.sock``; in the temporary directory when
    that path is too long for a Unix socket."""
    digest = hashlib.sha256(_database_identity().encode()).hexdigest()[:12]
    var = Path(settings.VAR_DIR).resolve()
    path = var / f"node-{digest}.sock"
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    long = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"ilp-node-{long}.sock"


# --- the command's side ----------------------------------------------------------------------


class NodeConnection:
    """A connection to the serving process's listener (blocking, with timeouts)."""

    def __init__(self, sock: socket.socket, path: Path, hello: dict[str, Any]) -> None:
        self.sock = sock
        self.path = path
        self.hello = hello
        self._buffer = bytearray()

    def __enter__(self) -> NodeConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    @property
    def describe(self) -> str:
        return f"node {self.hello.get('node', '?')} (pid {self.hello.get('pid', '?')})"

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next message, ``None`` when none came within ``timeout`` seconds; raises
        :class:`NodeGone` when the connection closed."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(MAX_LINE)
            except TimeoutError:
                return None
            except OSError as exc:
                raise NodeGone(str(exc)) from exc
            if not data:
                raise NodeGone("the connection closed")
            self._buffer += data
            if len(self._buffer) > MAX_LINE:
                raise NodeNotAnswering("an over-long line from the listener")
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        try:
            message = json.loads(line)
        except ValueError:
            raise NodeNotAnswering(f"not the handoff protocol: {line[:80]!r}") from None
        if not isinstance(message, dict):
            raise NodeNotAnswering(f"not the handoff protocol: {line[:80]!r}")
        return message

    def start_run(self, payment_id: int, *, timeout: float | None = None) -> None:
        """Ask the node to run ``payment_id``; returns once it has started the run."""
        timeout = ANSWER_TIMEOUT_S if timeout is None else timeout
        try:
            self.send({"op": "run", "payment": payment_id})
            answer = self.receive(timeout)
        except OSError as exc:
            raise NodeGone(str(exc)) from exc
        if answer is None:
            raise NodeNotAnswering(f"{self.describe} did not start payment {payment_id}")
        if not answer.get("ok"):
            raise NodeNotAnswering(f"{self.describe} refused: {answer.get('error', answer)}")

    def wait_done(self, timeout: float) -> dict[str, Any] | None:
        """Wait up to ``timeout`` for ``done``: the message (``{"done": status}``, status
        ``None`` when another runner held the payment, with ``"error"`` when the run
        stopped on an error of the node's) or ``None`` while the run goes on;
        :class:`NodeGone` when the node went away."""
        message = self.receive(timeout)
        if message is None or "done" not in message:
            return None
        return message


def connect(*, path: Path | None = None, timeout: float | None = None) -> NodeConnection:
    """Connect to the serving process of this node and exchange ``hello``.

    :class:`NoNodeServing` when no process listens (no file, a stale file, not a
    socket); :class:`NodeNotAnswering` when one accepted but gave no valid answer within
    ``timeout`` seconds (default :data:`ANSWER_TIMEOUT_S`)."""
    path = path or socket_path()
    timeout = ANSWER_TIMEOUT_S if timeout is None else timeout
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NoNodeServing(f"no {path.name} in {path.parent}") from None
    if not stat.S_ISSOCK(mode):
        raise NoNodeServing(f"{path} is not a socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(os.fspath(path))
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        raise NoNodeServing(f"{path} is left from a node that is no longer running") from None
    except TimeoutError:
        sock.close()
        raise NodeNotAnswering(f"{path} accepts no connection (a stopped process?)") from None
    except OSError as exc:
        sock.close()
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            raise NoNodeServing(f"{path}: {exc.strerror}") from None
        raise NodeNotAnswering(f"{path}: {exc}") from exc
    connection = NodeConnection(sock, path, {})
    try:
        connection.send({"op": "hello"})
        hello = connection.receive(timeout)
    except (NodeGone, OSError) as exc:
        connection.close()
        raise NodeNotAnswering(f"{path} closed the connection at hello: {exc}") from None
    except NodeNotAnswering:
        connection.close()
        raise
    if hello is None or not hello.get("ok"):
        connection.close()
        raise NodeNotAnswering(
            f"the process listening on {path} did not answer within {timeout:g} s "
            "(stopped or wedged?)"
            if hello is None
            else f"the process listening on {path} answered {hello!r}"
        )
    connection.hello = hello
    return connection


def serving_node(warn: Callable[[str], object]) -> NodeConnection | None:
    """The serving node's connection, or ``None`` when no node serves this database (said
    on ``warn``: the caller then runs the payment itself). :class:`NodeNotAnswering`
    propagates: a command must not pay from its own process beside a node it cannot
    reach."""
    try:
        return connect()
    except NoNodeServing as exc:
        warn(f"no node is serving this database ({exc}): paying from this process")
        return None


def follow(
    payment_id: int,
    *,
    node: NodeConnection | None = None,
    every: float = FOLLOW_EVERY_S,
    on_progress: Callable[[OutgoingPayment], object] | None = None,
) -> OutgoingPayment | None:
    """Read the payment from the database until it is over (``None`` if it is gone),
    calling ``on_progress`` with each read. With ``node`` (a handed-over run's
    connection) its ``done`` ends the wait at once, its going away raises
    :class:`NodeGone` and an error of its run :class:`RunStopped`; without, the row is
    read every ``every`` seconds (a Celery worker's run, another runner's)."""
    from payments.sending.selectors import outgoing_payment_get

    while True:
        payment = outgoing_payment_get(payment_id=payment_id)
        if payment is None:
            return None
        if on_progress is not None:
            on_progress(payment)
        if not payment.is_active:
            return payment
        if node is None:
            time.sleep(every)
            continue
        try:
            done = node.wait_done(every)
        except (NodeGone, NodeNotAnswering) as exc:
            payment = outgoing_payment_get(payment_id=payment_id)
            if payment is not None and not payment.is_active:
                continue  # it ended just before the node went away
            raise NodeGone(str(exc)) from None
        if done is None:
            continue
        if done.get("error"):
            raise RunStopped(str(done["error"]))
        # Over (the next read shows it), or another runner holds it: follow the row.
        node = None


# --- the serving process's side ----------------------------------------------------------------


class HandoffListener:
    """The serving process's end (see the module docstring); started and stopped by
    ``interledger_site.runtime.NodeRuntime`` on the serving loop."""

    def __init__(self, *, name: str = "node", path: Path | None = None) -> None:
        self.name = name
        self._path = path
        self.path: Path | None = None  # set while listening
        self._server: asyncio.AbstractServer | None = None
        self._inode: int | None = None
        self._runs: dict[int, asyncio.Task[Any]] = {}
        self._clients: set[asyncio.Task[Any]] = set()

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        """Listen (idempotent). A path a live listener answers on is left to it."""
        if self._server is not None:
            return
        path = self._path or socket_path()
        if await asyncio.to_thread(_live_listener, path):
            log.warning(
                "payments: another process serves this node's handoff at %s; commands "
                "hand their payments to it",
                path,
            )
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # stale: nobody answered on it
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fspath(path))
            # Owner only, before listen(): nobody can connect until then (no process-wide
            # umask change on a serving loop).
            os.chmod(path, 0o600)
            self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_LINE)
        except BaseException:
            sock.close()
            raise
        self._inode = path.stat().st_ino
        self.path = path
        log.info("payments: handoff listener on %s", path)

    async def stop(self) -> None:
        """Stop listening, remove the socket file (if still ours) and cancel the runs
        started here (a cancelled run keeps its lease; recovery resumes it later)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in [*self._clients, *self._runs.values()]:
            task.cancel()
        for task in [*self._clients, *self._runs.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._clients.clear()
        self._runs.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        path, self.path = self.path, None
        if path is not None:
            with contextlib.suppress(OSError):
                if path.stat().st_ino == self._inode:
                    path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            await self._converse(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the command went away, or sent garbage: nothing to keep
        finally:
            if task is not None:
                self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _converse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def answer(message: dict[str, Any]) -> None:
            writer.write(json.dumps(message).encode() + b"\n")
            await writer.drain()

        while line := await reader.readline():
            try:
                request = json.loads(line)
                op = request["op"]
            except (ValueError, TypeError, KeyError):
                await answer({"ok": False, "error": "send one JSON object with 'op' per line"})
                return
            if op == "hello":
                await answer({"ok": True, "node": self.name, "pid": os.getpid()})
            elif op == "run":
                payment_id = request.get("payment")
                if not isinstance(payment_id, int) or isinstance(payment_id, bool):
                    await answer({"ok": False, "error": "'payment' must be an integer id"})
                    return
                run = self._run(payment_id)
                await answer({"ok": True, "started": True})
                # The run goes on if the command goes away: shielded from this task.
                try:
                    done = await asyncio.shield(run)
                except Exception as exc:  # the database or the writer: the row stays active
                    await answer({"done": None, "error": str(exc)[:500] or repr(exc)})
                    return
                await answer({"done": done})
                return
            else:
                await answer({"ok": False, "error": f"unknown op {op!r}"})
                return

    def _run(self, payment_id: int) -> asyncio.Task[str | None]:
        """The run of ``payment_id`` on this loop (one per payment here: a second ask
        waits for the same run)."""
        running = self._runs.get(payment_id)
        if running is not None and not running.done():
            return running
        task = asyncio.ensure_future(_run_payment(payment_id))
        self._runs[payment_id] = task

        def finished(done: asyncio.Task[Any]) -> None:
            if self._runs.get(payment_id) is done:
                del self._runs[payment_id]
            if not done.cancelled() and done.exception() is not None:
                log.error(
                    "payments: handed-off payment %s failed", payment_id, exc_info=done.exception()
                )

        task.add_done_callback(finished)
        return task


async def _run_payment(payment_id: int) -> str | None:
    from payments.sending.services import outgoing_payment_run

    payment = await outgoing_payment_run(payment_id=payment_id)
    return None if payment is None else str(payment.status)


def _live_listener(path: Path) -> bool:
    try:
        with connect(path=path, timeout=1.0):
            return True
    except (NoNodeServing, NodeNotAnswering):
        return False
