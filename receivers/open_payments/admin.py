"""Read-only admin for Open Payments rows (operators look; services write)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from receivers.open_payments.models import AccessToken, Grant, IncomingPaymentResource


class _ReadOnly(admin.ModelAdmin):  # type: ignore[type-arg]
    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Grant)
class GrantAdmin(_ReadOnly):
    list_display = ("id", "client", "receiver", "created_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("client", "id")
    exclude = ("continue_token_hash",)


@admin.register(AccessToken)
class AccessTokenAdmin(_ReadOnly):
    list_display = ("id", "grant", "expires_at", "revoked_at")
    exclude = ("token_hash",)


@admin.register(IncomingPaymentResource)
class IncomingPaymentResourceAdmin(_ReadOnly):
    list_display = ("id", "receiver", "incoming_amount", "expires_at", "completed_at", "created_at")
    list_filter = ("receiver",)
    search_fields = ("id", "ilp_address")
