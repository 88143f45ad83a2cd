"""Models of receivers."""

from __future__ import annotations
