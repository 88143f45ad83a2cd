"""The composition root: one object builds and owns a node process's runtime objects.

:class:`NodeRuntime` holds the packet switch, the link registry and link ownership
(:mod:`links.ownership`), the links supervisor, the recovery sweeps and (eager Celery) the
listener of payments handed over by commands (:mod:`payments.sending.handoff`), with an explicit
:meth:`~NodeRuntime.start` and :meth:`~NodeRuntime.stop`. The accessors the rest of the
code calls (``links.switch.get_switch``, ``links.registry.get``,
``links.supervisor.get_supervisor``, ``payments.recovery.get_recovery``,
``links.edge.current_switch``) are thin delegates to :func:`current` (reached from the
lower layers through ``payments.node.runtime``, named by ``settings.ILP_RUNTIME_PROVIDER``).
The ledger book (``payments.ledger.get_book`` delegates here) is the runtime's too; the
receipt applier stays one per process (``payments.ledger.runtime.get_applier``), closed
with the process's runtime.

Who starts what — never an import, never a guess from ``sys.argv``:

* **Daphne** (``interledger_site.asgi``; also ``manage.py runserver``, which runs Daphne).
  Daphne implements no ASGI lifespan, and a node must dial its parent with no request
  coming in, so "first connection" is not a start signal. Daphne installs Twisted's
  asyncio reactor (``daphne.server``) before it imports the application and runs it only
  when it serves, so :func:`attach_to_reactor` registers ``reactor.callWhenRunning``
  (installs this runtime as the process's and starts it on the serving loop) and a
  ``"before", "shutdown"`` system event trigger that returns a Deferred of
  :meth:`NodeRuntime.stop`: Twisted waits for it on SIGTERM/SIGINT (Daphne's signal
  handlers call ``reactor.stop``) before the loop ends, in the same phase as Daphne's own
  ``kill_all_applications``. A process that imports the application without serving it
  never runs the reactor, so nothing starts. ``ILP_LINKS_AUTOSTART=0`` and
  ``ILP_RECOVERY_AUTOSTART=0`` leave the links or the sweeps off in a serving process.
* **Other ASGI servers** (uvicorn, hypercorn): :class:`RuntimeApplication` answers the
  ASGI ``lifespan`` scope with the same start and stop.
* **Celery** (``interledger_site.celery``): ``worker_process_init`` / ``worker_init``
  install a worker runtime (no links dialled, no sweeps: it reaches links through their
  owners), ``worker_process_shutdown`` / ``worker_shutdown`` close it.
* **Commands, scripts and tests**: the first use of an accessor in a process that never
  installed one gets a passive runtime (its objects are built when asked for; nothing is
  started: no links, no leases, no sweeps). Code that needs more builds a runtime and
  starts it itself. Tests get a fresh one per test (``tests/conftest.py``).

Several runtimes in one process (tests of link ownership): :meth:`NodeRuntime.activated`
makes one current for the code (and the tasks it creates) inside the ``with``; the tasks
:meth:`NodeRuntime.start` creates run with their runtime current.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

from django.conf import settings

from links.limits import build_limiter
from links.ownership import (
    Leases,
    LinkOwnership,
    RedisLeases,
    lease_seconds,
    multiprocess_layer,
)
from links.registry import LinkRegistry

log = logging.getLogger(__name__)

LINKS_FLAG = "ILP_LINKS_AUTOSTART"
RECOVERY_FLAG = "ILP_RECOVERY_AUTOSTART"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]


def _flag_off(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off")


class NodeRuntime:
    """One process's (or one test's) node runtime; see the module docstring.

    ``links``: run the supervisor (dial the ``btp-client`` peers whose leases it gets);
    ``handoff``: listen for payments handed over by commands
    (:mod:`payments.sending.handoff`; a serving process with eager Celery);
    ``owner``: serve an owner channel, so links registered here (BTP children that connect
    to this process) can be owned and reached from other processes (default: ``links``; a
    serving process always is one); ``recovery``: run the recovery sweeps; ``shared``: leases across processes (default: whether the
    channel layer spans processes); ``leases``: the lease store (default Redis at
    ``settings.REDIS_URL``).
    """

    def __init__(
        self,
        *,
        name: str = "node",
        links: bool = False,
        owner: bool | None = None,
        recovery: bool = False,
        handoff: bool = False,
        shared: bool | None = None,
        leases: Leases | None = None,
        lease_s: float | None = None,
    ) -> None:
        from links.supervisor import Supervisor
        from payments.recovery import Recovery
        from payments.sending.handoff import HandoffListener

        self.name = name
        self.links_enabled = links
        self.owner_enabled = links if owner is None else owner
        self.recovery_enabled = recovery
        if shared is None:
            shared = multiprocess_layer()
        if shared and leases is None:
            leases = RedisLeases(str(settings.REDIS_URL))
        self.registry = LinkRegistry()
        self.ownership = LinkOwnership(
            leases if shared else None,
            self.registry.local,
            lease_s=lease_s if lease_s is not None else lease_seconds(),
        )
        self.registry.ownership = self.ownership
        self.supervisor = Supervisor(self.registry)
        self.recovery = Recovery()
        # Per-peer limits (links.limits): in Redis with REDIS_URL, else in this process.
        self.limiter: Any = build_limiter()
        # BTP/2.0-I replay memories and outboxes (links.idempotency, links.btp_link).
        from links.btp_link import PeerOutboxes
        from links.idempotency import build_replay

        self.replay = build_replay()
        self.outboxes = PeerOutboxes()
        # A peer another process took: its replay memory is restored again if it returns.
        self.ownership.on_lost.append(self.replay.forget_restored)
        self.handoff = HandoffListener(name=name) if handoff else None
        self.switch_override: Any = None
        self._switch: Any = None
        self._book: Any = None
        self._book_lock = threading.Lock()
        self._context: contextvars.Context | None = None
        self.started = False
        self.stopped = False

    def __repr__(self) -> str:
        state = "started" if self.started else "stopped" if self.stopped else "idle"
        return f"<NodeRuntime {self.name} {state}>"

    # --- objects ---------------------------------------------------------------------

    @property
    def switch(self) -> Any:
        """The packet switch (``links.switch.PacketSwitch``), built on first use."""
        if self._switch is None:
            from links.switch import build_switch

            self._switch = build_switch(self.registry.get)
        return self._switch

    @property
    def book(self) -> Any:
        """The ledger book (``payments.ledger.BalanceBook``), built on first use (any
        thread: the loop's and ``database_sync_to_async``'s)."""
        book = self._book
        if book is None:
            with self._book_lock:
                if self._book is None:
                    from payments.ledger.runtime import new_book

                    self._book = new_book()
                book = self._book
        return book

    def peek_book(self) -> Any:
        return self._book

    def reset_book(self) -> None:
        """Close the book (its writer commits what it holds) and forget it."""
        with self._book_lock:
            book, self._book = self._book, None
        if book is not None:
            book.close()

    def peek_switch(self) -> Any:
        return self._switch

    def reset_switch(self) -> None:
        switch, self._switch = self._switch, None
        if switch is not None:
            switch.close()

    # --- life cycle ------------------------------------------------------------------

    @contextlib.contextmanager
    def activated(self) -> Iterator[NodeRuntime]:
        """Make this runtime current here (and in tasks created inside)."""
        token = _active.set(self)
        try:
            yield self
        finally:
            _active.reset(token)

    def _own_context(self) -> contextvars.Context:
        if self._context is None:
            with self.activated():
                self._context = contextvars.copy_context()
        return self._context

    async def start(self) -> None:
        """Start what this runtime runs, on the running loop (idempotent): the owner
        channel and lease renewal, the links supervisor, the recovery sweeps."""
        if self.started:
            return
        self.started = True
        self.stopped = False
        context = self._own_context()
        loop = asyncio.get_running_loop()
        if self.owner_enabled or self.links_enabled:
            await loop.create_task(self.ownership.start(), context=context)
        if self.links_enabled:
            context.run(self.supervisor.start)
            # Learned routes and peer/token cache invalidation shared across processes.
            from links import shared

            await loop.create_task(shared.start(self.switch.ccp), context=context)
        if self.recovery_enabled:
            context.run(self.recovery.start)
        if self.handoff is not None:
            try:
                await loop.create_task(self.handoff.start(), context=context)
            except OSError:
                log.exception("payments: cannot listen for handed-off payments")
        log.info(
            "node runtime %s started (links %s, recovery %s, leases %s)",
            self.name,
            "on" if self.links_enabled else "off",
            "on" if self.recovery_enabled else "off",
            "shared" if self.ownership.shared else "local",
        )

    async def stop(self, *, release: bool = True) -> None:
        """Stop everything :meth:`start` started and close the switch and the book.

        ``release=False`` leaves the leases to run out, as a crash would (tests)."""
        if self.stopped:
            return
        self.stopped = True
        self.started = False
        if self.handoff is not None:
            await self.handoff.stop()
        await self.supervisor.stop()
        await self.recovery.stop()
        from links import http_oer, shared

        await shared.stop()
        await http_oer.stop()
        await self.ownership.stop(release=release)
        for peer in self.registry.live_peers():
            for link in self.registry.links_of(peer):
                close = getattr(link, "close", None)
                if close is not None:
                    with contextlib.suppress(Exception):
                        await close()
        self.registry.clear()
        self.reset_switch()
        await _close_limits(self)
        await _close_ledger(self)
        log.info("node runtime %s stopped", self.name)

    def close(self) -> None:
        """Synchronous teardown where no loop runs (a Celery worker, a test fixture)."""
        self.stopped = True
        self.started = False
        self.registry.clear()
        self.reset_switch()
        self.reset_book()
        self.limiter.close()
        self.replay.close()
        self.outboxes.clear()
        leases = self.ownership.leases
        if isinstance(leases, RedisLeases):
            leases.close()


async def _close_limits(runtime: NodeRuntime) -> None:
    for closing in (runtime.limiter, runtime.replay.shared):
        aclose = getattr(closing, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
    runtime.limiter.close()
    runtime.replay.close()
    runtime.outboxes.clear()


async def _close_ledger(runtime: NodeRuntime) -> None:
    """The runtime's book, then (the process's runtime only) the process's applier."""
    from channels.db import database_sync_to_async

    from payments.ledger.runtime import close_applier

    def close() -> None:
        runtime.reset_book()
        if _process is runtime:
            close_applier()

    try:
        await database_sync_to_async(close)()
    except Exception:
        log.exception("closing the ledger book failed")


# --- the current runtime --------------------------------------------------------------------

_active: contextvars.ContextVar[NodeRuntime | None] = contextvars.ContextVar(
    "ilp_node_runtime", default=None
)
_process: NodeRuntime | None = None


def current() -> NodeRuntime:
    """The runtime of the running code: the activated one, else the process's (a passive
    one is made on first use where none was installed)."""
    runtime = _active.get()
    if runtime is not None:
        return runtime
    global _process
    if _process is None:
        _process = NodeRuntime(name="passive")
    return _process


def install(runtime: NodeRuntime | None) -> NodeRuntime | None:
    """Make ``runtime`` the process's; returns the one it replaces."""
    global _process
    previous, _process = _process, runtime
    return previous


def peek() -> NodeRuntime | None:
    return _process


def serving_runtime() -> NodeRuntime:
    """The runtime of a serving (ASGI) process: links and sweeps unless turned off; the
    handoff listener where it runs the payments (eager Celery)."""
    from payments.sending.handoff import handoff_wanted

    return NodeRuntime(
        name=f"server-{os.getpid()}",
        links=not _flag_off(LINKS_FLAG),
        owner=True,
        recovery=not _flag_off(RECOVERY_FLAG),
        handoff=handoff_wanted(),
    )


def worker_runtime() -> NodeRuntime:
    """The runtime of a Celery worker process: owns no links, runs no sweeps."""
    return NodeRuntime(name=f"worker-{os.getpid()}")


def tune_gc_for_serving() -> None:
    """Once a serving process has started (its modules imported, its runtime built): move
    what exists now out of the cyclic garbage collector's sight (``gc.freeze``) and, if
    ``settings.ILP_GC_THRESHOLDS`` says so, change its thresholds.

    Why: the packet path's objects are freed by reference counting (none form cycles), yet
    every collection of the older generations walked the ~160,000 objects of a loaded
    Django process: 13-19 us of the loop thread per payment in a profile, 6-8 us once
    they are frozen. Larger thresholds (10000, 10, 10) cut it to ~1 us in that profile but
    showed no gain end to end (docs/PERFORMANCE.md), so Python's are kept by default.
    """
    gc.freeze()
    thresholds = tuple(getattr(settings, "ILP_GC_THRESHOLDS", ()) or ())
    if thresholds:
        gc.set_threshold(*thresholds)


# --- ASGI ------------------------------------------------------------------------------------


class RuntimeApplication:
    """The ASGI application wrapped with its runtime: the ``lifespan`` scope (servers that
    send it) starts and stops the runtime; everything else goes to ``app``."""

    def __init__(self, app: Asgi, factory: Callable[[], NodeRuntime]) -> None:
        self.app = app
        self.factory = factory
        self.runtime: NodeRuntime | None = None

    def make_runtime(self) -> NodeRuntime:
        """Build this application's runtime and make it the process's (once)."""
        if self.runtime is None:
            self.runtime = self.factory()
            install(self.runtime)
        return self.runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        await self.app(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.make_runtime().start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                tune_gc_for_serving()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.runtime is not None:
                    await self.runtime.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def attach_to_reactor(application: RuntimeApplication) -> bool:
    """Under Daphne: start the runtime when the reactor runs, stop it before it shuts
    down (see the module docstring). ``False`` when no asyncio reactor is installed."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is None:
        return False
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        return False
    from twisted.internet.defer import Deferred

    def started(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("node runtime failed to start", exc_info=task.exception())
        else:
            tune_gc_for_serving()

    def when_running() -> None:
        # Daphne's WebSocket layer is autobahn: its per-frame overheads go before any peer
        # connects (links.consumers.speed_up_autobahn; a no-op for another autobahn).
        from links.consumers import speed_up_autobahn

        speed_up_autobahn()
        runtime = application.make_runtime()
        task = asyncio.ensure_future(runtime.start())
        task.add_done_callback(started)

    def before_shutdown() -> Deferred[None] | None:
        runtime = application.runtime
        if runtime is None:
            return None
        return Deferred.fromFuture(asyncio.ensure_future(runtime.stop()))

    reactor.callWhenRunning(when_running)
    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    return True
