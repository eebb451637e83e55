"""Token signing keys: generation, encryption at rest, rotation, the JWKS and a cached keyring.

Every instance signs with the one active key stored in the database. Private keys are stored
encrypted with AES-256-GCM under a key derived from ``AUTH_KEY_ENCRYPTION_SECRET``; the key id
is the associated data, so a ciphertext moved to another row does not decrypt. When a key
retires its private half is wiped and its public half stays in the JWKS until every token it
can have signed has expired.
"""

import base64
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy.exc import IntegrityError

from auth.models import ACTIVE, SigningKey
from shared.config import ConfigError
from shared.errors import Conflict
from shared.ids import is_uuid, uuid7

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256", "EdDSA")
DEFAULT_ALGORITHM = "RS256"
DEFAULT_RSA_BITS = 2048
CIPHER_VERSION = "v1"


def derive(secret, purpose):
    """A 256-bit key for ``purpose`` derived from the operator's secret (HKDF-SHA256)."""
    if not secret:
        raise ConfigError("AUTH_KEY_ENCRYPTION_SECRET is empty")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=b"plinth-auth",
                info=purpose.encode()).derive(secret.encode())


class KeyDecryptionError(ConfigError):
    """A stored private key does not decrypt with the configured secret(s)."""


class KeyCipher:
    """Encrypts private keys for storage. ``previous`` secrets still decrypt (secret rotation)."""

    PURPOSE = "signing-key-encryption"

    def __init__(self, secret, previous=()):
        self._current = AESGCM(derive(secret, self.PURPOSE))
        self._all = [self._current] + [AESGCM(derive(s, self.PURPOSE)) for s in previous if s]

    def encrypt(self, kid, private_key):
        der = private_key.private_bytes(serialization.Encoding.DER,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        nonce = os.urandom(12)
        sealed = self._current.encrypt(nonce, der, kid.encode())
        return f"{CIPHER_VERSION}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, kid, stored):
        version, _, body = (stored or "").partition(".")
        if version != CIPHER_VERSION:
            raise KeyDecryptionError(f"signing key {kid}: unknown encryption format")
        raw = base64.urlsafe_b64decode(body.encode())
        for aead in self._all:
            try:
                der = aead.decrypt(raw[:12], raw[12:], kid.encode())
            except InvalidTag:
                continue
            return serialization.load_der_private_key(der, password=None)
        raise KeyDecryptionError(
            f"signing key {kid} does not decrypt with AUTH_KEY_ENCRYPTION_SECRET: the secret "
            "differs from the one the key was stored with (list the old one in "
            "AUTH_KEY_ENCRYPTION_PREVIOUS_SECRETS to rotate it)")


def generate(alg, rsa_bits=DEFAULT_RSA_BITS):
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ConfigError(f"unsupported signing algorithm {alg!r}; use one of {', '.join(ALGORITHMS)}")


def public_jwk(kid, alg, private_key):
    """The RFC 7517 JWK of the public half, as every JWKS consumer expects it."""
    algorithm = jwt.get_algorithm_by_name(alg)
    jwk = algorithm.to_jwk(private_key.public_key(), as_dict=True)
    jwk.pop("key_ops", None)  # RFC 7517 §4.3: not together with "use"
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


@dataclass(frozen=True)
class Signer:
    kid: str
    alg: str
    private_key: object


@dataclass(frozen=True)
class Verifier:
    kid: str
    alg: str
    public_key: object
    jwk: dict
    publish_until: datetime | None  # None while the key is active

    def published_at(self, now):
        return self.publish_until is None or self.publish_until > now


def now_utc():
    return datetime.now(UTC)


def new_key(cipher, alg, rsa_bits, stamp):
    private_key = generate(alg, rsa_bits)
    kid = uuid7()
    row = SigningKey(kid=kid, alg=alg, public_jwk=public_jwk(kid, alg, private_key),
                     private_key_encrypted=cipher.encrypt(kid, private_key),
                     active_slot=ACTIVE, created_at=stamp)
    return row, private_key


def create_first(session, cipher, alg, rsa_bits=DEFAULT_RSA_BITS):
    """Insert an active key unless one exists. Several instances may race: one insert wins."""
    stamp = now_utc()
    row, _ = new_key(cipher, alg, rsa_bits, stamp)
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return False
    log.info("created the first signing key", extra={"kid": row.kid, "alg": alg})
    return True


def active_row(session):
    return session.scalars(sa.select(SigningKey).where(SigningKey.active_slot == ACTIVE)).first()


def rotate(session, cipher, alg, retire_window, rsa_bits=DEFAULT_RSA_BITS):
    """Make a new active key in ``session``'s transaction; the caller commits.

    Returns (new row, previous kid). The old key's private half is wiped and its public half
    stays published for ``retire_window``. A concurrent rotation that commits first makes
    this one a Conflict (decided by the conditional update and the unique active slot).
    """
    current = active_row(session)
    stamp = now_utc()
    row, _ = new_key(cipher, alg, rsa_bits, stamp)
    if current is not None:
        retired = session.execute(
            sa.update(SigningKey)
            .where(SigningKey.kid == current.kid, SigningKey.active_slot == ACTIVE)
            .values(active_slot=None, retired_at=stamp, private_key_encrypted=None,
                    publish_until=stamp + retire_window)
            .execution_options(synchronize_session=False))
        if retired.rowcount != 1:
            session.rollback()
            raise Conflict("another key rotation happened at the same time; try again")
    session.add(row)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise Conflict("another key rotation happened at the same time; try again") from None
    return row, current.kid if current is not None else None


def published(session, stamp):
    """Rows of every key in the JWKS at ``stamp``: the active one and the recently retired."""
    return session.scalars(
        sa.select(SigningKey)
        .where(sa.or_(SigningKey.active_slot == ACTIVE, SigningKey.publish_until > stamp))
        .order_by(SigningKey.created_at.desc())).all()


def prune(session, stamp):
    """Delete keys that left the JWKS; returns how many went."""
    gone = session.execute(
        sa.delete(SigningKey)
        .where(SigningKey.active_slot.is_(None), SigningKey.publish_until <= stamp)
        .execution_options(synchronize_session=False))
    return gone.rowcount


def minted_at(kid):
    """When a key id was made (ids are UUIDv7, which carry their creation time), else None."""
    if not is_uuid(kid) or kid[14] != "7":
        return None
    return int(kid[:8] + kid[9:13], 16) / 1000


class Keyring:
    """The keys one process signs and verifies with, cached and re-read from the database.

    The active key is re-read every ``cache_seconds`` (cheaply: the private key is decrypted
    only when the active kid changes). A token naming a kid this process has not seen makes
    it look again: at once (bursts coalesced over ``fresh_interval``) when the kid was minted
    after the last look, as after another instance's rotation, and otherwise at most every
    ``miss_interval`` seconds, so that made-up kids cannot flood the database.
    """

    CLOCK_SKEW = 5.0  # seconds between instances' clocks that a kid's time may be off by

    def __init__(self, session_factory, cipher, alg=DEFAULT_ALGORITHM, cache_seconds=5.0,
                 miss_interval=0.5, fresh_interval=0.01, rsa_bits=DEFAULT_RSA_BITS,
                 clock=time.monotonic):
        if alg not in ALGORITHMS:
            raise ConfigError(f"AUTH_SIGNING_ALG must be one of {', '.join(ALGORITHMS)}")
        self.sessions = session_factory
        self.cipher = cipher
        self.alg = alg
        self.rsa_bits = rsa_bits
        self.cache_seconds = cache_seconds
        self.miss_interval = miss_interval
        self.fresh_interval = fresh_interval
        self.clock = clock
        self._lock = threading.Lock()
        self._loaded_at = None
        self._loaded_wall = 0.0
        self._signer = None
        self._signer_error = None
        self._verifiers = {}

    # -- loading ------------------------------------------------------------------------------
    def _stale(self, age):
        return self._loaded_at is None or self.clock() - self._loaded_at >= age

    def reload(self):
        with self._lock:
            self._reload()

    def _reload(self):
        wall = time.time()
        session = self.sessions()
        try:
            rows = published(session, now_utc())
            if not any(r.active_slot == ACTIVE for r in rows):
                create_first(session, self.cipher, self.alg, self.rsa_bits)
                rows = published(session, now_utc())
            active = next(r for r in rows if r.active_slot == ACTIVE)
            verifiers = {}
            for row in rows:
                known = self._verifiers.get(row.kid)
                if known is None:
                    known = Verifier(row.kid, row.alg, jwt.PyJWK(row.public_jwk).key,
                                     dict(row.public_jwk), row.publish_until)
                elif known.publish_until != row.publish_until:
                    known = Verifier(known.kid, known.alg, known.public_key, known.jwk,
                                     row.publish_until)
                verifiers[row.kid] = known
            signer, signer_error = self._signer, None
            if signer is None or signer.kid != active.kid:
                try:
                    signer = Signer(active.kid, active.alg,
                                    self.cipher.decrypt(active.kid, active.private_key_encrypted))
                except KeyDecryptionError as exc:
                    # refuse to sign (loudly) but go on verifying: public keys need no secret
                    log.error("%s", exc)
                    signer, signer_error = None, exc
        finally:
            session.close()
        self._signer, self._signer_error = signer, signer_error
        self._verifiers, self._loaded_at, self._loaded_wall = verifiers, self.clock(), wall

    def _refresh_if_stale(self, age):
        if self._stale(age):
            with self._lock:
                if self._stale(age):
                    try:
                        self._reload()
                    except Exception as exc:
                        if self._loaded_at is None and not self._verifiers:
                            raise  # nothing cached to fall back on
                        # the database is unreachable: keep verifying with the cached keys
                        log.warning("could not re-read the signing keys (%s); using the "
                                    "cached ones", type(exc).__name__)
                        self._loaded_at = self.clock()

    # -- use ----------------------------------------------------------------------------------
    def signer(self):
        self._refresh_if_stale(self.cache_seconds)
        if self._signer is None:
            raise self._signer_error or KeyDecryptionError("no usable signing key")
        return self._signer

    def verifier(self, kid):
        """The public key named ``kid`` while it is published, else None."""
        self._refresh_if_stale(self.cache_seconds)
        found = self._verifiers.get(kid)
        if found is None:
            minted = minted_at(kid)
            fresh = minted is not None and minted >= self._loaded_wall - self.CLOCK_SKEW
            self._refresh_if_stale(self.fresh_interval if fresh else self.miss_interval)
            found = self._verifiers.get(kid)
        if found is None or not found.published_at(now_utc()):
            return None
        return found

    def jwks(self):
        self._refresh_if_stale(self.cache_seconds)
        stamp = now_utc()
        return {"keys": [v.jwk for v in self._verifiers.values() if v.published_at(stamp)]}

    def forget(self):
        """Re-read the database at the next use (after this process rotated)."""
        self._loaded_at = None


def retire_window(access_ttl, cache_seconds, leeway):
    """How long a retired key stays published: the longest a token it signed can live.

    A token signed just before rotation lives ``access_ttl``; another instance may go on
    signing with its cached copy for ``cache_seconds``; verifiers allow ``leeway`` of skew.
    """
    return timedelta(seconds=access_ttl + cache_seconds + leeway)
