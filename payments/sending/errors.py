"""Errors of sending (outgoing and circular payments); see :mod:`payments.errors`."""

from __future__ import annotations

from payments.errors import PaymentsError

__all__ = [
    "BookingFailed",
    "IdempotencyKeyReused",
    "InsufficientBalance",
    "OutgoingNotAllowed",
    "PaymentNotFound",
    "SendFailed",
    "SpspError",
]


class InsufficientBalance(PaymentsError):
    """The source account cannot cover the amount (balance - floor - other reservations)."""

    code = "insufficient_balance"
    http_status = 409
    ilp_code = "T04"


class OutgoingNotAllowed(PaymentsError):
    """The request cannot become a payment (source account kind, peer, amount, mode)."""

    code = "outgoing_not_allowed"
    http_status = 400
    ilp_code = "F00"


class PaymentNotFound(PaymentsError):
    code = "payment_not_found"
    http_status = 404
    ilp_code = "F00"


class SpspError(PaymentsError):
    """The payment pointer or its SPSP answer is unusable."""

    code = "spsp_error"
    http_status = 400
    ilp_code = "F02"


class SendFailed(PaymentsError):
    """A Prepare could not be handed to a link (no such peer, not connected...)."""

    code = "send_failed"
    http_status = 502
    ilp_code = "T01"


class IdempotencyKeyReused(PaymentsError):
    """The idempotency key names an earlier payment with other parameters."""

    code = "idempotency_key_reused"
    http_status = 409
    ilp_code = "F00"


class BookingFailed(PaymentsError):
    """A fulfilled chunk could not be booked (the ledger writer is down). Not a payment
    failure: the runner stops, leaves the chunk in doubt and a later run books it (the
    runners let it through before they catch :class:`PaymentsError`; Celery retries it)."""

    code = "booking_failed"
    http_status = 503
    ilp_code = "T00"
