"""Live updates: "money arrived for this tag" through the channel layer.

The hot path (:mod:`receivers.psk2_receiver`) calls :func:`notify_tag` after the receipt of
a tagged address is durable. It does not wait: the ``group_send`` runs as a background
task, so the Fulfill is never delayed by the channel layer (with Redis, one round trip).
Listeners (the monetized-page WebSocket, :mod:`receivers.consumers`) join
:func:`tag_group` and, on a ``tag.received`` event, re-read the total from the database:
the event says *that* something arrived, the receipts say *how much* (an event can be
lost; the consumers also re-read on a slow timer).

Untagged addresses (plain SPSP, the load path) never notify.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

EVENT_TYPE = "tag.received"
_tasks: set[asyncio.Task[None]] = set()


def tag_group(tag: bytes) -> str:
    """The channel-layer group of a 16-byte tag (``ilp-tag.<hex>``)."""
    return f"ilp-tag.{tag.hex()}"


def notify_tag(tag: bytes) -> None:
    """Tell the listeners of ``tag`` that a receipt was recorded (fire and forget).

    Call from a running event loop; does nothing (but log) without one or without a
    channel layer. Never raises.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        logger.debug("notify_tag outside an event loop: skipped")
        return
    task = loop.create_task(_send(tag_group(tag), {"type": EVENT_TYPE, "tag": tag.hex()}))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def notify_tag_async(tag: bytes) -> None:
    """:func:`notify_tag`, awaited (services and tests that want it sent before going on)."""
    await _send(tag_group(tag), {"type": EVENT_TYPE, "tag": tag.hex()})


async def _send(group: str, message: dict[str, Any]) -> None:
    try:
        layer = get_channel_layer()
        if layer is not None:
            await layer.group_send(group, message)
    except Exception:
        logger.warning("live: could not notify %s", group, exc_info=True)
