"""Two of our nodes: this test process, and a real ``daphne`` node ("far", its own SQLite
database, ILP address ``test.far``, a 1 % connector fee) reached over real BTP.

* ``manage.py pay $127.0.0.1:<port>/carol 5000 --via far`` from this process: SPSP from
  the far node over HTTP, a BTP connection dialled just for the payment, PSK2 chunks into
  the far node's switch and receiver.
* A circular payment: out through ``far``, routed by the far node (1 % fee) to its peer
  ``back`` whose address is ``test.node.circular``, which is our second link to it, and in
  again here (``open_sender`` registered the ``circular`` local handler on our switch).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.management import call_command

from links import registry
from links.btp_client import BtpClient
from payments.models_outgoing import OutgoingPayment
from payments.sending import OPERATOR_ACCOUNT
from payments.sending.circular import circular_payment_create, circular_payment_run
from tests.sending.conftest import (
    NODE,
    RECEIVER_SECRET_HEX,
    balance,
    in_thread,
)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class FarNode:
    port: int
    env: dict[str, str]

    def manage(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def balance(self, code: str) -> int:
        out = self.manage(
            "shell",
            "--no-imports",
            "-c",
            "from payments.models import LedgerAccount as A; "
            f"a = A.objects.filter(code={code!r}).first(); print(int(a.balance) if a else 0)",
        )
        return int(out.strip())

    def btp(self, name: str, token: str) -> str:
        return f"btp+ws://{name}:{token}@127.0.0.1:{self.port}/btp"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def far(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarNode]:
    var = tmp_path_factory.mktemp("far-node")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "interledger_site.settings",
            "DATABASE_URL": f"sqlite:///{var / 'far.sqlite3'}",
            "ILP_VAR_DIR": str(var),
            "ILP_ADDRESS": "test.far",
            "ILP_ASSET_CODE": "XRP",
            "ILP_ASSET_SCALE": "9",
            "ILP_FEE_PPM": "10000",
            "ILP_RECEIVER_SECRET": RECEIVER_SECRET_HEX,
            "ILP_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "ILP_LINKS_AUTOSTART": "0",
            "PYTHONPATH": str(ROOT),
            "LOG_LEVEL": "WARNING",
        }
    )
    node = FarNode(port, env)
    node.manage("migrate", "--noinput", "-v0")
    node.manage("add_pointer", "carol")
    node.manage(
        "add_peer", "near", "--relation", "child", "--link", "btp-server", "--token", "neartok"
    )
    node.manage(
        "add_peer",
        "back",
        "--relation",
        "peer",
        "--link",
        "btp-server",
        "--token",
        "backtok",
        "--address",
        f"{NODE}.circular",
    )
    log = open(var / "daphne.log", "w")  # noqa: SIM115 (closed below)
    daphne = subprocess.Popen(
        [
            *(sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)),
            "interledger_site.asgi:application",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1, trust_env=False).status_code:
                    break
            except httpx.HTTPError:
                pass
            if daphne.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((var / "daphne.log").read_text())
            time.sleep(0.2)
        yield node
    finally:
        daphne.terminate()
        try:
            daphne.wait(10)
        except subprocess.TimeoutExpired:
            daphne.kill()
        log.close()


def _peers(far: FarNode) -> None:
    from links import services

    services.peer_create(
        name="far", relation="parent", link="btp-client", url=far.btp("near", "neartok")
    )
    services.peer_create(
        name="farback", relation="peer", link="btp-client", url=far.btp("back", "backtok")
    )


def test_pay_command_pays_a_receiver_on_another_node_over_btp(far: FarNode) -> None:
    _peers(far)
    carol_before, near_before = far.balance("receiver:carol"), far.balance("peer:near")
    out = StringIO()
    call_command(
        "pay",
        f"$127.0.0.1:{far.port}/carol",
        "5000",
        "--via",
        "far",
        "--key",
        "two-nodes-1",
        stdout=out,
    )
    assert "[completed] sent 5000 delivered 5000" in out.getvalue(), out.getvalue()
    payment = OutgoingPayment.objects.get(idempotency_key="two-nodes-1")
    assert payment.destination_address.startswith("test.far.receivers.carol.")
    # Our books: the node paid 5000, we owe the far node's connector what it carried.
    assert balance(OPERATOR_ACCOUNT) == -5_000 and balance("peer:far") == 5_000
    # Its books: we (its child "near") paid carol. The link was closed after the payment.
    assert far.balance("peer:near") == near_before - 5_000
    deadline = time.monotonic() + 10
    while far.balance("receiver:carol") != carol_before + 5_000:
        assert time.monotonic() < deadline, "carol was not credited"
        time.sleep(0.2)
    assert registry.local("far") is None


async def test_circular_payment_through_another_node_measures_its_fee(far: FarNode) -> None:
    await in_thread(_peers)(far)
    before = await asyncio.to_thread(lambda: (far.balance("peer:near"), far.balance("peer:back")))
    clients = [
        BtpClient("far", far.btp("near", "neartok")),
        BtpClient("farback", far.btp("back", "backtok")),
    ]
    for client in clients:
        client.start()
    try:
        for client in clients:
            await asyncio.wait_for(client.connected.wait(), 10)
        circular = await in_thread(circular_payment_create)(
            out_peer="far", amount=100_000, start=False
        )
        done = await circular_payment_run(circular_id=circular.pk)
    finally:
        for client in clients:
            await client.stop()
    assert done is not None
    assert done.status == "completed", f"{done.code} {done.last_error}"
    assert done.in_peer == "farback" and int(done.amount_in or 0) == 99_000
    assert done.cost == 1_000 and done.rtt_ms is not None and done.rtt_ms > 0
    books: dict[str, Any] = await in_thread(
        lambda: {c: balance(c) for c in (OPERATOR_ACCOUNT, "peer:far", "peer:farback")}
    )()
    assert books == {OPERATOR_ACCOUNT: -1_000, "peer:far": 100_000, "peer:farback": -99_000}
    far_books = await asyncio.to_thread(
        lambda: (far.balance("peer:near"), far.balance("peer:back"))
    )
    # The far node kept its 1 % (its fee account): near paid 100000, back got 99000.
    assert (far_books[0] - before[0], far_books[1] - before[1]) == (-100_000, 99_000)
