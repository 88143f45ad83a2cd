"""Webhooks against a real HTTP server on loopback: signature, retries, idempotency."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from payments import services, tasks
from payments.errors import WebhookError
from payments.ledger import BalanceBook, PostingDraft, ReceiptDraft
from payments.models import WebhookDelivery
from payments.tasks import deliver_webhook
from tests.payments.conftest import PEER, RECEIVER, Hook, make_accounts

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "s3cret-for-tests"


def paid_delivery(book: BalanceBook, hook: Hook, captured_apply: list[list[int]]) -> int:
    """Receive one chunk with a webhook registered; return the delivery id (not yet sent)."""
    make_accounts()
    services.webhook_create(account_code=RECEIVER, url=hook.url, secret=SECRET)
    book.commit_sync(
        [PostingDraft(PEER, -42, "pkt1")], [ReceiptDraft(RECEIVER, b"\x07" * 16, 0, 42, "pkt1")]
    )
    queued: list[int] = []
    original = services.queue_webhook_deliveries
    services.queue_webhook_deliveries = queued.extend  # type: ignore[assignment]
    try:
        services.apply_receipts(receipt_ids=captured_apply[0])
    finally:
        services.queue_webhook_deliveries = original  # type: ignore[assignment]
    assert len(queued) == 1
    return queued[0]


def test_delivery_is_signed_and_delivered_once(
    book: BalanceBook, hook: Hook, captured_apply: list[list[int]]
) -> None:
    delivery_id = paid_delivery(book, hook, captured_apply)
    result = services.webhook_deliver(delivery_id=delivery_id, attempt=0)
    assert result.status == "delivered"
    assert len(hook.requests) == 1
    headers, body = hook.requests[0]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-ILP-Signature"] == expected
    assert services.verify_webhook_signature(secret=SECRET, body=body, header=expected)
    assert not services.verify_webhook_signature(secret="other", body=body, header=expected)
    payload = json.loads(body)
    assert payload["event"] == "incoming_payment.updated"
    assert payload["total"] == "42" and payload["chunks"] == 1
    assert payload["account"] == RECEIVER and payload["payment_id"] == "07" * 16
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert headers["X-ILP-Delivery"] == delivery.key
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("delivered", 1, 200)
    # Replays of the same attempt, or any later one, send nothing.
    assert services.webhook_deliver(delivery_id=delivery_id, attempt=0).status == "skipped"
    assert services.webhook_deliver(delivery_id=delivery_id, attempt=1).status == "skipped"
    assert deliver_webhook.apply(kwargs={"delivery_id": delivery_id}).get() == "skipped"
    assert len(hook.requests) == 1


def test_failed_attempt_schedules_the_next_one(
    book: BalanceBook, hook: Hook, captured_apply: list[list[int]]
) -> None:
    delivery_id = paid_delivery(book, hook, captured_apply)
    hook.statuses = [500]
    result = services.webhook_deliver(delivery_id=delivery_id, attempt=0)
    assert (result.status, result.retry_in) == ("retry", services.webhook_backoff(0))
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("pending", 1, "HTTP 500")
    assert delivery.next_attempt_at is not None
    assert services.webhook_backoff(1) == 2 * services.webhook_backoff(0)
    assert services.webhook_backoff(50) == services.WEBHOOK_BACKOFF_CAP


def test_delivery_gives_up_after_max_attempts(
    book: BalanceBook, hook: Hook, captured_apply: list[list[int]]
) -> None:
    delivery_id = paid_delivery(book, hook, captured_apply)
    hook.statuses = [500] * services.WEBHOOK_MAX_ATTEMPTS
    outcomes = [
        services.webhook_deliver(delivery_id=delivery_id, attempt=n).status
        for n in range(services.WEBHOOK_MAX_ATTEMPTS)
    ]
    assert outcomes == ["retry"] * (services.WEBHOOK_MAX_ATTEMPTS - 1) + ["failed"]
    assert len(hook.requests) == services.WEBHOOK_MAX_ATTEMPTS
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert (delivery.status, delivery.attempts) == ("failed", services.WEBHOOK_MAX_ATTEMPTS)
    assert services.due_webhook_deliveries() == []


def test_unreachable_endpoint_is_an_error_not_a_crash(
    book: BalanceBook, hook: Hook, captured_apply: list[list[int]]
) -> None:
    delivery_id = paid_delivery(book, hook, captured_apply)
    hook_row = WebhookDelivery.objects.get(pk=delivery_id).webhook
    hook_row.url = "http://127.0.0.1:9/closed"
    hook_row.save(update_fields=["url"])
    result = services.webhook_deliver(delivery_id=delivery_id, attempt=0, timeout=2)
    assert result.status == "retry"
    assert "ConnectError" in WebhookDelivery.objects.get(pk=delivery_id).last_error


def test_end_to_end_in_the_embedded_mode(book: BalanceBook, hook: Hook, eager_celery: None) -> None:
    make_accounts()
    services.webhook_create(account_code=RECEIVER, url=hook.url, secret=SECRET)
    book.commit_sync(
        [PostingDraft(PEER, -5, "pkt1")], [ReceiptDraft(RECEIVER, b"\x07" * 16, 0, 5, "pkt1")]
    )
    # apply_receipts ran on commit; the delivery runs on the background pool.
    assert tasks.wait_background_idle(15)
    assert WebhookDelivery.objects.get().status == "delivered"
    assert len(hook.requests) == 1


def test_webhook_create_validates(book: BalanceBook) -> None:
    make_accounts()
    with pytest.raises(WebhookError):
        services.webhook_create(account_code=RECEIVER, url="ftp://example.com/")
    created = services.webhook_create(account_code=RECEIVER, url="https://example.com/hook")
    assert len(created.secret) == 64
