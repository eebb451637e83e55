"""Access tokens: what is issued, and every way verify_access_token refuses a token."""

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from auth import keys, tokens
from shared import contracts
from shared.errors import Unauthorized
from tests.support.auth_helpers import claims, forge, sqlite_database

SECRET = "unit-test-key-encryption-secret-0123456789"
SETTINGS = tokens.TokenSettings(issuer="plinth", audience="plinth-api", access_ttl=900,
                                leeway=30)


@pytest.fixture(scope="module")
def ring(tmp_path_factory):
    engine, sessions = sqlite_database(tmp_path_factory.mktemp("tokens"))
    keyring = keys.Keyring(sessions, keys.KeyCipher(SECRET))
    keyring.signer()
    yield keyring
    engine.dispose()


def b64(data):
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def verify(token, ring):
    return tokens.verify_access_token(token, ring, SETTINGS)


def reason_of(token, ring):
    with pytest.raises(Unauthorized) as excinfo:
        verify(token, ring)
    assert excinfo.value.message.startswith("invalid access token")
    return excinfo.value.details["reason"]


def test_issued_token_carries_every_claim_and_verifies(ring):
    token, issued = tokens.issue_access_token(ring.signer(), SETTINGS, "user-1", "session-1")
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "kid": ring.signer().kid, "typ": "at+jwt"}
    assert set(issued) == set(contracts.ISSUED_CLAIMS)
    assert issued["sub"] == "user-1" and issued["sid"] == "session-1"
    assert issued["iss"] == "plinth" and issued["aud"] == "plinth-api"
    assert issued["exp"] - issued["iat"] == 900 and issued["nbf"] == issued["iat"]
    assert abs(issued["iat"] - time.time()) < 5
    assert verify(token, ring) == issued


def test_every_token_gets_its_own_jti(ring):
    jtis = {tokens.issue_access_token(ring.signer(), SETTINGS, "u", "s")[1]["jti"]
            for _ in range(20)}
    assert len(jtis) == 20


def test_token_is_verifiable_with_the_published_jwks_alone(ring):
    """What the gateway does: PyJWT and the JWKS, nothing of ours."""
    token, _ = tokens.issue_access_token(ring.signer(), SETTINGS, "user-1", "session-1")
    jwk_set = jwt.PyJWKSet.from_dict(ring.jwks())
    key = jwk_set[jwt.get_unverified_header(token)["kid"]]
    decoded = jwt.decode(token, key.key, algorithms=["RS256"], audience="plinth-api",
                         issuer="plinth")
    assert decoded["sub"] == "user-1"


def test_token_with_a_bad_signature_is_refused(ring):
    token, _ = tokens.issue_access_token(ring.signer(), SETTINGS, "u", "s")
    head, body, signature = token.split(".")
    flipped = ("A" if signature[10] != "A" else "B")
    assert reason_of(f"{head}.{body}.{signature[:10]}{flipped}{signature[11:]}",
                     ring) == "signature"


def test_token_with_altered_claims_is_refused(ring):
    token, issued = tokens.issue_access_token(ring.signer(), SETTINGS, "u", "s")
    head, _, signature = token.split(".")
    assert reason_of(f"{head}.{b64({**issued, 'sub': 'admin'})}.{signature}",
                     ring) == "signature"


def test_token_signed_by_another_key_under_our_kid_is_refused(ring):
    impostor = keys.Signer(ring.signer().kid, "RS256", keys.generate("RS256"))
    assert reason_of(forge(impostor, claims()), ring) == "signature"


def test_unsigned_alg_none_token_is_refused(ring):
    header = {"alg": "none", "kid": ring.signer().kid, "typ": "at+jwt"}
    assert reason_of(f"{b64(header)}.{b64(claims())}.", ring) == "algorithm"


def test_hmac_token_keyed_with_our_public_key_is_refused(ring):
    """The classic algorithm confusion: HS256 with the public key as the shared secret."""
    signer = ring.signer()
    pem = signer.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    signing_input = f"{b64({'alg': 'HS256', 'kid': signer.kid, 'typ': 'at+jwt'})}." \
                    f"{b64(claims())}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    assert reason_of(f"{signing_input}.{b64(mac)}", ring) == "algorithm"


@pytest.mark.parametrize("alg", ["PS256", "RS512", "ES256"])
def test_token_naming_another_algorithm_than_its_key_is_refused(ring, alg):
    other = keys.generate("ES256") if alg == "ES256" else ring.signer().private_key
    token = jwt.encode(claims(), other, algorithm=alg,
                       headers={"kid": ring.signer().kid, "typ": "at+jwt"})
    assert reason_of(token, ring) == "algorithm"


def test_expired_token_is_refused(ring):
    now = int(time.time())
    token = forge(ring.signer(), claims(iat=now - 3600, nbf=now - 3600, exp=now - 60))
    assert reason_of(token, ring) == "expired"


def test_token_expired_within_the_clock_leeway_is_accepted(ring):
    now = int(time.time())
    token = forge(ring.signer(), claims(iat=now - 900, nbf=now - 900, exp=now - 10))
    assert verify(token, ring)["exp"] == now - 10


def test_token_not_valid_before_a_future_nbf_is_refused(ring):
    now = int(time.time())
    token = forge(ring.signer(), claims(nbf=now + 3600, exp=now + 7200))
    assert reason_of(token, ring) == "not_yet_valid"


def test_token_issued_in_the_future_is_refused(ring):
    now = int(time.time())
    token = forge(ring.signer(), claims(iat=now + 3600, exp=now + 7200))
    assert reason_of(token, ring) == "not_yet_valid"


def test_token_from_another_issuer_is_refused(ring):
    assert reason_of(forge(ring.signer(), claims(iss="https://evil.example")), ring) == "issuer"


@pytest.mark.parametrize("aud", ["another-api", ["another-api", "third-api"]])
def test_token_for_another_audience_is_refused(ring, aud):
    assert reason_of(forge(ring.signer(), claims(aud=aud)), ring) == "audience"


def test_token_whose_audience_list_includes_ours_is_accepted(ring):
    assert verify(forge(ring.signer(), claims(aud=["other", "plinth-api"])), ring)


def test_token_naming_an_unknown_kid_is_refused(ring):
    signer = ring.signer()
    assert reason_of(forge(keys.Signer("no-such-kid", signer.alg, signer.private_key), claims()),
                     ring) == "unknown_key"


@pytest.mark.parametrize("kid", [None, ""])
def test_token_without_a_kid_is_refused(ring, kid):
    signer = ring.signer()
    token = jwt.encode(claims(), signer.private_key, algorithm="RS256",
                       headers={"typ": "at+jwt", **({"kid": kid} if kid is not None else {})})
    assert jwt.get_unverified_header(token).get("kid") == kid
    assert reason_of(token, ring) == "unknown_key"


def test_token_whose_kid_is_not_a_string_is_refused(ring):
    signer = ring.signer()
    signing_input = f"{b64({'alg': 'RS256', 'kid': 42, 'typ': 'at+jwt'})}.{b64(claims())}"
    signature = jwt.get_algorithm_by_name("RS256").sign(signing_input.encode(),
                                                        signer.private_key)
    assert reason_of(f"{signing_input}.{b64(signature)}", ring) == "malformed"


@pytest.mark.parametrize("typ", ["JWT", "id+jwt", "refresh", None])
def test_token_of_another_type_in_the_header_is_refused(ring, typ):
    signer = ring.signer()
    header = {"kid": signer.kid, **({"typ": typ} if typ else {})}
    token = jwt.encode(claims(), signer.private_key, algorithm="RS256", headers=header)
    if typ is None:  # PyJWT adds typ "JWT" unless told otherwise
        head = jwt.get_unverified_header(token)
        assert head.get("typ") in (None, "JWT")
    assert reason_of(token, ring) == "type"


def test_full_media_type_in_the_header_is_accepted(ring):
    assert verify(forge(ring.signer(), claims(), typ="application/at+jwt"), ring)


@pytest.mark.parametrize("typ", ["refresh", "JWT", None])
def test_token_whose_typ_claim_is_not_an_access_token_is_refused(ring, typ):
    payload = claims()
    payload.pop("typ")
    if typ is not None:
        payload["typ"] = typ
    expected = "claims" if typ is None else "type"
    assert reason_of(forge(ring.signer(), payload), ring) == expected


@pytest.mark.parametrize("missing", ["iss", "aud", "sub", "iat", "nbf", "exp", "jti", "sid"])
def test_token_missing_a_required_claim_is_refused(ring, missing):
    payload = claims()
    payload.pop(missing)
    assert reason_of(forge(ring.signer(), payload), ring) == "claims"


@pytest.mark.parametrize("claim,value", [("sub", 42), ("jti", 7), ("sid", ["x"]),
                                         ("sub", ""), ("iat", "yesterday")])
def test_token_with_a_claim_of_the_wrong_type_is_refused(ring, claim, value):
    assert reason_of(forge(ring.signer(), claims(**{claim: value})), ring) == "claims"


@pytest.mark.parametrize("token", [
    "", "garbage", "a.b", "a.b.c", "....", "eyJhbGciOiJSUzI1NiJ9.e30", "x" * 9000, None, 42,
    b"bytes.are.not.tokens", {"token": "x"},
])
def test_malformed_token_is_refused(ring, token):
    assert reason_of(token, ring) == "malformed"


def test_token_whose_payload_is_not_json_is_refused(ring):
    signer = ring.signer()
    header = b64({"alg": "RS256", "kid": signer.kid, "typ": "at+jwt"})
    body = b64(b"not json at all")
    signature = jwt.get_algorithm_by_name("RS256").sign(f"{header}.{body}".encode(),
                                                        signer.private_key)
    assert reason_of(f"{header}.{body}.{b64(signature)}", ring) == "malformed"


def test_refresh_tokens_are_256_random_bits_url_safe_and_unique():
    issued = {tokens.new_refresh_token() for _ in range(500)}
    assert len(issued) == 500
    for token in list(issued)[:20]:
        assert tokens.looks_like_refresh_token(token)
        assert len(base64.urlsafe_b64decode(token + "=")) == 32


@pytest.mark.parametrize("value", ["", "short", "x" * 43 + "=", "!" * 43, None, 42, "a" * 44])
def test_strings_that_are_not_refresh_tokens_are_recognised(value):
    assert not tokens.looks_like_refresh_token(value)


def test_refresh_token_hash_is_sha256_and_reveals_nothing():
    token = tokens.new_refresh_token()
    digest = tokens.hash_refresh_token(token)
    assert digest == hashlib.sha256(token.encode()).hexdigest()
    assert token not in digest and len(digest) == 64
