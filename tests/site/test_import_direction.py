"""Imports flow one way: ``ilp`` <- ``payments`` <- ``receivers`` <- ``links`` <- ``dashboard``.

A module of one layer imports only its own layer and the layers to its left; every import
counts (module level, inside a function, under ``TYPE_CHECKING``). ``interledger_site`` is
the wiring on top and may import anything; the layers may use its shared edge (the API
base views, Celery's app, metrics) but never the composition root or the site's entry
points: they reach the runtime through ``payments.node``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("ilp", "payments", "receivers", "links", "dashboard")
SITE = "interledger_site"
SITE_ENTRY_POINTS = frozenset(
    f"{SITE}.{name}" for name in ("runtime", "asgi", "routing", "urls", "settings")
)

# Imports that break the direction and are still there, with why. Each goes when its
# module does; an entry whose file remains but no longer matches fails the test, so the
# list only shrinks.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """Every module ``source`` imports (absolute names; relative imports resolved against
    ``module``), wherever the import statement is."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append(name)
            # ``from payments import ledger`` imports ``payments.ledger``.
            found.extend(
                f"{name}.{alias.name}" if name else alias.name
                for alias in node.names
                if alias.name != "*"
            )
    return found


def violations(path: Path) -> list[tuple[str, str]]:
    """``(file, imported module)`` for each import of ``path`` against the direction."""
    rel = str(path.relative_to(ROOT))
    module = _module_name(path)
    layer = LAYERS.index(module.split(".")[0])
    bad = set()
    for name in imported_modules(path.read_text(), module, is_package=path.name == "__init__.py"):
        top = name.split(".")[0]
        if top in LAYERS and LAYERS.index(top) > layer:
            bad.add((rel, ".".join(name.split(".")[:2])))
        elif top == SITE and any(
            name == entry or name.startswith(entry + ".") for entry in SITE_ENTRY_POINTS
        ):
            bad.add((rel, name))
    # ``from links import peers`` yields both ``links`` and ``links.peers``: keep the
    # most precise name of each import.
    return sorted(
        (f, m) for f, m in bad if not any(o != m and o.startswith(m + ".") for _f, o in bad)
    )


def layer_files() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py"))


def test_imports_flow_one_way() -> None:
    found = {v for path in layer_files() for v in violations(path)}
    unexpected = sorted(found - KNOWN_EXCEPTIONS.keys())
    assert unexpected == [], "imports against ilp <- payments <- receivers <- links <- dashboard"
    # A file that is gone takes its exceptions with it; one still there must still need them.
    stale = sorted(k for k in KNOWN_EXCEPTIONS.keys() - found if (ROOT / k[0]).exists())
    assert stale == [], "known exceptions that no longer occur: remove them from the list"


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("payments.services", "from receivers.models import Receiver"),
        ("payments.services", "def f():\n    import links.switch"),
        ("receivers.apis", "if TYPE_CHECKING:\n    import dashboard"),
        ("links.apis", "from dashboard.selectors import peer_status"),
        ("ilp.packet", "from payments import ledger"),
        ("links.switch", "from interledger_site.runtime import current"),
    ],
)
def test_the_scan_finds_each_kind_of_violation(
    module: str, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source)
    assert violations(path) != []


def test_the_scan_allows_the_direction_and_the_shared_edge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = (
        "from ilp.oer import UINT64_MAX\nfrom payments.ledger import get_book\n"
        "from receivers.models import Receiver\nfrom links import registry\n"
        "from interledger_site.api import ApiGenericView\nfrom . import selectors\n"
    )
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source)
    assert violations(ROOT / "links" / "apis.py") == []


def test_every_layer_is_scanned() -> None:
    seen = {_module_name(p).split(".")[0] for p in layer_files()}
    assert seen == set(LAYERS)
