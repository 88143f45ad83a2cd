"""``manage.py pay_api`` against a live server, paying through this process's switch."""

from __future__ import annotations

import json
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from payments.models import LedgerAccount, Receipt
from receivers.models import PaidToken
from receivers.paid import new_pay_token
from receivers.sending import BtpTarget, SendError

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _price(settings: Any) -> None:
    settings.ILP_PAID_API_PRICE = 250


def run(url: str, *args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("pay_api", url, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_pay_api_pays_through_the_local_switch_and_calls_again(live_server: Any) -> None:
    url = f"{live_server.url}/api/v1/demo/paid"
    token = new_pay_token()
    out, err = run(url, "--token", token)
    assert json.loads(out) == {"message": "Hello World!", "price": "250", "balance": "0"}
    assert "HTTP 200" in err and "paid 250" in err
    # One chunk of 250 from the node's own account to paidapi, credited to the token.
    (receipt,) = Receipt.objects.all()
    assert receipt.account.code == "receiver:paidapi" and int(receipt.amount) == 250
    assert int(LedgerAccount.objects.get(code="node:operator").balance) == -250
    assert int(PaidToken.objects.get(token=token).charged) == 250
    # The balance is spent: the next call pays again (a second chunk).
    out, err = run(url, "--token", token)
    assert "paid 250" in err
    assert Receipt.objects.count() == 2


def test_pay_api_respects_the_max_price(live_server: Any) -> None:
    with pytest.raises(CommandError, match="more than 100"):
        run(f"{live_server.url}/api/v1/demo/paid", "--max-price", "100")
    assert not Receipt.objects.exists()


def test_pay_api_on_a_free_url_just_prints_it(live_server: Any) -> None:
    with pytest.raises(CommandError, match="HTTP 404"):
        run(f"{live_server.url}/api/v1/no-such-thing")


def test_btp_urls() -> None:
    target = BtpTarget.parse("btp+ws://alice:s%40cret@127.0.0.1:8000/btp")
    assert target == BtpTarget("ws://127.0.0.1:8000/btp", "alice", "s%40cret")
    assert BtpTarget.parse("btp+wss://a:b@node.example").ws_url == "wss://node.example/"
    with pytest.raises(SendError):
        BtpTarget.parse("http://a:b@x/btp")
