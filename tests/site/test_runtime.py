"""interledger_site.runtime: the composition root and who starts it."""

from __future__ import annotations

import asyncio
import gc
import importlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from interledger_site import runtime as runtime_module
from interledger_site.runtime import NodeRuntime, RuntimeApplication, attach_to_reactor


@pytest.fixture
def restore_process_runtime() -> Iterator[None]:
    before = runtime_module.peek()
    thresholds = gc.get_threshold()
    yield
    runtime_module.install(before)
    # A started serving runtime tunes the process's collector (tune_gc_for_serving).
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def quiet_runtime() -> NodeRuntime:
    return NodeRuntime(name="quiet", shared=False)


def test_importing_the_application_starts_nothing(restore_process_runtime: None) -> None:
    before = runtime_module.peek()
    for name in ("interledger_site.routing", "interledger_site.asgi"):
        importlib.reload(importlib.import_module(name))
    assert runtime_module.peek() is before  # no runtime installed by an import
    assert not runtime_module.current().supervisor.running
    assert not runtime_module.current().recovery.running


def test_accessors_delegate_to_the_current_runtime(node_runtime: NodeRuntime) -> None:
    from links import registry
    from links.supervisor import get_supervisor
    from links.switch import get_switch, peek_switch
    from payments.ledger import get_book, peek_book
    from payments.recovery import get_recovery

    assert runtime_module.current() is node_runtime
    assert peek_switch() is None  # built on first use, by the runtime
    assert get_switch() is node_runtime.switch
    assert peek_book() is get_book() is node_runtime.book
    assert registry.current() is node_runtime.registry
    assert get_supervisor() is node_runtime.supervisor
    assert get_recovery() is node_runtime.recovery
    other = quiet_runtime()
    with other.activated():
        assert registry.current() is other.registry
        assert get_book() is other.book and other.book is not node_runtime.book
    assert registry.current() is node_runtime.registry
    other.close()


async def test_lifespan_starts_and_stops_the_runtime(restore_process_runtime: None) -> None:
    calls: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope["type"])

    app = RuntimeApplication(inner, quiet_runtime)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await inbox.put({"type": "lifespan.startup"})
    await inbox.put({"type": "lifespan.shutdown"})
    await app({"type": "lifespan"}, inbox.get, send)
    assert [m["type"] for m in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]
    assert app.runtime is not None and app.runtime.stopped
    assert runtime_module.peek() is app.runtime  # it was the process's
    assert gc.get_freeze_count() > 0  # started: the collector tuned for serving
    await app({"type": "http"}, inbox.get, send)
    assert calls == ["http"]


async def test_under_daphne_the_reactor_starts_and_stops_it(
    restore_process_runtime: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Daphne's reactor (asyncio-based, installed before the application is imported):
    started when it runs, stopped by a "before shutdown" trigger Twisted waits for."""
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor
    from twisted.internet.defer import Deferred

    reactor = AsyncioSelectorReactor(asyncio.get_running_loop())
    monkeypatch.setitem(sys.modules, "twisted.internet.reactor", reactor)
    app = RuntimeApplication(lambda *a: asyncio.sleep(0), quiet_runtime)
    assert attach_to_reactor(app)
    assert app.runtime is None  # nothing until the reactor runs

    reactor.fireSystemEvent("startup")  # what reactor.run() does first
    assert app.runtime is not None and runtime_module.peek() is app.runtime
    runtime = app.runtime
    while not runtime.started:
        await asyncio.sleep(0)

    finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    triggers = reactor._eventTriggers["shutdown"].before  # what reactor.stop() fires first
    results = [fn(*args, **kw) for fn, args, kw in triggers]
    pending = [r for r in results if isinstance(r, Deferred)]
    assert pending  # Twisted waits for it before the loop ends
    for deferred in pending:
        deferred.addBoth(lambda _: finished.done() or finished.set_result(None))
    await asyncio.wait_for(finished, 30)
    assert runtime.stopped and not runtime.started


def test_without_a_reactor_nothing_is_attached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "twisted.internet.reactor", raising=False)
    assert not attach_to_reactor(RuntimeApplication(lambda *a: asyncio.sleep(0), quiet_runtime))


def test_serving_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(runtime_module.LINKS_FLAG, raising=False)
    monkeypatch.delenv(runtime_module.RECOVERY_FLAG, raising=False)
    serving = runtime_module.serving_runtime()
    assert serving.links_enabled and serving.recovery_enabled and serving.owner_enabled
    monkeypatch.setenv(runtime_module.LINKS_FLAG, "0")
    monkeypatch.setenv(runtime_module.RECOVERY_FLAG, "off")
    quiet = runtime_module.serving_runtime()
    assert not quiet.links_enabled and not quiet.recovery_enabled
    assert quiet.owner_enabled  # BTP children connecting here can still be reached
    worker = runtime_module.worker_runtime()
    assert not (worker.links_enabled or worker.recovery_enabled or worker.owner_enabled)
    for rt in (serving, quiet, worker):
        rt.close()


def test_a_serving_process_freezes_its_start_up_objects_and_takes_the_set_thresholds(
    restore_process_runtime: None, settings: Any
) -> None:
    gc.unfreeze()
    settings.ILP_GC_THRESHOLDS = [5000, 20, 30]
    survivor = [object()]  # made before: frozen, never walked again
    assert any(o is survivor for o in gc.get_objects())
    runtime_module.tune_gc_for_serving()
    assert gc.get_threshold() == (5000, 20, 30)
    assert gc.get_freeze_count() > 0
    assert not any(o is survivor for o in gc.get_objects())

    # Cycles made after the start are still collected.
    class Node:
        other: Any = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2


def test_an_empty_threshold_setting_keeps_pythons(
    restore_process_runtime: None, settings: Any
) -> None:
    settings.ILP_GC_THRESHOLDS = []
    before = gc.get_threshold()
    runtime_module.tune_gc_for_serving()
    assert gc.get_threshold() == before
