"""The BTP/2.0 WebSocket endpoint (``/btp``): a thin dispatcher around :class:`BtpLink`.

Each binary message goes to the link core (:mod:`links.btp_link`), which authenticates
the peer, serves its requests in their own tasks and registers itself as the peer's
``OutgoingLink``. Text messages are not BTP: the session treats them as unreadable
frames. The route must not sit behind ``AllowedHostsOriginValidator`` (BTP clients send
no ``Origin``).

The consumer does not subscribe to the channel layer itself: cross-process sends
reach the link through the per-peer bridge of :mod:`links.registry`, one listener per
peer rather than one per socket.
"""

from __future__ import annotations

from typing import Any

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer

from links.btp_link import BtpLink

# An alias that is never configured: ``get_channel_layer`` returns ``None`` for it, so
# Channels does not create a channel and a receive loop per socket.
NO_CHANNEL_LAYER = "links.btp.no-channel-layer"


class BtpConsumer(AsyncWebsocketConsumer):  # type: ignore[misc]
    channel_layer_alias = NO_CHANNEL_LAYER

    link: BtpLink

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch minus its per-message thread hop.

        ``AsyncConsumer.dispatch`` runs ``close_old_connections`` in a worker thread
        before every handler; this consumer never touches the database itself (every
        query goes through ``database_sync_to_async``, which does that cleanup), so
        the hop would only cost a thread round trip per frame.
        """
        if message["type"] == "websocket.receive":
            data = message.get("bytes")
            if data is not None:
                await self.link.receive(data)
            elif message.get("text") is not None:
                await self.link.receive_text(message["text"])
            return
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        client = self.scope.get("client") or ("?", 0)
        self.link = BtpLink(
            send=self._send_frame,
            close=self._close_socket,
            role="server",
            label=f"{client[0]}:{client[1]}",
        )
        await self.accept()
        self.link.start()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if bytes_data is not None:
            await self.link.receive(bytes_data)
        elif text_data is not None:
            await self.link.receive_text(text_data)

    async def disconnect(self, code: Any) -> None:
        link = getattr(self, "link", None)
        if link is not None:
            link.connection_lost()

    async def _send_frame(self, frame: bytes) -> None:
        await self.base_send({"type": "websocket.send", "bytes": frame})

    async def _close_socket(self, code: int) -> None:
        await self.close(daphne_close_code(code))


def daphne_close_code(code: int) -> int:
    """Daphne's WebSocket layer (autobahn) lets a server close only with 1000 or
    3000-4999 and silently drops any other code, leaving the socket open: map the rest
    to 1000 (ilp-plugin-btp itself closes without a code)."""
    return code if code == 1000 or 3000 <= code <= 4999 else 1000
