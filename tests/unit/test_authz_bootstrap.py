import io

import pytest
from sqlalchemy.orm import sessionmaker

from authz import admin
from authz.bootstrap import ensure_admin
from shared.db import UnitOfWork
from shared.errors import Conflict, Invalid, NotFound
from tests.support.authz_helpers import migrated_sqlite, new_user_id, outbox_events

EMAIL = "root@example.test"


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


def user(status="active"):
    return {"id": new_user_id(), "email": EMAIL, "status": status}


def admins(engine):
    return [e["subject"] for e in outbox_events(engine, "role.assigned")
            if e["data"]["role"] == "admin"]


def test_a_missing_user_is_created_then_made_admin(uow, engine):
    created = user()
    identity = Identity(get_user_by_email=[NotFound("no user")], create_user=[created])
    result = ensure_admin(identity, uow, EMAIL, "violet-Lantern-42-orbit")
    assert result == {"user": created, "created_user": True, "assigned": True}
    assert identity.calls[1] == ("create_user", {"email": EMAIL, "display_name": "Administrator",
                                                 "password": "violet-Lantern-42-orbit"})
    assert admins(engine) == [created["id"]]


def test_an_existing_user_is_made_admin_without_asking_for_a_password(uow, engine):
    existing = user()
    identity = Identity(get_user_by_email=[existing])

    def password():
        raise AssertionError("not needed")

    result = ensure_admin(identity, uow, EMAIL, password)
    assert result["created_user"] is False and result["assigned"] is True
    assert [c[0] for c in identity.calls] == ["get_user_by_email"]


def test_losing_the_race_to_create_the_user_looks_them_up_again(uow, engine):
    winner = user()
    identity = Identity(get_user_by_email=[NotFound("no user"), winner],
                        create_user=[Conflict("taken")])
    result = ensure_admin(identity, uow, EMAIL, "violet-Lantern-42-orbit")
    assert result == {"user": winner, "created_user": False, "assigned": True}
    assert admins(engine) == [winner["id"]]


def test_running_it_twice_assigns_once(uow, engine):
    existing = user()
    identity = Identity(get_user_by_email=[existing, existing])
    assert ensure_admin(identity, uow, EMAIL)["assigned"] is True
    assert ensure_admin(identity, uow, EMAIL)["assigned"] is False
    assert admins(engine) == [existing["id"]]


def test_without_a_password_a_missing_user_stays_missing(uow, engine):
    identity = Identity(get_user_by_email=[NotFound("no user")])
    with pytest.raises(NotFound):
        ensure_admin(identity, uow, EMAIL)
    assert admins(engine) == []


def test_identity_refusing_the_password_assigns_nothing(uow, engine):
    identity = Identity(get_user_by_email=[NotFound("no user")],
                        create_user=[Invalid("weak", {"password": ["too short"]})])
    with pytest.raises(Invalid):
        ensure_admin(identity, uow, EMAIL, "short")
    assert admins(engine) == []


def test_a_disabled_user_is_still_made_admin_with_a_warning(uow, engine, caplog):
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
