import time
import uuid

import eventlet
import pytest
import sqlalchemy as sa
from nameko.exceptions import UnknownService
from nameko.testing.services import worker_factory
from sqlalchemy.orm import sessionmaker

from gateway.openapi import build_spec
from gateway.routes import CORE_ROUTES
from identity.models import Base
from identity.passwords import Hasher, policy_problems
from identity.service import IdentityService
from shared.db import UnitOfWork, make_engine
from shared.errors import Conflict, Invalid, NotFound, Unauthorized, Unavailable
from shared.ids import uuid7
from tests.helpers import OTHER_PASSWORD, STRONG_PASSWORD, new_email

MISSING_ID = "01a2027a-ff4c-769f-ace0-e4616e33fb07"


@pytest.fixture
def engine():
    engine = make_engine("sqlite://", "identity")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def uow(engine):
    unit = UnitOfWork(sessionmaker(bind=engine, expire_on_commit=False), "identity",
                      {"request_id": "req-unit", "actor_type": "user", "actor_id": "tester"})
    yield unit
    unit.close()


@pytest.fixture
def hasher():
    return Hasher(time_cost=1, memory_kib=1024, parallelism=1)


class FakeAuthz:
    """Stands in for the authz service (another service, not our broker or database)."""

    def __init__(self):
        self.admins = []
        self.failure = None
        self.calls = 0

    def global_admins(self):
        self.calls += 1
        if self.failure:
            raise self.failure
        return list(self.admins)


@pytest.fixture
def authz():
    return FakeAuthz()


@pytest.fixture
def identity(uow, hasher, authz):
    return worker_factory(IdentityService, db=uow, passwords=hasher, authz_rpc=authz,
                          config={"AUTHZ_RPC_TIMEOUT": 0.5})


def events(engine):
    outbox = Base.metadata.tables["identity.outbox"]
    with engine.connect() as conn:
        return [row.payload for row in conn.execute(sa.select(outbox).order_by(outbox.c.id))]


def user_count(engine):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM users")).scalar()


def test_create_user_returns_the_user_without_secrets_and_queues_its_event(identity, engine):
    user = identity.create_user(email="Ann@Example.com", password=STRONG_PASSWORD,
                                display_name="Ann")
    assert user["email"] == "Ann@Example.com" and user["status"] == "active"
    assert "password_hash" not in user and "argon2" not in str(user)
    [event] = events(engine)
    assert event["event_type"] == "user.created" and event["subject"] == user["id"]
    assert event["request_id"] == "req-unit"
    assert STRONG_PASSWORD not in str(event) and "argon2" not in str(event)


def test_emails_are_unique_whatever_their_case(identity, engine):
    identity.create_user(email="bob@example.com", password=STRONG_PASSWORD)
    with pytest.raises(Conflict) as info:
        identity.create_user(email="BOB@Example.COM", password=STRONG_PASSWORD)
    assert info.value.details == {"email": ["already taken"]}
    assert user_count(engine) == 1 and len(events(engine)) == 1


@pytest.mark.parametrize("data, field", [
    ({"email": "not-an-email", "password": STRONG_PASSWORD}, "email"),
    ({"password": STRONG_PASSWORD}, "email"),
    ({"email": 42, "password": STRONG_PASSWORD}, "email"),
    ({"email": "a" * 320 + "@x.io", "password": STRONG_PASSWORD}, "email"),
    ({"email": "ok@example.com"}, "password"),
    ({"email": "ok@example.com", "password": "short"}, "password"),
    ({"email": "ok@example.com", "password": "password123"}, "password"),
    ({"email": "ok@example.com", "password": "x" * 300}, "password"),
    ({"email": "ok@example.com", "password": STRONG_PASSWORD, "display_name": "d" * 201},
     "display_name"),
    ({"email": "ok@example.com", "password": STRONG_PASSWORD, "type": "root"}, "type"),
    ({"email": "ok@example.com", "password": STRONG_PASSWORD, "is_admin": True}, "is_admin"),
])
def test_create_user_refuses_bad_input_naming_the_field_and_changes_nothing(identity, engine,
                                                                          data, field):
    with pytest.raises(Invalid) as info:
        identity.create_user(**data)
    assert field in info.value.details
    assert user_count(engine) == 0 and events(engine) == []


def test_create_user_accepts_one_dict_too(identity):
    user = identity.create_user({"email": new_email(), "password": STRONG_PASSWORD})
    assert user["type"] == "user"


def test_create_user_refuses_a_non_object(identity):
    with pytest.raises(Invalid):
        identity.create_user(["email"])


@pytest.mark.parametrize("user_id", ["nope", "", 5, None, MISSING_ID.upper(), MISSING_ID + "0"])
def test_get_user_refuses_malformed_ids(identity, user_id):
    with pytest.raises(Invalid) as info:
        identity.get_user(user_id)
    assert "user_id" in info.value.details


def test_get_user_of_unknown_id_is_not_found(identity):
    with pytest.raises(NotFound):
        identity.get_user(MISSING_ID)


def test_update_user_changes_only_what_is_given_and_announces_it(identity, engine):
    user = identity.create_user(email=new_email(), password=STRONG_PASSWORD, display_name="A")
    updated = identity.update_user(user["id"], display_name="Bea")
    assert updated["display_name"] == "Bea" and updated["email"] == user["email"]
    assert events(engine)[-1]["data"] == {"changes": {"display_name": "Bea"}}


@pytest.mark.parametrize("changes, field", [({}, "_schema"), ({"status": "active"}, "status"),
                                            ({"email": "bad"}, "email"),
                                            ({"display_name": None}, "display_name")])
def test_update_user_refuses_bad_changes(identity, engine, changes, field):
    user = identity.create_user(email=new_email(), password=STRONG_PASSWORD)
    with pytest.raises(Invalid) as info:
        identity.update_user(user["id"], changes)
    assert field in info.value.details
    assert identity.get_user(user["id"]) == user


def test_update_user_to_a_taken_email_is_a_conflict(identity):
    first = identity.create_user(email=new_email(), password=STRONG_PASSWORD)
    second = identity.create_user(email=new_email(), password=STRONG_PASSWORD)
    with pytest.raises(Conflict):
        identity.update_user(second["id"], email=first["email"].upper())
    assert identity.get_user(second["id"])["email"] == second["email"]


def test_change_password_checks_the_old_one(identity, engine):
    user = identity.create_user(email=new_email(), password=STRONG_PASSWORD)
    with pytest.raises(Unauthorized):
        identity.change_password(user["id"], old_password="wrong-Password-1",
                                 new_password=OTHER_PASSWORD)
    identity.change_password(user["id"], old_password=STRONG_PASSWORD,
                             new_password=OTHER_PASSWORD)
    assert identity.verify_credentials(email=user["email"], password=OTHER_PASSWORD)["id"] \
        == user["id"]
    with pytest.raises(Unauthorized):
        identity.verify_credentials(email=user["email"], password=STRONG_PASSWORD)
    assert events(engine)[-1]["event_type"] == "user.password_changed"


def test_change_password_applies_the_policy_to_the_new_one(identity):
    user = identity.create_user(email=new_email(), password=STRONG_PASSWORD)
    with pytest.raises(Invalid) as info:
        identity.change_password(user["id"], old_password=STRONG_PASSWORD,
                                 new_password="qwerty123")
    assert "new_password" in info.value.details
    with pytest.raises(Invalid):
        identity.change_password(user["id"], old_password=STRONG_PASSWORD,
                                 new_password=STRONG_PASSWORD)
    with pytest.raises(Invalid):
        identity.change_password(user["id"], old_password=STRONG_PASSWORD)


def test_set_password_needs_no_old_password_but_still_the_policy(identity):
    user = identity.create_user(email=new_email(), password=STRONG_PASSWORD)
    with pytest.raises(Invalid):
        identity.set_password(user["id"], password="letmein")
    identity.set_password(user["id"], password=OTHER_PASSWORD)
    assert identity.verify_credentials(email=user["email"], password=OTHER_PASSWORD)


def test_disabled_users_cannot_log_in_and_the_error_is_the_generic_one(identity, engine):
    user = identity.create_user(email=new_email(), password=STRONG_PASSWORD)
    identity.disable_user(user["id"])
    with pytest.raises(Unauthorized) as disabled:
        identity.verify_credentials(email=user["email"], password=STRONG_PASSWORD)
    with pytest.raises(Unauthorized) as unknown:
        identity.verify_credentials(email=new_email(), password=STRONG_PASSWORD)
    assert disabled.value.message == unknown.value.message
    assert events(engine)[-1]["event_type"] == "user.disabled"
    assert identity.enable_user(user["id"])["status"] == "active"
    assert identity.verify_credentials(email=user["email"], password=STRONG_PASSWORD)


def test_delete_user_scrubs_personal_data_and_frees_the_email(identity, engine):
    email = new_email()
    user = identity.create_user(email=email, password=STRONG_PASSWORD, display_name="Zed")
    deleted = identity.delete_user(user["id"])
    assert deleted["status"] == "deleted" and deleted["display_name"] == ""
    assert email not in str(deleted)
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT email, display_name, password_hash FROM users")).one()
    assert email not in row.email and row.display_name == "" and row.password_hash is None
    with pytest.raises(NotFound):
        identity.get_user(user["id"])
    with pytest.raises(NotFound):
        identity.delete_user(user["id"])
    assert identity.create_user(email=email, password=STRONG_PASSWORD)["id"] != user["id"]
    deleted_event = [e for e in events(engine) if e["event_type"] == "user.deleted"][0]
    assert deleted_event["data"] == {}


# -- the last administrator -------------------------------------------------------------------

def new_users(identity, count):
    return [identity.create_user(email=new_email("adm"), password=STRONG_PASSWORD)["id"]
            for _ in range(count)]


@pytest.mark.parametrize("method", ["disable_user", "delete_user"])
def test_the_last_active_admin_cannot_be_disabled_or_deleted(identity, authz, engine, method):
    admin, other = new_users(identity, 2)
    authz.admins = [admin]
    before = len(events(engine))
    with pytest.raises(Conflict) as info:
        getattr(identity, method)(admin)
    assert info.value.details == {"user_id": ["last active administrator"]}
    assert identity.get_user(admin)["status"] == "active"
    assert len(events(engine)) == before
    getattr(identity, method)(other)  # anyone else: as before


@pytest.mark.parametrize("method", ["disable_user", "delete_user"])
def test_an_admin_goes_while_another_active_admin_remains(identity, authz, method):
    first, second = new_users(identity, 2)
    authz.admins = [first, second]
    getattr(identity, method)(first)
    with pytest.raises(Conflict):
        getattr(identity, method)(second)


def test_a_disabled_admin_does_not_count_as_the_one_left(identity, authz):
    active, disabled = new_users(identity, 2)
    identity.disable_user(disabled)  # not an admin yet
    authz.admins = [active, disabled]
    with pytest.raises(Conflict):
        identity.disable_user(active)
    with pytest.raises(Conflict):
        identity.delete_user(active)
    # a disabled admin can still be deleted: it takes no active administrator away
    assert identity.delete_user(disabled)["status"] == "deleted"


@pytest.mark.parametrize("failure", [UnknownService("authz"), "hang"])
def test_disabling_or_deleting_waits_when_authz_cannot_say_who_the_admins_are(
        identity, authz, engine, failure):
    [user_id] = new_users(identity, 1)
    if failure == "hang":
        authz.global_admins = lambda: eventlet.sleep(5)
    else:
        authz.failure = failure
    before = len(events(engine))
    for method in ("disable_user", "delete_user"):
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            getattr(identity, method)(user_id)
        assert info.value.details == {"service": "authz"}
        assert time.monotonic() - started < 2
    assert identity.get_user(user_id)["status"] == "active"
    assert len(events(engine)) == before


@pytest.mark.parametrize("method", ["disable_user", "delete_user"])
def test_a_malformed_id_is_refused_before_authz_is_asked(identity, authz, method):
    with pytest.raises(Invalid):
        getattr(identity, method)("not-a-uuid")
    assert authz.calls == 0


# -- a caller-chosen id -----------------------------------------------------------------------

def test_a_caller_may_choose_the_new_users_id(identity, engine):
    chosen = uuid7()
    user = identity.create_user(id=chosen, email=new_email(), password=STRONG_PASSWORD)
    assert user["id"] == chosen and identity.get_user(chosen)["email"] == user["email"]
    assert events(engine)[-1]["subject"] == chosen


def future_uuid7():
    value = uuid.UUID(uuid7()).int
    millis = (value >> 80) + 24 * 3600 * 1000
    return str(uuid.UUID(int=(value & ((1 << 80) - 1)) | (millis << 80)))


@pytest.mark.parametrize("bad_id", [
    "not-a-uuid", 42, "", str(uuid.uuid4()), uuid7().upper(), "{" + uuid7() + "}",
    "00000000-0000-0000-0000-000000000000", future_uuid7(),
])
def test_a_chosen_id_must_be_a_time_ordered_uuid_not_from_the_future(identity, engine, bad_id):
    with pytest.raises(Invalid) as info:
        identity.create_user(id=bad_id, email=new_email(), password=STRONG_PASSWORD)
    assert "id" in info.value.details
    assert user_count(engine) == 0


def test_a_chosen_id_used_before_is_a_conflict_on_the_id_even_after_deletion(identity, engine):
    chosen = uuid7()
    email = new_email()
    identity.create_user(id=chosen, email=email, password=STRONG_PASSWORD)
    # the same id again: the id is named, before the email (a retry learns it was created)
    with pytest.raises(Conflict) as info:
        identity.create_user(id=chosen, email=email, password=STRONG_PASSWORD)
    assert info.value.details == {"id": ["already taken"]}
    identity.delete_user(chosen)
    with pytest.raises(Conflict) as info:
        identity.create_user(id=chosen, email=new_email(), password=STRONG_PASSWORD)
    assert info.value.details == {"id": ["already taken"]}
    # a fresh id with a taken email: the email is named
    taken = identity.create_user(email=new_email(), password=STRONG_PASSWORD)["email"]
    with pytest.raises(Conflict) as info:
        identity.create_user(id=uuid7(), email=taken, password=STRONG_PASSWORD)
    assert info.value.details == {"email": ["already taken"]}


def test_list_users_pages_with_a_cursor_and_filters(identity):
    ids = [identity.create_user(email=new_email("page"), password=STRONG_PASSWORD)["id"]
           for _ in range(5)]
    identity.disable_user(ids[0])
    first = identity.list_users(limit=2)
    second = identity.list_users(limit=2, cursor=first["next_cursor"])
    third = identity.list_users(limit=2, cursor=second["next_cursor"])
    seen = [u["id"] for page in (first, second, third) for u in page["items"]]
    assert seen == ids and third["next_cursor"] is None
    assert [u["id"] for u in identity.list_users(status="disabled")["items"]] == [ids[0]]
    assert identity.list_users(q="PAGE-", limit=10)["items"]


def test_the_api_summary_of_list_users_names_the_order_identity_lists_in(identity):
    # the OpenAPI document is built from the gateway's route table: its words must not drift
    # from what identity does
    operations = [op for ops in build_spec(CORE_ROUTES)["paths"].values() for op in ops.values()]
    summary = next(op["summary"] for op in operations if op["operationId"] == "list_users")
    promised = [order for order in ("oldest first", "newest first") if order in summary]
    assert len(promised) == 1, f"GET /users must name its order: {summary!r}"
    created = [identity.create_user(email=new_email("order"), password=STRONG_PASSWORD)["id"]
               for _ in range(4)]
    listed = [u["id"] for u in identity.list_users(limit=10)["items"]]
    assert listed == (created if promised == ["oldest first"] else created[::-1])


@pytest.mark.parametrize("filters, field", [({"limit": 0}, "limit"), ({"limit": "5"}, "limit"),
                                            ({"limit": 1000}, "limit"),
                                            ({"cursor": "%%%"}, "cursor"),
                                            ({"cursor": "bm90LWEtdXVpZA"}, "cursor"),
                                            ({"status": "gone"}, "status"),
                                            ({"sort": "email"}, "sort")])
def test_list_users_refuses_bad_filters(identity, filters, field):
    with pytest.raises(Invalid) as info:
        identity.list_users(**filters)
    assert field in info.value.details


def test_verify_credentials_rehashes_when_parameters_change(identity, uow, engine):
    user = identity.create_user(email=new_email(), password=STRONG_PASSWORD)
    with engine.connect() as conn:
        before = conn.execute(sa.text("SELECT password_hash FROM users")).scalar()
    stronger = worker_factory(IdentityService, db=uow,
                              passwords=Hasher(time_cost=2, memory_kib=2048, parallelism=1))
    stronger.verify_credentials(email=user["email"], password=STRONG_PASSWORD)
    with engine.connect() as conn:
        after = conn.execute(sa.text("SELECT password_hash FROM users")).scalar()
    assert before != after and "m=2048,t=2" in after


@pytest.mark.parametrize("email, password", [(None, STRONG_PASSWORD), ("a@b.c", None),
                                             (5, "x"), ("a@b.c", ["x"])])
def test_verify_credentials_refuses_malformed_input(identity, email, password):
    with pytest.raises(Invalid):
        identity.verify_credentials(email=email, password=password)


def test_password_policy_messages():
    assert policy_problems(STRONG_PASSWORD) == []
    assert policy_problems("Password123!")  # common with suffix
    assert "must be at least 10 characters" in policy_problems("abc")
    assert policy_problems("aaaaaaaaaaaa") == ["uses too few different characters"]
    assert policy_problems("annabelle-rocks-99", email="annabelle@example.com")
    assert policy_problems(1234567890) == ["must be a string"]
