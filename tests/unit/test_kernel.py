import io
import json
import logging
import uuid

import pytest
from marshmallow import Schema, fields
from nameko.exceptions import deserialize, serialize

from shared import context, errors, logs
from shared.config import ConfigError, db_uri, secret
from shared.ids import is_uuid, uuid7
from shared.outbox import envelope, headers_for
from shared.rpc import load


@pytest.mark.parametrize("cls", list(errors.ERROR_KINDS.values()))
def test_typed_errors_survive_nameko_serialisation_with_their_kind(cls):
    details = {"field": ["bad"], "retry_after": 3, "reference": None, "ok": True}
    original = cls("went wrong", details)
    rebuilt = deserialize(json.loads(json.dumps(serialize(original))))
    assert type(rebuilt) is cls
    assert rebuilt.message == "went wrong"
    assert rebuilt.details == details


def test_foreign_exceptions_arrive_as_remote_errors_not_typed_ones():
    rebuilt = deserialize(serialize(KeyError("x")))
    assert not isinstance(rebuilt, errors.PlinthError)


class _Sample(Schema):
    name = fields.String(required=True)
    age = fields.Integer(strict=True)


def test_load_names_every_bad_field():
    with pytest.raises(errors.Invalid) as info:
        load(_Sample(), {"age": "7", "extra": 1})
    assert set(info.value.details) == {"name", "age", "extra"}


@pytest.mark.parametrize("data", [None, [], "name", 3])
def test_load_refuses_input_that_is_not_an_object(data):
    with pytest.raises(errors.Invalid) as info:
        load(_Sample(), data)
    assert "_schema" in info.value.details


def test_bind_replaces_a_malformed_request_id_and_keeps_a_good_one():
    data = {"request_id": "bad id with spaces"}
    request_id, actor = context.bind(data)
    assert request_id == data["request_id"] and uuid.UUID(request_id)
    assert actor == context.Actor(None, "system")
    data = {"request_id": "req-1", "actor_type": "user", "actor_id": "u1"}
    assert context.bind(data) == ("req-1", context.Actor("u1", "user"))


def test_unknown_actor_types_fall_back_to_system():
    assert context.actor_from({"actor_type": "root", "actor_id": "x"}).type == "system"


def test_json_log_lines_carry_the_bound_request_and_actor():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter(service="probe"))
    logger = logging.getLogger("tests.kernel.json")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        context.bind({"request_id": "req-42", "actor_type": "user", "actor_id": "ann"})
        logger.info("hello %s", "world", extra={"items": 3})
    finally:
        logger.removeHandler(handler)
        context.request_id_var.set(None)
        context.actor_var.set(None)
    line = json.loads(stream.getvalue())
    assert line["msg"] == "hello world"
    assert line["request_id"] == "req-42"
    assert line["actor"] == {"id": "ann", "type": "user"}
    assert line["service"] == "probe"
    assert line["items"] == 3


def test_uuid7_is_time_ordered_and_valid():
    import time

    first = uuid7()
    ids = [uuid7() for _ in range(200)]
    time.sleep(0.002)  # order is by millisecond; within one the rest is random
    last = uuid7()
    assert all(is_uuid(i) and uuid.UUID(i).version == 7 for i in ids)
    assert len(set(ids)) == 200
    assert first < last


@pytest.mark.parametrize("value", ["", "x", "01a2027a-ff4c-769f-ace0-e4616e33fb0", None, 5,
                                   "01A2027A-FF4C-769F-ACE0-E4616E33FB07"])
def test_is_uuid_rejects_non_canonical_values(value):
    assert not is_uuid(value)


def test_envelope_has_every_field_of_the_spec_and_context_headers():
    env = envelope("identity", "user.created", "u1", {"email": "a@b.c"},
                   {"request_id": "r1", "actor_type": "service", "actor_id": "auth"})
    assert set(env) >= {"event_id", "occurred_at", "actor", "request_id", "subject", "data"}
    assert env["actor"] == {"id": "auth", "type": "service"}
    assert env["occurred_at"].endswith("+00:00")
    assert headers_for(env) == {"nameko.request_id": "r1", "nameko.actor_type": "service",
                                "nameko.actor_id": "auth"}


def test_db_uri_defaults_to_a_sqlite_file_per_service(monkeypatch, tmp_path):
    monkeypatch.setenv("PLINTH_VAR_DIR", str(tmp_path))
    monkeypatch.delenv("BILLING_DB_URI", raising=False)
    assert db_uri("billing") == f"sqlite:///{tmp_path}/billing.db"
    monkeypatch.setenv("BILLING_DB_URI", "postgresql://x/y")
    assert db_uri("billing") == "postgresql://x/y"
    assert db_uri("billing", {"DB_URI": "postgresql://a/b"}) == "postgresql://a/b"


def test_production_refuses_placeholder_secrets():
    config = {"PLINTH_ENV": "production", "KEY": "change-me"}
    with pytest.raises(ConfigError):
        secret(config, "KEY", development_default="dev")
    assert secret({"PLINTH_ENV": "production", "KEY": "s3cr3t-value-long"}, "KEY") \
        == "s3cr3t-value-long"
    assert secret({}, "NOT_SET_ANYWHERE_KEY", development_default="dev") == "dev"
