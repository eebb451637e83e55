from datetime import UTC

from marshmallow import ValidationError, fields, validate, validates_schema

from shared.contracts import ACTOR_TYPES, AUDIT_OUTCOMES, TRACE_ID_PATTERN
from shared.schemas import Schema

OUTCOMES = AUDIT_OUTCOMES
MAX_LIMIT = 200

ACTION = validate.Regexp(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$",
                         error="must be <entity>.<verb> in lower case, e.g. user.created")
ACTION_FILTER = validate.Regexp(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*(\.\*)?$",
                                error="must be an action (user.created) or a prefix (user.*)")
SOURCE = validate.Regexp(r"^[a-z][a-z0-9_-]{0,63}$",
                         error="must be a service name: lower case letters, digits, - and _")
REQUEST_ID = validate.Regexp(r"^[A-Za-z0-9._:\-]{1,128}$",
                             error="must be 1-128 letters, digits or . _ : -")
TRACE_ID = validate.Regexp(TRACE_ID_PATTERN, error="must be 32 lower-case hex digits")
EVENT_ID = validate.Regexp(r"^[A-Za-z0-9._:\-]{1,64}$",
                           error="must be 1-64 letters, digits or . _ : -")
EXPORT_NAME = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
                              error="must be a plain file name (letters, digits, . _ -)")


def _when(**kwargs):
    return fields.AwareDateTime(default_timezone=UTC, **kwargs)


def _seq(**kwargs):
    return fields.Integer(strict=True, allow_none=True, load_default=None,
                          validate=validate.Range(min=1), **kwargs)


class ActorSchema(Schema):
    id = fields.String(allow_none=True, load_default=None, validate=validate.Length(max=128))
    type = fields.String(required=True, validate=validate.OneOf(ACTOR_TYPES))


class RecordSchema(Schema):
    """An entry sent to ``record`` by anything that is not an event of a core service."""

    event_id = fields.String(validate=EVENT_ID)
    action = fields.String(required=True, validate=[validate.Length(max=128), ACTION])
    source = fields.String(required=True, validate=SOURCE)
    occurred_at = _when()
    actor = fields.Nested(ActorSchema)
    subject = fields.String(allow_none=True, validate=validate.Length(max=255))
    request_id = fields.String(allow_none=True, validate=REQUEST_ID)
    outcome = fields.String(validate=validate.OneOf(OUTCOMES))
    data = fields.Dict(keys=fields.String(), load_default=dict)


class FiltersSchema(Schema):
    """What selects entries, for ``query`` and ``export``."""

    actor = fields.String(validate=validate.Length(min=1, max=128))
    actor_type = fields.String(validate=validate.OneOf(ACTOR_TYPES))
    action = fields.String(validate=[validate.Length(min=1, max=128), ACTION_FILTER])
    subject = fields.String(validate=validate.Length(min=1, max=255))
    source = fields.String(validate=SOURCE)
    service = fields.String(validate=SOURCE)  # the same filter as source, by another name
    request_id = fields.String(validate=REQUEST_ID)
    trace_id = fields.String(validate=TRACE_ID)
    outcome = fields.String(validate=validate.OneOf(OUTCOMES))
    since = _when()
    until = _when()
    from_seq = _seq()
    to_seq = _seq()

    @validates_schema
    def consistent(self, data, **kwargs):
        if data.get("since") and data.get("until") and data["since"] > data["until"]:
            raise ValidationError("must not be before since", "until")
        if data.get("from_seq") and data.get("to_seq") and data["from_seq"] > data["to_seq"]:
            raise ValidationError("must not be below from_seq", "to_seq")
        if data.get("source") and data.get("service") and data["source"] != data["service"]:
            raise ValidationError("source and service name the same filter; give one",
                                  "service")


class QuerySchema(FiltersSchema):
    limit = fields.Integer(load_default=50, strict=True,
                           validate=validate.Range(min=1, max=MAX_LIMIT))
    cursor = fields.String(load_default=None, allow_none=True,
                           validate=validate.Length(min=1, max=100))


class ExportFileSchema(FiltersSchema):
    name = fields.String(required=True, validate=EXPORT_NAME)


class VerifySchema(Schema):
    from_seq = _seq()
    to_seq = _seq()

    @validates_schema
    def ordered(self, data, **kwargs):
        if data.get("from_seq") and data.get("to_seq") and data["from_seq"] > data["to_seq"]:
            raise ValidationError("must not be below from_seq", "to_seq")
