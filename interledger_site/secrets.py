"""Secrets generated once into a local, git-ignored file when the environment has none."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path


def load_or_create(path: Path) -> dict[str, str]:
    """Read the local secrets file, adding any missing secret; never hard-coded."""
    data: dict[str, str] = {}
    if path.exists():
        data = json.loads(path.read_text())
    changed = False
    if "SECRET_KEY" not in data:
        data["SECRET_KEY"] = "django-insecure-" + secrets.token_urlsafe(40)
        changed = True
    if "ILP_RECEIVER_SECRET" not in data:
        data["ILP_RECEIVER_SECRET"] = secrets.token_hex(32)
        changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    return data
