"""auth.credentials: service credentials kept hashed, the newest two valid at once."""

import pytest

from auth import credentials
from shared.errors import Invalid
from shared.proof import development_service_secret
from tests.support.auth_helpers import sqlite_database


@pytest.fixture
def session(tmp_path):
    engine, sessions = sqlite_database(tmp_path)
    with sessions() as session:
        yield session
    engine.dispose()


def test_a_new_credential_is_shown_once_and_stored_as_its_hash(session):
    row, secret = credentials.add(session, "billing")
    assert secret not in str(credentials.listing(session)) and row.secret_hash != secret
    assert credentials.valid(session, "billing", secret)
    assert not credentials.valid(session, "shipping", secret)  # another service's: no


def test_rotation_keeps_the_newest_two_valid(session):
    first, second, third = (credentials.add(session, "billing")[1] for _ in range(3))
    assert not credentials.valid(session, "billing", first)
    assert credentials.valid(session, "billing", second)
    assert credentials.valid(session, "billing", third)


def test_register_adds_a_deployed_value_once(session):
    assert credentials.register(session, "billing", "deployed-value-0123456789abcdef")
    assert not credentials.register(session, "billing", "deployed-value-0123456789abcdef")
    assert len(credentials.listing(session, "billing")) == 1


def test_the_development_credential_counts_only_outside_production(session):
    secret = development_service_secret("billing")
    assert credentials.valid(session, "billing", secret, development=True)
    assert not credentials.valid(session, "billing", secret, development=False)


@pytest.mark.parametrize("service", ["", "Billing", "a" * 65, None])
def test_a_bad_service_name_is_invalid(session, service):
    with pytest.raises(Invalid):
        credentials.add(session, service)
    assert not credentials.valid(session, service, "anything")
