"""The kernel's Schema (shared/schemas.py) in every core service, on the real PostgreSQL: a NUL
character in any string is refused as Invalid naming the field, and nothing is written."""

import time

import pytest

from audit.service import AuditService
from auth.service import AuthService
from authz.service import AuthzService
from identity.service import IdentityService
from shared.errors import Invalid
from shared.schemas import NUL_MESSAGE
from tests.helpers import STRONG_PASSWORD, new_email, new_user

ADMIN = {"request_id": "req-nul", "actor_type": "user", "actor_id": "operator-1"}


@pytest.fixture
def services(start_service, fresh_pg_uri):
    for service in (IdentityService, AuthService, AuthzService, AuditService):
        start_service(service, DB_URI=fresh_pg_uri)


def _calls(user_id):
    """(service, method, kwargs, the field that holds the NUL)."""
    return [
        ("identity", "create_user", {"data": {"email": new_email(), "password": STRONG_PASSWORD,
                                              "display_name": "Ann\x00"}}, "display_name"),
        ("identity", "create_user", {"data": {"email": "a\x00" + new_email(),
                                              "password": STRONG_PASSWORD}}, "email"),
        ("identity", "update_user", {"user_id": user_id, "changes": {"display_name": "\x00"}},
         "display_name"),
        ("identity", "list_users", {"filters": {"q": "x\x00"}}, "q"),
        ("identity", "verify_credentials", {"email": "a\x00@example.test", "password": "x"},
         "email"),
        ("auth", "login", {"email": "a\x00@example.test", "password": STRONG_PASSWORD},
         "email"),
        ("auth", "login", {"email": new_email(), "password": STRONG_PASSWORD,
                           "client": {"user_agent": "curl\x00"}}, "client"),
        ("authz", "create_role", {"data": {"name": "nul_role", "description": "a\x00b"}},
         "description"),
        ("authz", "create_role", {"data": {"name": "nul_role", "permissions": ["a:b\x00"]}},
         "permissions"),
        ("audit", "record", {"action": "thing.done", "source": "billing",
                             "subject": "s\x00"}, "subject"),
        ("audit", "record", {"action": "thing.done", "source": "billing",
                             "data": {"deep": [{"note": "x\x00"}]}}, "data"),
    ]


def _entry_count(rpc):
    return len(rpc.call("audit", "query", kwargs={"filters": {"limit": 200}})["items"])


def _settled_entry_count(rpc, quiet=1.5, timeout=30):
    """Audit's entry count once the events of the set-up (the user's creation, its default
    role) have arrived: at least one entry and no change for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    count, since = _entry_count(rpc), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = _entry_count(rpc)
        if now != count:
            count, since = now, time.monotonic()
        elif count and time.monotonic() - since >= quiet:
            return count
    raise AssertionError(f"audit's entry count did not settle (last {count})")


def test_a_nul_character_in_any_field_of_any_service_is_invalid_and_writes_nothing(services,
                                                                                      rpc):
    user = new_user(rpc)
    roles = rpc.call("authz", "list_roles", context=ADMIN)
    users = rpc.call("identity", "list_users", kwargs={"filters": {"limit": 200}})
    entries = _settled_entry_count(rpc)
    for service, method, kwargs, field in _calls(user["id"]):
        with pytest.raises(Invalid) as info:
            rpc.call(service, method, kwargs=kwargs, context=ADMIN)
        assert info.value.details.get(field) == [NUL_MESSAGE], (service, method, info.value)
    assert rpc.call("authz", "list_roles", context=ADMIN) == roles
    assert rpc.call("identity", "list_users", kwargs={"filters": {"limit": 200}}) == users
    assert _entry_count(rpc) == entries
