"""Compile the hot codec modules with mypyc, in place (``make install`` runs this).

The modules in ``ilp._variant.COMPILED_MODULES`` are compiled from their own typed source
into extension modules next to the ``.py`` files, which stay the fallback: without a C
compiler, the Python headers or mypy, or when a build fails its self-check, nothing is left
behind and the pure-Python modules run. The build writes ``ilp/_codec_build.json`` (the
SHA-256 of each source compiled); ``ilp._variant`` refuses an extension whose source has
changed since. Up to date, it does nothing. ``--force`` rebuilds, ``--remove`` deletes the
build.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ilp import _variant  # noqa: E402

BUILD_DIR = ROOT / "build" / "codec"
GROUP = "ilp._codec"  # the shared library: ilp/_codec__mypyc.*.so
# Checked type-strict, independent of the project's mypy config (whose Django plugin
# needs the whole site importable).
MYPY_CONFIG = "[mypy]\nstrict = True\n"


def built_files() -> list[Path]:
    files = [p for m in _variant.COMPILED_MODULES for p in _variant.extension_paths(m)]
    files += sorted(_variant.PACKAGE_DIR.glob("_codec__mypyc.*"))
    return files


def remove() -> None:
    for path in [*built_files(), _variant.MANIFEST]:
        path.unlink(missing_ok=True)


def up_to_date() -> bool:
    if not all(_variant.extension_paths(m) for m in _variant.COMPILED_MODULES):
        return False
    manifest = _variant._read_manifest()
    return all(
        manifest.get(m) == _variant.source_digest(_variant.source_path(m))
        for m in _variant.COMPILED_MODULES
    )


def build() -> None:
    from mypyc.build import mypycify
    from setuptools import setup

    sources = [str(_variant.source_path(m).relative_to(ROOT)) for m in _variant.COMPILED_MODULES]
    digests = {
        m: _variant.source_digest(_variant.source_path(m)) for m in _variant.COMPILED_MODULES
    }
    BUILD_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".ini", delete=False) as config:
        config.write(MYPY_CONFIG)
    extensions = mypycify(
        ["--config-file", config.name, *sources],
        group_name=GROUP,
        target_dir=str(BUILD_DIR / "c"),
        opt_level="3",
    )
    Path(config.name).unlink()
    setup(
        name="ilp-codec",
        ext_modules=extensions,
        script_args=[
            "-q",
            "build_ext",
            "--inplace",
            "--build-temp",
            str(BUILD_DIR / "temp"),
            "--build-lib",
            str(BUILD_DIR / "lib"),
        ],
    )
    _variant.MANIFEST.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")


def self_check() -> str | None:
    """Import the build in a fresh interpreter; the problem, if it does not load compiled."""
    probe = (
        "import importlib, ilp._variant as v\n"
        "mods = [importlib.import_module(m) for m in v.COMPILED_MODULES]\n"
        "bad = [m.__name__ for m in mods if not v.is_compiled(m)]\n"
        "assert not bad, f'not compiled: {bad}'\n"
        "from ilp.packet import decode_prepare, encode_prepare\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return (result.stderr.strip().splitlines() or ["no output"])[-1]
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument("--remove", action="store_true", help="delete the build")
    args = parser.parse_args()
    if args.remove:
        remove()
        return 0
    if not args.force and up_to_date():
        print("compiled codec: up to date")
        return 0
    remove()
    try:
        build()
    except (Exception, SystemExit) as exc:  # mypyc and setup() exit on a failed build
        remove()
        print(
            f"compiled codec not built ({type(exc).__name__}: {exc}); the pure-Python modules run"
        )
        return 0
    problem = self_check()
    if problem is not None:
        remove()
        print(f"compiled codec failed its self-check ({problem}); the pure-Python modules run")
        return 0
    print("compiled codec: built (" + ", ".join(_variant.COMPILED_MODULES) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
