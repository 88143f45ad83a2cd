"""A real WebSocket server (``websockets``) in front of our ASGI WebSocket app, in-process.

Lets one test run two of our nodes' link ends over real TCP WebSockets: the BTP client
(``links.btp_client``) dials this server, which hands each connection to the Channels
``/btp`` consumer exactly as Daphne would (ASGI ``websocket.*`` events).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from tests.links.btp_helpers import APP


async def _serve(ws: ServerConnection) -> None:
    request = ws.request
    assert request is not None
    path, _, query = request.path.partition("?")
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.raw_items()],
        "client": ws.remote_address[:2],
        "server": ws.local_address[:2],
        "subprotocols": [],
    }
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "websocket.connect"})
    closed = asyncio.Event()

    async def receive() -> dict[str, Any]:
        return await inbox.get()

    async def send(message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            with contextlib.suppress(ConnectionClosed):
                if message.get("bytes") is not None:
                    await ws.send(message["bytes"])
                else:
                    await ws.send(message["text"])
        elif kind == "websocket.close":
            closed.set()
            with contextlib.suppress(ConnectionClosed):
                await ws.close(message.get("code") or 1000)

    app = asyncio.ensure_future(APP(scope, receive, send))
    try:
        async for message in ws:
            if isinstance(message, bytes):
                await inbox.put({"type": "websocket.receive", "bytes": message})
            else:
                await inbox.put({"type": "websocket.receive", "text": message})
    except ConnectionClosed:
        pass
    finally:
        await inbox.put({"type": "websocket.disconnect", "code": 1000})
        with contextlib.suppress(Exception):
            await asyncio.wait_for(app, 5)


@contextlib.asynccontextmanager
async def serve_btp() -> Any:
    """``async with serve_btp() as port:`` — our /btp on 127.0.0.1:port."""
    async with websockets.serve(_serve, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield port
