"""A real headless Chromium on a live node: a monetized page shows its paid part, without a
reload, once a sender has paid this browser session's own receiver over BTP."""

from __future__ import annotations

import asyncio
import base64
import os
import threading
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from django.utils import timezone

from ilp.packet import Fulfill, Reply
from ilp.psk2_sender import build_chunk
from receivers.paid import PayHeader
from receivers.testing import UINT64_MAX
from tests.browser.btp_sender import BtpSender
from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, LiveNode

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(), reason=f"needs Debian's chromium at {CHROMIUM}"
    ),
]

PAID_TEXT = "The secret is more butter."
PAGE_SETUP = """
from receivers.models import Receiver
from receivers.pages import page_create
r = Receiver.objects.get(name="alice")
page_create(owner=r.user, receiver=r, slug="recipe", title="A recipe",
            public_body="Free for all.", paid_body="The secret is more butter.",
            threshold=1000, published=True)
"""


def spsp(url: str) -> PayHeader:
    response = httpx.get(url, headers={"Accept": "application/spsp+json"}, trust_env=False)
    assert response.status_code == 200, response.text
    body = response.json()
    return PayHeader(body["destination_account"], base64.b64decode(body["shared_secret"]), None)


def pay_over_btp(node: LiveNode, details: PayHeader, amount: int) -> Reply:
    """One PSK2 chunk from a BTP child account of the node, in a thread of its own (the
    Playwright sync API owns this thread's event loop)."""
    result: list[Reply] = []

    async def run() -> None:
        sender = BtpSender(node.btp_url("payer", "payertoken"))
        await sender.connect()
        try:
            prepare = build_chunk(
                details.shared_secret,
                details.destination,
                payment_id=os.urandom(16),
                sequence=1,
                payment_amount=UINT64_MAX,
                chunk_amount=0,
                source_amount=amount,
                expires_at=timezone.now() + timedelta(seconds=30),
                iv=os.urandom(12),
                last=False,
            )
            result.append(await sender.send(prepare))
        finally:
            await sender.close()

    thread = threading.Thread(target=lambda: asyncio.run(run()))
    thread.start()
    thread.join(30)
    assert result, "the payment did not complete"
    return result[0]


def test_the_paid_part_appears_live_after_paying(live_node: LiveNode) -> None:
    from playwright.sync_api import sync_playwright

    live_node.manage("add_pointer", "alice")
    live_node.manage(
        "add_peer", "payer", "--relation", "child", "--link", "btp-server", "--token", "payertoken"
    )
    live_node.shell(PAGE_SETUP)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            frames: list[str] = []
            page.on(
                "websocket",
                lambda ws: ws.on("framereceived", lambda payload: frames.append(str(payload))),
            )
            page.goto(f"{live_node.base_url}/pages/recipe/")
            assert "Free for all." in page.content()
            assert PAID_TEXT not in page.content()  # not even hidden in the markup
            # The page names this session's own URL in every tag form.
            spsp_url = page.get_attribute('link[rel="monetization"]', "href")
            assert spsp_url and "/pages/recipe/spsp/" in spsp_url
            pointer = page.get_attribute('meta[name="monetization"]', "content")
            assert pointer == "$" + spsp_url.split("://", 1)[1]
            # The link is an Open Payments wallet address (what today's extension pays).
            wallet = httpx.get(spsp_url, headers={"Accept": "application/json"}, trust_env=False)
            assert wallet.status_code == 200, wallet.text
            assert wallet.json()["id"] == spsp_url
            assert wallet.json()["authServer"] == f"{live_node.base_url}/auth"
            page.evaluate("window.__sameDocument = true")

            # Below the threshold: the progress moves, the paid part stays away.
            assert isinstance(pay_over_btp(live_node, spsp(spsp_url), 400), Fulfill)
            page.wait_for_function(
                "document.getElementById('wm-received').textContent === '0.0000004'",
                timeout=15_000,
            )
            assert PAID_TEXT not in page.content()

            # The rest: the server pushes the paid part over the WebSocket.
            assert isinstance(pay_over_btp(live_node, spsp(spsp_url), 600), Fulfill)
            page.get_by_text(PAID_TEXT).wait_for(timeout=15_000)
            assert page.evaluate("window.__sameDocument") is True  # no reload happened
            assert any(PAID_TEXT in frame for frame in frames), "pushed over the WebSocket"

            # Another browser session has paid nothing and sees nothing.
            other = browser.new_context().new_page()
            other.goto(f"{live_node.base_url}/pages/recipe/")
            assert PAID_TEXT not in other.content()
        finally:
            browser.close()
