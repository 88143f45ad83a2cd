"""Admin of payment pointers: created through the service (which makes the ledger account),
the name fixed once issued."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.core.exceptions import ValidationError
from django.forms import ModelForm
from django.http import HttpRequest

from receivers.errors import ReceiverError
from receivers.models import Receiver
from receivers.names import route_conflict, site_name_problem
from receivers.services import receiver_create, receiver_update

if TYPE_CHECKING:
    _Base = admin.ModelAdmin[Receiver]
    _Form = ModelForm[Receiver]
else:
    _Base = admin.ModelAdmin
    _Form = ModelForm


class ReceiverAddForm(_Form):
    class Meta:
        model = Receiver
        fields = ("user", "name", "description")

    def clean_name(self) -> str:
        name: str = self.cleaned_data["name"]
        conflict = site_name_problem(name) or route_conflict(name)
        if conflict is not None:
            raise ValidationError(conflict)
        return name


@admin.register(Receiver)
class ReceiverAdmin(_Base):
    list_display = ("name", "user", "account", "description", "created_at")
    search_fields = ("name", "user__username", "description")
    list_select_related = ("user", "account")
    date_hierarchy = "created_at"

    def get_form(
        self, request: HttpRequest, obj: Receiver | None = None, change: bool = False, **kwargs: Any
    ) -> type[_Form]:
        if obj is None:
            kwargs["form"] = ReceiverAddForm
        return super().get_form(request, obj, change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: Receiver | None = None) -> Any:
        if obj is None:
            return ("user", "name", "description")
        return ("name", "user", "account", "description", "created_at")

    def get_readonly_fields(self, request: HttpRequest, obj: Receiver | None = None) -> Any:
        if obj is None:
            return ()
        return ("name", "user", "account", "created_at")

    def save_model(self, request: HttpRequest, obj: Receiver, form: Any, change: bool) -> None:
        if change:
            receiver_update(receiver=obj, description=obj.description)
            return
        try:
            created = receiver_create(user=obj.user, name=obj.name, description=obj.description)
        except ReceiverError as exc:  # raced with another creator since the form was valid
            raise ValidationError(exc.message) from exc
        obj.pk = created.pk
        obj.account = created.account
        obj.created_at = created.created_at
