"""The sans-IO Interledger protocol core.

Bytes in, typed values out, and back: OER, ILPv4 packets and addresses, BTP,
IL-DCP, CCP, echo, ``peer.balance`` and PSK2. Nothing here imports Django,
Channels, Celery or DRF, reads a clock, draws random bytes or opens a socket:
``now`` and random bytes are always passed in. Every decoder raises only
:class:`ilp.errors.DecodeError`.
"""
