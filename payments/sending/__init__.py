"""Sending money from this node: the one sender.

Outgoing SPSP payments over STREAM or PSK2, circular payments and the paid-API client's
single payments all leave through the same port, reservations and booking. The parts:

- :mod:`~payments.sending.port` — the Protocol through which sending reaches a link
  (``links`` implements it and wires it at start-up; ``payments`` never imports ``links``);
- :mod:`~payments.sending.reservation` — DB reservations on the source account, in-memory
  holds and booking of chunks sent straight to a peer;
- :mod:`~payments.sending.services` — create, run and resume outgoing payments;
- :mod:`~payments.sending.runner` — one run: lease, chunk journal, progress, resume rules;
- :mod:`~payments.sending.quote` — PSK2 rate probes;
- :mod:`~payments.sending.psk2` and :mod:`~payments.sending.stream` — what each protocol
  sends; :mod:`~payments.sending.spsp` — the SPSP/SPSP4 client;
- :mod:`~payments.sending.circular` — circular payments;
- :mod:`~payments.sending.selectors`, :mod:`~payments.sending.errors`,
  :mod:`~payments.sending.tasks` (Celery, stable ``name=``; imported by ``payments.tasks``).

Read ``docs/ARCHITECTURE.md`` ("payments: sending") for the contract.
"""

from payments.sending.circular import (
    CIRCULAR_EVENT,
    CIRCULAR_SEGMENT,
    circular_payment_create,
    circular_payment_resolve,
    circular_payment_run,
    circular_payment_run_sync,
    circular_payments_due,
    circular_receive,
)
from payments.sending.errors import (
    BookingFailed,
    IdempotencyKeyReused,
    InsufficientBalance,
    OutgoingNotAllowed,
    PaymentNotFound,
    SendFailed,
    SpspError,
)
from payments.sending.port import (
    SWITCH_SOURCE_NAME,
    Route,
    Sender,
    SenderOpener,
    send_safely,
    sender_opener,
    set_sender_opener,
    wire_sender_opener,
)
from payments.sending.quote import RateProbe, probe_rate
from payments.sending.reservation import (
    OPERATOR_ACCOUNT,
    SUSPENSE_ACCOUNT,
    account_available,
    check_amount,
    commit_booking,
    lock_source_account,
    reserve_on,
)
from payments.sending.runner import RunOptions, payment_summary, publish_event
from payments.sending.services import (
    outgoing_payment_create,
    outgoing_payment_lease_left,
    outgoing_payment_run,
    outgoing_payment_run_sync,
    outgoing_payments_due,
)
from payments.sending.spsp import SpspDetails, query_spsp, resolve_receiver

__all__ = [
    "CIRCULAR_EVENT",
    "CIRCULAR_SEGMENT",
    "OPERATOR_ACCOUNT",
    "SUSPENSE_ACCOUNT",
    "SWITCH_SOURCE_NAME",
    "BookingFailed",
    "IdempotencyKeyReused",
    "InsufficientBalance",
    "OutgoingNotAllowed",
    "PaymentNotFound",
    "RateProbe",
    "Route",
    "RunOptions",
    "SendFailed",
    "Sender",
    "SenderOpener",
    "SpspDetails",
    "SpspError",
    "account_available",
    "check_amount",
    "circular_payment_create",
    "circular_payment_resolve",
    "circular_payment_run",
    "circular_payment_run_sync",
    "circular_payments_due",
    "circular_receive",
    "commit_booking",
    "lock_source_account",
    "outgoing_payment_create",
    "outgoing_payment_lease_left",
    "outgoing_payment_run",
    "outgoing_payment_run_sync",
    "outgoing_payments_due",
    "payment_summary",
    "probe_rate",
    "publish_event",
    "query_spsp",
    "reserve_on",
    "resolve_receiver",
    "send_safely",
    "sender_opener",
    "set_sender_opener",
    "wire_sender_opener",
]
