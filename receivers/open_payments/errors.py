"""Errors of the Open Payments endpoints: each carries its wire ``code`` and HTTP status;
:func:`receivers.open_payments.views.error_response` maps them at the edge."""

from __future__ import annotations


class OpenPaymentsError(Exception):
    """``{"error": {"code", "description"}}`` with ``http_status``."""

    code = "invalid_request"
    http_status = 400

    def __init__(self, description: str, *, code: str | None = None, status: int | None = None):
        super().__init__(description)
        self.description = description
        if code is not None:
            self.code = code
        if status is not None:
            self.http_status = status


class InvalidClient(OpenPaymentsError):
    """The request's signature or the client's key does not check out (GNAP ``invalid_client``)."""

    code = "invalid_client"
    http_status = 401


class InvalidToken(OpenPaymentsError):
    """No, an unknown, an expired or a revoked access token (401 with ``WWW-Authenticate``)."""

    code = "invalid_token"
    http_status = 401


class Forbidden(OpenPaymentsError):
    """A valid token that does not cover this action or wallet address."""

    code = "insufficient_grant"
    http_status = 403


class NotFound(OpenPaymentsError):
    code = "not_found"
    http_status = 404
