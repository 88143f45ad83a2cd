"""The ILPv4 error codes, re-exported by :mod:`ilp.packet` (their public home).

A module of its own because an enum with a custom ``__new__`` cannot be compiled by
mypyc, which builds :mod:`ilp.packet` (``scripts/build_codec.py``); this one always runs
as plain Python.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["ErrorCode"]


class ErrorCode(StrEnum):
    """The ILPv4 error codes (RFC 27 section "Error Codes").

    The first letter is the class: **F**inal (do not retry unchanged),
    **T**emporary (may succeed later), **R**elative (retry with more amount or
    time). Unknown codes are legal on the wire; classify them with
    :func:`error_class`.
    """

    # Shadows str.title on purpose: the contract names the human title `.title`.
    title: str  # type: ignore[assignment]

    def __new__(cls, code: str, title: str) -> ErrorCode:
        member = str.__new__(cls, code)
        member._value_ = code
        member.title = title
        return member

    F00 = ("F00", "Bad Request")
    F01 = ("F01", "Invalid Packet")
    F02 = ("F02", "Unreachable")
    F03 = ("F03", "Invalid Amount")
    F04 = ("F04", "Insufficient Destination Amount")
    F05 = ("F05", "Wrong Condition")
    F06 = ("F06", "Unexpected Payment")
    F07 = ("F07", "Cannot Receive")
    F08 = ("F08", "Amount Too Large")
    F99 = ("F99", "Application Error")
    T00 = ("T00", "Internal Error")
    T01 = ("T01", "Peer Unreachable")
    T02 = ("T02", "Peer Busy")
    T03 = ("T03", "Connector Busy")
    T04 = ("T04", "Insufficient Liquidity")
    T05 = ("T05", "Rate Limited")
    T99 = ("T99", "Application Error")
    R00 = ("R00", "Transfer Timed Out")
    R01 = ("R01", "Insufficient Source Amount")
    R02 = ("R02", "Insufficient Timeout")
    R99 = ("R99", "Application Error")
