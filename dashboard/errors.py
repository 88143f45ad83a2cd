"""Errors of the people's side. Each carries a stable ``code`` and the HTTP status the
edge answers with (``interledger_site.api.exception_handler`` maps them)."""

from __future__ import annotations


class DashboardError(Exception):
    code = "dashboard_error"
    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WebhookNotFound(DashboardError):
    code = "webhook_not_found"
    http_status = 404


class InvalidWebhook(DashboardError):
    code = "invalid_webhook"
    http_status = 400
