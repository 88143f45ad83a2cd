"""STREAM (RFC 0029) and STREAM receipts (RFC 0039), sans-IO. The digest is ``docs/STREAM.md``.

- :mod:`ilp.stream.frames`: every frame type, a registry from type byte to class.
- :mod:`ilp.stream.packet`: :class:`StreamPacket` and its plaintext codec.
- :mod:`ilp.stream.crypto`: keys, AES-256-GCM envelope, fulfillment and condition.
- :mod:`ilp.stream.receipts`: RFC 0039 receipts.
- :mod:`ilp.stream.addresses`: stateless receiver addresses and secrets.
- :mod:`ilp.stream.receiver`: the receiver's decisions as pure functions over frozen state.

Nothing here reads a clock or draws random bytes: ``now`` and IVs are passed in. Decoders
raise only :class:`ilp.errors.DecodeError`.
"""

from ilp.stream.addresses import (
    CONNECTION_ID_LENGTH,
    IssuedStreamAddress,
    OpenedAddress,
    connection_id,
    is_stream_segment,
    issue_stream_address,
    open_stream_address,
)
from ilp.stream.crypto import (
    IV_LENGTH,
    StreamDecryptionError,
    condition_for_data,
    decrypt,
    decrypt_packet,
    encrypt,
    encrypt_packet,
    encryption_key,
    fulfillment_for,
    fulfillment_key,
)
from ilp.stream.frames import (
    FRAME_CLASSES,
    ConnectionAssetDetailsFrame,
    ConnectionCloseFrame,
    ConnectionDataBlockedFrame,
    ConnectionMaxDataFrame,
    ConnectionMaxStreamIdFrame,
    ConnectionNewAddressFrame,
    ConnectionStreamIdBlockedFrame,
    ErrorCode,
    Frame,
    FrameType,
    StreamCloseFrame,
    StreamDataBlockedFrame,
    StreamDataFrame,
    StreamMaxDataFrame,
    StreamMaxMoneyFrame,
    StreamMoneyBlockedFrame,
    StreamMoneyFrame,
    StreamReceiptFrame,
    encode_frame,
)
from ilp.stream.packet import (
    MAX_PLAINTEXT_LENGTH,
    StreamPacket,
    StreamPacketType,
    decode_stream_packet,
    encode_stream_packet,
)
from ilp.stream.receipts import (
    RECEIPT_LENGTH,
    InvalidReceipt,
    Receipt,
    ReceiptSetup,
    create_receipt,
    decode_receipt,
    encode_receipt,
    verify_receipt,
)

__all__ = [
    "CONNECTION_ID_LENGTH",
    "FRAME_CLASSES",
    "IV_LENGTH",
    "MAX_PLAINTEXT_LENGTH",
    "RECEIPT_LENGTH",
    "ConnectionAssetDetailsFrame",
    "ConnectionCloseFrame",
    "ConnectionDataBlockedFrame",
    "ConnectionMaxDataFrame",
    "ConnectionMaxStreamIdFrame",
    "ConnectionNewAddressFrame",
    "ConnectionStreamIdBlockedFrame",
    "ErrorCode",
    "Frame",
    "FrameType",
    "InvalidReceipt",
    "IssuedStreamAddress",
    "OpenedAddress",
    "Receipt",
    "ReceiptSetup",
    "StreamCloseFrame",
    "StreamDataBlockedFrame",
    "StreamDataFrame",
    "StreamDecryptionError",
    "StreamMaxDataFrame",
    "StreamMaxMoneyFrame",
    "StreamMoneyBlockedFrame",
    "StreamMoneyFrame",
    "StreamPacket",
    "StreamPacketType",
    "StreamReceiptFrame",
    "condition_for_data",
    "connection_id",
    "create_receipt",
    "decode_receipt",
    "decode_stream_packet",
    "decrypt",
    "decrypt_packet",
    "encode_frame",
    "encode_receipt",
    "encode_stream_packet",
    "encrypt",
    "encrypt_packet",
    "encryption_key",
    "fulfillment_for",
    "fulfillment_key",
    "is_stream_segment",
    "issue_stream_address",
    "open_stream_address",
    "verify_receipt",
]
