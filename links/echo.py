"""Echo (ping) responder as ilp-connector 21.3.0 does it (``shared/spec/echo.md``).

A Prepare addressed to the node itself with data ``ECHOECHOECHOECHO ‖ 00 ‖
var-octets(source address)`` is answered by a *new* Prepare to that source address:
same amount and condition, ``expiresAt`` one message window earlier (not capped by the
maximum hold time), data ``ECHOECHOECHOECHO ‖ 01``. Its Fulfill or Reject becomes the
answer to the ping. This module holds the pure part: reading the request with 21.3.0's
error codes and texts, and building the echo Prepare. Sending it (route, link, holds,
settlement) is the switch's job, like any outgoing packet.

Deviations from 21.3.0, as echo.md §5 recommends: a missing, truncated or invalid source
address and trailing bytes after it are **F01** (21.3.0: F00 or ignored), and a ping whose
expiry leaves no message window is **R02** up front (21.3.0 sends an already expired echo
and answers T00).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from ilp.echo import (
    ECHO_PREFIX,
    MIN_ECHO_DATA_LENGTH,
    EchoRequest,
    EchoType,
    decode_echo,
    echo_response_prepare,
)
from ilp.errors import DecodeError
from ilp.packet import Prepare, RejectError


def parse_echo_request(data: bytes) -> EchoRequest:
    """The echo request in ``data``, or :class:`RejectError` F01 with 21.3.0's texts."""
    if (
        len(data) >= MIN_ECHO_DATA_LENGTH
        and data.startswith(ECHO_PREFIX)
        and data[len(ECHO_PREFIX)] != EchoType.REQUEST
    ):
        raise RejectError("F01", "unexpected ping response.")
    try:
        message = decode_echo(data)
    except DecodeError as exc:
        # Too short / no prefix carry 21.3.0's exact texts; the rest is our F01 policy.
        raise RejectError("F01", exc.reason) from None
    if not isinstance(message, EchoRequest):  # pragma: no cover - type byte checked above
        raise RejectError("F01", "unexpected ping response.")
    return message


def echo_prepare(
    ping: Prepare, request: EchoRequest, *, amount: int, window: timedelta, now: datetime
) -> Prepare:
    """The echo to send back for ``ping``; :class:`RejectError` R02 if no time is left.

    ``amount`` is the ping's amount in the next hop's units (the same number when both
    links share an asset, which is 21.3.0's only case: echo bypasses FX there).
    """
    # Compared as durations: ``ping.expires_at - window`` overflows for a year-1 expiry.
    if ping.expires_at - now <= window:
        raise RejectError(
            "R02",
            "source transfer expires too soon to send the echo. "
            f"sourceExpiry={_iso(ping.expires_at)} currentTime={_iso(now)}",
        )
    echo = echo_response_prepare(ping, request, ping.expires_at - window)
    return echo if amount == ping.amount else replace(echo, amount=amount)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
