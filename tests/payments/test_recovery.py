"""Recovery on start, unaided: receipts a crash left unapplied, webhook retries from their
durable rows, and Celery publishes that failed (``payments.recovery``).

A "restart" is a fresh runtime: the book and its applier closed and forgotten, a new
:class:`~payments.recovery.Recovery` started on the test's loop, nothing carried over
in memory. Waits are on events (a pass finished, the hook answered) with a deadline.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from interledger_site.celery import app as celery_app
from payments import ledger, services, tasks
from payments.ledger import (
    BalanceBook,
    PostingDraft,
    ReceiptDraft,
    get_applier,
    reset_book,
    wait_receipts_applied,
)
from payments.models import IncomingPayment, LedgerAccount, Receipt, WebhookDelivery
from payments.recovery import PassReport, Recovery
from payments.selectors import ledger_report
from tests.payments.conftest import PEER, RECEIVER, Hook, db, make_accounts

pytestmark = pytest.mark.django_db(transaction=True)

PID = b"\x05" * 16
SECRET = "s3cret-for-tests"
DEADLINE = 5.0  # the bound for "applied after a restart"; an event wait, not a sleep


def chunk(i: int, amount: int = 10) -> tuple[list[PostingDraft], list[ReceiptDraft]]:
    key = f"r{i}"
    return [PostingDraft(PEER, -amount, key)], [ReceiptDraft(RECEIVER, PID, i, amount, key)]


@pytest.fixture
async def recoveries() -> AsyncIterator[list[Recovery]]:
    """Recoveries a test starts; all stopped at teardown."""
    started: list[Recovery] = []
    yield started
    for recovery in started:
        await recovery.stop()


def start(recoveries: list[Recovery], **kwargs: Any) -> Recovery:
    recovery = Recovery(**kwargs)
    recovery.start()
    recoveries.append(recovery)
    return recovery


def unapplied() -> int:
    return Receipt.objects.filter(applied_at__isnull=True).count()


async def test_restart_applies_unapplied_receipts_without_a_new_payment(
    book: BalanceBook,
    recoveries: list[Recovery],
    eager_celery: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await db(make_accounts)
    await book.load_account(PEER)
    # The crash: receipts durable, their apply never happened (the process died between
    # COMMIT and the applier).
    with monkeypatch.context() as m:
        m.setattr(ledger, "_queue_apply_receipts", lambda ids: None)
        for i in range(150):
            await book.commit(*chunk(i))
    assert await db(unapplied) == 150
    assert await db(lambda: int(LedgerAccount.objects.get(code=RECEIVER).balance)) == 0

    # The restart: a fresh runtime, and no payment arrives.
    await db(reset_book)
    recovery = start(recoveries, interval=3600)  # only the start-up pass can do it
    report = await asyncio.wait_for(recovery.wait_passes(1), DEADLINE)

    assert report is not None and report.receipts == 150 and not report.errors
    assert await db(unapplied) == 0
    assert await db(lambda: int(LedgerAccount.objects.get(code=RECEIVER).balance)) == 1500
    payment = await db(lambda: IncomingPayment.objects.get(payment_id=PID.hex()))
    assert (int(payment.total), payment.chunks) == (1500, 150)
    assert (await db(ledger_report)).ok
    # A second pass finds nothing: nothing is counted twice.
    assert (await recovery.run_pass(startup=True)).receipts == 0
    assert await db(lambda: int(LedgerAccount.objects.get(code=RECEIVER).balance)) == 1500


async def test_periodic_pass_applies_what_the_normal_path_lost(
    book: BalanceBook,
    recoveries: list[Recovery],
    eager_celery: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await db(make_accounts)
    await book.load_account(PEER)
    recovery = start(recoveries, interval=0.05, receipts_after=timedelta(seconds=30))
    await asyncio.wait_for(recovery.wait_passes(1), DEADLINE)
    with monkeypatch.context() as m:
        m.setattr(ledger, "_queue_apply_receipts", lambda ids: None)  # a lost apply
        await book.commit(*chunk(0))
    # Too young for a periodic pass: the normal path might still be applying it.
    passes = recovery.passes
    await asyncio.wait_for(recovery.wait_passes(passes + 2), DEADLINE)
    assert await db(unapplied) == 1
    # Once older than ``receipts_after``, the next pass applies it.
    await db(lambda: Receipt.objects.update(created_at=timezone.now() - timedelta(minutes=1)))
    passes = recovery.passes
    await asyncio.wait_for(recovery.wait_passes(passes + 2), DEADLINE)
    assert await db(unapplied) == 0
    assert await db(lambda: int(LedgerAccount.objects.get(code=RECEIVER).balance)) == 10


# --- webhooks: retries are durable rows, not timers --------------------------------------------


def failed_first_attempt(hook: Hook) -> int:
    """A delivery whose first attempt got HTTP 500: pending, its retry due at once."""
    make_accounts()
    services.webhook_create(account_code=RECEIVER, url=hook.url, secret=SECRET)
    queued: list[int] = []
    saved = ledger._queue_apply_receipts, services.queue_webhook_deliveries
    ledger._queue_apply_receipts = lambda ids: None  # type: ignore[assignment]
    services.queue_webhook_deliveries = lambda ids: queued.extend(ids) or len(ids)  # type: ignore[assignment]
    try:
        ledger.get_book().commit_sync(*chunk(0))
        services.apply_receipts(receipt_ids=list(Receipt.objects.values_list("id", flat=True)))
    finally:
        ledger._queue_apply_receipts, services.queue_webhook_deliveries = saved  # type: ignore[assignment]
    (delivery_id,) = queued
    hook.statuses = [500]
    assert services.webhook_deliver(delivery_id=delivery_id).status == "retry"
    WebhookDelivery.objects.filter(pk=delivery_id).update(next_attempt_at=timezone.now())
    return delivery_id


async def test_webhook_retry_resumes_from_its_row_after_a_restart(
    book: BalanceBook,
    recoveries: list[Recovery],
    hook: Hook,
    eager_celery: None,
) -> None:
    delivery_id = await db(lambda: failed_first_attempt(hook))
    # The restart: no timer, no task, only the row says a retry is due.
    await db(reset_book)
    recovery = start(recoveries, interval=3600)
    report = await asyncio.wait_for(recovery.wait_passes(1), DEADLINE)
    assert report is not None and report.webhooks == 1
    # The attempt runs on the background pool; wait for it without touching the database.
    assert await asyncio.to_thread(tasks.wait_background_idle, 15)
    delivery = await db(lambda: WebhookDelivery.objects.get(pk=delivery_id))
    assert (delivery.status, delivery.attempts, delivery.response_status) == ("delivered", 2, 200)
    assert len(hook.requests) == 2 and hook.requests[0][1] == hook.requests[1][1]
    # Delivered: later passes queue nothing.
    assert (await recovery.run_pass()).webhooks == 0
    assert len(hook.requests) == 2


def test_a_retry_is_not_sent_before_it_is_due(
    book: BalanceBook,
    hook: Hook,
    eager_celery: None,
) -> None:
    delivery_id = failed_first_attempt(hook)
    later = timezone.now() + timedelta(minutes=5)
    WebhookDelivery.objects.filter(pk=delivery_id).update(next_attempt_at=later)
    assert services.due_webhook_deliveries() == []
    # A stray or duplicated task for "the next attempt" finds it not due and sends nothing.
    assert services.webhook_deliver(delivery_id=delivery_id).status == "skipped"
    assert tasks.deliver_webhook.apply(kwargs={"delivery_id": delivery_id}).get() == "skipped"
    assert len(hook.requests) == 1
    assert WebhookDelivery.objects.get(pk=delivery_id).attempts == 1


@pytest.fixture
def celery_worker_queue(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real Celery worker thread (memory broker, or Redis in the second pass) on a private
    queue; ``deliver_webhook.delay`` is routed to it."""
    queue = f"payments-test-{uuid.uuid4().hex}"
    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    monkeypatch.setattr(
        tasks.deliver_webhook,
        "delay",
        lambda **kw: tasks.deliver_webhook.apply_async(kwargs=kw, queue=queue),
    )
    try:
        with start_worker(
            celery_app, pool="solo", perform_ping_check=False, queues=[queue], shutdown_timeout=10
        ):
            yield queue
    finally:
        celery_app.conf.task_always_eager = before


async def test_celery_mode_retries_from_the_row_through_the_worker(
    book: BalanceBook,
    recoveries: list[Recovery],
    hook: Hook,
    celery_worker_queue: str,
    settings: Any,
) -> None:
    settings.PAYMENTS_WEBHOOK_BACKOFF_BASE = 0.05
    delivery_id = await db(lambda: failed_first_attempt(hook))
    assert hook.answered.acquire(timeout=5)  # the failed first attempt
    hook.statuses = [503]
    recovery = start(recoveries, interval=0.05)
    # Attempt 2 (503) and attempt 3 (200), each queued by a pass once due, run by the worker.
    for _ in range(2):
        assert await asyncio.to_thread(hook.answered.acquire, True, 15)
    delivery = await wait_for_row(delivery_id, "delivered")
    assert (delivery.attempts, delivery.last_error) == (3, "")
    assert len({body for _, body in hook.requests}) == 1  # the same signed body every time
    passes = recovery.passes
    await asyncio.wait_for(recovery.wait_passes(passes + 3), DEADLINE)
    assert len(hook.requests) == 3


async def wait_for_row(delivery_id: int, status: str) -> WebhookDelivery:
    """The delivery once the worker has written ``status`` (it answers the hook first)."""
    for _ in range(500):
        delivery = await db(lambda: WebhookDelivery.objects.get(pk=delivery_id))
        if delivery.status == status:
            return delivery
        await asyncio.sleep(0.02)
    raise AssertionError(f"delivery {delivery_id} never became {status}")


# --- Celery publishes that fail -----------------------------------------------------------------


@pytest.fixture
def celery_mode() -> Iterator[None]:
    before = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = False
    yield
    celery_app.conf.task_always_eager = before


def test_failed_receipt_publish_is_applied_here(
    book: BalanceBook, celery_mode: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_accounts()
    published: list[Any] = []

    def broker_down(*args: Any, **kwargs: Any) -> None:
        published.append(kwargs.get("retry_policy"))
        raise BrokerError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.apply_receipts, "apply_async", broker_down)
    for i in range(3):
        book.commit_sync(*chunk(i))
    assert wait_receipts_applied(10)
    assert published and published[0] == ledger.APPLY_PUBLISH_RETRY  # Celery retried first
    assert get_applier().publish_failures >= 1
    assert unapplied() == 0
    assert int(LedgerAccount.objects.get(code=RECEIVER).balance) == 30
    assert ledger_report().ok


async def test_failed_webhook_publish_is_swept(
    book: BalanceBook,
    recoveries: list[Recovery],
    hook: Hook,
    celery_mode: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    queued: list[dict[str, Any]] = []
    broker_up = threading.Event()

    def delay(**kwargs: Any) -> None:
        if not broker_up.is_set():
            raise BrokerError("Connection refused.")
        queued.append(kwargs)

    monkeypatch.setattr(tasks.deliver_webhook, "delay", delay)

    def receive() -> int:
        make_accounts()
        services.webhook_create(account_code=RECEIVER, url=hook.url, secret=SECRET)
        book.commit_sync(*chunk(0))  # applied here (its publish is mocked away below)
        return WebhookDelivery.objects.get().pk

    monkeypatch.setattr(
        tasks.apply_receipts,
        "apply_async",
        lambda **kw: tasks.apply_receipts.apply(kwargs=kw["kwargs"]),
    )
    delivery_id = await db(receive)
    assert queued == []  # the publish after commit failed: only the row remains
    delivery = await db(lambda: WebhookDelivery.objects.get(pk=delivery_id))
    assert (delivery.status, delivery.attempts) == ("pending", 0)

    broker_up.set()
    recovery = start(recoveries, interval=3600)
    report = await asyncio.wait_for(recovery.wait_passes(1), DEADLINE)
    assert report is not None and report.webhooks == 1
    assert queued == [{"delivery_id": delivery_id, "attempt": 0}]
    # What the worker would run: the due attempt, claimed once.
    assert await db(lambda: tasks.deliver_webhook.apply(kwargs=queued[0]).get()) == "delivered"
    assert await db(lambda: tasks.deliver_webhook.apply(kwargs=queued[0]).get()) == "skipped"
    assert len(hook.requests) == 1


def test_repeated_sweeps_queue_a_due_attempt_once(
    book: BalanceBook, hook: Hook, celery_mode: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the worker is down, passes every few seconds must not pile up messages."""
    queued: list[dict[str, Any]] = []
    monkeypatch.setattr(tasks.deliver_webhook, "delay", lambda **kw: queued.append(kw))
    delivery_id = failed_first_attempt(hook)
    assert services.webhook_deliveries_queue_due() == 1
    assert services.webhook_deliveries_queue_due() == 0  # marked queued: not due again
    assert queued == [{"delivery_id": delivery_id, "attempt": 1}]
    # Its message was lost: once the queue lease has run out, it is queued again.
    later = timezone.now() + services.WEBHOOK_QUEUE_LEASE + timedelta(seconds=1)
    assert services.webhook_deliveries_queue_due(now=later) == 1
    assert queued[-1] == {"delivery_id": delivery_id, "attempt": 1}
    # Both messages for attempt 1 run: one sends, the other finds the attempt made.
    outcomes = [tasks.deliver_webhook.apply(kwargs=kw).get() for kw in queued]
    assert outcomes == ["delivered", "skipped"]
    assert len(hook.requests) == 2


def test_sweep_task_queues_due_deliveries(
    book: BalanceBook,
    hook: Hook,
    eager_celery: None,
) -> None:
    delivery_id = failed_first_attempt(hook)
    assert tasks.retry_webhooks() == 1
    assert tasks.wait_background_idle(15)
    assert WebhookDelivery.objects.get(pk=delivery_id).status == "delivered"


# --- wiring -----------------------------------------------------------------------------------


async def test_runtime_start_runs_the_start_up_pass(
    book: BalanceBook, eager_celery: None
) -> None:
    """A serving runtime (``interledger_site.runtime``) starts the sweeps on its loop."""
    from interledger_site.runtime import NodeRuntime

    await db(make_accounts)
    await book.load_account(PEER)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(ledger, "_queue_apply_receipts", lambda ids: None)  # the crash
        await book.commit(*chunk(0))
    await db(reset_book)
    runtime = NodeRuntime(name="recovery-test", recovery=True, shared=False)
    runtime.recovery = fresh = Recovery(interval=3600)
    try:
        await runtime.start()
        report = await asyncio.wait_for(_started(fresh), DEADLINE)
        assert report is not None and report.receipts == 1
        assert await db(unapplied) == 0
    finally:
        await runtime.stop()
    assert not fresh.running


async def _started(recovery: Recovery) -> PassReport | None:
    while not recovery.running:  # scheduled with call_soon_threadsafe: next loop turn
        await asyncio.sleep(0)
    return await recovery.wait_passes(1)
