"""Access tokens (JWT, RFC 9068 shaped) and opaque refresh tokens."""

import hashlib
import re
import secrets
import time
import uuid
from dataclasses import dataclass

import jwt

from shared.contracts import (
    ACCESS_TOKEN_TYPE,
    ISSUED_CLAIMS,
    is_access_token_type,
    token_rejection,
)
from shared.proof import rejected, token_header

REFRESH_TOKEN_BYTES = 32  # 256 bits
_REFRESH_TOKEN = re.compile(r"^[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True)
class TokenSettings:
    issuer: str = "plinth"
    audience: str = "plinth-api"
    access_ttl: int = 900
    refresh_ttl: int = 30 * 24 * 3600
    leeway: int = 30
    service_ttl: int = 300


def _signed(signer, settings, subject, lifetime, now, **extra):
    """(token, claims): the claims every token of auth's carries, with ``extra``."""
    issued = int(time.time() if now is None else now)
    claims = {"iss": settings.issuer, "aud": settings.audience, "sub": subject, **extra,
              "iat": issued, "nbf": issued, "exp": issued + lifetime,
              "jti": uuid.uuid4().hex}
    token = jwt.encode(claims, signer.private_key, algorithm=signer.alg,
                       headers={"kid": signer.kid, "typ": ACCESS_TOKEN_TYPE})
    return token, claims


def issue_access_token(signer, settings, user_id, session_id, now=None):
    """(token, claims) for ``user_id`` in session ``session_id``, signed with ``signer``."""
    return _signed(signer, settings, user_id, settings.access_ttl, now, sid=session_id,
                   typ=ACCESS_TOKEN_TYPE)


def issue_service_token(signer, settings, service, now=None):
    """(token, claims) for ``service`` acting as itself: RFC 9068 §2.2's client-credentials
    shape, ``sub`` and ``client_id`` both the service's name, no session."""
    return _signed(signer, settings, service, settings.service_ttl, now, client_id=service)




def verify_access_token(token, keyring, settings):
    """The claims of a valid access token; otherwise Unauthorized with a ``reason`` detail.

    The algorithm comes from the key the ``kid`` names, never from the token, so neither
    ``alg: none`` nor an HMAC token keyed with a public key can pass.
    """
    header = token_header(token)
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise rejected("unknown_key", "no key id")
    verifier = keyring.verifier(kid)
    if verifier is None:
        raise rejected("unknown_key", "signed with an unknown or retired key")
    if header.get("alg") != verifier.alg:
        raise rejected("algorithm", "algorithm not allowed")
    if not is_access_token_type(header.get("typ")):
        raise rejected("type", "not an access token")
    try:
        claims = jwt.decode(
            token, verifier.public_key, algorithms=[verifier.alg], audience=settings.audience,
            issuer=settings.issuer, leeway=settings.leeway,
            options={"require": list(ISSUED_CLAIMS)},
        )
    except jwt.InvalidTokenError as exc:
        raise rejected(*token_rejection(exc)) from None
    if claims.get("typ") != ACCESS_TOKEN_TYPE:
        raise rejected("type", "not an access token")
    for name in ("sub", "jti", "sid"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise rejected("claims", f"claim {name} is not a string")
    return claims


def new_refresh_token():
    """An opaque refresh token: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def looks_like_refresh_token(value):
    return isinstance(value, str) and bool(_REFRESH_TOKEN.match(value))


def hash_refresh_token(token):
    """What the database keeps instead of the token. 256 random bits need no slow hash."""
    return hashlib.sha256(token.encode()).hexdigest()
