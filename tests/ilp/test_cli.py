"""``python -m ilp decode``: real vectors of every kind, in a subprocess and in-process."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ilp.__main__ import KINDS, main
from tests.conftest import load_vectors

ROOT = Path(__file__).resolve().parents[2]
ILP = load_vectors("ilp-packet.json")
BTP = load_vectors("btp.json")
ILDCP = load_vectors("ildcp.json")
CCP = load_vectors("ccp.json")
ECHO = load_vectors("echo.json")
BALANCE = load_vectors("balance.json")
PSK2 = load_vectors("receiver/psk2.json")


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ilp", "decode", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def decoded(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    assert main(["decode", *args]) == 0
    return json.loads(capsys.readouterr().out)


def failure(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["decode", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


def contains(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    """Every key of the vector's object is printed with the vector's value."""
    assert {key: actual.get(key) for key in expected} == expected


# --- subprocess: the command as users run it -----------------------------------------


def test_subprocess_decodes_a_prepare() -> None:
    vector = ILP["vectors"][0]
    result = run(vector["hex"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == vector["object"]


def test_subprocess_reads_stdin_ignoring_whitespace() -> None:
    raw = ILP["vectors"][0]["hex"]
    spaced = " ".join(raw[i : i + 8] for i in range(0, len(raw), 8)) + "\n"
    result = run("-", stdin=spaced)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ILP["vectors"][0]["object"]


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        ("btp", BTP["vectors"][0]["hex"], BTP["vectors"][0]["object"]),
        ("ildcp", ILDCP["vectors"][1]["data_hex"], ILDCP["vectors"][1]["object"]),
        ("ccp", CCP["vectors"][0]["hex"], CCP["vectors"][0]["object"]),
        ("echo", ECHO["vectors"][2]["hex"], {"sourceAddress": "test.conn.alice", "type": 0}),
        ("balance", BALANCE["vectors"][3]["hex"], {"balance": "-1"}),
    ],
)
def test_subprocess_every_kind(kind: str, raw: str, expected: dict[str, Any]) -> None:
    result = run("--kind", kind, raw)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    contains(output, {k: v for k, v in expected.items() if k != "fulfill"})
    assert "type" in output


def test_subprocess_psk2_with_secret() -> None:
    (vector,) = (v for v in PSK2["vectors"] if v["name"] == "draft2_request_fulfilled")
    result = run(
        "--kind",
        "psk2",
        "--secret",
        vector["inputs"]["sharedSecret"],
        vector["expected"]["preparePacket"],
    )
    assert result.returncode == 0, result.stderr
    contains(json.loads(result.stdout), vector["expected"]["requestFields"])


@pytest.mark.parametrize(
    "args",
    [
        ["0c4d000000000000006b"],  # truncated Prepare
        ["0c4dzz"],  # bad hex
        ["0c4"],  # odd hex
        ["--kind", "psk2", ILP["vectors"][0]["hex"]],  # no secret
    ],
)
def test_subprocess_errors_are_one_line_and_exit_2(args: list[str]) -> None:
    result = run(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: at offset ")


# --- in-process: every vector --------------------------------------------------------


@pytest.mark.parametrize("vector", [pytest.param(v, id=v["name"]) for v in ILP["vectors"]])
def test_ilp_vectors(capsys: pytest.CaptureFixture[str], vector: dict[str, Any]) -> None:
    assert decoded(capsys, vector["hex"]) == vector["object"]


@pytest.mark.parametrize(
    "vector",
    [
        pytest.param(v, id=v["name"])
        for v in ILP["invalid"]
        # a valid Fulfill, invalid only where a Prepare is required: the CLI prints it
        if v["name"] != "fulfill_where_prepare_expected"
    ],
)
def test_ilp_invalid_vectors(capsys: pytest.CaptureFixture[str], vector: dict[str, Any]) -> None:
    err = failure(capsys, vector["hex"])
    assert err.startswith("error: at offset ")
    assert err.count("\n") == 1


def test_blank_stdin_is_an_empty_packet(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("  \n"))
    assert "error: at offset 0: empty packet" in failure(capsys, "-")


def test_error_offset_is_the_decoder_offset(capsys: pytest.CaptureFixture[str]) -> None:
    (vector,) = (v for v in ILP["invalid"] if v["name"] == "trailing_bytes_after_envelope")
    assert failure(capsys, vector["hex"]).startswith("error: at offset 79: ")


@pytest.mark.parametrize("vector", [pytest.param(v, id=v["name"]) for v in BTP["vectors"]])
def test_btp_vectors(capsys: pytest.CaptureFixture[str], vector: dict[str, Any]) -> None:
    output = decoded(capsys, "--kind", "btp", vector["hex"])
    contains(output, vector["object"])
    ilp_entries = [e for e in vector["object"]["protocolData"] if e["protocolName"] == "ilp"]
    if ilp_entries:
        assert output["ilp"]["type"] in {"prepare", "fulfill", "reject"}


@pytest.mark.parametrize("vector", [pytest.param(v, id=v["name"]) for v in BTP["invalid"]])
def test_btp_invalid_vectors(capsys: pytest.CaptureFixture[str], vector: dict[str, Any]) -> None:
    assert failure(capsys, "--kind", "btp", vector["hex"]).startswith("error: at offset ")


@pytest.mark.parametrize(
    "vector",
    [pytest.param(v, id=v["name"]) for v in ILDCP["vectors"] if "clientAddress" in v["object"]],
)
def test_ildcp_vectors_packet_and_bare(
    capsys: pytest.CaptureFixture[str], vector: dict[str, Any]
) -> None:
    expected = {k: v for k, v in vector["object"].items() if k != "fulfill"}
    from_packet = decoded(capsys, "--kind", "ildcp", vector["hex"])
    contains(from_packet, expected)
    assert from_packet["packet"] == vector["object"]["fulfill"]
    contains(decoded(capsys, "--kind", "ildcp", vector["data_hex"]), expected)


def test_ildcp_request(capsys: pytest.CaptureFixture[str]) -> None:
    vector = ILDCP["vectors"][0]
    output = decoded(capsys, "--kind", "ildcp", vector["hex"])
    assert output == {"type": "ildcp_request", "packet": vector["object"]["prepare"]}


@pytest.mark.parametrize(
    "vector",
    [pytest.param(v, id=v["name"]) for v in ILDCP["invalid"] if v["side"] == "response"],
)
def test_ildcp_invalid_responses(
    capsys: pytest.CaptureFixture[str], vector: dict[str, Any]
) -> None:
    assert failure(capsys, "--kind", "ildcp", vector["hex"]).startswith("error: at offset ")


@pytest.mark.parametrize("vector", [pytest.param(v, id=v["name"]) for v in CCP["vectors"]])
def test_ccp_vectors(capsys: pytest.CaptureFixture[str], vector: dict[str, Any]) -> None:
    output = decoded(capsys, "--kind", "ccp", vector["hex"])
    if vector["name"] == "response":
        assert output["type"] == "ccp_response"
        return
    contains(output, vector["object"])
    assert output["packet"] == vector["prepare"]
    contains(decoded(capsys, "--kind", "ccp", vector["data_hex"]), vector["object"])


@pytest.mark.parametrize(
    "vector", [pytest.param(v, id=v["name"]) for v in CCP["invalid"] if v["kind"] != "prepare"]
)
def test_ccp_invalid_vectors(capsys: pytest.CaptureFixture[str], vector: dict[str, Any]) -> None:
    assert failure(capsys, "--kind", "ccp", vector["hex"]).startswith("error: at offset ")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "echo_request_data",
            {"prefix": "ECHOECHOECHOECHO", "type": 0, "sourceAddress": "test.conn.alice"},
        ),
        ("echo_response_data", {"prefix": "ECHOECHOECHOECHO", "type": 1}),
        ("echo_request_prepare", {"type": 0, "sourceAddress": "test.conn.alice"}),
        ("echo_response_prepare", {"type": 1}),
    ],
)
def test_echo_vectors(
    capsys: pytest.CaptureFixture[str], name: str, expected: dict[str, Any]
) -> None:
    (vector,) = (v for v in ECHO["vectors"] if v["name"] == name)
    contains(decoded(capsys, "--kind", "echo", vector["hex"]), expected)


@pytest.mark.parametrize(
    "name",
    ["data_too_short", "bad_prefix", "type_0_without_address", "trailing_bytes_after_address"],
)
def test_echo_invalid_vectors_point_into_the_packet(
    capsys: pytest.CaptureFixture[str], name: str
) -> None:
    (vector,) = (v for v in ECHO["invalid"] if v["name"] == name)
    err = failure(capsys, "--kind", "echo", vector["hex"])
    offset = int(err.split("at offset ")[1].split(":")[0])
    data_start = len(vector["hex"]) // 2 - len(vector["data_hex"]) // 2
    assert data_start <= offset <= len(vector["hex"]) // 2


@pytest.mark.parametrize(
    "vector",
    [pytest.param(v, id=v["name"]) for v in BALANCE["vectors"] if "balance" in v["object"]],
)
def test_balance_vectors(capsys: pytest.CaptureFixture[str], vector: dict[str, Any]) -> None:
    expected = {"type": "balance", "balance": vector["object"]["balance"]}
    contains(decoded(capsys, "--kind", "balance", vector["hex"]), expected)
    contains(decoded(capsys, "--kind", "balance", vector["data_hex"]), expected)


PSK2_CASES = [
    ("draft1_single_chunk_fulfilled", "preparePacket", "requestPlaintextFields"),
    ("draft1_single_chunk_fulfilled", "fulfillPacket", "responsePlaintextFields"),
    ("draft1_single_chunk_fulfilled", "requestData", "requestPlaintextFields"),
    ("draft1_amount_too_low", "rejectPacket", "rejectDataFields"),
    ("draft2_request_fulfilled", "preparePacket", "requestFields"),
    ("draft2_request_fulfilled", "responsePacket", "responseFields"),
]


@pytest.mark.parametrize(("name", "raw_key", "fields_key"), PSK2_CASES)
def test_psk2_vectors(
    capsys: pytest.CaptureFixture[str], name: str, raw_key: str, fields_key: str
) -> None:
    (vector,) = (v for v in PSK2["vectors"] if v["name"] == name)
    secret = vector["inputs"]["sharedSecret"]
    output = decoded(capsys, "--kind", "psk2", "--secret", secret, vector["expected"][raw_key])
    contains(output, vector["expected"][fields_key])
    if raw_key in ("preparePacket", "requestData"):
        expected = vector["expected"]
        fulfillment = expected.get("fulfillment") or expected.get("fulfill", {}).get("fulfillment")
        assert output["fulfillment"] == fulfillment


def test_psk2_wrong_secret_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    (vector,) = (v for v in PSK2["vectors"] if v["name"] == "draft2_request_fulfilled")
    err = failure(
        capsys, "--kind", "psk2", "--secret", "00" * 32, vector["expected"]["preparePacket"]
    )
    assert "tag" in err


def test_bad_secret_hex(capsys: pytest.CaptureFixture[str]) -> None:
    assert failure(capsys, "--kind", "psk2", "--secret", "xyz", "00").startswith("error: --secret")
    assert failure(capsys, "--kind", "psk2", "--secret", "", "00").startswith("error: --secret")


def test_every_kind_of_the_contract_is_wired() -> None:
    assert {"ilp", "btp", "ildcp", "ccp", "echo", "psk2"} <= set(KINDS)
