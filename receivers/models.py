"""Models of receivers: one row per payment pointer ``$host/<name>``."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse

from receivers.names import validate_receiver_name


class Receiver(models.Model):
    """A payment pointer hosted by this node.

    Money sent to it lands on ``account`` (a ``payments.LedgerAccount`` of kind
    ``receiver``, code ``receiver:<name>``). The name is immutable once issued: it is in
    every pointer and ILP address handed out for it. Write through
    :mod:`receivers.services`.
    """

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="receivers"
    )
    name = models.CharField(max_length=63, unique=True, validators=[validate_receiver_name])
    account = models.OneToOneField(
        "payments.LedgerAccount", on_delete=models.PROTECT, related_name="receiver"
    )
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("receivers:pointer-detail", args=[self.name])
