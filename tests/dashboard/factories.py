"""Test data for the people's side: users, pointers, and payments made through the real
ledger (the book's commit, then ``apply_receipts``), so rows look like real ones."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User

from payments.ledger import PostingDraft, ReceiptDraft, ensure_account, get_book
from payments.models import IncomingPayment
from payments.services import apply_pending_receipts
from receivers.addresses import payer_id_receipt_key
from receivers.models import Receiver
from receivers.services import receiver_create

PAYER = "peer:test-payer"
RECEIVER_SECRET_HEX = "292ba2e94ae81fdcb9181fdc24ae1cfb7edb15462676a8813d1f916c8f085f0b"


def make_user(username: str, *, staff: bool = False, password: str = "pw-" + "x" * 8) -> User:
    user: User = get_user_model().objects.create_user(
        username=username, password=password, is_staff=staff
    )
    return user


def make_receiver(user: User, name: str, description: str = "") -> Receiver:
    return receiver_create(user=user, name=name, description=description)


def pay(
    receiver: Receiver,
    amount: int,
    *,
    payment_id: bytes | None = None,
    at: datetime | None = None,
) -> IncomingPayment:
    """One chunk of ``amount`` to ``receiver`` through the book (sync; needs
    ``django_db(transaction=True)``), applied at once. ``at`` backdates the payment.
    Booked as the PSK2 receiver books a chunk whose payment id the payer chose (so a
    Pay-Token with that id may redeem it)."""
    ensure_account(PAYER, kind="peer")
    pid = payment_id or os.urandom(16)
    key = os.urandom(16).hex()
    get_book().commit_sync(
        [PostingDraft(PAYER, -amount, key)],
        [ReceiptDraft(receiver.account.code, pid, 0, amount, payer_id_receipt_key(key))],
    )
    apply_pending_receipts(older_than=timedelta(0))
    payment = IncomingPayment.objects.get(account=receiver.account, payment_id=pid.hex())
    if at is not None:
        IncomingPayment.objects.filter(pk=payment.pk).update(first_at=at, last_at=at)
        payment.refresh_from_db()
    return payment
