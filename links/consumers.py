"""The BTP/2.0 WebSocket consumer (filled by the links work)."""

from __future__ import annotations

from channels.generic.websocket import AsyncWebsocketConsumer


class BtpConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.close()
