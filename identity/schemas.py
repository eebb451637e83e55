from marshmallow import ValidationError, fields, validate, validates_schema

from shared.schemas import Schema

STATUSES = ("active", "disabled", "deleted")
TYPES = ("user", "service", "system")

Email = fields.Email
email_field = dict(required=True, validate=validate.Length(max=320))
display_name_field = dict(validate=validate.Length(max=200))


class CreateUserSchema(Schema):
    email = Email(**email_field)
    password = fields.String(load_default=None, validate=validate.Length(max=256))
    display_name = fields.String(load_default="", **display_name_field)
    type = fields.String(load_default="user", validate=validate.OneOf(TYPES))

    @validates_schema
    def password_required_for_people(self, data, **kwargs):
        if data.get("type", "user") == "user" and not data.get("password"):
            raise ValidationError("required for users", "password")


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
