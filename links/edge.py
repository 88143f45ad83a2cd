"""What every transport needs at the edge: the switch, our address, edge Rejects.

``current_switch()`` is the one place transports get the packet switch from: the current
runtime's (``interledger_site.runtime``), or a double a test put in with
:func:`override_switch` (kept on the runtime, so a fresh runtime has none).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from django.conf import settings

from ilp.packet import Prepare, Reject, Reply
from interledger_site import metrics
from links.limits import Limiter, Slot
from links.peers import PeerContext
from payments.node import runtime as _runtime

log = logging.getLogger(__name__)


class Switch(Protocol):
    async def handle_prepare(self, source: PeerContext, prepare: Prepare) -> Reply: ...

    def link_up(self, source: PeerContext) -> None: ...

    def link_down(self, peer_name: str) -> None: ...


def override_switch(switch: Switch | None) -> None:
    """Put a switch double on the current runtime (``None``: its own switch again)."""
    from payments.node import runtime

    runtime().switch_override = switch


def current_switch() -> Switch:
    rt = _runtime()  # once per packet: the module's import, not one in the function
    override: Switch | None = rt.switch_override
    if override is not None:
        return override
    switch: Switch = rt.switch
    return switch


def our_address() -> str:
    return str(settings.ILP_ADDRESS)


def reject(code: str, message: str, data: bytes = b"") -> Reject:
    """A Reject triggered by this node (message cut to ILP's 8191-byte limit)."""
    return Reject(code, our_address(), message[:8191], data)


async def handle_prepare(source: PeerContext, prepare: Prepare, *, owned: bool = False) -> Reply:
    """``switch.handle_prepare`` that never raises (a crash becomes T00).

    A forward is the node's, not the caller's: once the switch has the Prepare, its
    outcome is recorded (Fulfill: postings committed; Reject or expiry: holds released)
    even if the caller is cancelled, e.g. Django cancelling the view of an HTTP client
    that hung up. The switch call then runs in a task of its own that the caller's
    cancellation does not reach (:func:`in_flight` lists them). ``owned=True`` skips that
    task (~10 us per packet) for a caller that already runs in a task the node owns and
    never cancels (a BTP link's per-request task, HTTP-OER async's background task).

    First the peer's limits (:mod:`links.limits`, the runtime's limiter: in Redis, batched
    per loop iteration, when the node has several processes): over one, the T05/T04 Reject.
    """
    limiter: Limiter = _runtime().limiter
    slot = await limiter.admit_prepare(
        source.name, source.limits, prepare.amount, prepare.expires_at
    )
    if type(slot) is tuple:
        refused = reject(*slot)
        metrics.packet_handled(source, prepare.amount, refused, started=False)
        return refused
    assert isinstance(slot, Slot)
    if owned:
        current = asyncio.current_task()  # None: not in a task (cannot be cancelled either)
        if current is None:
            return await _call_switch(source, prepare, limiter, slot)
        _in_flight.add(current)
        try:
            return await _call_switch(source, prepare, limiter, slot)
        finally:
            _in_flight.discard(current)
    task = asyncio.get_running_loop().create_task(_call_switch(source, prepare, limiter, slot))
    _in_flight.add(task)
    task.add_done_callback(_in_flight.discard)
    return await asyncio.shield(task)


async def _call_switch(
    source: PeerContext, prepare: Prepare, limiter: Limiter, slot: Slot
) -> Reply:
    metrics.prepare_started()
    reply: Reply | None = None
    try:
        reply = await current_switch().handle_prepare(source, prepare)
        return reply
    except Exception:
        log.exception("switch failed on a Prepare from %s", source.name)
        reply = reject("T00", "internal error")
        return reply
    finally:
        limiter.release_slot(slot)  # the reply is known: its in-flight slot is free
        metrics.packet_handled(source, prepare.amount, reply)


# The tasks running a switch call: the shielded ones and the owned callers.
_in_flight: set[asyncio.Task[Any]] = set()


def in_flight() -> set[asyncio.Task[Any]]:
    """The tasks with a switch call in progress (whether or not their caller still waits)."""
    return set(_in_flight)


async def drain() -> None:
    """Wait until every switch call in progress has finished (shutdown, tests); an owned
    caller's task is waited for to its end (its reply sent)."""
    loop = asyncio.get_running_loop()
    while mine := {t for t in _in_flight if t.get_loop() is loop and not t.done()}:
        await asyncio.wait(mine)


def link_up(source: PeerContext) -> None:
    try:
        current_switch().link_up(source)
    except Exception:
        log.exception("link_up(%s) failed", source.name)


def link_down(peer_name: str) -> None:
    try:
        current_switch().link_down(peer_name)
    except Exception:
        log.exception("link_down(%s) failed", peer_name)
