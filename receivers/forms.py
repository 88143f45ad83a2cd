"""Forms of the user's pages (input checks only; the services decide)."""

from __future__ import annotations

from django import forms

from receivers.models import Receiver
from receivers.names import claim_problem, route_conflict


class ReceiverCreateForm(forms.Form):
    name = forms.CharField(
        max_length=63,
        help_text="Lowercase letters, digits, '_' and '-'. It becomes $host/name and cannot change.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    description = forms.CharField(max_length=200, required=False)

    def clean_name(self) -> str:
        name: str = self.cleaned_data["name"].strip()
        problem = claim_problem(name) or route_conflict(name)
        if problem is not None:
            raise forms.ValidationError(problem)
        if Receiver.objects.filter(name=name).exists():
            raise forms.ValidationError(f"the pointer name '{name}' is taken")
        return name


class ReceiverUpdateForm(forms.Form):
    description = forms.CharField(max_length=200, required=False)
