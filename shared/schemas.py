"""The marshmallow ``Schema`` every service's schemas (and the gateway's) derive from.

It refuses, before any field is loaded, input that no service can store: a NUL character
(``\\u0000``) anywhere in a string (PostgreSQL's text cannot hold it, so it would surface as a
500), at any depth of nested objects and lists, with a message under the field it came in.
"""

from marshmallow import Schema as _MarshmallowSchema
from marshmallow import ValidationError, pre_load

__all__ = ["Schema", "NUL_MESSAGE", "nul_fields"]

NUL = "\x00"
NUL_MESSAGE = "must not contain the NUL character (\\u0000)"
NUL_IN_NAME = "a field name must not contain the NUL character (\\u0000)"


def _holds_nul(value):
    """Whether a JSON-like ``value`` holds a NUL in any string (walked without recursion)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if NUL in item:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list | tuple):
            pending.extend(item)
    return False


def nul_fields(data):
    """``{field: [message]}`` for each top-level field of ``data`` holding a NUL."""
    if not isinstance(data, dict):
        return {"_schema": [NUL_MESSAGE]} if _holds_nul(data) else {}
    errors = {}
    for key, value in data.items():
        if isinstance(key, str) and NUL in key:
            errors.setdefault("_schema", [NUL_IN_NAME])
        elif _holds_nul(value):
            errors[str(key)] = [NUL_MESSAGE]
    return errors


class Schema(_MarshmallowSchema):
    """marshmallow's Schema, refusing NUL characters in any input string."""

    @pre_load(pass_collection=True)
    def _refuse_nul(self, data, many, **kwargs):
        if many and isinstance(data, list):
            errors = {index: found for index, item in enumerate(data)
                      if (found := nul_fields(item))}
        else:
            errors = nul_fields(data)
        if errors:
            raise ValidationError(errors)
        return data
