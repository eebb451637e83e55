"""Security: access tokens and sessions at the gateway (issue 9, items 6 and 7).

Forged tokens are signed with auth's real key (decrypted from its table with the platform's
secret), so each is valid in every respect but the one under test; a control token minted the
same way and left intact must be accepted, or the refusals would prove nothing.
"""

import hashlib
import hmac
import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.fault_helpers import (
    PASSWORD,
    b64url,
    claims_for,
    mint,
    signing_key,
    until,
)
from tests.support.platform import API, bearer, platform_fixture

platform = platform_fixture(name="sec-tokens")

ME = f"{API}/users/me"
REVOCATION_DELAY = 5.0  # seconds within which an ended session's access token is refused
NEW_PASSWORD = "amber-Falcon-77-river"


@pytest.fixture(scope="module")
def key(db):
    return signing_key(db)


@pytest.fixture(scope="module")
def owner(platform):
    """A user with a live session: (user, token pair, claims of the access token)."""
    user, pair = platform.new_user()
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    return user, pair, claims


def me(platform, token):
    return platform.http.get(platform.url(ME), headers=bearer(token), timeout=10)


def assert_refused(response):
    assert response.status_code == 401, (response.status_code, response.text)
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "email" not in response.json()


def hmac_token(header, claims, secret):
    signing_input = f"{b64url(header)}.{b64url(claims)}".encode()
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return f"{signing_input.decode()}.{b64url(signature)}"


# -- item 6: forged, broken and stale tokens --------------------------------------------------
def test_a_token_minted_with_the_real_key_and_right_claims_is_accepted(platform, key, owner):
    """The control: the forgeries below differ from this token in one respect each."""
    user, _, claims = owner
    token = mint(key, claims_for(user["id"], claims["sid"]))
    response = me(platform, token)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == user["id"]


def _forgeries(key, user_id, session_id, real_token, other_user_id):
    now = int(time.time())
    good = claims_for(user_id, session_id, now=now)
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    head, payload, signature = real_token.split(".")
    tampered = {**jwt.decode(real_token, options={"verify_signature": False}),
                "sub": other_user_id}
    return {
        "alg_none": f"{b64url({'alg': 'none', 'typ': 'at+jwt', 'kid': key.kid})}."
                    f"{b64url(good)}.",
        "alg_none_capitalised": f"{b64url({'alg': 'None', 'typ': 'at+jwt', 'kid': key.kid})}."
                                f"{b64url(good)}.",
        "hmac_with_the_public_key": hmac_token(
            {"alg": "HS256", "typ": "at+jwt", "kid": key.kid}, good, public_pem),
        "hmac_with_the_public_jwk": hmac_token(
            {"alg": "HS256", "typ": "at+jwt", "kid": key.kid}, good,
            jwt.utils.base64url_decode(key.public_jwk["n"])),
        "expired": mint(key, {**good, "iat": now - 7200, "nbf": now - 7200,
                              "exp": now - 3600}),
        "not_before_in_the_future": mint(key, {**good, "nbf": now + 3600,
                                               "exp": now + 4500}),
        "wrong_issuer": mint(key, {**good, "iss": "https://evil.example"}),
        "wrong_audience": mint(key, {**good, "aud": "some-other-api"}),
        "no_audience": mint(key, {k: v for k, v in good.items() if k != "aud"}),
        "no_expiry": mint(key, {k: v for k, v in good.items() if k != "exp"}),
        "unknown_kid_own_key": jwt.encode(good, stranger, algorithm="RS256",
                                          headers={"kid": str(uuid.uuid4()), "typ": "at+jwt"}),
        "real_key_unknown_kid": mint(key, good, kid=str(uuid.uuid4())),
        "stranger_key_real_kid": jwt.encode(good, stranger, algorithm="RS256",
                                            headers={"kid": key.kid, "typ": "at+jwt"}),
        "no_kid": mint(key, good, kid=None),
        "tampered_payload": f"{head}.{b64url(tampered)}.{signature}",
        "signature_stripped": f"{head}.{payload}.",
        "wrong_typ_jwt": mint(key, good, typ="JWT"),
        "no_typ": mint(key, good, typ=None),
        "id_token_typ": mint(key, good, typ="id_token+jwt"),
        "other_rsa_alg_same_key": mint(key, good, alg="RS512"),
        "subject_not_a_user_id": mint(key, {**good, "sub": "admin"}),
        "garbage": "not.a.token",
        "oversized": "a" * 8100,  # under gunicorn's header limit (8190), over no other
    }


FORGERIES = ["alg_none", "alg_none_capitalised", "hmac_with_the_public_key",
             "hmac_with_the_public_jwk", "expired", "not_before_in_the_future", "wrong_issuer",
             "wrong_audience", "no_audience", "no_expiry", "unknown_kid_own_key",
             "real_key_unknown_kid", "stranger_key_real_kid", "no_kid", "tampered_payload",
             "signature_stripped", "wrong_typ_jwt", "no_typ", "id_token_typ",
             "other_rsa_alg_same_key", "subject_not_a_user_id", "garbage", "oversized"]


@pytest.fixture(scope="module")
def forgeries(platform, key, owner):
    user, pair, claims = owner
    admin_id = platform.rpc_client().call("identity", "get_user_by_email",
                                          kwargs={"email": platform.admin_email})["id"]
    return _forgeries(key, user["id"], claims["sid"], pair["access_token"], admin_id)


@pytest.mark.parametrize("kind", FORGERIES)
def test_a_forged_or_invalid_token_is_refused_with_401(platform, forgeries, kind):
    response = me(platform, forgeries[kind])
    assert_refused(response)
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_the_forgery_list_covers_every_case(forgeries):
    assert sorted(forgeries) == sorted(FORGERIES)


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b",
                                    "Token abc.def.ghi"])
def test_a_malformed_authorization_header_is_refused_with_401(platform, header):
    assert_refused(platform.http.get(platform.url(ME), headers={"Authorization": header},
                                     timeout=10))


def _admin(platform):
    return bearer(platform.admin_token())


@pytest.mark.parametrize("action", ["disable", "delete"])
def test_the_token_of_a_disabled_or_deleted_user_is_refused_with_401(platform, action):
    user, pair = platform.new_user()
    assert me(platform, pair["access_token"]).status_code == 200
    if action == "disable":
        done = platform.http.post(platform.url(f"{API}/users/{user['id']}/disable"),
                                  headers=_admin(platform), timeout=10)
        assert done.status_code == 200 and done.json()["status"] == "disabled"
    else:
        done = platform.http.delete(platform.url(f"{API}/users/{user['id']}"),
                                    headers=_admin(platform), timeout=10)
        assert done.status_code == 204
    # the revocation travels as events (identity -> auth -> gateway): effective within seconds
    (response,), _ = until(lambda: (r := me(platform, pair["access_token"])).status_code == 401
                           and (r,), timeout=REVOCATION_DELAY,
                           what=f"the {action}d user's token to be refused")
    assert_refused(response)
    # on every route, not only the first one tried
    assert_refused(platform.http.get(platform.url(f"{API}/authz/check"),
                                     params={"permission": "profile:read"},
                                     headers=bearer(pair["access_token"]), timeout=10))
    assert platform.http.post(platform.url(f"{API}/auth/refresh"), timeout=10, json={
        "refresh_token": pair["refresh_token"]}).status_code == 401


# -- item 7: sessions ---------------------------------------------------------------------------
def refresh(platform, refresh_token):
    return platform.http.post(platform.url(f"{API}/auth/refresh"), timeout=10,
                              json={"refresh_token": refresh_token})


def access_refused_soon(platform, token, what):
    # a tuple: a Response is falsy when it is an error
    (response,), _ = until(lambda: (r := me(platform, token)).status_code == 401 and (r,),
                           timeout=REVOCATION_DELAY, what=what)
    assert_refused(response)


def test_refresh_token_reuse_revokes_the_whole_family_and_only_it(platform):
    user, first = platform.new_user()
    other = platform.login(user["email"], PASSWORD)  # a second session of the same user
    second = refresh(platform, first["refresh_token"])
    assert second.status_code == 200
    second = second.json()
    assert me(platform, second["access_token"]).status_code == 200

    reused = refresh(platform, first["refresh_token"])
    assert reused.status_code == 401
    assert reused.json()["type"].endswith("unauthorized")
    assert "access_token" not in reused.text
    # the thief's and the owner's descendants are all dead
    assert refresh(platform, second["refresh_token"]).status_code == 401
    access_refused_soon(platform, second["access_token"], "the revoked family's access token")
    # the user's other session is not part of the family
    assert me(platform, other["access_token"]).status_code == 200
    assert refresh(platform, other["refresh_token"]).status_code == 200


def test_logout_ends_this_session_only(platform):
    user, one = platform.new_user()
    two = platform.login(user["email"], PASSWORD)
    out = platform.http.post(platform.url(f"{API}/auth/logout"),
                             headers=bearer(one["access_token"]), timeout=10)
    assert out.status_code == 204
    assert refresh(platform, one["refresh_token"]).status_code == 401
    access_refused_soon(platform, one["access_token"], "the logged-out access token")
    assert me(platform, two["access_token"]).status_code == 200
    assert refresh(platform, two["refresh_token"]).status_code == 200


def test_logout_all_ends_every_session(platform):
    user, one = platform.new_user()
    two = platform.login(user["email"], PASSWORD)
    out = platform.http.post(platform.url(f"{API}/auth/logout-all"),
                             headers=bearer(two["access_token"]), timeout=10)
    assert out.status_code == 204
    for pair in (one, two):
        assert refresh(platform, pair["refresh_token"]).status_code == 401
        access_refused_soon(platform, pair["access_token"], "an access token after logout-all")
    # logging in again starts a fresh session
    assert me(platform, platform.login(user["email"], PASSWORD)["access_token"]) \
        .status_code == 200


def test_a_password_change_ends_every_session(platform):
    user, one = platform.new_user()
    two = platform.login(user["email"], PASSWORD)
    changed = platform.http.post(platform.url(f"{API}/users/me/password"), timeout=10,
                                 headers=bearer(one["access_token"]),
                                 json={"old_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert changed.status_code == 204
    for pair in (one, two):
        until(lambda p=pair: refresh(platform, p["refresh_token"]).status_code == 401,
              timeout=5, what="the old sessions' revocation")
        access_refused_soon(platform, pair["access_token"], "an access token of an old session")
    assert platform.login(user["email"], PASSWORD, expect=401)
    assert me(platform, platform.login(user["email"], NEW_PASSWORD)["access_token"]) \
        .status_code == 200


def test_a_refresh_token_is_not_an_access_token_nor_the_reverse(platform):
    _, pair = platform.new_user()
    assert_refused(me(platform, pair["refresh_token"]))
    as_refresh = refresh(platform, pair["access_token"])
    # refused as input: too long for a refresh token (400) or unknown to auth (401)
    assert as_refresh.status_code in (400, 401), as_refresh.text
    assert "access_token" not in as_refresh.json()
    # and neither attempt cost the real pair anything
    assert me(platform, pair["access_token"]).status_code == 200
    assert refresh(platform, pair["refresh_token"]).status_code == 200


def test_an_ended_session_stays_refused_by_a_gateway_started_after_it_ended(platform):
    """Runs last (it restarts the gateway): a new gateway process learns the sessions revoked
    before it started from auth, not only from the events it hears."""
    _, pair = platform.new_user()
    out = platform.http.post(platform.url(f"{API}/auth/logout"),
                             headers=bearer(pair["access_token"]), timeout=10)
    assert out.status_code == 204
    access_refused_soon(platform, pair["access_token"], "the logged-out access token")
    platform.restart_process("gateway")
    platform.http.close()
    assert_refused(me(platform, pair["access_token"]))
    # while a live session's token is still accepted by the new gateway
    _, live = platform.new_user()
    assert me(platform, live["access_token"]).status_code == 200
