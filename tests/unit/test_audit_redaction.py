"""No password, hash, token or key reaches the trail; what does reach it is storable."""

import json

import pytest

from audit.redaction import MAX_DEPTH, REDACTED, TRUNCATED, Redactor, clean_text, key_words

JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl"
ARGON2 = "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"


@pytest.mark.parametrize("key", [
    "password", "PASSWORD", "Password", "new_password", "old_password", "passwd", "pwd",
    "password_hash", "hash", "token", "access_token", "accessToken", "refresh-token",
    "RefreshToken", "id_token", "secret", "client_secret", "clientSecret", "private_key",
    "privateKey", "key", "api_key", "apiKey", "x-api-key", "authorization", "Authorization",
    "cookie", "Set-Cookie", "credentials", "session_tokens", "signing keys", "jwt",
])
def test_secret_keys_are_redacted_in_any_spelling(key):
    assert Redactor().clean({key: "s3cr3t-value"}) == {key: REDACTED}


@pytest.mark.parametrize("key", [
    "email", "display_name", "kid", "key_id", "keyboard", "monkey", "hashtag", "hash_algorithm",
    "tokenizer", "session_id", "user_id", "changes", "client",
])
def test_ordinary_keys_are_kept(key):
    assert Redactor().clean({key: "plain"}) == {key: "plain"}


def test_redaction_reaches_into_nested_objects_and_lists():
    data = {"user": {"email": "a@b.test", "credentials": {"password": "x"}},
            "sessions": [{"id": "s1", "refresh_token": "r1"}, {"id": "s2", "Token": "r2"}],
            "keys": ["k1", "k2"]}
    assert Redactor().clean(data) == {
        "user": {"email": "a@b.test", "credentials": REDACTED},
        "sessions": [{"id": "s1", "refresh_token": REDACTED}, {"id": "s2", "Token": REDACTED}],
        "keys": REDACTED,
    }


@pytest.mark.parametrize("value", [
    JWT, f"Bearer {JWT}", "bearer abcdefghijklmnopqrstuvwxyz012345", ARGON2,
    "$2b$12$abcdefghijklmnopqrstuu5a1Yq2ZlE3xGvRk4Gk5Zb2c1d2e3f4g",
    "pbkdf2_sha256$600000$salt$hash=",
    "-----BEGIN PRIVATE KEY-----\nMIIE...\n-----END PRIVATE KEY-----",
    "see -----BEGIN EC PRIVATE KEY----- inside",
])
def test_values_that_look_like_secrets_are_redacted_under_any_key(value):
    assert Redactor().clean({"note": value, "list": [value]}) == \
        {"note": REDACTED, "list": [REDACTED]}


@pytest.mark.parametrize("value", [
    f"token={JWT}", f"access_token={JWT}&state=x", f"Authorization: Bearer {JWT}",
    "retry with authorization: bearer abcdefghijklmnopqrstuvwxyz012345 please",
    f"hash was {ARGON2}", "stored $2b$12$abcdefghijklmnopqrstuu5a1Yq2ZlE3xGvRk4Gk5Zb2c1d",
    "legacy pbkdf2_sha256$600000$salt$hash=", '{"refresh_token": "' + JWT + '"}',
])
def test_secrets_inside_a_longer_string_are_redacted(value):
    assert Redactor().clean({"note": value}) == {"note": REDACTED}


def test_auth_refresh_tokens_are_redacted_alone_or_inside_a_string():
    from auth.tokens import new_refresh_token

    for _ in range(200):  # random: every shape auth issues
        token = new_refresh_token()
        assert Redactor().clean({"note": token, "url": f"/cb?refresh={token}&x=1",
                                 "list": [f"got {token}."]}) == \
            {"note": REDACTED, "url": REDACTED, "list": [REDACTED]}


@pytest.mark.parametrize("value", [
    "user.password_changed", "3f2b8c1e-7d4a-4c2b-9e1f-0a6b5c4d3e2f",
    "billing_reader_for_the_eu_team_abcdefghijkl",
    "a" * 43, "ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJKLMNOPQ", "0123456789" * 5,
    "x" * 44 + "Y", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
])
def test_lower_case_names_ids_and_hex_digests_are_not_taken_for_refresh_tokens(value):
    assert Redactor().clean({"note": value}) == {"note": value}


@pytest.mark.parametrize("value", [
    "bearer of bad news", "Basic plan", "eyJust a word", "$20 off", "-----BEGIN CERTIFICATE-----",
    "the keyJar.json.gz file", "price: $2b$ and more",
])
def test_ordinary_values_are_kept(value):
    assert Redactor().clean({"note": value}) == {"note": value}


def test_a_deployment_adds_its_own_words_and_keeps_the_built_in_ones():
    redactor = Redactor(["ssn", "CardNumber"])
    assert redactor.clean({"ssn": "1", "card_number": "4111", "password": "p", "name": "n"}) == \
        {"ssn": REDACTED, "card_number": REDACTED, "password": REDACTED, "name": "n"}


def test_key_words_split_every_spelling_alike():
    assert key_words("refreshToken") == key_words("refresh-token") == \
        key_words("REFRESH_TOKEN") == ["refresh", "token"]


def test_text_postgres_cannot_store_is_replaced():
    assert clean_text("a\x00b") == "a\ufffdb"
    assert clean_text("x\ud800y") == "x\\ud800y"
    assert clean_text("plain é") == "plain é"
    cleaned = Redactor().clean({"k\x00": "v\x00", "lone": "\udfff"})
    assert cleaned == {"k\ufffd": "v\ufffd", "lone": "\\udfff"}
    json.dumps(cleaned).encode("utf-8")


def test_non_finite_numbers_become_text_and_others_are_kept():
    assert Redactor().clean({"a": float("nan"), "b": float("inf"), "c": 1.5, "d": 10**30,
                             "e": True, "f": None}) == \
        {"a": "nan", "b": "inf", "c": 1.5, "d": 10**30, "e": True, "f": None}


def test_deep_nesting_is_cut():
    deep = current = {}
    for _ in range(MAX_DEPTH + 10):
        current["down"] = {}
        current = current["down"]
    cleaned = Redactor().clean(deep)
    depth = 0
    while isinstance(cleaned, dict):
        cleaned, depth = cleaned["down"], depth + 1
    assert cleaned == TRUNCATED
    assert depth == MAX_DEPTH


def test_the_input_is_not_modified():
    data = {"password": "p", "inner": {"token": "t"}}
    Redactor().clean(data)
    assert data == {"password": "p", "inner": {"token": "t"}}


def test_non_json_values_become_text():
    class Money:
        def __str__(self):
            return "12.00 EUR"

    assert Redactor().clean({1: "one", "t": (1, 2), "price": Money()}) == \
        {"1": "one", "t": [1, 2], "price": "12.00 EUR"}
