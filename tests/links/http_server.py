"""A small real HTTP/1.1 server (h11 over asyncio streams) for our ASGI app, in-process.

Used to run HTTP-OER links between two of our nodes over real sockets in one test, and
to capture callbacks. Keep-alive supported; one request at a time per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h11

Asgi = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


async def _call(
    app: Asgi, scope: dict[str, Any], body: bytes
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run one ASGI HTTP request to completion; ``(status, headers, body)``."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    status: list[int] = []
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
            headers.extend(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status[0], headers, b"".join(chunks)


async def _handle(app: Asgi, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data:
                    return
                continue
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):
                continue
            body = b""
            while True:
                part = conn.next_event()
                if part is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                    continue
                if isinstance(part, h11.Data):
                    body += part.data
                    continue
                break  # EndOfMessage
            target = event.target.decode()
            path, _, query = target.partition("?")
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": event.method.decode(),
                "scheme": "http",
                "path": path,
                "raw_path": path.encode(),
                "query_string": query.encode(),
                "headers": [(k.lower(), v) for k, v in event.headers],
                "client": writer.get_extra_info("peername")[:2],
                "server": writer.get_extra_info("sockname")[:2],
            }
            status, headers, payload = await _call(app, scope, body)
            out_headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            out_headers.append((b"content-length", str(len(payload)).encode()))
            writer.write(conn.send(h11.Response(status_code=status, headers=out_headers)))
            writer.write(conn.send(h11.Data(data=payload)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()
    except (ConnectionError, h11.RemoteProtocolError):
        return
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@contextlib.asynccontextmanager
async def serve_http(app: Asgi) -> AsyncIterator[str]:
    """``async with serve_http(app) as base:`` — ``base`` is ``http://127.0.0.1:port``."""
    writers: set[asyncio.StreamWriter] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            await _handle(app, reader, writer)
        finally:
            writers.discard(writer)

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for writer in list(writers):
            writer.close()  # the reader sees EOF and the handler returns
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)
