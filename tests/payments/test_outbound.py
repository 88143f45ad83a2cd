"""payments.outbound: outgoing HTTP to user-given URLs reaches public addresses only (after
DNS, at connect time), reads a capped body, and ends within its time limit."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from payments import outbound
from tests.payments.conftest import Hook


@pytest.fixture
def strict(settings: SettingsWrapper) -> SettingsWrapper:
    """Private addresses refused, as in production (the suite allows them otherwise)."""
    settings.ILP_ALLOW_PRIVATE_URLS = False
    return settings


class FakeDns:
    """Answers for invented names; each name has a list of answers, one per lookup (the
    last repeats), so a test can change the answer between two lookups (a rebind)."""

    def __init__(self) -> None:
        self.answers: dict[str, list[list[str]]] = {}
        self.lookups: list[str] = []

    def __call__(self, host: str, port: int) -> list[tuple[Any, ...]]:
        if host not in self.answers:
            return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        self.lookups.append(host)
        queue = self.answers[host]
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        infos = []
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            infos.append((family, socket.SOCK_STREAM, 6, "", (address, port)))
        return infos


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    fake = FakeDns()
    monkeypatch.setattr(outbound, "_getaddrinfo", fake)
    return fake


# --- which addresses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "not a public"),
        ("240.0.0.1", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "embeds 127.0.0.1 is a loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("2002:a00:1::", "embeds 10.0.0.1 is a private"),
    ],
)
def test_non_public_addresses_are_named(address: str, kind: str) -> None:
    problem = outbound.address_problem(ipaddress.ip_address(address))
    assert problem is not None and kind in problem


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert outbound.address_problem(ipaddress.ip_address(address)) is None


# --- URLs being saved ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8000/hook", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://10.0.0.7/hook", "private"),
        ("http://[::1]/hook", "loopback"),
        ("http://0/hook", "unspecified"),
        ("ftp://example.org/hook", "https:// or http://"),
        ("https:///hook", "no host"),
        ("https://user:pw@hooks.example/x", "user name or password"),
        ("http://localhost:9/hook", "loopback"),
    ],
)
def test_check_url_refuses_with_a_reason(strict: SettingsWrapper, url: str, reason: str) -> None:
    with pytest.raises(outbound.UrlRefused) as info:
        outbound.check_url(url)
    assert reason in info.value.message
    assert outbound.url_problem(url) == info.value.message


def test_check_url_resolves_names(strict: SettingsWrapper, dns: FakeDns) -> None:
    dns.answers["public.example"] = [["93.184.215.14"]]
    dns.answers["inside.example"] = [["10.9.8.7"]]
    dns.answers["mixed.example"] = [["93.184.215.14", "127.0.0.1"]]
    outbound.check_url("https://public.example/hook")
    assert "10.9.8.7 is a private" in (outbound.url_problem("https://inside.example/") or "")
    # One bad address refuses the name: the connection could use any of them.
    assert "loopback" in (outbound.url_problem("https://mixed.example/") or "")


def test_an_unresolvable_name_is_refused(strict: SettingsWrapper) -> None:
    problem = outbound.url_problem("https://no-such-host.invalid/hook")
    assert problem is not None and "cannot resolve no-such-host.invalid" in problem


def test_the_setting_allows_private_addresses(settings: SettingsWrapper) -> None:
    settings.ILP_ALLOW_PRIVATE_URLS = True
    outbound.check_url("http://127.0.0.1:8000/hook")
    # ... but the form still counts.
    assert outbound.url_problem("gopher://127.0.0.1/") is not None


async def test_acheck_url_is_the_same_rule(strict: SettingsWrapper, dns: FakeDns) -> None:
    dns.answers["inside.example"] = [["192.168.0.3"]]
    with pytest.raises(outbound.UrlRefused, match=re.escape("192.168.0.3 is a private")):
        await outbound.acheck_url("https://inside.example/cb")
    with pytest.raises(outbound.UrlRefused, match="link-local"):
        await outbound.acheck_url("http://169.254.169.254/")


# --- sending ------------------------------------------------------------------------------------


def test_post_to_a_loopback_url_is_refused_and_sends_nothing(
    strict: SettingsWrapper, hook: Hook
) -> None:
    with pytest.raises(httpx.ConnectError, match=re.escape("127.0.0.1 is a loopback address")):
        outbound.post(hook.url, content=b"{}", headers={})
    assert hook.requests == []


def test_post_with_private_addresses_allowed(settings: SettingsWrapper, hook: Hook) -> None:
    settings.ILP_ALLOW_PRIVATE_URLS = True
    hook.statuses = [204]
    assert outbound.post(hook.url, content=b"{}", headers={"X-Test": "1"}) == 204
    assert hook.requests[0][0]["X-Test"] == "1"


def test_a_dns_rebind_after_the_check_is_caught_at_connect(
    strict: SettingsWrapper, dns: FakeDns, hook: Hook
) -> None:
    port = hook.url.split(":")[2].split("/")[0]
    url = f"http://rebind.example:{port}/hook"
    # Public when the URL is saved, loopback when the request connects.
    dns.answers["rebind.example"] = [["93.184.215.14"], ["127.0.0.1"]]
    outbound.check_url(url)
    with pytest.raises(httpx.ConnectError, match=re.escape("127.0.0.1 is a loopback")):
        outbound.post(url, content=b"{}", headers={})
    assert dns.lookups == ["rebind.example", "rebind.example"]
    assert hook.requests == []


def test_the_connection_goes_to_the_checked_address_with_the_name_as_host(
    settings: SettingsWrapper, dns: FakeDns, hook: Hook
) -> None:
    settings.ILP_ALLOW_PRIVATE_URLS = True
    port = hook.url.split(":")[2].split("/")[0]
    dns.answers["hooks.example"] = [["127.0.0.1"]]
    assert outbound.post(f"http://hooks.example:{port}/hook", content=b"x", headers={}) == 200
    assert hook.requests[0][0]["Host"] == f"hooks.example:{port}"
    assert dns.lookups == ["hooks.example"]  # resolved once, by the guard


def test_an_operator_url_may_be_private_when_trusted(strict: SettingsWrapper, hook: Hook) -> None:
    assert outbound.post(hook.url, content=b"x", headers={}, allow=True) == 200


# --- caps ---------------------------------------------------------------------------------------


class RawServer:
    """A loopback server that answers every connection with ``respond(writer)``."""

    def __init__(self) -> None:
        self.port = 0
        self.connections = 0
        self.closed = asyncio.Event()

    async def respond(self, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    state = RawServer()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        await reader.readuntil(b"\r\n\r\n")
        try:
            await state.respond(writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            state.closed.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    yield state
    server.close()


async def test_a_large_body_is_cut_at_the_cap(
    settings: SettingsWrapper, raw_server: RawServer
) -> None:
    settings.ILP_ALLOW_PRIVATE_URLS = True
    size = 4 * outbound.MAX_RESPONSE_BYTES

    async def respond(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // 4096):
            writer.write(b"x" * 4096)
            await writer.drain()

    raw_server.respond = respond  # type: ignore[method-assign]
    url = f"http://127.0.0.1:{raw_server.port}/spsp"
    async with outbound.async_client() as client:
        with pytest.raises(outbound.ResponseTooLarge, match=str(outbound.MAX_RESPONSE_BYTES)):
            await client.get(url)
    # A POST only wants the status: a large answer is not an error, and is not read.
    async with outbound.async_client() as client:
        assert await outbound.apost(url, content=b"x", headers={}, client=client) == 200


async def test_a_server_that_drips_forever_is_cut_at_the_total_time(
    settings: SettingsWrapper, raw_server: RawServer
) -> None:
    settings.ILP_ALLOW_PRIVATE_URLS = True
    dripped = asyncio.Event()

    async def respond(writer: asyncio.StreamWriter) -> None:
        # Headers, then a byte at a time: every read succeeds, the body never ends.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
        while True:
            writer.write(b"x")
            await writer.drain()
            dripped.set()
            await asyncio.sleep(0.05)

    raw_server.respond = respond  # type: ignore[method-assign]
    url = f"http://127.0.0.1:{raw_server.port}/slow"
    async with outbound.async_client(total_timeout=0.5) as client:
        with pytest.raises(outbound.TotalTimeout):
            await client.get(url)
    assert dripped.is_set()
    with pytest.raises(httpx.TimeoutException):
        await outbound.apost(url, content=b"x", headers={}, total_timeout=0.5)


def test_the_sync_post_has_the_same_time_limit(settings: SettingsWrapper) -> None:
    settings.ILP_ALLOW_PRIVATE_URLS = True
    # A server that accepts and never answers.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    try:
        with pytest.raises(httpx.TimeoutException):
            outbound.post(f"http://127.0.0.1:{port}/", content=b"x", headers={}, total_timeout=0.3)
    finally:
        listener.close()


async def test_the_sync_post_works_from_a_thread_running_a_loop(
    settings: SettingsWrapper, hook: Hook
) -> None:
    settings.ILP_ALLOW_PRIVATE_URLS = True
    # Called (wrongly, but it must not fail) from inside a running event loop.
    assert outbound.post(hook.url, content=b"x", headers={}) == 200


# --- the webhook sender --------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_webhook_to_a_loopback_address_is_never_sent(
    settings: SettingsWrapper, book: Any, hook: Hook, captured_apply: list[list[int]]
) -> None:
    from payments import services
    from payments.models import WebhookDelivery
    from tests.payments.test_webhooks import paid_delivery

    delivery_id = paid_delivery(book, hook, captured_apply)  # saved while allowed
    settings.ILP_ALLOW_PRIVATE_URLS = False
    result = services.webhook_deliver(delivery_id=delivery_id, attempt=0)
    assert result.status == "retry"
    assert "127.0.0.1 is a loopback address" in result.error
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    assert "loopback" in delivery.last_error and delivery.response_status is None
    assert hook.requests == []
