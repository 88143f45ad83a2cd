"""The client side of paid APIs (HTTP-ILP draft 3, as ilp-fetch): call, pay what a 402
asks through this node's one sender (:mod:`payments.sending`), call again.

:func:`http_ilp_call` calls with a ``Pay-Token``; on 402 it reads what is still owed
(``price - Pay-Balance``) and pays it as an ordinary outgoing payment
(``payments.sending.outgoing_payment_create``, destination-fixed, at most ``max_price``
source units, run at once by ``outgoing_payment_run``): reservation on the source
account, a chunk row before each Prepare, money booked per chunk, resumable like any
other. The receiver is the token's own payment pointer when the 402 names one
(``Link: <url>; rel="monetization"``, as our paid APIs do: SPSP4, so STREAM, else PSK2);
else the ``Pay`` header's destination and shared secret, paid over PSK2 without an SPSP
query. The payment has a Payment ID of its own: the destination was issued for the
token, so the API credits it there (a running total keyed by the token's id would
include its earlier top-ups, which the sender must not count). Then it calls again.

The Prepares leave through the sending port: the switch of the process that runs the
payment (our own receivers, or the routing table), or ``via_peer``'s link.

The API's URL is the caller's choice: its calls go out through :mod:`payments.outbound`'s
transport (like the SPSP query of the pointer a 402 names), so its host must resolve to
public addresses only, checked at connect time, unless ``ILP_ALLOW_PRIVATE_URLS``; a
refused address raises :class:`~payments.sending.SendFailed` with the reason before
anything is paid. Each call ends within :data:`CALL_TIMEOUT_S` and reads at most
:data:`MAX_RESPONSE_BYTES` of body; redirects are not followed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from payments import outbound
from payments.ledger import ensure_account
from payments.models import LedgerAccount
from payments.models_outgoing import OutgoingPayment
from payments.sending import (
    OPERATOR_ACCOUNT,
    RunOptions,
    SendFailed,
    SpspDetails,
    outgoing_payment_create,
    outgoing_payment_run,
)
from payments.sending.runner import in_thread
from receivers.paid import PAY_TOKEN_HEADER, PayToken, new_pay_token, parse_pay

__all__ = ["CallResult", "Paid", "PaymentRunner", "http_ilp_call"]

MONETIZATION_REL = "monetization"
CALL_TIMEOUT_S = 30.0
# A paid API's answer is its product (a page, a file): more than a webhook's 64 KiB.
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


PaymentRunner = Callable[[int, RunOptions | None], Awaitable[OutgoingPayment | None]]
"""Runs an outgoing payment until it is over and returns it (``None``: not run here)."""


@dataclass(frozen=True, slots=True)
class Paid:
    """What a 402 cost: the outgoing payment, source units sent, receiver units delivered."""

    payment_id: int
    sent: int
    delivered: int
    chunks: int
    protocol: str


@dataclass(frozen=True, slots=True)
class CallResult:
    """The final answer of :func:`http_ilp_call` and what it paid on the way."""

    status: int
    body: bytes
    balance: str | None
    token: str
    paid: Paid | None


async def http_ilp_call(
    url: str,
    *,
    token: str | None = None,
    method: str = "GET",
    max_price: int | None = None,
    source_account: str = OPERATOR_ACCOUNT,
    via_peer: str = "",
    retries: int = 10,
    options: RunOptions | None = None,
    run: PaymentRunner | None = None,
) -> CallResult:
    """Call ``url``; on 402 pay what it asks (see the module docstring) and call again.

    ``run(payment_id, options)`` runs the payment it created and returns it when over
    (default ``outgoing_payment_run`` in this process; ``manage.py pay_api`` hands it to
    the serving node, ``payments.sending.handoff``).

    Raises :class:`~payments.sending.SendFailed` when ``url``'s address is refused, the
    402 is unusable or the payment fails (its ``last_error``), and the sending services' errors
    (:class:`~payments.sending.InsufficientBalance`, ...) when it cannot start."""
    token = token or new_pay_token()
    PayToken.parse(token)
    headers = {PAY_TOKEN_HEADER: token}
    async with _client() as client:
        response = await _call(client, method, url, headers)
        if response.status_code != 402:
            return _result(response, token, None)
        try:
            pay = parse_pay(response.headers.get("Pay"))
        except ValueError as exc:
            raise SendFailed(f"402 without a usable Pay header: {exc}") from exc
        if pay.price is None:
            raise SendFailed("the Pay header has no price (streaming payments are not supported)")
        try:
            balance = int(response.headers.get("Pay-Balance", "0") or 0)
        except ValueError:
            raise SendFailed("the Pay-Balance header is not an integer") from None
        needed = max(pay.price - balance, 0) or pay.price
        pointer = response.links.get(MONETIZATION_REL, {}).get("url")
        payment = await _create(
            receiver=pointer or url,
            pay_to=None if pointer else SpspDetails(pay.destination, pay.shared_secret),
            amount=needed,
            max_source=max_price if max_price is not None else 2 * pay.price,
            source_account=source_account,
            via_peer=via_peer,
        )
        done = await (run or _run_here)(payment.pk, options)
        if done is None or done.status != OutgoingPayment.Status.COMPLETED:
            reason = done.last_error if done is not None else "another runner holds it"
            raise SendFailed(f"the payment of {needed} failed: {reason}")
        paid = Paid(
            done.pk,
            int(done.amount_sent),
            int(done.amount_delivered),
            done.chunks_fulfilled,
            done.protocol,
        )
        for _ in range(retries):
            response = await _call(client, method, url, headers)
            if response.status_code != 402:
                break
            await asyncio.sleep(0.2)  # the API's view of the token's balance may lag
        return _result(response, token, paid)


def _client() -> httpx.AsyncClient:
    transport = outbound.GuardedTransport(
        total_timeout=CALL_TIMEOUT_S, max_bytes=MAX_RESPONSE_BYTES
    )
    return httpx.AsyncClient(
        transport=transport, timeout=CALL_TIMEOUT_S, trust_env=False, follow_redirects=False
    )


async def _call(
    client: httpx.AsyncClient, method: str, url: str, headers: dict[str, str]
) -> httpx.Response:
    try:
        return await client.request(method, url, headers=headers)
    except httpx.HTTPError as exc:
        if outbound.refused(exc):
            raise SendFailed(f"the call to {url} was refused: {exc}") from None
        raise


async def _run_here(payment_id: int, options: RunOptions | None) -> OutgoingPayment | None:
    return await outgoing_payment_run(payment_id=payment_id, options=options)


@in_thread
def _create(
    *,
    receiver: str,
    pay_to: SpspDetails | None,
    amount: int,
    max_source: int,
    source_account: str,
    via_peer: str,
) -> OutgoingPayment:
    if source_account == OPERATOR_ACCOUNT:
        ensure_account(OPERATOR_ACCOUNT, kind=LedgerAccount.Kind.NODE)
    return outgoing_payment_create(
        source_account_code=source_account,
        receiver=receiver,
        amount=amount,
        mode=OutgoingPayment.Mode.DESTINATION,
        max_source_amount=max_source,
        via_peer=via_peer,
        pay_to=pay_to,
        start=False,
    )


def _result(response: httpx.Response, token: str, paid: Paid | None) -> CallResult:
    return CallResult(
        response.status_code, response.content, response.headers.get("Pay-Balance"), token, paid
    )
