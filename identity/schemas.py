import time

from marshmallow import ValidationError, fields, validate, validates_schema

from shared.contracts import USER_STATUSES, USER_TYPES
from shared.ids import uuid7_millis
from shared.schemas import Schema

STATUSES = USER_STATUSES
TYPES = USER_TYPES

Email = fields.Email
email_field = dict(required=True, validate=validate.Length(max=320))
display_name_field = dict(validate=validate.Length(max=200))
# how far in the future a caller-chosen id may be dated (clocks of two machines differ a little)
ID_CLOCK_SKEW_MS = 5 * 60 * 1000


def time_ordered_id(value):
    """A caller-chosen user id must be what identity would have made: a canonical UUIDv7 (ids
    sort by creation, which paging relies on), not dated in the future."""
    millis = uuid7_millis(value)
    if millis is None:
        raise ValidationError("must be a lower-case UUID version 7")
    if millis > time.time() * 1000 + ID_CLOCK_SKEW_MS:
        raise ValidationError("must not be dated in the future")


class CreateUserSchema(Schema):
    # chosen by a trusted caller that must know the id before the user exists (authz's
    # bootstrap records it first, so a retry after a crash recognises its own user); the
    # gateway's public sign-up does not accept it
    id = fields.String(load_default=None, validate=time_ordered_id)
    email = Email(**email_field)
    password = fields.String(load_default=None, validate=validate.Length(max=256))
    display_name = fields.String(load_default="", **display_name_field)
    type = fields.String(load_default="user", validate=validate.OneOf(TYPES))

    @validates_schema
    def password_required_for_people(self, data, **kwargs):
        if data.get("type", "user") == "user" and not data.get("password"):
            raise ValidationError("required for users", "password")


# authz's rule for role and scope names, checked here too so that a typo fails at once (400)
# rather than after a user was created and removed again
ROLE_NAME = validate.Regexp(r"^[a-z][a-z0-9_.\-]{1,63}\Z",
                            error="2-64 characters: a lower-case letter, then lower-case "
                                  "letters, digits, '_', '-' or '.'")
MAX_ROLES = 50


class ScopedRoleSchema(Schema):
    role = fields.String(required=True, validate=ROLE_NAME)
    scope = fields.String(required=True, validate=ROLE_NAME)


class ProvisionUserSchema(Schema):
    """An administrator's new user with roles (a saga: identity/provisioning.py)."""

    email = Email(**email_field)
    password = fields.String(required=True, validate=validate.Length(max=256))
    display_name = fields.String(load_default="", **display_name_field)
    roles = fields.List(fields.String(validate=ROLE_NAME), load_default=list,
                        validate=validate.Length(max=MAX_ROLES))
    scoped_roles = fields.List(fields.Nested(ScopedRoleSchema), load_default=list,
                               validate=validate.Length(max=MAX_ROLES))


class SagaIdSchema(Schema):
    saga_id = fields.UUID(required=True)


class UpdateUserSchema(Schema):
    email = Email(validate=validate.Length(max=320))
    display_name = fields.String(**display_name_field)

    @validates_schema
    def something_to_change(self, data, **kwargs):
        if not data:
            raise ValidationError("give at least one of: display_name, email", "_schema")


class ChangePasswordSchema(Schema):
    old_password = fields.String(required=True, validate=validate.Length(max=256))
    new_password = fields.String(required=True, validate=validate.Length(max=256))


class SetPasswordSchema(Schema):
    password = fields.String(required=True, validate=validate.Length(max=256))


class CredentialsSchema(Schema):
    email = fields.String(required=True, validate=validate.Length(max=320))
    password = fields.String(required=True, validate=validate.Length(max=256))


class ListUsersSchema(Schema):
    status = fields.String(validate=validate.OneOf(STATUSES))
    type = fields.String(validate=validate.OneOf(TYPES))
    email = fields.String(validate=validate.Length(min=1, max=320))
    q = fields.String(validate=validate.Length(min=1, max=100))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200),
                           strict=True)
    cursor = fields.String(load_default=None, allow_none=True,
                           validate=validate.Length(max=200))


class UserSchema(Schema):
    id = fields.String()
    email = fields.String()
    display_name = fields.String()
    status = fields.String()
    type = fields.String()
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    password_changed_at = fields.DateTime(allow_none=True)
    deleted_at = fields.DateTime(allow_none=True)


class UserIdSchema(Schema):
    user_id = fields.UUID(required=True)


class UserPageSchema(Schema):
    items = fields.List(fields.Nested(UserSchema))
    next_cursor = fields.String(allow_none=True)
