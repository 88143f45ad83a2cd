"""Forms of the dashboard pages: validation only."""

from __future__ import annotations

from typing import Any

from django import forms


class PaymentFilterForm(forms.Form):
    receiver = forms.CharField(
        required=False, max_length=63, widget=forms.TextInput(attrs={"placeholder": "any"})
    )
    q = forms.CharField(
        required=False,
        max_length=64,
        label="Search",
        widget=forms.TextInput(
            attrs={"placeholder": "payment id or pointer name", "type": "search"}
        ),
    )
    date_from = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"})
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("date_from"), data.get("date_to")
        if start and end and start > end:
            raise forms.ValidationError("'From' must not be after 'To'.")
        return data


class SearchForm(forms.Form):
    q = forms.CharField(
        required=False,
        max_length=64,
        label="Search",
        widget=forms.TextInput(attrs={"placeholder": "pointer or owner", "type": "search"}),
    )


class WebhookCreateForm(forms.Form):
    receiver = forms.ChoiceField(label="Payment pointer")
    url = forms.URLField(
        label="URL",
        max_length=500,
        assume_scheme="https",
        help_text="We POST a signed JSON body here for every incoming payment.",
        widget=forms.URLInput(attrs={"placeholder": "https://example.org/hooks/ilp"}),
    )

    def __init__(self, *args: Any, receiver_names: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["receiver"].choices = [(n, n) for n in receiver_names]  # type: ignore[attr-defined]
