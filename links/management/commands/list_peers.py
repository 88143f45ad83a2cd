"""``manage.py list_peers``: one line per peer with its balance and live status."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from links.selectors import peer_list


class Command(BaseCommand):
    help = "List peers with balance and link status."

    def handle(self, *args: Any, **opts: Any) -> None:
        rows = [("NAME", "RELATION", "LINK", "ENABLED", "BALANCE", "STATUS", "LAST PACKET")]
        for peer in peer_list():
            status = (
                f"connected since {peer.connected_since:%Y-%m-%d %H:%M:%S}"
                if peer.connected_since
                else "down"
            )
            last = f"{peer.last_packet_at:%Y-%m-%d %H:%M:%S}" if peer.last_packet_at else "-"
            rows.append(
                (
                    peer.name,
                    peer.relation,
                    peer.link,
                    "yes" if peer.enabled else "no",
                    str(int(peer.account.balance)),
                    status,
                    last,
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            self.stdout.write(
                "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            )
