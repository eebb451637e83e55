"""Authentication at the edge: Bearer access tokens, checked with the kernel's validator.

The token rules, auth's cached key set (``Jwks``) and the verified-token cache
(``TokenValidator``) live in ``shared.proof``, which every service uses too: the gateway
forwards the caller's token in the RPC headers and each service checks it again itself.
"""

from gateway import metrics
from shared import proof
from shared.proof import Principal, TokenValidator, rejected

__all__ = ["Jwks", "TokenValidator", "Principal", "bearer_token", "rejected"]


class Jwks(proof.Jwks):
    """The kernel's key set, its fetches counted in the gateway's metrics."""

    def __init__(self, fetch, algorithms, refetch_interval=5.0, max_age=300.0):
        super().__init__(fetch, algorithms, refetch_interval, max_age,
                         on_fetch=_count_fetch)


def _count_fetch(outcome):
    metrics.JWKS_FETCHES.labels(outcome).inc()


def bearer_token(header):
    """The token of an ``Authorization: Bearer <token>`` header; None when there is none.

    Another scheme or a malformed header is an Unauthorized (a client that sends credentials
    means them)."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise rejected("malformed", "use Authorization: Bearer <access token>")
    return token
