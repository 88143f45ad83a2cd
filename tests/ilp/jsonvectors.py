"""Vector JSON (``shared/spec/ilp-packet.md`` section 7) to ``ilp`` values, for the tests.

Written independently of the ``python -m ilp`` JSON printer, so that the tests of
either one cannot pass by sharing a mistake.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ilp.packet import Fulfill, IlpPacket, Prepare, Reject


def parse_time(text: str) -> datetime:
    # "2017-12-23T01:21:40.549Z": fromisoformat reads the Z since Python 3.11
    return datetime.fromisoformat(text)


def packet_from_json(obj: dict[str, Any]) -> IlpPacket:
    kind = obj["type"]
    if kind == "prepare":
        return Prepare(
            amount=int(obj["amount"]),
            expires_at=parse_time(obj["expiresAt"]),
            execution_condition=bytes.fromhex(obj["executionCondition"]),
            destination=obj["destination"],
            data=bytes.fromhex(obj["data"]),
        )
    if kind == "fulfill":
        return Fulfill(bytes.fromhex(obj["fulfillment"]), bytes.fromhex(obj["data"]))
    if kind == "reject":
        return Reject(obj["code"], obj["triggeredBy"], obj["message"], bytes.fromhex(obj["data"]))
    raise ValueError(f"unknown packet type in vector: {kind}")
