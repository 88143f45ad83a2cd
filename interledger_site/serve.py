"""Daphne on the node's event loop: ``python -m interledger_site.serve [Daphne's arguments]``.

The arguments are Daphne's own (``-b``, ``-p``, ``--proxy-headers``, the application path...).
Daphne makes its asyncio loop with ``asyncio.new_event_loop()`` when ``daphne.server`` is
imported and runs Twisted's ``AsyncioSelectorReactor`` on it: every socket read and write of
the node (BTP frames, HTTP) and every task of the packet path goes through that one loop
thread, the serial bottleneck of a busy node. This launcher makes that loop uvloop's (libuv:
its loop iteration, reader/writer callbacks, timers and transports are C) when uvloop is
installed, then runs Daphne's command line unchanged.

Only Daphne's loop is a uvloop loop: the policy is set for the import of ``daphne.server``
and put back, so loops other code makes later (asgiref's, tests') stay asyncio's.

``ILP_EVENT_LOOP`` chooses: ``auto`` (the default: uvloop when it can be imported, else
asyncio's loop, as plain ``daphne`` runs), ``uvloop`` (refuse to start without it) or
``asyncio`` (asyncio's own loop, exactly what ``daphne`` does).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType

EVENT_LOOP_ENV = "ILP_EVENT_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")


class LoopChoiceError(RuntimeError):
    """``ILP_EVENT_LOOP`` cannot be honoured."""


def loop_choice(environ: Mapping[str, str]) -> str:
    """The ``ILP_EVENT_LOOP`` setting, checked (``auto`` when unset or empty)."""
    choice = (environ.get(EVENT_LOOP_ENV) or "auto").strip().lower()
    if choice not in CHOICES:
        raise LoopChoiceError(f"{EVENT_LOOP_ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    return choice


def import_daphne_server(environ: Mapping[str, str]) -> str:
    """Import ``daphne.server`` (which makes Daphne's loop and installs Twisted's reactor on
    it) with the loop ``environ`` asks for; returns ``"uvloop"`` or ``"asyncio"``.

    Raises :class:`LoopChoiceError` when ``daphne.server`` was imported already with another
    loop (too late to choose) or uvloop is required and missing."""
    choice = loop_choice(environ)
    uvloop: ModuleType | None = None
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise LoopChoiceError(
                    f"{EVENT_LOOP_ENV}=uvloop but uvloop is not installed"
                ) from None
    if "daphne.server" in sys.modules:
        kind = _loop_kind(sys.modules["daphne.server"].twisted_loop)
        if kind != ("asyncio" if uvloop is None else "uvloop"):
            raise LoopChoiceError(f"daphne.server was imported already, on the {kind} loop")
        return kind
    if uvloop is None:
        import daphne.server  # Daphne's own: asyncio.new_event_loop()

        return "asyncio"
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        import daphne.server
    finally:
        asyncio.set_event_loop_policy(previous)
    kind = _loop_kind(daphne.server.twisted_loop)
    if kind != "uvloop":  # pragma: no cover - a Daphne that makes its loop differently
        raise LoopChoiceError(f"Daphne made a {kind} loop under uvloop's policy")
    return kind


def _loop_kind(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.partition(".")[0] == "uvloop" else "asyncio"


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    try:
        kind = import_daphne_server(os.environ if environ is None else environ)
    except LoopChoiceError as exc:
        raise SystemExit(f"interledger_site.serve: {exc}") from None
    from daphne.cli import CommandLineInterface

    print(f"interledger_site.serve: Daphne on the {kind} event loop", file=sys.stderr, flush=True)
    CommandLineInterface().run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
