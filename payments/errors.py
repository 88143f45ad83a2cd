"""The one exception family of the ``payments`` app.

Every error carries a stable ``code`` (for logs and API bodies), an ``http_status`` (for
the API exception handler) and an ``ilp_code`` (for the packet switch, which turns the
error into a Reject: ``RejectError(err.ilp_code, str(err))``).
"""

from __future__ import annotations

from typing import Any, ClassVar


class PaymentsError(Exception):
    """Base class. ``details`` are extra JSON-safe facts for the API body."""

    code: ClassVar[str] = "payments_error"
    http_status: ClassVar[int] = 400
    ilp_code: ClassVar[str] = "T00"  # Internal Error

    def __init__(self, message: str = "", **details: Any) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.details = details

    def as_dict(self) -> dict[str, Any]:
        return {**self.details, "code": self.code, "message": self.message}


class BalanceLimitExceeded(PaymentsError):
    """A hold would take the balance past ``min_balance`` or ``max_balance``."""

    code = "balance_limit_exceeded"
    http_status = 409
    ilp_code = "T04"  # Insufficient Liquidity


class UnknownAccount(PaymentsError):
    """No ``LedgerAccount`` with this code."""

    code = "unknown_account"
    http_status = 404
    ilp_code = "T00"


class AccountNotLoaded(PaymentsError):
    """A synchronous book call was made from an event loop for an account not yet in memory.

    ``await book.load_account(code)`` first (the switch does it when it loads the peer).
    """

    code = "account_not_loaded"
    http_status = 503
    ilp_code = "T00"


class AccountKindMismatch(PaymentsError):
    """``ensure_account`` found the code with another kind or asset."""

    code = "account_kind_mismatch"
    http_status = 409
    ilp_code = "T00"


class InvalidAmount(PaymentsError):
    """A negative, non-integer or out-of-range amount."""

    code = "invalid_amount"
    http_status = 400
    ilp_code = "F00"


class DuplicateHold(PaymentsError):
    """A hold key already in use for a different account or amount."""

    code = "duplicate_hold"
    http_status = 409
    ilp_code = "T00"


class CommitFailed(PaymentsError):
    """The batch carrying this commit did not reach the database; nothing of it was applied.

    The caller should Reject (T00) and release its holds. The commit is idempotent on its
    keys, so retrying it later is also safe.
    """

    code = "commit_failed"
    http_status = 503
    ilp_code = "T00"


class BookClosed(CommitFailed):
    """The book was closed (process shutdown or ``reset_book``) before the commit ran."""

    code = "book_closed"


class WebhookError(PaymentsError):
    """A webhook could not be created or delivered."""

    code = "webhook_error"
    http_status = 400
    ilp_code = "T00"


class InvalidWebhook(WebhookError):
    """A webhook's url or fields were refused."""

    code = "invalid_webhook"


class WebhookNotFound(WebhookError):
    """No such webhook (or not one of the accounts the caller may change)."""

    code = "webhook_not_found"
    http_status = 404
