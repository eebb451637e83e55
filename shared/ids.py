"""Time-ordered UUIDs (version 7), so ids sort by creation and keyset pagination is simple."""

import os
import re
import time
import uuid

__all__ = ["uuid7", "is_uuid", "uuid7_millis"]

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def uuid7():
    """A random UUIDv7 (RFC 9562) as a string: 48-bit ms timestamp, then 74 random bits."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def is_uuid(value):
    """True for a canonical lower-case UUID string (any version)."""
    return isinstance(value, str) and bool(_UUID.match(value))


def uuid7_millis(value):
    """The Unix time in milliseconds a canonical UUIDv7 string carries, or None when ``value``
    is not one (another version, another variant, not canonical)."""
    if not is_uuid(value):
        return None
    parsed = uuid.UUID(value)
    if parsed.version != 7 or parsed.variant != uuid.RFC_4122:
        return None
    return parsed.int >> 80
