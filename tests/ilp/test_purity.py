"""``ilp`` is the sans-IO core: no web framework, no clock, no randomness, no sockets."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ILP = ROOT / "ilp"
FRAMEWORKS = ("django", "channels", "celery", "rest_framework", "daphne", "kombu")

# Dotted-name suffixes that read a clock or draw random bytes.
FORBIDDEN_CALLS = (
    "time.time",
    "time.time_ns",
    "datetime.now",
    "datetime.utcnow",
    "datetime.today",
    "date.today",
    "os.urandom",
    "os.getrandom",
    "uuid.uuid1",
    "uuid.uuid4",
)
FORBIDDEN_MODULES = {"random", "secrets", "socket", "socketserver", "ssl", "http", "urllib"}
FORBIDDEN_NAMES = {
    ("time", "time"),
    ("time", "time_ns"),
    ("os", "urandom"),
    ("os", "getrandom"),
    ("uuid", "uuid1"),
    ("uuid", "uuid4"),
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Name):
        return node.id
    return "?"


def impurities(source: str) -> list[str]:
    """Every clock, randomness or socket use in ``source``, as ``line: what``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in FORBIDDEN_MODULES:
                    found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                found.append(f"{node.lineno}: from {node.module} import ...")
            for alias in node.names:
                if (node.module, alias.name) in FORBIDDEN_NAMES:
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if any(dotted == f or dotted.endswith("." + f) for f in FORBIDDEN_CALLS):
                found.append(f"{node.lineno}: {dotted}")
    return found


def ilp_modules() -> list[str]:
    return sorted(
        "ilp" if path.name == "__init__.py" else f"ilp.{path.stem}" for path in ILP.glob("*.py")
    )


def test_importing_every_ilp_module_pulls_in_no_framework() -> None:
    script = (
        "import importlib, json, sys\n"
        f"for name in {ilp_modules()!r}:\n"
        "    importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},  # no DJANGO_SETTINGS_MODULE
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


@pytest.mark.parametrize("path", sorted(ILP.glob("*.py")), ids=lambda p: p.name)
def test_no_clock_randomness_or_sockets(path: Path) -> None:
    assert impurities(path.read_text()) == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import time\nt = time.time()",
        "from datetime import datetime\nnow = datetime.now()",
        "import datetime\nnow = datetime.datetime.utcnow()",
        "import os\nkey = os.urandom(32)",
        "from os import urandom",
        "import random",
        "from random import randbytes",
        "import secrets",
        "import socket",
        "import uuid\nuuid.uuid4()",
    ],
)
def test_the_scan_finds_each_kind_of_impurity(snippet: str) -> None:
    assert impurities(snippet) != []


def test_the_scan_allows_what_the_core_needs() -> None:
    allowed = "import hashlib, hmac, uuid\nfrom datetime import UTC, datetime\nuuid.UUID(int=0)\n"
    assert impurities(allowed) == []


def test_every_module_is_seen() -> None:
    assert {"ilp.packet", "ilp.address", "ilp.oer", "ilp.errors", "ilp.__main__"} <= set(
        ilp_modules()
    )
