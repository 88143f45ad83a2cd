"""``manage.py pay`` speaks STREAM to a pointer that offers SPSP4 (ours do) and PSK2 when
told to, with the same progress lines (eager Celery, our live SPSP)."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from payments.models_outgoing import OutgoingPayment
from tests.sending.conftest import balance, fund, make_receiver

pytestmark = pytest.mark.django_db(transaction=True)


def pay(*args: str) -> str:
    out = StringIO()
    call_command("pay", *args, stdout=out)
    return out.getvalue()


def test_pay_command_chooses_stream_or_is_told_psk2(live_server: Any) -> None:
    make_receiver("bob")
    fund("receiver:alice", 10_000)
    out = pay(f"{live_server.url}/bob", "4000", "--from", "alice", "--key", "s-1")
    assert "[completed] sent 4000 delivered 4000" in out and "over STREAM" in out
    out = pay(
        f"{live_server.url}/bob", "3000", "--from", "alice", "--key", "p-1", "--protocol", "psk2"
    )
    assert "[completed] sent 3000 delivered 3000" in out and "over PSK2" in out
    protocols = dict(OutgoingPayment.objects.values_list("idempotency_key", "protocol"))
    assert protocols == {"s-1": "stream", "p-1": "psk2"}
    assert balance("receiver:alice") == 3_000
    with pytest.raises(CommandError, match="invalid choice"):
        pay(f"{live_server.url}/bob", "1", "--protocol", "psk3")
