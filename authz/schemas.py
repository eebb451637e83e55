from marshmallow import ValidationError, fields, validate, validates_schema

from authz import permissions
from shared.ids import is_uuid
from shared.schemas import Schema

NAME_PATTERN = r"^[a-z][a-z0-9_.\-]{1,63}\Z"
NAME_MESSAGE = ("must be 2-64 characters: a lower-case letter, then lower-case letters, "
                "digits, '_', '-' or '.'")
MAX_PERMISSIONS = 500
MAX_INCLUDES = 100


class RoleName(fields.String):
    def __init__(self, **kwargs):
        super().__init__(validate=validate.Regexp(NAME_PATTERN, error=NAME_MESSAGE), **kwargs)


class Scope(RoleName):
    """A service name, or None for the global scope."""

    def __init__(self, **kwargs):
        super().__init__(load_default=None, allow_none=True, **kwargs)


class Permission(fields.String):
    """A permission string, loaded in its canonical spelling (``*:*`` becomes ``*``)."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        reason = permissions.problem(value)
        if reason is not None:
            raise ValidationError(f"{value!r} is not a permission: {reason}")
        return permissions.normalise(value)


class UserId(fields.String):
    """A user id: a canonical (lower-case) UUID, as identity issues them."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if not is_uuid(value.lower()):
            raise ValidationError("not a valid UUID")
        return value.lower()


def _unique(items):
    return list(dict.fromkeys(items))


class PermissionList(fields.List):
    def __init__(self, min_length=0, **kwargs):
        super().__init__(Permission(), **kwargs,
                         validate=validate.Length(min=min_length, max=MAX_PERMISSIONS))

    def _deserialize(self, value, attr, data, **kwargs):
        return _unique(super()._deserialize(value, attr, data, **kwargs))


class RoleList(fields.List):
    def __init__(self, **kwargs):
        super().__init__(RoleName(), validate=validate.Length(max=MAX_INCLUDES), **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        return _unique(super()._deserialize(value, attr, data, **kwargs))


class CreateRoleSchema(Schema):
    name = RoleName(required=True)
    description = fields.String(load_default="", validate=validate.Length(max=500))
    permissions = PermissionList(load_default=list)
    includes = RoleList(load_default=list)


class UpdateRoleSchema(Schema):
    description = fields.String(validate=validate.Length(max=500))
    permissions = PermissionList()
    includes = RoleList()

    @validates_schema
    def something_to_change(self, data, **kwargs):
        if not data:
            raise ValidationError("give at least one of: description, permissions, includes",
                                  "_schema")


class RoleNameSchema(Schema):
    role = RoleName(required=True)


class GrantSchema(Schema):
    role = RoleName(required=True)
    permissions = PermissionList(required=True, min_length=1)


class AssignmentSchema(Schema):
    user_id = UserId(required=True)
    role = RoleName(required=True)
    scope = Scope()


class UserSchema(Schema):
    user_id = UserId(required=True)


class UserScopeSchema(Schema):
    user_id = UserId(required=True)
    scope = Scope()


class CheckSchema(Schema):
    user_id = UserId(required=True)
    permission = Permission(required=True)
    scope = Scope()


class RoleSchema(Schema):
    name = fields.String()
    description = fields.String()
    builtin = fields.Boolean()
    permissions = fields.List(fields.String())
    includes = fields.List(fields.String())
    effective_permissions = fields.List(fields.String())
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
