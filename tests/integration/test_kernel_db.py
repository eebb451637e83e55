"""The kernel's database engine (shared/db.py) against the real PostgreSQL."""

import logging

import pytest
import sqlalchemy as sa

from identity.service import IdentityService
from shared.db import make_engine
from shared.errors import InternalError
from tests.helpers import STRONG_PASSWORD, new_email

REFUSE_INSERTS = """
CREATE FUNCTION identity.refuse_insert() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'refused by the test'; END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_insert BEFORE INSERT ON identity.users
    FOR EACH ROW EXECUTE FUNCTION identity.refuse_insert();
"""


def _everything_logged(records):
    lines = []
    for record in records:
        lines.append(record.getMessage())
        if record.exc_info:
            lines.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(lines)


def test_a_failing_write_of_a_user_logs_no_password_hash(start_service, rpc, fresh_pg_uri,
                                                         caplog):
    start_service(IdentityService, DB_URI=fresh_pg_uri)
    engine = make_engine(fresh_pg_uri, "identity")
    with engine.begin() as conn:
        conn.execute(sa.text(REFUSE_INSERTS))
    engine.dispose()

    caplog.set_level(logging.DEBUG)
    with pytest.raises(InternalError):
        rpc.call("identity", "create_user", kwargs={"data": {
            "email": new_email("hash-leak"), "password": STRONG_PASSWORD}})

    logged = _everything_logged(caplog.records)
    assert "refused by the test" in logged  # the failure itself was logged...
    assert "$argon2" not in logged and STRONG_PASSWORD not in logged  # ...without the hash


@pytest.mark.parametrize("uri", ["postgresql://nobody@127.0.0.1:1/none", "sqlite://"])
def test_every_engine_hides_statement_parameters_from_its_errors(uri):
    assert make_engine(uri, "identity").hide_parameters


def test_a_service_in_production_refuses_a_weak_database_password(production_amqp_uri,
                                                                 start_service):
    from shared.config import ConfigError

    with pytest.raises(ConfigError, match="IDENTITY_DB_URI has a password that is a placeholder"):
        start_service(IdentityService, PLINTH_ENV="production", AMQP_URI=production_amqp_uri,
                      DB_URI="postgresql://identity_app:change-me@127.0.0.1:5432/plinth")
