"""ILP over HTTP ("HTTP-OER", http-oer.md): the endpoints and the client links.

Endpoints (plain async Django views, CSRF-exempt):

* ``GET /ilp`` → ``200 OK`` text (the ilp-plugin-http health check).
* ``POST /ilp`` — **sync**: ``Authorization: Bearer <token>`` (a bare token is accepted
  too, for legacy JS peers; the peer is found by its token among HTTP peers,
  ``ILP-Peer-Name`` tried first); body = OER Prepare; answer ``200``
  ``application/octet-stream`` with the Fulfill or Reject (every ILP outcome is a 200).
  Bad token → ``401 invalid authorization``; body above :data:`MAX_BODY` (the largest
  legal ILP packet) → ``413 request entity too large``; a body that is not an ILP
  Prepare → ``400`` with the decoder's reason.
  With ``Prefer: respond-async`` and ``Request-Id`` (RFC 35 draft 3): ``202`` at once,
  the reply is POSTed later to ``Callback-Url`` (or the peer's ``<url>/ilp``) with the
  same ``Request-Id``. A Fulfill/Reject POSTed here with a ``Request-Id`` is the reply
  to one of our own async requests (``200``; ``400`` if unknown or already answered).
* ``POST /ilp/<request-id>`` — **async, path profile**: a Prepare → ``200`` on receipt,
  processed in the background, the Fulfill/Reject POSTed to the peer's
  ``<url>/ilp/<same id>`` (or ``Callback-Url``); a Fulfill/Reject → the reply to our
  request ``<request-id>``. A ``Request-Id`` header that differs from the path → ``400``.

Async processing is an **in-process asyncio task**, not Celery: the switch and the links
live in the serving process. Idempotence: the request id and its outcome are stored
(``HttpAsyncRequest``) *before* the ``200/202`` is sent, so a repeated POST is answered
again but never processed twice (a different body under a known id → ``409``). The
callback is retried with backoff (0.5 s doubling to 8 s) on 5xx and network errors
until a 2xx, a 4xx (RFC 35: stop), or the Prepare's expiry + 60 s. After a restart the
supervisor resumes owed callbacks (see "Restarts" below).

**Restarts.** The row keeps the Prepare itself. A request whose processing a restart cut
(the process died between storing the request and storing its reply: while the switch
worked on it, while the next hop had it, or between the ledger commit of its Fulfill and
the reply row) is given the outcome the node's books hold, never a second booking:

* **forwarded and fulfilled**: the switch commits ``<packet key>:in`` with the
  fulfillment in its memo when the source is an HTTP-OER-ASYNC peer, atomically with the
  money, so the ledger holds the proof exactly when it holds the payment: the peer gets
  that Fulfill (with empty data: the next hop's data was not kept; a STREAM sender still
  counts the money as delivered);
* **for one of our receivers** (or a registered local handler), booked or not: the
  Prepare runs through the switch again. A receiver's booking is idempotent on the packet
  key and its fulfillment deterministic, so this finishes the work (a Prepare expired by
  now gets the receiver's R00; if it had been booked already, an error is logged for
  reconciliation);
* **forwarded and nothing booked**: Reject, R00 if the Prepare expired, else T00. It is
  never sent on again: the next hop may hold the first copy and could be paid twice. A
  Fulfill that reached the dead process but was not committed, or that the next hop
  sends after the restart (its request id is unknown now: ``400``; with Redis the dead
  process's channel swallows it), is lost to the node, as it is to ilp-connector when it
  dies with packets in flight; the books say unpaid, as the peer is told.

Rows written before the Prepare was kept are answered T00.

Client links (``OutgoingLink``, registered by :func:`sync_http_links`):
:class:`HttpSyncLink` sends the headers ilp-plugin-http 1.6.1 sends
(``ILP-Peer-Name``, ``ILP-Destination``, ``Accept: */*``) with RFC 35's ``Content-Type:
application/octet-stream`` (Rafiki requires it; ilp-plugin-http reads any type); to a peer
whose ``http_profile`` is ``rafiki``, RFC 35's headers alone (no ``ILP-Peer-Name``). It maps
failures (timeout → R00, 401/403 → T00, 413 → F01, other 4xx → F02, 5xx/network → T01,
garbage 200 → T00). :class:`HttpAsyncLink` POSTs to
``<url>/ilp/<uuid>`` (with ``Request-Id`` and ``Prefer: respond-async`` so RFC 35
receivers understand it too), repeating the POST until it is accepted, and waits for
the callback until the Prepare expires.

Several processes (``REDIS_URL`` set; nothing of this in embedded mode):

* **Replies to our async requests** may land on any process behind the load balancer. The
  waiting process stores ``request id → (peer, its own channel name)`` in Redis for the
  Prepare's lifetime (:class:`Waiters`); the process that receives the reply checks the
  peer and hands the reply to the waiter with ``channel_layer.send`` (one process-specific
  channel per process, read by one task); the peer gets its ``200`` from whichever
  process it reached.
* **Incoming async requests are leased** (``HttpAsyncRequest.lease_until``): the process
  that accepted a request holds it for :data:`LEASE_S`, renewing every
  :data:`RENEW_EVERY_S` while it processes it and delivers the callback. Serving processes
  (:func:`start`) look every :data:`RESUME_EVERY_S` for requests whose lease ran out (their
  process stopped) and claim them (``SELECT … FOR UPDATE SKIP LOCKED``): a starting
  process no longer takes over requests other live processes are working on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from channels.db import database_sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from ilp.conditions import fulfillment_matches
from ilp.errors import DecodeError
from ilp.packet import (
    Fulfill,
    Prepare,
    Reject,
    Reply,
    decode_prepare,
    decode_reply,
    encode_packet,
    encode_prepare,
)
from links import activity, edge, registry, services, shared, tasks
from links.models import HttpProfile, LinkKind
from links.peers import PeerContext, aload_peer_context
from payments import outbound

log = logging.getLogger(__name__)

# The largest legal ILP packet (a Reject with maximal fields, ilp-packet.md §2.4).
MAX_BODY = 41997
TEXT = "text/plain; charset=utf-8"
OCTETS = "application/octet-stream"
JS_CONTENT_TYPE = "application/ilp+octet-stream"
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
KEEP_AFTER_EXPIRY = timedelta(seconds=60)
# A Prepare's reply is known within ILP_MAX_HOLD_TIME_MS; an hour bounds its callback retries.
MAX_CALLBACK_LIFETIME = timedelta(hours=1)
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 8.0
LEASE_S = 15.0
RENEW_EVERY_S = 5.0
RESUME_EVERY_S = 5.0
PREPARE, FULFILL, REJECT = 12, 13, 14

_background: set[asyncio.Task[Any]] = set()


def _spawn(coro: Any) -> None:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _text(status: int, body: str) -> HttpResponse:
    return HttpResponse(body, status=status, content_type=TEXT)


def _bearer(request: HttpRequest) -> str:
    header = request.headers.get("Authorization", "").strip()
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return header


async def _authenticate(request: HttpRequest) -> PeerContext | None:
    token = _bearer(request)
    if not token:
        return None
    name = services.cached_http_peer(token)
    if name is not None:
        ctx = await aload_peer_context(name)
        if ctx is not None:
            return ctx
    hint = request.headers.get("ILP-Peer-Name")
    found: PeerContext | None = await database_sync_to_async(services.peer_authenticate_http)(
        token, hint
    )
    return found


def _read_body(request: HttpRequest) -> bytes | HttpResponse:
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return _text(400, "invalid Content-Length")
    if declared > MAX_BODY:
        return _text(413, "request entity too large")
    body = request.body
    if len(body) > MAX_BODY:
        return _text(413, "request entity too large")
    return body


# --- views ---------------------------------------------------------------------------------


@csrf_exempt
async def ilp_endpoint(request: HttpRequest) -> HttpResponse:
    """``/ilp``: sync Prepares, RFC 35 async Prepares and replies, GET health check."""
    if request.method in ("GET", "HEAD"):
        return _text(200, "OK")
    if request.method != "POST":
        return _text(405, "method not allowed")
    ctx = await _authenticate(request)
    if ctx is None:
        return _text(401, "invalid authorization")
    body = _read_body(request)
    if isinstance(body, HttpResponse):
        return body
    request_id = request.headers.get("Request-Id", "").strip()
    kind = body[0] if body else None
    if request_id and kind in (FULFILL, REJECT):
        return await _take_reply(ctx, request_id, body)
    prefer = request.headers.get("Prefer", "").lower()
    if request_id and "respond-async" in prefer:
        if not REQUEST_ID_RE.fullmatch(request_id):
            return _text(400, "invalid Request-Id")
        callback = request.headers.get("Callback-Url", "").strip()
        return await _accept_async(ctx, request_id, body, callback, header_form=True)
    try:
        prepare = decode_prepare(body)
    except DecodeError as exc:
        return _text(400, f"invalid ILP Prepare: {exc.reason}")
    activity.note_packet(ctx.name)
    # Shielded: a client hanging up cancels this view, not the forward (see edge).
    reply = await edge.handle_prepare(ctx, prepare)
    return HttpResponse(encode_packet(reply), content_type=OCTETS)


@csrf_exempt
async def ilp_request(request: HttpRequest, request_id: str) -> HttpResponse:
    """``/ilp/<request-id>``: async Prepares (path profile) and replies to ours."""
    if request.method in ("GET", "HEAD"):
        return _text(200, "OK")
    if request.method != "POST":
        return _text(405, "method not allowed")
    ctx = await _authenticate(request)
    if ctx is None:
        return _text(401, "invalid authorization")
    if not REQUEST_ID_RE.fullmatch(request_id):
        return _text(400, "invalid request id")
    header_id = request.headers.get("Request-Id", "").strip()
    if header_id and header_id != request_id:
        return _text(400, "Request-Id header differs from the path")
    body = _read_body(request)
    if isinstance(body, HttpResponse):
        return body
    kind = body[0] if body else None
    if kind == PREPARE:
        callback = request.headers.get("Callback-Url", "").strip()
        return await _accept_async(ctx, request_id, body, callback, header_form=False)
    if kind in (FULFILL, REJECT):
        return await _take_reply(ctx, request_id, body)
    return _text(400, "body is not an ILP packet")


# --- incoming async Prepares ---------------------------------------------------------------


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.netloc) == (pb.scheme, pb.netloc)


async def _accept_async(
    ctx: PeerContext, request_id: str, body: bytes, callback: str, *, header_form: bool
) -> HttpResponse:
    try:
        prepare = decode_prepare(body)
    except DecodeError as exc:
        return _text(400, f"invalid ILP Prepare: {exc.reason}")
    base, _ = await _endpoint_of(ctx.name)
    if callback:
        if base and not _same_origin(callback, base):
            return _text(400, "Callback-Url must be on the peer's configured origin")
        if not base:
            # The peer's own choice of URL: public addresses only (payments.outbound).
            try:
                await outbound.acheck_url(callback)
            except outbound.UrlRefused as exc:
                return _text(400, f"Callback-Url refused: {exc.message}")
        callback_url = callback
    elif base:
        callback_url = f"{base}/ilp" if header_form else f"{base}/ilp/{request_id}"
    else:
        return _text(400, "no callback URL: send Callback-Url or configure the peer's url")
    # Shielded: once the id is stored, its processing must start even if the client hangs
    # up now (a repeat of the id is answered 202 but never processed again).
    receipt = await asyncio.shield(
        _receive_async(ctx, request_id, body, prepare, callback_url, header_form)
    )
    if receipt.conflict:
        return _text(409, "request id already used with a different body")
    return HttpResponse(status=202 if header_form else 200)


async def _receive_async(
    ctx: PeerContext,
    request_id: str,
    body: bytes,
    prepare: Prepare,
    callback_url: str,
    header_form: bool,
) -> services.AsyncReceipt:
    """Store the request id (a repeat is recognised) and start processing a new one."""
    now = datetime.now(UTC)
    receipt: services.AsyncReceipt = await database_sync_to_async(services.http_async_receive)(
        peer_name=ctx.name,
        request_id=request_id,
        digest=hashlib.sha256(body).digest(),
        callback_url=callback_url,
        received_at=now,
        expires_at=_give_up_at(prepare, now),
        lease_until=now + timedelta(seconds=LEASE_S),
        prepare=body,
    )
    if receipt.new:
        activity.note_packet(ctx.name)
        _hold_lease(ctx.name, request_id)
        _spawn(_process_async(ctx, request_id, prepare, callback_url, header_form, now))
        if tasks.HTTP_ASYNC_PRUNE.due(time.monotonic()):  # rows past their window go
            _spawn(database_sync_to_async(services.http_async_prune)(now=now))
    return receipt


def _give_up_at(prepare: Prepare, received_at: datetime) -> datetime:
    """When the callback of an async request stops being retried (and its row may go):
    :data:`KEEP_AFTER_EXPIRY` after the Prepare's expiry, which counts for at most
    :data:`MAX_CALLBACK_LIFETIME` after receipt (a peer's far-future expiry must neither
    overflow the date arithmetic nor keep us retrying for years)."""
    horizon = min(max(prepare.expires_at, received_at), received_at + MAX_CALLBACK_LIFETIME)
    return horizon + KEEP_AFTER_EXPIRY


async def _process_async(
    ctx: PeerContext,
    request_id: str,
    prepare: Prepare,
    callback_url: str,
    header_form: bool,
    received_at: datetime,
) -> None:
    try:
        reply = await edge.handle_prepare(ctx, prepare, owned=True)  # a background task of ours
        raw = encode_packet(reply)
        try:
            await database_sync_to_async(services.http_async_complete)(
                peer_name=ctx.name, request_id=request_id, reply=raw
            )
        except Exception:
            log.exception("could not store the outcome of %s/%s", ctx.name, request_id)
        await _deliver(ctx.name, request_id, raw, callback_url, _give_up_at(prepare, received_at))
    finally:
        _leased.discard((ctx.name, request_id))


async def _deliver(
    peer_name: str, request_id: str, reply: bytes, callback_url: str, give_up_at: datetime
) -> bool:
    """POST the reply until a 2xx (delivered), a 4xx (refused) or ``give_up_at``.

    Each POST goes through :mod:`payments.outbound` (10 s in all, 64 KiB of answer read).
    The peer's configured origin is the operator's choice, trusted like the Prepares we
    send there; a Callback-Url the peer chose (no configured url) may reach public
    addresses only, unless ``ILP_ALLOW_PRIVATE_URLS``.
    """
    base, token = await _endpoint_of(peer_name)
    trusted = bool(base) and _same_origin(callback_url, base)
    headers = {"Content-Type": OCTETS, "Request-Id": request_id}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    delay = RETRY_FIRST_S
    while True:
        status = 0
        address_refused = False
        try:
            status = await outbound.apost(
                callback_url, content=reply, headers=headers, allow=True if trusted else None
            )
        except httpx.HTTPError as exc:
            address_refused = outbound.refused(exc)
            log.info("callback %s/%s failed: %s", peer_name, request_id, exc)
        now = datetime.now(UTC)
        delivered = 200 <= status < 300
        refused = 400 <= status < 500 or address_refused
        give_up = refused or now + timedelta(seconds=delay) > give_up_at
        with contextlib.suppress(Exception):
            await database_sync_to_async(services.http_async_attempted)(
                peer_name=peer_name,
                request_id=request_id,
                delivered=delivered,
                give_up=give_up and not delivered,
                when=now,
            )
        if delivered:
            return True
        if give_up:
            log.warning("callback %s/%s not delivered (status %s)", peer_name, request_id, status)
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)


async def resume_pending_callbacks() -> int:
    """Claim and deliver every callback still owed whose lease ran out (see the module
    doc): at start-up, and every :data:`RESUME_EVERY_S` once :func:`start` ran. A request
    whose processing was cut is first given its outcome (:func:`_recover`)."""
    now = datetime.now(UTC)
    owed = await database_sync_to_async(services.http_async_interrupted)(
        now=now, lease_until=now + timedelta(seconds=LEASE_S)
    )
    for row in owed:
        if (row.peer_name, row.request_id) in _leased:
            continue  # ours already (a renewal failed): it is being worked on here
        _hold_lease(row.peer_name, row.request_id)
        _spawn(_resume(row))
    if not _resuming:
        # Called at start-up (by the links supervisor): keep resuming lapsed leases.
        start(resume_now=False)
    return len(owed)


async def _resume(row: services.OwedCallback) -> None:
    try:
        reply = row.reply
        if reply is None:
            reply = encode_packet(await _recover(row))
            await database_sync_to_async(services.http_async_complete)(
                peer_name=row.peer_name, request_id=row.request_id, reply=reply
            )
        await _deliver(row.peer_name, row.request_id, reply, row.callback_url, row.expires_at)
    finally:
        _leased.discard((row.peer_name, row.request_id))


async def _recover(row: services.OwedCallback) -> Reply:
    """The outcome of a request whose processing a restart cut (see the module doc):
    the Fulfill the ledger holds, a re-run for our own destinations, else a Reject.
    Never raises."""
    try:
        return await _recover_outcome(row)
    except Exception:
        log.exception("could not recover %s/%s", row.peer_name, row.request_id)
        return edge.reject("T00", "processing interrupted by a restart")


async def _recover_outcome(row: services.OwedCallback) -> Reply:
    if row.prepare is None:  # a row from before the Prepare was kept
        return edge.reject("T00", "processing interrupted by a restart")
    from links.switch import FULFILLMENT_MEMO, packet_key
    from payments.selectors import posting_memos

    prepare = decode_prepare(row.prepare)
    key = packet_key(row.peer_name, prepare)
    booked = await database_sync_to_async(posting_memos)(keys=[f"{key}:in", key])
    memo = booked.get(f"{key}:in")
    if memo is not None:  # forwarded, fulfilled and booked before the restart
        proof = memo.removeprefix(FULFILLMENT_MEMO)
        with contextlib.suppress(ValueError):
            fulfillment = bytes.fromhex(proof)
            if memo.startswith(FULFILLMENT_MEMO) and fulfillment_matches(
                fulfillment, prepare.execution_condition
            ):
                log.info("%s/%s: Fulfill recovered from the ledger", row.peer_name, row.request_id)
                return Fulfill(fulfillment)  # the next hop's data was not kept
        log.error(
            "%s/%s: packet %s was paid but its fulfillment is not in the ledger; "
            "answering T00, reconcile with the peer",
            row.peer_name,
            row.request_id,
            key,
        )
        return edge.reject("T00", "processing interrupted by a restart")
    switch = edge.current_switch()
    is_local = getattr(switch, "is_local", None)
    if key in booked or (is_local is not None and is_local(prepare.destination)):
        # Our own receiver: its booking is idempotent on the packet key and its
        # fulfillment deterministic, so running the Prepare again is safe.
        ctx = await aload_peer_context(row.peer_name)
        reply = (
            await edge.handle_prepare(ctx, prepare, owned=True)
            if ctx is not None
            else edge.reject("T00", "processing interrupted by a restart; peer disabled")
        )
        if key in booked and not isinstance(reply, Fulfill):
            log.error(
                "%s/%s: packet %s was received and booked, but its re-run answers %s; "
                "reconcile with the peer",
                row.peer_name,
                row.request_id,
                key,
                getattr(reply, "code", "?"),
            )
        return reply
    # Forwarded and nothing booked: never sent on again (the next hop may have paid
    # the first copy); the node's books say unpaid, and so does the answer.
    if prepare.expires_at <= datetime.now(UTC):
        return edge.reject("R00", "packet expired while processing was interrupted by a restart")
    return edge.reject("T00", "processing interrupted by a restart; nothing was paid")


# --- leases of incoming async requests --------------------------------------------------------

# (peer, request id) of the requests this process processes or delivers: their leases are
# renewed by the keeper.
_leased: set[tuple[str, str]] = set()
_keeper: asyncio.Task[None] | None = None
_resuming = False


def _hold_lease(peer_name: str, request_id: str) -> None:
    global _keeper
    _leased.add((peer_name, request_id))
    if _keeper is None or _keeper.done() or _keeper.get_loop() is not asyncio.get_running_loop():
        _keeper = asyncio.get_running_loop().create_task(_keep_leases(), name="http-oer-leases")


async def _keep_leases(first_resume_in: float = RESUME_EVERY_S) -> None:
    """Renew our leases; in a serving process (:func:`start`), also resume lapsed ones."""
    loop = asyncio.get_running_loop()
    next_resume = loop.time() + first_resume_in
    while True:
        if _resuming and loop.time() >= next_resume:
            next_resume = loop.time() + RESUME_EVERY_S
            try:
                await resume_pending_callbacks()
            except Exception:
                log.exception("could not resume HTTP-OER-ASYNC callbacks")
        if _leased:
            until = datetime.now(UTC) + timedelta(seconds=LEASE_S)
            try:
                await database_sync_to_async(services.http_async_renew)(
                    keys=sorted(_leased), until=until
                )
            except Exception:
                log.warning("could not renew HTTP-OER-ASYNC leases", exc_info=True)
        elif not _resuming:
            return
        await asyncio.sleep(min(RENEW_EVERY_S, RESUME_EVERY_S))


def start(*, resume_now: bool = True) -> None:
    """A serving process: resume owed callbacks whose lease ran out, now (unless
    ``resume_now`` is false) and every :data:`RESUME_EVERY_S` (on the running loop;
    idempotent). Called at start-up: today through :func:`resume_pending_callbacks`, which
    the links supervisor calls."""
    global _resuming, _keeper
    loop = asyncio.get_running_loop()
    running = _keeper is not None and not _keeper.done() and _keeper.get_loop() is loop
    was_resuming, _resuming = _resuming, True
    if running and was_resuming:
        return
    if running and _keeper is not None:
        _keeper.cancel()  # renewing only: replaced by one that also resumes
    _keeper = loop.create_task(
        _keep_leases(0.0 if resume_now else RESUME_EVERY_S), name="http-oer-leases"
    )


async def stop() -> None:
    """Stop resuming and renewing (requests still held lapse and are resumed elsewhere)."""
    global _resuming, _keeper
    _resuming = False
    keeper, _keeper = _keeper, None
    if keeper is not None and keeper.get_loop() is asyncio.get_running_loop():
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await keeper
    await _waiters.close()


# --- replies to our async requests -----------------------------------------------------------


@dataclass(slots=True)
class _Waiting:
    peer_name: str
    future: asyncio.Future[Reply]


REPLY_MESSAGE = "http_oer.reply"


class Waiters:
    """This process's async requests waiting for their reply (see the module doc).

    One per process (:data:`_waiters`); tests make a second one to stand for another
    process. With Redis, each waiter is also registered under ``ilp:<node>:http-wait:<id>``
    with this process's channel, so that the process the reply reaches can pass it on.
    """

    def __init__(self) -> None:
        self.local: dict[str, _Waiting] = {}
        self.channel = ""
        self._listener: asyncio.Task[None] | None = None
        self._redis: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @staticmethod
    def _key(request_id: str) -> str:
        return f"ilp:{settings.ILP_ADDRESS}:http-wait:{request_id}"

    async def _ready(self) -> Any:
        """The Redis client and our channel's listener on the running loop."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._listener is None or self._listener.done():
            from channels.layers import get_channel_layer

            layer = get_channel_layer()
            assert layer is not None
            self._loop = loop
            self._redis = shared._async_client()
            # The default "specific." prefix: channels_redis reads every process-specific
            # channel of a layer through one list per prefix, and another prefix would wait
            # behind the reader of the first (the link owner's channel) for ever.
            self.channel = await layer.new_channel()
            self._listener = loop.create_task(self._listen(layer, self.channel))
        return self._redis

    async def add(self, request_id: str, waiting: _Waiting, ttl_s: float) -> None:
        self.local[request_id] = waiting
        if shared.enabled():
            client = await self._ready()
            await client.set(
                self._key(request_id),
                f"{waiting.peer_name}\n{self.channel}",
                px=max(int(ttl_s * 1000), 1) + 1000,
            )

    async def remove(self, request_id: str) -> None:
        self.local.pop(request_id, None)
        if shared.enabled() and self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.delete(self._key(request_id))

    async def take(self, ctx: PeerContext, request_id: str, body: bytes) -> HttpResponse:
        """The reply ``body`` from ``ctx`` to our request ``request_id``, wherever it waits."""
        try:
            reply = decode_reply(body)
        except DecodeError as exc:
            return _text(400, f"invalid ILP reply: {exc.reason}")
        waiting = self.local.get(request_id)
        if waiting is not None:
            if waiting.peer_name != ctx.name or waiting.future.done():
                return _text(400, "unknown or already answered request id")
            waiting.future.set_result(reply)
            return HttpResponse(status=200)
        if shared.enabled():
            client = await self._ready()
            found = await client.get(self._key(request_id))
            if found is not None:
                peer_name, _, channel = found.decode().partition("\n")
                if peer_name == ctx.name and channel != self.channel:
                    from channels.layers import get_channel_layer

                    layer = get_channel_layer()
                    assert layer is not None
                    await layer.send(
                        channel,
                        {"type": REPLY_MESSAGE, "id": request_id, "peer": peer_name, "body": body},
                    )
                    return HttpResponse(status=200)
        return _text(400, "unknown or already answered request id")

    async def _listen(self, layer: Any, channel: str) -> None:
        while True:
            try:
                message = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                shared._reraise_cancel()
                log.warning("http-oer: reply channel failed; retrying", exc_info=True)
                await asyncio.sleep(1)
                continue
            if message.get("type") != REPLY_MESSAGE:
                continue
            waiting = self.local.get(str(message.get("id")))
            if waiting is None or waiting.peer_name != message.get("peer"):
                continue
            if waiting.future.done():
                continue
            try:
                waiting.future.set_result(decode_reply(bytes(message["body"])))
            except DecodeError:
                continue

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None and listener.get_loop() is asyncio.get_running_loop():
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None
        self._loop = None


_waiters = Waiters()


async def _take_reply(ctx: PeerContext, request_id: str, body: bytes) -> HttpResponse:
    return await _waiters.take(ctx, request_id, body)


# --- client links ------------------------------------------------------------------------------

_http: httpx.AsyncClient | None = None
_http_loop: asyncio.AbstractEventLoop | None = None


def _client() -> httpx.AsyncClient:
    """One pooled client per event loop (keep-alive connections to every HTTP peer)."""
    global _http, _http_loop
    loop = asyncio.get_running_loop()
    if _http is None or _http_loop is not loop:
        _http = httpx.AsyncClient(
            trust_env=False,
            limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
        )
        _http_loop = loop
    return _http


def our_peer_name() -> str:
    """What we call ourselves in ``ILP-Peer-Name``: our address's last segment."""
    return str(settings.ILP_ADDRESS).rsplit(".", 1)[-1]


def _status_reject(status: int, peer_name: str) -> Reject:
    text = f"failed to send packet: HTTP {status} from {peer_name}"
    if status in (401, 403):
        return edge.reject("T00", text)
    if status == 413:
        return edge.reject("F01", text)
    if 400 <= status < 500:
        return edge.reject("F02", text)
    return edge.reject("T01", text)


def _decode_body(body: bytes, peer_name: str) -> Reply:
    try:
        return decode_reply(body)
    except DecodeError as exc:
        return edge.reject("T00", f"invalid reply from {peer_name}: {exc.reason}")


class HttpSyncLink:
    """HTTP-OER-SYNC towards a peer: one POST per Prepare, the reply in the response."""

    def __init__(
        self, peer_name: str, url: str, token: str, *, profile: str = HttpProfile.INTERLEDGER
    ) -> None:
        self.peer_name = peer_name
        self.url = url
        self.token = token
        self.profile = profile

    def headers(self, prepare: Prepare) -> dict[str, str]:
        """The request's headers in the peer's profile: RFC 35's alone for a Rafiki (raw
        OER, ``Authorization: Bearer``), ilp-plugin-http's naming headers added otherwise."""
        headers = {
            "Authorization": f"Bearer {self.token}",
            # RFC 35's type: Rafiki answers any other with 400; ilp-plugin-http reads any.
            "Content-Type": OCTETS,
        }
        if self.profile == HttpProfile.RAFIKI:
            headers["Accept"] = OCTETS
        else:
            headers["ILP-Peer-Name"] = our_peer_name()
            headers["ILP-Destination"] = prepare.destination
            headers["Accept"] = "*/*"
        return headers

    async def send_prepare(self, prepare: Prepare) -> Reply:
        timeout = (prepare.expires_at - datetime.now(UTC)).total_seconds()
        if timeout <= 0:
            return registry.expired()
        headers = self.headers(prepare)
        try:
            response = await _client().post(
                self.url, content=encode_prepare(prepare), headers=headers, timeout=timeout
            )
        except httpx.TimeoutException:
            return registry.expired()
        except httpx.HTTPError as exc:
            return edge.reject("T01", f"failed to send packet: {exc!r}")
        if response.status_code != 200:
            return _status_reject(response.status_code, self.peer_name)
        return _decode_body(response.content, self.peer_name)


class HttpAsyncLink:
    """HTTP-OER-ASYNC towards a peer (path profile, RFC 35 headers added).

    ``waiters``: where replies are awaited (the process's :data:`_waiters`; tests pass
    another to stand for another process)."""

    def __init__(
        self, peer_name: str, url: str, token: str, *, waiters: Waiters | None = None
    ) -> None:
        self.peer_name = peer_name
        self.base = url.rstrip("/")
        self.token = token
        self.waiters = waiters or _waiters

    async def send_prepare(self, prepare: Prepare) -> Reply:
        loop = asyncio.get_running_loop()
        remaining = (prepare.expires_at - datetime.now(UTC)).total_seconds()
        if remaining <= 0:
            return registry.expired()
        request_id = str(uuid.uuid4())
        waiting = _Waiting(self.peer_name, loop.create_future())
        try:
            await self.waiters.add(request_id, waiting, remaining)
        except Exception as exc:  # Redis unreachable: a reply could not find us
            await self.waiters.remove(request_id)
            return edge.reject("T01", f"failed to send packet: {exc!r}")
        try:
            early = await self._post_until_accepted(request_id, prepare)
            if early is not None:
                return early
            remaining = (prepare.expires_at - datetime.now(UTC)).total_seconds()
            try:
                return await asyncio.wait_for(waiting.future, max(remaining, 0))
            except TimeoutError:
                return registry.expired()
        finally:
            await self.waiters.remove(request_id)

    async def _post_until_accepted(self, request_id: str, prepare: Prepare) -> Reply | None:
        """POST the Prepare (repeated on 5xx/network errors): ``None`` once accepted."""
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Content-Type": OCTETS,
            "Accept": OCTETS,
            "Request-Id": request_id,
            "Prefer": "respond-async",
            "ILP-Peer-Name": our_peer_name(),
        }
        public = str(getattr(settings, "ILP_PUBLIC_URL", "") or "").rstrip("/")
        if public:
            headers["Callback-Url"] = f"{public}/ilp/{request_id}"
        body = encode_prepare(prepare)
        url = f"{self.base}/ilp/{request_id}"
        delay = RETRY_FIRST_S
        while True:
            remaining = (prepare.expires_at - datetime.now(UTC)).total_seconds()
            if remaining <= 0:
                return registry.expired()
            try:
                response = await _client().post(
                    url, content=body, headers=headers, timeout=remaining
                )
            except httpx.TimeoutException:
                return registry.expired()
            except httpx.HTTPError as exc:
                log.info("async POST to %s failed: %s", self.peer_name, exc)
            else:
                status = response.status_code
                if status == 200 and response.content:
                    return _decode_body(response.content, self.peer_name)  # peer chose sync
                if 200 <= status < 300:
                    return None
                if status < 500:
                    return _status_reject(status, self.peer_name)
            await asyncio.sleep(min(delay, max(remaining, 0)))
            delay = min(delay * 2, RETRY_MAX_S)


# --- which HTTP links exist -----------------------------------------------------------------------

_endpoints: dict[str, tuple[str, str]] = {}
_registered: dict[str, tuple[str, str, str, HttpSyncLink | HttpAsyncLink]] = {}


async def _endpoint_of(peer_name: str) -> tuple[str, str]:
    """``(base url, outgoing token)`` of an HTTP peer (cached per process)."""
    hit = _endpoints.get(peer_name)
    if hit is None:
        from links.selectors import peer_get

        peer = await database_sync_to_async(peer_get)(name=peer_name)
        hit = (peer.url.rstrip("/"), peer.outgoing_token) if peer is not None else ("", "")
        _endpoints[peer_name] = hit
    return hit


async def sync_http_links() -> None:
    """Register an ``OutgoingLink`` for every enabled HTTP peer with a URL (and
    ``link_up`` it); unregister the others. Called by the supervisor."""
    from links.selectors import http_peers

    peers = await database_sync_to_async(http_peers)()
    # The profile shapes sync requests only (a Rafiki speaks no async).
    wanted = {
        p.name: (
            p.link,
            p.url,
            p.outgoing_token,
            p.http_profile if p.link == LinkKind.HTTP_SYNC else HttpProfile.INTERLEDGER,
        )
        for p in peers
        if p.url
    }
    _endpoints.clear()
    for name, (kind, url, token, old) in list(_registered.items()):
        if wanted.get(name) != (kind, url, token, getattr(old, "profile", HttpProfile.INTERLEDGER)):
            del _registered[name]
            if registry.unregister(name, old):
                edge.link_down(name)
    for name, (kind, url, token, profile) in wanted.items():
        if name in _registered:
            continue
        ctx = await aload_peer_context(name)
        if ctx is None:
            continue
        link: HttpSyncLink | HttpAsyncLink = (
            HttpAsyncLink(name, url, token)
            if kind == LinkKind.HTTP_ASYNC
            else HttpSyncLink(name, url, token, profile=profile)
        )
        _registered[name] = (kind, url, token, link)
        registry.register(name, link)
        edge.link_up(ctx)


def reset() -> None:
    """Forget registrations, caches and the lease keeper (tests)."""
    global _resuming, _keeper
    _resuming = False
    keeper, _keeper = _keeper, None
    if keeper is not None:
        keeper.cancel()
    for name, (_, _, _, link) in list(_registered.items()):
        registry.unregister(name, link)
    _registered.clear()
    _endpoints.clear()
    _waiters.local.clear()
    _leased.clear()


__all__ = [
    "MAX_BODY",
    "HttpAsyncLink",
    "HttpSyncLink",
    "ilp_endpoint",
    "ilp_request",
    "resume_pending_callbacks",
    "start",
    "stop",
    "sync_http_links",
]
