"""Which codec modules run compiled, and the guard that keeps a stale build from running.

``make install`` compiles the hot codec modules (:data:`COMPILED_MODULES`) with mypyc, from
the same typed source, into extension modules next to the ``.py`` files
(``scripts/build_codec.py``); Python imports an extension module in preference to the
source. The build writes :data:`MANIFEST`, the SHA-256 of every source it compiled. When a
source no longer matches (edited, checked out, pulled since the build) its extension is
stale, and :func:`install_guard` makes the import take the ``.py`` instead, so the code
that runs is always the code in the tree. ``ILP_CODEC=python`` takes the ``.py`` for all of
them (CI runs the codec tests both ways). Without a build nothing here does anything.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

COMPILED_MODULES: tuple[str, ...] = ("ilp.oer", "ilp.packet", "ilp.btp", "ilp._stream_read")
PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "_codec_build.json"
FORCE_PYTHON_ENV = "ILP_CODEC"

# Why the .py runs for a module that has a built extension: set by install_guard().
_reasons: dict[str, str] = {}


def source_path(module: str) -> Path:
    return PACKAGE_DIR / f"{module.rpartition('.')[2]}.py"


def extension_paths(module: str) -> list[Path]:
    stem = module.rpartition(".")[2]
    return [
        PACKAGE_DIR / f"{stem}{suffix}"
        for suffix in importlib.machinery.EXTENSION_SUFFIXES
        if (PACKAGE_DIR / f"{stem}{suffix}").is_file()
    ]


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_manifest() -> dict[str, str]:
    try:
        data = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def stale_modules() -> dict[str, str]:
    """``{module: reason}`` for every built extension that must not be imported."""
    built = [m for m in COMPILED_MODULES if extension_paths(m)]
    if not built:
        return {}
    if os.environ.get(FORCE_PYTHON_ENV, "").lower() == "python":
        return {m: f"{FORCE_PYTHON_ENV}=python" for m in built}
    manifest = _read_manifest()
    stale = {}
    for module in built:
        try:
            digest = source_digest(source_path(module))
        except OSError:
            continue  # no source next to it: the extension is all there is
        if manifest.get(module) != digest:
            stale[module] = "source changed since the build (make install rebuilds it)"
    return stale


class _SourceFirst(importlib.abc.MetaPathFinder):
    """Imports the listed modules from their ``.py`` file, whatever else sits next to it."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = frozenset(modules)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def install_guard() -> None:
    """Route stale (or unwanted) compiled modules to their source. Idempotent; must run
    before any of :data:`COMPILED_MODULES` is imported (``ilp/__init__.py`` calls it)."""
    if any(isinstance(finder, _SourceFirst) for finder in sys.meta_path):
        return
    stale = stale_modules()
    if stale:
        _reasons.update(stale)
        sys.meta_path.insert(0, _SourceFirst(list(stale)))


def is_compiled(module: ModuleType) -> bool:
    return not str(getattr(module, "__file__", "")).endswith(".py")


def describe() -> str:
    """One line for reports: which variant each codec module runs as, and why."""
    parts = []
    for name in COMPILED_MODULES:
        module = importlib.import_module(name)
        if is_compiled(module):
            parts.append(f"{name} compiled (mypyc)")
        elif name in _reasons:
            parts.append(f"{name} Python ({_reasons[name]})")
        else:
            parts.append(f"{name} Python (no build)")
    return "; ".join(parts)


def python_method(func: Callable[..., None]) -> Callable[..., None]:
    """``func(self, ...)`` as a method a class can hold.

    A mypyc-compiled function does not bind to an instance the way a Python function
    does, so a compiled module that installs one as a method wraps it in this (plain
    Python) function first.
    """

    def method(self: object, *args: Any, **kwargs: Any) -> None:
        func(self, *args, **kwargs)

    method.__name__ = method.__qualname__ = "__init__"
    method.__doc__ = func.__doc__
    return method
