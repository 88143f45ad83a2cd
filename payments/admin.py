"""Admin: accounts (limits editable through the service), money rows read-only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from payments.models import (
    IncomingPayment,
    LedgerAccount,
    Posting,
    Receipt,
    Webhook,
    WebhookDelivery,
)
from payments.services import account_set_limits

if TYPE_CHECKING:
    _Base = admin.ModelAdmin[Any]
    _AccountBase = admin.ModelAdmin[LedgerAccount]
    _WebhookBase = admin.ModelAdmin[Webhook]
else:
    _Base = _AccountBase = _WebhookBase = admin.ModelAdmin


class ReadOnlyAdmin(_Base):
    """Append-only rows: visible, never added, changed or deleted here."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(LedgerAccount)
class LedgerAccountAdmin(_AccountBase):
    list_display = (
        "code",
        "kind",
        "asset_code",
        "asset_scale",
        "balance",
        "min_balance",
        "max_balance",
        "created_at",
    )
    list_filter = ("kind", "asset_code")
    search_fields = ("code",)
    fields = (
        "code",
        "kind",
        "asset_code",
        "asset_scale",
        "balance",
        "min_balance",
        "max_balance",
        "version",
        "created_at",
    )
    readonly_fields = (
        "code",
        "kind",
        "asset_code",
        "asset_scale",
        "balance",
        "version",
        "created_at",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # accounts come from peers and receivers (ensure_account)

    def has_delete_permission(self, request: HttpRequest, obj: LedgerAccount | None = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: LedgerAccount, form: Any, change: bool) -> None:
        # Only the limits are editable; they go through the service (row lock, book refresh).
        account_set_limits(
            account_code=obj.code,
            min_balance=None if obj.min_balance is None else int(obj.min_balance),
            max_balance=None if obj.max_balance is None else int(obj.max_balance),
        )


@admin.register(Posting)
class PostingAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "account", "amount", "key", "memo")
    list_filter = ("account__kind",)
    search_fields = ("key__exact", "account__code__exact", "memo")
    list_select_related = ("account",)
    show_full_result_count = False


@admin.register(Receipt)
class ReceiptAdmin(ReadOnlyAdmin):
    list_display = ("id", "created_at", "account", "payment_id", "sequence", "amount", "applied_at")
    list_filter = (("applied_at", admin.EmptyFieldListFilter), "created_at")
    search_fields = ("key__exact", "payment_id__exact", "account__code__exact")
    list_select_related = ("account",)
    date_hierarchy = "created_at"
    show_full_result_count = False


@admin.register(IncomingPayment)
class IncomingPaymentAdmin(ReadOnlyAdmin):
    list_display = ("id", "account", "payment_id", "total", "chunks", "first_at", "last_at")
    list_filter = ("last_at",)
    search_fields = ("payment_id", "account__code")
    list_select_related = ("account",)
    date_hierarchy = "last_at"


@admin.register(Webhook)
class WebhookAdmin(_WebhookBase):
    list_display = ("id", "account", "url", "enabled", "created_at")
    list_filter = ("enabled",)
    search_fields = ("url", "account__code")
    raw_id_fields = ("account",)

    def has_delete_permission(self, request: HttpRequest, obj: Webhook | None = None) -> bool:
        return False  # disable instead: deliveries keep pointing at it


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "webhook",
        "event",
        "status",
        "attempts",
        "next_attempt_at",
        "response_status",
        "delivered_at",
    )
    list_filter = ("status", "event")
    search_fields = ("key", "webhook__url")
    list_select_related = ("webhook",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[WebhookDelivery]:
        return super().get_queryset(request).select_related("webhook")


import payments.admin_outgoing  # noqa: E402,F401  (outgoing and circular payments)
