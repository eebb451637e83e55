"""Proof of who acts: access tokens checked against auth's public keys, for the gateway and
every service alike.

``Jwks`` holds auth's key set, fetched at first need through a function it is given (an RPC
to ``auth.jwks``) and cached; a token naming an unknown ``kid`` triggers a refetch, at most
once per ``refetch_interval`` seconds whatever the traffic, and the set is refreshed when
older than ``max_age``. ``TokenValidator`` checks a token the way auth issues them (RFC 9068):
the ``typ`` header, an algorithm from the allow-list that matches the named key's own, the
signature, ``iss``, ``aud``, ``exp``, ``nbf``, ``iat``, and a subject that is either a user
(a UUID) or, for a service token, the service's name repeated in ``client_id`` (RFC 9068 §2.2
for a client acting on its own behalf). A token that passed is remembered per token string,
so the next check of the same token is a dict lookup and a clock check.
"""

import hashlib
import hmac
import logging
import re
import threading
import time
from dataclasses import dataclass

import jwt

from shared.contracts import (
    MAX_TOKEN_LENGTH,
    VERIFIED_CLAIMS,
    is_access_token_type,
    token_rejection,
)
from shared.errors import PlinthError, Unauthorized, Unavailable
from shared.ids import is_uuid

__all__ = ["Jwks", "TokenValidator", "Principal", "rejected", "ASYMMETRIC", "SERVICE_NAME",
           "is_service_name", "development_service_secret", "hash_service_secret"]

log = logging.getLogger(__name__)

CACHE_SIZE = 10000
ASYMMETRIC = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "EdDSA"}
SERVICE_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
# how soon a failed fetch is retried while no key set has been loaded yet (seconds)
UNLOADED_RETRY_INTERVAL = 0.5
# outside production, every service's credential is derived from this and its name, so one
# command runs the whole platform; production refuses it (auth checks PLINTH_ENV)
DEVELOPMENT_CREDENTIAL_SEED = b"plinth-development-only-service-credential"


def is_service_name(value):
    return isinstance(value, str) and bool(SERVICE_NAME.match(value))


def development_service_secret(service):
    """The credential ``service`` has outside production unless one is configured."""
    return hmac.new(DEVELOPMENT_CREDENTIAL_SEED, service.encode(), hashlib.sha256).hexdigest()


def hash_service_secret(secret):
    """What auth stores instead of a service credential (256 random bits need no slow hash)."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who a valid token proves: a user (``id`` a UUID, ``session_id`` its session) or a
    service (``id`` its name, no session)."""

    id: str
    type: str
    session_id: str | None
    claims: dict

    @property
    def user_id(self):
        return self.id

    @property
    def actor_type(self):
        return self.type

    def __repr__(self):  # the claims stay out of logs and tracebacks
        return f"Principal({self.type}:{self.id})"


@dataclass(frozen=True)
class _Key:
    kid: str
    alg: str
    key: object


def rejected(reason, message):
    return Unauthorized(f"invalid access token: {message}", {"reason": reason})


def token_header(token):
    """The unverified JOSE header of ``token``; Unauthorized (``malformed``) when it is not a
    string of at most ``MAX_TOKEN_LENGTH`` characters holding a well-formed JWT."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise rejected("malformed", "not a token")
    try:
        return jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise rejected("malformed", "not a well-formed JWT") from None


class Jwks:
    """auth's public keys, fetched through ``fetch()`` and cached (see the module docstring).
    ``on_fetch(outcome)`` ("ok" or "failed") lets a caller count the fetches."""

    def __init__(self, fetch, algorithms, refetch_interval=5.0, max_age=300.0, on_fetch=None):
        self._fetch = fetch
        self.algorithms = set(algorithms)
        self.refetch_interval = refetch_interval
        self.max_age = max_age
        self.on_fetch = on_fetch or (lambda outcome: None)
        self._keys = {}
        self._document = None
        self.loaded_at = None
        self._last_attempt = None
        self._lock = threading.Lock()
        self.last_error = None

    @property
    def loaded(self):
        return self._document is not None

    def document(self):
        """The key set as auth published it (for /.well-known/jwks.json)."""
        if not self.loaded:
            self.refresh()
        if not self.loaded:
            raise Unavailable("the public keys are not available yet; try again",
                              {"service": "auth"})
        return self._document

    def refresh(self, force=False):
        """Fetch the key set now, unless another thread just did (or ``refetch_interval`` has
        not passed since the last attempt, unless ``force``). Returns True when it fetched."""
        attempted = self._last_attempt
        with self._lock:
            if self._last_attempt != attempted:
                return False  # another thread fetched while this one waited
            now = time.monotonic()
            # with no keys at all every request fails, so a failed first fetch is retried
            # sooner than the refetch interval that spares auth once keys are loaded
            quiet = self.refetch_interval if self.loaded else \
                min(self.refetch_interval, UNLOADED_RETRY_INTERVAL)
            if not force and self._last_attempt is not None and now - self._last_attempt < quiet:
                return False
            self._last_attempt = now
            try:
                document = self._fetch()
                keys = self._parse(document)
            except Exception as exc:  # noqa: BLE001 - keep the keys we have; retried later
                self.last_error = exc if isinstance(exc, PlinthError) else \
                    Unavailable(f"{type(exc).__name__} while fetching the keys")
                self.on_fetch("failed")
                log.warning("could not fetch auth's public keys: %s", self.last_error)
                return False
            self._keys, self._document = keys, {"keys": [k for k in document["keys"]
                                                         if k.get("kid") in keys]}
            self.loaded_at = time.monotonic()
            self.last_error = None
            self.on_fetch("ok")
            return True

    def _parse(self, document):
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            raise Unavailable("auth returned a malformed key set", {"service": "auth"})
        keys = {}
        for jwk in document["keys"]:
            kid, alg = jwk.get("kid"), jwk.get("alg")
            if not isinstance(kid, str) or alg not in self.algorithms or \
                    jwk.get("use", "sig") != "sig":
                continue
            try:
                keys[kid] = _Key(kid, alg, jwt.PyJWK(jwk, algorithm=alg).key)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as exc:
                log.warning("skipping unusable key %s: %s", kid, exc)
        return keys

    def _refresh_if_stale(self):
        if self.loaded_at is not None and time.monotonic() - self.loaded_at > self.max_age:
            self.refresh()

    def has(self, kid):
        """Is ``kid`` still published (the set refreshed when stale)?"""
        self._refresh_if_stale()
        return kid in self._keys

    def key(self, kid):
        """The key named ``kid``, refetching the set when it is unknown or stale."""
        self._refresh_if_stale()
        found = self._keys.get(kid)
        if found is None:
            self.refresh()
            found = self._keys.get(kid)
            if found is None and not self.loaded:
                raise Unavailable("cannot check access tokens yet: auth's public keys are "
                                  "unavailable", {"service": "auth"})
        return found


class TokenValidator:
    """Checks access tokens; a token that passed is remembered (bounded), so the next checks
    of it cost a dict lookup and a clock check instead of a signature check and three base64
    decodes. The cache is keyed by the whole token string, so nothing but the very same token
    can hit it, and a hit is refused once the token expires or its key is no longer
    published. Service tokens are refused unless ``accept_services`` (the gateway takes only
    users' tokens)."""

    def __init__(self, jwks, issuer, audience, leeway=30, algorithms=("RS256",),
                 cache_size=CACHE_SIZE, accept_services=False):
        self.jwks = jwks
        self.issuer, self.audience, self.leeway = issuer, audience, leeway
        self.algorithms = {a for a in algorithms if a in ASYMMETRIC}
        self.cache_size = cache_size
        self.accept_services = accept_services
        self._verified = {}  # token -> (Principal, kid, nbf, exp)

    def validate(self, token):
        """The token's Principal, or Unauthorized with a ``reason``."""
        hit = self._verified.get(token)
        if hit is not None:
            principal, kid, not_before, expires = hit
            now = time.time()
            if not_before - self.leeway <= now < expires + self.leeway and self.jwks.has(kid):
                return principal
            self._verified.pop(token, None)
        principal, kid = self._check(token)
        if len(self._verified) >= self.cache_size:
            self._verified.clear()  # simple and rare: a full cache refills from live traffic
        claims = principal.claims
        self._verified[token] = (principal, kid, claims["nbf"], claims["exp"])
        return principal

    def _check(self, token):
        header = token_header(token)
        alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
        if alg not in self.algorithms:
            raise rejected("algorithm", "algorithm not allowed")
        if not is_access_token_type(typ):
            raise rejected("type", "not an access token")
        if not isinstance(kid, str) or not kid or len(kid) > 200:
            raise rejected("unknown_key", "no key id")
        key = self.jwks.key(kid)
        if key is None:
            raise rejected("unknown_key", "signed with an unknown key")
        if key.alg != alg:
            raise rejected("algorithm", "algorithm does not match the key")
        try:
            claims = jwt.decode(token, key.key, algorithms=[alg], audience=self.audience,
                                issuer=self.issuer, leeway=self.leeway,
                                options={"require": list(VERIFIED_CLAIMS)})
        except jwt.InvalidTokenError as exc:
            raise rejected(*token_rejection(exc)) from None
        if not all(isinstance(claims[c], int | float) for c in ("nbf", "exp")):
            raise rejected("claims", "nbf and exp must be numbers")
        return self._principal(claims), kid

    def _principal(self, claims):
        subject = claims.get("sub")
        if "client_id" in claims:
            if not self.accept_services:
                raise rejected("type", "a service token is not accepted here")
            if not is_service_name(subject) or claims["client_id"] != subject:
                raise rejected("claims", "the subject is not a service")
            return Principal(subject, "service", None, claims)
        if not isinstance(subject, str) or not is_uuid(subject):
            raise rejected("claims", "the subject is not a user id")
        session = claims.get("sid")
        return Principal(subject, "user", session if isinstance(session, str) else None, claims)
