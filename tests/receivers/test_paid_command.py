"""``manage.py pay_api`` against a live server, paying through this node's one sender
(``payments.sending``) and this process's switch."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from payments.models import LedgerAccount, Receipt
from payments.models_outgoing import OutgoingChunk, OutgoingPayment
from receivers.models import PaidToken
from receivers.paid import new_pay_token

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _price(settings: Any, live_server: Any) -> None:
    settings.ILP_PAID_API_PRICE = 250
    # The 402's Link names the token's pointer under the public URL: this live server.
    settings.ILP_PUBLIC_URL = live_server.url


def run(url: str, *args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("pay_api", url, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_pay_api_pays_through_the_local_switch_and_calls_again(live_server: Any) -> None:
    url = f"{live_server.url}/api/v1/demo/paid"
    token = new_pay_token()
    out, err = run(url, f"--token={token}")
    assert json.loads(out) == {"message": "Hello World!", "price": "250", "balance": "0"}
    assert "HTTP 200" in err and "paid 250" in err and "over STREAM" in err
    # An outgoing payment like any other (to the token's own pointer, named by the 402's
    # Link): reserved, one chunk row per packet, booked through the switch.
    (payment,) = OutgoingPayment.objects.all()
    assert payment.status == "completed" and payment.protocol == "stream"
    assert payment.mode == "destination" and int(payment.amount_delivered) == 250
    assert "/tokens/" in payment.receiver and payment.source_account.code == "node:operator"
    assert OutgoingChunk.objects.filter(payment=payment, state="fulfilled").count() == 1
    # One packet of 250 from the node's own account to paidapi, credited to the token.
    (receipt,) = Receipt.objects.all()
    assert receipt.account.code == "receiver:paidapi" and int(receipt.amount) == 250
    assert int(LedgerAccount.objects.get(code="node:operator").balance) == -250
    assert int(PaidToken.objects.get(token=token).charged) == 250
    # The balance is spent: the next call pays again (a second chunk).
    out, err = run(url, f"--token={token}")
    assert "paid 250" in err
    assert Receipt.objects.count() == 2


def test_pay_api_respects_the_max_price(live_server: Any) -> None:
    with pytest.raises(CommandError, match="more than the 100 allowed"):
        run(f"{live_server.url}/api/v1/demo/paid", "--max-price", "100")
    assert not Receipt.objects.exists()
    (payment,) = OutgoingPayment.objects.all()
    assert payment.status == "failed" and int(payment.amount_debited) == 0
    assert int(payment.amount_reserved) == 0  # released


def test_pay_api_on_a_free_url_just_prints_it(live_server: Any) -> None:
    with pytest.raises(CommandError, match="HTTP 404"):
        run(f"{live_server.url}/api/v1/no-such-thing")


def test_pay_api_via_an_unknown_peer_fails_clearly(live_server: Any) -> None:
    with pytest.raises(CommandError, match="no enabled peer 'nobody'"):
        run(f"{live_server.url}/api/v1/demo/paid", "--via", "nobody")
    assert not Receipt.objects.exists()
    (payment,) = OutgoingPayment.objects.all()
    assert payment.status == "failed" and payment.via_peer == "nobody"


def test_pay_api_without_a_link_pays_the_pay_headers_address_over_psk2(
    live_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HTTP-ILP server that names no payment pointer (draft 1-3, as koa-ilp): the
    ``Pay`` header's address and secret, over PSK2, still as an outgoing payment."""
    import receivers.paid_client

    monkeypatch.setattr(receivers.paid_client, "MONETIZATION_REL", "no-such-rel")
    token = new_pay_token()
    out, err = run(f"{live_server.url}/api/v1/demo/paid", f"--token={token}")
    assert json.loads(out)["message"] == "Hello World!"
    assert "paid 250" in err and "over PSK2" in err
    (payment,) = OutgoingPayment.objects.all()
    assert payment.protocol == "psk2" and payment.spsp_url == ""
    assert payment.receiver.endswith("/api/v1/demo/paid") and payment.status == "completed"
    assert int(PaidToken.objects.get(token=token).charged) == 250


def test_pay_api_refuses_a_private_address_before_paying(live_server: Any, settings: Any) -> None:
    """The API's URL is the caller's: as every outgoing request to a user-given URL
    (payments.outbound), a loopback host is refused unless ILP_ALLOW_PRIVATE_URLS."""
    settings.ILP_ALLOW_PRIVATE_URLS = False
    with pytest.raises(CommandError, match=r"refused.*loopback"):
        run(f"{live_server.url}/api/v1/demo/paid")
    assert not OutgoingPayment.objects.exists() and not Receipt.objects.exists()


def test_pay_api_refuses_a_private_pointer_named_by_the_402(
    live_server: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API may be public and still name a private pointer in its 402: the SPSP query
    of the sender refuses it, and nothing is paid."""
    from payments import outbound

    calls: list[str] = []
    real = outbound.aresolve_checked

    async def api_host_passes(host: str, port: int, *, allow: bool | None = None) -> list[str]:
        """The first connection (the API call) passes as a public host would; the
        connections after it (the pointer's SPSP query) are checked for real."""
        calls.append(host)
        return await real(host, port, allow=True if len(calls) == 1 else allow)

    monkeypatch.setattr(outbound, "aresolve_checked", api_host_passes)
    settings.ILP_ALLOW_PRIVATE_URLS = False
    with pytest.raises(CommandError, match=r"refused.*loopback"):
        run(f"{live_server.url}/api/v1/demo/paid")
    assert not Receipt.objects.exists()
    (payment,) = OutgoingPayment.objects.all()
    assert payment.status == "failed" and int(payment.amount_debited) == 0
