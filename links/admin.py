"""Admin for peers: live status, the ledger balance, tokens set through the services.

The peer form sets what ``manage.py add_peer`` sets: the credit limits, the header profile
(``http_profile``) and the abuse limits of ``links.limits`` (each field checked by the
model's range, then the whole set by :class:`~links.limits.PeerLimits`; a bad value is a
form error on its field). An empty limit keeps the current value (a new peer: the
default); an empty ``throughput_per_second`` is unbounded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.http import HttpRequest

from links.limits import DEFAULT_LIMITS, LIMIT_FIELDS, InvalidLimits, PeerLimits
from links.models import BtpStoredResponse, HttpAsyncRequest, HttpProfile, Peer
from links.peers import limits_of
from links.services import PeerError, peer_create, peer_update

if TYPE_CHECKING:
    _PeerFormBase = forms.ModelForm[Peer]
    _PeerAdminBase = admin.ModelAdmin[Peer]
    _StoredAdminBase = admin.ModelAdmin[BtpStoredResponse]
    _AsyncAdminBase = admin.ModelAdmin[HttpAsyncRequest]
else:
    _PeerFormBase = forms.ModelForm
    _PeerAdminBase = _StoredAdminBase = _AsyncAdminBase = admin.ModelAdmin

_EDITABLE = (
    "relation",
    "link",
    "url",
    "outgoing_token",
    "ilp_address",
    "max_packet_amount",
    "send_routes",
    "receive_routes",
    "enabled",
    "idempotent",
    "http_profile",
)


class PeerForm(_PeerFormBase):
    new_token = forms.CharField(
        required=False,
        help_text="Set the token the peer presents to us (stored hashed). Leave empty to keep it.",
        widget=forms.PasswordInput(render_value=False),
    )
    min_balance = forms.IntegerField(required=False, help_text="How far the peer may owe us.")
    max_balance = forms.IntegerField(required=False, help_text="How much we may owe the peer.")

    class Meta:
        model = Peer
        fields = ("name", *_EDITABLE, *LIMIT_FIELDS)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for field in (*LIMIT_FIELDS, "http_profile"):
            self.fields[field].required = False

    def clean(self) -> dict[str, Any]:
        data: dict[str, Any] = super().clean() or {}
        if not data.get("http_profile"):
            data["http_profile"] = (
                self.instance.http_profile if self.instance.pk else HttpProfile.INTERLEDGER
            )
        current = limits_of(self.instance) if self.instance.pk else DEFAULT_LIMITS
        values: dict[str, int | None] = {}
        for field in LIMIT_FIELDS:
            if field in self.errors:
                return data  # a field's own range error is reported already
            value = data.get(field)
            if value is None and field != "throughput_per_second":
                value = getattr(current, field)
            values[field] = None if value is None else int(value)
        try:
            PeerLimits(**values)  # type: ignore[arg-type]  # ints or None, checked here
        except InvalidLimits as exc:
            named = next((f for f in LIMIT_FIELDS if str(exc).startswith(f)), None)
            self.add_error(named, str(exc))
            return data
        data.update(values)
        return data


@admin.register(Peer)
class PeerAdmin(_PeerAdminBase):
    form = PeerForm
    list_display = (
        "name",
        "relation",
        "link",
        "enabled",
        "idempotent",
        "balance",
        "connected_since",
        "last_packet_at",
    )
    list_filter = ("relation", "link", "enabled")
    search_fields = ("name", "url")
    readonly_fields = ("balance", "connected_since", "last_packet_at", "created_at", "updated_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Peer | None = None) -> Any:
        fields = tuple(self.readonly_fields)
        return (*fields, "name") if obj is not None else fields

    @admin.display(description="balance (we owe them)")
    def balance(self, obj: Peer) -> str:
        return str(int(obj.account.balance)) if obj.account_id else "-"

    def get_queryset(self, request: HttpRequest) -> Any:
        return super().get_queryset(request).select_related("account")

    def save_model(self, request: HttpRequest, obj: Peer, form: Any, change: bool) -> None:
        data = form.cleaned_data
        token = data.get("new_token") or None
        values = {f: data.get(f) for f in _EDITABLE}
        values["max_packet_amount"] = int(values["max_packet_amount"])
        limits = {f: data.get(f) for f in LIMIT_FIELDS}
        try:
            with transaction.atomic():
                if change:
                    saved = peer_update(
                        name=obj.name,
                        token=token,
                        min_balance=data.get("min_balance"),
                        max_balance=data.get("max_balance"),
                        limits=limits,
                        **values,
                    )
                else:
                    saved = peer_create(
                        name=data["name"],
                        token=token,
                        min_balance=data.get("min_balance"),
                        max_balance=data.get("max_balance"),
                        limits=limits,
                        **values,
                    )
        except PeerError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        obj.pk = saved.peer.pk
        if saved.created and token is None and saved.token:
            self.message_user(request, f"Generated token for {obj.name}: {saved.token}")

    def delete_model(self, request: HttpRequest, obj: Peer) -> None:
        from links.services import peer_remove

        peer_remove(name=obj.name)


@admin.register(BtpStoredResponse)
class BtpStoredResponseAdmin(_StoredAdminBase):
    list_display = ("peer_name", "request_id", "received_at", "expires_at")
    search_fields = ("peer_name",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(HttpAsyncRequest)
class HttpAsyncRequestAdmin(_AsyncAdminBase):
    list_display = ("peer", "request_id", "state", "attempts", "received_at", "delivered_at")
    list_filter = ("state",)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
