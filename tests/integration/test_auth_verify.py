"""verify_token over RPC: a valid token's claims, and a typed Unauthorized for every way a
token can be wrong. Tokens are forged with the service's real key (read from PostgreSQL with
the test secret), so each one is wrong in exactly one way."""

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from auth import keys
from shared.errors import Invalid, Unauthorized
from tests.support.auth_helpers import (
    claims,
    forge,
    keyring_for,
    start_auth,
    start_platform,
    user_and_login,
)


@pytest.fixture
def signer(start_service, pg_uri):
    start_auth(start_service)
    ring, engine = keyring_for(pg_uri)
    yield ring.signer()
    engine.dispose()


def b64(data):
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def reason(rpc, token):
    with pytest.raises(Unauthorized) as excinfo:
        rpc.call("auth", "verify_token", kwargs={"access_token": token})
    return excinfo.value.details.get("reason")


def bad_tokens(signer):
    now = int(time.time())
    valid = forge(signer, claims())
    head, body, sig = valid.split(".")
    pem = signer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    hs_input = f"{b64({'alg': 'HS256', 'kid': signer.kid, 'typ': 'at+jwt'})}.{b64(claims())}"
    hs_token = f"{hs_input}.{b64(hmac.new(pem, hs_input.encode(), hashlib.sha256).digest())}"
    payload_without_typ = {k: v for k, v in claims().items() if k != "typ"}
    return {
        "bad signature": (f"{head}.{body}.{sig[:-4]}AAAA", "signature"),
        "altered claims": (f"{head}.{b64({**claims(), 'sub': 'admin'})}.{sig}", "signature"),
        "another key, our kid": (forge(keys.Signer(signer.kid, "RS256",
                                                   keys.generate("RS256")), claims()),
                                 "signature"),
        "alg none": (f"{b64({'alg': 'none', 'kid': signer.kid, 'typ': 'at+jwt'})}."
                     f"{b64(claims())}.", "algorithm"),
        "HS256 keyed with the public key": (hs_token, "algorithm"),
        "expired": (forge(signer, claims(iat=now - 7200, nbf=now - 7200, exp=now - 3600)),
                    "expired"),
        "nbf in the future": (forge(signer, claims(nbf=now + 3600, exp=now + 7200)),
                              "not_yet_valid"),
        "wrong iss": (forge(signer, claims(iss="someone-else")), "issuer"),
        "wrong aud": (forge(signer, claims(aud="another-api")), "audience"),
        "unknown kid": (forge(keys.Signer(keys.uuid7(), "RS256", signer.private_key), claims()),
                        "unknown_key"),
        "no kid": (jwt.encode(claims(), signer.private_key, algorithm="RS256",
                              headers={"typ": "at+jwt"}), "unknown_key"),
        "typ JWT in the header": (forge(signer, claims(), typ="JWT"), "type"),
        "typ claim of a refresh token": (forge(signer, claims(typ="refresh")), "type"),
        "no typ claim": (forge(signer, payload_without_typ), "claims"),
        "no exp": (forge(signer, claims(exp=None)), "claims"),
        "malformed": ("not.a.jwt", "malformed"),
        "empty": ("", "malformed"),
        "two segments": (f"{head}.{body}", "malformed"),
        "oversized": ("a" * 10000, "malformed"),
    }


def test_valid_token_returns_its_claims(start_service, rpc):
    start_platform(start_service)
    user, pair = user_and_login(rpc)
    verified = rpc.call("auth", "verify_token", kwargs={"access_token": pair["access_token"]})
    assert verified["sub"] == user["id"] and verified["typ"] == "at+jwt"
    assert set(verified) == {"iss", "aud", "sub", "iat", "nbf", "exp", "jti", "sid", "typ"}


def test_forged_valid_token_is_accepted_so_the_rejections_below_are_meaningful(signer, rpc):
    payload = claims()
    assert rpc.call("auth", "verify_token", kwargs={"access_token": forge(signer, payload)}) \
        == payload


def test_every_kind_of_bad_token_is_unauthorized_with_its_reason(signer, rpc):
    wrong = {}
    for name, (token, expected) in bad_tokens(signer).items():
        got = reason(rpc, token)
        if got != expected:
            wrong[name] = (expected, got)
    assert wrong == {}


def test_non_string_token_is_invalid_input(start_service, rpc):
    start_auth(start_service)
    with pytest.raises(Invalid) as excinfo:
        rpc.call("auth", "verify_token", kwargs={"access_token": {"token": "x"}})
    assert "access_token" in excinfo.value.details
