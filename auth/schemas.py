import ipaddress

from marshmallow import ValidationError, fields, post_load, validate

from shared.ids import is_uuid
from shared.schemas import Schema


def _ip(value):
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValidationError("not an IP address") from None


def _uuid(value):
    if not is_uuid(value):
        raise ValidationError("not a valid UUID")


class ClientSchema(Schema):
    """Who is logging in, as the gateway sees it. The IP is what throttling keys on."""

    ip = fields.String(validate=[validate.Length(max=64), _ip])
    user_agent = fields.String(validate=validate.Length(max=512))
    id = fields.String(validate=validate.Length(min=1, max=200))

    @post_load
    def canonical_ip(self, data, **kwargs):
        if "ip" in data:
            data["ip"] = str(ipaddress.ip_address(data["ip"]))
        return data


class ClientField(fields.Field):
    """A client dict ({ip, user_agent}) or a string naming the client (becomes {id})."""

    schema = ClientSchema()  # marshmallow 4 schemas keep no state between loads

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            value = {"id": value}
        if not isinstance(value, dict):
            raise ValidationError("must be an object {ip, user_agent} or a string")
        return self.schema.load(value)


class LoginSchema(Schema):
    email = fields.String(required=True, validate=validate.Length(min=1, max=320))
    password = fields.String(required=True, validate=validate.Length(min=1, max=256))
    client = ClientField(load_default=dict)


class RefreshTokenSchema(Schema):
    refresh_token = fields.String(required=True, validate=validate.Length(min=1, max=512))


class AccessTokenSchema(Schema):
    # any string: a too long or garbled one is an invalid token (401), not bad input (400)
    access_token = fields.String(required=True)


class UserIdSchema(Schema):
    user_id = fields.String(required=True, validate=_uuid)


class EndSessionSchema(Schema):
    session_id = fields.String(required=True, validate=_uuid)
    user_id = fields.String(load_default=None, allow_none=True, validate=_uuid)


class SessionIdSchema(Schema):
    session_id = fields.String(required=True, validate=_uuid)
