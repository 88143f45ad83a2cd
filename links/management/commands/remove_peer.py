"""``manage.py remove_peer NAME``: delete a peer (its ledger account is kept)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from links.services import peer_remove


class Command(BaseCommand):
    help = "Remove a peer. Its ledger account and postings stay."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")

    def handle(self, *args: Any, **opts: Any) -> None:
        if not peer_remove(name=opts["name"]):
            raise CommandError(f"no peer named {opts['name']!r}")
        self.stdout.write(f"peer {opts['name']} removed")
