"""Identity from a real issuer: JWT access tokens checked against keys an issuer on loopback publishes.

The issuer is a small Starlette app on a real port serving discovery and a JWKS of keys generated here; the server
runs its real streamable-HTTP app and is reached with the SDK client.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.warnings import InsecureKeyLengthWarning
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kling_mcp.config import Settings
from kling_mcp.sandbox.server import serve_asgi
from kling_mcp.server.http import auth_options
from kling_mcp.server.oauth import FirstMatch, IssuerKeys, JwtVerifier, discovery_urls, usable_keys
from tests.test_http_security import mcp_client, serve

pytestmark = pytest.mark.anyio

AUDIENCE = "https://video.test/mcp"
STATIC = "tok_static_Distinctive_31"
MCP_REQUEST = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "probe", "version": "1"}},
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}


# --- keys and tokens --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    kid: str
    alg: str
    private: Any
    jwk: dict[str, Any]

    @property
    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


@functools.cache
def rsa_key(kid: str, alg: str = "RS256", bits: int = 2048) -> Key:
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    jwk = {**RSAAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid, "use": "sig"}
    return Key(kid, alg, private, jwk)


@functools.cache
def ec_key(kid: str) -> Key:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = {**ECAlgorithm.to_jwk(private.public_key(), as_dict=True), "kid": kid, "use": "sig"}
    return Key(kid, "ES256", private, jwk)


def claims_for(issuer: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": issuer, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 300, "scope": "video read"}
    claims.update(changes)
    return {name: value for name, value in claims.items() if value is not None}


def mint(key: Key, claims: dict[str, Any], **header: Any) -> str:
    return jwt.encode(claims, key.private, algorithm=key.alg, headers={"kid": key.kid, **header})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any], kid: str) -> str:
    return f"{b64(json.dumps({'alg': 'none', 'kid': kid}).encode())}.{b64(json.dumps(claims).encode())}."


def hmac_with_public_key(key: Key, claims: dict[str, Any]) -> str:
    """The classic confusion attack: an HMAC whose secret is the issuer's public key, which anyone can fetch."""
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'kid': key.kid}).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(key.public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def tampered(token: str, **changes: Any) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return ".".join((header, b64(json.dumps({**claims, **changes}).encode()), signature))


# --- the issuer -------------------------------------------------------------------------------------------------


@dataclass
class Issuer:
    """An authorization server's public face: discovery documents and a JWKS, with every request counted."""

    base: str = ""
    path: str = ""  # an issuer URL with a path, e.g. a tenant
    keys: list[Key] = field(default_factory=list)
    metadata_paths: set[str] = field(default_factory=lambda: {"/.well-known/openid-configuration"})
    named_issuer: str | None = None  # what the metadata claims; None: the real one
    up: bool = True
    hits: Counter[str] = field(default_factory=Counter)

    @property
    def url(self) -> str:
        return self.base + self.path

    @property
    def jwks_fetches(self) -> int:
        return self.hits["/jwks"]

    def app(self) -> Starlette:
        async def answer(request: Request) -> Response:
            path = request.url.path
            self.hits[path] += 1
            if not self.up:
                return JSONResponse({"error": "down"}, status_code=503)
            if path == "/jwks":
                return JSONResponse({"keys": [key.jwk for key in self.keys]})
            if path in self.metadata_paths:
                return JSONResponse({"issuer": self.named_issuer or self.url, "jwks_uri": self.base + "/jwks"})
            return JSONResponse({"error": "not found"}, status_code=404)

        return Starlette(routes=[Route("/{path:path}", answer)])


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    served = Issuer(keys=[rsa_key("rsa-1"), ec_key("ec-1")])
    async with serve_asgi(served.app(), "127.0.0.1", 0) as base:
        served.base = base
        yield served


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier_for(issuer: Issuer, clock: Clock | None = None) -> JwtVerifier:
    keys = IssuerKeys(issuer.url, clock=clock or time.monotonic, ttl=600, min_refresh_interval=30)
    return JwtVerifier(keys, AUDIENCE)


# --- the verifier -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "alg"), [(rsa_key("rsa-1"), "RS256"), (rsa_key("rsa-1"), "PS256"), (ec_key("ec-1"), "ES256")]
)
async def test_a_token_signed_by_the_issuer_gives_its_subject_scopes_and_expiry(
    issuer: Issuer, key: Key, alg: str
) -> None:
    claims = claims_for(issuer.url, client_id="team-app")
    token = jwt.encode(claims, key.private, algorithm=alg, headers={"kid": key.kid})
    found = await verifier_for(issuer).verify_token(token)
    assert found is not None
    assert (found.subject, found.client_id, found.scopes) == ("alice", "team-app", ["video", "read"])
    assert found.expires_at == claims["exp"]
    assert found.resource == AUDIENCE
    assert found.token == "redacted"
    assert found.claims is not None
    assert found.claims["iss"] == issuer.url  # the SDK's principal: (client_id, iss, sub)


@pytest.mark.parametrize(
    ("changes", "client_id", "scopes"),
    [
        ({"azp": "azp-app", "scope": None, "scp": ["video"]}, "azp-app", ["video"]),
        ({"scope": None, "scp": "a b"}, "alice", ["a", "b"]),
        ({"scope": None}, "alice", []),
    ],
)
async def test_the_client_is_client_id_else_azp_else_the_subject(
    issuer: Issuer, changes: dict[str, Any], client_id: str, scopes: list[str]
) -> None:
    found = await verifier_for(issuer).verify_token(mint(rsa_key("rsa-1"), claims_for(issuer.url, **changes)))
    assert found is not None
    assert (found.client_id, found.scopes) == (client_id, scopes)


def refused_tokens(issuer: str) -> dict[str, str]:
    """Every token a verifier must refuse, by what is wrong with it."""
    rsa, ec_ = rsa_key("rsa-1"), ec_key("ec-1")
    good = mint(rsa, claims_for(issuer))
    now = int(time.time())
    return {
        "expired": mint(rsa, claims_for(issuer, iat=now - 600, exp=now - 120)),
        "not yet valid": mint(rsa, claims_for(issuer, nbf=now + 600)),
        "wrong audience": mint(rsa, claims_for(issuer, aud="https://other.test/mcp")),
        "wrong issuer": mint(rsa, claims_for("https://evil.test")),
        "issuer with a trailing slash": mint(rsa, claims_for(issuer + "/")),
        "no expiry": mint(rsa, claims_for(issuer, exp=None)),
        "no subject": mint(rsa, claims_for(issuer, sub=None)),
        "no audience": mint(rsa, claims_for(issuer, aud=None)),
        "unsigned": unsigned(claims_for(issuer), rsa.kid),
        "HS256 with the public key": hmac_with_public_key(rsa, claims_for(issuer)),
        "tampered payload": tampered(good, sub="mallory"),
        "signature cut off": good.rsplit(".", 1)[0] + ".",
        "unknown kid": mint(rsa_key("rsa-unpublished"), claims_for(issuer)),
        "kid of a key of another type": jwt.encode(claims_for(issuer), ec_.private, "ES256", {"kid": rsa.kid}),
        "not a JWT": "just-a-wrong-static-token",
    }


async def test_every_bad_token_is_refused_and_a_good_one_accepted(
    issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    verifier = verifier_for(issuer)
    tokens = refused_tokens(issuer.url)
    with caplog.at_level(logging.INFO, logger="kling_mcp.server.oauth"):
        results = {reason: await verifier.verify_token(token) for reason, token in tokens.items()}
    assert {reason: found for reason, found in results.items() if found is not None} == {}
    assert "OAuth access token refused: Signature has expired" in caplog.text
    pieces = {reason: [token, *token.split(".")[1:]] for reason, token in tokens.items()}
    assert [reason for reason, parts in pieces.items() if any(part and part in caplog.text for part in parts)] == []
    assert await verifier.verify_token(mint(rsa_key("rsa-1"), claims_for(issuer.url))) is not None


async def test_a_short_rsa_key_is_refused_even_when_published(issuer: Issuer) -> None:
    weak = rsa_key("rsa-weak", bits=1024)
    issuer.keys.append(weak)
    with pytest.warns(InsecureKeyLengthWarning):  # PyJWT warns only when signing, and signs all the same
        token = mint(weak, claims_for(issuer.url))
    assert await verifier_for(issuer).verify_token(token) is None


async def test_a_symmetric_key_in_the_jwks_is_never_used(issuer: Issuer) -> None:
    secret = b"shared-secret-of-at-least-32-bytes!!"
    oct_key = Key("oct-1", "HS256", secret, {"kty": "oct", "kid": "oct-1", "k": b64(secret)})
    issuer.keys.append(oct_key)
    token = jwt.encode(claims_for(issuer.url), secret, algorithm="HS256", headers={"kid": "oct-1"})
    assert await verifier_for(issuer).verify_token(token) is None


async def test_a_token_without_a_kid_uses_the_only_key_of_its_type(issuer: Issuer) -> None:
    verifier = verifier_for(issuer)
    rsa_token = jwt.encode(claims_for(issuer.url), rsa_key("rsa-1").private, algorithm="RS256")
    ec_token = jwt.encode(claims_for(issuer.url), ec_key("ec-1").private, algorithm="ES256")
    assert await verifier.verify_token(rsa_token) is not None
    assert await verifier.verify_token(ec_token) is not None
    issuer.keys.append(rsa_key("rsa-2"))
    ambiguous = verifier_for(issuer)
    assert await ambiguous.verify_token(rsa_token) is None  # two RSA keys: no guessing
    assert await ambiguous.verify_token(ec_token) is not None


def test_only_asymmetric_signing_keys_are_kept_from_the_jwks() -> None:
    rsa_jwk, ec_jwk = rsa_key("rsa-1").jwk, ec_key("ec-1").jwk
    document = {
        "keys": [
            {"kty": "oct", "kid": "oct-1", "k": b64(b"x" * 32)},
            {**rsa_jwk, "kid": "enc-1", "use": "enc"},
            {**rsa_jwk, "kid": "hs-labelled", "alg": "HS256"},
            {"kty": "RSA", "kid": "broken", "n": "AQAB"},
            "not a key",
            rsa_jwk,
            ec_jwk,
        ]
    }
    assert usable_keys(document) == [rsa_jwk, ec_jwk]


# --- keys: discovery, caching, refresh --------------------------------------------------------------------------


async def test_an_unknown_kid_refreshes_the_keys_at_most_once_per_interval(issuer: Issuer) -> None:
    clock = Clock()
    verifier = verifier_for(issuer, clock)
    good, unknown = mint(rsa_key("rsa-1"), claims_for(issuer.url)), mint(rsa_key("rsa-2"), claims_for(issuer.url))
    assert await verifier.verify_token(good) is not None
    assert issuer.jwks_fetches == 1
    assert await verifier.verify_token(unknown) is None
    assert issuer.jwks_fetches == 1  # fetched a moment ago: a flood of made-up key ids costs the issuer nothing
    clock.now += 30
    assert await verifier.verify_token(unknown) is None
    assert await verifier.verify_token(unknown) is None
    assert issuer.jwks_fetches == 2  # one refresh, still unknown, refused
    assert await verifier.verify_token(good) is not None
    assert issuer.jwks_fetches == 2
    assert issuer.hits["/.well-known/openid-configuration"] == 1  # discovered once


async def test_rotated_keys_are_picked_up_on_refresh_and_dropped_ones_after_the_ttl(issuer: Issuer) -> None:
    clock = Clock()
    verifier = verifier_for(issuer, clock)
    old, new = rsa_key("rsa-1"), rsa_key("rsa-2")
    old_token, new_token = mint(old, claims_for(issuer.url)), mint(new, claims_for(issuer.url))
    assert await verifier.verify_token(old_token) is not None
    issuer.keys = [new, old]  # the issuer publishes its next key, then starts signing with it
    clock.now += 31
    assert await verifier.verify_token(new_token) is not None
    issuer.keys = [new]  # and later retires the old one
    clock.now += 100
    assert await verifier.verify_token(old_token) is not None  # cached until the TTL
    clock.now += 600
    assert await verifier.verify_token(old_token) is None
    assert await verifier.verify_token(new_token) is not None
    assert issuer.jwks_fetches == 3


async def test_concurrent_first_tokens_share_one_fetch(issuer: Issuer) -> None:
    verifier = verifier_for(issuer)
    token = mint(ec_key("ec-1"), claims_for(issuer.url))
    found: list[object] = []

    async def verify() -> None:
        found.append(await verifier.verify_token(token))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(verify)
    assert len(found) == 20
    assert None not in found
    assert issuer.jwks_fetches == 1


async def test_an_issuer_that_is_down_refuses_tokens_until_it_is_back(
    issuer: Issuer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    verifier = verifier_for(issuer, clock)
    token = mint(rsa_key("rsa-1"), claims_for(issuer.url))
    issuer.up = False
    with caplog.at_level(logging.WARNING, logger="kling_mcp.server.oauth"):
        assert await verifier.verify_token(token) is None
    assert "could not fetch its keys" in caplog.text
    assert issuer.url in caplog.text
    issuer.up = True
    assert await verifier.verify_token(token) is None  # not retried at once
    clock.now += 30
    assert await verifier.verify_token(token) is not None


async def test_known_keys_keep_working_while_the_issuer_is_down(issuer: Issuer) -> None:
    clock = Clock()
    verifier = verifier_for(issuer, clock)
    token = mint(rsa_key("rsa-1"), claims_for(issuer.url))
    assert await verifier.verify_token(token) is not None
    issuer.up = False
    clock.now += 600  # the TTL is over, but the refresh fails
    assert await verifier.verify_token(token) is not None
    assert await verifier.verify_token(token) is not None
    assert issuer.jwks_fetches == 2  # one failed attempt, not one per token
    clock.now += 30
    assert await verifier.verify_token(token) is not None
    assert issuer.jwks_fetches == 2  # the failed fetch forgot the jwks_uri: discovery is tried again, and fails


@pytest.mark.parametrize(
    ("path", "metadata_path"),
    [
        ("", "/.well-known/oauth-authorization-server"),
        ("/tenant", "/.well-known/oauth-authorization-server/tenant"),
        ("/tenant", "/tenant/.well-known/openid-configuration"),
    ],
)
async def test_discovery_falls_back_to_oauth_metadata(issuer: Issuer, path: str, metadata_path: str) -> None:
    issuer.path, issuer.metadata_paths = path, {metadata_path}
    assert await verifier_for(issuer).verify_token(mint(rsa_key("rsa-1"), claims_for(issuer.url))) is not None


def test_discovery_urls_follow_oidc_then_rfc_8414() -> None:
    assert discovery_urls("https://id.test/") == [
        "https://id.test/.well-known/openid-configuration",
        "https://id.test/.well-known/oauth-authorization-server",
    ]
    assert discovery_urls("https://id.test/t1") == [
        "https://id.test/t1/.well-known/openid-configuration",
        "https://id.test/.well-known/oauth-authorization-server/t1",
        "https://id.test/.well-known/openid-configuration/t1",
    ]


async def test_metadata_naming_another_issuer_is_not_used(issuer: Issuer) -> None:
    issuer.named_issuer = "https://evil.test"
    assert await verifier_for(issuer).verify_token(mint(rsa_key("rsa-1"), claims_for(issuer.url))) is None
    assert issuer.jwks_fetches == 0


# --- wiring: settings, the server over HTTP, protected-resource metadata ----------------------------------------


def test_the_audience_defaults_to_the_public_mcp_url() -> None:
    options = auth_options(Settings(public_url="https://video.test", oauth_issuer="https://id.test/"))
    assert isinstance(options["token_verifier"], JwtVerifier)
    assert options["token_verifier"].audience == "https://video.test/mcp"
    assert str(options["auth"].resource_server_url) == "https://video.test/mcp"
    assert str(options["auth"].issuer_url) == "https://id.test/"
    configured = auth_options(
        Settings(public_url="https://video.test", oauth_issuer="https://id.test", oauth_audience="api://video")
    )
    assert configured["token_verifier"].audience == "api://video"
    assert str(configured["auth"].resource_server_url) == "https://video.test/mcp"


def test_static_tokens_and_an_issuer_are_tried_in_that_order() -> None:
    options = auth_options(Settings(auth_tokens=(STATIC,), oauth_issuer="https://id.test", oauth_audience=AUDIENCE))
    assert isinstance(options["token_verifier"], FirstMatch)
    assert auth_options(Settings()) == {}


async def status_for(http: httpx2.AsyncClient, token: str | None) -> int:
    headers = {**MCP_HEADERS, **({"Authorization": f"Bearer {token}"} if token else {})}
    return (await http.post("/mcp", json=MCP_REQUEST, headers=headers)).status_code


async def test_over_http_issuer_tokens_work_and_bad_ones_get_401(settings: Settings, issuer: Issuer) -> None:
    secured = settings.with_(auth_tokens=(STATIC,), oauth_issuer=issuer.url, oauth_audience=AUDIENCE)
    token = mint(ec_key("ec-1"), claims_for(issuer.url, sub="bob"))
    async with serve(secured) as base, httpx2.AsyncClient(base_url=base, timeout=30) as http:
        # First, on a cold cache: the one fetch finds no such key, and nothing is fetched again.
        unknown = await status_for(http, refused_tokens(issuer.url)["unknown kid"])
        assert (unknown, issuer.jwks_fetches) == (401, 1)
        refused = {reason: await status_for(http, bad) for reason, bad in refused_tokens(issuer.url).items()}
        missing = await http.post("/mcp", json=MCP_REQUEST, headers=MCP_HEADERS)
        accepted = (await status_for(http, token), await status_for(http, STATIC))
        metadata = (await http.get("/.well-known/oauth-protected-resource/mcp")).json()
        async with mcp_client(base, token) as client:
            result = await client.call_tool("generate_video", {"prompt": "signed in", "duration": 3})
    assert refused == dict.fromkeys(refused, 401)
    assert missing.status_code == 401
    challenge = missing.headers["www-authenticate"]
    assert 'resource_metadata="https://video.test/.well-known/oauth-protected-resource/mcp"' in challenge
    assert accepted == (200, 200)
    assert issuer.jwks_fetches == 1
    assert metadata["resource"] == AUDIENCE
    assert metadata["authorization_servers"] == [issuer.url]
    assert result.structured_content is not None
    assert result.structured_content["status"] == "completed"


async def test_with_static_tokens_only_no_authorization_server_is_claimed(settings: Settings) -> None:
    async with serve(settings.with_(auth_tokens=(STATIC,))) as base, httpx2.AsyncClient(base_url=base) as http:
        missing = await http.post("/mcp", json=MCP_REQUEST, headers=MCP_HEADERS)
        metadata = await http.get("/.well-known/oauth-protected-resource/mcp")
        root_metadata = await http.get("/.well-known/oauth-protected-resource")
        accepted = await status_for(http, STATIC)
    assert missing.status_code == 401
    assert "resource_metadata" not in missing.headers["www-authenticate"]
    assert (metadata.status_code, root_metadata.status_code) == (404, 404)
    assert accepted == 200


async def test_issuer_signed_owners_see_only_their_own_jobs(settings: Settings, issuer: Issuer) -> None:
    from tests.test_owners import MISSING, as_missing, as_user, made, structured, text_of

    secured = settings.with_(oauth_issuer=issuer.url, oauth_audience=AUDIENCE)
    # One app, two people: the owner is the token's subject, not its client.
    alice_token = mint(rsa_key("rsa-1"), claims_for(issuer.url, sub="alice-7f3a", client_id="team-app"))
    bob_token = mint(ec_key("ec-1"), claims_for(issuer.url, sub="bob-19c2", client_id="team-app"))
    with anyio.fail_after(60):
        async with serve(secured) as base:
            async with as_user(base, alice_token) as alice:
                hers = (await made(alice, "alice's signed heron"))["request_id"]
            async with as_user(base, bob_token) as bob:
                theirs = await bob.call_tool("check_status", {"request_id": hers})
                missing = await bob.call_tool("check_status", {"request_id": MISSING})
                listed = structured(await bob.call_tool("list_jobs", {}))["jobs"]
            async with as_user(base, alice_token) as alice_again:
                own = structured(await alice_again.call_tool("list_jobs", {}))["jobs"]
    assert theirs.is_error
    assert as_missing(text_of(theirs), hers) == as_missing(text_of(missing), MISSING)
    assert listed == []
    assert [job["request_id"] for job in own] == [hers]
