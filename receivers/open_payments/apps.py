from __future__ import annotations

from django.apps import AppConfig


class OpenPaymentsConfig(AppConfig):
    """Open Payments on our pointers: wallet addresses, a narrow GNAP server for
    incoming-payment grants and the incoming-payments resource server (``docs/OPEN_PAYMENTS.md``)."""

    name = "receivers.open_payments"
    label = "open_payments"
    verbose_name = "Open Payments"
    default_auto_field = "django.db.models.BigAutoField"
