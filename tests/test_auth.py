"""JWT verification: every bad token is UNAUTHENTICATED over HTTP, and good ones name a user."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import SecretStr

from gql_api.auth import Authenticator, token_from_header
from gql_api.errors import Unauthenticated
from tests.conftest import TEST_SECRET

ME = "{ me { id } }"


def _token(claims: dict, key: str = TEST_SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def _claims(user_id: str, **changes) -> dict:
    now = datetime.now(UTC)
    claims = {"sub": user_id, "iat": now, "exp": now + timedelta(minutes=5)}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _handmade(claims: dict, alg: str, key: bytes | None) -> str:
    """A token PyJWT refuses to make: ``alg: none``, or HMAC keyed with a public key."""
    signing_input = f"{_b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest() if key else b""
    return f"{signing_input}.{_b64(signature)}"


def _numeric(user_id: str) -> dict:
    now = int(datetime.now(UTC).timestamp())
    return {"sub": user_id, "iat": now, "exp": now + 300}


@pytest.mark.parametrize(
    ("value", "token"),
    [("abc", "abc"), ("Bearer abc", "abc"), ("bearer   abc ", "abc"), ("", None), (None, None), ("  ", None)],
)
def test_token_from_header(value, token):
    assert token_from_header(value) == token


async def test_a_valid_token_authenticates_over_http(make_user, http):
    user = await make_user()
    for header in (_token(_claims(str(user.id))), f"Bearer {_token(_claims(str(user.id)))}"):
        response = await http.post("/graphql", json={"query": ME}, headers={"Authorization": header})
        assert response.json() == {"data": {"me": {"id": str(user.id)}}}


def _bad_tokens(user_id: str) -> dict[str, str | None]:
    now = datetime.now(UTC)
    good = _token(_claims(user_id))
    return {
        "missing": None,
        "garbage": "not-a-jwt",
        "alg none": _handmade(_numeric(user_id), "none", None),
        "other secret": _token(_claims(user_id), key="another-secret-" + "y" * 64),
        "tampered": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB"),
        "expired": _token(_claims(user_id, iat=now - timedelta(hours=2), exp=now - timedelta(hours=1))),
        "no exp": _token(_claims(user_id, exp=None)),
        "no iat": _token(_claims(user_id, iat=None)),
        "no sub": _token(_claims(user_id, sub=None)),
        "future nbf": _token(_claims(user_id, nbf=now + timedelta(hours=1))),
        "unknown user": _token(_claims("64d15f9e2e6c8f4d5a123456")),
        "sub not an id": _token(_claims("johndoe")),
        "wrong algorithm": _token(_claims(user_id), key=TEST_SECRET * 2, algorithm="HS512"),
        # Correctly signed, with time claims PyJWT lets through (it checks int(claim) only).
        "exp a numeric string": _token({**_numeric(user_id), "exp": str(_numeric(user_id)["exp"])}),
        "exp after the year 9999": _token({**_numeric(user_id), "exp": 253_402_300_800}),
        "exp far beyond": _token({**_numeric(user_id), "exp": 10**30}),
        "exp a float beyond": _token({**_numeric(user_id), "exp": 1e300}),
        "iat a numeric string": _token({**_numeric(user_id), "iat": "1"}),
        "nbf after the year 9999": _token({**_numeric(user_id), "nbf": 253_402_300_800}),
    }


async def test_every_bad_token_is_unauthenticated(make_user, http):
    user = await make_user()
    for name, token in _bad_tokens(str(user.id)).items():
        headers = {"Authorization": token} if token is not None else {}
        body = (await http.post("/graphql", json={"query": ME}, headers=headers)).json()
        assert body["data"] is None, name
        assert body["errors"][0]["extensions"] == {"code": "UNAUTHENTICATED", "statusCode": 401}, name


async def test_mutations_need_a_token_too(make_stream, http):
    stream = await make_stream()
    body = (
        await http.post(
            "/graphql",
            json={
                "query": 'mutation($s: ID!) { sendChatMessage(streamId: $s, content: "hi") { id } }',
                "variables": {"s": str(stream.id)},
            },
        )
    ).json()
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_issuer_and_audience_are_checked_when_configured(make_settings):
    authenticator = Authenticator(make_settings(jwt_issuer="https://issuer.example", jwt_audience="chat"))
    good = authenticator.issue("64d15f9e2e6c8f4d5a123456")
    assert authenticator.verify(good).user_id == "64d15f9e2e6c8f4d5a123456"
    for changes in (
        {"iss": "https://evil.example", "aud": "chat"},
        {"iss": "https://issuer.example", "aud": "other"},
        {},
    ):
        with pytest.raises(Unauthenticated):
            authenticator.verify(_token(_claims("64d15f9e2e6c8f4d5a123456", **changes)))


def test_rs256_tokens_from_another_service_verify_with_the_public_key(make_settings):
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    authenticator = Authenticator(make_settings(jwt_algorithm="RS256", jwt_public_key=SecretStr(public_pem)))

    claims = authenticator.verify(_token(_claims("64d15f9e2e6c8f4d5a123456"), key=private_pem, algorithm="RS256"))

    assert claims.user_id == "64d15f9e2e6c8f4d5a123456"
    # The classic confusion attack: HS256 signed with the public key must not pass.
    with pytest.raises(Unauthenticated):
        authenticator.verify(_handmade(_numeric("64d15f9e2e6c8f4d5a123456"), "HS256", public_pem.encode()))


def test_leeway_is_a_few_seconds_only(make_settings):
    authenticator = Authenticator(make_settings(jwt_leeway_seconds=5))
    now = datetime.now(UTC)
    just_expired = _token(_claims("64d15f9e2e6c8f4d5a123456", exp=now - timedelta(seconds=2)))
    long_expired = _token(_claims("64d15f9e2e6c8f4d5a123456", exp=now - timedelta(seconds=30)))
    assert authenticator.verify(just_expired).user_id == "64d15f9e2e6c8f4d5a123456"
    with pytest.raises(Unauthenticated, match="expired"):
        authenticator.verify(long_expired)


async def test_every_bad_token_is_refused_over_websockets_and_rest(server, make_user, make_stream, http):
    user, stream = await make_user(), await make_stream()
    for name, token in _bad_tokens(str(user.id)).items():
        headers = {"Authorization": token} if token is not None else {}
        rest = await http.get(f"/api/v1/live-stream/{stream.id}/chat/messages", headers=headers)
        assert rest.status_code == 401 and rest.json()["errors"][0] == "Authentication required", name

        async with websockets.connect(server.ws_url, subprotocols=["graphql-transport-ws"], ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "connection_init", "payload": headers}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd.code == 4403, name


def test_a_remembered_token_still_expires_and_a_changed_one_is_checked_again(make_settings):
    now = datetime.now(UTC)
    moments = [now]
    authenticator = Authenticator(make_settings(jwt_leeway_seconds=5), clock=lambda: moments[-1])
    user_id = "64d15f9e2e6c8f4d5a123456"
    token = _token(_claims(user_id, exp=now + timedelta(minutes=1)))
    assert authenticator.verify(token).user_id == user_id
    assert authenticator.verify(token).user_id == user_id  # remembered

    header, payload, signature = token.split(".")
    forged = ".".join([header, payload, signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")])
    with pytest.raises(Unauthenticated, match="not valid"):
        authenticator.verify(forged)

    moments.append(now + timedelta(minutes=1, seconds=4))  # within the leeway
    assert authenticator.verify(token).user_id == user_id
    moments.append(now + timedelta(minutes=1, seconds=6))
    with pytest.raises(Unauthenticated, match="expired"):
        authenticator.verify(token)
