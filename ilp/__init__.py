"""The sans-IO Interledger protocol core.

Bytes in, typed values out, and back: OER, ILPv4 packets and addresses, BTP,
IL-DCP, CCP, echo, ``peer.balance`` and PSK2. Nothing here imports Django,
Channels, Celery or DRF, reads a clock, draws random bytes or opens a socket:
``now`` and random bytes are always passed in. Every decoder raises only
:class:`ilp.errors.DecodeError`.
"""

from ilp import _variant

# Before any codec module is imported: a compiled build older than its source never runs.
_variant.install_guard()
