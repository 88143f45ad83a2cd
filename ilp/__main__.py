"""``python -m ilp decode [--kind K] [--secret HEX] HEX|-``: print a wire message as JSON.

The JSON follows the vector files (``shared/vectors``): amounts as decimal strings,
binary as lowercase hex, times as ISO-8601 UTC with milliseconds, and a ``type``
field. On bad input it prints one line ``error: at offset N: reason`` to stderr and
exits 2; ``N`` is a byte offset into the decoded input.

``ildcp``, ``echo``, ``ccp``, ``balance``, ``psk2`` and ``stream`` (with ``--secret``;
without it a STREAM plaintext) accept either the ILP packet
that carries the payload or the bare payload (the packet's ``data``). Each kind is
one entry of :data:`KINDS`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ilp.errors import DecodeError
from ilp.oer import encode_var_octets
from ilp.packet import Fulfill, IlpPacket, Prepare, Reject, decode_packet

JsonObject = dict[str, Any]

EXIT_INVALID = 2


@dataclass(frozen=True, slots=True)
class Options:
    secret: bytes | None = None


# --- JSON forms ----------------------------------------------------------------------


def iso_time(moment: datetime) -> str:
    """``2017-12-23T01:21:40.549Z``."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def packet_json(packet: IlpPacket) -> JsonObject:
    if isinstance(packet, Prepare):
        return {
            "type": "prepare",
            "amount": str(packet.amount),
            "expiresAt": iso_time(packet.expires_at),
            "executionCondition": packet.execution_condition.hex(),
            "destination": packet.destination,
            "data": packet.data.hex(),
        }
    if isinstance(packet, Fulfill):
        return {
            "type": "fulfill",
            "fulfillment": packet.fulfillment.hex(),
            "data": packet.data.hex(),
        }
    return {
        "type": "reject",
        "code": packet.code,
        "triggeredBy": packet.triggered_by,
        "message": packet.message,
        "data": packet.data.hex(),
    }


def _shifted(error: DecodeError, base: int) -> DecodeError:
    return DecodeError(error.reason, error.offset + base)


def _carried(
    raw: bytes, decode_payload: Callable[[bytes], JsonObject], *, wrapped_types: Sequence[type]
) -> JsonObject:
    """Decode ``raw`` as an ILP packet of ``wrapped_types`` carrying the payload, or as
    the bare payload. When neither works, the error of the reading that got further wins.
    """
    packet_error: DecodeError | None = None
    try:
        packet = decode_packet(raw)
    except DecodeError as exc:
        packet_error = exc
    else:
        if isinstance(packet, tuple(wrapped_types)):
            base = len(raw) - len(packet.data)  # data is the last field of every packet
            try:
                payload = decode_payload(packet.data)
            except DecodeError as exc:
                raise _shifted(exc, base) from None
            payload["packet"] = packet_json(packet)
            return payload
    try:
        return decode_payload(raw)
    except DecodeError as exc:
        if packet_error is not None and packet_error.offset > exc.offset:
            raise packet_error from None
        raise


# --- one function per kind -----------------------------------------------------------


def decode_ilp(raw: bytes, options: Options) -> JsonObject:
    return packet_json(decode_packet(raw))


def decode_btp_kind(raw: bytes, options: Options) -> JsonObject:
    from ilp import btp

    frame = btp.decode_btp(raw)
    result: JsonObject = {
        "type": int(frame.TYPE),
        "typeName": frame.TYPE.name.title(),
        "requestId": frame.request_id,
    }
    if isinstance(frame, btp.BtpError):
        triggered_at = frame.triggered_at_time
        result.update(
            code=frame.code,
            name=frame.name,
            triggeredAt=iso_time(triggered_at) if triggered_at else frame.triggered_at,
            data=frame.message,
        )
    if isinstance(frame, btp.BtpTransfer):
        result["amount"] = str(frame.amount)
    result["protocolData"] = [
        {"protocolName": e.protocol_name, "contentType": e.content_type, "data": e.data.hex()}
        for e in frame.protocol_data
    ]
    entry = btp.find_entry(frame, btp.ILP)
    if entry is not None:
        try:
            result["ilp"] = packet_json(decode_packet(entry.data))
        except DecodeError as exc:
            result["ilpError"] = str(exc)
    return result


def decode_ildcp_kind(raw: bytes, options: Options) -> JsonObject:
    from ilp.ildcp import ILDCP_DESTINATION, decode_ildcp_fulfill, decode_ildcp_response

    def response_json(client_address: str, asset_scale: int, asset_code: str) -> JsonObject:
        return {
            "type": "ildcp_response",
            "clientAddress": client_address,
            "assetScale": asset_scale,
            "assetCode": asset_code,
        }

    if raw[:1] == b"\x0c":
        try:
            prepare = decode_packet(raw)
        except DecodeError:
            pass  # maybe bare data whose address is 12 bytes long; read on
        else:
            if not isinstance(prepare, Prepare) or prepare.destination != ILDCP_DESTINATION:
                raise DecodeError("a Prepare that is not addressed to peer.config", 0)
            return {"type": "ildcp_request", "packet": packet_json(prepare)}
    if raw[:1] == b"\x0d":
        try:
            response = decode_ildcp_fulfill(raw)
        except DecodeError as packet_error:
            try:
                bare = decode_ildcp_response(raw)
            except DecodeError:
                raise packet_error from None
        else:
            result = response_json(
                response.client_address, response.asset_scale, response.asset_code
            )
            result["packet"] = packet_json(decode_packet(raw))
            return result
        return response_json(bare.client_address, bare.asset_scale, bare.asset_code)
    response = decode_ildcp_response(raw)
    return response_json(response.client_address, response.asset_scale, response.asset_code)


def decode_balance_kind(raw: bytes, options: Options) -> JsonObject:
    from ilp.balance import decode_balance, decode_balance_fulfill

    if len(raw) == 8:
        return {"type": "balance", "balance": str(decode_balance(raw))}
    result: JsonObject = {"type": "balance", "balance": str(decode_balance_fulfill(raw))}
    result["packet"] = packet_json(decode_packet(raw))
    return result


def decode_echo_kind(raw: bytes, options: Options) -> JsonObject:
    from ilp.echo import ECHO_PREFIX, EchoRequest, decode_echo

    def payload(data: bytes) -> JsonObject:
        message = decode_echo(data)
        result: JsonObject = {"prefix": ECHO_PREFIX.decode("ascii")}
        if isinstance(message, EchoRequest):
            result.update(type=0, sourceAddress=message.source_address)
        else:
            result["type"] = 1
        return result

    return _carried(raw, payload, wrapped_types=(Prepare,))


def decode_ccp_kind(raw: bytes, options: Options) -> JsonObject:
    from ilp import ccp
    from ilp.conditions import PEER_FULFILLMENT

    def control(data: bytes) -> JsonObject:
        request = ccp.decode_route_control_request(data)
        return {
            "type": "ccp_route_control",
            "mode": int(request.mode),
            "modeName": request.mode.name,
            "lastKnownRoutingTableId": str(request.last_known_routing_table_uuid),
            "lastKnownEpoch": request.last_known_epoch,
            "features": list(request.features),
        }

    def update(data: bytes) -> JsonObject:
        request = ccp.decode_route_update_request(data)
        return {
            "type": "ccp_route_update",
            "routingTableId": str(request.routing_table_uuid),
            "currentEpochIndex": request.current_epoch_index,
            "fromEpochIndex": request.from_epoch_index,
            "toEpochIndex": request.to_epoch_index,
            "holdDownTime": request.hold_down_time,
            "speaker": request.speaker,
            "newRoutes": [
                {
                    "prefix": route.prefix,
                    "path": list(route.path),
                    "auth": route.auth.hex(),
                    "props": [
                        {
                            "isOptional": prop.is_optional,
                            "isTransitive": prop.is_transitive,
                            "isPartial": prop.is_partial,
                            "id": prop.id,
                            "isUtf8": prop.is_utf8,
                            "value": prop.text if prop.text is not None else prop.value.hex(),
                        }
                        for prop in route.props
                    ],
                }
                for route in request.new_routes
            ],
            "withdrawnRoutes": list(request.withdrawn_routes),
        }

    def either(data: bytes) -> JsonObject:
        # A bare payload says nothing about its kind; control payloads are tried first.
        try:
            return control(data)
        except DecodeError as control_error:
            try:
                return update(data)
            except DecodeError as update_error:
                raise max(control_error, update_error, key=lambda e: e.offset) from None

    try:
        packet = decode_packet(raw)
    except DecodeError as packet_error:
        try:
            return either(raw)
        except DecodeError as payload_error:
            raise max(packet_error, payload_error, key=lambda e: e.offset) from None
    base = len(raw) - len(packet.data)
    if isinstance(packet, Fulfill):
        if packet.fulfillment != PEER_FULFILLMENT or packet.data:
            raise DecodeError("a CCP response is the peer Fulfill with empty data", 2)
        return {"type": "ccp_response", "packet": packet_json(packet)}
    if isinstance(packet, Reject):
        return packet_json(packet)
    by_destination = {ccp.CCP_CONTROL_DESTINATION: control, ccp.CCP_UPDATE_DESTINATION: update}
    decode_payload = by_destination.get(packet.destination)
    if decode_payload is None:
        raise DecodeError(f"a Prepare to {packet.destination} is not a CCP request", 0)
    try:
        result = decode_payload(packet.data)
    except DecodeError as exc:
        raise _shifted(exc, base) from None
    result["packet"] = packet_json(packet)
    return result


def decode_psk2_kind(raw: bytes, options: Options) -> JsonObject:
    from ilp import psk2

    secret = options.secret
    if secret is None:
        raise DecodeError("--kind psk2 needs --secret HEX (the shared secret)", 0)

    def payload(data: bytes) -> JsonObject:
        plaintext = psk2.decrypt(secret, data)
        packet = psk2.decode_psk2(plaintext)
        result: JsonObject = {"type": int(packet.type), "typeName": type(packet).__name__}
        if isinstance(packet, psk2.Request | psk2.Response | psk2.Rejection):
            consumed = 13 + len(encode_var_octets(packet.data))
            result.update(
                requestId=packet.request_id, amount=str(packet.amount), data=packet.data.hex()
            )
        else:
            consumed = 37 + len(encode_var_octets(packet.application_data))
            result.update(
                paymentId=packet.payment_id.hex(),
                sequence=packet.sequence,
                paymentAmount=str(packet.payment_amount),
                chunkAmount=str(packet.chunk_amount),
                applicationData=packet.application_data.hex(),
            )
        result["trailing"] = plaintext[consumed:].hex()
        if isinstance(packet, psk2.ChunkRequest | psk2.Request):
            fulfillment = psk2.fulfillment_for(secret, data)
            result["fulfillment"] = fulfillment.hex()
            result["condition"] = psk2.condition_for_data(secret, data).hex()
        return result

    return _carried(raw, payload, wrapped_types=(Prepare, Fulfill, Reject))


def stream_packet_json(packet: Any) -> JsonObject:
    """A STREAM packet in the vector file's form (``stream/stream.json``): JS field names,
    VarUInts as decimal strings, UInt8 fields as numbers, binary as hex."""
    from dataclasses import fields

    frames: list[JsonObject] = []
    for frame in packet.frames:
        item: JsonObject = {"type": int(frame.TYPE), "name": type(frame).__name__[: -len("Frame")]}
        for f in fields(frame):
            value = getattr(frame, f.name)
            head, *rest = f.name.split("_")
            key = head + "".join(word.title() for word in rest)
            if isinstance(value, bytes):
                item[key] = value.hex()
            elif isinstance(value, int) and f.name not in ("error_code", "source_asset_scale"):
                item[key] = str(value)
            else:
                item[key] = value
        frames.append(item)
    return {
        "version": 1,
        "ilp_packet_type": int(packet.packet_type),
        "sequence": str(packet.sequence),
        "prepare_amount": str(packet.prepare_amount),
        "frames": frames,
    }


def decode_stream_kind(raw: bytes, options: Options) -> JsonObject:
    """With ``--secret``: the encrypted data (or the ILP packet carrying it) is decrypted
    first; without: ``raw`` is a STREAM plaintext."""
    from ilp import stream

    secret = options.secret
    if secret is None:
        return stream_packet_json(stream.decode_stream_packet(raw))

    def payload(data: bytes) -> JsonObject:
        result = stream_packet_json(stream.decode_stream_packet(stream.decrypt(secret, data)))
        result["fulfillment"] = stream.fulfillment_for(secret, data).hex()
        result["condition"] = stream.condition_for_data(secret, data).hex()
        return result

    return _carried(raw, payload, wrapped_types=(Prepare, Fulfill, Reject))


Decoder = Callable[[bytes, Options], JsonObject]

#: ``--kind`` name → decoder. Adding a kind is adding a line here.
KINDS: dict[str, Decoder] = {
    "ilp": decode_ilp,
    "btp": decode_btp_kind,
    "ildcp": decode_ildcp_kind,
    "ccp": decode_ccp_kind,
    "echo": decode_echo_kind,
    "psk2": decode_psk2_kind,
    "stream": decode_stream_kind,
    "balance": decode_balance_kind,
}


# --- command line --------------------------------------------------------------------


def parse_hex(text: str) -> bytes:
    """Hex with any whitespace removed; errors name the byte offset of the bad digit."""
    digits = "".join(text.split())
    for index, char in enumerate(digits):
        if char not in "0123456789abcdefABCDEF":
            raise DecodeError(f"not a hex digit: {char!r}", index // 2)
    if len(digits) % 2:
        raise DecodeError("odd number of hex digits", len(digits) // 2)
    return bytes.fromhex(digits)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ilp", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    decode = commands.add_parser("decode", help="print a wire message as JSON")
    decode.add_argument("--kind", choices=sorted(KINDS), default="ilp")
    decode.add_argument("--secret", help="shared secret (hex): --kind psk2, --kind stream")
    decode.add_argument("hex", help="the message in hex, or - to read it from stdin")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    text = sys.stdin.read() if args.hex == "-" else args.hex
    try:
        secret = parse_hex(args.secret) if args.secret is not None else None
        if secret == b"":
            raise DecodeError("the secret must not be empty", 0)
    except DecodeError as exc:
        print(f"error: --secret: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        result = KINDS[args.kind](parse_hex(text), Options(secret=secret))
    except DecodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
