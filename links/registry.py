"""The in-process map of live links, and how other processes reach them.

``register(peer_name, link)`` / ``unregister(peer_name, link)`` / ``get(peer_name)``.
A peer may have several live connections at once (a BTP client reconnecting before
the old socket is noticed dead): the most recently registered one is used, and the
peer counts as down only when its last link is gone (``unregister`` returns ``True``
then, and the transport calls ``get_switch().link_down``).

Cross-process (Redis channel layer only): each registered peer is bridged to the
channel-layer group :func:`group_name` (``link.<peer>``) by one listener task per
peer and process. Another process sends ``{"type": "link.prepare", "prepare": <OER>,
"reply_channel": <its channel>}`` to the group and awaits ``{"type": "link.reply",
"reply": <OER Fulfill/Reject>}`` on its own channel; :class:`RemoteLink` does both.
Presence is kept in the Django cache (``links:live:<peer>``, refreshed every
:data:`PRESENCE_REFRESH_S`), so a process answers T01 at once for a peer that is
connected nowhere instead of waiting for the Prepare to expire. With the in-memory
channel layer there is only one process and no bridge runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from channels.layers import get_channel_layer
from django.conf import settings
from django.core.cache import cache

from ilp.errors import DecodeError
from ilp.packet import Prepare, Reject, Reply, decode_prepare, decode_reply, encode_packet

log = logging.getLogger(__name__)

PRESENCE_REFRESH_S = 10.0
PRESENCE_TTL_S = 30


@runtime_checkable
class OutgoingLink(Protocol):
    """Something the switch can send a Prepare through. Never raises: every failure
    (disconnect, timeout, garbage reply) comes back as a Reject."""

    async def send_prepare(self, prepare: Prepare) -> Reply: ...


_links: dict[str, list[OutgoingLink]] = {}
_bridges: dict[str, asyncio.Task[None]] = {}
_force_bridge = False


def register(peer_name: str, link: OutgoingLink) -> None:
    stack = _links.setdefault(peer_name, [])
    if link in stack:
        stack.remove(link)
    stack.append(link)
    _start_bridge(peer_name)


def unregister(peer_name: str, link: OutgoingLink | None = None) -> bool:
    """Remove ``link`` (every link of the peer when ``None``); ``True`` if none is left."""
    stack = _links.get(peer_name)
    if not stack:
        return False
    if link is None:
        stack.clear()
    elif link in stack:
        stack.remove(link)
    else:
        return False
    if stack:
        return False
    del _links[peer_name]
    _stop_bridge(peer_name)
    return True


def get(peer_name: str) -> OutgoingLink | None:
    """The live link of ``peer_name`` in this process, else a :class:`RemoteLink` when
    other processes may hold it (Redis channel layer), else ``None``."""
    stack = _links.get(peer_name)
    if stack:
        return stack[-1]
    if _is_multiprocess():
        return RemoteLink(peer_name)
    return None


def local(peer_name: str) -> OutgoingLink | None:
    """The live link of ``peer_name`` in this process only."""
    stack = _links.get(peer_name)
    return stack[-1] if stack else None


def links_of(peer_name: str) -> tuple[OutgoingLink, ...]:
    """Every live link of ``peer_name`` in this process, oldest first."""
    return tuple(_links.get(peer_name, ()))


def live_peers() -> list[str]:
    return sorted(_links)


def group_name(peer_name: str) -> str:
    """``link.<peer>``; ``~`` (legal in peer names, not in group names) becomes ``.``."""
    return "link." + peer_name.replace("~", ".")


def _presence_key(peer_name: str) -> str:
    return f"links:live:{peer_name}"


def _is_multiprocess() -> bool:
    if _force_bridge:
        return True
    layers = getattr(settings, "CHANNEL_LAYERS", {})
    backend = layers.get("default", {}).get("BACKEND", "")
    return bool(backend) and "InMemory" not in backend


def _start_bridge(peer_name: str) -> None:
    if not _is_multiprocess() or peer_name in _bridges:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return
    _bridges[peer_name] = loop.create_task(_bridge(peer_name), name=f"link-bridge:{peer_name}")


def _stop_bridge(peer_name: str) -> None:
    task = _bridges.pop(peer_name, None)
    if task is not None:
        task.cancel()


async def _bridge(peer_name: str) -> None:
    """Serve ``link.prepare`` events for ``peer_name`` from other processes."""
    layer = get_channel_layer()
    if layer is None:
        return
    channel = await layer.new_channel()
    group = group_name(peer_name)
    await layer.group_add(group, channel)
    presence = asyncio.get_running_loop().create_task(_keep_presence(peer_name))
    inflight: set[asyncio.Task[None]] = set()
    try:
        while True:
            event = await layer.receive(channel)
            if event.get("type") != "link.prepare":
                continue
            task = asyncio.get_running_loop().create_task(_serve_remote(peer_name, event))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
    finally:
        presence.cancel()
        with contextlib.suppress(Exception):
            await layer.group_discard(group, channel)
        with contextlib.suppress(Exception):
            await cache.adelete(_presence_key(peer_name))


async def _keep_presence(peer_name: str) -> None:
    while True:
        try:
            await cache.aset(_presence_key(peer_name), True, PRESENCE_TTL_S)
        except Exception:  # the cache being down must not take the link down
            log.warning("cannot record presence of %s", peer_name, exc_info=True)
        await asyncio.sleep(PRESENCE_REFRESH_S)


async def _serve_remote(peer_name: str, event: dict[str, Any]) -> None:
    layer = get_channel_layer()
    link = local(peer_name)
    try:
        prepare = decode_prepare(event["prepare"])
    except (DecodeError, KeyError, TypeError):
        return
    if link is None:
        reply: Reply = unreachable(peer_name)
    else:
        reply = await link.send_prepare(prepare)
    if layer is not None and event.get("reply_channel"):
        with contextlib.suppress(Exception):
            await layer.send(
                event["reply_channel"], {"type": "link.reply", "reply": encode_packet(reply)}
            )


def our_address() -> str:
    return str(settings.ILP_ADDRESS)


def unreachable(peer_name: str, message: str = "") -> Reject:
    return Reject("T01", our_address(), message or f"no connection to account. account={peer_name}")


def expired(message: str = "prepare expired before the peer answered") -> Reject:
    return Reject("R00", our_address(), message)


class RemoteLink:
    """Sends through the process that holds the peer's link (channel layer)."""

    def __init__(self, peer_name: str) -> None:
        self.peer_name = peer_name

    async def send_prepare(self, prepare: Prepare) -> Reply:
        layer = get_channel_layer()
        if layer is None:
            return unreachable(self.peer_name)
        try:
            live = await cache.aget(_presence_key(self.peer_name))
        except Exception:
            live = True  # cannot tell: try anyway
        if not live:
            return unreachable(self.peer_name)
        timeout = (prepare.expires_at - datetime.now(UTC)).total_seconds()
        if timeout <= 0:
            return expired()
        channel = await layer.new_channel()
        await layer.group_send(
            group_name(self.peer_name),
            {"type": "link.prepare", "prepare": encode_packet(prepare), "reply_channel": channel},
        )
        try:
            event = await asyncio.wait_for(layer.receive(channel), timeout)
            return decode_reply(event["reply"])
        except TimeoutError:
            return expired()
        except (DecodeError, KeyError, TypeError):
            return Reject("T00", our_address(), "invalid reply from the link's process")
