"""Recovery: what a crash, a killed worker or a lost message left behind is picked up by
the serving process itself, at start-up and every few seconds, in both modes.

One pass (:meth:`Recovery.run_pass`):

1. **Receipts.** Every receipt still unapplied (at start-up: all of them; afterwards:
   those older than ``receipts_after``, so the normal path is not raced) is applied *in
   this process* (``ReceiptApplier.sweep``): a crash between COMMIT and the apply, a
   worker killed with its ``payments.apply_receipts`` message, or a broker outage never
   leaves money invisible, and the sweep never depends on the broker.
2. **Webhooks.** Pending deliveries whose ``next_attempt_at`` has passed are queued
   (``services.webhook_deliveries_queue_due``: the background pool with eager Celery,
   else ``payments.deliver_webhook`` on the worker; each row marked queued first, so
   nothing piles up while a worker is down). A failed attempt's retry is that durable
   time, never an in-memory timer, so retries survive restarts.
3. **Outgoing payments** (at start-up, then at most every ``payments_every`` seconds).
   Active payments no runner holds (lease expired, or never started) and circular
   payments nobody started or whose runner died. With eager Celery (the embedded
   default) they run on this process's event loop, where its links live; with a worker
   they are queued to it (``payments.resume_outgoing_payments``).

Every step is idempotent (receipts under row locks and unique posting keys, webhook
attempts claimed by a conditional UPDATE, payments by their lease), so passes may overlap
the normal path, a worker, a beat that runs the same sweeps, or the passes of other
serving processes. The database work runs on one thread of its own, never on the event
loop and never on the thread Django's sync views share.

Built, started and stopped by the serving process's runtime
(``interledger_site.runtime.NodeRuntime``, started where the ASGI application is built;
``ILP_RECOVERY_AUTOSTART=0`` leaves it off there). Never started by an import; Celery
workers, commands and tests do not run it unless they start it. Tests build their own
:class:`Recovery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections

from payments import services
from payments.ledger import get_applier
from payments.sending import (
    circular_payment_run,
    circular_payments_due,
    outgoing_payment_run,
    outgoing_payments_due,
)

logger = logging.getLogger(__name__)

ENV_FLAG = "ILP_RECOVERY_AUTOSTART"
DEFAULT_INTERVAL_S = 5.0
# Periodic passes leave younger receipts to the applier (it applies them within ~50 ms,
# or its worker does): only what that path lost is swept.
RECEIPTS_AFTER = timedelta(seconds=10)
# Stuck payments are only due once a lease (minutes) ran out: looking every minute is
# enough, and a worker that is down does not get a new message per payment every pass.
PAYMENTS_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class PassReport:
    """What one pass did: receipts applied, webhook deliveries queued, payments resumed."""

    receipts: int = 0
    webhooks: int = 0
    payments: int = 0
    errors: tuple[str, ...] = ()


@dataclass(slots=True)
class _SyncResult:
    receipts: int = 0
    webhooks: int = 0
    payments: int = 0
    run_payments: list[int] = field(default_factory=list)
    run_circular: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _eager() -> bool:
    from payments.tasks import apply_receipts

    return bool(apply_receipts.app.conf.task_always_eager)


class Recovery:
    """The start-up and periodic sweeps of one serving process (see the module doc)."""

    def __init__(
        self,
        *,
        interval: float | None = None,
        receipts_after: timedelta = RECEIPTS_AFTER,
        payments_every: float = PAYMENTS_EVERY_S,
    ) -> None:
        if interval is None:
            interval = float(getattr(settings, "PAYMENTS_RECOVERY_INTERVAL_S", DEFAULT_INTERVAL_S))
        self.interval = interval
        self.receipts_after = receipts_after
        self.payments_every = payments_every
        self._payments_at: float | None = None  # loop time of the last payments step
        self.passes = 0
        self.last: PassReport | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self._passed: asyncio.Condition | None = None
        self._runs: dict[tuple[str, int], asyncio.Task[Any]] = {}

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start on the running loop: a start-up pass at once, then one every ``interval``
        seconds (idempotent)."""
        if self.running:
            return
        loop = asyncio.get_running_loop()
        self._passed = asyncio.Condition()
        self._task = loop.create_task(self._run(), name="payments-recovery")
        logger.info("payments: recovery sweeps started (every %.1f s)", self.interval)

    async def stop(self) -> None:
        """Stop the sweeps and the payment runs they started (a payment stopped mid-run
        keeps its lease until it runs out, then the next pass resumes it)."""
        task, self._task = self._task, None
        runs, self._runs = list(self._runs.values()), {}
        for pending in [task, *runs]:
            if pending is not None:
                pending.cancel()
        for pending in [task, *runs]:
            if pending is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending
        executor, self._executor = self._executor, None
        if executor is not None:
            # The thread's connections are closed by the job itself, then the thread ends.
            await asyncio.get_running_loop().run_in_executor(executor, _close_connections)
            executor.shutdown(wait=True)

    async def wait_passes(self, count: int) -> PassReport | None:
        """Wait until ``count`` passes have finished since start; the last one's report.
        Wrap in ``asyncio.wait_for`` for a deadline."""
        passed = self._passed
        if passed is None:
            raise RuntimeError("the recovery is not started")
        async with passed:
            await passed.wait_for(lambda: self.passes >= count)
        return self.last

    async def _run(self) -> None:
        startup = True
        while True:
            try:
                await self.run_pass(startup=startup)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("payments: recovery pass failed")
            startup = False
            await asyncio.sleep(self.interval)

    async def run_pass(self, *, startup: bool = False) -> PassReport:
        """One pass (``startup``: every unapplied receipt, whatever its age)."""
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="payments-recovery"
            )
        eager = _eager()
        last = self._payments_at
        with_payments = startup or last is None or loop.time() - last >= self.payments_every
        if with_payments:
            self._payments_at = loop.time()
        result = await loop.run_in_executor(
            self._executor, self._sync_pass, startup, eager, with_payments
        )
        for payment_id in result.run_payments:
            result.payments += self._run_here(
                ("payment", payment_id),
                functools.partial(outgoing_payment_run, payment_id=payment_id),
            )
        for circular_id in result.run_circular:
            result.payments += self._run_here(
                ("circular", circular_id),
                functools.partial(circular_payment_run, circular_id=circular_id),
            )
        report = PassReport(result.receipts, result.webhooks, result.payments, tuple(result.errors))
        if report.receipts or report.webhooks or report.payments or report.errors:
            logger.warning(
                "payments: recovery%s applied %d receipts, queued %d webhook deliveries, "
                "resumed %d payments%s",
                " at start-up" if startup else "",
                report.receipts,
                report.webhooks,
                report.payments,
                f"; failed: {', '.join(report.errors)}" if report.errors else "",
            )
        self.last = report
        self.passes += 1
        if self._passed is not None:
            async with self._passed:
                self._passed.notify_all()
        return report

    def _sync_pass(self, startup: bool, eager: bool, payments_step: bool) -> _SyncResult:
        """The database side of a pass, on the recovery thread. Each step runs even when
        an earlier one failed."""
        result = _SyncResult()
        close_old_connections()

        def step(name: str, fn: Callable[[], None]) -> None:
            try:
                fn()
            except Exception:
                logger.exception("payments: recovery of %s failed", name)
                result.errors.append(name)
                close_old_connections()

        def receipts() -> None:
            older_than = timedelta(0) if startup else self.receipts_after
            result.receipts = get_applier().sweep(older_than=older_than)

        def webhooks() -> None:
            result.webhooks = services.webhook_deliveries_queue_due()

        def payments() -> None:
            from payments.sending.tasks import resolve_circular_payments, resume_outgoing_payments

            if not eager:
                result.payments = resume_outgoing_payments()
                return
            result.run_payments = outgoing_payments_due()
            to_start, to_resolve = circular_payments_due()
            result.run_circular = to_start
            result.payments = resolve_circular_payments(to_resolve)

        step("receipts", receipts)
        step("webhooks", webhooks)
        if payments_step:
            step("outgoing payments", payments)
        close_old_connections()
        return result

    def _run_here(self, key: tuple[str, int], make: Callable[[], Awaitable[Any]]) -> int:
        """Run a payment on this loop unless this process already runs it (its lease
        would refuse a second runner anyway)."""
        running = self._runs.get(key)
        if running is not None and not running.done():
            return 0
        task = asyncio.ensure_future(make())
        self._runs[key] = task

        def done(finished: asyncio.Task[Any]) -> None:
            if self._runs.get(key) is finished:
                del self._runs[key]
            if not finished.cancelled() and finished.exception() is not None:
                logger.error("payments: resumed %s %s failed", *key, exc_info=finished.exception())

        task.add_done_callback(done)
        return 1


def _close_connections() -> None:
    from django.db import connections

    connections.close_all()


# --- the serving process's instance ----------------------------------------------------------


def enabled_by_environment() -> bool:
    """``ILP_RECOVERY_AUTOSTART=0`` (or false/no/off) keeps a serving runtime's sweeps off."""
    flag = os.environ.get(ENV_FLAG, "").strip().lower()
    return flag not in ("0", "false", "no", "off")


def get_recovery() -> Recovery:
    """The current runtime's :class:`Recovery` (``interledger_site.runtime``)."""
    from payments.node import runtime

    recovery: Recovery = runtime().recovery
    return recovery
