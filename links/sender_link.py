"""How ``payments`` sends a Prepare out without importing ``links`` (the glue of sending).

The import direction is ``ilp`` ← ``payments`` ← ``receivers`` ← ``links``, so the
payments runner (:mod:`payments.sending`) only knows a port (:mod:`payments.sending.port`):
a *sender opener*, ``open_sender(route) -> async context manager yielding a Sender``,
which ``links``' AppConfig wires at start-up (``wire_sender_opener(open_sender)``; tests
may ``payments.sending.set_sender_opener``).

:func:`open_sender` gives one of two senders:

* :class:`PeerSender` (``route.via_peer`` set): straight to that peer's link, bypassing
  routing. The link is, in order: a live link in this process (``registry.local``); for
  a ``btp-client`` peer another process owns (``links.ownership``), a
  :class:`~links.ownership.RemoteLink` to that owner (never a second connection as the
  same account); for one nobody owns, a :class:`~links.btp_client.BtpClient` dialled
  for the duration of the payment (a command in embedded mode); for an ``http-sync``
  peer, an :class:`~links.http_oer.HttpSyncLink`; else, with a Redis channel layer,
  :class:`~links.ownership.RemoteLink` to the process that owns it.
  Otherwise opening fails with ``SendFailed`` (T01). The payments side books the money
  on ``peer_account``.
* :class:`SwitchSender` (no via peer): into this process's packet switch as the local
  source ``payments.sending.SWITCH_SOURCE_NAME`` whose account is the payment's source
  account. The switch routes (our own receivers, or the routing table) and books the
  money itself; :meth:`SwitchSender.source_keys` names the posting keys it uses.

Event loops: a sender works on the loop that calls it. A payment run from a sync view
under Daphne runs on the server's loop (``async_to_sync`` picks it), where the live
links are; Celery workers and commands run their own loop and dial what they need.

Circular payments come back to ``<node>.circular.<token>``:
:func:`register_local_destinations` registers :func:`circular_handler` (which hands them to
``payments.sending.circular.circular_receive``) as the switch's local handler of the
``circular`` segment. The switch the node runtime builds has it (``links.switch``);
:func:`open_sender` also registers it, on the process's switch, so a process that sends
circular payments always takes them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from channels.db import database_sync_to_async
from django.conf import settings

from ilp.oer import UINT64_MAX
from ilp.packet import Prepare, Reply
from links import edge, registry
from links.models import LinkKind
from links.peers import PeerContext, aload_peer_context
from links.switch import PacketSwitch, packet_key, peek_switch, reset_switch
from payments.sending import (
    CIRCULAR_SEGMENT,
    SWITCH_SOURCE_NAME,
    Route,
    SendFailed,
    circular_receive,
)

__all__ = [
    "PeerSender",
    "SwitchSender",
    "circular_handler",
    "open_sender",
    "register_local_destinations",
]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0


def _expiry_timeout(prepare: Prepare) -> float:
    return (prepare.expires_at - datetime.now(UTC)).total_seconds()


def _note_packet_out(peer_name: str) -> None:
    """Count the Prepare on the switch's dashboard counters (when a switch exists)."""
    switch = peek_switch()
    if switch is not None:
        switch.stats.peer(peer_name).packets_out += 1


class PeerSender:
    """Sends through one peer's link (see the module docstring)."""

    def __init__(self, peer: PeerContext, link: registry.OutgoingLink) -> None:
        self.peer = peer
        self.link = link

    @property
    def peer_account(self) -> str:
        return self.peer.account_code

    @property
    def max_packet_amount(self) -> int:
        return self.peer.max_packet_amount

    @property
    def asset(self) -> tuple[str, int]:
        return self.peer.asset_code, self.peer.asset_scale

    def source_keys(self, prepare: Prepare) -> tuple[str, ...]:
        return ()

    async def send(self, prepare: Prepare) -> Reply:
        timeout = _expiry_timeout(prepare)
        if timeout <= 0:
            return registry.expired()
        _note_packet_out(self.peer.name)
        try:
            # Links answer R00 themselves at expiry; this bound is the safety net.
            return await asyncio.wait_for(self.link.send_prepare(prepare), timeout + 1)
        except TimeoutError:
            return registry.expired()
        except Exception as exc:
            log.info("sender: sending to %s failed: %r", self.peer.name, exc)
            return edge.reject("T01", f"failed to send packet: {str(exc)[:200]}")


class SwitchSender:
    """Sends into this process's packet switch as a local source."""

    def __init__(self, route: Route) -> None:
        self.route = route
        self.source = PeerContext(
            name=SWITCH_SOURCE_NAME,
            relation="child",
            account_code=route.source_account,
            address=f"{settings.ILP_ADDRESS}.{SWITCH_SOURCE_NAME}",
            asset_code=route.asset_code,
            asset_scale=route.asset_scale,
            max_packet_amount=UINT64_MAX,
            send_routes=False,
            receive_routes=False,
        )

    @property
    def peer_account(self) -> None:
        return None

    @property
    def max_packet_amount(self) -> int:
        return UINT64_MAX

    @property
    def asset(self) -> tuple[str, int]:
        return self.route.asset_code, self.route.asset_scale

    def source_keys(self, prepare: Prepare) -> tuple[str, ...]:
        """The keys of the switch's source posting: ``<key>`` when one of our receivers
        takes it, ``<key>:in`` when it is forwarded."""
        key = packet_key(SWITCH_SOURCE_NAME, prepare)
        return key, f"{key}:in"

    async def send(self, prepare: Prepare) -> Reply:
        return await edge.handle_prepare(self.source, prepare)


async def _temporary_btp_link(peer: PeerContext, url: str) -> tuple[object, registry.OutgoingLink]:
    from links.btp_client import BtpClient, InvalidBtpUrl

    try:
        client = BtpClient(peer.name, url)
    except InvalidBtpUrl as exc:
        raise SendFailed(f"peer {peer.name}: {exc}") from None
    client.start()
    try:
        await asyncio.wait_for(client.connected.wait(), CONNECT_TIMEOUT_S)
    except TimeoutError:
        await client.stop()
        raise SendFailed(f"cannot connect to peer {peer.name} at its BTP URL") from None
    link = client.link
    if link is None:
        await client.stop()
        raise SendFailed(f"the connection to peer {peer.name} closed at once")
    return client, link


async def _owned_elsewhere(peer_name: str) -> bool:
    """Whether another process of the node owns the peer's link (``links.ownership``)."""
    ownership = registry.current().ownership
    if not ownership.shared:
        return False
    try:
        owner = await ownership.owner_of(peer_name)
    except Exception:
        log.warning("sender: cannot read the owner of %s", peer_name, exc_info=True)
        return False
    return owner is not None and owner != ownership.channel


def _peer_endpoint(name: str) -> tuple[str, str, str, str]:
    from links.selectors import peer_get

    row = peer_get(name=name)
    if row is None:
        return "", "", "", ""
    return row.link, row.url, row.outgoing_token, row.http_profile


@contextlib.asynccontextmanager
async def open_sender(route: Route) -> AsyncIterator[PeerSender | SwitchSender]:
    """The sender for ``route`` (see the module docstring); closes what it opened.

    A switch this call had to build (a command or worker process) is reset on exit when
    no link is left in the process.
    """
    had_switch = peek_switch() is not None
    client: object | None = None
    try:
        if not route.via_peer:
            yield SwitchSender(route)
            return
        peer = await aload_peer_context(route.via_peer)
        if peer is None:
            raise SendFailed(f"no enabled peer {route.via_peer!r}")
        link = registry.local(peer.name)
        if link is None:
            kind, url, token, profile = await database_sync_to_async(_peer_endpoint)(peer.name)
            if kind == LinkKind.BTP_CLIENT and url and await _owned_elsewhere(peer.name):
                link = registry.get(peer.name)  # its owner's link: never a second connection
            elif kind == LinkKind.BTP_CLIENT and url:
                client, link = await _temporary_btp_link(peer, url)
            elif kind == LinkKind.HTTP_SYNC and url:
                from links.http_oer import HttpSyncLink

                link = HttpSyncLink(peer.name, url, token, profile=profile)
            else:
                link = registry.get(peer.name)  # RemoteLink with a Redis channel layer
        if link is None:
            raise SendFailed(
                f"peer {peer.name} has no live link in this process (it dials us: send "
                f"from the serving process, or run with a Redis channel layer)"
            )
        switch = peek_switch()
        if switch is not None:  # a circular payment must come back to this switch too
            register_local_destinations(switch)
        yield PeerSender(peer, link)
    finally:
        if client is not None:
            await client.stop()  # type: ignore[attr-defined]
        if not had_switch and not registry.live_peers():
            reset_switch()


async def circular_handler(
    source: PeerContext, prepare: Prepare, packet_key: str, now: datetime
) -> Reply:
    """``links.switch.LocalHandler`` of ``<node>.circular.…``: the incoming leg of a circular
    payment (the switch has held ``prepare.amount`` on ``source`` under ``packet_key``)."""
    return await circular_receive(
        prepare, source_account=source.account_code, packet_key=packet_key, now=now
    )


def register_local_destinations(switch: PacketSwitch) -> None:
    """Register the local destinations sending needs on ``switch`` (idempotent)."""
    switch.register_local(CIRCULAR_SEGMENT, circular_handler)
