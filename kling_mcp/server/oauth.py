"""Access tokens from a real issuer: OAuth 2.1 / OpenID Connect JWTs checked against the issuer's published keys.

The issuer is found by discovery (``/.well-known/openid-configuration``, else RFC 8414's
``/.well-known/oauth-authorization-server``); its JWKS is cached, fetched again after a TTL and when a token names a
key id not seen yet (at most once per ``min_refresh_interval``, so a flood of made-up key ids cannot make this server
hammer the issuer). Only asymmetric signatures are accepted: with ``none`` or HMAC anyone holding the public key could
mint tokens.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit

import anyio
import httpx2
import jwt
from mcp.server.auth.provider import AccessToken, TokenVerifier

from kling_mcp.config import Settings, secure_url
from kling_mcp.tls import tls_context

log = logging.getLogger(__name__)

MCP_PATH: Final = "/mcp"  # where `kling-mcp serve --transport http` serves MCP
# The key type (and curve) each accepted algorithm must be verified with.
ALGORITHMS: Final[Mapping[str, tuple[str, str | None]]] = {
    **{f"{family}{bits}": ("RSA", None) for family in ("RS", "PS") for bits in (256, 384, 512)},
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", "Ed25519"),
}
LEEWAY_SECONDS: Final = 30  # clock skew between this server and the issuer
DOCUMENT_MAX_BYTES: Final = 512 * 1024
FETCH_TIMEOUT: Final = 10.0

JWK = dict[str, Any]
Fetch = Callable[[str], Awaitable[Any]]  # a URL -> its JSON document


class IssuerError(Exception):
    """The issuer's metadata or keys could not be fetched or made no sense."""


def resource_url(settings: Settings) -> str:
    """This server's MCP endpoint as clients reach it: the protected resource of RFC 9728."""
    if settings.public_url:
        return settings.public_url + MCP_PATH
    assert settings.oauth_audience is not None  # Settings.check insists on one of the two
    return settings.oauth_audience


def audience(settings: Settings) -> str:
    return settings.oauth_audience or resource_url(settings)


def discovery_urls(issuer: str) -> list[str]:
    """Where the issuer's metadata may be: OpenID Connect's appended path first, then RFC 8414's inserted ones."""
    parts = urlsplit(issuer.rstrip("/"))
    origin, path = f"{parts.scheme}://{parts.netloc}", parts.path
    urls = [
        f"{origin}{path}/.well-known/openid-configuration",
        f"{origin}/.well-known/oauth-authorization-server{path}",
        f"{origin}/.well-known/openid-configuration{path}",
    ]
    return list(dict.fromkeys(urls))


async def fetch_json(url: str) -> Any:
    """GET a small JSON document through the process TLS context; redirects are not followed."""
    verify = await anyio.to_thread.run_sync(tls_context)  # built once, off the loop
    async with (
        httpx2.AsyncClient(timeout=FETCH_TIMEOUT, verify=verify, follow_redirects=False, trust_env=False) as http,
        http.stream("GET", url, headers={"Accept": "application/json"}) as response,
    ):
        if response.status_code != 200:
            raise IssuerError(f"{url} answered HTTP {response.status_code}")
        body = b""
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > DOCUMENT_MAX_BYTES:
                raise IssuerError(f"{url} is larger than {DOCUMENT_MAX_BYTES} bytes")
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise IssuerError(f"{url} is not JSON") from None


def usable_keys(document: Any) -> list[JWK]:
    """The signing keys of a JWKS that an accepted algorithm can use; symmetric and malformed keys are dropped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise IssuerError("the JWKS has no keys list")
    keys: list[JWK] = []
    for key in document["keys"]:
        if not isinstance(key, dict) or key.get("use", "sig") != "sig":
            continue
        kinds = {kind for kind, _ in ALGORITHMS.values()}
        if key.get("kty") not in kinds or ("alg" in key and key["alg"] not in ALGORITHMS):
            continue
        try:
            jwt.PyJWK(key)
        except jwt.PyJWTError:
            continue
        keys.append(key)
    return keys


def fits(key: JWK, kid: str | None, alg: str) -> bool:
    kty, crv = ALGORITHMS[alg]
    return (
        (kid is None or key.get("kid") == kid)
        and key.get("kty") == kty
        and (crv is None or key.get("crv") == crv)
        and key.get("alg", alg) == alg
    )


class IssuerKeys:
    """The issuer's signing keys, fetched on first use, cached, and refreshed after ``ttl`` or on an unknown key id.

    Fetches are serialised and coalesced: callers that waited for a refresh in progress use its result. A failed
    fetch keeps the keys already known (an issuer outage does not lock everyone out at once) and counts toward the
    rate limit like a successful one.
    """

    def __init__(
        self,
        issuer: str,
        *,
        fetch: Fetch = fetch_json,
        clock: Callable[[], float] = time.monotonic,
        ttl: float = 3600.0,
        min_refresh_interval: float = 30.0,
    ) -> None:
        self.issuer = issuer
        self._fetch = fetch
        self._clock = clock
        self._ttl = ttl
        self._min_interval = min_refresh_interval
        self._keys: list[JWK] = []
        self._jwks_uri: str | None = None
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._generation = 0
        self._lock = anyio.Lock()

    async def key_for(self, kid: str | None, alg: str) -> JWK | None:
        """The key a token signed with ``alg`` under ``kid`` must verify with, or None."""
        if self._stale() and self._may_fetch():
            await self._refresh(self._generation)
        key = self._pick(kid, alg)
        if key is None and self._may_fetch():
            await self._refresh(self._generation)
            key = self._pick(kid, alg)
        return key

    def _stale(self) -> bool:
        return self._fetched_at is None or self._clock() - self._fetched_at >= self._ttl

    def _may_fetch(self) -> bool:
        return self._attempted_at is None or self._clock() - self._attempted_at >= self._min_interval

    def _pick(self, kid: str | None, alg: str) -> JWK | None:
        matches = [key for key in self._keys if fits(key, kid, alg)]
        # Without a key id, only an unambiguous key will do.
        return matches[0] if len(matches) == 1 else None

    async def _refresh(self, seen: int) -> None:
        async with self._lock:
            if self._generation != seen:
                return
            self._attempted_at = self._clock()
            try:
                self._keys = await self._fetch_keys()
                self._fetched_at = self._clock()
            except (IssuerError, httpx2.HTTPError) as exc:
                self._jwks_uri = None  # discover again next time: the issuer may have moved its keys
                log.warning("OAuth issuer %s: could not fetch its keys: %s", self.issuer, exc)
            finally:
                self._generation += 1

    async def _fetch_keys(self) -> list[JWK]:
        if self._jwks_uri is None:
            self._jwks_uri = await self._discover()
        return usable_keys(await self._fetch(self._jwks_uri))

    async def _discover(self) -> str:
        failures: list[str] = []
        for url in discovery_urls(self.issuer):
            try:
                metadata = await self._fetch(url)
            except (IssuerError, httpx2.HTTPError) as exc:
                failures.append(str(exc) or type(exc).__name__)
                continue
            if not isinstance(metadata, dict):
                failures.append(f"{url} is not a JSON object")
                continue
            # RFC 8414 §3.3 / OIDC Discovery §4.3: a document naming another issuer must not be used.
            if metadata.get("issuer") != self.issuer:
                failures.append(f"{url} names issuer {metadata.get('issuer')!r}")
                continue
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str) or not secure_url(jwks_uri):
                failures.append(f"{url} has no usable jwks_uri")
                continue
            return jwks_uri
        raise IssuerError("no discovery document: " + "; ".join(failures))


def claimed_scopes(claims: Mapping[str, Any]) -> list[str]:
    """RFC 9068's space-separated ``scope``, or the ``scp`` list (or string) some issuers send instead."""
    raw = claims.get("scope", claims.get("scp"))
    if isinstance(raw, str):
        return raw.split()
    if isinstance(raw, list):
        return [item for item in raw if isinstance(item, str)]
    return []


def access_token(claims: Mapping[str, Any], resource: str) -> AccessToken:
    subject = str(claims["sub"])
    client = claims.get("client_id", claims.get("azp"))
    return AccessToken(
        token="redacted",  # the SDK keeps this object for the request; the bearer itself is not needed again
        client_id=client if isinstance(client, str) and client else subject,
        scopes=claimed_scopes(claims),
        expires_at=int(claims["exp"]),
        resource=resource,
        subject=subject,
        claims=dict(claims),
    )


class Refused(Exception):
    """Why a token that looked like a JWT was not accepted (logged; the client sees only the 401)."""


class JwtVerifier:
    """The SDK's TokenVerifier for the issuer's signed JWT access tokens."""

    def __init__(self, keys: IssuerKeys, audience: str) -> None:
        self.keys = keys
        self.audience = audience

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return None  # not a JWT at all: a wrong static token, say
        try:
            return access_token(await self._claims(token, header), self.audience)
        except Refused as exc:
            log.info("OAuth access token refused: %s", exc)
            return None

    async def _claims(self, token: str, header: Mapping[str, Any]) -> dict[str, Any]:
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in ALGORITHMS:
            raise Refused(f"algorithm {alg!r} is not accepted")
        if kid is not None and not isinstance(kid, str):
            raise Refused("the key id is not a string")
        key = await self.keys.key_for(kid, alg)
        if key is None:
            raise Refused(f"no {alg} key with id {kid!r} at the issuer")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                jwt.PyJWK(key, algorithm=alg),
                algorithms=[alg],
                audience=self.audience,
                issuer=self.keys.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", "sub"], "enforce_minimum_key_length": True},
            )
        except jwt.PyJWTError as exc:
            raise Refused(str(exc)) from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise Refused("the subject is not a string")
        return claims


class FirstMatch:
    """Tries each verifier in turn: static tokens first (a constant-time compare), then the issuer's JWTs."""

    def __init__(self, verifiers: Sequence[TokenVerifier]) -> None:
        self._verifiers = tuple(verifiers)

    async def verify_token(self, token: str) -> AccessToken | None:
        for verifier in self._verifiers:
            found = await verifier.verify_token(token)
            if found is not None:
                return found
        return None


def jwt_verifier(settings: Settings) -> JwtVerifier:
    assert settings.oauth_issuer is not None
    return JwtVerifier(IssuerKeys(settings.oauth_issuer), audience(settings))
