"""Web-monetized pages (``web-monetization.md``): services and selectors.

Each visitor session gets, per page, its own **visitor id** (16 random bytes, kept in the
Django session under ``wm_visitors``). The page names a per-visitor URL,
``/pages/<slug>/spsp/<visitor id>``, in all three tag forms (PSK2-era
``window.monetize({receiver})``, ``<meta name="monetization">``, and today's ``<link
rel="monetization">``). By content negotiation it is an Open Payments **wallet address**
(what today's Web Monetization extension pays: grant, incoming payment, STREAM; the
incoming payments created on it carry the page and visitor, see
:mod:`receivers.open_payments.models`) and an SPSP/SPSP4 endpoint whose addresses of the
page's receiver are **tagged with the visitor id**
(:func:`receivers.addresses.issue_tagged_address`). Either way every receipt is
attributable to the session: its key starts ``tag:<visitor hex>:``.

The server reveals ``paid_body`` to a session once its visitor id has received
``threshold`` in total; before that the paid part is never sent (neither in the page nor
over the WebSocket or the status endpoint). Knowing a visitor id lets anyone *pay* for it
(harmless), never *read* for it: the paid part goes only to the session that holds it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from ilp.errors import DecodeError
from ilp.oer import UINT64_MAX
from ilp.psk2 import b64url_decode, b64url_encode
from receivers.addresses import (
    STREAM_IV_LENGTH,
    TAG_LENGTH,
    TOKEN_LENGTH,
    issue_stream,
    issue_tagged_address,
)
from receivers.errors import ReceiverError
from receivers.models import MonetizedPage, Receiver
from receivers.pointers import public_base_url
from receivers.selectors import tag_received_total
from receivers.spsp import SpspAnswer

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.base import SessionBase
    from django.db.models import QuerySet
    from django.http import HttpRequest

SESSION_KEY = "wm_visitors"
MAX_PAGES_PER_SESSION = 200
PAGE_FIELDS = ("title", "public_body", "paid_body", "threshold", "published")


class PageError(ReceiverError):
    code = "page_error"
    http_status = 400


class PageSlugTaken(PageError):
    code = "page_slug_taken"
    http_status = 409


# --- visitor ids --------------------------------------------------------------------------------


def visitor_text(visitor: bytes) -> str:
    return b64url_encode(visitor)


def parse_visitor(text: str) -> bytes | None:
    """The 16-byte visitor id of its canonical base64url spelling, else ``None``."""
    if len(text) != 22:
        return None
    try:
        raw = b64url_decode(text)
    except DecodeError:
        return None
    return raw if len(raw) == TAG_LENGTH and b64url_encode(raw) == text else None


def session_visitor(session: SessionBase, slug: str) -> bytes | None:
    """The visitor id this session has for the page ``slug``, if any (reads only)."""
    visitors = session.get(SESSION_KEY) or {}
    text = visitors.get(slug) if isinstance(visitors, dict) else None
    return parse_visitor(text) if isinstance(text, str) else None


def session_visitor_ensure(session: SessionBase, slug: str) -> bytes:
    """The session's visitor id for ``slug``, minted on the first visit."""
    visitor = session_visitor(session, slug)
    if visitor is not None:
        return visitor
    visitors = session.get(SESSION_KEY)
    if not isinstance(visitors, dict) or len(visitors) >= MAX_PAGES_PER_SESSION:
        visitors = {}
    visitor = secrets.token_bytes(TAG_LENGTH)
    visitors[slug] = visitor_text(visitor)
    session[SESSION_KEY] = visitors
    return visitor


# --- selectors ------------------------------------------------------------------------------------


def page_get(*, slug: str) -> MonetizedPage | None:
    return MonetizedPage.objects.select_related("receiver__account").filter(slug=slug).first()


def page_get_visible(*, slug: str, user: Any = None) -> MonetizedPage | None:
    """A published page, or any page of its owner (preview)."""
    page = page_get(slug=slug)
    if page is None:
        return None
    if page.published or (user is not None and user.is_authenticated and page.owner_id == user.pk):
        return page
    return None


def page_list_for_user(*, user: User) -> QuerySet[MonetizedPage]:
    return MonetizedPage.objects.select_related("receiver").filter(owner=user)


def page_get_for_user(*, user: User, slug: str) -> MonetizedPage | None:
    return page_list_for_user(user=user).filter(slug=slug).first()


@dataclass(frozen=True, slots=True)
class PageStatus:
    """Where one visitor stands on one page."""

    received: int
    threshold: int

    @property
    def unlocked(self) -> bool:
        return self.received >= self.threshold

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": str(self.received),
            "threshold": str(self.threshold),
            "unlocked": self.unlocked,
        }


def page_status(*, page: MonetizedPage, visitor: bytes) -> PageStatus:
    """What ``visitor`` has paid on ``page`` so far (the receipts of its tag; one query)."""
    received = tag_received_total(account_id=page.receiver.account_id, tag=visitor)
    return PageStatus(received, int(page.threshold))


def paid_html(page: MonetizedPage) -> str:
    """The paid part as HTML (the owner's text, escaped, with its paragraphs)."""
    return render_to_string("receivers/pages/_paid.html", {"page": page})


def visitor_spsp_answer(*, page: MonetizedPage, visitor: bytes) -> SpspAnswer:
    """A fresh SPSP answer whose address is tagged with ``visitor`` (no database access)."""
    issued = issue_tagged_address(page.receiver.name, visitor, secrets.token_bytes(TOKEN_LENGTH))
    return SpspAnswer(
        destination_account=issued.destination,
        shared_secret=issued.shared_secret,
        asset_code=page.receiver.account.asset_code,
        asset_scale=page.receiver.account.asset_scale,
        receiver_name=page.title[:100] or page.receiver.name,
    )


def visitor_stream_answer(*, page: MonetizedPage, visitor: bytes) -> SpspAnswer:
    """The SPSP4 (STREAM) twin of :func:`visitor_spsp_answer`: a STREAM address tagged with
    ``visitor``, so STREAM payments count for the visitor the same way."""
    issued = issue_stream(page.receiver.name, secrets.token_bytes(STREAM_IV_LENGTH), tag=visitor)
    return SpspAnswer(
        destination_account=issued.destination,
        shared_secret=issued.shared_secret,
        asset_code=page.receiver.account.asset_code,
        asset_scale=page.receiver.account.asset_scale,
        receiver_name=page.title[:100] or page.receiver.name,
    )


def visitor_spsp_url(*, page: MonetizedPage, visitor: bytes, request: HttpRequest | None) -> str:
    return f"{public_base_url(request)}/pages/{page.slug}/spsp/{visitor_text(visitor)}"


def visitor_pointer(spsp_url: str) -> str:
    """``$host/pages/<slug>/spsp/<visitor>``: the per-visitor SPSP URL as a payment pointer."""
    return "$" + spsp_url.split("://", 1)[1]


# --- services ---------------------------------------------------------------------------------------


def _check(owner: User, receiver: Receiver, threshold: int) -> None:
    if receiver.user_id != owner.pk:
        raise PageError("the page's payment pointer must be one of yours")
    if not isinstance(threshold, int) or not 0 < threshold <= UINT64_MAX:
        raise PageError("the threshold is a whole number of base units, at least 1")


def page_create(
    *,
    owner: User,
    receiver: Receiver,
    slug: str,
    title: str,
    paid_body: str,
    threshold: int,
    public_body: str = "",
    published: bool = False,
) -> MonetizedPage:
    """A new monetized page of ``owner``, paid to one of their ``receiver``s.

    Raises :class:`PageError` (not their pointer, bad threshold) or :class:`PageSlugTaken`.
    """
    _check(owner, receiver, threshold)
    try:
        with transaction.atomic():
            return MonetizedPage.objects.create(
                owner=owner,
                receiver=receiver,
                slug=slug,
                title=title,
                public_body=public_body,
                paid_body=paid_body,
                threshold=threshold,
                published=published,
            )
    except IntegrityError:
        raise PageSlugTaken(f"the page address /pages/{slug}/ is taken") from None


def page_update(*, page: MonetizedPage, **changes: Any) -> MonetizedPage:
    """Change ``title``, ``public_body``, ``paid_body``, ``threshold`` or ``published``.
    The slug and the receiver never change: they are in the visitors' addresses, and what
    a visitor paid is counted on that receiver's account."""
    unknown = set(changes) - set(PAGE_FIELDS)
    if unknown:
        raise PageError(f"cannot change {', '.join(sorted(unknown))}")
    threshold = changes.get("threshold", int(page.threshold))
    _check(page.owner, page.receiver, threshold)
    for name, value in changes.items():
        setattr(page, name, value)
    page.updated_at = timezone.now()
    page.save(update_fields=[*changes, "updated_at"])
    return page
