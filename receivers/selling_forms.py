"""Forms of the selling pages (input checks only; the services decide)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django import forms

from ilp.oer import UINT64_MAX
from receivers.models import Receiver

if TYPE_CHECKING:
    from django.contrib.auth.models import User

_AMOUNT_HELP = "In base units of the pointer's asset (e.g. 1000000 at scale 9 is 0.001)."


def _receivers_of(user: User) -> forms.ModelChoiceField[Receiver]:
    return forms.ModelChoiceField(
        queryset=Receiver.objects.filter(user=user).order_by("name"),
        to_field_name="name",
        empty_label=None,
        label="Paid to",
        help_text="One of your payment pointers.",
    )


class PageEditForm(forms.Form):
    title = forms.CharField(max_length=200)
    public_body = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5}),
        required=False,
        label="Public part",
        help_text="Everyone sees this.",
    )
    paid_body = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5}),
        label="Paid part",
        help_text="Sent only to a visitor whose session has paid the threshold.",
    )
    threshold = forms.IntegerField(min_value=1, max_value=UINT64_MAX, help_text=_AMOUNT_HELP)
    published = forms.BooleanField(required=False)


class PageCreateForm(PageEditForm):
    slug = forms.SlugField(
        max_length=80, help_text="The page lives at /pages/<slug>/; it cannot change."
    )

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["receiver"] = _receivers_of(user)
        self.order_fields(["slug", "receiver", "title"])


class OrderCreateForm(forms.Form):
    description = forms.CharField(max_length=200)
    amount = forms.IntegerField(min_value=1, max_value=UINT64_MAX, help_text=_AMOUNT_HELP)
    reference = forms.CharField(
        max_length=100, required=False, help_text="Your own order number (optional)."
    )

    def __init__(self, *args: Any, user: User, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["receiver"] = _receivers_of(user)
        self.order_fields(["receiver", "description", "amount"])
