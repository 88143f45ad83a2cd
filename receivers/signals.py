"""Keeps the in-process receiver directory in step with the table (no business logic)."""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver as on

from receivers.directory import get_directory
from receivers.models import Receiver


@on(post_save, sender=Receiver, dispatch_uid="receivers.directory.saved")
@on(post_delete, sender=Receiver, dispatch_uid="receivers.directory.deleted")
def forget_receiver(sender: type[Receiver], instance: Receiver, **kwargs: Any) -> None:
    get_directory().invalidate(instance.name)
