"""The SSRF guard: URL syntax, address classification, per-hop checks, pinning to the checked IP.

No test asks real DNS or leaves this machine: names resolve through ``FakeDNS``; requests end in a ``MockTransport``,
an in-process Starlette app (``ASGITransport``) or a listener on 127.0.0.1. Public-looking addresses such as
93.184.216.34 only ever appear as strings handed to in-process transports.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc
import anyio.lowlevel
import httpx2
import pytest
from anyio.streams.tls import TLSListener
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from kling_mcp import netguard
from kling_mcp.errors import BlockedURLError, KlingError
from kling_mcp.netguard import GuardedTransport, blocked_reason, check_url, guarded_client, system_resolver
from kling_mcp.pixazo import PixazoClient, RetryPolicy

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"
VIDEO = b"\x00\x00\x00\x18ftypmp42" + b"x" * 1000


@dataclass
class FakeDNS:
    """A resolver from a table; unknown names fail like getaddrinfo does."""

    table: dict[str, list[str]]
    calls: list[tuple[str, int]] = field(default_factory=list)

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        await anyio.lowlevel.checkpoint()
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return list(self.table[host])


@dataclass
class Recorder:
    """A MockTransport handler that records what the inner transport was asked to send."""

    requests: list[httpx2.Request] = field(default_factory=list)
    refuse: frozenset[str] = frozenset()  # hosts that act unreachable

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.requests.append(request)
        if request.url.host in self.refuse:
            raise httpx2.ConnectError("unreachable", request=request)
        return httpx2.Response(200, content=VIDEO)

    def transport(self) -> httpx2.MockTransport:
        return httpx2.MockTransport(self)


def media_app(hits: list[tuple[str, str]]) -> Starlette:
    """A CDN stand-in: /video.mp4 serves bytes, /hop?to=X redirects to X, /loop to itself; the metadata path
    stands for what a private target would hand out."""

    async def video(request: Request) -> Response:
        hits.append((request.url.path, request.headers["host"]))
        return Response(VIDEO, media_type="video/mp4")

    async def hop(request: Request) -> Response:
        hits.append((request.url.path, request.headers["host"]))
        return RedirectResponse(request.query_params["to"], status_code=302)

    async def secret(request: Request) -> Response:
        hits.append((request.url.path, request.headers["host"]))
        return PlainTextResponse("instance credentials")

    async def loop(request: Request) -> Response:
        hits.append((request.url.path, request.headers["host"]))
        return RedirectResponse("/loop", status_code=302)

    routes = [Route("/video.mp4", video), Route("/hop", hop), Route("/loop", loop), Route("/latest/meta-data/", secret)]
    return Starlette(routes=routes)


def public_dns(**extra: list[str]) -> FakeDNS:
    return FakeDNS({"cdn.example": [PUBLIC_V4], "public.example": [PUBLIC_V4], **extra})


# --- check_url: syntax, no I/O ---------------------------------------------------------------------------------

ALWAYS_REFUSED = [
    pytest.param("ftp://cdn.example/v.mp4", "scheme ftp", id="ftp"),
    pytest.param("file:///etc/passwd", "scheme file", id="file"),
    pytest.param("gopher://cdn.example/", "scheme gopher", id="gopher"),
    pytest.param("javascript:alert(1)", "scheme javascript", id="javascript"),
    pytest.param("//cdn.example/v.mp4", "scheme (none)", id="scheme-relative"),
    pytest.param("http:///v.mp4", "no host", id="no-host"),
    pytest.param("https://user:pass@cdn.example/v.mp4", "credentials in URL", id="userinfo"),
    pytest.param("https://user@cdn.example/v.mp4", "credentials in URL", id="user-only"),
    pytest.param("http://cdn.example\\@127.0.0.1/", "credentials in URL", id="backslash-userinfo"),
    pytest.param("http://cdn.example:0/", "bad port", id="port-0"),
    pytest.param("http://cdn.example:99999/", "bad port", id="port-too-big"),
    pytest.param("http://[::1/", "invalid URL", id="unparseable"),
]


@pytest.mark.parametrize(("url", "reason"), ALWAYS_REFUSED)
@pytest.mark.parametrize("allow_private", [False, True])
def test_check_url_refuses_bad_syntax_even_when_private_addresses_are_allowed(
    url: str, reason: str, allow_private: bool
) -> None:
    with pytest.raises(BlockedURLError) as caught:
        check_url(url, allow_private=allow_private)
    assert caught.value.reason == reason
    assert caught.value.code == "blocked_url"
    assert "KLING_MCP_ALLOW_PRIVATE_URLS=1" in str(caught.value)


NON_PUBLIC_HOSTS = [
    pytest.param("http://127.0.0.1:8000/v.mp4", "a loopback address", id="loopback"),
    pytest.param("http://10.1.2.3/v.mp4", "a private address", id="10/8"),
    pytest.param("http://172.16.0.1/", "a private address", id="172.16/12"),
    pytest.param("http://192.168.1.1/", "a private address", id="192.168/16"),
    pytest.param("http://169.254.169.254/latest/meta-data/", "the cloud metadata address", id="metadata"),
    pytest.param("http://169.254.1.1/", "a link-local address", id="link-local"),
    pytest.param("http://100.64.0.1/", "a carrier-grade NAT (shared) address", id="cgnat"),
    pytest.param("http://0.0.0.0:8000/", "an unspecified address", id="0.0.0.0"),
    pytest.param("http://[::1]:8000/", "a loopback address", id="ipv6-loopback"),
    pytest.param("http://[::]/", "an unspecified address", id="ipv6-unspecified"),
    pytest.param("http://[fe80::1]/", "a link-local address", id="ipv6-link-local"),
    pytest.param("http://[fe80::1%25eth0]/", "a link-local address", id="ipv6-zone"),
    pytest.param("http://[fd00::5]/", "a unique-local (private) address", id="ipv6-ula"),
    pytest.param("http://[::ffff:10.0.0.5]/", "a private address (IPv4-mapped form of 10.0.0.5)", id="mapped"),
    pytest.param("http://[::ffff:169.254.169.254]/", "the cloud metadata address", id="mapped-metadata"),
    pytest.param("http://2130706433/", "a loopback address", id="decimal-127.0.0.1"),
    pytest.param("http://0x7f.1/", "a loopback address", id="hex-127.0.0.1"),
    pytest.param("http://127.1/", "a loopback address", id="short-127.0.0.1"),
    pytest.param("http://localhost:8000/", "a local-only name", id="localhost"),
    pytest.param("http://LocalHost./", "a local-only name", id="localhost-dot"),
    pytest.param("http://app.localhost/", "a local-only name", id="sub.localhost"),
    pytest.param("http://printer.local/", "a local-only name", id="mdns"),
    pytest.param("http://metadata.google.internal/", "a local-only name", id="internal"),
    pytest.param("http://nas.home.arpa/", "a local-only name", id="home.arpa"),
]


@pytest.mark.parametrize(("url", "reason"), NON_PUBLIC_HOSTS)
def test_check_url_refuses_hosts_that_are_visibly_not_public(url: str, reason: str) -> None:
    with pytest.raises(BlockedURLError) as caught:
        check_url(url, allow_private=False)
    assert caught.value.reason.startswith(reason)


@pytest.mark.parametrize(("url", "reason"), NON_PUBLIC_HOSTS)
def test_check_url_lets_private_hosts_through_when_allowed(url: str, reason: str) -> None:
    check_url(url, allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "https://cdn.example/v.mp4?X-Amz-Signature=abc",
        "http://cdn.example:8080/v.mp4",
        f"http://{PUBLIC_V4}/v.mp4",
        f"https://[{PUBLIC_V6}]/v.mp4",
        "https://bücher.example/bild.png",
        "HTTPS://CDN.EXAMPLE/v.mp4",
        "https://intranet/v.mp4",  # single-label names are judged by what they resolve to, at request time
    ],
)
def test_check_url_accepts_plain_public_urls(url: str) -> None:
    check_url(url, allow_private=False)


def test_check_url_message_names_the_host_and_hint_but_not_the_query() -> None:
    with pytest.raises(BlockedURLError) as caught:
        check_url("http://10.0.0.5/v.mp4?sig=SECRET", allow_private=False)
    error = caught.value
    assert error.message == "Refused to fetch from 10.0.0.5: 10.0.0.5 is a private address."
    assert error.hint == "Pass a public https URL; in sandbox mode or tests set KLING_MCP_ALLOW_PRIVATE_URLS=1."
    assert (error.host, error.address) == ("10.0.0.5", "10.0.0.5")
    assert "SECRET" not in str(error)
    assert isinstance(error, KlingError)


# --- address classification ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.0.0.5",
        "172.16.0.0",
        "172.31.255.255",
        "192.168.0.1",
        "169.254.169.254",
        "169.254.0.1",
        "100.64.0.1",
        "100.127.255.255",
        "0.0.0.0",
        "0.1.2.3",
        "192.0.0.9",
        "192.0.2.1",
        "198.18.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "fe80::1",
        "fec0::1",
        "fc00::1",
        "fd00:ec2::254",
        "ff02::1",
        "100::1",
        "2001:db8::1",
        "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.5",
        "::7f00:1",  # IPv4-compatible (deprecated) 127.0.0.1
        "64:ff9b::a00:5",  # NAT64 of 10.0.0.5
        "64:ff9b:1::1",  # local-use NAT64
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    ],
)
def test_non_public_addresses_have_a_reason(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address",
    [
        PUBLIC_V4,
        "8.8.8.8",
        "172.15.255.255",
        "172.32.0.0",
        "100.63.255.255",
        "100.128.0.0",
        PUBLIC_V6,
        "::ffff:93.184.216.34",
        "64:ff9b::5db8:d822",  # NAT64 of 93.184.216.34: how IPv6-only hosts reach IPv4 sites
        "2002:5db8:d822::1",  # 6to4 of 93.184.216.34
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None


@given(st.ip_addresses())
def test_nothing_the_standard_library_calls_non_global_is_allowed_directly(ip: netguard.IPAddress) -> None:
    if isinstance(ip, ipaddress.IPv6Address) and netguard._embedded_ipv4(ip) is not None:
        return  # judged by the IPv4 address inside, below
    if blocked_reason(ip) is None:
        assert ip.is_global
        assert not ip.is_private
        assert not ip.is_loopback
        assert not ip.is_link_local
        assert not ip.is_multicast
        assert not ip.is_reserved


@given(st.ip_addresses(v=4))
def test_ipv6_forms_of_an_ipv4_address_get_its_verdict(v4: ipaddress.IPv4Address) -> None:
    verdict = blocked_reason(v4) is None
    mapped = ipaddress.IPv6Address(f"::ffff:{v4}")
    nat64 = ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(v4))
    sixtofour = ipaddress.IPv6Address((0x2002 << 112) | (int(v4) << 80))
    assert (blocked_reason(mapped) is None) == verdict
    assert (blocked_reason(nat64) is None) == verdict
    assert (blocked_reason(sixtofour) is None) == verdict


# --- the transport: refusals -------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1/v.mp4", "127.0.0.1"),
        ("http://10.0.0.5/v.mp4", "10.0.0.5"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://[::1]:8000/v.mp4", "::1"),
    ],
)
async def test_ip_literals_that_are_not_public_are_refused_without_any_lookup(url: str, address: str) -> None:
    recorder, dns = Recorder(), public_dns()
    async with guarded_client(allow_private=False, timeout=5, transport=recorder.transport(), resolver=dns) as http:
        with pytest.raises(BlockedURLError) as caught:
            await http.get(url)
    assert caught.value.address == address
    assert recorder.requests == []
    assert dns.calls == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answers", "refused", "why"),
    [
        (["10.0.0.5"], "10.0.0.5", "a private address"),
        (["169.254.169.254"], "169.254.169.254", "the cloud metadata address"),
        (["127.0.0.1"], "127.0.0.1", "a loopback address"),
        (["::1"], "::1", "a loopback address"),
        (["fd12:3456::1"], "fd12:3456::1", "a unique-local (private) address"),
        # One bad answer is enough: which address the connection would use is not the guard's to predict.
        ([PUBLIC_V4, "192.168.1.10"], "192.168.1.10", "a private address"),
    ],
)
async def test_names_resolving_to_non_public_addresses_are_refused(answers: list[str], refused: str, why: str) -> None:
    recorder, dns = Recorder(), FakeDNS({"media.example": answers})
    async with guarded_client(allow_private=False, timeout=5, transport=recorder.transport(), resolver=dns) as http:
        with pytest.raises(BlockedURLError) as caught:
            await http.get("https://media.example/v.mp4?token=SECRET")
    error = caught.value
    assert error.message == f"Refused to fetch from media.example: media.example resolves to {refused}, {why}."
    assert "KLING_MCP_ALLOW_PRIVATE_URLS=1" in str(error)
    assert "SECRET" not in str(error)
    assert (error.host, error.address, error.reason) == ("media.example", refused, why)
    assert dns.calls == [("media.example", 443)]
    assert recorder.requests == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("target", "address"),
    [
        ("http://10.0.0.5/latest/meta-data/", "10.0.0.5"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),
        ("http://[::1]/latest/meta-data/", "::1"),
        ("http://intranet.example/latest/meta-data/", "192.168.1.10"),
        ("http://rebound.example:8080/latest/meta-data/", "127.0.0.1"),
    ],
)
async def test_a_public_host_redirecting_to_a_private_one_is_refused_at_the_hop(target: str, address: str) -> None:
    hits: list[tuple[str, str]] = []
    dns = public_dns(**{"intranet.example": ["192.168.1.10"], "rebound.example": ["127.0.0.1"]})
    inner = httpx2.ASGITransport(media_app(hits))
    async with guarded_client(allow_private=False, timeout=5, transport=inner, resolver=dns) as http:
        with pytest.raises(BlockedURLError) as caught:
            await http.get("http://public.example/hop", params={"to": target})
    assert caught.value.address == address
    # The public first hop was served (to the checked IP, by name); the private target never was.
    assert hits == [("/hop", "public.example")]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("file:///etc/passwd", "scheme file"),
        ("ftp://public.example/v.mp4", "scheme ftp"),
        ("https://user:pass@public.example/video.mp4", "credentials in URL"),
        ("http://localhost:8000/", "a local-only name"),
    ],
)
@pytest.mark.parametrize("allow_private", [False, True])
async def test_redirects_to_bad_urls_are_refused_in_every_mode(target: str, reason: str, allow_private: bool) -> None:
    hits: list[tuple[str, str]] = []
    inner = httpx2.ASGITransport(media_app(hits))
    async with guarded_client(allow_private=allow_private, timeout=5, transport=inner, resolver=public_dns()) as http:
        if allow_private and reason == "a local-only name":
            # Sandbox mode follows it (and reaches the in-process app, which does not know the route).
            assert (await http.get("http://public.example/hop", params={"to": target})).status_code == 404
            return
        with pytest.raises(BlockedURLError) as caught:
            await http.get("http://public.example/hop", params={"to": target})
    assert caught.value.reason == reason


@pytest.mark.anyio
async def test_bad_urls_are_refused_by_the_transport_itself_in_sandbox_mode_too() -> None:
    recorder = Recorder()
    async with guarded_client(allow_private=True, timeout=5, transport=recorder.transport()) as http:
        for url in ("ftp://cdn.example/v.mp4", "https://u:p@cdn.example/v.mp4", "http://cdn.example:99999/"):
            with pytest.raises(BlockedURLError):
                await http.get(url)
    assert recorder.requests == []


@pytest.mark.anyio
async def test_too_many_redirects_stop_at_max_redirects() -> None:
    hits: list[tuple[str, str]] = []
    inner = httpx2.ASGITransport(media_app(hits))
    async with guarded_client(
        allow_private=False, timeout=5, max_redirects=2, transport=inner, resolver=public_dns()
    ) as http:
        with pytest.raises(httpx2.TooManyRedirects):
            await http.get("http://public.example/loop")
    assert len(hits) == 3


# --- the transport: allowed requests and pinning -----------------------------------------------------------------


@pytest.mark.anyio
async def test_public_names_are_sent_to_the_checked_ip_with_the_original_host_header_and_sni() -> None:
    recorder, dns = Recorder(), public_dns()
    async with guarded_client(allow_private=False, timeout=5, transport=recorder.transport(), resolver=dns) as http:
        response = await http.get("https://cdn.example:8443/v.mp4?sig=1")
    assert response.content == VIDEO
    (sent,) = recorder.requests
    assert str(sent.url) == f"https://{PUBLIC_V4}:8443/v.mp4?sig=1"
    assert sent.headers["host"] == "cdn.example:8443"
    assert sent.extensions["sni_hostname"] == "cdn.example"
    assert dns.calls == [("cdn.example", 8443)]
    # What callers see still names the host, not the IP.
    assert str(response.url) == "https://cdn.example:8443/v.mp4?sig=1"


@pytest.mark.anyio
async def test_plain_http_is_pinned_without_sni_and_ipv6_answers_get_brackets() -> None:
    recorder, dns = Recorder(), FakeDNS({"cdn.example": [PUBLIC_V6]})
    async with guarded_client(allow_private=False, timeout=5, transport=recorder.transport(), resolver=dns) as http:
        await http.get("http://cdn.example/v.mp4")
    (sent,) = recorder.requests
    assert str(sent.url) == f"http://[{PUBLIC_V6}]/v.mp4"
    assert sent.headers["host"] == "cdn.example"
    assert "sni_hostname" not in sent.extensions
    assert dns.calls == [("cdn.example", 80)]


@pytest.mark.anyio
async def test_idn_hosts_are_resolved_and_presented_in_their_ascii_form() -> None:
    recorder, dns = Recorder(), FakeDNS({"xn--bcher-kva.example": [PUBLIC_V4]})
    async with guarded_client(allow_private=False, timeout=5, transport=recorder.transport(), resolver=dns) as http:
        await http.get("https://bücher.example/bild.png")
    (sent,) = recorder.requests
    assert sent.headers["host"] == "xn--bcher-kva.example"
    assert sent.extensions["sni_hostname"] == "xn--bcher-kva.example"


@pytest.mark.anyio
async def test_each_request_is_resolved_once_and_connected_to_that_answer_so_rebinding_cannot_redirect_it() -> None:
    answers = iter([[PUBLIC_V4], ["127.0.0.1"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)  # public for the first lookup, loopback for any later one

    recorder = Recorder()
    async with guarded_client(
        allow_private=False, timeout=5, transport=recorder.transport(), resolver=rebinding
    ) as http:
        await http.get("http://rebind.example/v.mp4")
        (sent,) = recorder.requests
        # The inner transport got an IP, so it has no name left to look up again.
        assert sent.url.host == PUBLIC_V4
        with pytest.raises(BlockedURLError) as caught:
            await http.get("http://rebind.example/v.mp4")
    assert caught.value.address == "127.0.0.1"
    assert len(recorder.requests) == 1


@pytest.mark.anyio
async def test_relative_redirects_stay_on_the_name_and_are_checked_again() -> None:
    hits: list[tuple[str, str]] = []
    dns = public_dns()
    inner = httpx2.ASGITransport(media_app(hits))
    async with guarded_client(allow_private=False, timeout=5, transport=inner, resolver=dns) as http:
        response = await http.get("http://public.example/hop", params={"to": "/video.mp4"})
    assert response.content == VIDEO
    assert str(response.url) == "http://public.example/video.mp4"
    assert hits == [("/hop", "public.example"), ("/video.mp4", "public.example")]
    assert dns.calls == [("public.example", 80), ("public.example", 80)]


@pytest.mark.anyio
async def test_public_ip_literals_go_through_unresolved_and_legacy_numbers_are_normalised() -> None:
    recorder, dns = Recorder(), public_dns()
    async with guarded_client(allow_private=False, timeout=5, transport=recorder.transport(), resolver=dns) as http:
        await http.get(f"https://[{PUBLIC_V6}]/a.mp4")
        await http.get(f"http://{int(ipaddress.IPv4Address(PUBLIC_V4))}/b.mp4")
    first, second = recorder.requests
    assert first.url.host == PUBLIC_V6
    assert "sni_hostname" not in first.extensions
    assert str(second.url) == f"http://{PUBLIC_V4}/b.mp4"
    assert dns.calls == []


@pytest.mark.anyio
async def test_an_unreachable_first_address_falls_back_to_the_next_checked_one() -> None:
    recorder = Recorder(refuse=frozenset({PUBLIC_V6}))
    dns = FakeDNS({"cdn.example": [PUBLIC_V6, PUBLIC_V4]})
    async with guarded_client(allow_private=False, timeout=5, transport=recorder.transport(), resolver=dns) as http:
        response = await http.get("https://cdn.example/v.mp4")
    assert response.status_code == 200
    assert [r.url.host for r in recorder.requests] == [PUBLIC_V6, PUBLIC_V4]

    unreachable = Recorder(refuse=frozenset({PUBLIC_V6, PUBLIC_V4}))
    async with guarded_client(allow_private=False, timeout=5, transport=unreachable.transport(), resolver=dns) as http:
        with pytest.raises(httpx2.ConnectError):
            await http.get("https://cdn.example/v.mp4")


@pytest.mark.anyio
async def test_lookup_failures_are_connection_errors_not_refusals() -> None:
    async def hangs(host: str, port: int) -> list[str]:
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def empty(host: str, port: int) -> list[str]:
        return []

    async def garbage(host: str, port: int) -> list[str]:
        return ["not-an-ip"]

    recorder = Recorder()
    async with guarded_client(
        allow_private=False, timeout=5, transport=recorder.transport(), resolver=FakeDNS({})
    ) as http:
        with pytest.raises(httpx2.ConnectError, match=r"Could not resolve nowhere\.example"):
            await http.get("https://nowhere.example/v.mp4")
    for resolver in (empty, garbage):
        async with guarded_client(
            allow_private=False, timeout=5, transport=recorder.transport(), resolver=resolver
        ) as http:
            with pytest.raises(httpx2.ConnectError):
                await http.get("https://cdn.example/v.mp4")
    async with guarded_client(
        allow_private=False, timeout=0.05, transport=recorder.transport(), resolver=hangs
    ) as http:
        with anyio.fail_after(5), pytest.raises(httpx2.ConnectTimeout, match=r"Resolving cdn\.example timed out"):
            await http.get("https://cdn.example/v.mp4")
    assert recorder.requests == []


@pytest.mark.anyio
async def test_allow_private_forwards_everything_unchanged_without_lookups() -> None:
    hits: list[tuple[str, str]] = []
    dns = FakeDNS({"intranet.example": ["10.0.0.5"]})
    inner = httpx2.ASGITransport(media_app(hits))
    async with guarded_client(allow_private=True, timeout=5, transport=inner, resolver=dns) as http:
        for url in (
            "http://127.0.0.1:8000/video.mp4",
            "http://[::1]/video.mp4",
            "http://intranet.example/video.mp4",
            "http://localhost/video.mp4",
        ):
            assert (await http.get(url)).content == VIDEO
        redirected = await http.get("http://public.example/hop?to=http://169.254.169.254/latest/meta-data/")
    assert redirected.text == "instance credentials"
    assert dns.calls == []
    assert [host for _, host in hits] == [
        "127.0.0.1:8000",
        "[::1]",
        "intranet.example",
        "localhost",
        "public.example",
        "169.254.169.254",
    ]


# --- errors reach PixazoClient.download callers ------------------------------------------------------------------


async def never_sleep(seconds: float) -> None:
    raise AssertionError(f"a refusal must not be retried (asked to sleep {seconds} s)")


@pytest.mark.anyio
async def test_blocked_url_error_propagates_through_httpx2_unchanged() -> None:
    async with guarded_client(allow_private=False, timeout=5, transport=Recorder().transport()) as http:
        with pytest.raises(BlockedURLError) as caught:
            await http.get("http://10.0.0.5/")
        with pytest.raises(BlockedURLError):
            async with http.stream("GET", "http://169.254.169.254/"):
                pass
    assert not isinstance(caught.value, httpx2.HTTPError)


@pytest.mark.anyio
async def test_pixazo_download_raises_blocked_url_error_once_and_leaves_no_file(tmp_path: Path) -> None:
    hits: list[tuple[str, str]] = []
    dns = public_dns()
    inner = httpx2.ASGITransport(media_app(hits))
    async with guarded_client(allow_private=False, timeout=5, transport=inner, resolver=dns) as http:
        client = PixazoClient(
            http, base_url="https://gateway.example", api_key="k", retry=RetryPolicy(attempts=3), sleep=never_sleep
        )
        with pytest.raises(BlockedURLError) as caught:
            await client.download(
                "http://public.example/hop?to=http://169.254.169.254/latest/meta-data/", tmp_path / "out" / "v.mp4"
            )
        assert caught.value.address == "169.254.169.254"
        assert list((tmp_path / "out").iterdir()) == []
        assert hits == [("/hop", "public.example")]

        saved = await client.download("http://public.example/hop?to=/video.mp4", tmp_path / "out" / "v.mp4")
    assert saved.path.read_bytes() == VIDEO


# --- real sockets, loopback only ---------------------------------------------------------------------------------


@dataclass
class Served:
    port: int
    heads: list[tuple[int, bytes]]  # (connection number, request head)
    server_names: list[str | None]


@asynccontextmanager
async def loopback_http(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Served]:
    """A keep-alive HTTP/1.1 responder on 127.0.0.1 that records each request head and its connection."""
    tcp = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    served = Served(tcp.extra(anyio.abc.SocketAttribute.local_port), [], [])
    connections = 0

    async def handle(stream: anyio.abc.ByteStream) -> None:
        nonlocal connections
        connections += 1
        number = connections
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        buffer += await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError):
                        return
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                served.heads.append((number, head))
                await stream.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    listener: anyio.abc.Listener[anyio.abc.ByteStream] = tcp
    if ssl_context is not None:
        ssl_context.sni_callback = lambda _obj, name, _ctx: served.server_names.append(name)
        listener = TLSListener(tcp, ssl_context, standard_compatible=False)
    async with listener, anyio.create_task_group() as tg:  # the listener closes only after serve() is cancelled
        tg.start_soon(listener.serve, handle)
        try:
            yield served
        finally:
            tg.cancel_scope.cancel()


@pytest.fixture
def loopback_counts_as_public(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lets the guard pin to 127.0.0.1, the only address these tests may use, as if it were public."""
    real = netguard.blocked_reason

    def reason(ip: netguard.IPAddress) -> str | None:
        return None if str(ip) == "127.0.0.1" else real(ip)

    monkeypatch.setattr(netguard, "blocked_reason", reason)


@pytest.mark.anyio
@pytest.mark.usefixtures("loopback_counts_as_public")
async def test_the_real_transport_connects_to_the_pinned_ip_and_keeps_no_connection_for_another_name() -> None:
    dns = FakeDNS({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"]})
    async with loopback_http() as served, guarded_client(allow_private=False, timeout=5, resolver=dns) as http:
        for name in ("a.test", "b.test"):
            response = await http.get(f"http://{name}:{served.port}/v.mp4?sig=1")
            assert response.text == "ok"
    (first, head_a), (second, head_b) = served.heads
    assert head_a.startswith(b"GET /v.mp4?sig=1 HTTP/1.1\r\n")
    assert f"Host: a.test:{served.port}".encode() in head_a.split(b"\r\n")
    assert f"Host: b.test:{served.port}".encode() in head_b.split(b"\r\n")
    # Two names on one IP share a pool key after pinning; no keep-alive means no connection is reused across them.
    assert first != second


def self_signed(name: str, directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """Server and client TLS contexts around a certificate valid for ``name`` only (not for 127.0.0.1)."""
    # Declared in the [test] extra: a missing package is an error here, never a silent skip.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    (directory / "cert.pem").write_bytes(cert_pem)
    (directory / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    client = ssl.create_default_context(cadata=cert_pem.decode())
    return server, client


@pytest.mark.anyio
@pytest.mark.usefixtures("loopback_counts_as_public")
async def test_tls_to_the_pinned_ip_sends_sni_and_verifies_the_certificate_for_the_name(tmp_path: Path) -> None:
    server_tls, client_tls = self_signed("media.test", tmp_path)
    dns = FakeDNS({"media.test": ["127.0.0.1"]})
    async with loopback_http(server_tls) as served:
        inner = httpx2.AsyncHTTPTransport(verify=client_tls)
        async with inner, guarded_client(allow_private=False, timeout=5, transport=inner, resolver=dns) as http:
            response = await http.get(f"https://media.test:{served.port}/v.mp4")
            assert response.text == "ok"
        # Control: the same certificate does not cover the bare IP, so the success above came from the name. A fresh
        # pool: the one above may still hold the connection it verified for media.test, keyed by the same IP.
        fresh = httpx2.AsyncHTTPTransport(verify=client_tls)
        async with fresh, guarded_client(allow_private=True, timeout=5, transport=fresh) as direct:
            with pytest.raises(httpx2.ConnectError):
                await direct.get(f"https://127.0.0.1:{served.port}/v.mp4")
    assert served.server_names[0] == "media.test"
    assert f"Host: media.test:{served.port}".encode() in served.heads[0][1].split(b"\r\n")


@pytest.mark.anyio
async def test_the_system_resolver_reads_numeric_hosts_without_dns() -> None:
    assert await system_resolver("127.0.0.1", 80) == ["127.0.0.1"]


@pytest.mark.anyio
async def test_guarded_client_follows_redirects_without_environment_proxies() -> None:
    async with guarded_client(allow_private=False, timeout=7.5, max_redirects=3) as http:
        pass
    assert http.follow_redirects
    assert http.max_redirects == 3
    assert not http.trust_env
    assert http.timeout == httpx2.Timeout(7.5)
    assert isinstance(http._transport, GuardedTransport)
