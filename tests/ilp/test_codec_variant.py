"""The compiled codec build (``scripts/build_codec.py``) and what guards it.

The codec tests themselves run against whichever variant is loaded: CI runs them once
compiled (``make install`` builds it) and once with ``ILP_CODEC=python``. Which variant
ran is reported (the bench prints it), never asserted here: a machine without a C
compiler runs the pure-Python modules and must pass all the same.
"""

from __future__ import annotations

import importlib.machinery
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ilp import _variant
from ilp.address import SCHEMES, is_valid_address
from ilp.packet import _is_address

ROOT = Path(__file__).resolve().parents[2]

_SEGMENT = st.text(alphabet="az09_~-Z.\u00e9 ", min_size=0, max_size=6)
_ADDRESS_LIKE = st.builds(
    lambda scheme, rest: (scheme + rest).encode("utf-8"),
    st.sampled_from([*sorted(SCHEMES), "", "tes", "test4", "G", "gg"]),
    st.lists(_SEGMENT, max_size=5).map(".".join).map(lambda s: "." + s if s else s),
)


def _regex_says(raw: bytes) -> bool:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return False
    return is_valid_address(text)


@given(st.one_of(_ADDRESS_LIKE, st.binary(max_size=24)))
def test_the_decoders_address_check_is_the_address_grammar(raw: bytes) -> None:
    assert _is_address(raw) == _regex_says(raw)


@pytest.mark.parametrize("length", [1022, 1023, 1024])
def test_the_decoders_address_check_keeps_the_length_limit(length: int) -> None:
    raw = b"g." + b"a" * (length - 2)
    assert _is_address(raw) == _regex_says(raw) == (length <= 1023)


def _fake_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digest: str) -> None:
    (tmp_path / "packet.py").write_text("X = 1\n")
    (tmp_path / f"packet{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    (tmp_path / "_codec_build.json").write_text(f'{{"ilp.packet": "{digest}"}}')
    monkeypatch.setattr(_variant, "PACKAGE_DIR", tmp_path)
    monkeypatch.setattr(_variant, "MANIFEST", tmp_path / "_codec_build.json")
    monkeypatch.setattr(_variant, "COMPILED_MODULES", ("ilp.packet",))
    monkeypatch.delenv(_variant.FORCE_PYTHON_ENV, raising=False)


def test_a_build_matching_its_source_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_build(tmp_path, monkeypatch, "0")
    current = _variant.source_digest(tmp_path / "packet.py")
    (tmp_path / "_codec_build.json").write_text(f'{{"ilp.packet": "{current}"}}')
    assert _variant.stale_modules() == {}


def test_a_build_older_than_its_source_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_build(tmp_path, monkeypatch, "an older source")
    assert list(_variant.stale_modules()) == ["ilp.packet"]
    finder = _variant._SourceFirst(["ilp.packet"])
    spec = finder.find_spec("ilp.packet", None)
    assert spec is not None and spec.origin == str(tmp_path / "packet.py")
    assert finder.find_spec("ilp.btp", None) is None


def test_ilp_codec_python_refuses_every_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_build(tmp_path, monkeypatch, "0")
    current = _variant.source_digest(tmp_path / "packet.py")
    (tmp_path / "_codec_build.json").write_text(f'{{"ilp.packet": "{current}"}}')
    monkeypatch.setenv(_variant.FORCE_PYTHON_ENV, "python")
    assert _variant.stale_modules() == {"ilp.packet": "ILP_CODEC=python"}


def test_no_build_means_nothing_to_guard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_build(tmp_path, monkeypatch, "0")
    for so in tmp_path.glob("packet.*"):
        if so.suffix != ".py":
            so.unlink()
    assert _variant.stale_modules() == {}


def test_the_bench_reports_which_variant_ran() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ilp.bench", "--seconds", "0.01", "--no-node"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("codec: "))
    for module in _variant.COMPILED_MODULES:
        assert re.search(rf"{re.escape(module)} (compiled \(mypyc\)|Python \(.+?\))", line)
