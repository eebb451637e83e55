import io

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import sessionmaker

from authz import admin
from authz.bootstrap import Refused, bootstrap_admin, ensure_admin
from shared.db import UnitOfWork
from shared.errors import Conflict, Invalid, NotFound
from tests.support.authz_helpers import migrated_sqlite, new_user_id, outbox_events

EMAIL = "root@example.test"
PASSWORD = "violet-Lantern-42-orbit"


@pytest.fixture
def engine(tmp_path_factory):
    engine = migrated_sqlite(tmp_path_factory.getbasetemp())
    yield engine
    engine.dispose()


@pytest.fixture
def uow(engine):
    unit = UnitOfWork(sessionmaker(bind=engine, expire_on_commit=False), "authz",
                      {"request_id": "req-boot", "actor_type": "system",
                       "actor_id": "authz-bootstrap"})
    yield unit
    unit.close()


def user(status="active"):
    return {"id": new_user_id(), "email": EMAIL, "status": status}


def admins(engine):
    return [e["subject"] for e in outbox_events(engine, "role.assigned")
            if e["data"]["role"] == "admin"]


class Crash(BaseException):
    """The process dying between two steps (not an error anything catches)."""


class FakeIdentity:
    """Stands in for identity (another service): users by id, emails unique, ids never
    reused, create_user with a caller-chosen id."""

    def __init__(self):
        self.users = {}
        self.calls = []
        self.crash_after_create = False

    def add(self, email=EMAIL, status="active"):
        user_id = new_user_id()
        self.users[user_id] = {"id": user_id, "email": email, "status": status}
        return user_id

    def __call__(self, method, **kwargs):
        self.calls.append(method)
        return getattr(self, method)(**kwargs)

    def create_user(self, id, email, password, display_name):
        if len(password) < 10:
            raise Invalid("password does not meet the password policy",
                          {"password": ["must be at least 10 characters"]})
        if id in self.users:
            raise Conflict("id taken", {"id": ["already taken"]})
        if any(u["email"] == email and u["status"] != "deleted" for u in self.users.values()):
            raise Conflict("email taken", {"email": ["already taken"]})
        self.users[id] = {"id": id, "email": email, "status": "active"}
        if self.crash_after_create:
            raise Crash()
        return dict(self.users[id])

    def get_user(self, user_id):
        found = self.users.get(user_id)
        if found is None or found["status"] == "deleted":
            raise NotFound("no user")
        return dict(found)

    def get_user_by_email(self, email):
        for found in self.users.values():
            if found["email"] == email and found["status"] != "deleted":
                return dict(found)
        raise NotFound("no user")


def recorded(engine):
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT status, user_id FROM bootstrap")).one_or_none()


def bootstrap(identity, uow, password=PASSWORD):
    try:
        return bootstrap_admin(identity, uow, EMAIL, password)
    finally:
        uow.rollback()


# -- the bootstrap ----------------------------------------------------------------------------

def test_the_bootstrap_creates_its_user_with_the_id_it_recorded_first_and_makes_it_admin(
        uow, engine):
    identity = FakeIdentity()
    result = bootstrap(identity, uow)
    assert result["status"] == "done" and result["created_user"] and result["made_admin"]
    [created] = identity.users.values()
    assert created["email"] == EMAIL and result["user_id"] == created["id"]
    assert recorded(engine) == ("done", created["id"])
    assert admins(engine) == [created["id"]]


def test_once_done_the_bootstrap_asks_identity_nothing_and_promotes_nobody(uow, engine):
    identity = FakeIdentity()
    first = bootstrap(identity, uow)
    identity.calls.clear()
    # whatever happened since (the admin demoted, deleted, their email taken by a stranger)
    identity.users.clear()
    identity.add()
    again = bootstrap(identity, uow)
    assert again == {"status": "done", "user_id": first["user_id"], "created_user": False,
                     "made_admin": False}
    assert identity.calls == []
    assert admins(engine) == [first["user_id"]]


def test_an_email_held_by_an_account_the_bootstrap_did_not_create_is_refused(uow, engine):
    identity = FakeIdentity()
    stranger = identity.add()
    with pytest.raises(Refused, match="did not create"):
        bootstrap(identity, uow)
    assert admins(engine) == []
    assert identity.users[stranger] == {"id": stranger, "email": EMAIL, "status": "active"}
    assert recorded(engine).status == "pending"  # nothing done: a later start looks again


def test_a_crash_after_identity_created_the_user_is_recognised_by_its_id(uow, engine):
    identity = FakeIdentity()
    identity.crash_after_create = True
    with pytest.raises(Crash):
        bootstrap(identity, uow)
    [created] = identity.users
    assert admins(engine) == [] and recorded(engine) == ("pending", created)
    identity.crash_after_create = False
    result = bootstrap(identity, uow)
    assert result == {"status": "done", "user_id": created, "created_user": False,
                      "made_admin": True}
    assert list(identity.users) == [created] and admins(engine) == [created]


def test_a_refused_password_changes_nothing_and_a_better_one_later_succeeds(uow, engine):
    identity = FakeIdentity()
    with pytest.raises(Invalid):
        bootstrap(identity, uow, password="short")
    assert identity.users == {} and admins(engine) == []
    intended = recorded(engine).user_id
    assert bootstrap(identity, uow)["user_id"] == intended


def test_with_an_administrator_already_there_the_bootstrap_is_skipped_for_good(uow, engine):
    identity = FakeIdentity()
    operator = identity.add(email="operator@example.test")
    ensure_admin(identity, uow, "operator@example.test")  # make admin, before the first start
    identity.calls.clear()
    assert bootstrap(identity, uow)["status"] == "skipped"
    assert identity.calls == []
    assert recorded(engine).status == "skipped"
    assert list(identity.users) == [operator] and admins(engine) == [operator]


def test_the_bootstrap_user_deleted_before_it_was_recorded_is_refused(uow, engine):
    identity = FakeIdentity()
    identity.crash_after_create = True
    with pytest.raises(Crash):
        bootstrap(identity, uow)
    identity.crash_after_create = False
    [created] = identity.users
    identity.users[created]["status"] = "deleted"
    with pytest.raises(Refused, match="was deleted"):
        bootstrap(identity, uow)
    assert admins(engine) == []


# -- make admin: an operator's deliberate promotion -------------------------------------------

class Identity:
    """A scripted identity: ``answers[method]`` is a list of results or errors, in order."""

    def __init__(self, **answers):
        self.answers = answers
        self.calls = []

    def __call__(self, method, **kwargs):
        self.calls.append((method, kwargs))
        answer = self.answers[method].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_make_admin_creates_a_missing_user_then_makes_them_admin(uow, engine):
    created = user()
    identity = Identity(get_user_by_email=[NotFound("no user")], create_user=[created])
    result = ensure_admin(identity, uow, EMAIL, PASSWORD)
    assert result == {"user": created, "created_user": True, "assigned": True}
    assert identity.calls[1] == ("create_user", {"email": EMAIL, "display_name": "Administrator",
                                                 "password": PASSWORD})
    assert admins(engine) == [created["id"]]


def test_make_admin_promotes_an_existing_user_without_asking_for_a_password(uow, engine):
    existing = user()
    identity = Identity(get_user_by_email=[existing])

    def password():
        raise AssertionError("not needed")

    result = ensure_admin(identity, uow, EMAIL, password)
    assert result["created_user"] is False and result["assigned"] is True
    assert [c[0] for c in identity.calls] == ["get_user_by_email"]


def test_make_admin_losing_the_race_to_create_the_user_looks_them_up_again(uow, engine):
    winner = user()
    identity = Identity(get_user_by_email=[NotFound("no user"), winner],
                        create_user=[Conflict("taken")])
    result = ensure_admin(identity, uow, EMAIL, PASSWORD)
    assert result == {"user": winner, "created_user": False, "assigned": True}
    assert admins(engine) == [winner["id"]]


def test_make_admin_twice_assigns_once(uow, engine):
    existing = user()
    identity = Identity(get_user_by_email=[existing, existing])
    assert ensure_admin(identity, uow, EMAIL)["assigned"] is True
    assert ensure_admin(identity, uow, EMAIL)["assigned"] is False
    assert admins(engine) == [existing["id"]]


def test_make_admin_without_a_password_leaves_a_missing_user_missing(uow, engine):
    identity = Identity(get_user_by_email=[NotFound("no user")])
    with pytest.raises(NotFound):
        ensure_admin(identity, uow, EMAIL)
    assert admins(engine) == []


def test_make_admin_with_a_refused_password_assigns_nothing(uow, engine):
    identity = Identity(get_user_by_email=[NotFound("no user")],
                        create_user=[Invalid("weak", {"password": ["too short"]})])
    with pytest.raises(Invalid):
        ensure_admin(identity, uow, EMAIL, "short")
    assert admins(engine) == []


def test_make_admin_promotes_a_disabled_user_with_a_warning(uow, engine, caplog):
    existing = user(status="disabled")
    ensure_admin(Identity(get_user_by_email=[existing]), uow, EMAIL)
    assert admins(engine) == [existing["id"]]
    assert "is disabled" in caplog.text


# -- the CLI's password prompt ----------------------------------------------------------------

class Tty(io.StringIO):
    def isatty(self):
        return True


def test_password_is_read_from_a_pipe_without_a_prompt():
    assert admin.prompt_password(io.StringIO("violet-Lantern-42\nignored\n")) == \
        "violet-Lantern-42"


def test_an_empty_pipe_is_refused():
    with pytest.raises(SystemExit, match="no password on stdin"):
        admin.prompt_password(io.StringIO(""))


def test_a_terminal_is_asked_twice_without_echo_until_both_match(monkeypatch):
    answers = iter(["first-Secret-1", "typo-Secret-1", "", "final-Secret-9",
                    "final-Secret-9"])
    prompts = []

    def fake_getpass(prompt):
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(admin.getpass, "getpass", fake_getpass)
    assert admin.prompt_password(Tty()) == "final-Secret-9"
    assert len(prompts) == 5  # the empty first entry is not asked to be repeated


def test_a_terminal_gives_up_after_three_mismatches(monkeypatch):
    monkeypatch.setattr(admin.getpass, "getpass", lambda prompt: prompt)
    with pytest.raises(SystemExit, match="no password given"):
        admin.prompt_password(Tty())


def test_the_cli_needs_an_email(capsys):
    with pytest.raises(SystemExit) as info:
        admin.parse_args([])
    assert info.value.code == 2 and "--email" in capsys.readouterr().err
