"""shared/contracts.py: the rules both sides of a boundary import."""

import jwt
import pytest

from shared import contracts


@pytest.mark.parametrize("name", sorted(contracts.TOKEN_ERRORS))
def test_every_token_error_named_is_one_pyjwt_raises(name):
    # matched by name so that the contracts need no PyJWT: a rename upstream must fail here
    assert issubclass(getattr(jwt.exceptions, name), jwt.InvalidTokenError)


@pytest.mark.parametrize(("error", "expected"), [
    (jwt.ExpiredSignatureError("x"), ("expired", "expired")),
    (jwt.ImmatureSignatureError("x"), ("not_yet_valid", "not valid yet")),
    (jwt.MissingRequiredClaimError("sid"), ("claims", "missing claim sid")),
    (jwt.InvalidSignatureError("x"), ("signature", "bad signature")),
    (jwt.DecodeError("x"), ("malformed", "not a well-formed access token")),
])
def test_a_pyjwt_error_becomes_the_reason_a_401_names(error, expected):
    assert contracts.token_rejection(error) == expected


def test_an_error_outside_the_table_is_a_malformed_token():
    assert contracts.token_rejection(ValueError("x"))[0] == "malformed"


@pytest.mark.parametrize(("typ", "accepted"), [
    ("at+jwt", True), ("AT+JWT", True), ("application/at+jwt", True), ("JWT", False),
    (None, False), (7, False)])
def test_the_access_token_type_header(typ, accepted):
    assert contracts.is_access_token_type(typ) is accepted


def test_auth_issues_every_claim_a_verifier_requires():
    assert set(contracts.VERIFIED_CLAIMS) <= set(contracts.ISSUED_CLAIMS)
