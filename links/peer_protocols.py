"""The ``peer.*`` protocols a link partner talks to *us* (never forwarded).

* ``peer.config`` — IL-DCP host (``shared/spec/ildcp.md``): children only; the answer is
  the child's address ``<node>.<name>`` (or its configured address) and its account's
  asset, which is the node's asset unless the peer was set up otherwise.
* ``peer.balance`` — the project's balance query (``shared/spec/balance.md``): Int64 of
  the committed balance, positive = we owe the requester. That is exactly our ledger's
  sign convention, so the number goes out as the book has it.
* ``peer.route.*`` — CCP, answered by :mod:`links.ccp`.
* anything else — F01 ``unknown peer protocol.`` (21.3.0).

Every ``peer.*`` Prepare first needs the peer-protocol condition (F01 otherwise, as
21.3.0 checks it before anything else) and amount 0: a peer packet that carries money
would move value no ledger entry records, so it is refused (F01) rather than fulfilled.
Messages are 21.3.0's, verbatim where it has one (its typo included).
"""

from __future__ import annotations

from datetime import datetime

from ilp.balance import BALANCE_DESTINATION, balance_fulfill
from ilp.conditions import PEER_CONDITION
from ilp.errors import EncodeError
from ilp.ildcp import ILDCP_DESTINATION, IldcpResponse, ildcp_fulfill, validate_ildcp_request
from ilp.packet import Prepare, Reject, RejectError, Reply
from links.peers import PeerContext

PEER_PREFIX = "peer."
ROUTE_PREFIX = "peer.route."

MSG_WRONG_CONDITION = "condition must be peer protocol condition."
MSG_NONZERO_AMOUNT = "peer protocol packets must have amount 0."
MSG_UNKNOWN = "unknown peer protocol."
MSG_NOT_CHILD = "Can't generate child address for account that is isn't a child"


def check_peer_prepare(node_address: str, prepare: Prepare) -> Reject | None:
    """The Reject for a ``peer.*`` Prepare that no peer protocol may accept, else ``None``."""
    if prepare.execution_condition != PEER_CONDITION:
        return Reject("F01", node_address, MSG_WRONG_CONDITION)
    if prepare.amount != 0:
        return Reject("F01", node_address, MSG_NONZERO_AMOUNT)
    return None


def child_address(node_address: str, source: PeerContext) -> str:
    return source.address or f"{node_address}.{source.name}"


def ildcp_reply(node_address: str, source: PeerContext, prepare: Prepare, now: datetime) -> Reply:
    """IL-DCP host (ildcp.md §4/§5): F00 for non-children and expired requests."""
    if source.relation != "child":
        return Reject("F00", node_address, MSG_NOT_CHILD)
    try:
        validate_ildcp_request(prepare, now)
    except RejectError as exc:
        return exc.to_reject(node_address)
    return ildcp_fulfill(
        IldcpResponse(child_address(node_address, source), source.asset_scale, source.asset_code)
    )


def balance_reply(node_address: str, balance: int) -> Reply:
    """``peer.balance`` (balance.md §4): T00 if the balance does not fit an Int64."""
    try:
        return balance_fulfill(balance)
    except EncodeError:
        return Reject("T00", node_address, "balance does not fit in an Int64.")


def unknown_protocol(node_address: str) -> Reject:
    return Reject("F01", node_address, MSG_UNKNOWN)


__all__ = [
    "BALANCE_DESTINATION",
    "ILDCP_DESTINATION",
    "PEER_PREFIX",
    "ROUTE_PREFIX",
    "balance_reply",
    "check_peer_prepare",
    "child_address",
    "ildcp_reply",
    "unknown_protocol",
]
