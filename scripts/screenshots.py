"""Save PNG screenshots of the main pages to ``docs/screenshots/``.

Runs the live-dashboard browser test (a daphne node in a subprocess, Debian's Chromium)
with ``DASHBOARD_SCREENSHOTS`` set; the pictures show the data that test makes. The API
docs page is included when ``drf-spectacular-sidecar`` is installed (Swagger UI's files,
which otherwise come from a CDN).

    .venv/bin/python scripts/screenshots.py [OUTPUT_DIR]
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots"
    env = {**os.environ, "DASHBOARD_SCREENSHOTS": str(out.resolve())}
    test = "tests/browser/test_dashboard_live.py"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", test], cwd=ROOT, env=env)
    if done.returncode == 0:
        print(f"screenshots in {out}:", ", ".join(sorted(p.name for p in out.glob("*.png"))))
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
