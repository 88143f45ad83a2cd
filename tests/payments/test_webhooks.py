"""Webhooks against a real HTTP server on loopback: signature, retries, idempotency."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from celery.contrib.testing.worker import start_worker
from django.db import OperationalError

from interledger_site.celery import app as celery_app
from payments import services, tasks
from payments.errors import WebhookError
from payments.ledger import BalanceBook, PostingDraft, ReceiptDraft
from payments.models import WebhookDelivery
from payments.tasks import deliver_webhook
from tests.payments.conftest import PEER, RECEIVER, make_accounts

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "s3cret-for-tests"


@dataclass
class Hook:
    """A loopback HTTP server answering with ``statuses`` in turn (then 200)."""

    url: str
    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with state.lock:
                state.requests.append((dict(self.headers.items()), body))
                status = state.statuses.pop(0) if state.statuses else 200
            if state.delay:
                time.sleep(state.delay)
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


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


@pytest.fixture
def fast_backoff(settings) -> None:  # type: ignore[no-untyped-def]
    settings.PAYMENTS_WEBHOOK_BACKOFF_BASE = 0.05


@pytest.fixture
def celery_worker_queue(fast_backoff: None) -> Iterator[str]:
    """A real Celery worker thread (memory broker, or Redis in the second pass) on a private queue."""
    queue = f"payments-test-{uuid.uuid4().hex}"
    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    try:
        with start_worker(
            celery_app, pool="solo", perform_ping_check=False, queues=[queue], shutdown_timeout=10
        ):
            yield queue
    finally:
        celery_app.conf.task_always_eager = before


def wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def delivery_status(delivery_id: int) -> str | None:
    try:
        return WebhookDelivery.objects.get(pk=delivery_id).status
    except OperationalError:  # "database table is locked" (SQLite shared cache only)
        return None


def test_delivery_is_retried_with_backoff_by_a_celery_worker(
    book: BalanceBook, hook: Hook, captured_apply: list[list[int]], celery_worker_queue: str
) -> None:
    delivery_id = paid_delivery(book, hook, captured_apply)
    hook.statuses = [500, 503]
    deliver_webhook.apply_async(kwargs={"delivery_id": delivery_id}, queue=celery_worker_queue)
    # Watch the server first, the database last: SQLite's shared-cache test database
    # fails (instead of waiting) when two threads touch a table at once.
    wait_for(lambda: len(hook.requests) == 3)
    time.sleep(0.3)
    wait_for(lambda: delivery_status(delivery_id) == "delivered")
    assert len(hook.requests) == 3
    assert len({body for _, body in hook.requests}) == 1  # the same signed body every time
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert (delivery.attempts, delivery.last_error) == (3, "")
    # A duplicated message for an attempt already made is a no-op.
    deliver_webhook.apply_async(
        kwargs={"delivery_id": delivery_id, "attempt": 1}, queue=celery_worker_queue
    )
    deliver_webhook.apply_async(kwargs={"delivery_id": delivery_id}, queue=celery_worker_queue)
    time.sleep(0.5)
    assert len(hook.requests) == 3


def test_eager_mode_retries_on_a_timer(
    book: BalanceBook, hook: Hook, captured_apply: list[list[int]], fast_backoff: None
) -> None:
    delivery_id = paid_delivery(book, hook, captured_apply)
    hook.statuses = [500, 503]
    assert deliver_webhook.apply(kwargs={"delivery_id": delivery_id}).get() == "retry"
    # Wait without touching the database (SQLite's shared-cache test database locks tables).
    assert tasks.wait_background_idle(15)
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert (delivery.status, delivery.attempts) == ("delivered", 3)
    assert len(hook.requests) == 3


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
