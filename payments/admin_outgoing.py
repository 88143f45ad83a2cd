"""Admin of sending: outgoing and circular payments (money fields read-only).

Staff may *start* a payment from the add form (it goes through the service, with an
idempotency key carried by the form, so a double submit starts it once); nothing is
ever changed or deleted here. Imported by ``payments.admin``.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest

from ilp.oer import UINT64_MAX
from payments.errors import PaymentsError
from payments.models import LedgerAccount
from payments.models_outgoing import CircularPayment, OutgoingChunk, OutgoingPayment
from payments.sending import OPERATOR_ACCOUNT, outgoing_payment_create
from payments.sending.circular import circular_payment_create

if TYPE_CHECKING:
    _PaymentBase = admin.ModelAdmin[OutgoingPayment]
    _CircularBase = admin.ModelAdmin[CircularPayment]
    _ChunkInline = admin.TabularInline[OutgoingChunk, OutgoingPayment]
else:
    _PaymentBase = _CircularBase = admin.ModelAdmin
    _ChunkInline = admin.TabularInline

PAYMENT_FIELDS = (
    "id",
    "status",
    "source_account",
    "requested_by",
    "receiver",
    "spsp_url",
    "destination_address",
    "via_peer",
    "mode",
    "amount",
    "max_source_amount",
    "quote_source_amount",
    "quote_destination_amount",
    "amount_reserved",
    "amount_debited",
    "amount_sent",
    "amount_delivered",
    "amount_in_doubt",
    "chunks_fulfilled",
    "chunks_rejected",
    "chunk_size",
    "next_sequence",
    "totals_trusted",
    "payment_id",
    "idempotency_key",
    "last_error",
    "lease_owner",
    "lease_until",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
)


class OutgoingPaymentForm(forms.ModelForm):  # type: ignore[type-arg]
    """Start a payment: the service does the work in ``clean`` (so its refusals show as
    form errors) under the form's idempotency key."""

    request_key = forms.CharField(widget=forms.HiddenInput, required=False)
    amount = forms.IntegerField(min_value=1, max_value=UINT64_MAX)
    max_source_amount = forms.IntegerField(min_value=1, max_value=UINT64_MAX, required=False)

    class Meta:
        model = OutgoingPayment
        fields = (
            "source_account",
            "receiver",
            "amount",
            "mode",
            "max_source_amount",
            "via_peer",
        )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "request_key" in self.fields:
            self.fields["request_key"].initial = f"admin:{uuid.uuid4().hex}"
        if "source_account" in self.fields:  # the add form (the change view is read-only)
            self.fields["source_account"].queryset = LedgerAccount.objects.filter(  # type: ignore[attr-defined]
                kind__in=(LedgerAccount.Kind.RECEIVER, LedgerAccount.Kind.NODE)
            )
        self.created: OutgoingPayment | None = None
        self.request_user: Any = None

    def clean(self) -> dict[str, Any]:
        data: dict[str, Any] = super().clean() or {}
        if self.errors:
            return data
        try:
            self.created = outgoing_payment_create(
                source_account_code=data["source_account"].code,
                receiver=data["receiver"],
                amount=data["amount"],
                mode=data["mode"],
                via_peer=data.get("via_peer") or "",
                max_source_amount=data.get("max_source_amount"),
                idempotency_key=data.get("request_key") or None,
                requested_by=self.request_user,
            )
        except PaymentsError as exc:
            raise forms.ValidationError(exc.message) from None
        return data


class OutgoingChunkInline(_ChunkInline):
    model = OutgoingChunk
    extra = 0
    can_delete = False
    fields = (
        "sequence",
        "state",
        "amount",
        "minimum",
        "delivered",
        "code",
        "message",
        "expires_at",
        "settled_at",
    )
    readonly_fields = fields
    ordering = ("-sequence",)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(OutgoingPayment)
class OutgoingPaymentAdmin(_PaymentBase):
    list_display = (
        "id",
        "created_at",
        "source_account",
        "receiver",
        "mode",
        "amount",
        "amount_sent",
        "amount_delivered",
        "chunks_fulfilled",
        "via_peer",
        "status",
    )
    list_filter = ("status", "mode")
    search_fields = ("receiver", "destination_address", "idempotency_key", "payment_id")
    list_select_related = ("source_account",)
    date_hierarchy = "created_at"
    inlines = (OutgoingChunkInline,)
    form = OutgoingPaymentForm

    def get_fields(self, request: HttpRequest, obj: OutgoingPayment | None = None) -> Any:
        if obj is None:
            return (*OutgoingPaymentForm.Meta.fields, "request_key")
        return PAYMENT_FIELDS

    def get_readonly_fields(self, request: HttpRequest, obj: OutgoingPayment | None = None) -> Any:
        return () if obj is None else PAYMENT_FIELDS

    def get_inlines(self, request: HttpRequest, obj: OutgoingPayment | None) -> Any:
        return self.inlines if obj is not None else ()

    def get_form(
        self,
        request: HttpRequest,
        obj: OutgoingPayment | None = None,
        change: bool = False,
        **kwargs: Any,
    ) -> Any:
        form = super().get_form(request, obj, change, **kwargs)
        if obj is None:

            class _WithUser(form):  # type: ignore[valid-type,misc]
                def __init__(self, *args: Any, **kw: Any) -> None:
                    super().__init__(*args, **kw)
                    self.request_user = request.user

            return _WithUser
        return form

    def save_model(
        self, request: HttpRequest, obj: OutgoingPayment, form: Any, change: bool
    ) -> None:
        created = getattr(form, "created", None)
        if created is not None:
            obj.pk = created.pk  # made by the service in the form's clean()

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        return None

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class CircularPaymentForm(forms.ModelForm):  # type: ignore[type-arg]
    request_key = forms.CharField(widget=forms.HiddenInput, required=False)
    amount_out = forms.IntegerField(min_value=1, max_value=UINT64_MAX)
    source = forms.CharField(initial=OPERATOR_ACCOUNT, help_text="ledger account that pays")

    class Meta:
        model = CircularPayment
        fields = ("out_peer", "amount_out")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "request_key" in self.fields:
            self.fields["request_key"].initial = f"admin:{uuid.uuid4().hex}"
        self.created: CircularPayment | None = None

    def clean(self) -> dict[str, Any]:
        data: dict[str, Any] = super().clean() or {}
        if self.errors:
            return data
        try:
            self.created = circular_payment_create(
                out_peer=data["out_peer"],
                amount=data["amount_out"],
                source_account_code=data["source"],
                idempotency_key=data.get("request_key") or None,
            )
        except PaymentsError as exc:
            raise forms.ValidationError(exc.message) from None
        return data


CIRCULAR_FIELDS = (
    "id",
    "status",
    "source_account",
    "out_peer",
    "out_account",
    "in_peer",
    "destination",
    "amount_out",
    "amount_in",
    "cost",
    "rtt_ms",
    "code",
    "last_error",
    "created_at",
    "sent_at",
    "arrived_at",
    "finished_at",
    "expires_at",
    "idempotency_key",
)


@admin.register(CircularPayment)
class CircularPaymentAdmin(_CircularBase):
    list_display = (
        "id",
        "created_at",
        "out_peer",
        "in_peer",
        "amount_out",
        "amount_in",
        "cost",
        "rtt_ms",
        "status",
    )
    list_filter = ("status", "out_peer")
    search_fields = ("token", "destination", "idempotency_key")
    form = CircularPaymentForm

    @admin.display(description="cost")
    def cost(self, obj: CircularPayment) -> int | None:
        return obj.cost

    def get_fields(self, request: HttpRequest, obj: CircularPayment | None = None) -> Any:
        if obj is None:
            return (*CircularPaymentForm.Meta.fields, "source", "request_key")
        return CIRCULAR_FIELDS

    def get_readonly_fields(self, request: HttpRequest, obj: CircularPayment | None = None) -> Any:
        return () if obj is None else CIRCULAR_FIELDS

    def save_model(
        self, request: HttpRequest, obj: CircularPayment, form: Any, change: bool
    ) -> None:
        created = getattr(form, "created", None)
        if created is not None:
            obj.pk = created.pk

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        return None

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
