"""Services of receivers: every write to :class:`~receivers.models.Receiver` goes here, and
the user-scoped webhook writes (a user changes webhooks on their own receivers only; the
rows are written by ``payments.services``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from payments.errors import InvalidWebhook
from payments.ledger import ensure_account, receiver_account
from payments.models import Webhook
from payments.services import webhook_create, webhook_delete, webhook_update, webhook_url_check
from receivers.errors import InvalidPointerName, PointerNameTaken, ReceiverNotFound
from receivers.models import Receiver
from receivers.names import claim_problem, name_problem, route_conflict
from receivers.selectors import receiver_account_codes_for_user, receiver_get_for_user

if TYPE_CHECKING:
    from django.contrib.auth.models import User

RECEIVER_ACCOUNT_KIND = "receiver"


def receiver_create(
    *, user: User, name: str, description: str = "", site: bool = False
) -> Receiver:
    """Issue the payment pointer ``name`` to ``user``, with its ledger account.

    Raises :class:`InvalidPointerName` (bad or reserved name) or :class:`PointerNameTaken`.
    The site's own names (``receivers.names.SITE_NAMES``) only with ``site=True``: the
    node's code issuing them, never a user's request.
    The account ``receiver:<name>`` is created if missing (``ensure_account`` is
    idempotent), so a name freed by a deleted receiver comes back with its old balance.
    """
    problem = (name_problem(name) if site else claim_problem(name)) or route_conflict(name)
    if problem is not None:
        raise InvalidPointerName(problem)
    with transaction.atomic():
        if Receiver.objects.filter(name=name).exists():
            raise PointerNameTaken(f"the pointer name '{name}' is taken")
        account = ensure_account(receiver_account(name), kind=RECEIVER_ACCOUNT_KIND)
        try:
            with transaction.atomic():
                return Receiver.objects.create(
                    user=user, name=name, account=account, description=description[:200]
                )
        except IntegrityError:
            # Lost a race with another request for the same name.
            raise PointerNameTaken(f"the pointer name '{name}' is taken") from None


def receiver_update(*, receiver: Receiver, description: str) -> Receiver:
    """Change what the pointer says about itself (the name never changes)."""
    receiver.description = description[:200]
    receiver.save(update_fields=["description"])
    return receiver


def receiver_ensure(*, user: User, name: str, description: str = "") -> tuple[Receiver, bool]:
    """The receiver ``name`` of ``user``, created if missing: ``(receiver, created)``.

    Idempotent for the same user; :class:`PointerNameTaken` if another user has the name.
    For the node's own code (``setup_demo``, ``add_pointer``, the paid API): it may issue
    the site's reserved names (see :func:`receiver_create`).
    """
    existing = Receiver.objects.select_related("account").filter(name=name).first()
    if existing is not None:
        if existing.user_id != user.pk:
            raise PointerNameTaken(f"the pointer name '{name}' belongs to another user")
        return existing, False
    return receiver_create(user=user, name=name, description=description, site=True), True


def user_ensure(
    *, username: str, password: str | None = None, superuser: bool = False
) -> tuple[User, bool]:
    """The user ``username``, created if missing (``(user, created)``).

    A new user gets ``password`` (``None``: no usable password, the user cannot log in
    until an admin sets one) and, with ``superuser``, staff and superuser rights. An
    existing user is returned unchanged.
    """
    users = get_user_model().objects
    user = users.filter(**{get_user_model().USERNAME_FIELD: username}).first()
    if user is not None:
        return user, False
    if superuser:
        return users.create_superuser(username=username, email="", password=password), True
    return users.create_user(username=username, password=password), True


# --- the user's webhooks ----------------------------------------------------------------------


def webhook_create_for_user(*, user: User, receiver_name: str, url: str) -> Webhook:
    """A webhook told about the incoming payments of ``user``'s receiver ``receiver_name``.

    Raises ``ReceiverNotFound`` (not theirs or absent: the same answer, so names of other
    users' receivers do not leak) or ``payments.errors.InvalidWebhook``.
    """
    receiver = receiver_get_for_user(user=user, name=receiver_name)
    if receiver is None:
        raise ReceiverNotFound(f"you have no payment pointer named '{receiver_name}'")
    try:
        return webhook_create(account_code=receiver.account.code, url=webhook_url_check(url))
    except ValidationError as exc:
        raise InvalidWebhook("; ".join(exc.messages)) from None


def webhook_update_for_user(
    *, user: User, webhook_id: int, url: str | None = None, enabled: bool | None = None
) -> Webhook:
    """``payments.services.webhook_update`` on one of ``user``'s webhooks (another's, or a
    missing one: ``WebhookNotFound``)."""
    return webhook_update(
        webhook_id=webhook_id,
        url=url,
        enabled=enabled,
        account_codes=receiver_account_codes_for_user(user=user),
    )


def webhook_delete_for_user(*, user: User, webhook_id: int) -> None:
    """``payments.services.webhook_delete`` on one of ``user``'s webhooks (as
    :func:`webhook_update_for_user`)."""
    webhook_delete(webhook_id=webhook_id, account_codes=receiver_account_codes_for_user(user=user))
