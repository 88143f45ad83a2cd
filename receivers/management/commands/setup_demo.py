"""``python manage.py setup_demo``: the demo superuser ``demo`` (password ``demo``) and its
pointer ``demo``. Idempotent (``make run`` calls it every time); an existing ``demo`` user
keeps its password."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from receivers.errors import ReceiverError
from receivers.pointers import pointer_for, public_base_url, spsp_url_for
from receivers.services import receiver_ensure, user_ensure

DEMO_USER = "demo"
DEMO_PASSWORD = "demo"
DEMO_POINTER = "demo"


class Command(BaseCommand):
    help = "Create the demo superuser (demo/demo) and the payment pointer 'demo' if missing."

    def handle(self, *args: Any, **options: Any) -> None:
        user, user_created = user_ensure(username=DEMO_USER, password=DEMO_PASSWORD, superuser=True)
        try:
            receiver, created = receiver_ensure(
                user=user, name=DEMO_POINTER, description="Demo payment pointer"
            )
        except ReceiverError as exc:
            raise CommandError(exc.message) from exc
        base_url = public_base_url()
        self.stdout.write(
            f"demo user: {DEMO_USER} ({'created, password demo' if user_created else 'exists'})"
        )
        self.stdout.write(
            f"pointer:   {pointer_for(receiver.name, base_url=base_url)}"
            f" ({'created' if created else 'exists'})"
        )
        self.stdout.write(f"spsp url:  {spsp_url_for(receiver.name, base_url=base_url)}")
