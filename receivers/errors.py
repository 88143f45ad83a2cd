"""Errors of the receivers app. Each carries a stable ``code`` and the HTTP status the
edge answers with; views map them, services raise them."""

from __future__ import annotations


class ReceiverError(Exception):
    code = "receiver_error"
    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidPointerName(ReceiverError):
    code = "invalid_pointer_name"
    http_status = 400


class PointerNameTaken(ReceiverError):
    code = "pointer_name_taken"
    http_status = 409


class ReceiverNotFound(ReceiverError):
    code = "receiver_not_found"
    http_status = 404
