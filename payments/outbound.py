"""Outgoing HTTP to URLs that users and peers give us: webhooks, HTTP-OER callbacks, SPSP
queries. The one place that decides which addresses such a request may reach.

Without ``settings.ILP_ALLOW_PRIVATE_URLS`` (off unless DEBUG; on in the test suite) a
request is refused when its host names a loopback, private, link-local (169.254.169.254,
the cloud metadata service), multicast, reserved, unspecified or otherwise non-global
address. The check runs **at connect time on the addresses the connection then uses**: the
host is resolved once, every address is checked (one bad address refuses the host), and the
socket connects to a checked address, so a DNS answer that changes between a check and the
connect (rebinding) cannot slip past it. The URL keeps its host name, so the ``Host``
header, TLS SNI and certificate check are the name's, not the IP's.

Every request also has a total time limit (:data:`TOTAL_TIMEOUT_S`, connect to last byte,
however slowly the other side drips) and reads at most :data:`MAX_RESPONSE_BYTES` of body.
No proxies from the environment, no redirects followed.

* :func:`url_problem` / :func:`check_url`: the same rules for a URL being saved (a webhook,
  a Callback-Url), with a reason for the 4xx.
* :func:`apost` / :func:`post`: one POST (async / sync), the status code back.
* :func:`async_client`: an ``httpx.AsyncClient`` with these rules, for callers that read a
  body (the SPSP query).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from django.conf import settings

MAX_RESPONSE_BYTES = 64 * 1024
TOTAL_TIMEOUT_S = 10.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UrlRefused(Exception):
    """A URL outgoing requests may not use; ``message`` says why (a 400 at the edge)."""

    code = "url_refused"
    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AddressRefused(httpcore.ConnectError):
    """Raised while connecting; httpx passes it on as ``httpx.ConnectError`` (same text)."""


class ResponseTooLarge(httpx.HTTPError):
    """The body went past the cap; reading stopped there."""


class TotalTimeout(httpx.TimeoutException):
    """The request as a whole took longer than its time limit."""


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` (as httpx raised it) is this module refusing an address: retrying
    the same URL will be refused again (until its DNS answer changes)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, AddressRefused):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def allow_private() -> bool:
    return bool(getattr(settings, "ILP_ALLOW_PRIVATE_URLS", False))


# --- addresses -------------------------------------------------------------------------------

_KINDS = (
    ("is_unspecified", "an unspecified"),
    ("is_loopback", "a loopback"),
    ("is_link_local", "a link-local"),
    ("is_multicast", "a multicast"),
    ("is_reserved", "a reserved"),
    ("is_private", "a private"),
)


def address_problem(ip: IPAddress) -> str | None:
    """Why outgoing requests may not reach ``ip``, or ``None`` for a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        # An IPv4 address inside IPv6 is judged as itself.
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None:
            problem = address_problem(embedded)
            return f"{ip} embeds {problem}" if problem else None
    for attribute, kind in _KINDS:
        if getattr(ip, attribute):
            return f"{ip} is {kind} address"
    if not ip.is_global:
        return f"{ip} is not a public address"
    return None


def _literal(host: str) -> IPAddress | None:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    return None


def _checked(host: str, infos: Iterable[tuple[Any, ...]], allow: bool) -> list[str]:
    """The distinct addresses of ``infos`` in resolver order, all allowed, or raise."""
    addresses: list[str] = []
    for info in infos:
        text = str(info[4][0]).split("%", 1)[0]
        if text not in addresses:
            addresses.append(text)
    if not addresses:
        raise AddressRefused(f"{host} resolves to no address")
    if not allow:
        for text in addresses:
            problem = address_problem(ipaddress.ip_address(text))
            if problem is not None:
                raise AddressRefused(f"refused {host}: {problem} (ILP_ALLOW_PRIVATE_URLS is off)")
    return addresses


def _getaddrinfo(host: str, port: int) -> list[tuple[Any, ...]]:
    """The resolver (one place, so tests can answer for names they invent)."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)


def _literal_info(host: str, port: int) -> list[tuple[Any, ...]] | None:
    """An IP literal as ``getaddrinfo`` would answer it (no lookup), else ``None``."""
    ip = _literal(host)
    if ip is None:
        return None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (str(ip), port))]


def resolve_checked(host: str, port: int, *, allow: bool | None = None) -> list[str]:
    """``host``'s addresses, every one allowed (``AddressRefused`` otherwise)."""
    allow = allow_private() if allow is None else allow
    infos = _literal_info(host, port)
    if infos is None:
        try:
            infos = _getaddrinfo(host, port)
        except (OSError, UnicodeError) as exc:
            raise AddressRefused(f"cannot resolve {host}: {exc}") from None
    return _checked(host, infos, allow)


async def aresolve_checked(host: str, port: int, *, allow: bool | None = None) -> list[str]:
    """:func:`resolve_checked` with the lookup on a worker thread."""
    allow = allow_private() if allow is None else allow
    infos = _literal_info(host, port)
    if infos is None:
        try:
            infos = await asyncio.get_running_loop().run_in_executor(None, _getaddrinfo, host, port)
        except (OSError, UnicodeError) as exc:
            raise AddressRefused(f"cannot resolve {host}: {exc}") from None
    return _checked(host, infos, allow)


# --- URLs being saved ----------------------------------------------------------------------


def _split(url: str) -> tuple[str, int]:
    """``(host, port)`` of an acceptable http(s) URL, or :class:`UrlRefused`."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("the URL must start with https:// or http://")
    if not parts.hostname:
        raise UrlRefused("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("the URL may not carry a user name or password")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def url_problem(url: str, *, allow: bool | None = None) -> str | None:
    """Why outgoing requests may not use ``url``, or ``None``. Resolves the host (blocking)."""
    try:
        check_url(url, allow=allow)
    except UrlRefused as exc:
        return exc.message
    return None


def check_url(url: str, *, allow: bool | None = None) -> None:
    """:class:`UrlRefused` unless ``url`` is http(s) and its host resolves to allowed
    addresses only (with ``ILP_ALLOW_PRIVATE_URLS`` on: only the form is checked)."""
    host, port = _split(url)
    allow = allow_private() if allow is None else allow
    if allow:
        return
    try:
        resolve_checked(host, port, allow=False)
    except AddressRefused as exc:
        raise UrlRefused(str(exc)) from None


async def acheck_url(url: str, *, allow: bool | None = None) -> None:
    """:func:`check_url` without blocking the event loop."""
    host, port = _split(url)
    allow = allow_private() if allow is None else allow
    if allow:
        return
    try:
        await aresolve_checked(host, port, allow=False)
    except AddressRefused as exc:
        raise UrlRefused(str(exc)) from None


# --- connecting -----------------------------------------------------------------------------


class _AsyncBackend(httpcore.AsyncNetworkBackend):
    """Connects only to the checked addresses of the host (see the module doc)."""

    def __init__(self, allow: bool | None) -> None:
        self._allow = allow
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await aresolve_checked(host, port, allow=self._allow)
        error: Exception = AddressRefused(f"cannot connect to {host}")
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                error = exc
            except httpcore.ConnectTimeout:
                raise
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("outgoing requests do not use unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _CappedStream(httpx.AsyncByteStream):
    """A response body that stops at ``max_bytes`` and at the request's deadline."""

    def __init__(self, inner: httpx.AsyncByteStream, max_bytes: int, deadline: float) -> None:
        self._inner = inner
        self._max = max_bytes
        self._deadline = deadline

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        iterator = self._inner.__aiter__()
        while True:
            remaining = self._deadline - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(max(remaining, 0)):
                    chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise TotalTimeout("the response took longer than its time limit") from None
            seen += len(chunk)
            if seen > self._max:
                raise ResponseTooLarge(f"the response is larger than {self._max} bytes")
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class GuardedTransport(httpx.AsyncBaseTransport):
    """httpx's transport with the address check, a total time limit per request and a
    body cap. ``allow``: ``None`` follows the setting at each connect; ``True`` skips the
    address check (a URL the operator configured); ``False`` always checks."""

    def __init__(
        self,
        *,
        allow: bool | None = None,
        total_timeout: float = TOTAL_TIMEOUT_S,
        max_bytes: int = MAX_RESPONSE_BYTES,
        limits: httpx.Limits | None = None,
    ) -> None:
        limits = limits or httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._transport = httpx.AsyncHTTPTransport(trust_env=False, limits=limits)
        # httpx takes no network backend: swap in a pool that has ours (same settings).
        old = self._transport._pool
        assert isinstance(old, httpcore.AsyncConnectionPool)
        self._transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=old._ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_AsyncBackend(allow),
        )
        self._total = total_timeout
        self._max_bytes = max_bytes

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        deadline = asyncio.get_running_loop().time() + self._total
        try:
            async with asyncio.timeout(self._total):
                response = await self._transport.handle_async_request(request)
        except TimeoutError:
            raise TotalTimeout(f"no answer within {self._total:g} s", request=request) from None
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _CappedStream(response.stream, self._max_bytes, deadline)
        return response

    async def aclose(self) -> None:
        await self._transport.aclose()


def async_client(
    *, allow: bool | None = None, total_timeout: float = TOTAL_TIMEOUT_S, **kwargs: Any
) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` for user-given URLs (close it, or use ``async with``)."""
    kwargs.setdefault("timeout", total_timeout)
    return httpx.AsyncClient(
        transport=GuardedTransport(allow=allow, total_timeout=total_timeout),
        trust_env=False,
        follow_redirects=False,
        **kwargs,
    )


# One pooled client per event loop and trust level (callbacks go to few peers, often).
_pooled: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[bool | None, httpx.AsyncClient]]
_pooled = weakref.WeakKeyDictionary()


def _pooled_client(allow: bool | None) -> httpx.AsyncClient:
    clients = _pooled.setdefault(asyncio.get_running_loop(), {})
    client = clients.get(allow)
    if client is None:
        client = clients[allow] = async_client(allow=allow)
    return client


# --- one POST ------------------------------------------------------------------------------------


async def apost(
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    allow: bool | None = None,
    total_timeout: float = TOTAL_TIMEOUT_S,
    client: httpx.AsyncClient | None = None,
) -> int:
    """POST ``content`` to ``url`` under the rules above; the status code.

    The body of the answer is read up to the cap and dropped (a larger one is not an
    error: the status is the answer). Failures raise ``httpx.HTTPError`` subclasses:
    ``ConnectError`` (refused address, with the reason), :class:`TotalTimeout`...
    """
    http = client or _pooled_client(allow)
    try:
        async with asyncio.timeout(total_timeout):
            async with http.stream("POST", url, content=content, headers=headers) as response:
                with contextlib.suppress(ResponseTooLarge):
                    async for _ in response.aiter_raw():
                        pass
                return response.status_code
    except TimeoutError:
        raise TotalTimeout(f"no answer within {total_timeout:g} s") from None


def post(
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    allow: bool | None = None,
    total_timeout: float = TOTAL_TIMEOUT_S,
) -> int:
    """:func:`apost` for synchronous code (a Celery task, a worker thread).

    Runs on an event loop of its own, so the time limit holds for the whole request
    (a blocking client can only bound each read). From a thread that already runs a
    loop, it runs on a short-lived thread instead.
    """

    async def once() -> int:
        async with async_client(allow=allow, total_timeout=total_timeout) as client:
            return await apost(
                url,
                content=content,
                headers=headers,
                allow=allow,
                total_timeout=total_timeout,
                client=client,
            )

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(once())
    result: list[int] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(once()))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, name="outbound-post", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
