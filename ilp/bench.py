"""``python -m ilp.bench``: packet codec throughput, ours and the npm reference packages'.

Encodes and decodes a realistic Prepare (a 66-byte ``test.sut.receivers.bob.<token>``
destination and 200 bytes of data), a Fulfill and a Reject, plus the BTP frames that
carry them, and a STREAM money packet and its reply (plaintext codec, and encryption +
encoding / decryption + decoding), for about a second each, and prints operations per CPU
second. Then it runs the same work in node with ilp-packet 3.1.3, btp-packet 2.2.1 and
ilp-protocol-stream 2.7.2-alpha.3 (installed on first use into ``.bench/`` at the project
root) and prints our/their ratio, after checking that both sides encode byte for byte the
same. Without node or the packages it prints
our numbers and says why the ratio is missing. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import base64
import json
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ilp import _variant
from ilp.packet import (
    Fulfill,
    Prepare,
    Reject,
    decode_fulfill,
    decode_prepare,
    decode_reject,
    encode_fulfill,
    encode_prepare,
    encode_reject,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NPM_DIR = PROJECT_ROOT / ".bench"
NPM_PACKAGES = ("ilp-packet@3.1.3", "btp-packet@2.2.1", "ilp-protocol-stream@2.7.2-alpha.3")
JS_SCRIPT = Path(__file__).resolve().parent / "bench_js.js"
REQUEST_ID = 0x5EED1234
WARM_UP_SHARE = 0.2
# Timed windows per operation, the best one counts (ops_per_second).
WINDOWS = 3


@dataclass(frozen=True, slots=True)
class Workload:
    prepare: Prepare
    fulfill: Fulfill
    reject: Reject


def realistic_workload() -> Workload:
    """Fixed bytes (no randomness): a PSK2-sized Prepare and its two possible replies."""
    token = base64.urlsafe_b64encode(bytes(range(7, 39))).rstrip(b"=").decode("ascii")
    return Workload(
        prepare=Prepare(
            amount=1_234_567,
            expires_at=datetime(2030, 1, 1, 0, 0, 30, 123000, tzinfo=UTC),
            execution_condition=bytes(range(100, 132)),
            destination=f"test.sut.receivers.bob.{token}",
            data=bytes(i * 7 % 256 for i in range(200)),
        ),
        fulfill=Fulfill(bytes(range(32, 64)), bytes(i * 3 % 256 for i in range(60))),
        reject=Reject("F99", "test.sut", "", bytes(i * 5 % 256 for i in range(60))),
    )


Operation = Callable[[], object]


def python_operations(work: Workload) -> dict[str, Operation]:
    prepare_bytes = encode_prepare(work.prepare)
    fulfill_bytes = encode_fulfill(work.fulfill)
    reject_bytes = encode_reject(work.reject)
    ops: dict[str, Operation] = {
        "prepare encode": lambda: encode_prepare(work.prepare),
        "prepare decode": lambda: decode_prepare(prepare_bytes),
        "fulfill encode": lambda: encode_fulfill(work.fulfill),
        "fulfill decode": lambda: decode_fulfill(fulfill_bytes),
        "reject encode": lambda: encode_reject(work.reject),
        "reject decode": lambda: decode_reject(reject_bytes),
    }
    try:
        from ilp import btp
    except ImportError:  # pragma: no cover - ilp.btp is written in parallel
        return ops
    message = btp.ilp_message(REQUEST_ID, prepare_bytes)
    response = btp.ilp_response(REQUEST_ID, fulfill_bytes)
    message_bytes = btp.encode_btp(message)
    response_bytes = btp.encode_btp(response)
    ops.update(
        {
            "btp message encode": lambda: btp.encode_btp(message),
            "btp message decode": lambda: btp.decode_btp(message_bytes),
            "btp response encode": lambda: btp.encode_btp(response),
            "btp response decode": lambda: btp.decode_btp(response_bytes),
        }
    )
    ops.update(stream_operations())
    return ops


# A STREAM money packet as a sender's first Prepare carries it, and the receiver's Fulfill.
STREAM_SECRET = bytes(range(200, 232))
STREAM_SOURCE = "test.sender.connector.5f1a0d9c7be24e6f"


def stream_packets() -> tuple[Any, Any]:
    from ilp.stream.frames import (
        ConnectionAssetDetailsFrame,
        ConnectionNewAddressFrame,
        StreamMaxMoneyFrame,
        StreamMoneyFrame,
    )
    from ilp.stream.packet import StreamPacket, StreamPacketType

    prepare = StreamPacket(
        7,
        StreamPacketType.PREPARE,
        1000,
        (
            ConnectionNewAddressFrame(STREAM_SOURCE),
            ConnectionAssetDetailsFrame("XRP", 9),
            StreamMoneyFrame(1, 1),
        ),
    )
    reply = StreamPacket(
        7, StreamPacketType.FULFILL, 1000, (StreamMaxMoneyFrame(1, 2**64 - 1, 5000),)
    )
    return prepare, reply


class _Ivs:
    """Distinct 12-byte IVs from a counter, one per call: about what the node's IV pool costs
    (a slice of one ``os.urandom`` read); node's side pays ``crypto.randomBytes(12)`` per
    packet, as ilp-protocol-stream does. A bench key protects nothing: no randomness here."""

    def __init__(self) -> None:
        self._next = 0

    def __call__(self) -> bytes:
        self._next += 1
        return self._next.to_bytes(12, "big")


def stream_operations() -> dict[str, Operation]:
    """STREAM packet codec and the encryption envelope: the node's side of ilp-protocol-stream's
    ``Packet._serialize`` / ``_deserializeUnencrypted`` and ``serializeAndEncrypt`` /
    ``decryptAndDeserialize``."""
    try:
        from ilp.stream.crypto import decrypt_packet, encrypt_packet
        from ilp.stream.packet import decode_stream_packet, encode_stream_packet
    except ImportError:  # pragma: no cover - cryptography missing
        return {}
    prepare, reply = stream_packets()
    prepare_bytes = encode_stream_packet(prepare)
    reply_bytes = encode_stream_packet(reply)
    iv = _Ivs()
    sealed = encrypt_packet(STREAM_SECRET, prepare, iv())
    return {
        "stream prepare encode": lambda: encode_stream_packet(prepare),
        "stream prepare decode": lambda: decode_stream_packet(prepare_bytes),
        "stream reply encode": lambda: encode_stream_packet(reply),
        "stream reply decode": lambda: decode_stream_packet(reply_bytes),
        "stream encrypt": lambda: encrypt_packet(STREAM_SECRET, prepare, iv()),
        "stream decrypt": lambda: decrypt_packet(STREAM_SECRET, sealed),
    }


def ops_per_second(
    operation: Operation,
    seconds: float,
    *,
    windows: int = WINDOWS,
    clock: Callable[[], float] = time.process_time,
) -> float:
    """Warm up, then time ``windows`` windows of ``seconds / windows`` of CPU time each
    (calls in batches of 1,000, the last batch whole) and give the best window's rate.

    CPU time of this process, not wall time, on both sides: the figures then hold up on
    a machine that is busy with other work (node's side uses ``process.cpuUsage()``). The
    best window, as ``timeit`` advises: what a busy machine adds (steal, a cold cache, a
    neighbour's burst) only ever slows a window down, and on the shared machines this runs
    on one window of either side moved by a third from run to run. Node's side takes its
    best window too (``bench_js.js``). ``clock`` is that CPU clock (tests pass a fake one).
    """
    warm_until = clock() + seconds * WARM_UP_SHARE
    while clock() < warm_until:
        for _ in range(100):
            operation()
    window = seconds / windows
    best = 0.0
    for _ in range(windows):
        count = 0
        start = clock()
        while True:
            for _ in range(1000):
                operation()
            count += 1000
            elapsed = clock() - start
            if elapsed >= window:
                break
        best = max(best, count / elapsed)
    return best


# --- node ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeRun:
    versions: dict[str, str]
    ops_per_second: dict[str, float]
    encoded: dict[str, str]


def _npm_packages_present() -> bool:
    return all(
        (NPM_DIR / "node_modules" / spec.rsplit("@", 1)[0] / "package.json").is_file()
        for spec in NPM_PACKAGES
    )


def install_npm_packages() -> str | None:
    """Install the reference packages into ``.bench/``; the reason if that failed."""
    if _npm_packages_present():
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "npm not found"
    NPM_DIR.mkdir(exist_ok=True)
    # .bench/ is not in the project's .gitignore: it ignores itself.
    (NPM_DIR / ".gitignore").write_text("*\n")
    print(f"installing {' '.join(NPM_PACKAGES)} into {NPM_DIR} ...", file=sys.stderr)
    result = subprocess.run(
        [
            npm,
            "install",
            "--no-save",
            "--no-audit",
            "--no-fund",
            "--prefix",
            str(NPM_DIR),
            *NPM_PACKAGES,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0 or not _npm_packages_present():
        last = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"npm install failed: {last[0]}"
    return None


def _packet_json(work: Workload) -> dict[str, Any]:
    p, f, r = work.prepare, work.fulfill, work.reject
    return {
        "prepare": {
            "amount": str(p.amount),
            "expiresAt": p.expires_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "executionCondition": p.execution_condition.hex(),
            "destination": p.destination,
            "data": p.data.hex(),
        },
        "fulfill": {"fulfillment": f.fulfillment.hex(), "data": f.data.hex()},
        "reject": {
            "code": r.code,
            "triggeredBy": r.triggered_by,
            "message": r.message,
            "data": r.data.hex(),
        },
    }


def run_node(work: Workload, seconds: float, *, with_btp: bool) -> NodeRun | str:
    """The node measurements, or the reason there are none."""
    node = shutil.which("node")
    if node is None:
        return "node not found"
    problem = install_npm_packages()
    if problem is not None:
        return problem
    request = {
        **_packet_json(work),
        "seconds": seconds,
        "windows": WINDOWS,
        "requestId": REQUEST_ID,
        "btp": with_btp,
        "stream": {"secret": STREAM_SECRET.hex(), "source": STREAM_SOURCE},
    }
    result = subprocess.run(
        [node, str(JS_SCRIPT)],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=600,
        env={"NODE_PATH": str(NPM_DIR / "node_modules"), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    if result.returncode != 0:
        last = result.stderr.strip().splitlines()[-1:] or ["no output"]
        return f"node failed: {last[0]}"
    output = json.loads(result.stdout)
    return NodeRun(output["versions"], output["opsPerSecond"], output["encoded"])


# --- report --------------------------------------------------------------------------


def _encodings_that_differ(ours: dict[str, Operation], node: NodeRun) -> list[str]:
    differ = []
    for name, js_hex in node.encoded.items():
        mine = ours[name]()
        if not isinstance(mine, bytes) or mine.hex() != js_hex:
            differ.append(name)
    return differ


def report(
    ours: dict[str, float], node: NodeRun | str, differ: Sequence[str], codec: str = ""
) -> list[str]:
    """The table. ``codec`` says which variant of the codec modules ran (compiled or not)."""
    lines = [f"ILP codec benchmark: CPython {platform.python_version()} on {platform.machine()}"]
    if codec:
        lines.append(f"codec: {codec}")
    if isinstance(node, NodeRun):
        packages = ", ".join(f"{k} {v}" for k, v in sorted(node.versions.items()))
        lines.append(f"reference: {packages}")
    lines.append("")
    lines.append(f"{'operation':<22}{'python ops/s':>14}{'node ops/s':>14}{'python/node':>13}")
    for name, mine in ours.items():
        if isinstance(node, NodeRun) and name in node.ops_per_second:
            theirs = node.ops_per_second[name]
            lines.append(f"{name:<22}{mine:>14,.0f}{theirs:>14,.0f}{mine / theirs:>13.2f}")
        else:
            lines.append(f"{name:<22}{mine:>14,.0f}{'-':>14}{'-':>13}")
    lines.append("")
    if isinstance(node, str):
        lines.append(f"ratio unavailable: {node}")
    elif differ:
        lines.append(f"WARNING: encodings differ from the reference for: {', '.join(differ)}")
    else:
        lines.append("encodings: byte-identical to the reference packages")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ilp.bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="time per operation")
    parser.add_argument("--no-node", action="store_true", help="measure Python only")
    args = parser.parse_args(argv)

    work = realistic_workload()
    operations = python_operations(work)
    ours = {name: ops_per_second(op, args.seconds) for name, op in operations.items()}
    with_btp = any(name.startswith("btp") for name in operations)
    node: NodeRun | str = (
        "--no-node given" if args.no_node else run_node(work, args.seconds, with_btp=with_btp)
    )
    differ = _encodings_that_differ(operations, node) if isinstance(node, NodeRun) else []
    print("\n".join(report(ours, node, differ, codec=_variant.describe())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
