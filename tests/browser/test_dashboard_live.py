"""A real headless Chromium on a live node (daphne subprocess): an operator logs in, browses
the dashboard, creates a pointer on /me/, a sender pays it over BTP, and the payment shows
up on the open dashboard over ``ws/ops/`` without a reload.

With ``DASHBOARD_SCREENSHOTS=<dir>`` set (``scripts/screenshots.py`` does it), the main
pages are saved there as PNG files.
"""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.utils import timezone

from ilp.packet import Fulfill, Reply
from ilp.psk2_sender import build_chunk
from tests.browser.btp_sender import BtpSender
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, LiveNode

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"needs Debian's chromium at {CHROMIUM}"
    ),
]

PASSWORD = "op-password-1"
SETUP = f"""
from django.contrib.auth.models import User
from receivers.services import receiver_create
User.objects.create_superuser("op", "", "{PASSWORD}")
carol = User.objects.create_user("carol", password="carol-password")
receiver_create(user=carol, name="tips", description="Carol's tip jar")
"""
SCALE = 10**9  # XRP at scale 9 on the live node


def spsp(url: str) -> tuple[str, bytes]:
    response = httpx.get(url, headers={"Accept": "application/spsp+json"}, trust_env=False)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["destination_account"], base64.b64decode(body["shared_secret"])


def pay_over_btp(node: LiveNode, pointer_url: str, amounts: list[int]) -> list[Reply]:
    """One PSK2 chunk per amount, each its own payment, from the BTP child ``payer``; in a
    thread of its own (Playwright's sync API owns this thread's event loop)."""
    replies: list[Reply] = []

    async def run() -> None:
        sender = BtpSender(node.btp_url("payer", "payertoken"))
        await sender.connect()
        try:
            for amount in amounts:
                destination, secret = spsp(pointer_url)
                prepare = build_chunk(
                    secret,
                    destination,
                    payment_id=os.urandom(16),
                    sequence=0,
                    payment_amount=amount,
                    chunk_amount=0,
                    source_amount=amount,
                    expires_at=timezone.now() + timedelta(seconds=30),
                    iv=os.urandom(12),
                    last=True,
                )
                replies.append(await sender.send(prepare))
        finally:
            await sender.close()

    thread = threading.Thread(target=lambda: asyncio.run(run()))
    thread.start()
    thread.join(60)
    assert len(replies) == len(amounts), "the payments did not complete"
    return replies


class Shots:
    def __init__(self, directory: str | None) -> None:
        self.directory = Path(directory) if directory else None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    def take(self, page: Any, name: str, *, full_page: bool = True) -> None:
        if self.directory is not None:
            page.screenshot(path=str(self.directory / f"{name}.png"), full_page=full_page)


def _serve_swagger_locally(page: Any) -> bool:
    """Swagger UI's files come from a CDN this machine cannot reach: serve them from
    ``drf-spectacular-sidecar`` when it is installed. ``False`` when it is not."""
    try:
        import drf_spectacular_sidecar
    except ImportError:
        page.route("https://cdn.jsdelivr.net/**", lambda route: route.abort())
        return False
    dist = Path(drf_spectacular_sidecar.__file__).parent / "static/drf_spectacular_sidecar"
    dist = dist / "swagger-ui-dist"

    def fulfill(route: Any) -> None:
        name = route.request.url.rsplit("/", 1)[-1].split("?")[0]
        local = dist / name
        if local.is_file():
            route.fulfill(path=str(local))
        else:
            route.abort()

    page.route("https://cdn.jsdelivr.net/npm/swagger-ui-dist@*/**", fulfill)
    return True


def test_payment_shows_up_live_on_the_dashboard(live_node: LiveNode) -> None:
    from playwright.sync_api import expect, sync_playwright

    # On Postgres + Redis receipts are applied by the node's applier after the Fulfill, and CI
    # runs this beside other suites on 2 cores: 5 s (Playwright's default) was once too short.
    expect.set_options(timeout=15_000)
    live_node.shell(SETUP)
    live_node.manage(
        "add_peer", "payer", "--relation", "child", "--link", "btp-server", "--token",
        "payertoken", "--min-balance", str(-100 * SCALE),
    )  # fmt: skip
    live_node.manage(
        "add_peer", "bank", "--relation", "peer", "--link", "http-sync",
        "--url", "http://127.0.0.1:9/ilp", "--max-balance", str(50 * SCALE),
    )  # fmt: skip
    base = live_node.base_url
    shots = Shots(os.environ.get("DASHBOARD_SCREENSHOTS"))
    # Some history first, so the chart and the tables have something to show.
    history = pay_over_btp(live_node, f"{base}/tips", [3 * SCALE, 1_250_000_000, 700_000_000])
    assert all(isinstance(r, Fulfill) for r in history), history

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # An anonymous visitor is sent to the login page.
            page.goto(f"{base}/ops/")
            assert "/admin/login/" in page.url
            page.goto(f"{base}/accounts/login/?next=/ops/")
            page.fill("input[name=username]", "op")
            page.fill("input[name=password]", PASSWORD)
            page.click("main button[type=submit]")
            page.wait_for_url(f"{base}/ops/")

            # The dashboard goes live over the WebSocket.
            expect(page.locator("#live-state")).to_contain_text("live ·", timeout=15_000)
            expect(page.locator("#recent-body")).to_contain_text("tips")
            expect(page.locator("#peers-body")).to_contain_text("payer")
            expect(page.locator('[data-check="Database"]')).to_contain_text("reachable")
            assert page.locator("#chart svg rect.bar:not(.empty)").count() >= 1

            page.goto(f"{base}/ops/peers/")
            expect(page.locator("#live-state")).to_contain_text("live ·", timeout=15_000)
            expect(page.locator('tr[data-peer="bank"]')).to_contain_text("ready")
            expect(page.locator('tr[data-peer="payer"]')).to_contain_text("-4.95 XRP")
            shots.take(page, "peers")

            page.goto(f"{base}/ops/payments/?receiver=tips")
            expect(page.locator("main table")).to_contain_text("1.25 XRP")
            shots.take(page, "payments")

            # A pointer of one's own, made on /me/.
            page.goto(f"{base}/me/")
            page.fill("input[name=name]", "coffee")
            page.fill("input[name=description]", "The office coffee fund")
            page.click("main form button[type=submit]")
            page.wait_for_url(f"{base}/me/pointers/coffee/")
            expect(page.locator("h1")).to_contain_text("/coffee")
            shots.take(page, "pointer-detail")
            page.goto(f"{base}/coffee")
            expect(page.locator("main")).to_contain_text("coffee")
            shots.take(page, "pointer")

            # Pay it while the dashboard is open: the row arrives without a reload.
            page.goto(f"{base}/ops/")
            expect(page.locator("#live-state")).to_contain_text("live ·", timeout=15_000)
            page.evaluate("window.__sameDocument = true")
            seen = page.evaluate("window.opsLive.snapshots")
            assert "coffee" not in page.locator("#recent-body").inner_text()
            (reply,) = pay_over_btp(live_node, f"{base}/coffee", [2_500_000_000])
            assert isinstance(reply, Fulfill), reply
            row = page.locator("#recent-body tr", has_text="coffee")
            expect(row).to_contain_text("2.5 XRP", timeout=15_000)
            expect(row).to_contain_text("op")
            expect(row).to_have_class("new")  # highlighted as it arrives
            assert page.evaluate("window.__sameDocument") is True
            assert page.evaluate("window.opsLive.snapshots") > seen
            expect(page.locator('[data-live="totals.payments_24h"]')).to_have_text("4")
            page.wait_for_timeout(2600)  # let the highlight fade for the picture
            shots.take(page, "dashboard")

            # The user's side: pointers, webhooks, API token.
            page.goto(f"{base}/me/")
            expect(page.locator("main table")).to_contain_text("2.5 XRP")
            shots.take(page, "me")
            page.goto(f"{base}/me/webhooks/")
            page.select_option("select[name=receiver]", "coffee")
            page.fill("input[name=url]", "https://example.org/hooks/ilp")
            page.click("main form.stack button[type=submit]")
            expect(page.locator("main table")).to_contain_text("https://example.org/hooks/ilp")
            shots.take(page, "me-webhooks")
            page.goto(f"{base}/me/api-token/")
            page.click("main form button[type=submit]")
            expect(page.locator("#token summary")).to_be_visible()
            shots.take(page, "me-api-token")

            # The API docs, with the session: the operator's endpoints are described.
            if _serve_swagger_locally(page):
                page.goto(f"{base}/api/docs/")
                expect(page.locator(".swagger-ui .info")).to_contain_text(
                    "Interledger site API", timeout=15_000
                )
                expect(page.locator(".swagger-ui")).to_contain_text("/api/v1/peers/")
                shots.take(page, "api-docs", full_page=False)
        finally:
            browser.close()
