"""Sans-IO BTP/2.0 sessions: bytes in, typed events out (``shared/spec/btp.md`` §3-§7).

A session owns the protocol rules of one WebSocket and nothing else: no socket, no clock,
no randomness, no database. The transport feeds every binary message to
:meth:`receive_frame` together with ``now`` and acts on the returned events, in order:

* :class:`SendFrame` - write these bytes to the socket;
* :class:`CloseConnection` - close the socket (the session is already closed);
* :class:`AuthRequested` - (server without a callback) check the credentials, then call
  :meth:`BtpServerSession.accept_auth` or :meth:`BtpServerSession.reject_auth`;
* :class:`Authenticated` - the handshake is over, requests may flow both ways;
* :class:`IlpRequest`, :class:`SideProtocolRequest`, :class:`TransferRequest` - the peer
  asks something; answer each exactly once with :meth:`respond_ilp`, :meth:`respond` or
  :meth:`respond_error`, which return the frame to send;
* :class:`IlpReply`, :class:`ReplyReceived`, :class:`RequestFailed` - the outcome of a
  request we sent with :meth:`send_ilp`, :meth:`send_message` or :meth:`send_transfer`.

What happens to each incoming frame is decided by one table per role, keyed by
``(state, kind of frame)`` (:data:`SERVER_TABLE`, :data:`CLIENT_TABLE`), as in h11.

The rules, and where they come from:

* Before authentication nothing is accepted (btp.md §3 and the ``handshake`` table of
  ``btp.json``): a frame that is not a valid auth Message gets Error F00
  ``NotAcceptedError`` with ilp-plugin-btp's text, then the connection is closed. An
  unparseable first frame gets no reply at all, only the close (RFC 23: never answer
  what cannot be read). Replies (Response/Error) are never answered either.
* After authentication a bad frame does not end the link: an unreadable request gets
  Error F01 ``InvalidFieldsError`` and an unknown type Error F00, both with the frame's
  request id when its 5-byte header is readable (else 0), so the peer's pending request
  fails fast instead of timing out. Never a Response.
* Every request gets exactly one reply; a reply for no pending request is ignored.
* BTP/2.0-I (btp.md §7) is active when both sides put ``btp_idempotent`` in the
  handshake and a :class:`ResponderMemory` is given: a repeated request is answered from
  the memory, byte for byte, and is not handed to the application again.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum, IntEnum, auto
from typing import Final, TypeAlias

from ilp.btp import (
    ILP,
    AuthRejected,
    AuthRequest,
    BtpError,
    BtpErrorCode,
    BtpMessage,
    BtpPacket,
    BtpResponse,
    BtpTransfer,
    BtpType,
    ProtocolData,
    auth_message,
    auth_response,
    btp_error,
    decode_btp,
    encode_btp,
    encode_ilp_frame,
    find_entry,
    offers_idempotent,
    peek_header,
    peek_ilp_frame,
    read_auth,
)
from ilp.errors import DecodeError, IlpError
from ilp.times import saturating_add

__all__ = [
    "CLIENT_TABLE",
    "SERVER_TABLE",
    "Admission",
    "AuthRequested",
    "Authenticated",
    "BtpClientSession",
    "BtpServerSession",
    "BtpStateError",
    "CloseConnection",
    "Event",
    "FrameKind",
    "IlpReply",
    "IlpRequest",
    "MemoryRecord",
    "ReplyReceived",
    "RequestFailed",
    "ResponderMemory",
    "SendFrame",
    "SideProtocolRequest",
    "State",
    "TransferRequest",
    "Verdict",
]


class BtpStateError(IlpError):
    """The local side misused a session (answered twice, reused a pending id, sent
    before authentication...). A bug in the caller, never caused by the peer."""


# --- events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendFrame:
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseConnection:
    reason: str


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Handshake done. ``idempotent``: BTP/2.0-I is active on this connection."""

    username: str
    idempotent: bool


@dataclass(frozen=True, slots=True)
class AuthRequested:
    """Server without an ``authenticate`` callback: check these credentials, then call
    :meth:`BtpServerSession.accept_auth` or :meth:`BtpServerSession.reject_auth`."""

    request_id: int
    auth: AuthRequest


@dataclass(frozen=True, slots=True)
class IlpRequest:
    """A Message with an ``ilp`` entry: answer with :meth:`respond_ilp` (Fulfill/Reject)."""

    request_id: int
    ilp: bytes


@dataclass(frozen=True, slots=True)
class SideProtocolRequest:
    """A Message without ``ilp``: answer with :meth:`respond` (empty unless implemented)."""

    request_id: int
    packet: BtpMessage


@dataclass(frozen=True, slots=True)
class TransferRequest:
    request_id: int
    packet: BtpTransfer

    @property
    def amount(self) -> int:
        return self.packet.amount


@dataclass(frozen=True, slots=True)
class IlpReply:
    """The ``ilp`` entry of the Response to our :meth:`send_ilp` (a Fulfill or Reject)."""

    request_id: int
    ilp: bytes


@dataclass(frozen=True, slots=True)
class ReplyReceived:
    """The Response to our :meth:`send_message` or :meth:`send_transfer`."""

    request_id: int
    packet: BtpResponse


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """Our request got an Error, an unreadable reply, a Response without ``ilp`` to an
    ILP request, or the session closed first. ``error`` is the Error frame if any."""

    request_id: int
    reason: str
    error: BtpError | None = None


Event: TypeAlias = (
    SendFrame
    | CloseConnection
    | AuthRequested
    | Authenticated
    | IlpRequest
    | SideProtocolRequest
    | TransferRequest
    | IlpReply
    | ReplyReceived
    | RequestFailed
)


# --- BTP/2.0-I responder memory --------------------------------------------------------


class Verdict(Enum):
    NEW = auto()  # first sight: process it
    IN_PROGRESS = auto()  # a copy is being processed: its reply will go out
    REPLAY = auto()  # done: send the stored reply bytes
    CONFLICT = auto()  # same id, different frame: Error F05 DuplicateIdError
    FULL = auto()  # no room without forgetting a live entry: Error T00


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    reply: bytes | None = None


@dataclass(slots=True)
class MemoryRecord:
    """One remembered request. ``reply is None`` while it is in progress.

    Mutable on purpose: the memory completes it in place. The Django side persists
    these (:meth:`ResponderMemory.records`, :meth:`ResponderMemory.restore`).
    """

    account: str
    request_id: int
    digest: bytes
    received_at: datetime
    keep_until: datetime
    reply: bytes | None = None


@dataclass(slots=True)
class _AccountMemory:
    """One account's share of a :class:`ResponderMemory`, oldest first."""

    quota: int
    records: OrderedDict[int, MemoryRecord]
    swept_at: datetime | None = None


class ResponderMemory:
    """The dedupe table of a BTP/2.0-I responder (btp.md §7.3-§7.4), in memory.

    Keyed by ``(account, request id)`` and holding the sha256 of the request frame, so
    that a repeat is recognised and a reused id with other content is refused. A done
    entry is kept at least ``retention`` after it was received and ``grace`` after its
    deadline (a Prepare's expiry; a Transfer passes ``now + transfer_retention``), and
    never more than ``max_retention`` after it was answered: a peer's far-future
    deadline neither overflows nor keeps an entry for ever.

    **Quotas.** Each account has its own share: at most its quota of entries (in
    progress or done; :meth:`set_quota`, else ``default_quota``). An account at its
    quota first loses its own entries past their window; entries still inside their
    window are never dropped, and its new request gets ``Verdict.FULL``. One account
    filling its share never affects another's.

    An entry still in progress after ``abandon_after`` is taken as abandoned (its
    connection died before the application answered) and forgotten, so that a retry
    is processed instead of waiting forever; keep it well above any Prepare's lifetime.

    Not thread-safe; one per process (or per event loop), shared by all sessions so
    that it survives reconnects.
    """

    def __init__(
        self,
        *,
        default_quota: int = 100_000,
        retention: timedelta = timedelta(seconds=120),
        grace: timedelta = timedelta(seconds=60),
        transfer_retention: timedelta = timedelta(hours=24),
        max_retention: timedelta | None = None,
        abandon_after: timedelta = timedelta(minutes=10),
        sweep_interval: timedelta = timedelta(seconds=1),
    ) -> None:
        if default_quota < 1:
            raise ValueError("default_quota must be at least 1")
        if max_retention is None:
            max_retention = transfer_retention + grace
        if max_retention < retention:
            raise ValueError("max_retention must be at least retention")
        self.default_quota = default_quota
        self.abandon_after = abandon_after
        self.retention = retention
        self.grace = grace
        self.transfer_retention = transfer_retention
        self.max_retention = max_retention
        self.sweep_interval = sweep_interval
        self._accounts: dict[str, _AccountMemory] = {}

    def __len__(self) -> int:
        return sum(len(a.records) for a in self._accounts.values())

    def count(self, account: str) -> int:
        """How many entries ``account`` holds."""
        held = self._accounts.get(account)
        return 0 if held is None else len(held.records)

    def set_quota(self, account: str, quota: int) -> None:
        """``account``'s share from now on (entries it holds beyond it stay until they
        expire; meanwhile its new requests are ``FULL``)."""
        if quota < 0:
            raise ValueError("a quota is at least 0")
        self._account(account).quota = quota

    def quota(self, account: str) -> int:
        held = self._accounts.get(account)
        return self.default_quota if held is None else held.quota

    def _account(self, account: str) -> _AccountMemory:
        held = self._accounts.get(account)
        if held is None:
            held = self._accounts[account] = _AccountMemory(self.default_quota, OrderedDict())
        return held

    def admit(self, account: str, request_id: int, frame: bytes, now: datetime) -> Admission:
        """What to do with request ``frame``; a NEW request is recorded as in progress."""
        held = self._account(account)
        records = held.records
        digest = hashlib.sha256(frame).digest()
        record = records.get(request_id)
        if record is not None and self._is_stale(record, now):
            del records[request_id]  # past its window: the id may be used afresh
            record = None
        if record is not None:
            if record.digest != digest:
                return Admission(Verdict.CONFLICT)
            if record.reply is None:
                return Admission(Verdict.IN_PROGRESS)
            return Admission(Verdict.REPLAY, record.reply)
        if len(records) >= held.quota:
            self._make_room(held, now)
            if len(records) >= held.quota:
                return Admission(Verdict.FULL)
        records[request_id] = MemoryRecord(account, request_id, digest, now, now + self.retention)
        return Admission(Verdict.NEW)

    def _make_room(self, held: _AccountMemory, now: datetime) -> None:
        """Forget the account's entries past their window: from the front (roughly the
        oldest) at once, all of them at most once per ``sweep_interval`` (a full sweep
        costs O(quota), so a peer hammering a full share cannot make every frame pay it)."""
        records = held.records
        while records:
            first = next(iter(records.values()))
            if not self._is_stale(first, now):
                break
            records.popitem(last=False)
        if len(records) < held.quota:
            return
        if held.swept_at is not None and now - held.swept_at < self.sweep_interval:
            return
        held.swept_at = now
        for request_id in [k for k, r in records.items() if self._is_stale(r, now)]:
            del records[request_id]

    def complete(
        self,
        account: str,
        request_id: int,
        reply: bytes,
        now: datetime,
        deadline: datetime | None = None,
    ) -> None:
        """Store the reply of an admitted request; it is replayed from now on."""
        held = self._accounts.get(account)
        record = None if held is None else held.records.get(request_id)
        if held is None or record is None or record.reply is not None:
            raise BtpStateError(f"request {request_id} of {account!r} is not in progress")
        record.reply = reply
        keep_until = max(record.received_at, now) + self.retention
        if deadline is not None:
            # The deadline may be a peer's far-future expiry: saturate, never overflow.
            keep_until = max(keep_until, saturating_add(deadline, self.grace))
        record.keep_until = min(keep_until, saturating_add(now, self.max_retention))
        # Re-queue at the back so that the front stays roughly the oldest to expire.
        held.records.move_to_end(request_id)

    def expire(self, now: datetime) -> int:
        """Forget every entry past its window (or abandoned); returns how many."""
        forgotten = 0
        for held in self._accounts.values():
            stale = [k for k, r in held.records.items() if self._is_stale(r, now)]
            for request_id in stale:
                del held.records[request_id]
            forgotten += len(stale)
        return forgotten

    def _is_stale(self, record: MemoryRecord, now: datetime) -> bool:
        if record.reply is None:
            return record.received_at + self.abandon_after <= now
        return record.keep_until <= now

    def get(self, account: str, request_id: int) -> MemoryRecord | None:
        """The entry for a key, if any (e.g. to persist a reply just completed)."""
        held = self._accounts.get(account)
        return None if held is None else held.records.get(request_id)

    def records(self) -> Iterator[MemoryRecord]:
        """Every entry, each account's oldest first (for persisting)."""
        return iter([r for held in self._accounts.values() for r in held.records.values()])

    def restore(self, record: MemoryRecord) -> None:
        """Load a persisted entry (e.g. after a restart; the quota is not checked)."""
        self._account(record.account).records[record.request_id] = record

    def forget(self, account: str, request_id: int) -> None:
        """Drop an entry still in progress (its request is handled elsewhere: a shared
        memory above this one said so), so that its repeat is admitted afresh."""
        held = self._accounts.get(account)
        if held is not None:
            record = held.records.get(request_id)
            if record is not None and record.reply is None:
                del held.records[request_id]


# --- the state machine -----------------------------------------------------------------


class State(Enum):
    IDLE = auto()  # client: auth not sent yet
    AWAITING_AUTH = auto()  # server: waiting for the auth Message
    AUTHENTICATING = auto()  # server: auth Message handed to the application
    AUTH_SENT = auto()  # client: waiting for the auth Response
    OPEN = auto()
    CLOSED = auto()


class FrameKind(IntEnum):  # IntEnum: hashed at C speed in the per-frame dispatch
    GARBAGE = auto()  # not a BTP/2.0 frame (unreadable, trailing bytes, unknown type)
    RESPONSE = auto()
    ERROR = auto()
    MESSAGE = auto()
    TRANSFER = auto()


_KIND_OF_TYPE: Final[Mapping[int, FrameKind]] = {
    BtpType.RESPONSE: FrameKind.RESPONSE,
    BtpType.ERROR: FrameKind.ERROR,
    BtpType.MESSAGE: FrameKind.MESSAGE,
    BtpType.TRANSFER: FrameKind.TRANSFER,
}

# What each role does with each kind of frame in each state: the name of the handler.
# A missing (state, kind) pair is a bug in the table, caught by a test.
SERVER_TABLE: Final[Mapping[tuple[State, FrameKind], str]] = {
    (State.AWAITING_AUTH, FrameKind.MESSAGE): "_on_auth_request",
    (State.AWAITING_AUTH, FrameKind.TRANSFER): "_on_auth_request",
    (State.AWAITING_AUTH, FrameKind.RESPONSE): "_close_silently",
    (State.AWAITING_AUTH, FrameKind.ERROR): "_close_silently",
    (State.AWAITING_AUTH, FrameKind.GARBAGE): "_close_silently",
    **{(State.AUTHENTICATING, kind): "_hold_until_authenticated" for kind in FrameKind},
    (State.OPEN, FrameKind.MESSAGE): "_on_message",
    (State.OPEN, FrameKind.TRANSFER): "_on_transfer",
    (State.OPEN, FrameKind.RESPONSE): "_on_reply",
    (State.OPEN, FrameKind.ERROR): "_on_reply",
    (State.OPEN, FrameKind.GARBAGE): "_on_garbage",
    **{(State.CLOSED, kind): "_ignore" for kind in FrameKind},
}

CLIENT_TABLE: Final[Mapping[tuple[State, FrameKind], str]] = {
    **{(State.IDLE, kind): "_close_silently" for kind in FrameKind},
    (State.AUTH_SENT, FrameKind.RESPONSE): "_on_auth_reply",
    (State.AUTH_SENT, FrameKind.ERROR): "_on_auth_reply",
    (State.AUTH_SENT, FrameKind.MESSAGE): "_refuse_not_authenticated",
    (State.AUTH_SENT, FrameKind.TRANSFER): "_refuse_not_authenticated",
    (State.AUTH_SENT, FrameKind.GARBAGE): "_close_silently",
    (State.OPEN, FrameKind.MESSAGE): "_on_message",
    (State.OPEN, FrameKind.TRANSFER): "_on_transfer",
    (State.OPEN, FrameKind.RESPONSE): "_on_reply",
    (State.OPEN, FrameKind.ERROR): "_on_reply",
    (State.OPEN, FrameKind.GARBAGE): "_on_garbage",
    **{(State.CLOSED, kind): "_ignore" for kind in FrameKind},
}


class _Pending(Enum):
    ILP = auto()
    OTHER = auto()
    AUTH = auto()


@dataclass(slots=True)
class _Frame:
    """One received frame on its way through the table. ``packet`` is None for garbage
    and for the ILP fast path (``ilp`` set instead). For garbage, ``type_byte`` and
    ``request_id`` are the readable header, if any."""

    raw: bytes
    kind: FrameKind
    request_id: int | None
    packet: BtpPacket | None = None
    ilp: bytes | None = None
    problem: str = ""
    type_byte: int | None = None


def _classify(raw: bytes) -> _Frame:
    fast = peek_ilp_frame(raw)
    if fast is not None:
        btp_type, request_id, ilp = fast
        kind = FrameKind.MESSAGE if btp_type is BtpType.MESSAGE else FrameKind.RESPONSE
        return _Frame(raw, kind, request_id, ilp=ilp)
    try:
        packet = decode_btp(raw)
    except DecodeError as exc:
        header = peek_header(raw)
        if header is None:
            return _Frame(raw, FrameKind.GARBAGE, None, problem=exc.reason)
        return _Frame(raw, FrameKind.GARBAGE, header[1], problem=exc.reason, type_byte=header[0])
    return _Frame(raw, _KIND_OF_TYPE[packet.TYPE], packet.request_id, packet=packet)


_Handler: TypeAlias = Callable[[_Frame, datetime], "list[Event]"]

# Frames a peer may pipeline behind its auth Message while the application checks the
# credentials; more than this before the handshake is over is abuse.
_MAX_HELD_FRAMES: Final = 64


class _Session:
    """What both roles share once the connection is open."""

    _table: Mapping[tuple[State, FrameKind], str]

    def __init__(self, memory: ResponderMemory | None) -> None:
        self._state = State.IDLE
        self._dispatch = self._handlers_for(State.IDLE)
        self.username = ""
        self.idempotent = False
        self._memory = memory
        self._pending: dict[int, _Pending] = {}  # our requests awaiting a reply
        self._unanswered: set[int] = set()  # the peer's requests we have not answered

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, state: State) -> None:
        self._state = state
        self._dispatch = self._handlers_for(state)

    def _handlers_for(self, state: State) -> dict[FrameKind, _Handler]:
        # This state's row of the table, resolved once per transition, not per frame.
        return {
            kind: getattr(self, name) for (row, kind), name in self._table.items() if row is state
        }

    # ---- input ----

    def receive_frame(self, raw: bytes, now: datetime) -> list[Event]:
        """Process one binary WebSocket message; the events to act on, in order."""
        if type(raw) is not bytes:
            raw = bytes(raw)
        frame = _classify(raw)
        return self._dispatch[frame.kind](frame, now)

    def receive_text(self, text: str, now: datetime) -> list[Event]:
        """A WebSocket *text* message: never BTP. Treated as an unreadable frame."""
        # No header to read from a text message: whatever its first bytes, id 0.
        problem = "text message (BTP frames are binary)"
        frame = _Frame(text.encode("utf-8", "replace"), FrameKind.GARBAGE, None, problem=problem)
        return self._dispatch[FrameKind.GARBAGE](frame, now)

    # ---- our requests ----

    def send_ilp(self, request_id: int, ilp: bytes) -> bytes:
        """The frame carrying our ILP packet; its reply becomes :class:`IlpReply`.

        ``request_id`` is the caller's random UInt32 (the session has no randomness).
        Sending the same id and packet again on a new session (BTP/2.0-I retry after a
        reconnect) gives the byte-identical frame.
        """
        frame = encode_ilp_frame(BtpType.MESSAGE, request_id, ilp)
        self._track(request_id, _Pending.ILP)
        return frame

    def send_message(self, packet: BtpMessage) -> bytes:
        frame = encode_btp(packet)
        self._track(packet.request_id, _Pending.OTHER)
        return frame

    def send_transfer(self, packet: BtpTransfer) -> bytes:
        frame = encode_btp(packet)
        self._track(packet.request_id, _Pending.OTHER)
        return frame

    def request_id_in_use(self, request_id: int) -> bool:
        return request_id in self._pending

    def cancel(self, request_id: int) -> None:
        """Stop waiting (the caller's timeout); a late reply is then ignored."""
        self._pending.pop(request_id, None)

    def _track(self, request_id: int, kind: _Pending) -> None:
        if self.state is not State.OPEN:
            raise BtpStateError(f"cannot send a request in state {self.state.name}")
        if request_id in self._pending:
            raise BtpStateError(f"request id {request_id} is already in flight")
        self._pending[request_id] = kind

    # ---- answers to the peer's requests ----

    def respond_ilp(
        self, request_id: int, ilp: bytes, now: datetime, *, deadline: datetime | None = None
    ) -> bytes:
        """The Response carrying our Fulfill/Reject for an :class:`IlpRequest`.

        ``deadline`` (the Prepare's expiry) lengthens how long a BTP/2.0-I replay is kept.
        """
        self._answer(request_id)
        return self._remember(
            request_id, encode_ilp_frame(BtpType.RESPONSE, request_id, ilp), now, deadline
        )

    def respond(
        self,
        request_id: int,
        now: datetime,
        protocol_data: tuple[ProtocolData, ...] = (),
        *,
        deadline: datetime | None = None,
    ) -> bytes:
        """A Response (empty by default) to a side-protocol or Transfer request."""
        self._answer(request_id)
        frame = encode_btp(BtpResponse(request_id, protocol_data))
        return self._remember(request_id, frame, now, deadline)

    def respond_error(
        self,
        request_id: int,
        code: BtpErrorCode | str,
        message: str,
        now: datetime,
        *,
        name: str | None = None,
        deadline: datetime | None = None,
    ) -> bytes:
        """An Error: the request could not be processed at all (never for ILP errors)."""
        self._answer(request_id)
        frame = encode_btp(btp_error(request_id, code, name, message, now))
        return self._remember(request_id, frame, now, deadline)

    def respond_stored(
        self, request_id: int, frame: bytes, now: datetime, *, deadline: datetime | None = None
    ) -> bytes:
        """Answer with a reply already made elsewhere (BTP/2.0-I: another process of the
        node answered this request; the bytes are replayed as they are, and remembered)."""
        self._answer(request_id)
        return self._remember(request_id, frame, now, deadline)

    def withdraw(self, request_id: int) -> None:
        """Leave a request unanswered and forgotten here (BTP/2.0-I: it is in progress
        elsewhere, or refused for now): its repeat is handed to the application again."""
        self._unanswered.discard(request_id)
        if self.idempotent and self._memory is not None:
            self._memory.forget(self.username, request_id)

    def _answer(self, request_id: int) -> None:
        # Allowed after close too: the reply is still recorded for BTP/2.0-I replays.
        if request_id not in self._unanswered:
            raise BtpStateError(f"request {request_id} is not awaiting an answer")
        self._unanswered.discard(request_id)

    def _remember(
        self, request_id: int, frame: bytes, now: datetime, deadline: datetime | None
    ) -> bytes:
        if self.idempotent and self._memory is not None:
            self._memory.complete(self.username, request_id, frame, now, deadline)
        return frame

    # ---- closing ----

    def close(self, reason: str = "connection closed") -> list[Event]:
        """The transport closed (or wants to): fail every request still pending."""
        if self.state is State.CLOSED:
            return []
        self.state = State.CLOSED
        failed: list[Event] = [
            RequestFailed(request_id, reason)
            for request_id, kind in self._pending.items()
            if kind is not _Pending.AUTH
        ]
        self._pending.clear()
        return failed

    def _close(self, reason: str, *before: Event) -> list[Event]:
        return [*before, *self.close(reason), CloseConnection(reason)]

    # ---- table handlers shared by both roles ----

    def _ignore(self, frame: _Frame, now: datetime) -> list[Event]:
        return []

    def _close_silently(self, frame: _Frame, now: datetime) -> list[Event]:
        # An unreadable frame, or a reply nobody asked for, before the handshake is
        # over: no answer (RFC 23), just the close ilp-plugin-btp does too.
        return self._close(
            f"unexpected frame before authentication: {frame.problem or frame.kind.name}"
        )

    def _on_message(self, frame: _Frame, now: datetime) -> list[Event]:
        request_id = _known(frame.request_id)
        gate = self._admit(frame, request_id, now)
        if gate is not None:
            return gate
        if frame.ilp is not None:
            return [IlpRequest(request_id, frame.ilp)]
        packet = frame.packet
        assert isinstance(packet, BtpMessage)
        entry = find_entry(packet, ILP)
        if entry is not None:
            return [IlpRequest(request_id, entry.data)]
        return [SideProtocolRequest(request_id, packet)]

    def _on_transfer(self, frame: _Frame, now: datetime) -> list[Event]:
        request_id = _known(frame.request_id)
        gate = self._admit(frame, request_id, now)
        if gate is not None:
            return gate
        packet = frame.packet
        assert isinstance(packet, BtpTransfer)
        return [TransferRequest(request_id, packet)]

    def _admit(self, frame: _Frame, request_id: int, now: datetime) -> list[Event] | None:
        """``None`` to hand the request to the application, else what to do instead."""
        if self.idempotent and self._memory is not None:
            admission = self._memory.admit(self.username, request_id, frame.raw, now)
            match admission.verdict:
                case Verdict.IN_PROGRESS:
                    return []
                case Verdict.REPLAY:
                    assert admission.reply is not None
                    return [SendFrame(admission.reply)]
                case Verdict.CONFLICT:
                    return [
                        self._error_frame(
                            request_id,
                            BtpErrorCode.F05,
                            "request id reused with different content",
                            now,
                        )
                    ]
                case Verdict.FULL:
                    message = "this account's share of the replay memory is full, retry later"
                    return [self._error_frame(request_id, BtpErrorCode.T00, message, now)]
        if request_id in self._unanswered:
            # Plain BTP/2.0: the peer broke rule 4 (two of its requests with one id).
            return [
                self._error_frame(request_id, BtpErrorCode.F05, "request id already in flight", now)
            ]
        self._unanswered.add(request_id)
        return None

    def _on_reply(self, frame: _Frame, now: datetime) -> list[Event]:
        request_id = _known(frame.request_id)
        kind = self._pending.pop(request_id, None)
        if kind is None:
            return []  # a reply to nothing (or to a cancelled request): ignore, never answer
        if frame.ilp is not None:
            if kind is _Pending.ILP:
                return [IlpReply(request_id, frame.ilp)]
            return [
                ReplyReceived(
                    request_id, BtpResponse(request_id, (ProtocolData(ILP, 0, frame.ilp),))
                )
            ]
        packet = frame.packet
        if isinstance(packet, BtpError):
            return [
                RequestFailed(request_id, f"{packet.code} {packet.name}: {packet.message}", packet)
            ]
        assert isinstance(packet, BtpResponse)
        if kind is _Pending.ILP:
            entry = find_entry(packet, ILP)
            if entry is None:
                # ilp-plugin-btp would hand back an empty buffer; treat it as the failure it is.
                return [RequestFailed(request_id, "Response without an ilp entry")]
            return [IlpReply(request_id, entry.data)]
        return [ReplyReceived(request_id, packet)]

    def _on_garbage(self, frame: _Frame, now: datetime) -> list[Event]:
        kind, request_id = frame.type_byte, frame.request_id
        if request_id is not None and kind in (BtpType.RESPONSE, BtpType.ERROR):
            # An unreadable reply is never answered; our request will get no other reply.
            if self._pending.pop(request_id, None) is None:
                return []
            return [RequestFailed(request_id, f"unreadable reply: {frame.problem}")]
        if kind is not None and kind not in _KIND_OF_TYPE:
            code, text = BtpErrorCode.F00, f"unsupported BTP type {kind}"
        else:
            code, text = BtpErrorCode.F01, f"unreadable BTP frame: {frame.problem}"
        return [self._error_frame(0 if request_id is None else request_id, code, text, now)]

    def _error_frame(
        self, request_id: int, code: BtpErrorCode, message: str, now: datetime
    ) -> SendFrame:
        return SendFrame(encode_btp(btp_error(request_id, code, None, message, now)))


def _known(request_id: int | None) -> int:
    # Every decodable frame has a request id; only garbage may lack one.
    assert request_id is not None
    return request_id


class BtpServerSession(_Session):
    """The accepting side of a BTP connection (our ``/btp`` endpoint).

    ``authenticate`` decides on the credentials synchronously; without it the session
    emits :class:`AuthRequested` and waits for :meth:`accept_auth` or :meth:`reject_auth`
    (so the application may look the peer up asynchronously). Frames that arrive in
    the meantime are held and processed after acceptance.

    ``memory`` enables BTP/2.0-I for clients that ask for it.
    """

    _table = SERVER_TABLE

    def __init__(
        self,
        authenticate: Callable[[AuthRequest], bool] | None = None,
        *,
        memory: ResponderMemory | None = None,
    ) -> None:
        super().__init__(memory)
        self.state = State.AWAITING_AUTH
        self._authenticate = authenticate
        self._auth_request_id = 0
        self._auth: AuthRequest | None = None
        self._held: list[bytes] = []

    def _on_auth_request(self, frame: _Frame, now: datetime) -> list[Event]:
        request_id = _known(frame.request_id)
        try:
            if frame.packet is None:
                # The ILP fast path skipped decoding: an ilp Message is no auth Message.
                frame.packet = decode_btp(frame.raw)
            auth = read_auth(frame.packet)
        except AuthRejected as exc:
            return self._refuse(request_id, exc.message, now)
        self._auth_request_id = request_id
        self._auth = auth
        if self._authenticate is None:
            self.state = State.AUTHENTICATING
            return [AuthRequested(request_id, auth)]
        if self._authenticate(auth):
            return self.accept_auth(now)
        return self.reject_auth(now)

    def accept_auth(self, now: datetime, *, allow_idempotent: bool = True) -> list[Event]:
        """Credentials are good: the auth Response, :class:`Authenticated`, then the
        events of any frames held meanwhile. ``allow_idempotent=False`` declines
        BTP/2.0-I for this peer even if it asks."""
        auth = self._pending_auth()
        self.state = State.OPEN
        self.username = auth.username
        self.idempotent = auth.idempotent and allow_idempotent and self._memory is not None
        reply = encode_btp(auth_response(self._auth_request_id, idempotent=self.idempotent))
        events: list[Event] = [SendFrame(reply), Authenticated(auth.username, self.idempotent)]
        held, self._held = self._held, []
        for raw in held:
            events.extend(self.receive_frame(raw, now))
        return events

    def reject_auth(self, now: datetime, message: str = "invalid auth_token") -> list[Event]:
        """Credentials are wrong: Error F00 NotAcceptedError (ilp-plugin-btp's text by
        default), then close."""
        self._pending_auth()
        return self._refuse(self._auth_request_id, message, now)

    def _pending_auth(self) -> AuthRequest:
        if self._auth is None or self.state not in (State.AWAITING_AUTH, State.AUTHENTICATING):
            raise BtpStateError(f"no authentication to decide in state {self.state.name}")
        return self._auth

    def _refuse(self, request_id: int, message: str, now: datetime) -> list[Event]:
        self._held.clear()
        error = encode_btp(btp_error(request_id, BtpErrorCode.F00, None, message, now))
        return self._close(message, SendFrame(error))

    def _hold_until_authenticated(self, frame: _Frame, now: datetime) -> list[Event]:
        if len(self._held) >= _MAX_HELD_FRAMES:
            self._held.clear()
            return self._close("too many frames before authentication completed")
        self._held.append(frame.raw)
        return []


class BtpClientSession(_Session):
    """The dialling side: sends the ilp-plugin-btp auth frame, waits for its Response.

    ``idempotent=True`` offers BTP/2.0-I; it is active only if the server accepts and a
    ``memory`` is given for the requests the server sends us.
    """

    _table = CLIENT_TABLE

    def __init__(
        self,
        username: str,
        token: str,
        *,
        idempotent: bool = False,
        memory: ResponderMemory | None = None,
    ) -> None:
        super().__init__(memory)
        self.username = username
        self._token = token
        self._offer_idempotent = idempotent
        self._auth_request_id = 0

    def start(self, request_id: int) -> bytes:
        """The auth frame to send first; ``request_id`` is the caller's random UInt32."""
        if self.state is not State.IDLE:
            raise BtpStateError(f"start() in state {self.state.name}")
        frame = encode_btp(
            auth_message(request_id, self.username, self._token, idempotent=self._offer_idempotent)
        )
        self.state = State.AUTH_SENT
        self._auth_request_id = request_id
        self._pending[request_id] = _Pending.AUTH
        return frame

    def _on_auth_reply(self, frame: _Frame, now: datetime) -> list[Event]:
        request_id = _known(frame.request_id)
        if request_id != self._auth_request_id:
            return []  # not the reply we wait for: ignore, never answer
        del self._pending[request_id]
        packet = frame.packet
        if isinstance(packet, BtpError):
            return self._close(
                f"authentication refused: {packet.code} {packet.name}: {packet.message}"
            )
        response = packet if packet is not None else decode_btp(frame.raw)
        self.state = State.OPEN
        self.idempotent = (
            self._offer_idempotent and self._memory is not None and offers_idempotent(response)
        )
        return [Authenticated(self.username, self.idempotent)]

    def _refuse_not_authenticated(self, frame: _Frame, now: datetime) -> list[Event]:
        # The server should not ask anything before answering our auth; answer it (every
        # request gets one reply) without processing it.
        request_id = _known(frame.request_id)
        return [self._error_frame(request_id, BtpErrorCode.F00, "not authenticated yet", now)]
