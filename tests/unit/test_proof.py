"""shared.proof's service tokens: accepted only where services may call, and only in the
shape auth issues them (subject and client_id the same service name)."""

import pytest

from shared.errors import Unauthorized
from shared.proof import (
    Jwks,
    TokenValidator,
    development_service_secret,
    hash_service_secret,
    is_service_name,
)
from tests.support.gateway_helpers import AUDIENCE, ISSUER, TestKeys


@pytest.fixture(scope="module")
def keys():
    return TestKeys("RS256")


def validator(keys, accept_services):
    jwks = Jwks(lambda: {"keys": [keys.jwk()]}, ("RS256",))
    return TokenValidator(jwks, ISSUER, AUDIENCE, algorithms=("RS256",),
                          accept_services=accept_services)


def service_token(keys, **claims):
    return keys.token(**{"sub": "identity", "client_id": "identity", "sid": None, **claims})


def test_a_service_token_proves_the_service_where_services_are_accepted(keys):
    principal = validator(keys, True).validate(service_token(keys))
    assert (principal.id, principal.type, principal.session_id) == ("identity", "service", None)


def test_the_gateway_refuses_service_tokens(keys):
    with pytest.raises(Unauthorized) as refused:
        validator(keys, False).validate(service_token(keys))
    assert refused.value.details["reason"] == "type"


@pytest.mark.parametrize("claims", [{"client_id": "authz"}, {"sub": "Not A Service"},
                                    {"sub": "0190c0de-0000-7000-8000-000000000001",
                                     "client_id": "0190c0de-0000-7000-8000-000000000001"}])
def test_a_service_token_must_name_one_service_twice(keys, claims):
    with pytest.raises(Unauthorized) as refused:
        validator(keys, True).validate(service_token(keys, **claims))
    assert refused.value.details["reason"] == "claims"


def test_development_credentials_differ_per_service_and_are_stored_hashed():
    identity, authz = development_service_secret("identity"), development_service_secret("authz")
    assert identity != authz and len(identity) == 64
    assert hash_service_secret(identity) != identity and len(hash_service_secret(identity)) == 64
    assert is_service_name("billing_v2") and not is_service_name("Billing")
    assert not is_service_name("a" * 65) and not is_service_name(None)
