"""Ledger accounts: their codes (one builder per kind) and creating them (:func:`ensure_account`).

Every account code is built here: ``peer:<name>`` (a peer's account, :func:`peer_account`),
``receiver:<name>`` (a payment pointer's, :func:`receiver_account`), ``node:<purpose>``
(the node's own: fees, the operator's sending account, suspense, :func:`node_account`) and
``node:equity:<asset>:<scale>`` (the counter-account of adjustments and conversions,
:func:`node_equity_account`).
"""

from __future__ import annotations

from django.conf import settings
from django.db import transaction

from ilp.oer import UINT64_MAX
from payments.errors import AccountKindMismatch, InvalidAmount
from payments.ledger.drafts import MAX_CODE_LENGTH, _check_int, _check_text
from payments.models import LedgerAccount

PEER_PREFIX = "peer:"
RECEIVER_PREFIX = "receiver:"
NODE_PREFIX = "node:"


def peer_account(name: str) -> str:
    """The ledger account code of the peer ``name``: ``peer:<name>``."""
    return f"{PEER_PREFIX}{name}"


def receiver_account(name: str) -> str:
    """The ledger account code of the receiver (payment pointer) ``name``: ``receiver:<name>``."""
    return f"{RECEIVER_PREFIX}{name}"


def node_account(purpose: str) -> str:
    """One of the node's own accounts: ``node:<purpose>`` (``fees``, ``operator``, ...)."""
    return f"{NODE_PREFIX}{purpose}"


def node_equity_account(asset_code: str, asset_scale: int) -> str:
    """The node's equity account of one asset: ``node:equity:<asset_code>:<asset_scale>``."""
    return node_account(f"equity:{asset_code}:{asset_scale}")


def ensure_account(
    code: str,
    *,
    kind: str,
    min_balance: int | None = None,
    max_balance: int | None = None,
    asset_code: str | None = None,
    asset_scale: int | None = None,
) -> LedgerAccount:
    """Get or create the account ``code`` (sync service, own transaction).

    Created with the given kind, limits and asset (default: ``ILP_ASSET_CODE`` /
    ``ILP_ASSET_SCALE``). An existing account keeps its limits (change them with
    ``services.account_set_limits``); a different ``kind``, or an explicitly given
    different asset, raises :class:`AccountKindMismatch`. Idempotent on ``code`` (the
    unique constraint settles concurrent creators).
    """
    _check_text(code, "code", MAX_CODE_LENGTH)
    if kind not in LedgerAccount.Kind.values:
        raise ValueError(f"unknown account kind {kind!r}")
    for name, value in (("min_balance", min_balance), ("max_balance", max_balance)):
        if value is not None and abs(_check_int(value, name)) > UINT64_MAX:
            raise InvalidAmount(f"{name} out of range")
    if min_balance is not None and max_balance is not None and min_balance > max_balance:
        raise InvalidAmount("min_balance must not exceed max_balance")
    with transaction.atomic():
        account, created = LedgerAccount.objects.get_or_create(
            code=code,
            defaults={
                "kind": kind,
                "asset_code": asset_code if asset_code is not None else settings.ILP_ASSET_CODE,
                "asset_scale": asset_scale if asset_scale is not None else settings.ILP_ASSET_SCALE,
                "min_balance": min_balance,
                "max_balance": max_balance,
            },
        )
    if not created:
        if account.kind != kind:
            raise AccountKindMismatch(f"account {code!r} is a {account.kind} account", account=code)
        if (asset_code is not None and asset_code != account.asset_code) or (
            asset_scale is not None and asset_scale != account.asset_scale
        ):
            raise AccountKindMismatch(f"account {code!r} has another asset", account=code)
    return account
