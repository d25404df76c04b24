"""SSRF guard for URLs this server fetches because someone else named them.

The server downloads videos from the ``media_url`` the gateway returns and, in live mode, fetches images from URLs
a model passed in. Either URL could point at this machine or its network (``http://127.0.0.1:…``, a router on
``192.168.…``, the cloud metadata service on ``169.254.169.254``), and the server would fetch it with its own network
position. This module stops that at two levels:

``check_url``
    Syntax only, no I/O, cheap enough for tool input validation: http/https, a host, no ``user:pass@``, a port in
    1-65535. Unless ``allow_private``, a host that is already an IP literal (legacy forms such as ``2130706433``
    included) or a name that can only be local (``localhost``, ``*.local``, ``*.internal``, ``*.home.arpa``) is
    refused too.

``GuardedTransport``
    An ``httpx2.AsyncBaseTransport`` around the real one. httpx2 follows redirects by sending every hop through the
    client's transport, so the guard sees each hop: it runs ``check_url``'s checks, resolves the host and refuses
    unless *every* address is public (one private answer is enough to refuse: the resolver order decides nothing).

    DNS rebinding (a name that answers with a public address for the check and a private one for the connect) is
    stopped by pinning: the request handed to the inner transport has its URL rewritten to the checked IP, so the
    inner transport never resolves the name itself. The ``Host`` header keeps the name (virtual hosting works) and,
    for https, the ``sni_hostname`` request extension makes httpcore2 send the name as SNI and verify the
    certificate against the name, not the IP. If connecting to the first checked address fails (``ConnectError``),
    the next checked address is tried, a poor man's happy eyeballs.

    Pinning makes httpcore2's pool key connections by IP, so a TLS connection verified for ``a.example`` could be
    reused for ``b.example`` when both resolve to the same CDN address. The inner transport this module builds
    therefore keeps no idle connections (``max_keepalive_connections=0``); media downloads are one long response
    each, so nothing measurable is lost. A caller-supplied inner transport is the caller's business.

Errors: refusals raise ``BlockedURLError`` from inside ``handle_async_request``. httpx2 lets it through unchanged
(``request_context`` only annotates ``httpx2.RequestError``, and nothing else on the send or redirect path catches
it), so ``client.get`` and ``client.stream`` raise ``BlockedURLError`` itself. It is neither an
``httpx2.TransportError`` nor a ``GatewayError``, so ``PixazoClient`` neither retries it nor wraps it into
``DownloadError``: ``PixazoClient.download`` raises it as is, after removing its temporary file. A name that does
not resolve is a network problem, not a refusal: it becomes ``httpx2.ConnectError`` (``ConnectTimeout`` when the
lookup outlasts the connect timeout), which callers already retry.

``allow_private=True`` (tests; the server maps ``KLING_MCP_ALLOW_PRIVATE_URLS=1`` to it) keeps the syntax checks
but skips resolution and address checks, and forwards requests unchanged. ``exempt_origins`` does the same for
requests to exactly those origins (scheme, host, port) and no others: in sandbox mode the server downloads from its
own sandbox gateway on loopback, while every URL a user names is still checked.

Messages name the host, never the whole URL: signed CDN URLs carry credentials in their query strings.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Collection, Sequence
from types import TracebackType
from typing import Self
from urllib.parse import unquote

import anyio
import httpx2

from kling_mcp.errors import BlockedURLError

__all__ = [
    "ALLOW_PRIVATE_ENV",
    "GuardedTransport",
    "Resolver",
    "blocked_reason",
    "check_url",
    "guarded_client",
    "origin_of",
    "system_resolver",
]

ALLOW_PRIVATE_ENV = "KLING_MCP_ALLOW_PRIVATE_URLS"
HINT = f"Pass a public https URL; in sandbox mode or tests set {ALLOW_PRIVATE_ENV}=1."

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(ascii_host, port) -> addresses``. Raise ``OSError`` (e.g. ``socket.gaierror``) when the name does not resolve."""

_SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}

Origin = tuple[str, str, int]


def origin_of(url: str | httpx2.URL) -> Origin:
    """``(scheme, host, port)`` of a URL, the port filled in: what ``exempt_origins`` compares."""
    parsed = httpx2.URL(url) if isinstance(url, str) else url
    return parsed.scheme, parsed.host.lower(), parsed.port or _DEFAULT_PORTS.get(parsed.scheme, 0)


# Names that never resolve to a public host (RFC 6761, RFC 6762, ICANN's private-use TLD, RFC 8375); refusing them
# up front gives a clear message instead of whatever the local resolver makes of them.
_LOCAL_NAMES = ("localhost", "local", "internal", "home.arpa")

# Digits, hex digits, "x" and dots: the only strings inet_aton may read as a number. Filtering first matters because
# glibc's inet_aton ignores anything after a space ("1.2.3.4 junk" parses).
_NUMERIC_HOST = re.compile(r"[0-9a-fA-FxX.]+")

# Explicit ranges with the reason shown to the user. Order matters: the metadata address before link-local.
# ipaddress's is_global alone is not enough on 3.11: it calls fec0::/10, 64:ff9b::/96 (NAT64) and 2002::/16 (6to4)
# global, and the latter two can embed any IPv4 address.
_BLOCKS: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("169.254.169.254/32", "the cloud metadata address"),
        ("fd00:ec2::254/128", "the cloud metadata address"),
        ("0.0.0.0/8", "an unspecified address"),
        ("127.0.0.0/8", "a loopback address"),
        ("10.0.0.0/8", "a private address"),
        ("172.16.0.0/12", "a private address"),
        ("192.168.0.0/16", "a private address"),
        ("100.64.0.0/10", "a carrier-grade NAT (shared) address"),
        ("169.254.0.0/16", "a link-local address"),
        ("192.0.0.0/24", "an IETF protocol address"),
        ("192.0.2.0/24", "a documentation address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),
        ("::/128", "an unspecified address"),
        ("::1/128", "a loopback address"),
        ("fe80::/10", "a link-local address"),
        ("fec0::/10", "a site-local (private) address"),
        ("fc00::/7", "a unique-local (private) address"),
        ("ff00::/8", "a multicast address"),
        ("100::/64", "a discard-only address"),
        ("2001:db8::/32", "a documentation address"),
    )
)

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, str] | None:
    """The IPv4 address an IPv6 address stands for, when packets to it end up at that IPv4 address."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF), "NAT64"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be fetched from (e.g. ``"a private address"``), or None when it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            # Judged by the IPv4 address it reaches: NAT64 of a public address is how IPv6-only hosts see the web.
            v4, kind = embedded
            why = blocked_reason(v4)
            return None if why is None else f"{why} ({kind} form of {v4})"
    for net, why in _BLOCKS:
        if ip in net:
            return why
    # Backstop for whatever the explicit table misses (Teredo, ORCHID, future IANA special-purpose ranges).
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private or ip.is_reserved or ip.is_unspecified or not ip.is_global:
        return "not a public address"
    return None


def _literal_ip(host: str) -> IPAddress | None:
    """The address a URL host denotes when it is written as a number rather than a name."""
    text = unquote(host)  # an IPv6 zone arrives as "%25eth0"
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    # getaddrinfo reads "2130706433", "0x7f.1" and "127.1" as 127.0.0.1 without asking DNS; so must we.
    if _NUMERIC_HOST.fullmatch(text):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def _is_local_name(host: str) -> bool:
    name = host.lower().rstrip(".")
    return any(name == suffix or name.endswith("." + suffix) for suffix in _LOCAL_NAMES)


def _refuse(host: str, detail: str, *, reason: str, address: str | None = None) -> BlockedURLError:
    where = f"from {host}" if host else "this URL"
    return BlockedURLError(f"Refused to fetch {where}: {detail}.", host=host, reason=reason, address=address, hint=HINT)


def _check_parsed(url: httpx2.URL, *, allow_private: bool) -> None:
    host = url.host
    if url.scheme not in _SCHEMES:
        scheme = url.scheme or "(none)"
        raise _refuse(host, f"only http and https URLs are fetched, not {scheme}", reason=f"scheme {scheme}")
    if not host:
        raise _refuse(host, "the URL has no host", reason="no host")
    if url.userinfo:
        # Credentials in a URL would be sent to whichever host finally answers, redirects included.
        raise _refuse(host, "the URL carries credentials (user:password@)", reason="credentials in URL")
    if url.port is not None and not 1 <= url.port <= 65535:
        raise _refuse(host, f"port {url.port} is not in 1-65535", reason="bad port")
    if allow_private:
        return
    literal = _literal_ip(host)
    if literal is not None:
        why = blocked_reason(literal)
        if why is not None:
            raise _refuse(host, f"{literal} is {why}", reason=why, address=str(literal))
    elif _is_local_name(host):
        raise _refuse(host, f"{host} is a local-only name", reason="a local-only name")


def check_url(url: str, *, allow_private: bool) -> None:
    """Refuses (``BlockedURLError``) a URL that is not plain http(s) to a sane host and port; performs no I/O.

    Parsed with ``httpx2.URL``, the parser that will make the request, so the host checked is the host contacted.
    """
    try:
        parsed = httpx2.URL(url)
    except httpx2.InvalidURL as exc:
        raise _refuse("", f"it is not a valid URL ({exc})", reason="invalid URL") from None
    _check_parsed(parsed, allow_private=allow_private)


async def system_resolver(host: str, port: int) -> list[str]:
    """The operating system's resolver, off the event loop (``anyio.getaddrinfo``)."""
    # Bytes skip anyio's IDNA step: the host is httpx2's raw_host, already ASCII, and IDNA 2008 rejects some
    # names DNS accepts (underscores).
    infos = await anyio.getaddrinfo(host.encode("ascii"), port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


class GuardedTransport(httpx2.AsyncBaseTransport):
    """Checks every request (so every redirect hop) and sends it to the IP it checked; see the module docstring.

    ``inner`` defaults to an ``httpx2.AsyncHTTPTransport`` without keep-alive, which this transport then owns and
    closes. A supplied ``inner`` (an ``ASGITransport`` in tests) is left for its owner to close.
    """

    def __init__(
        self,
        inner: httpx2.AsyncBaseTransport | None = None,
        *,
        allow_private: bool,
        resolver: Resolver = system_resolver,
        verify: ssl.SSLContext | bool = True,
        exempt_origins: Collection[Origin] = (),
    ) -> None:
        self._owns_inner = inner is None
        self._inner = (
            inner
            if inner is not None
            else httpx2.AsyncHTTPTransport(verify=verify, limits=httpx2.Limits(max_keepalive_connections=0))
        )
        self._allow_private = allow_private
        self._resolver = resolver
        self._exempt = frozenset(exempt_origins)

    async def __aenter__(self) -> Self:
        if self._owns_inner:
            await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_inner:
            await self._inner.aclose()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        url = request.url
        trusted = self._allow_private or origin_of(url) in self._exempt
        _check_parsed(url, allow_private=trusted)
        if trusted:
            return await self._inner.handle_async_request(request)
        literal = _literal_ip(url.host)
        if literal is not None:
            # Already refused by _check_parsed when not public. Still pinned, so a legacy numeric form such as
            # "1572395042" reaches the inner transport as the dotted address that was checked.
            addresses: list[IPAddress] = [literal]
            server_name = None
        else:
            server_name = url.raw_host.decode("ascii")
            addresses = await self._resolve(request, server_name)
            for address in addresses:
                why = blocked_reason(address)
                if why is not None:
                    raise _refuse(
                        url.host, f"{url.host} resolves to {address}, {why}", reason=why, address=str(address)
                    )
        failure: httpx2.ConnectError | None = None
        for address in addresses:
            try:
                return await self._inner.handle_async_request(_pinned(request, address, server_name))
            except httpx2.ConnectError as exc:
                # Nothing was sent yet, so the next checked address is safe to try (an unreachable IPv6 route).
                failure = exc
        assert failure is not None
        raise failure

    async def _resolve(self, request: httpx2.Request, host: str) -> list[IPAddress]:
        url = request.url
        port = url.port or _DEFAULT_PORTS[url.scheme]
        # The lookup happens before the inner transport starts its connect timer, so it gets that budget itself.
        timeouts = request.extensions.get("timeout") or {}
        connect_timeout = timeouts.get("connect") if isinstance(timeouts, dict) else None
        try:
            with anyio.fail_after(connect_timeout):
                found = await self._resolver(host, port)
        except TimeoutError:
            raise httpx2.ConnectTimeout(f"Resolving {url.host} timed out.", request=request) from None
        except OSError as exc:
            raise httpx2.ConnectError(f"Could not resolve {url.host}: {exc}", request=request) from None
        addresses: list[IPAddress] = []
        for text in found:
            try:
                address = ipaddress.ip_address(text)
            except ValueError:
                raise httpx2.ConnectError(
                    f"The resolver returned {text!r} for {url.host}, not an IP address.", request=request
                ) from None
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise httpx2.ConnectError(f"{url.host} has no addresses.", request=request)
        return addresses


def _pinned(request: httpx2.Request, address: IPAddress, server_name: str | None) -> httpx2.Request:
    """A copy of ``request`` aimed at ``address``, still presenting ``server_name`` in Host and TLS SNI.

    A copy, not an edit: httpx2 builds the next redirect hop from the original request, and relative Locations must
    resolve against the name, not the IP.
    """
    headers = request.headers.copy()
    if "host" not in headers:
        headers["Host"] = request.url.netloc.decode("ascii")
    extensions = dict(request.extensions)
    if server_name is not None and request.url.scheme == "https":
        extensions.setdefault("sni_hostname", server_name)
    return httpx2.Request(
        request.method,
        request.url.copy_with(host=str(address)),
        headers=headers,
        stream=request.stream,
        extensions=extensions,
    )


def guarded_client(
    *,
    allow_private: bool,
    timeout: float,
    max_redirects: int = 5,
    transport: httpx2.AsyncBaseTransport | None = None,
    resolver: Resolver = system_resolver,
    verify: ssl.SSLContext | bool = True,
    exempt_origins: Collection[Origin] = (),
) -> httpx2.AsyncClient:
    """An ``httpx2.AsyncClient`` for untrusted URLs: redirects followed (each hop checked) through ``GuardedTransport``.

    ``transport`` is the inner transport (an ``ASGITransport`` in tests); ``resolver`` replaces DNS in tests;
    ``verify`` is the TLS context (the process's shared one, so no client loads the trust store again);
    ``exempt_origins`` are fetched from unchecked (a sandbox gateway's own media; each redirect hop is checked anew).
    ``trust_env=False``: a proxy would resolve names itself, past the pin. httpx2 already ignores ``HTTP(S)_PROXY``
    when given a transport; saying so keeps a later change from mounting one ahead of the guard.
    """
    return httpx2.AsyncClient(
        transport=GuardedTransport(
            transport, allow_private=allow_private, resolver=resolver, verify=verify, exempt_origins=exempt_origins
        ),
        follow_redirects=True,
        max_redirects=max_redirects,
        timeout=httpx2.Timeout(timeout),
        trust_env=False,
    )
