"""The HTTP API's marshmallow schemas: what the gateway validates, what it returns, and what
/openapi.json documents (one source for all three)."""

from datetime import datetime

from marshmallow import ValidationError, fields, validate, validates_schema

from shared.contracts import (
    ACTOR_TYPES,
    AUDIT_OUTCOMES,
    REQUEST_ID_PATTERN,
    TRACE_ID_PATTERN,
    USER_STATUSES,
    USER_TYPES,
)
from shared.ids import is_uuid
from shared.schemas import Schema

NAME_PATTERN = r"^[a-z][a-z0-9_.\-]{1,63}$"
NAME_MESSAGE = ("must be 2-64 characters: a lower-case letter, then lower-case letters, "
                "digits, '_', '-' or '.'")


class Uuid(fields.String):
    """A UUID kept as its canonical lower-case string (what the services take)."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if not is_uuid(value.lower()):
            raise ValidationError("not a valid UUID")
        return value.lower()


class Timestamp(fields.String):
    """An ISO-8601 date-time with a UTC offset, kept as the string it was given."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError("not an ISO-8601 date-time") from None
        if parsed.tzinfo is None:
            raise ValidationError("needs a UTC offset (e.g. Z or +00:00)")
        return value


class Name(fields.String):
    def __init__(self, **kwargs):
        super().__init__(validate=validate.Regexp(NAME_PATTERN, error=NAME_MESSAGE), **kwargs)


def _text(max_length, min_length=None, **kwargs):
    return fields.String(validate=validate.Length(min=min_length, max=max_length), **kwargs)


def _limit():
    return fields.Integer(validate=validate.Range(min=1, max=200),
                          metadata={"description": "page size (default 50)"})


def _cursor():
    return _text(200, 1, metadata={"description": "next_cursor of the previous page"})


def _something(data, names):
    if not data:
        raise ValidationError(f"give at least one of: {', '.join(names)}", "_schema")


# -- problem details --------------------------------------------------------------------------
class ProblemSchema(Schema):
    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String()
    instance = fields.String(allow_none=True)
    request_id = fields.String()
    errors = fields.Dict(keys=fields.String(),
                         metadata={"description": "field name -> list of messages (400, 409)"})
    reason = fields.String()
    service = fields.String()
    reference = fields.String()
    retry_after = fields.Float()
    timeout = fields.Float()
    permission = fields.String(metadata={"description": "the permission a 403 lacked"})
    saga_id = fields.String(metadata={"description": "the saga the failed operation ran"})
    saga_status = fields.String(metadata={"description": "that saga's status"})
    step = fields.String(metadata={"description": "the saga step that was refused"})
    role = fields.String(metadata={"description": "the role concerned"})
    scope = fields.String(metadata={"description": "the scope of that role"})


# -- users ------------------------------------------------------------------------------------
class SignUpSchema(Schema):
    email = fields.Email(required=True, validate=validate.Length(max=320))
    password = _text(256, 1, required=True)
    display_name = _text(200)


class UpdateMeSchema(Schema):
    display_name = _text(200)

    @validates_schema
    def something_to_change(self, data, **kwargs):
        _something(data, ["display_name"])


class UpdateUserSchema(Schema):
    email = fields.Email(validate=validate.Length(max=320))
    display_name = _text(200)

    @validates_schema
    def something_to_change(self, data, **kwargs):
        _something(data, ["display_name", "email"])


class ChangePasswordSchema(Schema):
    old_password = _text(256, 1, required=True)
    new_password = _text(256, 1, required=True)


class ListUsersQuery(Schema):
    status = fields.String(validate=validate.OneOf(USER_STATUSES))
    type = fields.String(validate=validate.OneOf(USER_TYPES))
    email = _text(320, 1)
    q = _text(100, 1, metadata={"description": "matches email or display name"})
    limit = _limit()
    cursor = _cursor()


class UserPath(Schema):
    user_id = Uuid(required=True)


class UserSchema(Schema):
    id = fields.String(required=True)
    email = fields.String(allow_none=True)
    display_name = fields.String(allow_none=True)
    status = fields.String()
    type = fields.String()
    created_at = Timestamp()
    updated_at = Timestamp(allow_none=True)
    password_changed_at = Timestamp(allow_none=True)
    deleted_at = Timestamp(allow_none=True)


ROLE_NAME = validate.Regexp(r"^[a-z][a-z0-9_.\-]{1,63}\Z",
                            error="2-64 characters: a lower-case letter, then lower-case "
                                  "letters, digits, '_', '-' or '.'")


class ScopedRoleSchema(Schema):
    role = fields.String(required=True, validate=ROLE_NAME)
    scope = fields.String(required=True, validate=ROLE_NAME)


class ProvisionUserSchema(Schema):
    email = fields.Email(required=True, validate=validate.Length(max=320))
    password = _text(256, 1, required=True)
    display_name = _text(200)
    roles = fields.List(fields.String(validate=ROLE_NAME), validate=validate.Length(max=50))
    scoped_roles = fields.List(fields.Nested(ScopedRoleSchema),
                               validate=validate.Length(max=50))


class ProvisionedRoleSchema(Schema):
    role = fields.String(required=True)
    scope = fields.String(allow_none=True)


class ProvisionedUserSchema(UserSchema):
    roles = fields.List(fields.Nested(ProvisionedRoleSchema), required=True)
    saga_id = fields.String(required=True)


class SagaPath(Schema):
    saga_id = Uuid(required=True)


class SagaAcceptedSchema(Schema):
    accepted = fields.Boolean(required=True)
    saga_id = fields.String(required=True)
    status = fields.String(required=True)


class SagaSchema(Schema):
    id = fields.String(required=True)
    name = fields.String(required=True)
    status = fields.String(required=True, metadata={
        "description": "running, completed, compensating, compensated or failed"})
    current_step = fields.String(allow_none=True)
    steps = fields.List(fields.String())
    input = fields.Dict()
    results = fields.Dict()
    error = fields.Dict(allow_none=True)
    created_at = Timestamp()
    updated_at = Timestamp()
    finished_at = Timestamp(allow_none=True)


class UserPageSchema(Schema):
    items = fields.List(fields.Nested(UserSchema), required=True)
    next_cursor = fields.String(allow_none=True)


# -- auth -------------------------------------------------------------------------------------
class LoginSchema(Schema):
    email = _text(320, 1, required=True)
    password = _text(256, 1, required=True)


class RefreshSchema(Schema):
    refresh_token = _text(512, 1, required=True)


class TokenPairSchema(Schema):
    access_token = fields.String(required=True)
    refresh_token = fields.String(required=True)
    token_type = fields.String(required=True)
    expires_in = fields.Integer(required=True)


class JwksSchema(Schema):
    keys = fields.List(fields.Dict(), required=True)


# -- roles ------------------------------------------------------------------------------------
def _permissions():
    return fields.List(_text(200, 1), validate=validate.Length(max=500),
                       metadata={"description": "permissions such as users:read, users:*, *"})


def _includes():
    return fields.List(Name(), validate=validate.Length(max=100),
                       metadata={"description": "roles whose permissions this role includes"})


class CreateRoleSchema(Schema):
    name = Name(required=True)
    description = _text(500)
    permissions = _permissions()
    includes = _includes()


class UpdateRoleSchema(Schema):
    description = _text(500)
    permissions = _permissions()
    includes = _includes()

    @validates_schema
    def something_to_change(self, data, **kwargs):
        _something(data, ["description", "permissions", "includes"])


class RolePath(Schema):
    name = Name(required=True)


class AssignmentPath(Schema):
    user_id = Uuid(required=True)
    name = Name(required=True)


class ScopeQuery(Schema):
    scope = Name(metadata={"description": "a service name: the role applies only there"})


class RoleSchema(Schema):
    name = fields.String(required=True)
    description = fields.String(allow_none=True)
    builtin = fields.Boolean()
    permissions = fields.List(fields.String())
    includes = fields.List(fields.String())
    effective_permissions = fields.List(fields.String())
    created_at = Timestamp(allow_none=True)
    updated_at = Timestamp(allow_none=True)


class RoleListSchema(Schema):
    items = fields.List(fields.Nested(RoleSchema), required=True)


class AssignmentSchema(Schema):
    user_id = fields.String(required=True)
    role = fields.String(required=True)
    scope = fields.String(allow_none=True)
    assigned_at = Timestamp(allow_none=True)
    assigned_by = fields.String(allow_none=True)
    created = fields.Boolean()


class AssignmentListSchema(Schema):
    items = fields.List(fields.Nested(AssignmentSchema), required=True)


class CheckQuery(Schema):
    permission = _text(200, 1, required=True,
                       metadata={"description": "e.g. users:read"})
    scope = Name()


class CheckResultSchema(Schema):
    allowed = fields.Boolean(required=True)


# -- audit ------------------------------------------------------------------------------------
class AuditFilters(Schema):
    actor = _text(128, 1, metadata={"description": "actor id"})
    actor_type = fields.String(validate=validate.OneOf(ACTOR_TYPES))
    action = _text(128, 1, metadata={"description": "user.created, or a prefix: user.*"})
    subject = _text(255, 1)
    service = _text(64, 1, metadata={"description": "the service that recorded it"})
    request_id = fields.String(validate=validate.Regexp(REQUEST_ID_PATTERN))
    trace_id = fields.String(validate=validate.Regexp(TRACE_ID_PATTERN, error="32 lower-case "
                             "hex digits"), metadata={"description": "the trace id (the "
                             "traceresponse header of the request)"})
    outcome = fields.String(validate=validate.OneOf(AUDIT_OUTCOMES))
    since = Timestamp()
    until = Timestamp()


class AuditQuery(AuditFilters):
    limit = _limit()
    cursor = _text(100, 1, metadata={"description": "next_cursor of the previous page"})


class AuditEntryPath(Schema):
    entry_id = Uuid(required=True)


class ActorSchema(Schema):
    id = fields.String(allow_none=True)
    type = fields.String()


class AuditEntrySchema(Schema):
    id = fields.String(required=True)
    seq = fields.Integer()
    event_id = fields.String(allow_none=True)
    occurred_at = fields.String(allow_none=True)
    recorded_at = fields.String(allow_none=True)
    source = fields.String()
    action = fields.String()
    actor = fields.Nested(ActorSchema, allow_none=True)
    subject = fields.String(allow_none=True)
    request_id = fields.String(allow_none=True)
    trace_id = fields.String(allow_none=True)
    outcome = fields.String(allow_none=True)
    data = fields.Dict(allow_none=True)
    prev_hash = fields.String(allow_none=True)
    hash = fields.String(allow_none=True)


class AuditPageSchema(Schema):
    items = fields.List(fields.Nested(AuditEntrySchema), required=True)
    next_cursor = fields.String(allow_none=True)


class VerifyQuery(Schema):
    from_seq = fields.Integer(validate=validate.Range(min=1, max=2**62))
    to_seq = fields.Integer(validate=validate.Range(min=1, max=2**62))


class VerifyReportSchema(Schema):
    ok = fields.Boolean(required=True)
    checked = fields.Integer(allow_none=True)
    problem = fields.String(allow_none=True)
    first_bad = fields.Raw(allow_none=True)
    detail = fields.String(allow_none=True)
    from_seq = fields.Integer(allow_none=True)
    to_seq = fields.Integer(allow_none=True)
    head = fields.Raw(allow_none=True)


class AuditExportRequest(AuditFilters):
    """The filters of the audit query (no page size or cursor: an export holds them all)."""

    from_seq = fields.Integer(validate=validate.Range(min=1, max=2**62))
    to_seq = fields.Integer(validate=validate.Range(min=1, max=2**62))


class AuditExportPath(Schema):
    export_id = Uuid(required=True)


class AuditExportSchema(Schema):
    id = fields.String(required=True)
    status = fields.String(required=True, metadata={
        "description": "pending, running, done or failed"})
    filters = fields.Dict(metadata={"description": "the filters it was asked with"})
    upto_seq = fields.Integer(metadata={
        "description": "the last entry it may hold: the chain head when it was asked for"})
    requested_by = fields.String(allow_none=True)
    request_id = fields.String(allow_none=True)
    attempts = fields.Integer()
    count = fields.Integer(allow_none=True, metadata={"description": "entries written"})
    bytes = fields.Integer(allow_none=True, metadata={"description": "size of the NDJSON"})
    sha256 = fields.String(allow_none=True, metadata={"description": "of the NDJSON"})
    error = fields.String(allow_none=True)
    created_at = fields.String(allow_none=True)
    started_at = fields.String(allow_none=True)
    finished_at = fields.String(allow_none=True)
