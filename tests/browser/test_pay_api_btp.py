"""``manage.py pay_api --btp``: the whole HTTP-ILP flow against a live node, the money
going over a BTP connection of ours (what works against any node)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.browser.conftest import ROOT, LiveNode


def test_pay_api_over_btp(live_node: LiveNode) -> None:
    live_node.manage(
        "add_peer", "buyer", "--relation", "child", "--link", "btp-server", "--token", "buyertoken"
    )
    url = f"{live_node.base_url}/api/v1/demo/paid"
    token = "HEXguOGDY96q54yzNMGhkw"
    command = [
        sys.executable,
        "manage.py",
        "pay_api",
        url,
        "--btp",
        live_node.btp_url("buyer", "buyertoken"),
        "--token",
        token,
    ]
    # The command runs with its own (empty) database: only the node's is touched.
    env = {**live_node.env, "DATABASE_URL": "sqlite:///:memory:"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"message": "Hello World!", "price": "100", "balance": "0"}
    assert f"Pay-Token {token}" in done.stderr and "paid 100" in done.stderr
    # The node's books: the buyer paid 100 to paidapi.
    balances = live_node.shell(
        "from payments.models import LedgerAccount as A; "
        "print(A.objects.get(code='peer:buyer').balance)"
    )
    assert balances.strip() == "-100"
    # A wrong BTP token is a clear failure, and nothing is paid.
    bad = [*command[:-3], live_node.btp_url("buyer", "wrong"), "--token", token]
    failed = subprocess.run(bad, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and "BTP" in failed.stderr
