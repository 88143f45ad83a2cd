"""``python manage.py add_pointer NAME [--user USER] [--description TEXT]``

Issues the payment pointer ``$host/NAME`` (idempotent for the same user) and prints it with
its SPSP URL. The user (default: NAME) is created without a usable password if missing.
The host comes from ``ILP_PUBLIC_URL``, else ``http://127.0.0.1:8000``.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from receivers.errors import ReceiverError
from receivers.pointers import pointer_for, public_base_url, spsp_url_for
from receivers.services import receiver_ensure, user_ensure


class Command(BaseCommand):
    help = (
        "Create a payment pointer $host/NAME (and its user if missing); print it and its SPSP URL."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name", help="pointer name: lowercase letters, digits, '_' and '-'")
        parser.add_argument("--user", help="owner's username (default: NAME); created if missing")
        parser.add_argument("--description", default="", help="shown on the pointer's page")

    def handle(self, *args: Any, **options: Any) -> None:
        name: str = options["name"]
        username: str = options["user"] or name
        user, user_created = user_ensure(username=username)
        try:
            receiver, created = receiver_ensure(
                user=user, name=name, description=options["description"]
            )
        except ReceiverError as exc:
            raise CommandError(exc.message) from exc
        base_url = public_base_url()
        if user_created:
            self.stderr.write(
                f"created user {username!r} (no password; set one with changepassword)"
            )
        self.stderr.write(
            f"{'created' if created else 'exists:'} pointer {receiver.name!r} of {username!r}"
        )
        self.stdout.write(f"pointer:   {pointer_for(receiver.name, base_url=base_url)}")
        self.stdout.write(f"spsp url:  {spsp_url_for(receiver.name, base_url=base_url)}")
