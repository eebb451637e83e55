"""Signing keys: encryption at rest, JWKs, the keyring's cache, rotation and its race."""

import base64
import json
from datetime import timedelta

import jwt
import pytest
import sqlalchemy as sa

from auth import keys
from auth.models import SigningKey
from shared.config import ConfigError
from shared.errors import Conflict
from tests.support.auth_helpers import sqlite_database

SECRET = "unit-test-key-encryption-secret-0123456789"
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def db(tmp_path):
    engine, sessions = sqlite_database(tmp_path)
    yield sessions
    engine.dispose()


def keyring(sessions, **options):
    return keys.Keyring(sessions, keys.KeyCipher(SECRET), **options)


def stored_rows(sessions):
    with sessions() as session:
        return session.scalars(sa.select(SigningKey).order_by(SigningKey.created_at)).all()


@pytest.mark.parametrize("alg", keys.ALGORITHMS)
def test_encrypted_private_key_decrypts_to_the_same_key(alg):
    cipher = keys.KeyCipher(SECRET)
    private_key = keys.generate(alg)
    stored = cipher.encrypt("kid-1", private_key)
    restored = cipher.decrypt("kid-1", stored)
    token = jwt.encode({"x": 1}, restored, algorithm=alg)
    assert jwt.decode(token, private_key.public_key(), algorithms=[alg]) == {"x": 1}


def test_encrypted_private_key_contains_no_key_material():
    private_key = keys.generate("RS256", 2048)
    stored = keys.KeyCipher(SECRET).encrypt("kid-1", private_key)
    der = private_key.private_bytes(keys.serialization.Encoding.DER,
                                    keys.serialization.PrivateFormat.PKCS8,
                                    keys.serialization.NoEncryption())
    raw = base64.urlsafe_b64decode(stored.split(".", 1)[1])
    assert der[40:72] not in raw
    assert "PRIVATE KEY" not in stored


def test_private_key_does_not_decrypt_with_another_secret():
    stored = keys.KeyCipher(SECRET).encrypt("kid-1", keys.generate("ES256"))
    with pytest.raises(keys.KeyDecryptionError, match="does not decrypt"):
        keys.KeyCipher("another-secret-entirely-0123456789").decrypt("kid-1", stored)


def test_private_key_does_not_decrypt_under_another_key_id():
    cipher = keys.KeyCipher(SECRET)
    stored = cipher.encrypt("kid-1", keys.generate("ES256"))
    with pytest.raises(keys.KeyDecryptionError):
        cipher.decrypt("kid-2", stored)


def test_previous_secret_still_decrypts_during_secret_rotation():
    stored = keys.KeyCipher("old-secret-0123456789-abcdefghij").encrypt("k", keys.generate("EdDSA"))
    rotated = keys.KeyCipher(SECRET, previous=["old-secret-0123456789-abcdefghij"])
    assert rotated.decrypt("k", stored) is not None


def test_tampered_or_unknown_format_ciphertext_is_refused():
    cipher = keys.KeyCipher(SECRET)
    stored = cipher.encrypt("k", keys.generate("ES256"))
    body = bytearray(base64.urlsafe_b64decode(stored.split(".", 1)[1]))
    body[-1] ^= 1
    with pytest.raises(keys.KeyDecryptionError):
        cipher.decrypt("k", "v1." + base64.urlsafe_b64encode(bytes(body)).decode())
    with pytest.raises(keys.KeyDecryptionError, match="format"):
        cipher.decrypt("k", "v0." + stored.split(".", 1)[1])


def test_empty_secret_is_refused():
    with pytest.raises(ConfigError):
        keys.KeyCipher("")


def test_unknown_algorithm_is_refused():
    with pytest.raises(ConfigError):
        keys.generate("HS256")
    with pytest.raises(ConfigError):
        keys.Keyring(None, keys.KeyCipher(SECRET), alg="none")


@pytest.mark.parametrize("alg,kty", [("RS256", "RSA"), ("ES256", "EC"), ("EdDSA", "OKP")])
def test_public_jwk_is_a_standard_public_key(alg, kty):
    private_key = keys.generate(alg)
    jwk = keys.public_jwk("kid-9", alg, private_key)
    assert jwk["kty"] == kty and jwk["kid"] == "kid-9" and jwk["alg"] == alg
    assert jwk["use"] == "sig" and "key_ops" not in jwk
    assert not PRIVATE_MEMBERS & set(jwk)
    # any JOSE library can load it and verify what the private key signed
    token = jwt.encode({"sub": "x"}, private_key, algorithm=alg)
    assert jwt.decode(token, jwt.PyJWK(json.loads(json.dumps(jwk))).key,
                      algorithms=[alg]) == {"sub": "x"}


def test_keyring_creates_one_active_key_on_an_empty_database(db):
    ring = keyring(db)
    signer = ring.signer()
    [row] = stored_rows(db)
    assert row.kid == signer.kid and row.active_slot == keys.ACTIVE and row.alg == "RS256"
    assert row.private_key_encrypted.startswith("v1.")
    assert ring.jwks() == {"keys": [row.public_jwk]}


def test_second_keyring_signs_with_the_key_the_first_created(db):
    first, second = keyring(db), keyring(db)
    assert first.signer().kid == second.signer().kid
    assert len(stored_rows(db)) == 1


def test_losing_the_first_key_insert_race_adopts_the_winner(db):
    with db() as session:
        assert keys.create_first(session, keys.KeyCipher(SECRET), "ES256") is True
    with db() as session:
        assert keys.create_first(session, keys.KeyCipher(SECRET), "ES256") is False
    [row] = stored_rows(db)
    assert keyring(db).signer().kid == row.kid


def test_keyring_refuses_to_sign_with_keys_stored_under_another_secret(db):
    kid = keyring(db).signer().kid
    stranger = keys.Keyring(db, keys.KeyCipher("a-different-secret-0123456789abcdef"))
    with pytest.raises(keys.KeyDecryptionError):
        stranger.signer()
    # verifying needs only the public keys, so that goes on
    assert stranger.verifier(kid) is not None
    assert [k["kid"] for k in stranger.jwks()["keys"]] == [kid]


class Unreachable:
    """A session factory for a database that has gone away."""

    def __call__(self):
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("connection refused"))


def test_keyring_keeps_its_cached_keys_while_the_database_is_unreachable(db):
    clock = Clock()
    ring = keyring(db, cache_seconds=5.0, clock=clock)
    kid = ring.signer().kid
    ring.sessions = Unreachable()
    clock.now += 60
    assert ring.signer().kid == kid
    assert ring.verifier(kid) is not None
    assert [k["kid"] for k in ring.jwks()["keys"]] == [kid]


def test_keyring_with_nothing_cached_reports_an_unreachable_database():
    ring = keys.Keyring(Unreachable(), keys.KeyCipher(SECRET))
    with pytest.raises(sa.exc.OperationalError):
        ring.signer()


def rotate(sessions, window=timedelta(minutes=20), alg="RS256"):
    with sessions() as session:
        row, previous = keys.rotate(session, keys.KeyCipher(SECRET), alg, window)
        session.commit()
        return row.kid, previous


def test_rotation_makes_a_new_active_key_and_keeps_the_old_one_published(db):
    ring = keyring(db, cache_seconds=0.0)
    old = ring.signer().kid
    new, previous = rotate(db)
    assert previous == old and new != old
    assert ring.signer().kid == new
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new, old]
    assert ring.verifier(old) is not None
    retired = next(r for r in stored_rows(db) if r.kid == old)
    assert retired.active_slot is None and retired.private_key_encrypted is None
    assert retired.publish_until - retired.retired_at == timedelta(minutes=20)


def test_rotation_can_change_the_algorithm(db):
    ring = keyring(db, cache_seconds=0.0)
    ring.signer()
    rotate(db, alg="EdDSA")
    assert ring.signer().alg == "EdDSA"
    assert {k["kty"] for k in ring.jwks()["keys"]} == {"RSA", "OKP"}


def test_retired_key_leaves_the_jwks_once_its_tokens_have_expired(db):
    ring = keyring(db, cache_seconds=0.0)
    old = ring.signer().kid
    new, _ = rotate(db)
    with db() as session:
        session.execute(sa.update(SigningKey).where(SigningKey.kid == old)
                        .values(publish_until=keys.now_utc() - timedelta(seconds=1)))
        session.commit()
    assert [k["kid"] for k in ring.jwks()["keys"]] == [new]
    assert ring.verifier(old) is None
    with db() as session:
        assert keys.prune(session, keys.now_utc()) == 1
        session.commit()
    assert [r.kid for r in stored_rows(db)] == [new]


def test_cached_verifier_stops_at_publish_until_without_a_reload(db, monkeypatch):
    clock = Clock()
    ring = keyring(db, cache_seconds=60.0, clock=clock)
    old = ring.signer().kid
    rotate(db, window=timedelta(minutes=5))
    ring.forget()
    assert ring.verifier(old) is not None
    later = keys.now_utc() + timedelta(minutes=5, seconds=1)
    monkeypatch.setattr(keys, "now_utc", lambda: later)
    assert ring.verifier(old) is None  # the cache is fresh, but the key's time is up
    assert old not in [k["kid"] for k in ring.jwks()["keys"]]


def test_rotation_that_read_a_superseded_active_key_is_a_conflict(db, monkeypatch):
    keyring(db).signer()
    with db() as session:
        stale = keys.active_row(session)
        session.expunge(stale)
    winner, _ = rotate(db)  # another rotation commits after ours read the active key
    monkeypatch.setattr(keys, "active_row", lambda session: stale)
    with db() as session, pytest.raises(Conflict):
        keys.rotate(session, keys.KeyCipher(SECRET), "ES256", timedelta(minutes=1))
    [active] = [r for r in stored_rows(db) if r.active_slot == keys.ACTIVE]
    assert active.kid == winner


def test_second_active_key_is_refused_by_the_database(db):
    keyring(db).signer()
    with db() as session:
        row, _ = keys.new_key(keys.KeyCipher(SECRET), "ES256", 2048, keys.now_utc())
        session.add(row)
        with pytest.raises(sa.exc.IntegrityError):
            session.commit()


def test_keyring_rereads_the_active_key_after_its_cache_time(db):
    clock = Clock()
    ring = keyring(db, cache_seconds=5.0, clock=clock)
    old = ring.signer().kid
    new, _ = rotate(db)
    assert ring.signer().kid == old  # cached
    clock.now += 5.0
    assert ring.signer().kid == new


def test_kid_minted_after_the_last_look_is_looked_up_at_once(db):
    clock = Clock()
    ring = keyring(db, cache_seconds=60.0, miss_interval=0.5, fresh_interval=0.01, clock=clock)
    ring.signer()
    clock.now += 0.02
    new, _ = rotate(db)  # another instance rotates and its tokens arrive here
    assert ring.verifier(new) is not None


def test_made_up_kids_make_the_keyring_look_at_most_every_miss_interval(db, monkeypatch):
    clock = Clock()
    ring = keyring(db, cache_seconds=60.0, miss_interval=0.5, fresh_interval=0.01, clock=clock)
    ring.signer()
    looks = []
    original = ring._reload
    monkeypatch.setattr(ring, "_reload", lambda: (looks.append(1), original()))
    for _ in range(5):
        clock.now += 0.02
        assert ring.verifier("made-up-kid") is None
        assert ring.verifier("01890000-0000-7000-8000-000000000000") is None  # a 2023 uuid7
    assert looks == []
    clock.now += 0.5
    assert ring.verifier("made-up-kid") is None
    assert looks == [1]


def test_kid_time_is_read_from_uuid7_only():
    kid = keys.uuid7()
    assert abs(keys.minted_at(kid) - keys.time.time()) < 5
    assert keys.minted_at("0123abcd-0000-4000-8000-000000000000") is None  # a uuid4
    assert keys.minted_at("not-a-uuid") is None and keys.minted_at(None) is None


def test_retire_window_covers_lifetime_cache_and_skew():
    assert keys.retire_window(900, 5, 30) == timedelta(seconds=935)
